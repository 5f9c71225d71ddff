//! Inside one transaction: the trees of the database (`TreeId`) and the view (`Tx`) through
//! which a commit's plan and an operator action read and write them atomically. The helpers that
//! remove a message or a conversation with everything that points at it live here too, so every
//! removal keeps the indexes in step.

use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, UnabortableTransactionError};

use super::keys;
use super::model::{self, MessageRecord};

/// Decisions that depend on what is already stored (threading, assignment, counters): run by
/// the committer inside the message's transaction, so they see every earlier commit and their
/// writes land atomically with the message. It may fill in fields of the record. It can run more
/// than once (a transaction may be retried), so it must only act through `Tx`.
pub type Plan = Box<dyn Fn(&Tx<'_>, &mut MessageRecord) -> TxResult<()> + Send + Sync>;

/// The trees of the database. Every commit may touch any of them atomically. Private to the
/// store: the rest of the server speaks in domain operations (`ops`), never in trees and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TreeId {
    Messages = 0,
    Bodies = 1,
    Conversations = 2,
    /// `inbox \0 message-id` -> conversation id (threading and duplicate detection).
    MessageIds = 3,
    Contacts = 4,
    Tickets = 5,
    /// Counters and small state: round-robin positions, open-conversation counts, sequences.
    Counters = 6,
    /// Runtime user state (availability set through the API).
    Users = 7,
    /// `contact \0 conversation id` -> empty: a contact's conversations, without growing the
    /// contact record with every new one.
    ContactConversations = 8,
    /// Inbox id -> lifecycle state (pending/connected, evidence, latest verification request).
    Inboxes = 9,
    /// Outbox item id -> what must be delivered (notification mail, webhook call), written in
    /// the same transaction as the event that causes it (`notify`).
    Outbox = 10,
    /// `due (u64 BE, unix ms) ‖ item id` -> empty: the outbox in delivery order.
    OutboxDue = 11,
    /// `conversation id \0 queue id` -> empty: a conversation's messages in arrival order (queue
    /// ids are ULIDs), without growing the conversation record with every new one.
    ConversationMessages = 12,
    /// Inboxes created through the API: `i\0<id>` -> definition, `a\0<address>` -> inbox id
    /// (every address ever used, retired ones too, so none is handed to another team).
    InboxDefinitions = 13,
    /// Users and teams created through the API: `user\0<id>` and `team\0<id>` -> definition.
    People = 14,
}

pub(super) const TREE_NAMES: [&str; 15] = [
    "messages",
    "bodies",
    "conversations",
    "message_ids",
    "contacts",
    "tickets",
    "counters",
    "users",
    "contact_conversations",
    "inboxes",
    "outbox",
    "outbox_due",
    "conversation_messages",
    "inbox_definitions",
    "people",
];

/// Result of an operation inside a transaction; an error undoes the whole transaction.
pub type TxResult<T> = Result<T, TxError>;

/// Why a transaction did not complete: a refusal with its reason (`TxError::abort`), or the
/// database's own (a conflict to retry, a storage failure), which the store handles.
#[derive(Debug)]
pub struct TxError(pub(super) ConflictableTransactionError<String>);

impl TxError {
    /// Undo the whole transaction, with `reason` as its error.
    pub fn abort(reason: impl Into<String>) -> TxError {
        TxError(ConflictableTransactionError::Abort(reason.into()))
    }
}

impl From<UnabortableTransactionError> for TxError {
    fn from(e: UnabortableTransactionError) -> TxError {
        TxError(e.into())
    }
}

/// A counter as stored (8 bytes, big-endian); absent or malformed reads as 0.
pub(super) fn decode_counter(value: Option<sled::IVec>) -> i64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0)
}

/// The `ConversationMessages` key of one message in one conversation.
pub(super) fn conversation_message_key(conversation: &str, queue_id: &str) -> Vec<u8> {
    [conversation.as_bytes(), &[0], queue_id.as_bytes()].concat()
}

/// A view of every tree inside one transaction: reads see this transaction's own writes.
pub struct Tx<'a> {
    pub(super) views: &'a [sled::transaction::TransactionalTree],
}

impl Tx<'_> {
    pub(super) fn get(&self, tree: TreeId, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(self.views[tree as usize].get(key)?)
    }

    pub(super) fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.views[tree as usize].insert(key, value)?;
        Ok(())
    }

    pub(super) fn remove(&self, tree: TreeId, key: &[u8]) -> TxResult<()> {
        self.views[tree as usize].remove(key)?;
        Ok(())
    }

    pub(super) fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: TreeId,
        key: &[u8],
    ) -> TxResult<Option<T>> {
        match self.get(tree, key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| TxError::abort(format!("decoding {tree:?} record: {e}"))),
        }
    }

    pub(super) fn put_json<T: Serialize>(
        &self,
        tree: TreeId,
        key: &[u8],
        value: &T,
    ) -> TxResult<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| TxError::abort(format!("encoding {tree:?} record: {e}")))?;
        self.insert(tree, key, &bytes)
    }

    /// Add `delta` to a counter and return the new value.
    pub(super) fn add(&self, key: &[u8], delta: i64) -> TxResult<i64> {
        let now = self.counter(key)?;
        let next = now.saturating_add(delta);
        self.insert(TreeId::Counters, key, &next.to_be_bytes())?;
        Ok(next)
    }

    /// Remove a message's record and inline body, the Message-ID entries it owns and its place in
    /// its conversations. Its spool file (if any) is the caller's to remove after the commit.
    pub(super) fn remove_message(&self, record: &MessageRecord) -> TxResult<()> {
        let key = record.queue_id.as_bytes();
        self.remove(TreeId::Messages, key)?;
        self.remove(TreeId::Bodies, key)?;
        for r in &record.routing {
            self.release_message_id(record, &r.inbox, None)?;
            let conv_key = r.conversation.as_bytes();
            if let Some(mut c) =
                self.get_json::<model::Conversation>(TreeId::Conversations, conv_key)?
            {
                let link = conversation_message_key(&r.conversation, &record.queue_id);
                if self.get(TreeId::ConversationMessages, &link)?.is_some() {
                    self.remove(TreeId::ConversationMessages, &link)?;
                    c.message_count = c.message_count.saturating_sub(1);
                    self.put_json(TreeId::Conversations, conv_key, &c)?;
                }
            }
        }
        Ok(())
    }

    /// Remove the `inbox \0 message-id` entry of `record` when it is this message's to remove:
    /// it belongs to `conversation` (when given), or was written for this message (only the first
    /// copy of a Message-ID owns its entry; duplicates point at it).
    fn release_message_id(
        &self,
        record: &MessageRecord,
        inbox: &str,
        conversation: Option<&str>,
    ) -> TxResult<()> {
        let message_id = keys::thread_message_id(
            &record.message_id,
            &record.from,
            &record.subject,
            &record.sha256,
        );
        let idx = super::ops::thread_key(inbox, &message_id);
        if let Some(v) = self.get(TreeId::MessageIds, &idx)? {
            let entry = super::ops::ThreadEntry::decode(&v);
            let owned = match conversation {
                Some(c) => entry.conversation == c,
                None => entry.first == record.queue_id,
            };
            if owned {
                self.remove(TreeId::MessageIds, &idx)?;
            }
        }
        Ok(())
    }

    /// Remove a conversation with its ticket and contact link; each of its messages leaves it,
    /// and a message left in no conversation is removed (pushed onto `removed`).
    pub(super) fn remove_conversation(
        &self,
        conv: &model::Conversation,
        messages: &[String],
        removed: &mut Vec<MessageRecord>,
    ) -> TxResult<()> {
        self.remove(TreeId::Conversations, conv.id.as_bytes())?;
        if let Some(t) = &conv.ticket {
            self.remove(TreeId::Tickets, t.as_bytes())?;
        }
        if !conv.contact.is_empty() {
            let link = [conv.contact.as_bytes(), &[0], conv.id.as_bytes()].concat();
            if self.get(TreeId::ContactConversations, &link)?.is_some() {
                self.remove(TreeId::ContactConversations, &link)?;
                let key = conv.contact.as_bytes();
                if let Some(mut c) = self.get_json::<model::Contact>(TreeId::Contacts, key)? {
                    c.conversation_count = c.conversation_count.saturating_sub(1);
                    self.put_json(TreeId::Contacts, key, &c)?;
                }
            }
        }
        for queue_id in messages {
            self.remove(
                TreeId::ConversationMessages,
                &conversation_message_key(&conv.id, queue_id),
            )?;
            let key = queue_id.as_bytes();
            let Some(mut record) = self.get_json::<MessageRecord>(TreeId::Messages, key)? else {
                continue;
            };
            self.release_message_id(&record, &conv.inbox, Some(&conv.id))?;
            record.routing.retain(|r| r.conversation != conv.id);
            if record.routing.is_empty() {
                self.remove_message(&record)?;
                removed.push(record);
            } else {
                self.put_json(TreeId::Messages, key, &record)?;
            }
        }
        Ok(())
    }

    /// Add a message to a conversation: its index entry and the count on the record (which the
    /// caller writes).
    pub fn add_to_conversation(
        &self,
        conv: &mut model::Conversation,
        queue_id: &str,
    ) -> TxResult<()> {
        self.insert(
            TreeId::ConversationMessages,
            &conversation_message_key(&conv.id, queue_id),
            b"",
        )?;
        conv.message_count += 1;
        Ok(())
    }

    pub(super) fn counter(&self, key: &[u8]) -> TxResult<i64> {
        Ok(decode_counter(self.get(TreeId::Counters, key)?))
    }
}
