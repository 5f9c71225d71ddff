//! Accepted messages, durably. One sled database (`<data_dir>/db`) and one spool directory
//! (`<data_dir>/spool`). A message is committed by a single committer thread that batches every
//! request waiting for it into one sled transaction and one flush (group commit): concurrent
//! sessions share the cost of durability instead of queueing behind each other's fsyncs.
//!
//! Order of a commit, which recovery relies on:
//!   1. large bodies are already fsynced under `spool/tmp/` by the session;
//!   2. the committer renames them into `spool/msg/` and fsyncs that directory once;
//!   3. records (and small bodies) go into sled in one transaction, then `flush()`;
//!   4. only then does any session of the batch get its answer, and with it the client its 250.
//!
//! So after a crash: a file in `tmp/` or a file in `msg/` without a record was never acknowledged
//! and is removed; a record always has its body.

pub mod keys;
pub mod model;
pub mod retention;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::{mpsc, oneshot};

use crate::config::StoreConfig;
pub use spool::{Body, BodyBuffer, Spool};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    #[error("record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("the data directory is in use by a running server")]
    Locked,
    #[error("the store is shutting down")]
    Closed,
}

/// What a recipient of an accepted message resolved to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RcptRecord {
    pub address: String,
    pub inbox: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Everything we keep about one accepted message, except its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    pub queue_id: String,
    /// Unix milliseconds.
    pub received_at: u64,
    /// The client address after PROXY protocol, as every check sees it.
    pub client_ip: String,
    pub client_port: u16,
    pub helo: String,
    /// Reverse path; empty for the null sender `<>`.
    pub mail_from: String,
    pub rcpt: Vec<RcptRecord>,
    /// Body size in bytes as received (after dot-unstuffing).
    pub size: u64,
    /// SHA-256 of the body as received, hex.
    pub sha256: String,
    /// "inline" (inside the database), "spool" (`spool/msg/<queue_id>.eml`) or "expired" (removed
    /// by retention; the record stays).
    pub body_location: String,
    /// TLS protocol used by the session, if any ("TLSv1_3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// "7BIT", "8BITMIME" or "BINARYMIME" (BDAT) as declared at MAIL.
    pub body_type: String,
    pub smtputf8: bool,
    /// Trace header fields we prepend (Received:, and later Authentication-Results:). Kept apart so
    /// the spooled body stays byte-identical to what the client sent.
    pub trace_headers: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub message_id: String,
    /// Sender authentication results and verdict; `None` for records from before the checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::store::model::AuthRecord>,
    /// Stored but held back from the inbox by policy (see `auth.reason`).
    #[serde(default)]
    pub quarantined: bool,
    /// The original sender this message is attributed to, and how that was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<model::AttributionRecord>,
    /// Why the message counts as automatic (bounce, auto-reply), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<model::AttachmentInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_reply_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// A provider's forwarding confirmation (code, link) recognised in this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<model::VerificationRecord>,
    /// Per inbox: conversation, thread decision, rule, assignee, ticket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<model::RoutingRecord>,
    /// Retention cleared the SMTP session facts (client address, HELO, TLS, envelope sender,
    /// trace header fields): their empty values mean "no longer kept", not "there were none".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session_metadata_cleared: bool,
}

impl MessageRecord {
    /// Forget what the SMTP session told us about the client: its address and port, HELO, TLS,
    /// the envelope sender (and the SPF domain taken from it), and our trace header fields, which
    /// repeat them. What the message is and where it went (recipients, headers summary,
    /// attribution, routing, body) stays.
    pub fn clear_session_metadata(&mut self) {
        self.client_ip.clear();
        self.client_port = 0;
        self.helo.clear();
        self.tls = None;
        self.mail_from.clear();
        self.trace_headers.clear();
        if let Some(auth) = self.auth.as_mut() {
            auth.spf_domain.clear();
        }
        self.session_metadata_cleared = true;
    }
}

/// Decisions that depend on what is already stored (threading, assignment, counters): run by
/// the committer inside the message's transaction, so they see every earlier commit and their
/// writes land atomically with the message. It may fill in fields of the record. It can run more
/// than once (a transaction may be retried), so it must only act through `Tx`.
pub type Plan = Box<dyn Fn(&Tx<'_>, &mut MessageRecord) -> TxResult<()> + Send + Sync>;

struct CommitRequest {
    record: MessageRecord,
    body: Body,
    plan: Option<Plan>,
    done: oneshot::Sender<Result<MessageRecord, String>>,
}

/// The trees of the database. Every commit may touch any of them atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeId {
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
}

const TREE_NAMES: [&str; 12] = [
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
];

/// One page of `Store::page`.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The key to continue after; `None` at the end.
    pub next: Option<Vec<u8>>,
}

/// `MessageRecord::body_location` of a message whose body retention removed.
pub const BODY_EXPIRED: &str = "expired";

/// Result of an operation inside a transaction; `Abort(reason)` undoes the whole transaction.
pub type TxResult<T> = Result<T, ConflictableTransactionError<String>>;

/// A counter as stored (8 bytes, big-endian); absent or malformed reads as 0.
fn decode_counter(value: Option<sled::IVec>) -> i64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0)
}

/// A view of every tree inside one transaction: reads see this transaction's own writes.
pub struct Tx<'a> {
    views: &'a [sled::transaction::TransactionalTree],
}

impl Tx<'_> {
    pub fn get(&self, tree: TreeId, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(self.views[tree as usize].get(key)?)
    }

    pub fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.views[tree as usize].insert(key, value)?;
        Ok(())
    }

    pub fn remove(&self, tree: TreeId, key: &[u8]) -> TxResult<()> {
        self.views[tree as usize].remove(key)?;
        Ok(())
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: TreeId,
        key: &[u8],
    ) -> TxResult<Option<T>> {
        match self.get(tree, key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| {
                ConflictableTransactionError::Abort(format!("decoding {tree:?} record: {e}"))
            }),
        }
    }

    pub fn put_json<T: Serialize>(&self, tree: TreeId, key: &[u8], value: &T) -> TxResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            ConflictableTransactionError::Abort(format!("encoding {tree:?} record: {e}"))
        })?;
        self.insert(tree, key, &bytes)
    }

    /// Add `delta` to a counter and return the new value.
    pub fn add(&self, key: &[u8], delta: i64) -> TxResult<i64> {
        let now = self.counter(key)?;
        let next = now.saturating_add(delta);
        self.insert(TreeId::Counters, key, &next.to_be_bytes())?;
        Ok(next)
    }

    /// Remove a message's record and inline body, the Message-ID entries it owns and its place in
    /// its conversations. Its spool file (if any) is the caller's to remove after the commit.
    fn remove_message(&self, record: &MessageRecord) -> TxResult<()> {
        let key = record.queue_id.as_bytes();
        self.remove(TreeId::Messages, key)?;
        self.remove(TreeId::Bodies, key)?;
        for r in &record.routing {
            self.release_message_id(record, &r.inbox, None)?;
            let conv_key = r.conversation.as_bytes();
            if let Some(mut c) =
                self.get_json::<model::Conversation>(TreeId::Conversations, conv_key)?
            {
                c.messages.retain(|m| *m != record.queue_id);
                self.put_json(TreeId::Conversations, conv_key, &c)?;
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
        let idx = [inbox.as_bytes(), &[0], message_id.as_bytes()].concat();
        if let Some(v) = self.get(TreeId::MessageIds, &idx)? {
            // `conversation \0 first queue id`.
            let mut parts = v.split(|&b| b == 0);
            let (conv, first) = (parts.next(), parts.next());
            let owned = match conversation {
                Some(c) => conv == Some(c.as_bytes()),
                None => first == Some(record.queue_id.as_bytes()),
            };
            if owned {
                self.remove(TreeId::MessageIds, &idx)?;
            }
        }
        Ok(())
    }

    /// Remove a conversation with its ticket and contact link; each of its messages leaves it,
    /// and a message left in no conversation is removed (pushed onto `removed`).
    fn remove_conversation(
        &self,
        conv: &model::Conversation,
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
        for queue_id in &conv.messages {
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

    pub fn counter(&self, key: &[u8]) -> TxResult<i64> {
        Ok(decode_counter(self.get(TreeId::Counters, key)?))
    }
}

/// Handle to the store, cheap to clone. Dropping every clone stops the committer thread after it
/// has drained what was already sent to it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    committer: Arc<Committer>,
}

/// The committer thread's handle. When the last `Store` clone goes, the queue closes, the thread
/// finishes what it was sent, and `drop` waits for it: so when a `Store` is gone, the database
/// is closed and its lock released (a restart in the same process can open it at once).
struct Committer {
    commits: Option<mpsc::Sender<CommitRequest>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.commits.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Inner {
    db: sled::Db,
    messages: sled::Tree,
    bodies: sled::Tree,
    /// Every tree, indexed by `TreeId`.
    trees: Vec<sled::Tree>,
    spool: Spool,
    inline_max: usize,
}

/// How many commit requests may wait for the committer. When full, sessions wait at end-of-data
/// (the client waits for its reply); nothing is dropped.
const COMMIT_QUEUE: usize = 4096;

impl Store {
    /// Open (creating if needed) the store under `data_dir` and run recovery.
    pub fn open(data_dir: &Path, cfg: &StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let db = sled::Config::new()
            .path(data_dir.join("db"))
            // Durability comes from our explicit flush per batch; sled's own periodic flush only
            // adds background I/O.
            .flush_every_ms(None)
            .cache_capacity(32 * 1024 * 1024)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked,
                other => StoreError::Db(other),
            })?;
        Self::with_db(db, &data_dir.join("spool"), cfg)
    }

    /// A throw-away store (in memory, spool in a temporary directory) for `route --explain`:
    /// the same commit path as the server, with nothing kept.
    pub fn open_temporary(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let dir = std::env::temp_dir().join(format!(
            "inbound-explain-{}-{}",
            std::process::id(),
            keys::new_queue_id()
        ));
        let db = sled::Config::new().temporary(true).open()?;
        let store = Self::with_db(db, &dir, cfg)?;
        // Nothing is ever published there: the spool directory can go at once (open files and
        // later writes only happen for spooled bodies, which explain never makes).
        let _ = std::fs::remove_dir_all(&dir);
        Ok(store)
    }

    fn with_db(db: sled::Db, spool_dir: &Path, cfg: &StoreConfig) -> Result<Store, StoreError> {
        let trees = TREE_NAMES
            .iter()
            .map(|n| db.open_tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        let inner = Inner {
            messages: trees[TreeId::Messages as usize].clone(),
            bodies: trees[TreeId::Bodies as usize].clone(),
            trees,
            spool: Spool::open(spool_dir)?,
            db,
            inline_max: cfg.inline_body_max_bytes as usize,
        };
        inner.recover()?;
        let inner = Arc::new(inner);
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let worker = inner.clone();
        let max_batch = cfg.max_commit_batch;
        let thread = thread::Builder::new()
            .name("inbound-commit".into())
            .spawn(move || worker.run(rx, max_batch))?;
        let committer = Arc::new(Committer {
            commits: Some(tx),
            thread: Some(thread),
        });
        Ok(Store { inner, committer })
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    pub fn inline_max(&self) -> usize {
        self.inner.inline_max
    }

    /// Commit one message durably. Returns only once its body and record are on disk.
    pub async fn commit(
        &self,
        record: MessageRecord,
        body: Body,
        plan: Option<Plan>,
    ) -> Result<MessageRecord, StoreError> {
        let (done, wait) = oneshot::channel();
        let commits = self.committer.commits.as_ref().ok_or(StoreError::Closed)?;
        commits
            .send(CommitRequest {
                record,
                body,
                plan,
                done,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        match wait.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(StoreError::Io(std::io::Error::other(e))),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// An operator action (confirm an inbox, assign a conversation): one transaction over every
    /// tree, made durable before it returns. It may run concurrently with the committer: sled
    /// transactions are serializable, and a conflicting one is retried, so `f` may run twice.
    pub fn update<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        let out = self
            .inner
            .trees
            .as_slice()
            .transaction(|views| f(&Tx { views }))
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        self.inner.db.flush()?;
        Ok(out)
    }

    /// Reads over several trees that must agree with each other (a user's availability and open
    /// count): one transaction, not flushed. `f` must only read; it may run more than once.
    pub fn view<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        self.inner
            .trees
            .as_slice()
            .transaction(|views| f(&Tx { views }))
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))
    }

    /// One page of a tree's records in key order, for cursor pagination: the records after key
    /// `after` that `keep` accepts, at most `limit`. At most `max_scan` records are read, so a
    /// filter that matches little costs a bounded amount per page: a page may then hold fewer
    /// than `limit` records (even none) while `next` is set. `next` is the key to pass as
    /// `after` for the following page; `None` only when nothing after this page matches.
    pub fn page<T: serde::de::DeserializeOwned>(
        &self,
        tree: TreeId,
        after: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Page<T>, StoreError> {
        let tree = &self.inner.trees[tree as usize];
        let iter = match after {
            Some(a) => {
                tree.range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => tree.iter(),
        };
        let mut items = Vec::new();
        // The key of the last record this page has consumed (kept or skipped).
        let mut last: Option<sled::IVec> = None;
        for (scanned, kv) in iter.enumerate() {
            let (key, value) = kv?;
            if scanned >= max_scan.max(1) {
                return Ok(Page {
                    items,
                    next: last.map(|k| k.to_vec()),
                });
            }
            let record: T = serde_json::from_slice(&value)?;
            if keep(&record) {
                if items.len() >= limit {
                    // Another match exists: the next page starts right before it.
                    return Ok(Page {
                        items,
                        next: last.map(|k| k.to_vec()),
                    });
                }
                items.push(record);
            }
            last = Some(key);
        }
        Ok(Page { items, next: None })
    }

    /// Outbox items due by `until_ms`, earliest first, at most `limit`. The item type belongs to
    /// `notify`; the store only keeps the schedule.
    pub fn outbox_due<T: serde::de::DeserializeOwned>(
        &self,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let due = &self.inner.trees[TreeId::OutboxDue as usize];
        let items = &self.inner.trees[TreeId::Outbox as usize];
        let mut out = Vec::new();
        let end = (until_ms.saturating_add(1)).to_be_bytes();
        for kv in due.range::<&[u8], _>(..&end[..]) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = kv?;
            if let Some(v) = items.get(&k[8..])? {
                out.push(serde_json::from_slice(&v)?);
            }
        }
        Ok(out)
    }

    /// A counter of the `Counters` tree (0 when never set).
    pub fn counter(&self, key: &[u8]) -> Result<i64, StoreError> {
        Ok(decode_counter(
            self.inner.trees[TreeId::Counters as usize].get(key)?,
        ))
    }

    /// The oldest outbox item waiting (ids are ULIDs: key order is creation order).
    pub fn outbox_oldest<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        match self.inner.trees[TreeId::Outbox as usize].first()? {
            Some((_, v)) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every outbox item waiting, oldest first.
    pub fn outbox_items<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        self.inner.trees[TreeId::Outbox as usize]
            .iter()
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// Every inbox state recorded, by id.
    pub fn inbox_states(&self) -> Result<Vec<model::InboxState>, StoreError> {
        self.inner.trees[TreeId::Inboxes as usize]
            .iter()
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    pub fn inbox_state(&self, id: &str) -> Result<Option<model::InboxState>, StoreError> {
        self.get_json(TreeId::Inboxes, id)
    }

    /// Run `plan` and write the record in one transaction on the calling thread, without a
    /// flush: for tools on throw-away stores (`route --explain`, benchmarks). The server uses
    /// `commit`, which is durable.
    pub fn apply_volatile(
        &self,
        record: &MessageRecord,
        body: &Body,
        plan: Option<&Plan>,
    ) -> Result<MessageRecord, StoreError> {
        self.inner
            .transact_items(&[(record, body, plan)])
            .map(|mut v| v.remove(0))
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))
    }

    /// Messages, oldest first, starting after `after` (a queue id), at most `limit`.
    pub fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let iter = match after {
            Some(a) => self.inner.messages.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.inner.messages.iter(),
        };
        iter.take(limit)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// Messages newest first (queue ids are ULIDs: reversed key order), before `before`
    /// (exclusive), at most `limit` of those `keep` accepts, stopping at the first received
    /// before `since_ms` and after examining `max_scan` records (a filter that matches nothing
    /// must not read the whole store).
    pub fn list_newest(
        &self,
        before: Option<&str>,
        limit: usize,
        since_ms: u64,
        max_scan: usize,
        keep: impl Fn(&MessageRecord) -> bool,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let iter = match before {
            Some(b) => self.inner.messages.range::<&[u8], _>(..b.as_bytes()),
            None => self.inner.messages.iter(),
        };
        let mut out = Vec::new();
        for kv in iter.rev().take(max_scan) {
            if out.len() >= limit {
                break;
            }
            let r: MessageRecord = serde_json::from_slice(&kv?.1)?;
            if r.received_at < since_ms {
                break;
            }
            if keep(&r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub fn get(&self, queue_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        match self.inner.messages.get(queue_id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Conversations, oldest first, optionally of one inbox, after a conversation id.
    pub fn conversations(
        &self,
        inbox: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<model::Conversation>, StoreError> {
        let tree = &self.inner.trees[TreeId::Conversations as usize];
        let iter = match after {
            Some(a) => tree.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => tree.iter(),
        };
        let mut out = Vec::new();
        for kv in iter {
            let c: model::Conversation = serde_json::from_slice(&kv?.1)?;
            if inbox.is_none_or(|i| c.inbox == i) {
                out.push(c);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: TreeId,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.inner.trees[tree as usize].get(key.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn conversation(&self, id: &str) -> Result<Option<model::Conversation>, StoreError> {
        self.get_json(TreeId::Conversations, id)
    }

    pub fn contact(&self, email: &str) -> Result<Option<model::Contact>, StoreError> {
        self.get_json(TreeId::Contacts, &email.to_lowercase())
    }

    /// Conversation ids of a contact, oldest first.
    pub fn contact_conversations(&self, email: &str) -> Result<Vec<String>, StoreError> {
        let mut prefix = email.to_lowercase().into_bytes();
        prefix.push(0);
        let tree = &self.inner.trees[TreeId::ContactConversations as usize];
        tree.scan_prefix(&prefix)
            .map(|kv| Ok(String::from_utf8_lossy(&kv?.0[prefix.len()..]).into_owned()))
            .collect()
    }

    pub fn ticket(&self, id: &str) -> Result<Option<model::Ticket>, StoreError> {
        self.get_json(TreeId::Tickets, id)
    }

    /// The body exactly as the client sent it. An expired body (retention) is an error of kind
    /// `NotFound`.
    pub fn body(&self, record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
        if record.body_location == BODY_EXPIRED {
            Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the message body has expired (retention)",
            )))
        } else if record.body_location == "inline" {
            Ok(self
                .inner
                .bodies
                .get(record.queue_id.as_bytes())?
                .map(|v| v.to_vec())
                .unwrap_or_default())
        } else {
            Ok(self.inner.spool.read(&record.queue_id)?)
        }
    }

    /// The stored RFC 5322 message: our trace header fields, then the body as received.
    pub fn raw_message(&self, record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
        let body = self.body(record)?;
        let mut out = Vec::with_capacity(record.trace_headers.len() + body.len());
        out.extend_from_slice(record.trace_headers.as_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Remove a message entirely: record, body (inline or spool file), its Message-ID index entries
    /// and its place in its conversations. Returns the removed record, or `None` if there was none.
    pub fn delete_message(&self, queue_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self
            .delete_messages_if(&[queue_id.to_string()], |_| true)?
            .pop())
    }

    /// Remove every listed message for which `keep_going` holds, in one transaction (the
    /// condition is checked inside it, so a message released or changed meanwhile is judged as
    /// it is now), flushed, then their spool files go. A crash between the two leaves spool files
    /// without records, which recovery removes. Returns the removed records.
    pub fn delete_messages_if(
        &self,
        queue_ids: &[String],
        keep_going: impl Fn(&MessageRecord) -> bool,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let removed = self.update(|tx| {
            let mut removed = Vec::new();
            for id in queue_ids {
                let key = id.as_bytes();
                match tx.get_json::<MessageRecord>(TreeId::Messages, key)? {
                    Some(record) if keep_going(&record) => {
                        tx.remove_message(&record)?;
                        removed.push(record);
                    }
                    _ => {}
                }
            }
            Ok(removed)
        })?;
        self.remove_spool_files(removed.iter().filter(|r| r.body_location == "spool"));
        Ok(removed)
    }

    /// Drop a message's body but keep its record (metadata, routing), marked
    /// `body_location = "expired"`. Returns false if the message is unknown or already expired.
    pub fn expire_body(&self, queue_id: &str) -> Result<bool, StoreError> {
        Ok(self.expire_bodies_if(&[queue_id.to_string()], |_| true)? == 1)
    }

    /// Expire the bodies of the listed messages for which `keep_going` holds (checked inside the
    /// transaction), in one flushed transaction; then their spool files go. Returns how many
    /// bodies expired. After a crash between the two, recovery removes the spool file of a record
    /// marked expired.
    pub fn expire_bodies_if(
        &self,
        queue_ids: &[String],
        keep_going: impl Fn(&MessageRecord) -> bool,
    ) -> Result<usize, StoreError> {
        let spooled = self.update(|tx| {
            let mut expired = Vec::new();
            for id in queue_ids {
                let key = id.as_bytes();
                let Some(mut record) = tx.get_json::<MessageRecord>(TreeId::Messages, key)? else {
                    continue;
                };
                if record.body_location == BODY_EXPIRED || !keep_going(&record) {
                    continue;
                }
                let was = std::mem::replace(&mut record.body_location, BODY_EXPIRED.into());
                tx.remove(TreeId::Bodies, key)?;
                tx.put_json(TreeId::Messages, key, &record)?;
                expired.push((id.as_str(), was == "spool"));
            }
            Ok(expired)
        })?;
        let n = spooled.len();
        for (id, _) in spooled.iter().filter(|(_, spool)| *spool) {
            if let Err(e) = self.inner.spool.remove(id) {
                // The record says expired: recovery removes the file at the next start.
                tracing::warn!(queue_id = %id, error = %e, "cannot remove an expired spool file");
            }
        }
        Ok(n)
    }

    /// Clear the SMTP session facts of the listed messages for which `keep_going` holds (see
    /// `MessageRecord::clear_session_metadata`), in one flushed transaction. Body, routing and
    /// conversations stay. Returns how many records were cleared.
    pub fn clear_session_metadata_if(
        &self,
        queue_ids: &[String],
        keep_going: impl Fn(&MessageRecord) -> bool,
    ) -> Result<usize, StoreError> {
        self.update(|tx| {
            let mut n = 0;
            for id in queue_ids {
                let key = id.as_bytes();
                let Some(mut record) = tx.get_json::<MessageRecord>(TreeId::Messages, key)? else {
                    continue;
                };
                if record.session_metadata_cleared || !keep_going(&record) {
                    continue;
                }
                record.clear_session_metadata();
                tx.put_json(TreeId::Messages, key, &record)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Delete the listed conversations that are closed and were last updated at or before
    /// `updated_before_ms` (checked inside the transaction: one that a new message just joined
    /// stays), with their ticket, their contact link, their Message-ID entries and their messages.
    /// A message that also belongs to a conversation of another inbox (sent to both) only leaves
    /// this one. Returns (conversations deleted, messages deleted).
    pub fn delete_closed_conversations(
        &self,
        ids: &[String],
        updated_before_ms: u64,
    ) -> Result<(usize, usize), StoreError> {
        let (conversations, removed) = self.update(|tx| {
            let (mut conversations, mut removed) = (0, Vec::new());
            for id in ids {
                let Some(conv) =
                    tx.get_json::<model::Conversation>(TreeId::Conversations, id.as_bytes())?
                else {
                    continue;
                };
                if conv.status != "closed" || conv.updated_at > updated_before_ms {
                    continue;
                }
                tx.remove_conversation(&conv, &mut removed)?;
                conversations += 1;
            }
            Ok((conversations, removed))
        })?;
        self.remove_spool_files(removed.iter().filter(|r| r.body_location == "spool"));
        Ok((conversations, removed.len()))
    }

    fn remove_spool_files<'a>(&self, records: impl Iterator<Item = &'a MessageRecord>) {
        for r in records {
            if let Err(e) = self.inner.spool.remove(&r.queue_id) {
                // The record is gone: recovery removes the orphan file at the next start.
                tracing::warn!(queue_id = %r.queue_id, error = %e, "cannot remove a deleted message's spool file");
            }
        }
    }

    /// Write and flush a small value (`health:probe` in the counters tree): whether the store can
    /// take a commit right now. Also false when the committer thread is gone.
    pub fn probe_write(&self) -> Result<(), StoreError> {
        if self
            .committer
            .commits
            .as_ref()
            .is_none_or(|c| c.is_closed())
        {
            return Err(StoreError::Closed);
        }
        self.inner.trees[TreeId::Counters as usize]
            .insert(b"health:probe", &keys::now_ms().to_be_bytes())?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Commit requests waiting for the committer now (at most `COMMIT_QUEUE`).
    pub fn commit_queue_depth(&self) -> usize {
        self.committer
            .commits
            .as_ref()
            .map(|c| c.max_capacity() - c.capacity())
            .unwrap_or(0)
    }

    /// A small value in the counters tree (retention cursors), without a flush: losing the last
    /// write in a crash only repeats work.
    pub fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.inner.trees[TreeId::Counters as usize]
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.trees[TreeId::Counters as usize].insert(key.as_bytes(), value.as_bytes())?;
        Ok(())
    }

    /// Path of the database, for messages.
    pub fn data_path(data_dir: &Path) -> PathBuf {
        data_dir.join("db")
    }

    /// Flush everything (used at shutdown; commits already flush).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }
}

/// The one field recovery reads of a record (serde skips the rest without building it).
#[derive(Deserialize)]
struct BodyLocation {
    body_location: String,
}

impl Inner {
    fn recover(&self) -> Result<(), StoreError> {
        let removed_tmp = self.spool.clear_tmp()?;
        let (mut orphans, mut expired) = (0, 0);
        for id in self.spool.published_ids()? {
            // No record: never acknowledged, or deleted just before a crash. A record whose body
            // is no longer in the spool: expired (retention) just before a crash.
            match self.messages.get(id.as_bytes())? {
                None => orphans += 1,
                Some(v)
                    if serde_json::from_slice::<BodyLocation>(&v)
                        .is_ok_and(|r| r.body_location != "spool") =>
                {
                    expired += 1
                }
                Some(_) => continue,
            }
            self.spool.remove(&id)?;
        }
        let orphans_and_expired = orphans + expired;
        // Inline bodies are written in the same transaction as their record, so an orphan can
        // only come from a damaged database. Looking for one reads every body (sled loads values
        // with their keys), which on a large store costs seconds and hundreds of MiB at every
        // start; so it is done only when the spool shows the last run did not end cleanly.
        let mut orphan_bodies = 0;
        if removed_tmp + orphans_and_expired > 0 {
            for kv in self.bodies.iter() {
                let (k, _) = kv?;
                if !self.messages.contains_key(&k)? {
                    self.bodies.remove(&k)?;
                    orphan_bodies += 1;
                }
            }
        }
        if removed_tmp + orphans_and_expired + orphan_bodies > 0 {
            self.spool.sync_msg_dir()?;
            self.db.flush()?;
        }
        tracing::info!(
            removed_partial = removed_tmp,
            removed_without_record = orphans,
            removed_expired = expired,
            removed_orphan_bodies = orphan_bodies,
            "store recovered"
        );
        Ok(())
    }

    /// The committer loop: take every waiting request (up to `max_batch`), make them durable
    /// together, answer them all. Ends when every `Store` handle is dropped.
    fn run(&self, mut rx: mpsc::Receiver<CommitRequest>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let results = self.commit_batch(&batch);
            for (req, result) in batch.drain(..).zip(results) {
                if let Err(e) = &result {
                    tracing::error!(queue_id = %req.record.queue_id, error = %e, "commit failed");
                }
                let _ = req.done.send(result);
            }
        }
    }

    /// Make a batch durable: bodies into place, one transaction for every record (and what their
    /// plans write), one flush. If a plan fails, the batch is retried one message per transaction
    /// so one bad message cannot fail the others. Returns one result per request.
    fn commit_batch(&self, batch: &[CommitRequest]) -> Vec<Result<MessageRecord, String>> {
        let fail_all =
            |e: &dyn std::fmt::Display| batch.iter().map(|_| Err(e.to_string())).collect();
        let mut spooled = false;
        for req in batch {
            if let Body::Spooled { .. } = req.body {
                if let Err(e) = self.spool.publish(&req.record.queue_id) {
                    return fail_all(&e);
                }
                spooled = true;
            }
        }
        if spooled {
            if let Err(e) = self.spool.sync_msg_dir() {
                return fail_all(&e);
            }
        }
        let results = match self.transact(batch) {
            Ok(records) => records.into_iter().map(Ok).collect(),
            Err(TransactionError::Abort(_)) if batch.len() > 1 => batch
                .iter()
                .map(|req| {
                    self.transact(std::slice::from_ref(req))
                        .map(|mut r| r.remove(0))
                        .map_err(|e| e.to_string())
                })
                .collect(),
            Err(e) => return self.unpublish(batch, fail_all(&e)),
        };
        match self.db.flush() {
            Ok(_) => self.unpublish(batch, results),
            Err(e) => self.unpublish(batch, fail_all(&e)),
        }
    }

    /// Spool files of requests that failed were never acknowledged: remove them now rather than
    /// at the next start.
    fn unpublish(
        &self,
        batch: &[CommitRequest],
        results: Vec<Result<MessageRecord, String>>,
    ) -> Vec<Result<MessageRecord, String>> {
        for (req, r) in batch.iter().zip(&results) {
            if r.is_err() && matches!(req.body, Body::Spooled { .. }) {
                let _ = self.spool.remove(&req.record.queue_id);
            }
        }
        results
    }

    /// One transaction over every tree for `reqs`: each plan runs in order and sees the writes
    /// of the plans before it.
    fn transact(
        &self,
        reqs: &[CommitRequest],
    ) -> Result<Vec<MessageRecord>, TransactionError<String>> {
        let items: Vec<_> = reqs
            .iter()
            .map(|r| (&r.record, &r.body, r.plan.as_ref()))
            .collect();
        self.transact_items(&items)
    }

    fn transact_items(
        &self,
        items: &[(&MessageRecord, &Body, Option<&Plan>)],
    ) -> Result<Vec<MessageRecord>, TransactionError<String>> {
        self.trees.as_slice().transaction(|views| {
            let tx = Tx { views };
            let mut out = Vec::with_capacity(items.len());
            for (record, body, plan) in items {
                let mut record = (*record).clone();
                if let Some(plan) = plan {
                    plan(&tx, &mut record)?;
                }
                let key = record.queue_id.as_bytes();
                if let Body::Inline(bytes) = body {
                    tx.insert(TreeId::Bodies, key, bytes)?;
                }
                tx.put_json(TreeId::Messages, key, &record)?;
                out.push(record);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walk `Store::page` to the end; every page's items and whether it set `next`.
    fn walk(
        store: &Store,
        limit: usize,
        max_scan: usize,
        keep: impl Fn(&model::Contact) -> bool + Copy,
    ) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let p = store
                .page(TreeId::Contacts, after.as_deref(), limit, max_scan, keep)
                .unwrap();
            pages.push(p.items.into_iter().map(|c| c.email).collect());
            match p.next {
                Some(n) => after = Some(n),
                None => return pages,
            }
            assert!(pages.len() < 100, "no end");
        }
    }

    #[test]
    fn pages_have_no_gaps_or_duplicates_and_a_bounded_scan() {
        let cfg = crate::config::Config::embedded_default().store;
        let store = Store::open_temporary(&cfg).unwrap();
        let emails: Vec<String> = (0..10).map(|i| format!("c{i}@x.example")).collect();
        store
            .update(|tx| {
                for e in &emails {
                    let c = model::Contact {
                        email: e.clone(),
                        ..Default::default()
                    };
                    tx.put_json(TreeId::Contacts, e.as_bytes(), &c)?;
                }
                Ok(())
            })
            .unwrap();
        let flat = |pages: &[Vec<String>]| pages.concat();
        let all = walk(&store, 3, 1000, |_| true);
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        assert_eq!(flat(&all), emails);
        // Exactly full: the last page says there is nothing more.
        let exact = walk(&store, 5, 1000, |_| true);
        assert_eq!(exact.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5]);
        // A sparse filter with a small scan budget: short (even empty) pages, still everything once.
        let even = |c: &model::Contact| c.email[1..2].parse::<u32>().unwrap() % 2 == 0;
        let sparse = walk(&store, 2, 3, even);
        let want: Vec<String> = emails
            .iter()
            .filter(|e| e[1..2].parse::<u32>().unwrap() % 2 == 0)
            .cloned()
            .collect();
        assert_eq!(flat(&sparse), want);
        assert!(sparse.iter().all(|p| p.len() <= 2));
        let none = walk(&store, 5, 4, |_| false);
        assert!(flat(&none).is_empty());
        assert_eq!(none.len(), 3, "10 records read 4 at a time");
    }
}
