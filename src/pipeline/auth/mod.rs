//! Envelope + message bytes -> authentication results and a verdict. SPF (RFC 7208), DKIM
//! (RFC 6376), ARC (RFC 8617), DMARC (RFC 7489, with mail-auth's RFC 9989 tree walk), results as
//! an `Authentication-Results` field (RFC 8601).
//!
//! The policy understands forwarding: a forwarder breaks SPF of the original domain, so a DMARC
//! failure is forgiven when a trusted ARC sealer recorded that the original passed, or when the
//! connecting host is a trusted forwarder of the inbox and a DKIM signature of the original
//! domain verifies. DNS trouble is never a verdict: it gives `TempFail` (451 4.7.0), never 5xx
//! and never an unchecked accept.

mod dmarc;
mod policy;
mod spf;
mod tags;

use dmarc::{dmarc_ambiguous, dmarc_pct, dmarc_rank, sampled};
use policy::{decide, Facts};

pub use spf::check_identity as check_spf_identity;

use std::net::IpAddr;

use mail_auth::arc::{ArcError, Set as ArcSet};
use mail_auth::common::crypto::Algorithm;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    IprevResult, SpfOutput, SpfResult,
};

use crate::config::{Action, AuthPolicy, Forwarder};
use crate::dns::Dns;
use crate::pipeline::Envelope;
use crate::store::model::{AuthRecord, DkimRecord};

/// SPF results, computed at MAIL FROM time while the client is still sending.
#[derive(Debug, Clone)]
pub struct SpfResults {
    pub helo: SpfOutput,
    pub mail_from: SpfOutput,
}

/// Run the SPF checks for the HELO identity and the MAIL FROM identity (RFC 7208 §2.3, §2.4).
/// A null reverse path is checked as `postmaster@<helo>`.
pub async fn check_spf(
    dns: &Dns,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    hostname: &str,
) -> SpfResults {
    // Both identities are checked at once: with slow DNS the wait is one lookup chain, not two.
    let helo_check = spf::check_identity(dns, ip, helo, "", hostname);
    let mail_from_check = async {
        if mail_from.is_empty() {
            return None;
        }
        Some(spf::check_identity(dns, ip, helo, mail_from, hostname).await)
    };
    let (helo_out, mail_from_out) = tokio::join!(helo_check, mail_from_check);
    // RFC 7208 §2.4: with a null reverse path the MAIL FROM check is the HELO check.
    let mail_from_out = mail_from_out.unwrap_or_else(|| helo_out.clone());
    SpfResults {
        helo: helo_out,
        mail_from: mail_from_out,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Quarantine(String),
    Reject(String),
    TempFail(String),
}

impl Verdict {
    fn severity(&self) -> u8 {
        match self {
            Verdict::Accept => 0,
            Verdict::Quarantine(_) => 1,
            Verdict::TempFail(_) => 2,
            Verdict::Reject(_) => 3,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Quarantine(_) => "quarantine",
            Verdict::Reject(_) => "reject",
            Verdict::TempFail(_) => "tempfail",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Accept => "",
            Verdict::Quarantine(r) | Verdict::Reject(r) | Verdict::TempFail(r) => r,
        }
    }
}

/// The outcome of the checks for one message.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub record: AuthRecord,
    /// `Authentication-Results: ...\r\n`, empty when the checks were skipped.
    pub header: String,
    pub verdict: Verdict,
}

impl Assessment {
    pub fn skipped(why: &str) -> Assessment {
        Assessment {
            record: AuthRecord {
                status: "skipped".into(),
                reason: why.into(),
                verdict: "accept".into(),
                ..Default::default()
            },
            header: String::new(),
            verdict: Verdict::Accept,
        }
    }
}

fn spf_name(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_name(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_name(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

use crate::util::relaxed_aligned;

/// In an ARC-Authentication-Results value, did the original message authenticate for `from`?
/// Returns the method that says so (`dmarc`, `dkim` or `spf`).
pub fn recorded_pass(aar: &str, from_domain: &str) -> Option<&'static str> {
    let mut best = None;
    for clause in aar.split(';').skip(1) {
        let clause = clause.trim();
        let mut words = clause.split_whitespace();
        let Some(first) = words.next() else { continue };
        let Some((method, result)) = first.split_once('=') else {
            continue;
        };
        if !result.eq_ignore_ascii_case("pass") {
            continue;
        }
        let props: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
        let prop = |name: &str| {
            props
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim_matches('"').trim_start_matches('@'))
        };
        let aligned = |v: Option<&str>| {
            v.is_some_and(|v| relaxed_aligned(v.rsplit('@').next().unwrap_or(v), from_domain))
        };
        match method.to_ascii_lowercase().as_str() {
            "dmarc" if prop("header.from").is_none_or(|d| relaxed_aligned(d, from_domain)) => {
                return Some("dmarc")
            }
            "dkim" if aligned(prop("header.d")) || aligned(prop("header.i")) => best = Some("dkim"),
            "spf" if best.is_none() && aligned(prop("smtp.mailfrom")) => best = Some("spf"),
            _ => {}
        }
    }
    best
}

/// The newest ARC set: its sealer and what it recorded.
fn newest_set<'a>(sets: &'a [ArcSet<'a>]) -> Option<&'a ArcSet<'a>> {
    sets.iter().max_by_key(|s| s.seal.header.i)
}

/// The signing algorithm's name as the key record's `k=`/`h=` checks want it.
fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RsaSha1 => "rsa-sha1",
        Algorithm::RsaSha256 => "rsa-sha256",
        Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// Whether the key record at `selector._domainkey.domain` is one to use for a signature made with
/// `algorithm` (RFC 6376 §3.6.1, §6.1.2). mail-auth verified with it already; this reads its
/// tags as published. `Ok(Some(why))` when it must be ignored, `Err` for DNS trouble.
async fn key_refused(
    dns: &Dns,
    selector: &str,
    domain: &str,
    algorithm: &str,
) -> Result<Option<tags::Malformed>, String> {
    let records = dns
        .txt_records(&format!("{selector}._domainkey.{domain}."))
        .await?;
    let mut first_error = None;
    for r in &records {
        match tags::key_record(r, algorithm) {
            Ok(()) => return Ok(None),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Ok(Some(first_error.unwrap_or(tags::Malformed::KeyNoPublicKey)))
}

/// The mail-auth error a strict refusal is reported as (its text goes to the record).
fn refusal_error(m: &tags::Malformed) -> mail_auth::Error {
    match m {
        tags::Malformed::Algorithm(_) => mail_auth::Error::Dkim(DkimError::UnsupportedAlgorithm),
        tags::Malformed::BodyLength => mail_auth::Error::Dkim(DkimError::SignatureLength),
        tags::Malformed::Missing(_) => mail_auth::Error::MissingParameters,
        tags::Malformed::Version(_) => mail_auth::Error::Dkim(DkimError::UnsupportedVersion),
        tags::Malformed::KeyHash
        | tags::Malformed::KeyService
        | tags::Malformed::KeyType(_)
        | tags::Malformed::KeyVersion
        | tags::Malformed::KeyNoPublicKey => mail_auth::Error::Dkim(DkimError::UnsupportedKeyType),
        _ => mail_auth::Error::ParseError,
    }
}

/// RFC 8617 §4.1-§5: the ARC header fields, read strictly. `Some(why)` when the chain is broken
/// or malformed whatever mail-auth makes of it.
fn arc_refused(msg: &AuthenticatedMessage<'_>) -> Option<String> {
    if msg.ams_headers.is_empty() && (!msg.as_headers.is_empty() || !msg.aar_headers.is_empty()) {
        return Some("ARC set without ARC-Message-Signature (RFC 8617 §5.1.1)".into());
    }
    for h in &msg.ams_headers {
        if let Err(e) = tags::arc_message_signature(h.value) {
            return Some(format!("ARC-Message-Signature i={}: {e}", h.header.i));
        }
    }
    for h in &msg.as_headers {
        if let Err(e) = tags::arc_seal(h.value) {
            return Some(format!("ARC-Seal i={}: {e}", h.header.i));
        }
    }
    None
}

/// Run DKIM, ARC and DMARC on `raw` (SPF already done) and decide under each of `policies`
/// (the inboxes of the recipients): the strictest verdict wins.
pub async fn assess(
    dns: &Dns,
    hostname: &str,
    env: &Envelope,
    spf: &SpfResults,
    raw: &[u8],
    policies: &[&AuthPolicy],
) -> Assessment {
    let (ip, helo, mail_from) = (env.client_ip, env.helo.as_str(), env.mail_from.as_str());
    // Lenient parse: a signature with l= is kept so that its d= and s= reach the record and the
    // Authentication-Results field; our strict checks below refuse it (and everything else a
    // strict verifier must refuse) before mail-auth verifies what is left.
    let mut msg = AuthenticatedMessage::parse_with_opts(raw, None, false).unwrap_or_default();
    let from_fields = msg
        .headers
        .iter()
        .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"from"))
        .count();
    let mut authors: Vec<String> = Vec::new();
    for address in &msg.from {
        if let Some((_, d)) = address.rsplit_once('@') {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if !d.is_empty() && !authors.contains(&d) {
                authors.push(d);
            }
        }
    }
    let mut refused = Vec::new();
    for h in std::mem::take(&mut msg.dkim_headers) {
        match tags::dkim_signature(h.value) {
            Ok(()) => msg.dkim_headers.push(h),
            Err(e) => refused.push((h, e)),
        }
    }
    let arc_malformed = arc_refused(&msg);
    let msg = msg;

    // Probe the DMARC records while DKIM and ARC run: if the resolver cannot answer, DMARC cannot
    // be decided, and we say so now instead of after another round of timeouts. The same lookups
    // tell whether a name has two DMARC records.
    let probe = async {
        let mut ambiguous = Vec::new();
        for d in &authors {
            match dmarc_ambiguous(dns, d).await {
                Ok(true) => ambiguous.push(d.clone()),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ambiguous)
    };
    let (dkim_raw, arc, probed) = tokio::join!(
        dns.authenticator.verify_dkim(dns.params(&msg)),
        dns.authenticator.verify_arc(dns.params(&msg)),
        probe,
    );

    // DKIM outputs as a strict verifier reports them: a body-hash mismatch is `fail` (RFC 8601
    // §2.7.1), a signature mail-auth could not read is `permerror`, a pass whose key record must
    // be ignored is `permerror`, and the signatures refused above are `permerror` with d=/s=.
    let signature_of = |out: &DkimOutput<'_>| {
        let s = out.signature()?;
        msg.dkim_headers
            .iter()
            .find(|h| std::ptr::eq(&h.header, s))
            .map(|h| &h.header)
    };
    let mut dkim: Vec<DkimOutput<'_>> = Vec::new();
    let mut notes: Vec<Option<String>> = Vec::new();
    for out in &dkim_raw {
        let sig = signature_of(out);
        let (rebuilt, note) = match out.result() {
            // A body-hash mismatch or an expired signature: verified, and it failed.
            DkimResult::Neutral(e) if sig.is_some() => {
                (with_signature(DkimOutput::fail(e.clone()), sig), None)
            }
            DkimResult::Neutral(e) if sig.is_none() => (DkimOutput::perm_err(e.clone()), None),
            DkimResult::Pass => match sig {
                Some(s) => match key_refused(dns, &s.s, &s.d, algorithm_name(s.a)).await {
                    Ok(None) => (out.clone(), None),
                    Ok(Some(m)) => (
                        DkimOutput::perm_err(refusal_error(&m)).with_signature(s),
                        Some(m.to_string()),
                    ),
                    Err(e) => (
                        DkimOutput::temp_err(mail_auth::Error::Dns(mail_auth::DnsError::Resolver(
                            e,
                        )))
                        .with_signature(s),
                        None,
                    ),
                },
                None => (out.clone(), None),
            },
            _ => (out.clone(), None),
        };
        dkim.push(rebuilt);
        notes.push(note);
    }
    for (h, why) in &refused {
        dkim.push(DkimOutput::perm_err(refusal_error(why)).with_signature(&h.header));
        notes.push(Some(why.to_string()));
    }

    // ARC as RFC 8617 reports it: none, pass or fail. DNS trouble is remembered for the policy.
    let mut arc_note = arc_malformed;
    let mut arc_temp = false;
    if arc_note.is_none() && arc.result() == &DkimResult::Pass {
        // Every key used (the newest AMS, each seal) must be a key record to use.
        let sets = arc.sets();
        let mut keys: Vec<(String, String, Algorithm)> = sets
            .iter()
            .map(|s| {
                let h = s.seal.header;
                (h.s.clone(), h.d.clone(), h.a)
            })
            .collect();
        if let Some(last) = sets.last() {
            let h = last.signature.header;
            keys.push((h.s.clone(), h.d.clone(), h.a));
        }
        for (s, d, a) in keys {
            match key_refused(dns, &s, &d, algorithm_name(a)).await {
                Ok(None) => {}
                Ok(Some(m)) => {
                    arc_note = Some(format!("{s}._domainkey.{d}: {m}"));
                    break;
                }
                Err(_) => {
                    arc_temp = true;
                    break;
                }
            }
        }
    }
    let arc_state = match (arc.result(), &arc_note) {
        (_, Some(_)) => DkimResult::Fail(mail_auth::Error::Arc(ArcError::BrokenChain)),
        (DkimResult::TempError(e), None) => {
            arc_temp = true;
            DkimResult::Fail(e.clone())
        }
        (_, None) if arc_temp => DkimResult::Fail(mail_auth::Error::Arc(ArcError::BrokenChain)),
        (DkimResult::Pass, None) => DkimResult::Pass,
        (DkimResult::None, None) => DkimResult::None,
        (DkimResult::Neutral(e) | DkimResult::Fail(e) | DkimResult::PermError(e), None) => {
            arc_note = Some(e.to_string());
            DkimResult::Fail(e.clone())
        }
    };
    let arc = arc.clone().with_result(arc_state);

    let mail_from_domain = match mail_from.rsplit_once('@') {
        Some((_, d)) => d.to_string(),
        None => helo.to_string(),
    };
    let mut dmarcs: Vec<DmarcOutput> = Vec::new();
    match probed {
        Err(e) => {
            for d in &authors {
                let err = || {
                    DmarcResult::TempError(mail_auth::Error::Dns(mail_auth::DnsError::Resolver(
                        e.clone(),
                    )))
                };
                dmarcs.push(
                    DmarcOutput::default()
                        .with_domain(d)
                        .with_spf_result(err())
                        .with_dkim_result(err()),
                );
            }
        }
        Ok(ambiguous) => {
            for d in &authors {
                if ambiguous.contains(d) {
                    dmarcs.push(DmarcOutput::default().with_domain(d));
                    continue;
                }
                // One author at a time: mail-auth exempts a From with several domains.
                let one = AuthenticatedMessage {
                    from: vec![format!("author@{d}")],
                    ..Default::default()
                };
                let params = DmarcParameters::new(&one, &dkim, &mail_from_domain, &spf.mail_from);
                dmarcs.push(dns.authenticator.verify_dmarc(dns.params(params)).await);
            }
        }
    }
    if dmarcs.is_empty() {
        dmarcs.push(DmarcOutput::default());
    }
    let strictest = dmarcs
        .iter()
        .enumerate()
        .max_by_key(|(i, d)| (dmarc_rank(d), std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let dmarc = &dmarcs[strictest];

    // A message that names no domain at all (null sender, address-literal HELO, no From:) gives
    // the checks nothing to look up; one reverse-DNS lookup of the client keeps the rule that a
    // verdict is only given while DNS answers (and records who connected).
    let helo_is_domain =
        !helo.is_empty() && !helo.starts_with('[') && helo.parse::<IpAddr>().is_err();
    let iprev = if authors.is_empty() && mail_from.is_empty() && !helo_is_domain {
        Some(dns.authenticator.verify_iprev(dns.params(ip)).await)
    } else {
        None
    };
    let iprev_temp = iprev.as_ref().and_then(|o| match o.result() {
        IprevResult::TempError(e) => Some(e.to_string()),
        _ => None,
    });

    let sets = arc.sets();
    let newest = newest_set(sets);
    let arc_sealer = newest.map(|s| s.seal.header.d.to_lowercase());
    let arc_recorded = newest.and_then(|s| {
        let value = String::from_utf8_lossy(s.results.value);
        // The AAR value starts with `i=N;`; drop that so the authserv-id comes first.
        let value = value
            .split_once(';')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default();
        let aar = format!("x;{value}");
        // Every author must have passed at the sealer.
        let methods: Option<Vec<&'static str>> =
            authors.iter().map(|a| recorded_pass(&aar, a)).collect();
        methods.and_then(|m| m.first().copied())
    });
    let facts = Facts {
        ip,
        helo,
        spf,
        dkim: &dkim,
        authors: &authors,
        from_fields,
        arc_pass: arc.result() == &DkimResult::Pass,
        arc_temp,
        arc_sealer: arc_sealer.as_deref(),
        arc_recorded,
        iprev_temp,
    };

    let dmarc_result = dmarc.result();
    let policy = dmarc.policy();
    let enforcing = matches!(dmarc_result, DmarcResult::Fail(_))
        && matches!(policy, Policy::Reject | Policy::Quarantine);
    let pct = if enforcing {
        dmarc_pct(dns, dmarc.domain()).await
    } else {
        100
    };
    let in_sample = sampled(pct);

    let mut verdict = Verdict::Accept;
    let mut override_by = None;
    for p in policies {
        let (v, o) = decide(&facts, &dmarcs, dmarc, &dmarc_result, policy, in_sample, p);
        if v.severity() > verdict.severity() || (verdict == Verdict::Accept && o.is_some()) {
            verdict = v;
            override_by = o;
        }
    }

    let first_author = authors.first().map(String::as_str).unwrap_or("");
    let mut header = AuthenticationResults::new(hostname)
        .with_dkim_results(&dkim, first_author)
        .with_spf_ehlo_result(&spf.helo, ip, helo)
        .with_spf_mailfrom_result(&spf.mail_from, ip, mail_from, helo)
        .with_arc_result(&arc, ip);
    for d in &dmarcs {
        header = header.with_dmarc_result(d);
    }
    if let Some(iprev) = &iprev {
        header = header.with_iprev_result(iprev, ip);
    }
    let header = mail_auth::common::headers::HeaderWriter::to_header(&header);

    let record = AuthRecord {
        status: "checked".into(),
        spf_helo: spf_name(spf.helo.result()).into(),
        spf_mail_from: spf_name(spf.mail_from.result()).into(),
        spf_domain: spf.mail_from.domain().to_string(),
        dkim: dkim
            .iter()
            .zip(&notes)
            .map(|(d, note)| DkimRecord {
                result: dkim_name(d.result()).into(),
                domain: d.signature().map(|s| s.d.clone()).unwrap_or_default(),
                selector: d.signature().map(|s| s.s.clone()).unwrap_or_default(),
                error: match (note, d.result()) {
                    (Some(n), _) => n.clone(),
                    (None, DkimResult::Pass | DkimResult::None) => String::new(),
                    (
                        None,
                        DkimResult::Neutral(e)
                        | DkimResult::Fail(e)
                        | DkimResult::PermError(e)
                        | DkimResult::TempError(e),
                    ) => e.to_string(),
                },
            })
            .collect(),
        arc: arc_name(arc.result()).into(),
        arc_sealer,
        dmarc: dmarc_name(&dmarc_result).into(),
        dmarc_domain: dmarc.domain().to_string(),
        dmarc_policy: policy_name(policy).into(),
        dmarc_pct: pct,
        verdict: verdict.name().into(),
        reason: verdict.reason().to_string(),
        override_by,
    };
    if let Some(why) = &arc_note {
        tracing::debug!(arc = "fail", why = %why, "ARC chain refused");
    }
    Assessment {
        record,
        header,
        verdict,
    }
}

fn with_signature<'x>(
    o: DkimOutput<'x>,
    sig: Option<&'x mail_auth::dkim::Signature>,
) -> DkimOutput<'x> {
    match sig {
        Some(s) => o.with_signature(s),
        None => o,
    }
}

/// RFC 8617 §4.4's vocabulary for `arc=`: none, pass or fail.
fn arc_name(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::None => "none",
        _ => "fail",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_forwarders_recorded_results() {
        let aar = "mx.google.com; dkim=pass header.i=@acme.example header.s=s1 header.b=abc; spf=fail (google.com: domain of x@acme.example does not designate ...) smtp.mailfrom=x@acme.example; dmarc=pass (p=REJECT) header.from=acme.example";
        assert_eq!(recorded_pass(aar, "acme.example"), Some("dmarc"));
        let aar = "mx.google.com; dkim=pass header.i=@mail.acme.example; spf=fail smtp.mailfrom=x@acme.example";
        assert_eq!(recorded_pass(aar, "acme.example"), Some("dkim"));
        let aar =
            "mx.google.com; dkim=pass header.i=@evil.example; dmarc=fail header.from=acme.example";
        assert_eq!(recorded_pass(aar, "acme.example"), None);
        assert_eq!(
            recorded_pass("x; spf=pass smtp.mailfrom=a@acme.example", "acme.example"),
            Some("spf")
        );
    }

    #[test]
    fn alignment_and_domains() {
        assert!(relaxed_aligned("mail.acme.example", "acme.example"));
        assert!(!relaxed_aligned("acme.example", "other.example"));
        // A forwarder's recorded pass for attacker.co.uk says nothing about victim.co.uk.
        let aar = "mx.google.com; dkim=pass header.d=attacker.co.uk";
        assert_eq!(recorded_pass(aar, "victim.co.uk"), None);
        assert!(crate::util::domain_within("mx.google.com", "google.com"));
        assert!(!crate::util::domain_within("evilgoogle.com", "google.com"));
    }
}
