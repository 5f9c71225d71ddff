//! Message bytes -> `Parsed`: the header fields later stages use (RFC 5322 §3.6, RFC 2047 names
//! decoded by mail-parser), thread identifiers, attachments (name, type, size, hash; the bytes
//! stay in the stored message), and whether the message is automatic (RFC 3834).
//! Malformed MIME never panics here and never loses the raw message: what cannot be parsed is
//! left empty.

use mail_parser::{Message, MessageParser, MimeHeaders};

use crate::store::model::AttachmentInfo;
use crate::util::sha256_hex;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub subject: String,
    /// The first From address, as written.
    pub from: String,
    pub message_id: String,
}

/// Subject, From and Message-ID from the header section alone (cheap: no body parsing).
pub fn summarize(head: &[u8]) -> Summary {
    let Some(msg) = MessageParser::new().parse_headers(head) else {
        return Summary::default();
    };
    Summary {
        subject: msg.subject().unwrap_or_default().to_string(),
        from: first_from(&msg).0,
        message_id: msg.message_id().unwrap_or_default().to_string(),
    }
}

fn first_from(msg: &Message<'_>) -> (String, Option<String>) {
    let Some(addr) = msg.from().and_then(|a| a.first()) else {
        return (String::new(), None);
    };
    (
        addr.address().unwrap_or_default().to_string(),
        addr.name()
            .map(|n| n.to_string())
            .filter(|n| !n.trim().is_empty()),
    )
}

/// What the later stages need from a whole message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub subject: String,
    pub from_email: String,
    pub from_name: Option<String>,
    /// Without angle brackets; empty when the message has none.
    pub message_id: String,
    pub in_reply_to: Vec<String>,
    /// Oldest first, as in the header.
    pub references: Vec<String>,
    /// Every header field: lower-cased name, unfolded raw value.
    pub headers: Vec<(String, String)>,
    pub attachments: Vec<AttachmentInfo>,
    /// Why the message is automatic (bounce, auto-reply, list), if it is.
    pub automatic: Option<String>,
}

impl Parsed {
    /// The first value of a header field (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a whole message. `mail_from` is the envelope sender (empty for `<>`).
pub fn parse(raw: &[u8], mail_from: &str) -> Parsed {
    let Some(msg) = MessageParser::new().parse(raw) else {
        return Parsed {
            automatic: automatic_reason(&[], mail_from, false),
            ..Default::default()
        };
    };
    parse_message(&msg, mail_from)
}

pub fn parse_message(msg: &Message<'_>, mail_from: &str) -> Parsed {
    let raw = msg.raw_message();
    let headers: Vec<(String, String)> = msg
        .headers()
        .iter()
        .map(|h| {
            let value = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(|v| unfold(&String::from_utf8_lossy(v)))
                .unwrap_or_default();
            (h.name.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    let ids = |v: &mail_parser::HeaderValue<'_>| -> Vec<String> {
        v.as_text_list()
            .map(|l| l.iter().map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    };
    let attachments = attachments(msg).map(|(info, _)| info).collect();
    let is_report = msg.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("multipart")
            && c.subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    let (from_email, from_name) = first_from(msg);
    Parsed {
        subject: msg.subject().unwrap_or_default().to_string(),
        from_email,
        from_name,
        message_id: msg.message_id().unwrap_or_default().trim().to_string(),
        in_reply_to: keep_ends(ids(msg.in_reply_to()), IN_REPLY_TO_KEPT, 0),
        references: keep_ends(
            ids(msg.references()),
            REFERENCES_HEAD_KEPT,
            REFERENCES_TAIL_KEPT,
        ),
        automatic: automatic_reason(&headers, mail_from, is_report),
        headers,
        attachments,
    }
}

/// Thread ids kept from References: its first (RFC 5322 §3.6.4: the thread's root) and its last
/// few dozen (the parents threading looks up first). The rest are dropped: they are stored on the
/// record and each is looked up on the commit thread, so a header of a million ids must not
/// mean a million of either.
pub const REFERENCES_HEAD_KEPT: usize = 1;
pub const REFERENCES_TAIL_KEPT: usize = 40;
/// In-Reply-To names the parent, or a few; more are not a reply.
pub const IN_REPLY_TO_KEPT: usize = 8;

/// The first `head` and the last `tail` of `ids`, in order.
fn keep_ends(mut ids: Vec<String>, head: usize, tail: usize) -> Vec<String> {
    if ids.len() > head + tail {
        ids.drain(head..ids.len() - tail);
        ids.shrink_to_fit();
    }
    ids
}

/// The attachments of a message, in the one order every user of an attachment index relies on:
/// the record's list (`MessageRecord::attachments`) and the API's download by index both come
/// from here. Each with its decoded content.
pub fn attachments<'m>(
    msg: &'m Message<'_>,
) -> impl Iterator<Item = (AttachmentInfo, &'m [u8])> + 'm {
    msg.attachments().map(|part| {
        let content_type = part
            .content_type()
            .map(|c| match c.subtype() {
                Some(sub) => format!("{}/{}", c.ctype(), sub),
                None => c.ctype().to_string(),
            })
            .unwrap_or_else(|| "application/octet-stream".into())
            .to_ascii_lowercase();
        let contents = part.contents();
        let info = AttachmentInfo {
            name: part.attachment_name().unwrap_or_default().to_string(),
            content_type,
            size: contents.len() as u64,
            sha256: sha256_hex(contents),
        };
        (info, contents)
    })
}

/// Attachment number `index` (from 0, as listed on the record) of a stored body, with its
/// decoded bytes; `None` when the message has fewer attachments or does not parse. Like
/// `pipeline::analyse`, a parser panic on hostile input costs only this answer.
pub fn attachment(raw: &[u8], index: usize) -> Option<(AttachmentInfo, Vec<u8>)> {
    std::panic::catch_unwind(|| {
        let msg = MessageParser::new().parse(raw)?;
        let found = attachments(&msg)
            .nth(index)
            .map(|(info, bytes)| (info, bytes.to_vec()));
        found
    })
    .unwrap_or(None)
}

fn unfold(v: &str) -> String {
    v.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// RFC 3834 and common practice: bounces, auto-replies and bulk mail are recorded but never open
/// tickets or trigger notifications (that is how mail loops start). `Auto-Submitted:
/// auto-forwarded` is *not* automatic here: a Microsoft 365 forwarding rule sets it on real
/// customer mail.
fn automatic_reason(
    headers: &[(String, String)],
    mail_from: &str,
    is_report: bool,
) -> Option<String> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    if let Some(v) = get("auto-submitted") {
        let v = v.split(';').next().unwrap_or("").trim().to_string();
        if v != "no" && v != "auto-forwarded" && !v.is_empty() {
            return Some(format!("auto-submitted: {v}"));
        }
    }
    if is_report {
        return Some("delivery or disposition report".into());
    }
    if mail_from.is_empty() {
        return Some("null envelope sender (bounce)".into());
    }
    for name in ["x-autoreply", "x-autorespond", "x-autoresponder"] {
        if get(name).is_some() {
            return Some(format!("{name} header"));
        }
    }
    if let Some(v) = get("precedence") {
        if ["bulk", "junk", "list", "auto_reply"].contains(&v.trim()) {
            return Some(format!("precedence: {}", v.trim()));
        }
    }
    if get("x-auto-response-suppress").is_some_and(|v| v.contains("all") || v.contains("oof"))
        && get("x-ms-exchange-inbox-rules-loop").is_none()
        && get("subject").is_some_and(|s| {
            s.starts_with("automatic reply")
                || s.starts_with("out of office")
                || s.starts_with("auto:")
        })
    {
        return Some("out-of-office reply".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_headers() {
        let s = summarize(
            b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.de>\r\nSubject: =?utf-8?b?SMOkbGxv?=\r\nMessage-ID: <a@b>\r\n\r\nbody",
        );
        assert_eq!(s.from, "j@example.de");
        assert_eq!(s.subject, "Hällo");
        assert_eq!(s.message_id, "a@b");
        assert_eq!(summarize(b"\x00\xff garbage"), Summary::default());
    }

    #[test]
    fn thread_ids_attachments_and_automatic() {
        let raw = b"From: A <a@x.example>\r\nMessage-ID: <m3@x>\r\nIn-Reply-To: <m2@x>\r\nReferences: <m1@x>\r\n <m2@x>\r\nSubject: Re: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf; name=\"=?utf-8?q?Rechnung_M=C3=A4rz.pdf?=\"\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8=\r\n--b--\r\n";
        let p = parse(raw, "a@x.example");
        assert_eq!(p.message_id, "m3@x");
        assert_eq!(p.in_reply_to, ["m2@x"]);
        assert_eq!(p.references, ["m1@x", "m2@x"]);

        // Issue #11: a References header of hundreds of ids keeps its root and its newest.
        let many: String = (1..500).map(|i| format!(" <r{i}@x>\r\n")).collect();
        let raw = format!("From: a@x.example\r\nReferences: <r0@x>\r\n{many}\r\nb\r\n");
        let long = parse(raw.as_bytes(), "a@x.example");
        assert_eq!(
            long.references.len(),
            REFERENCES_HEAD_KEPT + REFERENCES_TAIL_KEPT
        );
        assert_eq!(long.references[0], "r0@x");
        assert_eq!(long.references.last().unwrap(), "r499@x");
        assert_eq!(
            long.references[1],
            format!("r{}@x", 500 - REFERENCES_TAIL_KEPT)
        );
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].name, "Rechnung März.pdf");
        assert_eq!(p.attachments[0].content_type, "application/pdf");
        assert_eq!(p.attachments[0].size, 5);
        assert_eq!(p.automatic, None);
        assert!(
            parse(b"Subject: x\r\n\r\nhi", "").automatic.is_some(),
            "null sender"
        );
        let ooo = parse(
            b"Auto-Submitted: auto-replied\r\nSubject: away\r\n\r\nhi",
            "a@b.c",
        );
        assert_eq!(
            ooo.automatic.as_deref(),
            Some("auto-submitted: auto-replied")
        );
        let fwd = parse(
            b"Auto-Submitted: auto-forwarded\r\nSubject: help\r\n\r\nhi",
            "a@b.c",
        );
        assert_eq!(
            fwd.automatic, None,
            "a Microsoft 365 rule forward is customer mail"
        );
    }
}
