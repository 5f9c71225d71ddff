//! Parsed message -> the original sender of a manual forward: a forwarded block in the body (plain
//! text, then HTML) or an attached message. RFC 2046 §5.2.1 (message/rfc822).

use std::borrow::Cow;

use mail_parser::{Message, MimeHeaders, PartType};

use super::address::{extract_mailbox, same_address, Mailbox};
use super::header::Headers;
use super::lines::{
    attribution_line, is_decoration, label, separator, split_lines, Field, Line, Separator,
};
use super::subject::{strip_subject_prefixes, subject_kind, Prefix};
use super::{Method, MAX_DEPTH, SCAN_LIMIT_BYTES};
use crate::pipeline::html;

// Manual forwards: the body, and message/rfc822 attachments
// ---------------------------------------------------------------------------------------------

pub(super) struct Found {
    pub(super) mailbox: Mailbox,
    pub(super) method: Method,
}

/// The innermost original sender of a manually forwarded message, if `msg` is one.
pub(super) fn manual_forward(msg: &Message<'_>, rcpt: &str, depth: usize) -> Option<Found> {
    if depth >= MAX_DEPTH {
        return None;
    }
    let subject = msg.subject().unwrap_or("");
    let kind = subject_kind(subject);

    // Plain text first: it is what the client wrote. The HTML body is read too when the plain
    // part says nothing, since some clients send a placeholder or a lossy plain part.
    let plain = plain_body(msg);
    if let Some(text) = plain {
        if let Some(m) = innermost_inline(text, kind, rcpt) {
            return Some(Found {
                mailbox: m,
                method: Method::ForwardedInline,
            });
        }
    }
    let html = html_body(msg).map(|h| html::to_text(h, html::FOR_ATTRIBUTION).text);
    if let Some(text) = &html {
        if let Some(m) = innermost_inline(text, kind, rcpt) {
            return Some(Found {
                mailbox: m,
                method: Method::ForwardedInline,
            });
        }
    }

    // A forwarded message/rfc822 attachment. A delivery report (multipart/report) also carries
    // one and is not a forward; neither is a reply that happens to attach a message.
    if kind == Prefix::Reply || is_report(msg) {
        return None;
    }
    let inner = attached_message(msg)?;
    let blank_body = plain
        .or(html.as_deref())
        .is_none_or(|t| !t.chars().any(char::is_alphanumeric));
    let same_subject = inner.subject().is_some_and(|s| {
        strip_subject_prefixes(s).eq_ignore_ascii_case(strip_subject_prefixes(subject))
    });
    if !(kind == Prefix::Forward || subject.trim().is_empty() || same_subject || blank_body) {
        return None;
    }
    if let Some(found) = manual_forward(inner, rcpt, depth + 1) {
        return Some(found);
    }
    let headers = Headers::read(inner);
    let evidence = headers.forwarding_evidence("");
    let author = headers.author(evidence.is_some())?;
    if same_address(&author.mailbox.email, rcpt) {
        return None;
    }
    Some(Found {
        mailbox: author.mailbox,
        method: Method::ForwardedAttachment,
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

pub(super) fn attached_message<'a>(msg: &'a Message<'a>) -> Option<&'a Message<'a>> {
    msg.attachments
        .iter()
        .find_map(|&id| match &msg.parts.get(id as usize)?.body {
            PartType::Message(inner) => Some(inner),
            _ => None,
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
    Block(Option<Separator>, Block<'a>),
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
                let enough = match sep {
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

/// Follow forwarded blocks from the top of `text` to the innermost one and return its sender.
/// `kind` is what the subject of the message holding `text` says.
pub(super) fn innermost_inline(text: &str, kind: Prefix, rcpt: &str) -> Option<Mailbox> {
    let lines = split_lines(text);
    let mut level_kind = kind;
    let mut found: Option<Mailbox> = None;
    let mut i = 0;
    for _ in 0..MAX_DEPTH {
        let Some((event, next)) = next_event(&lines, i) else {
            break;
        };
        match event {
            Event::Attribution(mailbox) => {
                // A forward that quotes its original like a reply ("Fwd:" over "On … X
                // wrote:", as some mobile clients do): the attribution names the author.
                if level_kind == Prefix::Forward {
                    if let Some(m) = mailbox.filter(|m| !same_address(&m.email, rcpt)) {
                        found = Some(m);
                    }
                }
                break;
            }
            Event::Block(sep, block) => {
                let is_forward = match sep {
                    // A quoted forward banner under a reply subject is a reply to a forward.
                    Some(Separator::Forward) => !(level_kind == Prefix::Reply && block.depth > 0),
                    _ => level_kind == Prefix::Forward,
                };
                if !is_forward {
                    break;
                }
                let Some(sender) = block.sender() else {
                    break;
                };
                if same_address(&sender.email, rcpt) {
                    break;
                }
                found = Some(sender);
                // The forwarded message's own subject decides whether the next block down is
                // another forward.
                level_kind = block.subject.map_or(Prefix::None, subject_kind);
                i = next;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let _ = innermost_inline(&s, Prefix::Forward, "a@b.c");
            let _ = srs_decode(&s);
            let _ = caf_decode(&s);
            let _ = subject_kind(&s);
            let _ = strip_subject_prefixes(&s);
            let _ = via_name(&s);
            let _ = truncate(&s, (next() % 50) as usize);
        }
    }
}
