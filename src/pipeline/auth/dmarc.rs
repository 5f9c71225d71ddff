//! An author domain -> what its DMARC records say beyond mail-auth's verdict: `pct=` sampling
//! (RFC 7489 §6.3), more than one record at a name (§6.6.3: no policy), and how strict each
//! author's outcome is when a message has several (§6.6.1: the strictest applies).

// The stage's own imports; these are its DMARC helpers, in a file of their own.
use super::*;

/// pct= of the DMARC record governing `domain` (RFC 7489 §6.3; RFC 9989 dropped it, so mail-auth
/// does not parse it). Looked up only when a failing message meets an enforcing policy.
pub(super) async fn dmarc_pct(dns: &Dns, domain: &str) -> u8 {
    let mut name = domain.trim_end_matches('.').to_string();
    for _ in 0..5 {
        if let Ok(raw) = dns
            .authenticator
            .txt_raw_lookup(format!("_dmarc.{name}."))
            .await
        {
            let text = String::from_utf8_lossy(&raw).to_string();
            if text
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("v=dmarc1")
            {
                return text
                    .split(';')
                    .filter_map(|t| t.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
                    .and_then(|(_, v)| v.trim().parse::<u8>().ok())
                    .map(|p| p.min(100))
                    .unwrap_or(100);
            }
        }
        match name.split_once('.') {
            Some((_, parent)) if parent.contains('.') => name = parent.to_string(),
            _ => break,
        }
    }
    100
}

/// Whether this message is in the sampled `pct` share that gets the full policy.
pub(super) fn sampled(pct: u8) -> bool {
    if pct >= 100 {
        return true;
    }
    let mut b = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    // 0..=99 with negligible bias.
    (b[0] as u32 * 100 / 256) < pct as u32
}

/// How strict one author domain's DMARC outcome is (RFC 7489 §6.6.1: with several authors the
/// strictest applies). A definite reject outranks not knowing.
pub(super) fn dmarc_rank(o: &DmarcOutput) -> u8 {
    match o.result() {
        DmarcResult::Fail(_) => match o.policy() {
            Policy::Reject => 6,
            Policy::Quarantine => 4,
            Policy::None | Policy::Unspecified => 2,
        },
        DmarcResult::TempError(_) => 5,
        DmarcResult::PermError(_) => 3,
        DmarcResult::None => 1,
        DmarcResult::Pass => 0,
    }
}

/// How many DMARC records (text starting `v=DMARC1`) `_dmarc.<domain>` has.
pub(super) async fn dmarc_records(dns: &Dns, domain: &str) -> Result<usize, String> {
    let records = dns.txt_records(&format!("_dmarc.{domain}.")).await?;
    Ok(records
        .iter()
        .filter(|r| {
            let r = r.trim_ascii_start();
            r.len() >= 8 && r[..8].eq_ignore_ascii_case(b"v=dmarc1")
        })
        .count())
}

/// RFC 7489 §6.6.3: when the name queried for policy discovery has more than one DMARC record,
/// no DMARC policy applies (mail-auth would use the first). Checked at the author domain, and at
/// its organizational domain when the author domain has none.
pub(super) async fn dmarc_ambiguous(dns: &Dns, domain: &str) -> Result<bool, String> {
    match dmarc_records(dns, domain).await? {
        0 => {
            let org = crate::util::org_domain(domain);
            Ok(org != domain && dmarc_records(dns, &org).await? > 1)
        }
        n => Ok(n > 1),
    }
}
