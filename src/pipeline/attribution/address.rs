//! Free text and header values -> mailboxes: `Name <addr>`, `"Doe, Jane" <addr>`, `Name
//! [mailto:addr]`, bare addresses; display names cleaned. RFC 5322 §3.4 (loosely: clients write
//! what they like).

use super::{Attribution, Method};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mailbox {
    pub(super) email: String,
    pub(super) name: Option<String>,
}

impl Mailbox {
    pub(super) fn same(&self, other: &Mailbox) -> bool {
        same_address(&self.email, &other.email)
    }

    pub(super) fn into_attribution(
        self,
        method: Method,
        forwarded_by: Option<String>,
    ) -> Attribution {
        Attribution {
            email: self.email,
            name: self.name,
            method,
            forwarded_by,
        }
    }
}

/// Address comparison for identity: case-insensitive, as every provider we meet treats it.
pub(super) fn same_address(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// An address as written, checked to look like one: `mailto:` and angle brackets removed,
/// domain lower-cased.
pub(super) fn normalize_address(raw: &str) -> Option<String> {
    let s = raw
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    let s = strip_prefix_ignore_case(s, "mailto:").unwrap_or(s);
    let at = s.rfind('@')?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.is_empty() || domain.is_empty() || s.contains(char::is_whitespace) {
        return None;
    }
    Some(format!("{local}@{}", domain.to_lowercase()))
}

pub(super) fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// A display name cleaned of the quotes, `*bold*` marks and spacing clients wrap it in. Quotes
/// go only in pairs: "'Jane' via Sales" keeps its inner ones.
pub(super) fn clean_name(raw: &str) -> Option<String> {
    let mut trimmed = raw.trim_matches(|c: char| c.is_whitespace() || "*,;:".contains(c));
    for _ in 0..3 {
        // Straight quotes, and the typographic pairs Outlook writes in French («»), Polish and
        // German („” „“) and English (“”).
        let quoted = [
            ('"', '"'),
            ('\'', '\''),
            ('`', '`'),
            ('«', '»'),
            ('„', '”'),
            ('„', '“'),
            ('“', '”'),
        ]
        .into_iter()
        .find(|&(open, close)| {
            trimmed.chars().count() >= 2 && trimmed.starts_with(open) && trimmed.ends_with(close)
        });
        match quoted {
            Some((open, close)) => {
                trimmed = trimmed[open.len_utf8()..trimmed.len() - close.len_utf8()].trim()
            }
            None => break,
        }
    }
    if trimmed.is_empty() || trimmed.contains('@') {
        return None;
    }
    let mut name = String::with_capacity(trimmed.len());
    for word in trimmed.split_whitespace() {
        if !name.is_empty() {
            name.push(' ');
        }
        name.push_str(word);
    }
    Some(name.replace("\\\"", "\""))
}

/// Longer "names" found before an address in free text are prose and dropped.
pub(super) const MAX_NAME_CHARS: usize = 120;

pub(super) fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || "._%+-=~#$^!&".contains(c)
}

pub(super) fn is_domain_char(c: char) -> bool {
    c.is_alphanumeric() || c == '.' || c == '-'
}

/// The first address in a line of text, with the display name before it: `Name <addr>`,
/// `"Doe, Jane" <addr>`, `Name [mailto:addr]`, `addr<mailto:addr>`, `mailto:addr`, `addr`.
pub(super) fn extract_mailbox(text: &str) -> Option<Mailbox> {
    extract_mailbox_at(text).map(|(m, _)| m)
}

/// [`extract_mailbox`], with the byte offset where the address starts.
pub(super) fn extract_mailbox_at(text: &str) -> Option<(Mailbox, usize)> {
    for (at, _) in text.match_indices('@') {
        let local_start = text[..at]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_local_char(c))
            .last()
            .map_or(at, |(i, _)| i);
        let domain_end = text[at + 1..]
            .char_indices()
            .take_while(|&(_, c)| is_domain_char(c))
            .last()
            .map_or(at + 1, |(i, c)| at + 1 + i + c.len_utf8());
        let local = text[local_start..at].trim_start_matches('.');
        let domain = text[at + 1..domain_end].trim_end_matches(['.', '-']);
        if local.is_empty() || !domain.contains('.') || domain.starts_with(['.', '-']) {
            continue;
        }
        let mut before = &text[..local_start];
        for marker in ["mailto:", "MAILTO:", "Mailto:"] {
            before = before.strip_suffix(marker).unwrap_or(before);
        }
        let before = before.trim_end_matches(|c: char| c.is_whitespace() || "<[(".contains(c));
        // A display name is short; a long run of text before the address is prose, not a name.
        let name = clean_name(before).filter(|n| n.chars().count() <= MAX_NAME_CHARS);
        let mailbox = Mailbox {
            email: format!("{local}@{}", domain.to_lowercase()),
            name,
        };
        return Some((mailbox, local_start));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_text() {
        let m = |s: &str| extract_mailbox(s).map(|m| (m.email, m.name));
        let some = |e: &str, n: Option<&str>| Some((e.to_string(), n.map(str::to_string)));
        assert_eq!(
            m("Jane Doe <jane@Example.COM>"),
            some("jane@example.com", Some("Jane Doe"))
        );
        assert_eq!(
            m("\"Doe, Jane\" <jane@example.com>"),
            some("jane@example.com", Some("Doe, Jane"))
        );
        assert_eq!(
            m("Jane Doe [mailto:jane@example.com]"),
            some("jane@example.com", Some("Jane Doe"))
        );
        assert_eq!(
            m("Jane Doe <jane@example.com<mailto:jane@example.com>>"),
            some("jane@example.com", Some("Jane Doe"))
        );
        assert_eq!(
            m("*Jane Doe* <jane@example.com>"),
            some("jane@example.com", Some("Jane Doe"))
        );
        assert_eq!(m("mailto:jane@example.com"), some("jane@example.com", None));
        assert_eq!(
            m("jane@example.com <jane@example.com>"),
            some("jane@example.com", None)
        );
        assert_eq!(m("Jane at home"), None);
        assert_eq!(m("@@@ a@b"), None);
    }
}
