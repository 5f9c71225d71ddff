//! DKIM-Signature, ARC-Message-Signature, ARC-Seal and DKIM key-record text -> well formed or
//! why not, by the letter of RFC 6376 §3.2 (tag lists), §3.5 (signature tags), §3.6.1 (key
//! records), §6.1.1-6.1.2, RFC 8301 §3.1 (no rsa-sha1) and RFC 8617 §4.1 (ARC headers).
//!
//! mail-auth's parsers are lenient: they skip what they do not understand, take the last of a
//! duplicated tag, accept rsa-sha1 and ignore key-record `h=` and `s=`. A signature that a strict
//! verifier refuses must not pass here, so every header is read once more by these checks before
//! mail-auth verifies it (and every key record after), and a refusal is a `permerror` with the
//! reason below.

/// Longest signature header value we read (bytes). A real DKIM-Signature is under 2 KiB (an
/// RSA-4096 `b=` is 683 characters); past this the header is refused as malformed, unread.
pub const MAX_SIGNATURE_BYTES: usize = 16 * 1024;

/// Longest key record we read (bytes): an RSA-8192 `p=` is about 1.4 KiB.
pub const MAX_KEY_RECORD_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("longer than {0} bytes")]
    TooLong(usize),
    #[error("not 7-bit text")]
    NotText,
    #[error("empty tag-list entry (RFC 6376 §3.2)")]
    EmptyEntry,
    #[error("invalid tag name {0:?} (RFC 6376 §3.2)")]
    TagName(String),
    #[error("tag {0}= without '=' (RFC 6376 §3.2)")]
    NoValue(String),
    #[error("invalid character in the value of {0}= (RFC 6376 §3.2)")]
    TagValue(String),
    #[error("tag {0}= appears more than once (RFC 6376 §3.2)")]
    Duplicate(String),
    #[error("required tag {0}= missing")]
    Missing(&'static str),
    #[error("unsupported version v={0}")]
    Version(String),
    #[error("algorithm a={0} is not accepted (RFC 8301 §3.1)")]
    Algorithm(String),
    #[error("h= does not include From (RFC 6376 §6.1.1)")]
    FromNotSigned,
    #[error("h= includes ARC-Seal (RFC 8617 §4.1.2)")]
    SealSigned,
    #[error("ARC-Seal carries h= (RFC 8617 §4.1.3)")]
    SealWithHeaders,
    #[error("i= is not within d= (RFC 6376 §6.1.1)")]
    IdentityOutsideDomain,
    #[error("l= body-length limit refused (appended content would be unsigned)")]
    BodyLength,
    #[error("key record: v= is not first or not DKIM1 (RFC 6376 §3.6.1)")]
    KeyVersion,
    #[error("key record: h= does not allow sha256 (RFC 6376 §3.6.1)")]
    KeyHash,
    #[error("key record: service type s= is neither * nor email (RFC 6376 §3.6.1)")]
    KeyService,
    #[error("key record: k={0} does not match the signature's algorithm")]
    KeyType(String),
    #[error("key record: no p= tag")]
    KeyNoPublicKey,
}

/// One `tag=value` of a tag list, the value with folding whitespace removed at both ends.
#[derive(Debug)]
pub struct Tag<'a> {
    pub name: &'a str,
    pub value: String,
}

/// Read a tag list (RFC 6376 §3.2): `tag-spec *( ";" tag-spec ) [ ";" ]`, tag names
/// `ALPHA *( ALPHA / DIGIT / "_" )`, values of VALCHAR (`%x21-3A / %x3C-7E`) separated by folding
/// whitespace, each name at most once.
pub fn tag_list(raw: &[u8], max: usize) -> Result<Vec<Tag<'_>>, Malformed> {
    if raw.len() > max {
        return Err(Malformed::TooLong(max));
    }
    let text = std::str::from_utf8(raw).map_err(|_| Malformed::NotText)?;
    if !text.is_ascii() {
        return Err(Malformed::NotText);
    }
    let mut entries: Vec<&str> = text.split(';').collect();
    // One trailing ';' is allowed: the last entry is then empty (or only whitespace).
    if entries.len() > 1 && entries.last().is_some_and(|e| is_fws_only(e)) {
        entries.pop();
    }
    let mut tags: Vec<Tag<'_>> = Vec::with_capacity(entries.len());
    for entry in entries {
        if is_fws_only(entry) {
            return Err(Malformed::EmptyEntry);
        }
        let Some((name, value)) = entry.split_once('=') else {
            return Err(Malformed::NoValue(entry.trim().to_string()));
        };
        let name = name.trim_matches(is_fws);
        let mut chars = name.chars();
        let valid_name = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(Malformed::TagName(name.to_string()));
        }
        let value = value.trim_matches(is_fws);
        if value
            .chars()
            .any(|c| !(is_fws(c) || ('!'..='~').contains(&c)))
        {
            return Err(Malformed::TagValue(name.to_string()));
        }
        if tags.iter().any(|t| t.name == name) {
            return Err(Malformed::Duplicate(name.to_string()));
        }
        tags.push(Tag {
            name,
            value: value.to_string(),
        });
    }
    Ok(tags)
}

fn is_fws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_fws_only(s: &str) -> bool {
    s.chars().all(is_fws)
}

fn get<'t>(tags: &'t [Tag<'_>], name: &str) -> Option<&'t str> {
    tags.iter()
        .find(|t| t.name == name)
        .map(|t| t.value.as_str())
}

fn require<'t>(tags: &'t [Tag<'_>], name: &'static str) -> Result<&'t str, Malformed> {
    get(tags, name)
        .filter(|v| !v.is_empty())
        .ok_or(Malformed::Missing(name))
}

/// A tag whose name matches a defined one only when case is ignored (`A=`, `D=`): tag names are
/// case-sensitive (RFC 6376 §3.2), so the signature lacks the real one and may not be read as if
/// it had it.
fn wrong_case(tags: &[Tag<'_>], defined: &[&str]) -> Result<(), Malformed> {
    match tags.iter().find(|t| {
        !defined.contains(&t.name) && defined.iter().any(|d| d.eq_ignore_ascii_case(t.name))
    }) {
        Some(t) => Err(Malformed::TagName(t.name.to_string())),
        None => Ok(()),
    }
}

/// The header names listed in `h=`, lowercased, folding whitespace removed.
fn signed_headers(h: &str) -> Vec<String> {
    h.split(':')
        .map(|n| n.trim_matches(is_fws).to_ascii_lowercase())
        .collect()
}

/// The only signing algorithms accepted (RFC 8301 §3.1 forbids rsa-sha1; RFC 8463 adds Ed25519).
fn algorithm(a: &str) -> Result<(), Malformed> {
    match a.to_ascii_lowercase().as_str() {
        "rsa-sha256" | "ed25519-sha256" => Ok(()),
        _ => Err(Malformed::Algorithm(a.to_string())),
    }
}

const DKIM_TAGS: &[&str] = &[
    "v", "a", "b", "bh", "c", "d", "h", "i", "l", "q", "s", "t", "x", "z",
];

/// A DKIM-Signature value (RFC 6376 §3.5, §6.1.1).
pub fn dkim_signature(raw: &[u8]) -> Result<(), Malformed> {
    let tags = tag_list(raw, MAX_SIGNATURE_BYTES)?;
    wrong_case(&tags, DKIM_TAGS)?;
    let v = require(&tags, "v")?;
    if v != "1" {
        return Err(Malformed::Version(v.to_string()));
    }
    algorithm(require(&tags, "a")?)?;
    for name in ["b", "bh", "d", "s"] {
        require(&tags, name)?;
    }
    if !signed_headers(require(&tags, "h")?)
        .iter()
        .any(|h| h == "from")
    {
        return Err(Malformed::FromNotSigned);
    }
    if get(&tags, "l").is_some() {
        return Err(Malformed::BodyLength);
    }
    if let Some(i) = get(&tags, "i") {
        let d = require(&tags, "d")?;
        let domain = i.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !crate::util::domain_within(domain, d) {
            return Err(Malformed::IdentityOutsideDomain);
        }
    }
    Ok(())
}

const AMS_TAGS: &[&str] = &["i", "a", "b", "bh", "c", "d", "h", "l", "s", "t", "x", "z"];

/// An ARC-Message-Signature value (RFC 8617 §4.1.2: DKIM-Signature's tags with `i=` the
/// instance, no `v=`, and ARC-Seal never among the signed headers).
pub fn arc_message_signature(raw: &[u8]) -> Result<(), Malformed> {
    let tags = tag_list(raw, MAX_SIGNATURE_BYTES)?;
    wrong_case(&tags, AMS_TAGS)?;
    algorithm(require(&tags, "a")?)?;
    for name in ["i", "b", "bh", "d", "s"] {
        require(&tags, name)?;
    }
    if signed_headers(require(&tags, "h")?)
        .iter()
        .any(|h| h == "arc-seal")
    {
        return Err(Malformed::SealSigned);
    }
    if get(&tags, "l").is_some() {
        return Err(Malformed::BodyLength);
    }
    Ok(())
}

const SEAL_TAGS: &[&str] = &["i", "a", "b", "cv", "d", "s", "t"];

/// An ARC-Seal value (RFC 8617 §4.1.3: `h=` is not allowed).
pub fn arc_seal(raw: &[u8]) -> Result<(), Malformed> {
    let tags = tag_list(raw, MAX_SIGNATURE_BYTES)?;
    wrong_case(&tags, SEAL_TAGS)?;
    algorithm(require(&tags, "a")?)?;
    for name in ["i", "b", "cv", "d", "s"] {
        require(&tags, name)?;
    }
    if get(&tags, "h").is_some() {
        return Err(Malformed::SealWithHeaders);
    }
    Ok(())
}

/// A DKIM key record (RFC 6376 §3.6.1, §6.1.2) as it must be for a signature made with
/// `algorithm` (`rsa-sha256` or `ed25519-sha256`): a record to ignore is an error here.
pub fn key_record(raw: &[u8], algorithm: &str) -> Result<(), Malformed> {
    let tags = tag_list(raw, MAX_KEY_RECORD_BYTES)?;
    wrong_case(&tags, &["v", "h", "k", "n", "p", "s", "t"])?;
    if let Some(pos) = tags.iter().position(|t| t.name == "v") {
        if pos != 0 || tags[pos].value != "DKIM1" {
            return Err(Malformed::KeyVersion);
        }
    }
    if let Some(h) = get(&tags, "h") {
        if !h
            .split(':')
            .any(|a| a.trim_matches(is_fws).eq_ignore_ascii_case("sha256"))
        {
            return Err(Malformed::KeyHash);
        }
    }
    if let Some(s) = get(&tags, "s") {
        if !s.split(':').any(|t| {
            let t = t.trim_matches(is_fws);
            t == "*" || t.eq_ignore_ascii_case("email")
        }) {
            return Err(Malformed::KeyService);
        }
    }
    let k = get(&tags, "k").unwrap_or("rsa");
    let expected = if algorithm.to_ascii_lowercase().starts_with("ed25519") {
        "ed25519"
    } else {
        "rsa"
    };
    if !k.eq_ignore_ascii_case(expected) {
        return Err(Malformed::KeyType(k.to_string()));
    }
    if get(&tags, "p").is_none() {
        return Err(Malformed::KeyNoPublicKey);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "v=1; a=rsa-sha256; c=relaxed/relaxed; d=acme.example; s=s1;\r\n\th=from:to:subject; bh=AAAA; b=BBBB\r\n\tCCCC;";

    #[test]
    fn a_well_formed_signature_reads() {
        assert_eq!(dkim_signature(GOOD.as_bytes()), Ok(()));
    }

    #[test]
    fn malformed_signatures_are_named() {
        let cases: &[(&str, Malformed)] = &[
            (
                "v=1; d=acme.example; s=s1; h=from; bh=A; b=B",
                Malformed::Missing("a"),
            ),
            (
                "v=1; a=rsa-sha1; d=a.example; s=s1; h=from; bh=A; b=B",
                Malformed::Algorithm("rsa-sha1".into()),
            ),
            (
                "v=1; a=rsa-sha256; d=a.example; s=s1; h=to:subject; bh=A; b=B",
                Malformed::FromNotSigned,
            ),
            (
                "v=1; a=rsa-sha256; d=a.example; d=b.example; s=s1; h=from; bh=A; b=B",
                Malformed::Duplicate("d".into()),
            ),
            (
                "v=1; a=rsa-sha256;; d=a.example; s=s1; h=from; bh=A; b=B",
                Malformed::EmptyEntry,
            ),
            (
                "v=1; a=rsa-sha256; D=a.example; s=s1; h=from; bh=A; b=B",
                Malformed::TagName("D".into()),
            ),
            (
                "v=1; a=rsa-sha256; d=a.example; s=s1; h=from; bh=A; b=B; x-y=1",
                Malformed::TagName("x-y".into()),
            ),
            (
                "v=1; a=rsa-sha256; d=a.example; s=s1; h=from; bh=A; b=B; l=10",
                Malformed::BodyLength,
            ),
            (
                "v=1; a=rsa-sha256; d=a.example; s=s1; h=from; bh=A; b=B; i=@evil.example",
                Malformed::IdentityOutsideDomain,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(dkim_signature(raw.as_bytes()).as_ref(), Err(want), "{raw}");
        }
        assert_eq!(
            dkim_signature(&vec![b'a'; MAX_SIGNATURE_BYTES + 1]),
            Err(Malformed::TooLong(MAX_SIGNATURE_BYTES))
        );
        assert_eq!(dkim_signature(b"v=1; a=\xff\xfe"), Err(Malformed::NotText));
    }

    #[test]
    fn arc_headers() {
        let ams = "i=1; a=rsa-sha256; d=f.example; s=arc; h=from:arc-seal; bh=A; b=B";
        assert_eq!(
            arc_message_signature(ams.as_bytes()),
            Err(Malformed::SealSigned)
        );
        let ams = "i=1; a=rsa-sha256; d=f.example; s=arc; h=from:to; bh=A; b=B";
        assert_eq!(arc_message_signature(ams.as_bytes()), Ok(()));
        let seal = "i=1; a=rsa-sha256; cv=none; d=f.example; s=arc; h=from; b=B";
        assert_eq!(arc_seal(seal.as_bytes()), Err(Malformed::SealWithHeaders));
    }

    #[test]
    fn key_records_to_ignore() {
        assert_eq!(key_record(b"v=DKIM1; k=rsa; p=AAAA", "rsa-sha256"), Ok(()));
        assert_eq!(
            key_record(b"k=rsa; h=sha1; p=AAAA", "rsa-sha256"),
            Err(Malformed::KeyHash)
        );
        assert_eq!(
            key_record(b"k=rsa; s=web; p=AAAA", "rsa-sha256"),
            Err(Malformed::KeyService)
        );
        assert_eq!(
            key_record(b"k=rsa; s=*; h=sha1:sha256; p=AAAA", "rsa-sha256"),
            Ok(())
        );
        assert_eq!(
            key_record(b"p=AAAA; v=DKIM1", "rsa-sha256"),
            Err(Malformed::KeyVersion)
        );
        assert_eq!(
            key_record(b"\x00\x01\xff\xfe p=", "rsa-sha256"),
            Err(Malformed::NotText)
        );
    }
}
