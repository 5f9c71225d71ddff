//! Operator actions -> one durable store transaction each: confirm an inbox, assign, unassign or
//! close or reopen a conversation, set a user's availability, release or delete a quarantined
//! message, retry an outbox item now or drop it.
//! Every front end (HTTP API, admin socket, CLI) calls these functions, never the store directly,
//! so an action means the same thing wherever it comes from, and whatever must happen with it
//! (an outbox item for a webhook or a notification mail) is written inside the same transaction.
//!
//! Invariant kept here: the store's open count of a user (`Tx::open_count`) is the number of open
//! conversations assigned to them (what `least_open` assignment compares).

pub mod inboxes;
pub mod people;

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::pipeline::routing;
use crate::store::model::{Conversation, ConversationStatus, InboxLifecycle, InboxState};
use crate::store::{keys, MessageRecord, Store, StoreError, Tx, TxResult};

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The thing acted on does not exist (`what` names it: "conversation 01H…").
    #[error("no {0}")]
    NotFound(String),
    /// The request is malformed; `field` names the input at fault.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The action does not apply to the current state (a message that is not quarantined).
    #[error("{0}")]
    Conflict(String),
    /// The message body the action needs was removed by retention.
    #[error("{0}")]
    BodyExpired(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ActionError {
    fn invalid(field: &str, message: impl Into<String>) -> ActionError {
        ActionError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The validation errors of a change (an inbox, user or team created or changed through the
/// API) as one refusal, paths relative to `own`, the changed item's key path
/// (`/v1/inboxes/acme`): a clash (a duplicate id, address or from name) or an error at another
/// key (what still names the item) is a conflict; anything else is bad input naming the first
/// field.
fn config_refusal(own: &str, errors: Vec<ConfigError>) -> ActionError {
    let prefix = format!("{own}.");
    let mut list = errors.into_iter().map(|e| {
        let elsewhere = !e.path.starts_with(&prefix);
        let path = e.path.strip_prefix(&prefix).unwrap_or(&e.path).to_string();
        (elsewhere, path, e.message)
    });
    let Some((elsewhere, path, first)) = list.next() else {
        return ActionError::invalid("body", "invalid");
    };
    let mut message = first.clone();
    for (_, path, m) in list {
        message.push_str(&format!("; {path}: {m}"));
    }
    if elsewhere || first.starts_with("duplicate ") {
        ActionError::Conflict(format!("{path}: {message}"))
    } else {
        ActionError::Invalid {
            field: path,
            message,
        }
    }
}

/// A PATCH body applied to the stored `old` (an inbox, user or team spec): the fields it names
/// replace the old ones (`null` removes one); the id cannot change. The merged object, and the
/// names of the fields whose value changed.
fn merge_patch(
    old: &impl serde::Serialize,
    id: &str,
    kind: &str,
    patch: serde_json::Map<String, serde_json::Value>,
) -> Result<(serde_json::Map<String, serde_json::Value>, Vec<String>), ActionError> {
    let mut merged = match serde_json::to_value(old) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err(ActionError::Conflict("stored definition unreadable".into())),
    };
    let mut changes = Vec::new();
    for (key, value) in patch {
        if key == "id" && value.as_str() != Some(id) {
            return Err(ActionError::invalid(
                "id",
                format!("the id of a {kind} cannot change"),
            ));
        }
        if merged.get(&key) != Some(&value) {
            changes.push(key.clone());
        }
        merged.insert(key, value);
    }
    Ok((merged, changes))
}

/// A merged PATCH as the spec it must be, or the field at fault (unknown, wrong type).
fn parse_merged<T: serde::de::DeserializeOwned>(
    merged: serde_json::Map<String, serde_json::Value>,
) -> Result<T, ActionError> {
    serde_path_to_error::deserialize(serde_json::Value::Object(merged)).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "body".into() } else { path };
        ActionError::invalid(&path, e.into_inner().to_string())
    })
}

/// An operator confirms that the team's forwarding to `address` works: the inbox becomes
/// connected (its address locked) with this as its evidence. Confirming a connected inbox
/// changes nothing. What the admin socket's `InboxConfirm` and the API's confirm both run.
pub fn confirm_inbox(
    store: &Store,
    config: &Config,
    id: &str,
    address: &str,
) -> Result<InboxState, StoreError> {
    let now = keys::now_ms();
    store.update(|tx| {
        let mut st: InboxState = tx
            .inbox_state(id)?
            .unwrap_or_else(|| InboxState::pending(id, address));
        if st.state != InboxLifecycle::Connected {
            st.state = InboxLifecycle::Connected;
            st.address = address.to_string();
            st.connected_at = Some(now);
            st.evidence = Some("confirmed by an operator".into());
            let data = crate::pipeline::threading::connected_event(&st);
            crate::notify::queue_event(tx, config, "inbox.connected", id, data, now)?;
        }
        tx.put_inbox_state(&st)?;
        Ok(st)
    })
}

/// Who a conversation is assigned to: a user, a team (its queue), or a user on behalf of a team.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignee {
    pub user: Option<String>,
    pub team: Option<String>,
}

/// Assign a conversation. The user and team must exist in `config.directory`, and a user given
/// with a team must be one of its members. Open-conversation counters follow the change.
pub fn assign(
    store: &Store,
    config: &Config,
    conversation: &str,
    to: &Assignee,
) -> Result<Conversation, ActionError> {
    let dir = &config.directory;
    if to.user.is_none() && to.team.is_none() {
        return Err(ActionError::invalid("user", "give a user, a team, or both"));
    }
    if let Some(u) = &to.user {
        if !dir.users.contains_key(u) {
            return Err(ActionError::invalid("user", format!("no user {u:?}")));
        }
    }
    if let Some(t) = &to.team {
        let Some(team) = dir.teams.get(t) else {
            return Err(ActionError::invalid("team", format!("no team {t:?}")));
        };
        if let Some(u) = &to.user {
            if !team.members.contains(u) {
                return Err(ActionError::invalid(
                    "user",
                    format!("{u:?} is not a member of team {t:?}"),
                ));
            }
        }
    }
    change_conversation(store, conversation, |tx, c| {
        let changed = c.assignee != to.user || c.team != to.team;
        move_open(tx, c, c.assignee.clone(), to.user.clone())?;
        c.assignee = to.user.clone();
        c.team = to.team.clone();
        if changed {
            announce_assignment(tx, config, c)?;
        }
        Ok(())
    })
}

/// An operator's assignment, told in the same transaction: the `conversation.assigned` webhook
/// event, and a notice to the assignee if they are marked away.
fn announce_assignment(tx: &Tx<'_>, config: &Config, c: &Conversation) -> TxResult<()> {
    let now = keys::now_ms();
    let data = serde_json::json!({
        "conversation": c.id,
        "assignee": c.assignee,
        "team": c.team,
        "how": "operator",
        "rule": null,
        "by": "operator",
    });
    crate::notify::queue_event(tx, config, "conversation.assigned", &c.inbox, data, now)?;
    if let Some(user) = &c.assignee {
        if !routing::available(tx, &config.directory, user)? {
            let notice = crate::notify::AssignmentNotice {
                inbox: &c.inbox,
                conversation: &c.id,
                user,
                sender: &c.contact,
                subject: &c.subject,
                why: "Assigned to you",
            };
            crate::notify::assignment_notice(tx, config, &notice, now)?;
        }
    }
    Ok(())
}

/// An operator's change to a conversation, told in the same transaction as the
/// `conversation.<what>` webhook event.
fn announce_change(tx: &Tx<'_>, config: &Config, what: &str, c: &Conversation) -> TxResult<()> {
    let data = serde_json::json!({
        "conversation": c.id,
        "status": c.status,
        "assignee": c.assignee,
        "team": c.team,
        "by": "operator",
    });
    crate::notify::queue_event(
        tx,
        config,
        &format!("conversation.{what}"),
        &c.inbox,
        data,
        keys::now_ms(),
    )
}

/// Take a conversation off its user and team (`conversation.unassigned`, when it had one).
pub fn unassign(
    store: &Store,
    config: &Config,
    conversation: &str,
) -> Result<Conversation, ActionError> {
    change_conversation(store, conversation, |tx, c| {
        let had = c.assignee.is_some() || c.team.is_some();
        move_open(tx, c, c.assignee.clone(), None)?;
        c.assignee = None;
        c.team = None;
        if had {
            announce_change(tx, config, "unassigned", c)?;
        }
        Ok(())
    })
}

/// Close a conversation (`conversation.closed`). It keeps its assignee, who has one open
/// conversation fewer. Closing a closed conversation changes nothing.
pub fn close(
    store: &Store,
    config: &Config,
    conversation: &str,
) -> Result<Conversation, ActionError> {
    change_conversation(store, conversation, |tx, c| {
        if c.status != ConversationStatus::Closed {
            if let Some(user) = &c.assignee {
                tx.open_removed(user)?;
            }
            c.status = ConversationStatus::Closed;
            announce_change(tx, config, "closed", c)?;
        }
        Ok(())
    })
}

/// Reopen a closed conversation (`conversation.reopened`; a customer's new message reopens one
/// too, in `pipeline::threading`). Its assignee has one open conversation more again.
/// Reopening an open conversation changes nothing.
pub fn reopen(
    store: &Store,
    config: &Config,
    conversation: &str,
) -> Result<Conversation, ActionError> {
    change_conversation(store, conversation, |tx, c| {
        if c.status == ConversationStatus::Closed {
            if let Some(user) = &c.assignee {
                tx.open_added(user)?;
            }
            c.status = ConversationStatus::Open;
            announce_change(tx, config, "reopened", c)?;
        }
        Ok(())
    })
}

/// Make an outbox item due now (`postqueue -i`): the worker, woken by the caller, tries it on its
/// next pass. Its attempts and lifetime are unchanged.
pub fn outbox_retry_now(store: &Store, id: &str) -> Result<crate::notify::OutboxItem, ActionError> {
    let now = keys::now_ms();
    let changed = store.update(|tx| {
        let Some(old) = tx.outbox_item(id)? else {
            return Ok(None);
        };
        let mut item = old.clone();
        item.next_attempt_at = now;
        tx.outbox_update(&old, &item)?;
        Ok(Some(item))
    })?;
    changed.ok_or_else(|| ActionError::NotFound(format!("outbox item {id}")))
}

/// Drop an outbox item for good (`postsuper -d`): the webhook call or mail is never made.
pub fn outbox_drop(store: &Store, id: &str) -> Result<crate::notify::OutboxItem, ActionError> {
    let removed = store.update(|tx| {
        let Some(item) = tx.outbox_item(id)? else {
            return Ok(None);
        };
        tx.outbox_remove(&item)?;
        Ok(Some(item))
    })?;
    removed.ok_or_else(|| ActionError::NotFound(format!("outbox item {id}")))
}

/// Set a configured user's availability at run time (what `routing::available` reads before the
/// config's `available`). Returns the value stored.
pub fn set_availability(
    store: &Store,
    config: &Config,
    user: &str,
    available: bool,
) -> Result<bool, ActionError> {
    if !config.directory.users.contains_key(user) {
        return Err(ActionError::NotFound(format!("user {user:?}")));
    }
    store.update(|tx| {
        // Whatever else a later version stored for the user is kept (`UserState::other`).
        let mut state = tx.user_state(user)?.unwrap_or_default();
        state.available = Some(available);
        tx.put_user_state(user, &state)?;
        Ok(available)
    })?;
    Ok(available)
}

/// Release a quarantined message into its inboxes (`pipeline::release`: analysed and routed
/// again, in one transaction).
pub fn release_quarantined(
    config: &Arc<Config>,
    store: &Store,
    queue_id: &str,
) -> Result<MessageRecord, ActionError> {
    use crate::pipeline::ReleaseError;
    crate::pipeline::release(config, store, queue_id).map_err(|e| match e {
        ReleaseError::NotFound(id) => ActionError::NotFound(format!("message {id}")),
        e @ ReleaseError::NotQuarantined(_) => ActionError::Conflict(e.to_string()),
        e @ ReleaseError::BodyExpired(_) => ActionError::BodyExpired(e.to_string()),
        ReleaseError::Store(e) => ActionError::Store(e),
    })
}

/// Delete a quarantined message for good. A message that is not (or no longer) quarantined is
/// left alone: the check is made inside the deleting transaction.
pub fn delete_quarantined(store: &Store, queue_id: &str) -> Result<MessageRecord, ActionError> {
    let mut removed = store.delete_messages_if(&[queue_id.to_string()], |r| r.quarantined)?;
    match removed.pop() {
        Some(r) => Ok(r),
        // Nothing was deleted; say why (the answer, not the decision, may be a moment late).
        None if store.get(queue_id)?.is_some() => Err(ActionError::Conflict(format!(
            "message {queue_id} is not quarantined"
        ))),
        None => Err(ActionError::NotFound(format!("message {queue_id}"))),
    }
}

/// Load a conversation, let `change` edit it, store it with a new `updated_at`: one transaction.
fn change_conversation(
    store: &Store,
    id: &str,
    change: impl Fn(&Tx<'_>, &mut Conversation) -> TxResult<()> + Sync,
) -> Result<Conversation, ActionError> {
    let now = keys::now_ms();
    let changed = store.update(|tx| {
        let Some(mut c) = tx.conversation(id)? else {
            return Ok(None);
        };
        change(tx, &mut c)?;
        c.updated_at = now;
        tx.put_conversation(&c)?;
        Ok(Some(c))
    })?;
    changed.ok_or_else(|| ActionError::NotFound(format!("conversation {id}")))
}

/// The assignee of `c` changes from `from` to `to`: while it is open, the open count moves with it.
fn move_open(
    tx: &Tx<'_>,
    c: &Conversation,
    from: Option<String>,
    to: Option<String>,
) -> TxResult<()> {
    if c.status == ConversationStatus::Closed || from == to {
        return Ok(());
    }
    if let Some(user) = &from {
        tx.open_removed(user)?;
    }
    if let Some(user) = &to {
        tx.open_added(user)?;
    }
    Ok(())
}
