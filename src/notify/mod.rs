//! The transactional outbox: everything that must leave the server because something happened
//! (a provider confirmation arrived, a conversation went to an away user, a webhook event, a
//! from-address verification code) is written as an outbox item inside the same store
//! transaction as the event itself, and delivered afterwards by the worker (`worker`) with
//! retries. So an event without its notification, or a notification without its event, cannot
//! be committed, and a restart or a dead relay loses nothing.
//!
//! Items are resolved against the config at delivery time (the relay, the webhook URL and
//! secret), so a reload that fixes a relay password also fixes the deliveries already waiting.

pub mod mail;
pub mod verify_from;
pub mod webhook;
pub mod worker;

use crate::config::Config;
pub use crate::store::model::{Delivery, OutboxItem};
use crate::store::{keys, Tx, TxResult};

/// Write an item (due now) inside the caller's transaction.
pub fn enqueue(tx: &Tx<'_>, delivery: Delivery, now_ms: u64) -> TxResult<String> {
    let item = OutboxItem {
        id: keys::new_queue_id(),
        created_at: now_ms,
        attempts: 0,
        next_attempt_at: now_ms,
        last_error: None,
        delivery,
    };
    tx.outbox_add(&item)?;
    Ok(item.id)
}

/// A mail to queue: who it is about and for, and what it says.
pub struct Notice<'a> {
    /// The inbox it is about (its verified from-address is used), if any.
    pub inbox: Option<&'a str>,
    /// Why: "verification_notice", "from_verification", "assignment_notice".
    pub purpose: &'a str,
    pub to: &'a [String],
    pub subject: &'a str,
    pub text: &'a str,
}

/// Queue a mail from the server (or from an inbox's verified address). Without a relay
/// configured, nothing can be sent: the notice is logged instead, and nothing is queued.
pub fn queue_mail(
    tx: &Tx<'_>,
    config: &Config,
    n: &Notice<'_>,
    now_ms: u64,
) -> TxResult<Option<String>> {
    let Notice {
        inbox,
        purpose,
        to,
        subject,
        text,
    } = *n;
    let Some(relay) = &config.outbound.relay else {
        // Warned about once at start (`warn_unsendable`); per notice only at debug.
        tracing::debug!(purpose, to = %to.join(", "), subject, "no [relay] configured: notification not sent");
        return Ok(None);
    };
    if to.is_empty() {
        return Ok(None);
    }
    let (from_name, from) = sender(tx, config, inbox, relay)?;
    let id = keys::new_queue_id();
    let message = mail::render(&mail::Compose {
        from_name: &from_name,
        from: &from,
        to,
        subject,
        text,
        message_id: &format!("{}.{}@{}", purpose, id.to_lowercase(), config.hostname),
        date_ms: now_ms,
        purpose,
    });
    enqueue(
        tx,
        Delivery::Mail {
            purpose: purpose.into(),
            to: to.to_vec(),
            message,
        },
        now_ms,
    )
    .map(Some)
}

/// The From of mail about `inbox`: its from-address once verified, else the relay's.
fn sender(
    tx: &Tx<'_>,
    config: &Config,
    inbox: Option<&str>,
    relay: &crate::config::outbound::RelayConfig,
) -> TxResult<(String, String)> {
    if let Some(cfg) = inbox.and_then(|i| config.inboxes.get(i)) {
        if let Some(addr) = &cfg.from_address {
            let st = tx.inbox_state(&cfg.id)?;
            if st.is_some_and(|s| s.verified_from.iter().any(|v| v == addr)) {
                let name = cfg
                    .from_name
                    .clone()
                    .or_else(|| cfg.name.clone())
                    .unwrap_or_else(|| relay.from_name.clone());
                return Ok((name, addr.clone()));
            }
        }
    }
    Ok((relay.from_name.clone(), relay.from.clone()))
}

/// Queue one webhook call per configured endpoint that wants `event` for `inbox`. The body is
/// the same for every endpoint; `id` in it is the idempotency key.
pub fn queue_event(
    tx: &Tx<'_>,
    config: &Config,
    event: &str,
    inbox: &str,
    data: serde_json::Value,
    now_ms: u64,
) -> TxResult<()> {
    queue(tx, config, event, inbox, now_ms, |_| data.clone())
}

/// A message event (`message.received`, `message.quarantined`): `data` (an object) gains the
/// parsed message for endpoints with `include_message`, like the inbound JSON of hosted mail
/// APIs. Every endpoint gets the same keys, so a receiver reads one shape:
/// - `detail_url`: the API path of the message detail (`/v1/messages/{id}`);
/// - `detail`: that detail (`views::MessageDetail`, its `routing` that of this event's inbox),
///   or `null`;
/// - `detail_omitted`: why `detail` is `null` ("not_requested": the endpoint did not opt in;
///   "too_large": its JSON is over the endpoint's `message_max_bytes`; "unreadable": the
///   message did not parse), `null` when it is there.
///
/// The body is rendered here, inside the message's commit, and stored as sent: a retry sends
/// the same bytes even after retention removed the message body.
pub fn queue_message_event(
    tx: &Tx<'_>,
    config: &Config,
    event: &str,
    inbox: &str,
    data: serde_json::Value,
    detail: Option<&crate::views::MessageDetail>,
    now_ms: u64,
) -> TxResult<()> {
    let wanted = config
        .outbound
        .webhooks
        .iter()
        .any(|w| w.include_message && w.wants(event, inbox));
    // Serialized once, and only when an endpoint takes it; the length is what the cap measures.
    let detail = if wanted {
        detail.and_then(|d| {
            let text = serde_json::to_string(d).ok()?;
            Some((
                text.len() as u64,
                serde_json::from_str::<serde_json::Value>(&text).ok()?,
            ))
        })
    } else {
        None
    };
    let url = data
        .get("message")
        .and_then(|m| m.get("id"))
        .and_then(|id| id.as_str())
        .map(|id| format!("/v1/messages/{id}"));
    queue(tx, config, event, inbox, now_ms, |w| {
        let mut d = data.clone();
        let (value, omitted) = match (&detail, w.include_message) {
            (_, false) => (serde_json::Value::Null, Some("not_requested")),
            (None, true) => (serde_json::Value::Null, Some("unreadable")),
            (Some((len, _)), true) if *len > w.message_max_bytes => {
                (serde_json::Value::Null, Some("too_large"))
            }
            (Some((_, v)), true) => (v.clone(), None),
        };
        if let Some(obj) = d.as_object_mut() {
            obj.insert("detail_url".into(), serde_json::json!(url));
            obj.insert("detail".into(), value);
            obj.insert("detail_omitted".into(), serde_json::json!(omitted));
        }
        d
    })
}

/// One webhook call per endpoint that wants `event` for `inbox`, with the data `data_for`
/// gives that endpoint; the event id (the idempotency key) is the same for all.
fn queue(
    tx: &Tx<'_>,
    config: &Config,
    event: &str,
    inbox: &str,
    now_ms: u64,
    data_for: impl Fn(&crate::config::outbound::WebhookConfig) -> serde_json::Value,
) -> TxResult<()> {
    let endpoints: Vec<_> = config
        .outbound
        .webhooks
        .iter()
        .filter(|w| w.wants(event, inbox))
        .collect();
    if endpoints.is_empty() {
        return Ok(());
    }
    let event_id = format!("evt_{}", keys::new_queue_id());
    for w in endpoints {
        let body = serde_json::json!({
            "id": event_id,
            "type": event,
            "created_at": crate::util::rfc3339(now_ms),
            "created_at_ms": now_ms,
            "inbox": inbox,
            "data": data_for(w),
        })
        .to_string();
        enqueue(
            tx,
            Delivery::Webhook {
                endpoint: w.id.clone(),
                event: event.into(),
                event_id: event_id.clone(),
                body,
            },
            now_ms,
        )?;
    }
    Ok(())
}

/// At start: say once if notices are configured that cannot be sent.
pub fn warn_unsendable(config: &Config) {
    if config.outbound.relay.is_some() {
        return;
    }
    let with_admins: Vec<&str> = config
        .inboxes
        .list
        .iter()
        .filter(|i| !i.admins.is_empty())
        .map(|i| i.id.as_str())
        .collect();
    if !with_admins.is_empty() {
        tracing::warn!(
            inboxes = %with_admins.join(", "),
            "inboxes have admins but no [relay] is configured: provider confirmations and \
             assignment notices are recorded and logged, not emailed"
        );
    }
}

/// The notice sent to an inbox's admins when a provider's confirmation arrives: the code and the
/// link for a human to use (the server never opens the link).
pub fn verification_notice(
    tx: &Tx<'_>,
    config: &Config,
    inbox: &str,
    v: &crate::store::model::VerificationRecord,
    now_ms: u64,
) -> TxResult<()> {
    let Some(cfg) = config.inboxes.get(inbox) else {
        return Ok(());
    };
    if cfg.admins.is_empty() {
        tracing::info!(
            inbox,
            "provider confirmation received; the inbox has no admins to notify"
        );
        return Ok(());
    }
    let provider = &v.provider;
    let subject = match &v.code {
        Some(code) => format!("{provider} confirmation code {code} for {}", cfg.address),
        None => format!("{provider} confirmation for {}", cfg.address),
    };
    let mut text = format!(
        "{provider} sent a confirmation request to the inbound address {}{}.\r\n\r\n",
        cfg.address,
        cfg.name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    if let Some(a) = &v.address {
        text.push_str(&format!("Mailbox being confirmed: {a}\r\n"));
    }
    if let Some(c) = &v.code {
        text.push_str(&format!("Confirmation code: {c}\r\n"));
    }
    if let Some(l) = &v.link {
        text.push_str(&format!("Confirmation link: {l}\r\n"));
    }
    text.push_str(
        "\r\nEnter the code in your mail provider's forwarding settings, or open the link \
         yourself to finish the setup. inbound never opens confirmation links on its own.\r\n",
    );
    text.push_str(&format!(
        "\r\nReceived as message {} (inbound inboxes show {inbox}).\r\n",
        v.queue_id
    ));
    let notice = Notice {
        inbox: Some(inbox),
        purpose: "verification_notice",
        to: &cfg.admins,
        subject: &subject,
        text: &text,
    };
    queue_mail(tx, config, &notice, now_ms)?;
    Ok(())
}

/// What an away assignee is told about a conversation given to them.
pub struct AssignmentNotice<'a> {
    pub inbox: &'a str,
    pub conversation: &'a str,
    pub user: &'a str,
    pub sender: &'a str,
    pub subject: &'a str,
    /// "assigned" (newly given to them) or "new message" (in a conversation they hold).
    pub why: &'a str,
}

/// Email a user who is marked unavailable about a conversation that is (or stays) theirs, so it
/// does not wait unseen. Users without an email are logged.
pub fn assignment_notice(
    tx: &Tx<'_>,
    config: &Config,
    n: &AssignmentNotice<'_>,
    now_ms: u64,
) -> TxResult<()> {
    let Some(email) = config
        .directory
        .users
        .get(n.user)
        .and_then(|u| u.email.clone())
    else {
        tracing::warn!(
            user = n.user,
            conversation = n.conversation,
            "away assignee has no email; not notified"
        );
        return Ok(());
    };
    let inbox_name = config
        .inboxes
        .get(n.inbox)
        .and_then(|i| i.name.clone())
        .unwrap_or_else(|| n.inbox.to_string());
    let subject = format!("[{inbox_name}] {}: {}", n.why, n.subject);
    let mut text = format!(
        "You are marked unavailable, and this conversation in {inbox_name} is assigned to you.\r\n\r\n\
         From: {}\r\nSubject: {}\r\n",
        n.sender, n.subject
    );
    match config
        .outbound
        .notify
        .conversation_link(n.inbox, n.conversation)
    {
        Some(link) => text.push_str(&format!("Open: {link}\r\n")),
        None => text.push_str(&format!("Conversation: {}\r\n", n.conversation)),
    }
    text.push_str("\r\nReassign it if someone else should answer while you are away.\r\n");
    let notice = Notice {
        inbox: Some(n.inbox),
        purpose: "assignment_notice",
        to: &[email],
        subject: &subject,
        text: &text,
    };
    queue_mail(tx, config, &notice, now_ms)?;
    Ok(())
}
