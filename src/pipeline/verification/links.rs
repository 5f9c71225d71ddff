//! Body lines and anchors -> addresses and `https` links, with the words that say what each link
//! is for. RFC 3986 (only the parts this stage reads: scheme, authority, path, query).

use super::codes::{code_shape, fold};
use super::{Link, MAX_LINKS};

/// In a link's path or its anchor text: what a confirmation link says.
pub(super) const LINK_POSITIVE: &[&str] = &[
    "verif",
    "confirm",
    "validat",
    "valider",
    "activat",
    "approve",
    "accept",
    "join",
    "invit",
    "subscribe",
    "bestatig",
    "bevestig",
    "conferm",
    "potwierdz",
];

/// In a link's path, query keys or anchor text: a link that is not the confirmation.
pub(super) const LINK_DENY: &[&str] = &[
    "unsub",
    "optout",
    "opt-out",
    "opt_out",
    "privacy",
    "terms",
    "legal",
    "policy",
    "abuse",
    "report",
    "cancel",
    "deny",
    "reject",
    "decline",
    "remove",
    "not-me",
    "notme",
    "not you",
    "not-you",
    "preferences",
    "manage",
    "leave",
    "abmelden",
    "desabonner",
    "desinscri",
    "annul",
    "stornieren",
    "ablehnen",
    "datenschutz",
    "impressum",
    "cancelar",
];

/// In the words around a link only ("Need help? https://…"): a path may well say "support"
/// (a group called acme-support).
pub(super) const CONTEXT_DENY: &[&str] = &[
    "help", "support", "hilfe", "aide", "ayuda", "aiuto", "ajuda", "baja",
];

/// A host's first label or a path's first segment that is a help or policy site.
pub(super) const DENY_PLACES: &[&str] = &["help", "support", "hc", "privacy", "legal", "kb"];

// --- Addresses and links. ---

/// The e-mail addresses written in `text`, lower-cased. A masked one (`ja*****@outlook.com`) is
/// left out: it names nobody.
pub(super) fn emails_in(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let local_char = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let domain_char = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    let mut out: Vec<String> = Vec::new();
    for (at, _) in text.match_indices('@') {
        let mut start = at;
        while start > 0 && local_char(b[start - 1]) {
            start -= 1;
        }
        if start > 0 && b[start - 1] == b'*' {
            continue;
        }
        let mut end = at + 1;
        while end < b.len() && domain_char(b[end]) {
            end += 1;
        }
        let local = text[start..at].trim_start_matches('.');
        let domain = text[at + 1..end].trim_end_matches(['.', '-']);
        let tld_ok = domain
            .rsplit_once('.')
            .is_some_and(|(_, tld)| tld.len() >= 2 && tld.bytes().all(|c| c.is_ascii_alphabetic()));
        if local.is_empty() || !tld_ok {
            continue;
        }
        let address = format!("{local}@{domain}").to_lowercase();
        if !out.contains(&address) {
            out.push(address);
        }
    }
    out
}

/// The parts of an `https` URL this stage looks at.
pub(super) struct Url {
    pub(super) host: String,
    pub(super) path: String,
    /// After `?`, without the fragment.
    pub(super) query: String,
}

impl Url {
    /// Only `https`, and never one with user information (`https://google.com@evil.example/`).
    pub(super) fn parse(url: &str) -> Option<Url> {
        let scheme = url.get(..8)?;
        if !scheme.eq_ignore_ascii_case("https://") {
            return None;
        }
        let after = url.get(8..)?;
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let authority = &after[..end];
        if authority.contains('@') || authority.contains('\\') {
            return None;
        }
        let host = authority.split(':').next().unwrap_or("").to_lowercase();
        let host = host.trim_end_matches('.').to_string();
        if host.is_empty()
            || !host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        {
            return None;
        }
        let rest = &after[end..];
        let path = rest.split(['?', '#']).next().unwrap_or("").to_string();
        let query = rest
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(""))
            .unwrap_or("")
            .to_string();
        Some(Url { host, path, query })
    }

    /// The path and the query's keys, lower-cased: what the link says it does.
    pub(super) fn words(&self) -> String {
        let mut words = self.path.to_lowercase();
        for pair in self.query.split('&') {
            words.push(' ');
            words.push_str(&pair.split('=').next().unwrap_or("").to_lowercase());
        }
        words
    }
}

/// Query keys that carry a confirmation code in a link (`…/verify?code=482913`).
pub(super) const CODE_KEYS: &[&str] = &[
    "code",
    "otp",
    "pin",
    "vcode",
    "verification_code",
    "verificationcode",
    "confirmation_code",
    "confirmationcode",
];

/// The confirmation code a link carries as a query parameter, for providers (Fastmail, some
/// others) whose mail shows the code only inside its confirm link. The value must look like a
/// code ([`code_shape`]): a long token is a token, not something a person types.
pub(super) fn code_in_link(url: &str) -> Option<String> {
    let parsed = Url::parse(url)?;
    parsed.query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let key = key.to_ascii_lowercase();
        if !CODE_KEYS.contains(&key.as_str()) {
            return None;
        }
        code_shape(value, false, 4)
    })
}

/// The `https://` links written in text lines, with the words before them as context.
pub(super) fn text_links(lines: &[String], out: &mut Vec<Link>) {
    for (i, line) in lines.iter().enumerate() {
        let lower = line.to_ascii_lowercase();
        for (pos, _) in lower.match_indices("https://") {
            if out.len() >= MAX_LINKS {
                return;
            }
            let Some(tail) = line.get(pos..) else {
                continue;
            };
            let end = tail
                .find(|c: char| c.is_whitespace() || "<>\"'`".contains(c))
                .unwrap_or(tail.len());
            let url = trim_url(&tail[..end]);
            let before = line.get(..pos).unwrap_or("").trim();
            let context = if before.is_empty() {
                i.checked_sub(1)
                    .and_then(|p| lines.get(p))
                    .map(|l| fold(l))
                    .unwrap_or_default()
            } else {
                fold(before)
            };
            out.push(Link {
                url: url.to_string(),
                context,
            });
        }
    }
}

/// Without the sentence punctuation that follows a URL in text, and an unbalanced `)`.
pub(super) fn trim_url(url: &str) -> &str {
    let mut url = url;
    loop {
        let trimmed = url.trim_end_matches(['.', ',', ';', ':', '!', '?']);
        let trimmed = if trimmed.ends_with(')')
            && trimmed.matches('(').count() < trimmed.matches(')').count()
        {
            &trimmed[..trimmed.len() - 1]
        } else {
            trimmed
        };
        if trimmed.len() == url.len() {
            return url;
        }
        url = trimmed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carried_in_links() {
        let got = |u: &str| code_in_link(u);
        assert_eq!(
            got("https://app.fastmail.com/forwarding/verify?code=738204&u=2bq7Kx9R").as_deref(),
            Some("738204")
        );
        assert_eq!(
            got("https://x.example/v?u=1&OTP=K7Q2ZP").as_deref(),
            Some("K7Q2ZP")
        );
        // A long token, a key that is not a code, or no query: nothing.
        assert_eq!(got("https://x.example/v?code=2bq7Kx9RmT4wLp8Nc1Zs"), None);
        assert_eq!(got("https://x.example/v?id=482913"), None);
        assert_eq!(got("https://x.example/verify/482913"), None);
        assert_eq!(got("http://x.example/v?code=482913"), None);
    }
}
