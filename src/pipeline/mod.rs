//! A finished message -> committed record, or a refusal. Runs the stages in order: auth (SPF was
//! started at MAIL FROM; DKIM, ARC and DMARC here), parse (header summary), then the durable
//! commit. Each stage is a module named after what it does; this file only sequences them.

pub mod auth;
pub mod parse;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{AuthPolicy, Config};
use crate::server::Ctx;
use crate::store::spool::Finished;
use crate::store::{Body, MessageRecord, RcptRecord};
use crate::util::rfc5322_date;
use auth::{Assessment, SpfResults, Verdict};

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

/// The `Received:` header field for this message (RFC 5321 §4.4).
pub fn received_header(hostname: &str, env: &Envelope, queue_id: &str, now_ms: u64) -> String {
    let tls = env
        .tls
        .as_deref()
        .map(|v| format!(" (using {v})"))
        .unwrap_or_default();
    let for_clause = match env.rcpt.as_slice() {
        [one] => format!("\r\n\tfor <{}>", one.address),
        _ => String::new(),
    };
    let helo = if env.helo.is_empty() {
        "unknown"
    } else {
        env.helo.as_str()
    };
    format!(
        "Received: from {helo} ([{ip}]){tls}\r\n\tby {hostname} (inbound) with {proto} id {queue_id}{for_clause};\r\n\t{date}\r\n",
        ip = env.client_ip,
        proto = env.protocol(),
        date = rfc5322_date(now_ms),
    )
}

/// Build the record for a finished message.
pub fn prepare(
    hostname: &str,
    env: &Envelope,
    body: &Finished,
    now_ms: u64,
    assessment: &Assessment,
) -> MessageRecord {
    let summary = parse::summarize(body.head());
    MessageRecord {
        queue_id: body.queue_id.clone(),
        received_at: now_ms,
        client_ip: env.client_ip.to_string(),
        client_port: env.client_port,
        helo: env.helo.clone(),
        mail_from: env.mail_from.clone(),
        rcpt: env.rcpt.clone(),
        size: body.len,
        sha256: body.sha256.clone(),
        body_location: match body.body {
            Body::Inline(_) => "inline".into(),
            Body::Spooled { .. } => "spool".into(),
        },
        tls: env.tls.clone(),
        body_type: env.body_type.to_string(),
        smtputf8: env.smtputf8,
        // Newest first: our Authentication-Results sits above our Received (RFC 8601 §5).
        trace_headers: format!(
            "{}{}",
            assessment.header,
            received_header(hostname, env, &body.queue_id, now_ms)
        ),
        subject: summary.subject,
        from: summary.from,
        message_id: summary.message_id,
        quarantined: matches!(assessment.verdict, Verdict::Quarantine(_)),
        auth: Some(assessment.record.clone()),
    }
}

/// Authenticate the finished message (DKIM, ARC, DMARC + the SPF started earlier) under the
/// policies of its recipients' inboxes.
async fn authenticate(
    ctx: &Ctx,
    config: &Config,
    env: &Envelope,
    body: &Finished,
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
    // A large body is read back from its spool file; the memory it takes is bounded by the
    // authentication budget.
    let (_permit, spooled);
    let raw: &[u8] = match &body.body {
        Body::Inline(bytes) => bytes,
        Body::Spooled { len } => {
            let kib = (((*len / 1024) + 1) as u32).min(crate::server::auth_budget_kib(
                config.auth.max_inflight_bytes,
            ));
            _permit = ctx
                .auth_budget
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|_| Refusal::Local)?;
            let path = ctx.store.spool().tmp_path(&body.queue_id);
            spooled = tokio::fs::read(&path).await.map_err(|e| {
                warn!(error = %e, "cannot read spooled body for checks");
                Refusal::Local
            })?;
            &spooled
        }
    };
    Ok(auth::assess(&ctx.dns, &config.hostname, env, &spf, raw, &policies).await)
}

/// A refused message leaves nothing behind: its spooled body (if any) is removed.
fn discard(ctx: &Ctx, body: &Finished, refusal: Refusal) -> Refusal {
    if let Body::Spooled { .. } = body.body {
        let _ = std::fs::remove_file(ctx.store.spool().tmp_path(&body.queue_id));
    }
    refusal
}

/// Run the stages and commit. Returns the queue id once the message is durable.
pub async fn process(
    ctx: &Ctx,
    env: &Envelope,
    body: Finished,
    spf: Option<PendingSpf>,
) -> Result<String, Refusal> {
    let config = ctx.config();
    let assessment = match authenticate(ctx, &config, env, &body, spf).await {
        Ok(a) => a,
        Err(r) => return Err(discard(ctx, &body, r)),
    };
    let a = &assessment.record;
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
        Verdict::Reject(reason) => {
            return Err(discard(ctx, &body, Refusal::Policy(reason.clone())))
        }
        Verdict::TempFail(reason) => {
            return Err(discard(ctx, &body, Refusal::TempFail(reason.clone())))
        }
        Verdict::Accept | Verdict::Quarantine(_) => {}
    }
    let now = crate::store::keys::now_ms();
    let record = prepare(&config.hostname, env, &body, now, &assessment);
    let queue_id = body.queue_id.clone();
    match ctx.store.commit(record, body.body).await {
        Ok(()) => Ok(queue_id),
        Err(e) => {
            warn!(error = %e, "commit failed");
            Err(Refusal::Local)
        }
    }
}
