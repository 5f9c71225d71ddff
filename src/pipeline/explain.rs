//! A message file -> what the server would do with it (`inbound route --explain`, the fuzz
//! target, the pipeline benchmark): every stage after authentication, on a store that keeps
//! nothing durable.

use std::net::IpAddr;
use std::sync::Arc;

use super::auth::Assessment;
use super::content::{analyse, Analysis};
use super::prepare::{prepare, thread_input};
use super::{threading, Envelope};
use crate::config::Config;
use crate::store::model::AttributionRecord;
use crate::store::spool::Finished;
use crate::store::{MessageRecord, RcptRecord};

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
        ..
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
