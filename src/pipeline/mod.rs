//! A finished message -> committed record, or a refusal. Runs the stages in order: auth (SPF was
//! started at MAIL FROM; DKIM, ARC and DMARC here), content (parse, attribution, verification),
//! prepare (the record and the commit plan's input), then the durable commit whose plan runs
//! threading and assignment. Each stage is a module named after what it does; this file only
//! sequences them. Around the path of a new message: `release` (quarantine), `explain`, and `body`
//! (a stored message read for the API and webhooks).

pub mod attribution;
pub mod auth;
pub mod body;
pub mod content;
pub mod explain;
pub mod html;
pub mod languages;
pub mod parse;
pub mod prepare;
pub mod release;
pub mod routing;
pub mod threading;
pub mod verification;

pub use content::{analyse, Analysis};
pub use explain::{explain, route_volatile, ExplainError, Explanation};
pub use prepare::{address_literal, prepare, received_header, thread_input};
pub use release::{release, ReleaseError};

use std::net::IpAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{AuthPolicy, Config};
use crate::context::Ctx;
use crate::metrics::AuthVerdict;
use crate::store::spool::Finished;
use crate::store::{Body, MessageRecord, RcptRecord};
use auth::{Assessment, SpfResults, Verdict};
use content::believe_verification;

/// The SMTP envelope and connection facts every stage may read.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub helo: String,
    pub esmtp: bool,
    pub tls: Option<String>,
    pub mail_from: String,
    pub rcpt: Vec<RcptRecord>,
    pub body_type: &'static str,
    pub smtputf8: bool,
}

impl Envelope {
    /// RFC 3848 / RFC 6531 protocol name for the `with` clause of `Received:`.
    pub fn protocol(&self) -> &'static str {
        match (self.smtputf8, self.esmtp, self.tls.is_some()) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, true) => "SMTPS",
            (false, false, false) => "SMTP",
        }
    }
}

/// Why a message was not accepted. The session turns these into replies.
#[derive(Debug)]
pub enum Refusal {
    /// A policy verdict: permanent (550 5.7.1).
    Policy(String),
    /// The checks could not finish (DNS): temporary (451 4.7.0).
    TempFail(String),
    /// Our own failure (disk, store): temporary (451 4.3.0); the detail is logged only.
    Local,
}

/// SPF for a transaction, started when MAIL FROM is accepted so its lookups overlap with DATA.
pub struct PendingSpf(JoinHandle<SpfResults>);

/// Whether a client's messages are checked at all.
pub fn checks_apply(config: &Config, ip: IpAddr) -> bool {
    let any_enabled =
        config.auth.policy.enabled || config.inboxes.list.iter().any(|i| i.auth.enabled);
    any_enabled && !config.auth.trusted_networks.iter().any(|n| n.contains(ip))
}

/// Start SPF for a new transaction, or `None` when this client is not checked.
pub fn start_spf(ctx: &Arc<Ctx>, ip: IpAddr, helo: &str, mail_from: &str) -> Option<PendingSpf> {
    let config = ctx.config();
    if !checks_apply(&config, ip) {
        return None;
    }
    let (dns, helo, mail_from) = (ctx.dns.clone(), helo.to_string(), mail_from.to_string());
    let hostname = config.hostname.clone();
    Some(PendingSpf(tokio::spawn(async move {
        auth::check_spf(&dns, ip, &helo, &mail_from, &hostname).await
    })))
}

/// Authenticate the message (DKIM, ARC, DMARC + the SPF started earlier) under the policies of
/// its recipients' inboxes.
async fn authenticate(
    ctx: &Ctx,
    config: &Config,
    env: &Envelope,
    raw: &[u8],
    spf: Option<PendingSpf>,
) -> Result<Assessment, Refusal> {
    let Some(PendingSpf(spf)) = spf else {
        return Ok(Assessment::skipped(
            "client in auth.trusted_networks or checks disabled",
        ));
    };
    let policies: Vec<&AuthPolicy> = env
        .rcpt
        .iter()
        .filter_map(|r| config.inboxes.get(&r.inbox))
        .map(|i| &i.auth)
        .filter(|p| p.enabled)
        .collect();
    if policies.is_empty() {
        spf.abort();
        return Ok(Assessment::skipped("checks disabled for these inboxes"));
    }
    let spf = spf.await.map_err(|e| {
        warn!(error = %e, "SPF task failed");
        Refusal::Local
    })?;
    Ok(auth::assess(&ctx.dns, &config.hostname, env, &spf, raw, &policies).await)
}

/// A refused message leaves nothing behind: its spooled body (if any) is removed.
fn discard(body: &Finished, refusal: Refusal) -> Refusal {
    body.discard();
    refusal
}

/// Run the stages and commit. Returns the queue id once the message is durable.
pub async fn process(
    ctx: &Ctx,
    env: &Envelope,
    body: Finished,
    spf: Option<PendingSpf>,
) -> Result<MessageRecord, Refusal> {
    let config = ctx.config();
    // A large body is read back from its spool file for the stages that need all of it; the
    // memory that takes is bounded by the budget.
    let (_permit, spooled);
    let raw: &[u8] = match &body.body {
        Body::Inline(bytes) => bytes,
        Body::Spooled { len } => {
            let kib = (((*len / 1024) + 1) as u32).min(crate::context::auth_budget_kib(
                config.auth.max_inflight_bytes,
            ));
            _permit = match ctx.auth_budget.clone().acquire_many_owned(kib).await {
                Ok(p) => p,
                Err(_) => return Err(discard(&body, Refusal::Local)),
            };
            spooled = match body.read_all().await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot read spooled body");
                    return Err(discard(&body, Refusal::Local));
                }
            };
            &spooled
        }
    };
    // The session's `message` span carries it, so its accept or reject line names the message
    // (headers only: cheap).
    tracing::Span::current().record(
        "message_id",
        tracing::field::display(parse::summarize(raw).message_id),
    );
    let assessment = match authenticate(ctx, &config, env, raw, spf).await {
        Ok(a) => a,
        Err(r) => return Err(discard(&body, r)),
    };
    let a = &assessment.record;
    ctx.metrics.auth_verdicts.inc(match &assessment.verdict {
        _ if a.status == "skipped" => AuthVerdict::Skipped,
        Verdict::Accept => AuthVerdict::Accept,
        Verdict::Quarantine(_) => AuthVerdict::Quarantine,
        Verdict::Reject(_) => AuthVerdict::Reject,
        Verdict::TempFail(_) => AuthVerdict::TempFail,
    });
    let dkim = a
        .dkim
        .iter()
        .map(|d| format!("{}:{}", d.domain, d.result))
        .collect::<Vec<_>>()
        .join(",");
    info!(
        auth = %a.status, spf = %a.spf_mail_from, spf_helo = %a.spf_helo, dkim = %dkim, arc = %a.arc,
        arc_sealer = a.arc_sealer.as_deref().unwrap_or(""), dmarc = %a.dmarc, dmarc_policy = %a.dmarc_policy,
        verdict = %a.verdict, reason = %a.reason, override_by = a.override_by.as_deref().unwrap_or(""),
        "sender authentication"
    );
    match &assessment.verdict {
        Verdict::Reject(reason) => return Err(discard(&body, Refusal::Policy(reason.clone()))),
        Verdict::TempFail(reason) => return Err(discard(&body, Refusal::TempFail(reason.clone()))),
        Verdict::Accept | Verdict::Quarantine(_) => {}
    }
    let mut analysis = analyse(raw, env, &config);
    believe_verification(&mut analysis, &assessment);
    let now = crate::store::keys::now_ms();
    let input = thread_input(&config, env, &analysis, &body.sha256, &assessment, now);
    let record = prepare(&config.hostname, env, &body, now, &assessment, &analysis);
    let committing = std::time::Instant::now();
    // Bounded: a store that stopped answering (a frozen database, a hung disk) must not hold
    // the session until the client gives up. The commit may still land after the `451`; the
    // sender's retry then finds its Message-ID and is recorded as a duplicate.
    let limit = config.store.commit_timeout;
    let commit = ctx
        .store
        .commit(record, body.body, Some(threading::plan(input)));
    let committed = match tokio::time::timeout(limit, commit).await {
        Ok(r) => r,
        Err(_) => Err(crate::store::StoreError::Unavailable(format!(
            "the store did not confirm the commit within {limit:?} (store.commit_timeout)"
        ))),
    };
    ctx.metrics.commit_duration.observe(committing.elapsed());
    match committed {
        Ok(record) => {
            // The commit may have queued notifications or webhook calls.
            ctx.outbox_wake.notify_one();
            for r in &record.routing {
                info!(
                    inbox = %r.inbox, conversation = %r.conversation, thread = %r.thread,
                    rule = r.rule.as_deref().unwrap_or(""), assignee = r.assignee.as_deref().unwrap_or(""),
                    assignment = %r.assignment, ticket = r.ticket.as_deref().unwrap_or(""),
                    attributed_to = %analysis.attribution.email, method = %analysis.attribution.method,
                    verification = analysis.verification.as_ref().map(|v| v.provider.as_str()).unwrap_or(""),
                    "routed"
                );
            }
            Ok(record)
        }
        Err(e) => {
            // The store refusing writes defers every message: an operator must act.
            tracing::error!(error = %e, "commit failed: the store refused the message");
            Err(Refusal::Local)
        }
    }
}
