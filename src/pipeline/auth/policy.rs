//! Results of every check + the inbox's `[auth]` policy -> the verdict: accept, quarantine,
//! reject or defer, with its reason. Where forwarding is understood: a trusted ARC sealer's
//! recorded pass, or a trusted forwarder with an aligned DKIM pass, forgives a DMARC failure.
//! RFC 7489 §6.6 (policy), RFC 8617 §7.2 (ARC as input to local policy).

// The stage's own imports; these are its policy decisions, in a file of their own.
use super::*;

/// Everything the policy needs besides the config.
pub(super) struct Facts<'a> {
    pub(super) ip: IpAddr,
    pub(super) helo: &'a str,
    pub(super) spf: &'a SpfResults,
    pub(super) dkim: &'a [DkimOutput<'a>],
    /// Every author domain (RFC 7489 §6.6.1), lowercased, each once.
    pub(super) authors: &'a [String],
    /// How many From: fields the message has; RFC 5322 §3.6 allows exactly one.
    pub(super) from_fields: usize,
    pub(super) arc_pass: bool,
    /// ARC could not be verified for DNS trouble: a rescue might have applied.
    pub(super) arc_temp: bool,
    pub(super) arc_sealer: Option<&'a str>,
    pub(super) arc_recorded: Option<&'static str>,
    /// The reverse-DNS check run when the message names no domain at all could not finish.
    pub(super) iprev_temp: Option<String>,
}

impl Facts<'_> {
    /// A passing DKIM signature whose `d=` is aligned (relaxed) with every author domain.
    pub(super) fn aligned_dkim_pass(&self) -> bool {
        !self.authors.is_empty()
            && self.authors.iter().all(|a| {
                self.dkim.iter().any(|d| {
                    d.result() == &DkimResult::Pass
                        && d.signature().is_some_and(|s| relaxed_aligned(&s.d, a))
                })
            })
    }

    /// Why a failure may be forgiven under `policy`, if it may.
    pub(super) fn forgiven(&self, policy: &AuthPolicy) -> Option<String> {
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
        if !self.aligned_dkim_pass() {
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

/// The policy for one inbox. Returns the verdict and, when a failure was forgiven, why.
pub(super) fn decide(
    f: &Facts<'_>,
    all: &[DmarcOutput],
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
    if let DmarcResult::TempError(e) = dmarc_result {
        return (
            Verdict::TempFail(format!("DNS error while checking DMARC for {domain}: {e}")),
            None,
        );
    }
    if let Some(e) = &f.iprev_temp {
        return (
            Verdict::TempFail(format!("DNS error while checking the client's name: {e}")),
            None,
        );
    }
    // RFC 5322 §3.6: one From: field. A message with several is malformed and never trusted,
    // whatever passes: which author would we be vouching for?
    if f.from_fields > 1 {
        let reject = all.iter().any(|d| d.policy() == Policy::Reject);
        let action = if reject {
            p.on_dmarc_reject
        } else {
            p.on_dmarc_quarantine
        };
        let action = if action == Action::Accept {
            Action::Quarantine
        } else {
            action
        };
        let domains = f.authors.join(", ");
        let reason = format!(
            "malformed message: {} From: fields (RFC 5322 allows one), authors {domains}{}",
            f.from_fields,
            if reject { ", DMARC p=reject" } else { "" }
        );
        return (to_verdict(action, reason), None);
    }
    if *dmarc_result == DmarcResult::Pass {
        return (Verdict::Accept, None);
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
        if f.aligned_dkim_pass() {
            "pass"
        } else if dkim_pass {
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
            Policy::Reject => Some(p.on_dmarc_reject),
            Policy::Quarantine => Some(p.on_dmarc_quarantine),
            _ => None,
        };
        if let Some(action) = action {
            if action == Action::Accept {
                return (Verdict::Accept, None);
            }
            if let Some(why) = f.forgiven(p) {
                return (Verdict::Accept, Some(why));
            }
            if f.arc_temp {
                // A trusted sealer's chain might have vouched for it: ask again later.
                return (
                    Verdict::TempFail("DNS error while checking ARC".into()),
                    None,
                );
            }
            let reason = format!(
                "DMARC policy of {domain} (p={}) failed: {summary}",
                policy_name(effective)
            );
            return (to_verdict(action, reason), None);
        }
        // p=none only asks for monitoring; our own rule for unauthenticated mail still applies.
    }
    // Nothing passes: no SPF pass, no aligned DKIM pass, no DMARC pass.
    if spf != SpfResult::Pass && !f.aligned_dkim_pass() {
        if let Some(why) = f.forgiven(p) {
            return (Verdict::Accept, Some(why));
        }
        let sender = if !f.spf.mail_from.domain().is_empty() {
            f.spf.mail_from.domain().to_string()
        } else if let Some(a) = f.authors.first() {
            a.clone()
        } else {
            format!("[{}]", f.ip)
        };
        let reason = format!(
            "unauthenticated sender {sender}: {summary}, DMARC {}",
            dmarc_name(dmarc_result)
        );
        return (to_verdict(p.on_unauthenticated, reason), None);
    }
    (Verdict::Accept, None)
}

pub(super) fn to_verdict(action: Action, reason: String) -> Verdict {
    match action {
        Action::Accept => Verdict::Accept,
        Action::Quarantine => Verdict::Quarantine(reason),
        Action::Reject => Verdict::Reject(reason),
    }
}
