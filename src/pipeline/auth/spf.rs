//! An SPF identity and its published record -> checked by mail-auth, after our strict reading of
//! what mail-auth reads leniently. RFC 7208 §4.3 (identity), §4.5 (one record), §4.6 (record
//! syntax: any error is a permerror before anything is evaluated), §5.6 (CIDR lengths), §7.1
//! (domain-spec and macro syntax).
//!
//! mail-auth skips terms it cannot read, clamps CIDR lengths and uses the first of several
//! records; a literal target that is no domain name would only fail to match in evaluation. The
//! top-level record is where all of that shows, and RFC 7208 §4.6 makes its syntax decide first,
//! so it is read here before mail-auth evaluates it. Records reached through include:/redirect=
//! are left to mail-auth (whether they are reached depends on evaluation). What mail-auth got
//! wrong in evaluation itself (macro-made targets that were a temperror, ptr, exp=, void lookups,
//! '/' in a domain-spec, ...) is fixed in our patched copy: vendor/mail-auth/PATCHES.md.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{SpfOutput, SpfResult};

use crate::dns::Dns;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpfSyntax {
    #[error("a byte that is not printable ASCII or space (RFC 7208 §4.6.1)")]
    NotPrintable,
    #[error("unknown or malformed mechanism {0:?} (RFC 7208 §5)")]
    Mechanism(String),
    #[error("malformed modifier {0:?} (RFC 7208 §6)")]
    Modifier(String),
    #[error("{0}= appears more than once (RFC 7208 §6)")]
    DuplicateModifier(&'static str),
    #[error("invalid domain-spec {0:?} (RFC 7208 §7.1)")]
    DomainSpec(String),
    #[error("invalid macro in {0:?} (RFC 7208 §7.1)")]
    Macro(String),
    #[error("invalid CIDR length in {0:?} (RFC 7208 §5.6)")]
    Cidr(String),
    #[error("invalid address in {0:?} (RFC 7208 §5.6)")]
    Address(String),
    #[error("more than one v=spf1 record (RFC 7208 §4.5)")]
    SeveralRecords,
}

/// Whether `domain` can be an SPF identity at all (RFC 7208 §4.3): a multi-label name, every
/// label 1 to 63 bytes, no address literal. Otherwise the result is `none`, without a lookup.
pub fn identity_valid(domain: &str) -> bool {
    let d = domain.strip_suffix('.').unwrap_or(domain);
    let mut labels = 0;
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 {
            return false;
        }
        labels += 1;
    }
    labels >= 2 && d.len() <= 253 && !d.starts_with('[') && d.parse::<IpAddr>().is_err()
}

/// Whether `text` starts an SPF record: `v=spf1` (any case) alone or followed by a space.
pub fn is_spf_record(text: &[u8]) -> bool {
    text.len() >= 6
        && text[..6].eq_ignore_ascii_case(b"v=spf1")
        && (text.len() == 6 || text[6] == b' ')
}

/// RFC 7208 §4.6.1 and §5-§7: the whole record, before any term is evaluated.
pub fn record(raw: &[u8]) -> Result<(), SpfSyntax> {
    if raw.iter().any(|b| !(0x20..=0x7e).contains(b)) {
        return Err(SpfSyntax::NotPrintable);
    }
    // Checked printable ASCII above, so this cannot fail.
    let text = std::str::from_utf8(raw).map_err(|_| SpfSyntax::NotPrintable)?;
    let (mut redirect, mut exp) = (false, false);
    for term in text.split(' ').filter(|t| !t.is_empty()).skip(1) {
        let body = term.strip_prefix(['+', '-', '~', '?']).unwrap_or(term);
        let qualified = body.len() != term.len();
        let name_len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(body.len());
        if body[name_len..].starts_with('=') {
            let (name, value) = (&body[..name_len], &body[name_len + 1..]);
            if qualified || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return Err(SpfSyntax::Modifier(term.into()));
            }
            match name.to_ascii_lowercase().as_str() {
                "redirect" | "exp" => {
                    let seen = if name.eq_ignore_ascii_case("redirect") {
                        &mut redirect
                    } else {
                        &mut exp
                    };
                    if *seen {
                        return Err(SpfSyntax::DuplicateModifier(
                            if name.eq_ignore_ascii_case("redirect") {
                                "redirect"
                            } else {
                                "exp"
                            },
                        ));
                    }
                    *seen = true;
                    domain_spec(value)?;
                }
                _ => macro_string(value)?,
            }
            continue;
        }
        mechanism(body)?;
    }
    Ok(())
}

fn mechanism(body: &str) -> Result<(), SpfSyntax> {
    let name_end = body.find([':', '/']).unwrap_or(body.len());
    let (name, rest) = (&body[..name_end], &body[name_end..]);
    match name.to_ascii_lowercase().as_str() {
        "all" if rest.is_empty() => Ok(()),
        "include" | "exists" => match rest.strip_prefix(':') {
            Some(spec) => domain_spec(spec),
            None => Err(SpfSyntax::Mechanism(body.into())),
        },
        "ptr" => match rest.strip_prefix(':') {
            Some(spec) => domain_spec(spec),
            None if rest.is_empty() => Ok(()),
            None => Err(SpfSyntax::Mechanism(body.into())),
        },
        "a" | "mx" => {
            let (spec, v4, v6) = split_dual_cidr(rest);
            cidr(v4, 32, body)?;
            cidr(v6, 128, body)?;
            match spec.strip_prefix(':') {
                Some(spec) => domain_spec(spec),
                None if spec.is_empty() => Ok(()),
                None => Err(SpfSyntax::Cidr(body.into())),
            }
        }
        "ip4" => {
            let value = rest
                .strip_prefix(':')
                .ok_or_else(|| SpfSyntax::Mechanism(body.into()))?;
            let (addr, len) = match value.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (value, None),
            };
            addr.parse::<Ipv4Addr>()
                .map_err(|_| SpfSyntax::Address(body.into()))?;
            cidr(len, 32, body)
        }
        "ip6" => {
            let value = rest
                .strip_prefix(':')
                .ok_or_else(|| SpfSyntax::Mechanism(body.into()))?;
            let (addr, len) = match value.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (value, None),
            };
            addr.parse::<Ipv6Addr>()
                .map_err(|_| SpfSyntax::Address(body.into()))?;
            cidr(len, 128, body)
        }
        _ => Err(SpfSyntax::Mechanism(body.into())),
    }
}

/// `a`/`mx` arguments -> (`:domain-spec` or empty, ip4 length, ip6 length), the dual-cidr-length
/// read from the end: `/n`, `//m` or `/n//m` (a domain-spec may itself contain `/`).
fn split_dual_cidr(rest: &str) -> (&str, Option<&str>, Option<&str>) {
    let digits_at_end = |s: &str| s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let mut spec = rest;
    let mut v6 = None;
    let n = digits_at_end(spec);
    if n > 0 && spec[..spec.len() - n].ends_with("//") {
        v6 = Some(&spec[spec.len() - n..]);
        spec = &spec[..spec.len() - n - 2];
    }
    let mut v4 = None;
    let n = digits_at_end(spec);
    if n > 0 && spec[..spec.len() - n].ends_with('/') {
        v4 = Some(&spec[spec.len() - n..]);
        spec = &spec[..spec.len() - n - 1];
    }
    (spec, v4, v6)
}

/// A CIDR length: digits without a leading zero, at most `max`.
fn cidr(len: Option<&str>, max: u32, term: &str) -> Result<(), SpfSyntax> {
    let Some(len) = len else { return Ok(()) };
    let ok = !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'))
        && len.parse::<u32>().is_ok_and(|n| n <= max);
    if ok {
        Ok(())
    } else {
        Err(SpfSyntax::Cidr(term.into()))
    }
}

/// `macro-string domain-end` (RFC 7208 §7.1): the macros well formed; the name ends in a macro or
/// in `.toplabel` (not all-numeric, no leading or trailing hyphen); literal labels are 1 to 63
/// bytes.
fn domain_spec(spec: &str) -> Result<(), SpfSyntax> {
    macro_string(spec)?;
    if spec.ends_with('}') {
        return Ok(());
    }
    let bad = || SpfSyntax::DomainSpec(spec.into());
    let name = spec.strip_suffix('.').unwrap_or(spec);
    let (_, top) = name.rsplit_once('.').ok_or_else(bad)?;
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let toplabel = !top.is_empty()
        && top.chars().all(|c| alnum(c) || c == '-')
        && if top.contains('-') {
            top.starts_with(alnum) && top.ends_with(alnum)
        } else {
            top.chars().any(|c| c.is_ascii_alphabetic())
        };
    if !toplabel {
        return Err(bad());
    }
    if !spec.contains('%') && name.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(bad());
    }
    Ok(())
}

/// Every `%` starts `%%`, `%_`, `%-` or `%{letter digits [r] delimiters}`.
fn macro_string(s: &str) -> Result<(), SpfSyntax> {
    let bad = || SpfSyntax::Macro(s.into());
    let mut rest = s;
    while let Some(at) = rest.find('%') {
        let after = &rest[at + 1..];
        match after.chars().next() {
            Some('%' | '_' | '-') => rest = &after[1..],
            Some('{') => {
                let end = after.find('}').ok_or_else(bad)?;
                let inner = &after[1..end];
                let mut chars = inner.chars();
                let letter = chars.next().ok_or_else(bad)?;
                if !"slodiphcrtvSLODIPHCRTV".contains(letter) {
                    return Err(bad());
                }
                let tail: String = chars.collect();
                let digits =
                    tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let tail = &tail[digits..];
                let tail = tail.strip_prefix(['r', 'R']).unwrap_or(tail);
                if !tail.chars().all(|c| ".-+,/_=".contains(c)) {
                    return Err(bad());
                }
                rest = &after[end + 1..];
            }
            _ => return Err(bad()),
        }
    }
    Ok(())
}

/// The published record of `domain` read strictly: `Ok(Some(why))` when SPF must be a permerror
/// before evaluation, `Ok(None)` when mail-auth may evaluate it (including when there is none),
/// `Err` when DNS did not answer (mail-auth will then find the same and say temperror).
async fn published_record_refused(dns: &Dns, domain: &str) -> Result<Option<SpfSyntax>, String> {
    let records = dns
        .txt_records(&format!("{}.", domain.trim_end_matches('.')))
        .await?;
    let spf: Vec<&Vec<u8>> = records.iter().filter(|r| is_spf_record(r)).collect();
    match spf.as_slice() {
        [] => Ok(None),
        [one] => Ok(record(one).err()),
        _ => Ok(Some(SpfSyntax::SeveralRecords)),
    }
}

/// SPF for one identity (RFC 7208 §2.3, §2.4): the MAIL FROM address, or with an empty
/// `mail_from` the HELO name. An IPv4-mapped IPv6 client is the IPv4 client it is (§5); an empty
/// local part is `postmaster` (§4.3); an identity that is no domain name is `none` (§4.3).
pub async fn check_identity(
    dns: &Dns,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    hostname: &str,
) -> SpfOutput {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let (sender, domain) = if mail_from.is_empty() {
        (None, helo.to_string())
    } else {
        let (local, domain) = mail_from.rsplit_once('@').unwrap_or(("", mail_from));
        let local = if local.is_empty() {
            "postmaster"
        } else {
            local
        };
        (Some(format!("{local}@{domain}")), domain.to_string())
    };
    if !identity_valid(&domain) {
        return SpfOutput::new(domain).with_result(SpfResult::None);
    }
    if let Ok(Some(why)) = published_record_refused(dns, &domain).await {
        tracing::debug!(spf = "permerror", domain = %domain, why = %why, "SPF record refused");
        return SpfOutput::new(domain).with_result(SpfResult::PermError);
    }
    let params = match &sender {
        Some(sender) => SpfParameters::verify_mail_from(ip, helo, hostname, sender),
        None => SpfParameters::verify_ehlo(ip, helo, hostname),
    };
    dns.authenticator.verify_spf(dns.params(params)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        for ok in [
            "v=spf1 -all",
            "v=spf1 a mx/24 a:mail.example.com//64 mx:x.example.com/24//64 -all",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 include:_spf.example.com ~all",
            "v=spf1 a:foo:bar/baz.example.com exists:%{i}.%{l1r+-}._spf.%{d} ?all",
            "v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all",
            "v=spf1 redirect=_spf.example.com moo.cow-far_out=man:dog/cat",
            "v=spf1 a:museum.example. -all",
        ] {
            assert_eq!(record(ok.as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            "v=spf1 a:foo-bar -all",
            "v=spf1 a:111.222.33.44",
            "v=spf1 a:museum",
            "v=spf1 a:museum.",
            "v=spf1 a:example.-com",
            "v=spf1 a:example.com:8080",
            "v=spf1 a:mail.example...com -all",
            "v=spf1 a/33 -all",
            "v=spf1 a//129 -all",
            "v=spf1 a/24/64 -all",
            "v=spf1 ip4:1.2.3.4/032 -all",
            "v=spf1 ip6:::1.1.1.1/129",
            "v=spf1 redirect=-all ?all",
            "v=spf1 exp=-all",
            "v=spf1 1up=foo",
            "v=spf1 =all",
            "v=spf1 a:ctrl.example.com\rptr -all",
            "v=spf1 foo:bar -all",
            "v=spf1 a:%{q}.example.com",
            "v=spf1 redirect=a.example.com redirect=b.example.com",
        ] {
            assert!(record(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identities() {
        assert!(identity_valid("example.com"));
        assert!(!identity_valid("A...example.com"));
        assert!(!identity_valid("[1.2.3.5]"));
        assert!(!identity_valid("OEMCOMPUTER"));
        assert!(is_spf_record(b"V=sPf1 +all"));
        assert!(!is_spf_record(b"v=spf10"));
    }
}
