//! A finished message -> committed record, or a refusal. Runs the stages in order: auth (SPF was
//! started at MAIL FROM; DKIM, ARC and DMARC here), parse (header summary), then the durable
//! commit. Each stage is a module named after what it does; this file only sequences them.

pub mod attribution;
pub mod auth;
pub mod fuzzing;
pub mod parse;
pub mod routing;
pub mod threading;
pub mod verification;

use std::net::IpAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{AuthPolicy, Config};
use crate::context::Ctx;
use crate::metrics::AuthVerdict;
use crate::store::model::{AttributionRecord, VerificationRecord};
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
    analysis: &Analysis,
) -> MessageRecord {
    let (parsed, attribution) = (&analysis.parsed, &analysis.attribution);
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
        verification: analysis.verification.clone(),
        routing: Vec::new(),
        session_metadata_cleared: false,
    }
}

/// The original sender of a parsed message.
/// The content stages in one place: parse the message once, then attribute it to its original
/// sender (for the first recipient's address, which SRS/`+caf_` decoding compares against).
pub fn analyse(raw: &[u8], env: &Envelope, config: &Config) -> Analysis {
    // Parsers of hostile input are where a panic would come from; one must cost this message
    // its analysis, never the session (the message is still stored as received).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        analyse_unguarded(raw, env, config)
    }))
    .unwrap_or_else(|_| {
        warn!("message analysis panicked; storing it unparsed");
        Analysis {
            parsed: parse::Parsed::default(),
            attribution: envelope_attribution(env),
            verification: None,
        }
    })
}

/// What the content stages found in a message.
pub struct Analysis {
    pub parsed: parse::Parsed,
    pub attribution: AttributionRecord,
    /// A provider's forwarding/verification confirmation, if the message is one.
    pub verification: Option<VerificationRecord>,
}

fn envelope_attribution(env: &Envelope) -> AttributionRecord {
    AttributionRecord {
        email: env.mail_from.clone(),
        name: None,
        method: "envelope_mail_from".into(),
        forwarded_by: None,
    }
}

fn analyse_unguarded(raw: &[u8], env: &Envelope, config: &Config) -> Analysis {
    let rcpt = env.rcpt.first();
    let rcpt_address = rcpt.map(|r| r.address.as_str()).unwrap_or("");
    // A generic "your verification code" mail counts only from the team's own provider.
    let hint = rcpt
        .and_then(|r| config.inboxes.get(&r.inbox))
        .and_then(|i| i.connected_address.as_deref());
    match mail_parser::MessageParser::new().parse(raw) {
        Some(msg) => {
            let parsed = parse::parse_message(&msg, &env.mail_from);
            let a = attribution::attribute(&msg, &env.mail_from, rcpt_address);
            let attribution = AttributionRecord {
                email: a.email,
                name: a.name,
                method: a.method.as_str().to_string(),
                forwarded_by: a.forwarded_by,
            };
            let verification =
                verification::recognise(&msg, &env.mail_from, hint).map(|v| VerificationRecord {
                    provider: v.provider,
                    code: v.code,
                    link: v.link,
                    address: v.address,
                    queue_id: String::new(),
                    received_at: 0,
                });
            Analysis {
                parsed,
                attribution,
                verification,
            }
        }
        None => Analysis {
            parsed: parse::parse(raw, &env.mail_from),
            attribution: envelope_attribution(env),
            verification: None,
        },
    }
}

/// Whether this message shows that the team's forwarding to `inbox` works: it came from (or was
/// forwarded by) the inbox's `connected_address` (an address, or `@domain`). Without one
/// configured, any forwarded message counts.
pub fn connect_evidence(
    inbox: &crate::config::InboxConfig,
    env: &Envelope,
    parsed: &parse::Parsed,
    attribution: &AttributionRecord,
) -> Option<String> {
    if parsed.automatic.is_some() {
        return None;
    }
    let Some(connected) = &inbox.connected_address else {
        return attribution
            .forwarded_by
            .as_ref()
            .map(|f| format!("forwarded by {f}"));
    };
    let matches = |address: &str| {
        let a = address.trim().trim_matches(['<', '>']).to_lowercase();
        match connected.strip_prefix('@') {
            Some(domain) => a
                .rsplit_once('@')
                .is_some_and(|(_, d)| crate::util::domain_within(d, domain)),
            None => a == *connected,
        }
    };
    if let Some(f) = attribution.forwarded_by.as_deref().filter(|f| matches(f)) {
        return Some(format!("forwarded by {f}"));
    }
    for name in [
        "x-forwarded-for",
        "x-forwarded-to",
        "x-original-to",
        "delivered-to",
        "resent-from",
        "sender",
    ] {
        if let Some(value) = parsed.header(name) {
            let hit = value
                .split(|c: char| c.is_whitespace() || c == ',')
                .find(|t| t.contains('@') && matches(t));
            if let Some(t) = hit {
                return Some(format!("{name}: {}", t.trim_matches(['<', '>'])));
            }
        }
    }
    matches(&env.mail_from).then(|| format!("envelope sender {}", env.mail_from))
}

/// The routing decisions that do not depend on stored state (attribution, matched rule per
/// inbox), packed for the commit plan that makes the ones that do (thread, assignee, ticket).
pub fn thread_input(
    config: &Arc<Config>,
    env: &Envelope,
    analysis: &Analysis,
    body_sha256: &str,
    assessment: &Assessment,
    now_ms: u64,
) -> ThreadInput {
    let (auth_verdict, dmarc) = (assessment.verdict.name(), assessment.record.dmarc.as_str());
    let (parsed, attribution) = (&analysis.parsed, &analysis.attribution);
    // No Message-ID: a stable derived one, so a re-delivery is still recognised.
    let message_id = crate::store::keys::thread_message_id(
        &parsed.message_id,
        &parsed.from_email,
        &parsed.subject,
        body_sha256,
    );
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
            address: inbox.address.clone(),
            rule: routing::select(inbox, &facts).cloned(),
            tickets: inbox.tickets.clone(),
            connect_evidence: match analysis.verification {
                // The provider's own confirmation proves nothing about the forwarding yet.
                Some(_) => None,
                None => connect_evidence(inbox, env, parsed, attribution),
            },
            verification: analysis.verification.clone(),
        });
    }
    ThreadInput {
        config: config.clone(),
        message_id,
        in_reply_to: parsed.in_reply_to.clone(),
        references: parsed.references.clone(),
        subject: parsed.subject.clone(),
        contact_email: attribution.email.to_lowercase(),
        contact_name: attribution.name.clone(),
        is_forward: attribution.method.starts_with("forwarded"),
        automatic: parsed.automatic.is_some(),
        verification: analysis.verification.is_some(),
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
) -> Result<String, Refusal> {
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
    let committed = ctx
        .store
        .commit(record, body.body, Some(threading::plan(input)))
        .await;
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
            Ok(record.queue_id)
        }
        Err(e) => {
            warn!(error = %e, "commit failed");
            Err(Refusal::Local)
        }
    }
}

/// A confirmation's code and link are shown to the team as the provider's: only believe a
/// message that authenticates as coming from the provider (DMARC pass for its From domain).
/// Without checks (trusted network, disabled) the operator has chosen to trust the source.
fn believe_verification(analysis: &mut Analysis, assessment: &Assessment) {
    if analysis.verification.is_some()
        && assessment.record.status == "checked"
        && assessment.record.dmarc != "pass"
    {
        warn!(dmarc = %assessment.record.dmarc, "provider confirmation without DMARC pass ignored");
        analysis.verification = None;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no message {0}")]
    NotFound(String),
    #[error("message {0} is not quarantined")]
    NotQuarantined(String),
    #[error("the body of message {0} has expired; it cannot be released")]
    BodyExpired(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Release a quarantined message into its inboxes: analysed again from its stored body and
/// routed as if it had just been accepted (thread, contact, assignment, ticket, inbox state),
/// in one durable transaction that also clears the flag. Rules see the verdict `accept`: an
/// operator has vouched for it.
pub fn release(
    config: &Arc<Config>,
    store: &crate::store::Store,
    queue_id: &str,
) -> Result<MessageRecord, ReleaseError> {
    let record = store
        .get(queue_id)?
        .ok_or_else(|| ReleaseError::NotFound(queue_id.into()))?;
    if !record.quarantined {
        return Err(ReleaseError::NotQuarantined(queue_id.into()));
    }
    if record.body_location == crate::store::BODY_EXPIRED {
        return Err(ReleaseError::BodyExpired(queue_id.into()));
    }
    let raw = store.body(&record)?;
    let env = Envelope {
        client_ip: record
            .client_ip
            .parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        client_port: record.client_port,
        helo: record.helo.clone(),
        esmtp: true,
        tls: record.tls.clone(),
        mail_from: record.mail_from.clone(),
        rcpt: record.rcpt.clone(),
        body_type: match record.body_type.as_str() {
            "8BITMIME" => "8BITMIME",
            "BINARYMIME" => "BINARYMIME",
            _ => "7BIT",
        },
        smtputf8: record.smtputf8,
    };
    let mut auth = record.auth.clone().unwrap_or_default();
    auth.verdict = "accept".into();
    let assessment = Assessment {
        record: auth,
        header: String::new(),
        verdict: Verdict::Accept,
    };
    let mut analysis = analyse(&raw, &env, config);
    believe_verification(&mut analysis, &assessment);
    let input = thread_input(
        config,
        &env,
        &analysis,
        &record.sha256,
        &assessment,
        crate::store::keys::now_ms(),
    );
    let plan = threading::plan(input);
    let released = store.update(|tx| {
        let key = queue_id.as_bytes();
        let Some(mut rec) = tx.get_json::<MessageRecord>(crate::store::TreeId::Messages, key)?
        else {
            return Ok(None);
        };
        if !rec.quarantined {
            return Ok(None);
        }
        rec.quarantined = false;
        plan(tx, &mut rec)?;
        tx.put_json(crate::store::TreeId::Messages, key, &rec)?;
        Ok(Some(rec))
    })?;
    // Raced with another release or a delete.
    released.ok_or_else(|| ReleaseError::NotQuarantined(queue_id.into()))
}

/// Every stage after authentication, on a store that keeps nothing durable: analyse, match
/// rules, run the commit plan in a transaction without a flush. What `route --explain`, the
/// fuzz target and the pipeline benchmark run, so they all measure the server's own path. The
/// body itself is not stored. Returns the routed record and the analysis.
pub fn route_volatile(
    config: &Arc<Config>,
    store: &crate::store::Store,
    env: &Envelope,
    raw: &[u8],
    assessment: &Assessment,
) -> Result<(MessageRecord, Analysis), crate::store::StoreError> {
    let analysis = analyse(raw, env, config);
    let now = crate::store::keys::now_ms();
    let sha = crate::util::sha256_hex(raw);
    let input = thread_input(config, env, &analysis, &sha, assessment, now);
    let mut finished = Finished::inline(crate::store::keys::new_queue_id(), Vec::new());
    finished.sha256 = sha;
    finished.len = raw.len() as u64;
    let record = prepare(&config.hostname, env, &finished, now, assessment, &analysis);
    let record = store.apply_volatile(&record, &finished.body, Some(&threading::plan(input)))?;
    Ok((record, analysis))
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
    let store = crate::store::Store::open_temporary(&config.store)?;
    let (record, analysis) = route_volatile(&config, &store, &env, raw, &assessment)?;
    let routing = record.routing.first().cloned().unwrap_or_default();
    let ticket = match &routing.ticket {
        Some(t) => store.ticket(t)?,
        None => None,
    };
    let Analysis {
        parsed,
        attribution,
        verification,
    } = analysis;
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
        verification: verification.map(|v| {
            serde_json::json!({
                "provider": v.provider,
                "code": v.code,
                "link": v.link,
                "address": v.address,
            })
        }),
        subject: parsed.subject.clone(),
        attachments: parsed.attachments.clone(),
    })
}
