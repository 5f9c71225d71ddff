//! Envelope + message bytes -> authentication results and a verdict. SPF (RFC 7208), DKIM
//! (RFC 6376), ARC (RFC 8617), DMARC (RFC 7489, with mail-auth's RFC 9989 tree walk), results as
//! an `Authentication-Results` field (RFC 8601).
//!
//! The policy understands forwarding: a forwarder breaks SPF of the original domain, so a DMARC
//! failure is forgiven when a trusted ARC sealer recorded that the original passed, or when the
//! connecting host is a trusted forwarder of the inbox and a DKIM signature of the original
//! domain verifies. DNS trouble is never a verdict: it gives `TempFail` (451 4.7.0), never 5xx
//! and never an unchecked accept.

use std::net::IpAddr;

use mail_auth::arc::Set as ArcSet;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    SpfOutput, SpfResult,
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
    let helo_is_domain =
        !helo.is_empty() && !helo.starts_with('[') && helo.parse::<IpAddr>().is_err();
    // Both identities are checked at once: with slow DNS the wait is one lookup chain, not two.
    let helo_check = async {
        if helo_is_domain {
            dns.authenticator
                .verify_spf(dns.params(SpfParameters::verify_ehlo(ip, helo, hostname)))
                .await
        } else {
            SpfOutput::new(helo.to_string())
        }
    };
    let mail_from_check = async {
        if mail_from.is_empty() {
            return None;
        }
        let params = SpfParameters::verify_mail_from(ip, helo, hostname, mail_from);
        Some(dns.authenticator.verify_spf(dns.params(params)).await)
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

/// `sub.example.com` is aligned with `example.com` and vice versa (relaxed alignment, with the
/// last two labels standing in for the organisational domain; good enough to read a forwarder's
/// recorded results, which are advisory).
fn relaxed_aligned(a: &str, b: &str) -> bool {
    let org = |d: &str| {
        let labels: Vec<&str> = d.trim_end_matches('.').rsplitn(3, '.').collect();
        labels
            .iter()
            .take(2)
            .rev()
            .copied()
            .collect::<Vec<_>>()
            .join(".")
            .to_lowercase()
    };
    !a.is_empty() && !b.is_empty() && org(a) == org(b)
}

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

/// pct= of the DMARC record governing `domain` (RFC 7489 §6.3; RFC 9989 dropped it, so mail-auth
/// does not parse it). Looked up only when a failing message meets an enforcing policy.
async fn dmarc_pct(dns: &Dns, domain: &str) -> u8 {
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
fn sampled(pct: u8) -> bool {
    if pct >= 100 {
        return true;
    }
    let mut b = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    // 0..=99 with negligible bias.
    (b[0] as u32 * 100 / 256) < pct as u32
}

/// Everything the policy needs besides the config.
struct Facts<'a> {
    ip: IpAddr,
    helo: &'a str,
    spf: &'a SpfResults,
    dkim: &'a [DkimOutput<'a>],
    from_domain: &'a str,
    arc_pass: bool,
    arc_sealer: Option<&'a str>,
    arc_recorded: Option<&'static str>,
}

impl Facts<'_> {
    /// Why a failure may be forgiven under `policy`, if it may.
    fn forgiven(&self, policy: &AuthPolicy) -> Option<String> {
        if self.arc_pass {
            if let (Some(sealer), Some(method)) = (self.arc_sealer, self.arc_recorded) {
                if policy
                    .trusted_arc_sealers
                    .iter()
                    .any(|t| crate::util::domain_within(sealer, t))
                {
                    return Some(format!("arc:{sealer} ({method}=pass recorded)"));
                }
            }
        }
        let original_dkim = self.dkim.iter().any(|d| {
            d.result() == &DkimResult::Pass
                && d.signature()
                    .is_some_and(|s| relaxed_aligned(&s.d, self.from_domain))
        });
        if !original_dkim {
            return None;
        }
        policy.trusted_forwarders.iter().find_map(|f| match f {
            Forwarder::Net(n) if n.contains(self.ip) => {
                Some(format!("trusted-forwarder:{}", self.ip))
            }
            Forwarder::Domain(d) => {
                let envelope = self.spf.mail_from.result() == SpfResult::Pass
                    && crate::util::domain_within(self.spf.mail_from.domain(), d);
                let helo = self.spf.helo.result() == SpfResult::Pass
                    && crate::util::domain_within(self.helo, d);
                (envelope || helo).then(|| format!("trusted-forwarder:{d}"))
            }
            _ => None,
        })
    }
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
    let parsed = AuthenticatedMessage::parse(raw);
    let empty = AuthenticatedMessage::default();
    let msg = parsed.as_ref().unwrap_or(&empty);
    let from_domain = msg
        .from
        .first()
        .and_then(|f| f.rsplit_once('@'))
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default();
    // Probe the DMARC record while DKIM and ARC run: if the resolver cannot answer, DMARC cannot
    // be decided, and we say so now instead of after another round of timeouts.
    let probe = async {
        if from_domain.is_empty() {
            return None;
        }
        // Through the record cache, keyed as mail-auth's own DMARC lookup: when DNS works this
        // fetch (or cache hit) is the one verify_dmarc then finds in the cache.
        let name = format!("_dmarc.{from_domain}.");
        match dns
            .authenticator
            .txt_lookup::<mail_auth::dmarc::Dmarc>(name, Some(&dns.txt))
            .await
        {
            Err(e @ mail_auth::Error::Dns(mail_auth::DnsError::Resolver(_))) => Some(e),
            _ => None,
        }
    };
    let (dkim, arc, unreachable) = tokio::join!(
        dns.authenticator.verify_dkim(dns.params(msg)),
        dns.authenticator.verify_arc(dns.params(msg)),
        probe,
    );
    let mail_from_domain = match mail_from.rsplit_once('@') {
        Some((_, d)) => d.to_string(),
        None => helo.to_string(),
    };
    let dmarc: DmarcOutput = match unreachable {
        Some(e) => DmarcOutput::default()
            .with_domain(&from_domain)
            .with_spf_result(DmarcResult::TempError(e.clone()))
            .with_dkim_result(DmarcResult::TempError(e)),
        None if parsed.is_some() => {
            let params = DmarcParameters::new(msg, &dkim, &mail_from_domain, &spf.mail_from);
            dns.authenticator.verify_dmarc(dns.params(params)).await
        }
        None => DmarcOutput::default(),
    };

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
        recorded_pass(&format!("x;{value}"), &from_domain)
    });
    let facts = Facts {
        ip,
        helo,
        spf,
        dkim: &dkim,
        from_domain: &from_domain,
        arc_pass: arc.result() == &DkimResult::Pass,
        arc_sealer: arc_sealer.as_deref(),
        arc_recorded,
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
        let (v, o) = decide(&facts, &dmarc, &dmarc_result, policy, in_sample, p);
        if v.severity() > verdict.severity() || (verdict == Verdict::Accept && o.is_some()) {
            verdict = v;
            override_by = o;
        }
    }

    let header = AuthenticationResults::new(hostname)
        .with_dkim_results(&dkim, &from_domain)
        .with_spf_ehlo_result(&spf.helo, ip, helo)
        .with_spf_mailfrom_result(&spf.mail_from, ip, mail_from, helo)
        .with_arc_result(&arc, ip)
        .with_dmarc_result(&dmarc);
    let header = mail_auth::common::headers::HeaderWriter::to_header(&header);

    let record = AuthRecord {
        status: "checked".into(),
        spf_helo: spf_name(spf.helo.result()).into(),
        spf_mail_from: spf_name(spf.mail_from.result()).into(),
        spf_domain: spf.mail_from.domain().to_string(),
        dkim: dkim
            .iter()
            .map(|d| DkimRecord {
                result: dkim_name(d.result()).into(),
                domain: d.signature().map(|s| s.d.clone()).unwrap_or_default(),
                selector: d.signature().map(|s| s.s.clone()).unwrap_or_default(),
                error: match d.result() {
                    DkimResult::Pass | DkimResult::None => String::new(),
                    DkimResult::Neutral(e)
                    | DkimResult::Fail(e)
                    | DkimResult::PermError(e)
                    | DkimResult::TempError(e) => e.to_string(),
                },
            })
            .collect(),
        arc: dkim_name(arc.result()).into(),
        arc_sealer,
        dmarc: dmarc_name(&dmarc_result).into(),
        dmarc_domain: dmarc.domain().to_string(),
        dmarc_policy: policy_name(policy).into(),
        dmarc_pct: pct,
        verdict: verdict.name().into(),
        reason: verdict.reason().to_string(),
        override_by,
    };
    Assessment {
        record,
        header,
        verdict,
    }
}

/// The policy for one inbox. Returns the verdict and, when a failure was forgiven, why.
fn decide(
    f: &Facts<'_>,
    dmarc: &DmarcOutput,
    dmarc_result: &DmarcResult,
    policy: Policy,
    in_sample: bool,
    p: &AuthPolicy,
) -> (Verdict, Option<String>) {
    if !p.enabled {
        return (Verdict::Accept, None);
    }
    let domain = dmarc.domain();
    let spf = f.spf.mail_from.result();
    let dkim_pass = f.dkim.iter().any(|d| d.result() == &DkimResult::Pass);
    let dkim_temp = f
        .dkim
        .iter()
        .any(|d| matches!(d.result(), DkimResult::TempError(_)));
    match dmarc_result {
        DmarcResult::Pass => return (Verdict::Accept, None),
        DmarcResult::TempError(e) => {
            return (
                Verdict::TempFail(format!("DNS error while checking DMARC for {domain}: {e}")),
                None,
            )
        }
        _ => {}
    }
    // Without a DMARC pass, an undecided SPF or DKIM check could still change the outcome.
    if spf == SpfResult::TempError || dkim_temp {
        let what = if spf == SpfResult::TempError {
            "SPF"
        } else {
            "DKIM"
        };
        return (
            Verdict::TempFail(format!("DNS error while checking {what}")),
            None,
        );
    }
    let summary = format!(
        "SPF {}, DKIM {}",
        spf_name(spf),
        if dkim_pass {
            "pass (not aligned)"
        } else {
            "fail or none"
        }
    );
    if let DmarcResult::Fail(_) = dmarc_result {
        // RFC 7489 §6.6.4: outside the pct sample, apply the next policy down.
        let effective = match (policy, in_sample) {
            (Policy::Reject, true) => Policy::Reject,
            (Policy::Reject, false) | (Policy::Quarantine, true) => Policy::Quarantine,
            _ => Policy::None,
        };
        let action = match effective {
            Policy::Reject => p.on_dmarc_reject,
            Policy::Quarantine => p.on_dmarc_quarantine,
            _ => return (Verdict::Accept, None),
        };
        if action == Action::Accept {
            return (Verdict::Accept, None);
        }
        if let Some(why) = f.forgiven(p) {
            return (Verdict::Accept, Some(why));
        }
        let reason = format!(
            "DMARC policy of {domain} (p={}) failed: {summary}",
            policy_name(effective)
        );
        return (to_verdict(action, reason), None);
    }
    // No DMARC policy applies: only a message that fails both SPF and DKIM is suspect.
    let spf_failed = matches!(
        spf,
        SpfResult::Fail | SpfResult::SoftFail | SpfResult::PermError
    );
    if spf_failed && !dkim_pass {
        if let Some(why) = f.forgiven(p) {
            return (Verdict::Accept, Some(why));
        }
        let sender = if f.spf.mail_from.domain().is_empty() {
            f.from_domain
        } else {
            f.spf.mail_from.domain()
        };
        let reason = format!("unauthenticated sender {sender}: {summary}");
        return (to_verdict(p.on_unauthenticated, reason), None);
    }
    (Verdict::Accept, None)
}

fn to_verdict(action: Action, reason: String) -> Verdict {
    match action {
        Action::Accept => Verdict::Accept,
        Action::Quarantine => Verdict::Quarantine(reason),
        Action::Reject => Verdict::Reject(reason),
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
        assert!(crate::util::domain_within("mx.google.com", "google.com"));
        assert!(!crate::util::domain_within("evilgoogle.com", "google.com"));
    }
}
