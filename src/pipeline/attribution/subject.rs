//! Subject -> what its leading prefix says: forward (`Fwd:`, `WG:`, `TR:` …), reply (`Re:`, `AW:` …)
//! or neither. RFC 5322 §3.6.5 names `Re:` only; the rest are the clients' own.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Prefix {
    Forward,
    Reply,
    None,
}

/// Forward prefixes of the common clients and their localisations: English, French (TR),
/// German (WG), Spanish (RV), Italian (I), Portuguese (ENC), Dutch (Doorst), Polish (PD), Danish
/// and Norwegian (VS, Videresend), Swedish (VB), Finnish (VL).
pub(super) const FORWARD_PREFIXES: &[&str] = &[
    "fwd",
    "fw",
    "tr",
    "wg",
    "rv",
    "i",
    "enc",
    "doorst",
    "pd",
    "vs",
    "videresend",
    "vb",
    "vl",
];

/// Reply prefixes: English, German (AW, Antw), Scandinavian (SV), Polish (Odp), Italian (R, Rif),
/// Portuguese (RES), Dutch (Antw), French (Réf).
pub(super) const REPLY_PREFIXES: &[&str] = &[
    "re", "aw", "sv", "odp", "r", "rif", "res", "antw", "antwort", "ref", "réf", "ynt",
];

/// What the subject's leading prefix says ("[EXTERNAL] FW: x" is a forward, "RE: Fwd: x" a
/// reply).
pub(super) fn subject_kind(subject: &str) -> Prefix {
    let mut s = subject.trim_start();
    for _ in 0..4 {
        if let Some(rest) = s.strip_prefix('[') {
            match rest.find(']') {
                Some(end) => {
                    s = rest[end + 1..].trim_start();
                    continue;
                }
                None => return Prefix::None,
            }
        }
        break;
    }
    let Some(colon) = s.find(':').filter(|&c| c <= 16) else {
        return Prefix::None;
    };
    // "TR :" (French spacing), "Re[2]:", "Fwd(3):"
    let token = s[..colon].split(['[', '(']).next().unwrap_or("").trim();
    let token = token.to_lowercase();
    if FORWARD_PREFIXES.contains(&token.as_str()) {
        Prefix::Forward
    } else if REPLY_PREFIXES.contains(&token.as_str()) {
        Prefix::Reply
    } else {
        Prefix::None
    }
}

/// The subject without its reply/forward prefixes and [tags], for comparing a forward's subject
/// with the attached message's.
pub(super) fn strip_subject_prefixes(subject: &str) -> &str {
    let mut s = subject.trim();
    for _ in 0..8 {
        if let Some(rest) = s.strip_prefix('[') {
            if let Some(end) = rest.find(']') {
                s = rest[end + 1..].trim_start();
                continue;
            }
        }
        if subject_kind(s) == Prefix::None {
            break;
        }
        match s.find(':') {
            Some(c) => s = s[c + 1..].trim_start(),
            None => break,
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_prefixes() {
        assert_eq!(subject_kind("Fwd: hello"), Prefix::Forward);
        assert_eq!(subject_kind("[EXTERNAL] FW: hello"), Prefix::Forward);
        assert_eq!(subject_kind("TR : facture"), Prefix::Forward);
        assert_eq!(subject_kind("WG: Angebot"), Prefix::Forward);
        assert_eq!(subject_kind("Doorst: offerte"), Prefix::Forward);
        assert_eq!(subject_kind("Re[2]: hello"), Prefix::Reply);
        assert_eq!(subject_kind("RE: Fwd: hello"), Prefix::Reply);
        assert_eq!(subject_kind("AW: WG: Angebot"), Prefix::Reply);
        assert_eq!(subject_kind("Question: pricing"), Prefix::None);
        assert_eq!(subject_kind(""), Prefix::None);
        assert_eq!(strip_subject_prefixes("Fwd: RE: [x] Hello"), "Hello");
    }
}
