//! Envelope reverse-path -> the original sender and the forwarder: SRS (libsrs2's SRS0/SRS1,
//! Microsoft 365's `bounces+SRS=`) and Gmail's `+caf_` auto-forward address.

use super::address::strip_prefix_ignore_case;

/// Decode an SRS reverse-path: `SRS0=HHH=TT=orig-domain=orig-local@forwarder`, the SRS1 form
/// (`SRS1=HHH=first-forwarder==HHH=TT=orig-domain=orig-local@second`) and Microsoft 365's
/// `bounces+SRS=HHH=TT=orig-domain=orig-local@forwarder`. Returns (original sender, forwarder
/// domain).
pub(super) fn srs_decode(mail_from: &str) -> Option<(String, String)> {
    let addr = mail_from
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let at = addr.rfind('@')?;
    let (local, forwarder) = (&addr[..at], &addr[at + 1..]);
    if forwarder.is_empty() {
        return None;
    }
    let starts = std::iter::once(0).chain(local.match_indices('+').map(|(i, _)| i + 1));
    for start in starts {
        let rest = &local[start..];
        let original = if let Some(r) = strip_prefix_ignore_case(rest, "SRS0") {
            r.strip_prefix(['=', '+', '-']).and_then(srs0_fields)
        } else if let Some(r) = strip_prefix_ignore_case(rest, "SRS1") {
            // hash, first forwarder's domain, then the SRS0 part with its own separator kept.
            r.strip_prefix(['=', '+', '-']).and_then(|r| {
                let mut it = r.splitn(3, '=');
                let (_hash, _first, srs0) = (it.next()?, it.next()?, it.next()?);
                srs0.strip_prefix(['=', '+', '-']).and_then(srs0_fields)
            })
        } else if let Some(r) = strip_prefix_ignore_case(rest, "SRS=") {
            srs0_fields(r)
        } else {
            None
        };
        if let Some(original) = original {
            return Some((original, forwarder.to_lowercase()));
        }
    }
    None
}

/// `HHH=TT=domain=local` -> `local@domain`.
pub(super) fn srs0_fields(s: &str) -> Option<String> {
    let mut it = s.splitn(4, '=');
    let (hash, stamp, domain, local) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let ok = !hash.is_empty()
        && !stamp.is_empty()
        && domain.contains('.')
        && !local.is_empty()
        && !domain.contains(char::is_whitespace);
    ok.then(|| format!("{local}@{}", domain.to_lowercase()))
}

/// Decode Gmail's auto-forward reverse-path `team+caf_=support=acme.example@gmail.com`. Returns
/// (forwarding mailbox `team@gmail.com`, destination `support@acme.example`).
pub(super) fn caf_decode(mail_from: &str) -> Option<(String, String)> {
    let addr = mail_from
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let at = addr.rfind('@')?;
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    let lower = local.to_ascii_lowercase();
    let pos = lower.find("+caf_")?;
    let base = &local[..pos];
    if base.is_empty() || domain.is_empty() {
        return None;
    }
    let dest = local[pos + 5..].trim_start_matches('=');
    let destination = match dest.rfind('=') {
        Some(eq) => format!("{}@{}", &dest[..eq], &dest[eq + 1..]),
        None => String::new(),
    };
    Some((format!("{base}@{}", domain.to_lowercase()), destination))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srs_and_caf_decoding() {
        assert_eq!(
            srs_decode("SRS0=HHH=TT=orig-domain.example=orig-local@forwarder.example"),
            Some((
                "orig-local@orig-domain.example".into(),
                "forwarder.example".into()
            ))
        );
        assert_eq!(
            srs_decode("<SRS1=XXX=first.example==HHH=TT=Orig.Example=a=b@second.example>"),
            Some(("a=b@orig.example".into(), "second.example".into()))
        );
        assert_eq!(
            srs_decode("bounces+SRS=Ab1cD=2X=fabrikam.com=bob@contoso.com"),
            Some(("bob@fabrikam.com".into(), "contoso.com".into()))
        );
        assert_eq!(srs_decode("srs0@example.com"), None);
        assert_eq!(srs_decode("SRS0=x@"), None);
        assert_eq!(
            caf_decode("team+caf_=support=acme.inbound.example@gmail.com"),
            Some((
                "team@gmail.com".into(),
                "support@acme.inbound.example".into()
            ))
        );
        assert_eq!(caf_decode("team@gmail.com"), None);
    }
}
