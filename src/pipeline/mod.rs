//! A finished message -> committed record, or a refusal. Runs the stages in order: auth (SPF was
//! started at MAIL FROM; DKIM, ARC and DMARC here), parse (header summary), then the durable
//! commit. Each stage is a module named after what it does; this file only sequences them.

pub mod attribution;
pub mod auth;
pub mod parse;
pub mod routing;
pub mod threading;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{AuthPolicy, Config};
use crate::server::Ctx;
use crate::store::model::AttributionRecord;
use crate::store::spool::Finished;
use crate::store::{Body, MessageRecord, RcptRecord};
use crate::util::rfc5322_date;
use auth::{Assessment, SpfResults, Verdict};
use threading::{InboxInput, ThreadInput};

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
        "Received: from {helo} ({ip}){tls}\r\n\tby {hostname} (inbound) with {proto} id {queue_id}{for_clause};\r\n\t{date}\r\n",
        ip = address_literal(env.client_ip),
        proto = env.protocol(),
        date = rfc5322_date(now_ms),
    )
}

/// RFC 5321 §4.1.3 address literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]`.
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Build the record for a finished message.
pub fn prepare(
    hostname: &str,
    env: &Envelope,
    body: &Finished,
    now_ms: u64,
    assessment: &Assessment,
    parsed: &parse::Parsed,
    attribution: &AttributionRecord,
) -> MessageRecord {
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
        subject: parsed.subject.clone(),
        from: parsed.from_email.clone(),
        message_id: parsed.message_id.clone(),
        quarantined: matches!(assessment.verdict, Verdict::Quarantine(_)),
        auth: Some(assessment.record.clone()),
        attribution: Some(attribution.clone()),
        automatic: parsed.automatic.clone(),
        attachments: parsed.attachments.clone(),
        in_reply_to: parsed.in_reply_to.clone(),
        references: parsed.references.clone(),
        routing: Vec::new(),
    }
}

/// The original sender of a parsed message.
pub fn attribute(parsed: &parse::Parsed, _env: &Envelope) -> AttributionRecord {
    AttributionRecord {
        email: parsed.from_email.to_lowercase(),
        name: parsed.from_name.clone(),
        method: "header_from".into(),
        forwarded_by: None,
    }
}

/// The routing decisions that do not depend on stored state (attribution, matched rule per
/// inbox), packed for the commit plan that makes the ones that do (thread, assignee, ticket).
pub fn thread_input(
    config: &Arc<Config>,
    env: &Envelope,
    parsed: &parse::Parsed,
    attribution: &AttributionRecord,
    body_sha256: &str,
    assessment: &Assessment,
    now_ms: u64,
) -> ThreadInput {
    let (auth_verdict, dmarc) = (assessment.verdict.name(), assessment.record.dmarc.as_str());
    let message_id = if parsed.message_id.is_empty() {
        // No Message-ID: derive a stable one, so a re-delivery is still recognised.
        let basis = format!("{}|{}|{}", parsed.from_email, parsed.subject, body_sha256);
        format!(
            "{}@inbound.synthetic",
            &crate::util::sha256_hex(basis.as_bytes())[..32]
        )
    } else {
        parsed.message_id.clone()
    };
    let names: Vec<String> = parsed.attachments.iter().map(|a| a.name.clone()).collect();
    let mut inboxes: Vec<InboxInput> = Vec::new();
    for rcpt in &env.rcpt {
        if inboxes.iter().any(|i| i.inbox == rcpt.inbox) {
            continue;
        }
        let Some(inbox) = config.inboxes.get(&rcpt.inbox) else {
            continue;
        };
        let address = rcpt.address.to_lowercase();
        let facts = routing::Facts {
            from: &attribution.email,
            subject: &parsed.subject,
            recipient: &address,
            tag: rcpt.tag.as_deref(),
            headers: &parsed.headers,
            attachment_names: &names,
            auth_verdict,
            dmarc,
        };
        inboxes.push(InboxInput {
            inbox: inbox.id.clone(),
            rule: routing::select(inbox, &facts).cloned(),
            tickets: inbox.tickets.clone(),
        });
    }
    ThreadInput {
        config: config.clone(),
        message_id,
        in_reply_to: parsed.in_reply_to.clone(),
        references: parsed.references.clone(),
        subject: parsed.subject.clone(),
        contact_email: attribution.email.clone(),
        contact_name: attribution.name.clone(),
        is_forward: attribution.method.starts_with("forwarded"),
        automatic: parsed.automatic.is_some(),
        verification: false,
        received_at: now_ms,
        inboxes,
    }
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
    // A large body is read back from its spool file for the stages that need all of it; the
    // memory that takes is bounded by the budget.
    let (_permit, spooled);
    let raw: &[u8] = match &body.body {
        Body::Inline(bytes) => bytes,
        Body::Spooled { len } => {
            let kib = (((*len / 1024) + 1) as u32).min(crate::server::auth_budget_kib(
                config.auth.max_inflight_bytes,
            ));
            _permit = match ctx.auth_budget.clone().acquire_many_owned(kib).await {
                Ok(p) => p,
                Err(_) => return Err(discard(ctx, &body, Refusal::Local)),
            };
            let path = ctx.store.spool().tmp_path(&body.queue_id);
            spooled = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot read spooled body");
                    return Err(discard(ctx, &body, Refusal::Local));
                }
            };
            &spooled
        }
    };
    let assessment = match authenticate(ctx, &config, env, raw, spf).await {
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
    let parsed = parse::parse(raw, &env.mail_from);
    let attribution = attribute(&parsed, env);
    let now = crate::store::keys::now_ms();
    let input = thread_input(
        &config,
        env,
        &parsed,
        &attribution,
        &body.sha256,
        &assessment,
        now,
    );
    let record = prepare(
        &config.hostname,
        env,
        &body,
        now,
        &assessment,
        &parsed,
        &attribution,
    );
    match ctx
        .store
        .commit(record, body.body, Some(threading::plan(input)))
        .await
    {
        Ok(record) => {
            for r in &record.routing {
                info!(
                    inbox = %r.inbox, conversation = %r.conversation, thread = %r.thread,
                    rule = r.rule.as_deref().unwrap_or(""), assignee = r.assignee.as_deref().unwrap_or(""),
                    assignment = %r.assignment, ticket = r.ticket.as_deref().unwrap_or(""),
                    attributed_to = %attribution.email, method = %attribution.method,
                    "routed"
                );
            }
            Ok(record.queue_id)
        }
        Err(e) => {
            warn!(error = %e, "commit failed");
            Err(Refusal::Local)
        }
    }
}

/// What `inbound route --explain` reports for one message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    pub inbox: String,
    pub attribution: AttributionRecord,
    /// Thread decision: `decision` (new, joined, duplicate), `reason`, `conversation`.
    pub thread: serde_json::Value,
    /// The matched rule's name, or null when no rule matched.
    pub rule: Option<String>,
    /// `assignee`, `team`, `how`.
    pub assignment: serde_json::Value,
    pub ticket: Option<crate::store::model::Ticket>,
    pub automatic: Option<String>,
    /// Provider confirmation recognised in the message (verification-code flow), or null.
    pub verification: Option<serde_json::Value>,
    pub subject: String,
    pub attachments: Vec<crate::store::model::AttachmentInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{0} is not a hosted address in this config")]
    NotHosted(String),
    #[error("the config has no inbox")]
    NoInbox,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Run attribution, threading and routing on `raw` as if it had arrived for `rcpt` (default:
/// the first inbox), against an empty throw-away store: nothing is kept. Sender authentication
/// is not evaluated (there is no SMTP session to evaluate it on).
pub async fn explain(
    config: Arc<Config>,
    raw: &[u8],
    mail_from: &str,
    rcpt: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let rcpt = match rcpt {
        Some(r) => r.to_string(),
        None => config
            .inboxes
            .list
            .first()
            .ok_or(ExplainError::NoInbox)?
            .address
            .clone(),
    };
    let (inbox, tag) = match config.inboxes.resolve(&rcpt) {
        crate::config::Recipient::Hosted { inbox, tag } => (inbox.id.clone(), tag),
        _ => return Err(ExplainError::NotHosted(rcpt)),
    };
    let env = Envelope {
        client_ip: IpAddr::from([127, 0, 0, 1]),
        client_port: 0,
        helo: "explain".into(),
        esmtp: true,
        tls: None,
        mail_from: mail_from.to_string(),
        rcpt: vec![RcptRecord {
            address: rcpt.clone(),
            inbox: inbox.clone(),
            tag,
        }],
        body_type: "8BITMIME",
        smtputf8: false,
    };
    let assessment = Assessment::skipped("route --explain does not run sender authentication");
    let parsed = parse::parse(raw, mail_from);
    let attribution = attribute(&parsed, &env);
    let now = crate::store::keys::now_ms();
    let sha = crate::util::sha256_hex(raw);
    let input = thread_input(&config, &env, &parsed, &attribution, &sha, &assessment, now);
    let store = crate::store::Store::open_temporary(&config.store)?;
    let queue_id = crate::store::keys::new_queue_id();
    let finished = Finished::inline(queue_id, raw.to_vec());
    let record = prepare(
        &config.hostname,
        &env,
        &finished,
        now,
        &assessment,
        &parsed,
        &attribution,
    );
    let record = store
        .commit(record, finished.body, Some(threading::plan(input)))
        .await?;
    let routing = record.routing.first().cloned().unwrap_or_default();
    let ticket = match &routing.ticket {
        Some(t) => store.ticket(t)?,
        None => None,
    };
    Ok(Explanation {
        inbox,
        attribution,
        thread: serde_json::json!({
            "decision": routing.thread,
            "reason": routing.thread_reason,
            "conversation": routing.conversation,
        }),
        rule: routing.rule.clone(),
        assignment: serde_json::json!({
            "assignee": routing.assignee,
            "team": routing.team,
            "how": routing.assignment,
        }),
        ticket,
        automatic: parsed.automatic.clone(),
        verification: None,
        subject: parsed.subject.clone(),
        attachments: parsed.attachments.clone(),
    })
}
