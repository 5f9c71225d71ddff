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
    Contact, Conversation, ConversationStatus, InboxLifecycle, InboxState, RoutingRecord,
    ThreadDecision, Ticket, VerificationRecord,
};
use crate::store::{keys, MessageRecord, Plan, Tx, TxResult};
use crate::views;

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
    /// The parsed message for webhooks with `include_message` (`None` when none wants it).
    pub content: Option<Arc<crate::views::Content>>,
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

/// The plan for one message.
pub fn plan(input: ThreadInput) -> Plan {
    Box::new(move |tx, record| {
        // Held back by policy: kept, but not part of any conversation (no contact, assignment or
        // ticket) until an operator releases it (`pipeline::release`, which runs this plan again).
        if record.quarantined {
            record.routing = Vec::new();
            for inbox in &input.inboxes {
                let data = serde_json::json!({
                    "message": views::MessageSummary::from(record.clone()),
                    "reason": record.auth.as_ref().map(|a| a.reason.as_str()).unwrap_or(""),
                });
                let detail = message_detail(&input, record, None);
                notify::queue_message_event(
                    tx,
                    &input.config,
                    "message.quarantined",
                    &inbox.inbox,
                    data,
                    detail.as_ref(),
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
            let duplicate = r.thread == ThreadDecision::Duplicate;
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
        thread: ThreadDecision::Setup,
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
        if let Some(entry) = tx.thread_entry(inbox, id)? {
            return Ok(Some((entry.conversation, format!("{how} <{id}>"))));
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
    let queue_id = record.queue_id.as_str();
    if let Some(entry) = tx.thread_entry(&inbox.inbox, &input.message_id)? {
        let conv = tx.conversation(&entry.conversation)?;
        return Ok(RoutingRecord {
            inbox: inbox.inbox.clone(),
            conversation: entry.conversation,
            thread: ThreadDecision::Duplicate,
            thread_reason: format!("Message-ID <{}> already received", input.message_id),
            duplicate_of: Some(entry.first),
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
        Some((id, reason)) => match tx.conversation(&id)? {
            Some(c) => (c, ThreadDecision::Joined, reason),
            None => (
                new_conversation(input, inbox),
                ThreadDecision::New,
                "referenced conversation missing".into(),
            ),
        },
        None => {
            let reason = if input.is_forward {
                "a forwarded message starts a new conversation".to_string()
            } else if input.in_reply_to.is_empty() && input.references.is_empty() {
                "no In-Reply-To or References".to_string()
            } else {
                "references unknown messages".to_string()
            };
            (new_conversation(input, inbox), ThreadDecision::New, reason)
        }
    };
    let is_new = thread == ThreadDecision::New;
    tx.put_thread_entry(&inbox.inbox, &input.message_id, &conv.id, queue_id)?;
    if is_new {
        tx.start_conversation(&mut conv, queue_id)?;
    } else {
        tx.add_to_conversation(&mut conv, queue_id)?;
    }
    conv.updated_at = now;

    // The contact: the original sender, with the owner from config.
    let dir = &input.config.directory;
    let owner = dir.owner_of(&input.contact_email).map(str::to_string);
    if !input.contact_email.is_empty() {
        let mut contact: Contact = tx
            .contact(&input.contact_email)?
            .unwrap_or_else(|| Contact {
                email: input.contact_email.clone(),
                first_seen: now,
                ..Default::default()
            });
        if input.contact_name.is_some() {
            contact.name = input.contact_name.clone();
        }
        contact.last_seen = now;
        if is_new {
            tx.link_new_contact(&input.contact_email, &conv.id)?;
            contact.conversation_count += 1;
        } else if tx.link_contact(&input.contact_email, &conv.id)? {
            contact.conversation_count += 1;
        }
        contact.owner = owner.clone().or(contact.owner);
        tx.put_contact(&contact)?;
    }

    // A customer writing into a closed conversation reopens it: it is open again, with its
    // assignee's open count back, or, when that user is no longer configured, assigned anew by
    // the rules below. Automatic mail and provider confirmations leave it closed.
    let reopened = thread == ThreadDecision::Joined
        && conv.status == ConversationStatus::Closed
        && !input.automatic
        && !input.verification;
    if reopened {
        conv.status = ConversationStatus::Open;
        match conv.assignee.clone() {
            Some(user) if dir.users.contains_key(&user) => {
                tx.open_added(&user)?;
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
                let rr = format!("{}:{}", inbox.inbox, rule.name);
                match routing::choose(tx, dir, assign, owner.as_deref(), &rr)? {
                    Some((user, team, how)) => {
                        tx.open_added(&user)?;
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
        let seq = tx.next_ticket_number()?;
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
        tx.put_ticket(&ticket)?;
        conv.ticket = Some(ticket.id);
    }
    tx.put_conversation(&conv)?;
    Ok(RoutingRecord {
        inbox: inbox.inbox.clone(),
        conversation: conv.id.clone(),
        thread,
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
        .inbox_state(&inbox.inbox)?
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
    if st.state == InboxLifecycle::Pending {
        if let Some(evidence) = &inbox.connect_evidence {
            st.state = InboxLifecycle::Connected;
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
    tx.put_inbox_state(&st)
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
    // The API's shapes (`views`), so a webhook and `GET /v1/messages/{id}` name things alike.
    let message = serde_json::json!({
        "message": views::MessageSummary::from(record.clone()),
        "routing": views::Routing::from(r.clone()),
    });
    let detail = message_detail(input, record, Some(r));
    notify::queue_message_event(
        tx,
        config,
        "message.received",
        id,
        message,
        detail.as_ref(),
        now,
    )?;
    if r.thread == ThreadDecision::New {
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
    if let (true, Some(ticket)) = (r.thread == ThreadDecision::New, &r.ticket) {
        if let Some(t) = tx.ticket(ticket)? {
            let data = serde_json::to_value(views::TicketView::from(t)).unwrap_or_default();
            notify::queue_event(tx, config, "ticket.created", id, data, now)?;
        }
    }
    if let Some(v) = &inbox.verification {
        let mut v = v.clone();
        v.queue_id = record.queue_id.clone();
        v.received_at = now;
        let data = serde_json::to_value(views::Verification::from(v.clone())).unwrap_or_default();
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

/// The message detail a webhook with `include_message` carries: the record, its content, and
/// the routing of the event's inbox (the record's full list is written after every inbox).
/// `None` when no endpoint wants it.
fn message_detail(
    input: &ThreadInput,
    record: &MessageRecord,
    routing: Option<&RoutingRecord>,
) -> Option<views::MessageDetail> {
    let content = input.content.as_ref()?;
    let mut record = record.clone();
    record.routing = routing.cloned().into_iter().collect();
    Some(views::MessageDetail::new(record, Some((**content).clone())))
}

fn new_conversation(input: &ThreadInput, inbox: &InboxInput) -> Conversation {
    Conversation {
        id: keys::new_queue_id(),
        inbox: inbox.inbox.clone(),
        subject: input.subject.clone(),
        contact: input.contact_email.clone(),
        created_at: input.received_at,
        updated_at: input.received_at,
        status: ConversationStatus::Open,
        ..Default::default()
    }
}
