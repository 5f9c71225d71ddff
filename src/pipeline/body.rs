//! Stored message bytes -> `views::Content`: what an integrator reads of a message (text and
//! HTML bodies, the new text of a reply, header fields, To/Cc/Reply-To, Date, how attachments
//! are shown), read on demand from the stored body, never stored. RFC 5322 §3.6, RFC 2045-2047,
//! RFC 2183 (Content-Disposition), RFC 2392 (Content-ID).
//!
//! The one place this is decided, for the API's message detail and the webhooks that carry it:
//! - `text`: the text/plain body parts (mail-parser's reading of the MIME structure: the
//!   alternative a client shows, and inline text parts), decoded from their charset and
//!   transfer encoding to UTF-8, joined by a newline; `null` when there is none.
//! - `html`: the text/html body parts, decoded the same way, as they are: never rendered,
//!   sanitised or rewritten here (a client showing it must treat it as hostile).
//! - `stripped_text`: `attribution::new_text` of `text`, or of the HTML as text when there is
//!   no text part; `null` when there is neither.
//! - `headers`: every field of the top-level header section in order, the name as written and
//!   the value unfolded, with RFC 2047 encoded words decoded wherever they appear (as for
//!   unstructured fields; an address field's display name decodes the same way), bytes that are
//!   not UTF-8 replaced. The exact bytes are at `/v1/messages/{id}/raw`. Our own trace fields
//!   (the `Received:` and `Authentication-Results:` we prepend) are not part of the body and
//!   not listed.
//! - `to`, `cc`, `reply_to`: each address of the field (members of a group included), display
//!   name decoded; `[]` without the field.
//! - `date`: the Date field in RFC 3339, UTC; `null` without one or when it does not parse.
//! - per attachment: Content-ID (angle brackets removed), the disposition type, and `inline`.
//!
//! Parsers of hostile input are where a panic would come from: one costs the reader this
//! message's content (`None`), as in `pipeline::analyse`.

use mail_parser::{Address, Message, MessageParser, MimeHeaders, PartType};

use super::{attribution, html, parse};
use crate::util::rfc3339;
use crate::views::{AttachmentPart, Content, Header, Mailbox};

/// Read `raw` (the stored body: what the client sent, without our trace fields).
pub fn read(raw: &[u8]) -> Option<Content> {
    std::panic::catch_unwind(|| {
        let msg = MessageParser::new().parse(raw)?;
        Some(read_message(&msg))
    })
    .unwrap_or(None)
}

/// `read` of a message already parsed (the accept path reads it once for every stage).
pub fn read_message(msg: &Message<'_>) -> Content {
    let text = parts(msg, &msg.text_body, |p| match p {
        PartType::Text(t) => Some(t.as_ref()),
        _ => None,
    });
    let html = parts(msg, &msg.html_body, |p| match p {
        PartType::Html(h) => Some(h.as_ref()),
        _ => None,
    });
    let stripped_text = match (&text, &html) {
        (Some(t), _) => Some(attribution::new_text(t)),
        (None, Some(h)) => Some(attribution::new_text(
            &html::to_text(h, html::FOR_ATTRIBUTION).text,
        )),
        (None, None) => None,
    };
    Content {
        text,
        html,
        stripped_text,
        headers: headers(msg),
        to: mailboxes(msg.to()),
        cc: mailboxes(msg.cc()),
        reply_to: mailboxes(msg.reply_to()),
        date: msg
            .date()
            .map(|d| d.to_timestamp())
            .filter(|&t| t >= 0)
            .map(|t| rfc3339(t as u64 * 1000)),
        attachments: parse::attachments(msg)
            .zip(msg.attachments())
            .map(|((info, _), part)| {
                let disposition = part
                    .content_disposition()
                    .map(|d| d.ctype().to_ascii_lowercase());
                let content_id = part
                    .content_id()
                    .map(|c| c.trim().trim_start_matches('<').trim_end_matches('>'))
                    .filter(|c| !c.is_empty())
                    .map(str::to_string);
                AttachmentPart {
                    sha256: info.sha256,
                    inline: match &disposition {
                        Some(d) => d == "inline",
                        None => content_id.is_some(),
                    },
                    content_id,
                    disposition,
                }
            })
            .collect(),
    }
}

/// The body parts listed in `ids` that `pick` reads as text, joined by a newline.
fn parts<'m>(
    msg: &'m Message<'_>,
    ids: &[u32],
    pick: impl Fn(&'m PartType<'_>) -> Option<&'m str>,
) -> Option<String> {
    let found: Vec<&str> = ids
        .iter()
        .filter_map(|&id| pick(&msg.parts.get(id as usize)?.body))
        .collect();
    (!found.is_empty()).then(|| found.join("\n"))
}

fn headers(msg: &Message<'_>) -> Vec<Header> {
    let raw = msg.raw_message();
    msg.headers()
        .iter()
        .map(|h| {
            let value = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(decode_value)
                .unwrap_or_default();
            Header {
                name: h.name.as_str().to_string(),
                value,
            }
        })
        .collect()
}

/// A raw field value, unfolded, encoded words decoded (mail-parser's unstructured reading).
fn decode_value(raw: &[u8]) -> String {
    match mail_parser::parsers::MessageStream::new(raw).parse_unstructured() {
        mail_parser::HeaderValue::Text(t) => t.trim().to_string(),
        _ => String::new(),
    }
}

fn mailboxes(field: Option<&Address<'_>>) -> Vec<Mailbox> {
    let Some(field) = field else {
        return Vec::new();
    };
    field
        .iter()
        .filter_map(|a| {
            let email = a.address()?.trim();
            (!email.is_empty()).then(|| Mailbox {
                name: a
                    .name()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
                email: email.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::read;

    #[test]
    fn headers_keep_order_and_decode_encoded_words() {
        let c = read(b"Subject: =?ISO-8859-1?Q?R=E9union?=\r\n lundi\r\nX-Custom: a\r\nTo: =?utf-8?b?SsO8cmdlbg==?= <j@example.de>, team: a@x.example, b@x.example;\r\nDate: Sun, 22 Nov 2026 11:00:00 +0100\r\n\r\nhi\r\n").unwrap();
        let names: Vec<_> = c.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Subject", "X-Custom", "To", "Date"]);
        assert_eq!(c.headers[0].value, "Réunion lundi");
        assert_eq!(c.to.len(), 3);
        assert_eq!(c.to[0].name.as_deref(), Some("Jürgen"));
        assert_eq!(c.to[2].email, "b@x.example");
        assert_eq!(c.date.as_deref(), Some("2026-11-22T10:00:00Z"));
        assert_eq!(c.text.as_deref(), Some("hi\r\n"));
        assert_eq!(c.html, None);
        assert!(c.cc.is_empty());
    }

    #[test]
    fn inline_images_and_attachments() {
        let raw = b"From: a@x.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=b\r\n\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>logo <img src=\"cid:logo@x\"></p>\r\n--b\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Disposition: ATTACHMENT; filename=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8=\r\n--b--\r\n";
        let c = read(raw).unwrap();
        assert_eq!(c.attachments.len(), 2);
        assert_eq!(c.attachments[0].content_id.as_deref(), Some("logo@x"));
        assert!(c.attachments[0].inline);
        assert_eq!(c.attachments[0].disposition, None);
        assert_eq!(c.attachments[1].disposition.as_deref(), Some("attachment"));
        assert!(!c.attachments[1].inline);
        assert_eq!(c.text, None);
        assert_eq!(c.stripped_text.as_deref(), Some("logo"));
    }
}
