//! Parsed message -> the original sender of a manual forward: a forwarded block in the body (plain
//! text, then HTML) or an attached message. RFC 2046 §5.2.1 (message/rfc822).

use std::borrow::Cow;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use super::address::{extract_mailbox, same_address, Mailbox};
use super::header::Headers;
use super::lines::{
    attribution_line, is_decoration, label, separator, split_lines, unfold_inline_blocks, Field,
    Line, Separator,
};
use super::{Layout, Method, MAX_DEPTH, SCAN_LIMIT_BYTES};
use crate::pipeline::html;
use crate::pipeline::languages::{strip_subject_prefixes, subject_kind, Prefix};

pub(super) struct Found {
    pub(super) mailbox: Mailbox,
    pub(super) method: Method,
}

/// The original sender of a manually forwarded message, if `msg` is one: the author of the
/// top-most forwarded block (plain text first, then the HTML body), else of an attached original.
pub(super) fn manual_forward(msg: &Message<'_>, rcpt: &str) -> Option<Found> {
    let subject = msg.subject().unwrap_or("");
    let kind = subject_kind(subject);

    // Plain text first: it is what the client wrote. The HTML body is read too when the plain
    // part says nothing (a placeholder, a lossy plain part, or a name whose address only the
    // HTML's mailto link carries).
    let plain = plain_body(msg);
    if let Some(text) = plain {
        if let Some(found) = topmost_inline(&unfold_inline_blocks(text), kind, rcpt) {
            return Some(found);
        }
    }
    let html = html_body(msg).map(|h| html::to_text(h, html::FOR_ATTRIBUTION).text);
    if let Some(text) = &html {
        if let Some(found) = topmost_inline(&unfold_inline_blocks(text), kind, rcpt) {
            return Some(found);
        }
    }

    // An attached original. A delivery report (multipart/report) also carries one and is not a
    // forward; neither is a reply that happens to attach a message.
    if kind == Prefix::Reply || is_report(msg) {
        return None;
    }
    let attached = attached_original(msg)?;
    let inner = attached.message();
    let blank_body = plain
        .or(html.as_deref())
        .is_none_or(|t| !t.chars().any(char::is_alphanumeric));
    let same_subject = inner.subject().is_some_and(|s| {
        strip_subject_prefixes(s).eq_ignore_ascii_case(strip_subject_prefixes(subject))
    });
    if !(kind == Prefix::Forward || subject.trim().is_empty() || same_subject || blank_body) {
        return None;
    }
    let headers = Headers::read(inner);
    let evidence = headers.forwarding_evidence("");
    let author = headers.author(evidence.is_some())?;
    if same_address(&author.mailbox.email, rcpt) {
        return None;
    }
    Some(Found {
        mailbox: author.mailbox,
        method: Method::ManualForward(Layout::Attachment),
    })
}

pub(super) fn is_report(msg: &Message<'_>) -> bool {
    msg.root_part().content_type().is_some_and(|ct| {
        ct.c_type.eq_ignore_ascii_case("multipart")
            && ct
                .c_subtype
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    })
}

/// An attached original: parsed by mail-parser (message/rfc822), or parsed here from the bytes
/// of an `.eml` that a client or gateway sent as application/octet-stream.
pub(super) enum Attached<'a> {
    Parsed(&'a Message<'a>),
    Bytes(Box<Message<'a>>),
}

impl<'a> Attached<'a> {
    pub(super) fn message(&self) -> &Message<'a> {
        match self {
            Attached::Parsed(m) => m,
            Attached::Bytes(m) => m,
        }
    }
}

/// The first attached original among the first [`MAX_DEPTH`] attachments.
pub(super) fn attached_original<'a>(msg: &'a Message<'a>) -> Option<Attached<'a>> {
    msg.attachments.iter().take(MAX_DEPTH).find_map(|&id| {
        let part = msg.parts.get(id as usize)?;
        match &part.body {
            PartType::Message(inner) => Some(Attached::Parsed(inner)),
            PartType::Binary(bytes) if is_eml_name(part.attachment_name()) => {
                let inner = MessageParser::new().parse(bytes.as_ref())?;
                // A message has a header section; arbitrary bytes named .eml may not.
                (inner.from().is_some() || inner.subject().is_some())
                    .then(|| Attached::Bytes(Box::new(inner)))
            }
            _ => None,
        }
    })
}

fn is_eml_name(name: Option<&str>) -> bool {
    name.is_some_and(|n| {
        let n = n.trim().trim_matches('"');
        // `get`, not indexing: the name is arbitrary text and may end inside a character.
        n.len() > 4
            && n.get(n.len() - 4..)
                .is_some_and(|ext| ext.eq_ignore_ascii_case(".eml"))
    })
}

/// The first text/plain body part, cut to the scan limit.
pub(super) fn plain_body<'a>(msg: &'a Message<'a>) -> Option<&'a str> {
    msg.text_body
        .iter()
        .find_map(|&id| match &msg.parts.get(id as usize)?.body {
            PartType::Text(t) => Some(truncate(t, SCAN_LIMIT_BYTES)),
            _ => None,
        })
}

/// The first text/html body part, cut to the scan limit.
pub(super) fn html_body<'a>(msg: &'a Message<'a>) -> Option<&'a str> {
    msg.html_body
        .iter()
        .find_map(|&id| match &msg.parts.get(id as usize)?.body {
            PartType::Html(h) => Some(truncate(h, SCAN_LIMIT_BYTES)),
            _ => None,
        })
}

pub(super) fn truncate(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A run of header-like lines ("From: …", "Sent: …", "To: …", "Subject: …").
pub(super) struct Block<'a> {
    pub(super) from: Option<Cow<'a, str>>,
    pub(super) subject: Option<&'a str>,
    pub(super) fields: u8,
    /// The line after the block.
    pub(super) end: usize,
    /// The quote depth of its first line.
    pub(super) depth: u8,
}

impl Block<'_> {
    pub(super) fn field_count(&self) -> u32 {
        self.fields.count_ones()
    }
}

/// The longest header block we read; real ones have at most eight lines.
pub(super) const MAX_BLOCK_LINES: usize = 24;

pub(super) fn parse_block<'a>(lines: &[Line<'a>], start: usize) -> Block<'a> {
    let mut block = Block {
        from: None,
        subject: None,
        fields: 0,
        end: start,
        depth: lines.get(start).map_or(0, |l| l.depth),
    };
    let mut i = start;
    let mut last: Option<Field> = None;
    while i < lines.len() && i - start < MAX_BLOCK_LINES {
        let text = lines[i].text;
        if text.is_empty() {
            // One blank line inside a block, when a new field follows it.
            let continues = block.fields != 0
                && lines
                    .get(i + 1)
                    .and_then(|l| label(l.text))
                    .is_some_and(|(f, _)| block.fields & f.bit() == 0);
            if continues {
                i += 1;
                continue;
            }
            break;
        }
        let Some((field, value)) = label(text) else {
            // "To: A <a@x>; B <b@x>;" wrapped onto the next line.
            if matches!(last, Some(Field::To | Field::Cc)) && text.contains('@') {
                i += 1;
                continue;
            }
            break;
        };
        last = Some(field);
        if field == Field::From && block.fields & Field::From.bit() != 0 {
            break;
        }
        block.fields |= field.bit();
        i += 1;
        match field {
            Field::From => {
                let mut from = Cow::Borrowed(value);
                // "From: A Long Name\n<addr>" and "From:\nName <addr>": the address on the next line.
                if extract_mailbox(value).is_none() {
                    if let Some(next) = lines.get(i).map(|l| l.text) {
                        if !next.is_empty()
                            && label(next).is_none()
                            && extract_mailbox(next).is_some()
                        {
                            from = Cow::Owned(format!("{value} {next}"));
                            i += 1;
                        }
                    }
                }
                block.from = Some(from);
            }
            Field::Subject => block.subject = Some(value),
            _ => {}
        }
    }
    block.end = i.max(start + 1);
    block
}

impl Block<'_> {
    pub(super) fn has_from(&self) -> bool {
        self.fields & Field::From.bit() != 0
    }

    pub(super) fn sender(&self) -> Option<Mailbox> {
        self.from.as_deref().and_then(extract_mailbox)
    }
}

pub(super) enum Event<'a> {
    /// "On … wrote:": what follows is a quoted reply.
    Attribution(Option<Mailbox>),
    /// A header block with a From, and the separator above it, if any.
    Block(Option<(Separator, Layout)>, Block<'a>),
}

/// The block a separator at `i` introduces, if one starts within the next few lines.
pub(super) fn block_after_separator<'a>(lines: &[Line<'a>], i: usize) -> Option<Block<'a>> {
    let mut j = i + 1;
    let mut seen = 0;
    while j < lines.len() && seen < 6 {
        let text = lines[j].text;
        if text.is_empty() {
            j += 1;
            continue;
        }
        seen += 1;
        if label(text).is_some() {
            let block = parse_block(lines, j);
            if block.has_from() {
                return Some(block);
            }
            // Gmail's "Forwarded conversation" puts a Subject line and a rule first.
            j = block.end;
            continue;
        }
        if is_decoration(text) {
            j += 1;
            continue;
        }
        return None;
    }
    None
}

/// The next attribution line or header block at or after line `i`, and the line after it.
pub(super) fn next_event<'a>(lines: &[Line<'a>], mut i: usize) -> Option<(Event<'a>, usize)> {
    while i < lines.len() {
        let text = lines[i].text;
        if text.is_empty() {
            i += 1;
            continue;
        }
        if let Some(mailbox) = attribution_line(lines, i) {
            return Some((Event::Attribution(mailbox), i + 1));
        }
        if let Some(sep) = separator(text) {
            if let Some(block) = block_after_separator(lines, i) {
                let enough = match sep.0 {
                    Separator::Forward => 1,
                    Separator::Ambiguous => 2,
                };
                if block.field_count() >= enough {
                    let end = block.end;
                    return Some((Event::Block(Some(sep), block), end));
                }
            }
            i += 1;
            continue;
        }
        if label(text).is_some() {
            let block = parse_block(lines, i);
            // Without a separator only a full block counts: From, a date and a subject or
            // recipient, as Outlook writes it.
            if block.has_from() && block.field_count() >= 3 {
                let end = block.end;
                return Some((Event::Block(None, block), end));
            }
            i = block.end;
            continue;
        }
        i += 1;
    }
    None
}

/// The sender of the top-most forwarded block in `text`, and the layout it was written in.
/// `kind` is what the subject of the message holding `text` says. A top-most block without an
/// address (a name only) gives nothing: no address further down stands in for its author.
pub(super) fn topmost_inline(text: &str, kind: Prefix, rcpt: &str) -> Option<Found> {
    let lines = split_lines(text);
    let (event, _) = next_event(&lines, 0)?;
    let (mailbox, layout) = match event {
        // A forward that quotes its original like a reply ("Fwd:" over "On … X wrote:", as some
        // mobile clients do): the attribution names the author. Under any other subject it is
        // a reply, which keeps its header From.
        Event::Attribution(mailbox) if kind == Prefix::Forward => (mailbox?, Layout::Quoted),
        Event::Attribution(_) => return None,
        Event::Block(sep, block) => {
            let is_forward = match sep {
                // A quoted forward banner under a reply subject is a reply to a forward.
                Some((Separator::Forward, _)) => !(kind == Prefix::Reply && block.depth > 0),
                _ => kind == Prefix::Forward,
            };
            if !is_forward {
                return None;
            }
            let layout = sep.map_or(Layout::Outlook, |(_, layout)| layout);
            (block.sender()?, layout)
        }
    };
    if same_address(&mailbox.email, rcpt) {
        return None;
    }
    Some(Found {
        mailbox,
        method: Method::ManualForward(layout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eml_names() {
        assert!(is_eml_name(Some("\"Invoice 4411.EML\"")));
        assert!(!is_eml_name(Some("notes.txt")));
        // Regression (found by the mutation test): a name ending inside a character.
        assert!(!is_eml_name(Some("x€€")));
        assert!(!is_eml_name(None));
    }
    use crate::pipeline::attribution::header::via_name;
    use crate::pipeline::attribution::srs::{caf_decode, srs_decode};

    /// A tiny xorshift generator: the internals never panic on arbitrary text.
    #[test]
    fn internals_survive_random_text() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: Vec<char> = "<>&;#x:@.-_=\"' \n\r\tabcFromDe:àÄł\u{a0}[]()*/!mailto"
            .chars()
            .collect();
        for _ in 0..3000 {
            let len = (next() % 200) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = html::to_text(&s, html::FOR_ATTRIBUTION);
            let _ = extract_mailbox(&s);
            let _ = topmost_inline(&s, Prefix::Forward, "a@b.c");
            let _ = unfold_inline_blocks(&s);
            let _ = srs_decode(&s);
            let _ = caf_decode(&s);
            let _ = subject_kind(&s);
            let _ = strip_subject_prefixes(&s);
            let _ = via_name(&s);
            let _ = truncate(&s, (next() % 50) as usize);
        }
    }
}
