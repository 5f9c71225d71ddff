//! Message identifiers + attribution -> conversation, inside the commit. RFC 5322 §3.6.4
//! (Message-ID, In-Reply-To, References). Runs as the store's `Plan` for the message, so it sees
//! every earlier message and its writes (conversation, contact, ticket, counters) commit
//! atomically with the message: nothing is acknowledged unassigned, and no assignment exists
//! without its message.
//!
//! Decisions:
//! - the same Message-ID arriving twice in one inbox (a re-delivery, or the same mail by two
//!   paths: a group and a personal forward) is one message: the second copy is recorded as a
//!   duplicate and joins nothing;
//! - In-Reply-To, then References newest first, join the conversation of a message we have;
//! - a manual forward starts a new conversation even when it carries the forwarder's thread
//!   references: forwarding an old thread to a new recipient must not glue conversations;
//! - a conversation keeps its assignee; rules assign only new or still unassigned conversations.

use std::sync::Arc;

use crate::config::routes::{Rule, TicketDefaults};
use crate::config::Config;
use crate::notify;
use crate::store::model::{
    Contact, Conversation, InboxState, RoutingRecord, Ticket, VerificationRecord,
};
use crate::store::{keys, MessageRecord, Plan, TreeId, Tx, TxResult};

use super::routing;

/// Everything the plan needs, owned (it runs on the committer thread).
#[derive(Debug, Clone)]
pub struct ThreadInput {
    pub config: Arc<Config>,
    /// Message-ID without brackets; a synthetic one when the message had none.
    pub message_id: String,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub subject: String,
    /// Attributed original sender, lower case.
    pub contact_email: String,
    pub contact_name: Option<String>,
    /// The attribution came from a manual forward.
    pub is_forward: bool,
    pub automatic: bool,
    pub verification: bool,
    pub received_at: u64,
    pub inboxes: Vec<InboxInput>,
}

#[derive(Debug, Clone)]
pub struct InboxInput {
    pub inbox: String,
    /// The inbox's forwarding address (recorded when it becomes connected).
    pub address: String,
    pub rule: Option<Rule>,
    pub tickets: TicketDefaults,
    /// Why this message shows the team's forwarding works, if it does.
    pub connect_evidence: Option<String>,
    /// A provider confirmation recognised in this message.
    pub verification: Option<VerificationRecord>,
}

fn id_key(inbox: &str, message_id: &str) -> Vec<u8> {
    let mut k = inbox.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(message_id.as_bytes());
    k
}

/// The plan for one message.
pub fn plan(input: ThreadInput) -> Plan {
    Box::new(move |tx, record| {
        // Held back by policy: kept, but not part of any conversation (no contact, assignment or
        // ticket) until an operator releases it (`pipeline::release`, which runs this plan again).
        if record.quarantined {
            record.routing = Vec::new();
            for inbox in &input.inboxes {
                let data = serde_json::json!({
                    "queue_id": record.queue_id,
                    "from": record.from,
                    "subject": record.subject,
                    "reason": record.auth.as_ref().map(|a| a.reason.as_str()).unwrap_or(""),
                });
                notify::queue_event(
                    tx,
                    &input.config,
                    "message.quarantined",
                    &inbox.inbox,
                    data,
                    input.received_at,
                )?;
            }
            return Ok(());
        }
        let mut routing = Vec::with_capacity(input.inboxes.len());
        for inbox in &input.inboxes {
            // A provider's confirmation is setup mail, not a customer: it shows on the inbox
            // (`update_inbox`) and opens no conversation and no contact (#15).
            let r = if input.verification {
                setup_mail(inbox)
            } else {
                apply(tx, &input, inbox, record)?
            };
            let duplicate = r.thread == "duplicate";
            update_inbox(tx, &input, inbox, record, duplicate)?;
            if !duplicate {
                announce(tx, &input, inbox, record, &r)?;
            }
            routing.push(r);
        }
        record.routing = routing;
        Ok(())
    })
}

/// The routing of a provider's confirmation mail: in no conversation.
fn setup_mail(inbox: &InboxInput) -> RoutingRecord {
    RoutingRecord {
        inbox: inbox.inbox.clone(),
        conversation: String::new(),
        thread: "setup".into(),
        thread_reason: "a provider's forwarding confirmation is setup mail, not a conversation"
            .into(),
        assignment: "verification".into(),
        ..Default::default()
    }
}

/// Find the conversation this message continues, and why.
fn find_thread(
    tx: &Tx<'_>,
    input: &ThreadInput,
    inbox: &str,
) -> TxResult<Option<(String, String)>> {
    if input.is_forward {
        return Ok(None);
    }
    let candidates = input
        .in_reply_to
        .iter()
        .map(|id| ("in-reply-to", id))
        .chain(input.references.iter().rev().map(|id| ("references", id)));
    for (how, id) in candidates {
        if let Some(v) = tx.get(TreeId::MessageIds, &id_key(inbox, id))? {
            let conv = v.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some((
                String::from_utf8_lossy(conv).into_owned(),
                format!("{how} <{id}>"),
            )));
        }
    }
    Ok(None)
}

fn apply(
    tx: &Tx<'_>,
    input: &ThreadInput,
    inbox: &InboxInput,
    record: &MessageRecord,
) -> TxResult<RoutingRecord> {
    let key = id_key(&inbox.inbox, &input.message_id);
    let queue_id = record.queue_id.as_str();
    if let Some(v) = tx.get(TreeId::MessageIds, &key)? {
        let mut parts = v.split(|&b| b == 0);
        let conversation = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let first = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let conv: Option<Conversation> =
            tx.get_json(TreeId::Conversations, conversation.as_bytes())?;
        return Ok(RoutingRecord {
            inbox: inbox.inbox.clone(),
            conversation,
            thread: "duplicate".into(),
            thread_reason: format!("Message-ID <{}> already received", input.message_id),
            duplicate_of: Some(first),
            assignee: conv.as_ref().and_then(|c| c.assignee.clone()),
            team: conv.as_ref().and_then(|c| c.team.clone()),
            assignment: "kept".into(),
            ticket: conv.and_then(|c| c.ticket),
            rule: None,
            reopened: false,
        });
    }
    let now = input.received_at;
    let (mut conv, thread, thread_reason) = match find_thread(tx, input, &inbox.inbox)? {
        Some((id, reason)) => {
            match tx.get_json::<Conversation>(TreeId::Conversations, id.as_bytes())? {
                Some(c) => (c, "joined", reason),
                None => (
                    new_conversation(input, inbox),
                    "new",
                    "referenced conversation missing".into(),
                ),
            }
        }
        None => {
            let reason = if input.is_forward {
                "a forwarded message starts a new conversation".to_string()
            } else if input.in_reply_to.is_empty() && input.references.is_empty() {
                "no In-Reply-To or References".to_string()
            } else {
                "references unknown messages".to_string()
            };
            (new_conversation(input, inbox), "new", reason)
        }
    };
    let is_new = thread == "new";
    tx.insert(
        TreeId::MessageIds,
        &key,
        &[conv.id.as_bytes(), &[0], queue_id.as_bytes()].concat(),
    )?;
    tx.add_to_conversation(&mut conv, queue_id)?;
    conv.updated_at = now;

    // The contact: the original sender, with the owner from config.
    let dir = &input.config.directory;
    let owner = dir.owner_of(&input.contact_email).map(str::to_string);
    if !input.contact_email.is_empty() {
        let mut contact: Contact = tx
            .get_json(TreeId::Contacts, input.contact_email.as_bytes())?
            .unwrap_or_else(|| Contact {
                email: input.contact_email.clone(),
                first_seen: now,
                ..Default::default()
            });
        if input.contact_name.is_some() {
            contact.name = input.contact_name.clone();
        }
        contact.last_seen = now;
        let link = [input.contact_email.as_bytes(), &[0], conv.id.as_bytes()].concat();
        if tx.get(TreeId::ContactConversations, &link)?.is_none() {
            tx.insert(TreeId::ContactConversations, &link, b"")?;
            contact.conversation_count += 1;
        }
        contact.owner = owner.clone().or(contact.owner);
        tx.put_json(TreeId::Contacts, input.contact_email.as_bytes(), &contact)?;
    }

    // A customer writing into a closed conversation reopens it: it is open again, with its
    // assignee's open count back, or, when that user is no longer configured, assigned anew by
    // the rules below. Automatic mail and provider confirmations leave it closed.
    let reopened =
        thread == "joined" && conv.status == "closed" && !input.automatic && !input.verification;
    if reopened {
        conv.status = "open".into();
        match conv.assignee.clone() {
            Some(user) if dir.users.contains_key(&user) => {
                tx.add(&routing::open_key(&user), 1)?;
            }
            Some(_) => {
                conv.assignee = None;
                conv.team = None;
            }
            None => {}
        }
    }

    // Assignment: a conversation stays with its assignee.
    let mut rule_name = None;
    let assignment = if conv.assignee.is_some() {
        "kept"
    } else if input.verification {
        "verification"
    } else if input.automatic {
        "automatic"
    } else if let Some(rule) = &inbox.rule {
        rule_name = Some(rule.name.clone());
        match &rule.assign {
            None => "unassigned",
            Some(assign) => {
                let rr_key = format!("rr:{}:{}", inbox.inbox, rule.name).into_bytes();
                match routing::choose(tx, dir, assign, owner.as_deref(), &rr_key)? {
                    Some((user, team, how)) => {
                        tx.add(&routing::open_key(&user), 1)?;
                        conv.assignee = Some(user);
                        conv.team = team;
                        how
                    }
                    None => "unassigned (nobody available)",
                }
            }
        }
    } else {
        "unassigned"
    };

    // A ticket for a new conversation of customer mail, when the inbox (or rule) wants one.
    let overrides = inbox
        .rule
        .as_ref()
        .and_then(|r| r.ticket.clone())
        .unwrap_or_default();
    let tickets_on = overrides.enabled.unwrap_or(inbox.tickets.enabled);
    if is_new && tickets_on && !input.automatic && !input.verification {
        let seq = tx.add(b"seq:ticket", 1)?;
        let ticket = Ticket {
            id: format!("T-{seq}"),
            conversation: conv.id.clone(),
            inbox: inbox.inbox.clone(),
            pipeline: overrides
                .pipeline
                .unwrap_or_else(|| inbox.tickets.pipeline.clone()),
            stage: overrides
                .stage
                .unwrap_or_else(|| inbox.tickets.stage.clone()),
            priority: overrides
                .priority
                .unwrap_or_else(|| inbox.tickets.priority.clone()),
            owner: conv.assignee.clone(),
            created_at: now,
        };
        tx.put_json(TreeId::Tickets, ticket.id.as_bytes(), &ticket)?;
        conv.ticket = Some(ticket.id);
    }
    tx.put_json(TreeId::Conversations, conv.id.as_bytes(), &conv)?;
    Ok(RoutingRecord {
        inbox: inbox.inbox.clone(),
        conversation: conv.id.clone(),
        thread: thread.into(),
        thread_reason,
        duplicate_of: None,
        rule: rule_name,
        assignee: conv.assignee.clone(),
        team: conv.team.clone(),
        assignment: assignment.into(),
        ticket: conv.ticket.clone(),
        reopened,
    })
}

/// The inbox's lifecycle: count the message, keep the newest provider confirmation, and mark the
/// inbox connected on the first message that shows the team's forwarding works.
fn update_inbox(
    tx: &Tx<'_>,
    input: &ThreadInput,
    inbox: &InboxInput,
    record: &MessageRecord,
    duplicate: bool,
) -> TxResult<()> {
    let mut st: InboxState = tx
        .get_json(TreeId::Inboxes, inbox.inbox.as_bytes())?
        .unwrap_or_else(|| InboxState::pending(&inbox.inbox, &inbox.address));
    if !duplicate {
        st.messages += 1;
    }
    if let Some(v) = &inbox.verification {
        let mut v = v.clone();
        v.queue_id = record.queue_id.clone();
        v.received_at = input.received_at;
        st.latest_verification = Some(v);
    }
    if st.state == "pending" {
        if let Some(evidence) = &inbox.connect_evidence {
            st.state = "connected".into();
            st.address = inbox.address.clone();
            st.connected_at = Some(input.received_at);
            st.evidence = Some(format!("{evidence} (message {})", record.queue_id));
            notify::queue_event(
                tx,
                &input.config,
                "inbox.connected",
                &inbox.inbox,
                connected_event(&st),
                input.received_at,
            )?;
        }
    }
    tx.put_json(TreeId::Inboxes, inbox.inbox.as_bytes(), &st)
}

/// The `inbox.connected` event's data.
pub fn connected_event(st: &InboxState) -> serde_json::Value {
    serde_json::json!({
        "inbox": st.id,
        "address": st.address,
        "connected_at": st.connected_at.map(crate::util::rfc3339),
        "evidence": st.evidence,
    })
}

/// Assignment outcomes that gave the conversation a (new) assignee by rule.
const ASSIGNED_BY_RULE: [&str; 4] = ["round_robin", "least_open", "owner", "owner_fallback"];

/// What this message tells the outside, written to the outbox in the same transaction: webhook
/// events, the provider-confirmation notice to the inbox's admins, and a notice to an assignee
/// who is away.
fn announce(
    tx: &Tx<'_>,
    input: &ThreadInput,
    inbox: &InboxInput,
    record: &MessageRecord,
    r: &RoutingRecord,
) -> TxResult<()> {
    let (config, now, id) = (&input.config, input.received_at, inbox.inbox.as_str());
    let attribution = record.attribution.as_ref();
    let message = serde_json::json!({
        "queue_id": record.queue_id,
        "message_id": input.message_id,
        "received_at": crate::util::rfc3339(record.received_at),
        "subject": record.subject,
        "from": attribution.map(|a| a.email.as_str()).unwrap_or(&record.from),
        "from_name": attribution.and_then(|a| a.name.as_deref()),
        "attribution_method": attribution.map(|a| a.method.as_str()),
        "forwarded_by": attribution.and_then(|a| a.forwarded_by.as_deref()),
        "size": record.size,
        "attachments": record.attachments.len(),
        "auth_verdict": record.auth.as_ref().map(|a| a.verdict.as_str()),
        "automatic": record.automatic,
        "conversation": (!r.conversation.is_empty()).then_some(&r.conversation),
        "thread": r.thread,
        "assignee": r.assignee,
        "ticket": r.ticket,
    });
    notify::queue_event(tx, config, "message.received", id, message, now)?;
    if r.thread == "new" {
        let data = serde_json::json!({
            "conversation": r.conversation,
            "subject": input.subject,
            "contact": input.contact_email,
            "first_message": record.queue_id,
        });
        notify::queue_event(tx, config, "conversation.created", id, data, now)?;
    }
    if r.reopened {
        let data = serde_json::json!({
            "conversation": r.conversation,
            "assignee": r.assignee,
            "team": r.team,
            "by": "customer",
            "message": record.queue_id,
        });
        notify::queue_event(tx, config, "conversation.reopened", id, data, now)?;
    }
    if ASSIGNED_BY_RULE.contains(&r.assignment.as_str()) {
        let data = serde_json::json!({
            "conversation": r.conversation,
            "assignee": r.assignee,
            "team": r.team,
            "how": r.assignment,
            "rule": r.rule,
            "by": "rule",
        });
        notify::queue_event(tx, config, "conversation.assigned", id, data, now)?;
    }
    if let (true, Some(ticket)) = (r.thread == "new", &r.ticket) {
        if let Some(t) = tx.get_json::<Ticket>(TreeId::Tickets, ticket.as_bytes())? {
            let data = serde_json::to_value(&t).unwrap_or_default();
            notify::queue_event(tx, config, "ticket.created", id, data, now)?;
        }
    }
    if let Some(v) = &inbox.verification {
        let mut v = v.clone();
        v.queue_id = record.queue_id.clone();
        v.received_at = now;
        let data = serde_json::to_value(&v).unwrap_or_default();
        notify::queue_event(tx, config, "verification.received", id, data, now)?;
        notify::verification_notice(tx, config, id, &v, now)?;
    }
    if let Some(user) = &r.assignee {
        if !input.automatic
            && !input.verification
            && !routing::available(tx, &config.directory, user)?
        {
            let why = if r.assignment == "kept" {
                "New message"
            } else {
                "Assigned to you"
            };
            let notice = notify::AssignmentNotice {
                inbox: id,
                conversation: &r.conversation,
                user,
                sender: attribution
                    .map(|a| a.email.as_str())
                    .unwrap_or(&record.from),
                subject: &record.subject,
                why,
            };
            notify::assignment_notice(tx, config, &notice, now)?;
        }
    }
    Ok(())
}

fn new_conversation(input: &ThreadInput, inbox: &InboxInput) -> Conversation {
    Conversation {
        id: keys::new_queue_id(),
        inbox: inbox.inbox.clone(),
        subject: input.subject.clone(),
        contact: input.contact_email.clone(),
        created_at: input.received_at,
        updated_at: input.received_at,
        status: "open".into(),
        ..Default::default()
    }
}
