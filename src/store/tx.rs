//! Inside one transaction: the trees of the database (`TreeId`) and the view (`Tx`) through
//! which a commit's plan and an operator action read and write them atomically. The helpers that
//! remove a message or a conversation with everything that points at it live here too, so every
//! removal keeps the indexes in step.

use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, UnabortableTransactionError};

use super::model::MessageRecord;

/// Decisions that depend on what is already stored (threading, assignment, counters): run by
/// the committer inside the message's transaction, so they see every earlier commit and their
/// writes land atomically with the message. It may fill in fields of the record. It can run more
/// than once (a transaction may be retried), so it must only act through `Tx`.
pub type Plan = Box<dyn Fn(&Tx<'_>, &mut MessageRecord) -> TxResult<()> + Send + Sync>;

/// Run `plan` for `record` inside `tx`. A plan that panics (our bug, never the sender's)
/// refuses its message like a plan that returns an error: the committer rolls back, commits
/// the batch's other messages one by one, and goes on. Unwinding through the committer would
/// have ended it, and with it every later commit of the node.
pub(super) fn run_plan(plan: &Plan, tx: &Tx<'_>, record: &mut MessageRecord) -> TxResult<()> {
    let run = std::panic::AssertUnwindSafe(|| plan(tx, record));
    std::panic::catch_unwind(run).unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %why, "a commit plan panicked");
        Err(TxError::abort(format!("the commit plan failed: {why}")))
    })
}

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
pub struct TxError(pub(super) TxErrorKind);

#[derive(Debug)]
pub(super) enum TxErrorKind {
    /// A plan or an action refused: the transaction is undone, `reason` is the answer.
    Abort(String),
    /// sled's own: a conflict (the transaction runs again) or a storage failure.
    Sled(ConflictableTransactionError<String>),
    /// PostgreSQL's: a serialization failure or a lost connection (see `pg::retryable`).
    Pg(postgres::Error),
}

impl TxError {
    /// Undo the whole transaction, with `reason` as its error.
    pub fn abort(reason: impl Into<String>) -> TxError {
        TxError(TxErrorKind::Abort(reason.into()))
    }

    /// As sled's transaction error, for a sled transaction.
    pub(super) fn into_sled(self) -> ConflictableTransactionError<String> {
        match self.0 {
            TxErrorKind::Abort(reason) => ConflictableTransactionError::Abort(reason),
            TxErrorKind::Sled(e) => e,
            TxErrorKind::Pg(e) => ConflictableTransactionError::Abort(e.to_string()),
        }
    }
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            TxErrorKind::Abort(reason) => f.write_str(reason),
            TxErrorKind::Sled(e) => write!(f, "{e:?}"),
            TxErrorKind::Pg(e) => write!(f, "{e}"),
        }
    }
}

impl From<UnabortableTransactionError> for TxError {
    fn from(e: UnabortableTransactionError) -> TxError {
        TxError(TxErrorKind::Sled(e.into()))
    }
}

impl From<postgres::Error> for TxError {
    fn from(e: postgres::Error) -> TxError {
        TxError(TxErrorKind::Pg(e))
    }
}

impl From<serde_json::Error> for TxError {
    fn from(e: serde_json::Error) -> TxError {
        TxError::abort(format!("record encoding: {e}"))
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

/// One transaction of the store, whichever backend keeps it: the domain operations (`ops`) are
/// all a caller sees. Reads see this transaction's own writes.
pub struct Tx<'a>(pub(super) TxInner<'a>);

pub(super) enum TxInner<'a> {
    Sled(SledTx<'a>),
    Pg(&'a super::pg::PgTx<'a>),
}

/// A view of every sled tree inside one transaction.
pub(super) struct SledTx<'a> {
    pub(super) views: &'a [sled::transaction::TransactionalTree],
}

impl SledTx<'_> {
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

    pub(super) fn counter(&self, key: &[u8]) -> TxResult<i64> {
        Ok(decode_counter(self.get(TreeId::Counters, key)?))
    }
}
