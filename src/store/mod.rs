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
    /// "inline" (inside the database) or "spool" (`spool/msg/<queue_id>.eml`).
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
    pub auth: Option<crate::pipeline::auth::AuthRecord>,
    /// Stored but held back from the inbox by policy (see `auth.reason`).
    #[serde(default)]
    pub quarantined: bool,
}

struct CommitRequest {
    record: MessageRecord,
    body: Body,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the store, cheap to clone. Dropping every clone stops the committer thread after it
/// has drained what was already sent to it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    commits: mpsc::Sender<CommitRequest>,
}

struct Inner {
    db: sled::Db,
    messages: sled::Tree,
    bodies: sled::Tree,
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
        let inner = Inner {
            messages: db.open_tree("messages")?,
            bodies: db.open_tree("bodies")?,
            spool: Spool::open(&data_dir.join("spool"))?,
            db,
            inline_max: cfg.inline_body_max_bytes as usize,
        };
        inner.recover()?;
        let inner = Arc::new(inner);
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let committer = inner.clone();
        let max_batch = cfg.max_commit_batch;
        thread::Builder::new()
            .name("inbound-commit".into())
            .spawn(move || committer.run(rx, max_batch))?;
        Ok(Store { inner, commits: tx })
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    pub fn inline_max(&self) -> usize {
        self.inner.inline_max
    }

    /// Commit one message durably. Returns only once its body and record are on disk.
    pub async fn commit(&self, record: MessageRecord, body: Body) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.commits
            .send(CommitRequest { record, body, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Io(std::io::Error::other(e))),
            Err(_) => Err(StoreError::Closed),
        }
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

    pub fn count(&self) -> usize {
        self.inner.messages.len()
    }

    pub fn get(&self, queue_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        match self.inner.messages.get(queue_id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// The body exactly as the client sent it.
    pub fn body(&self, record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
        if record.body_location == "inline" {
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

impl Inner {
    fn recover(&self) -> Result<(), StoreError> {
        let removed_tmp = self.spool.clear_tmp()?;
        let mut orphans = 0;
        for id in self.spool.published_ids()? {
            if !self.messages.contains_key(id.as_bytes())? {
                self.spool.remove(&id)?;
                orphans += 1;
            }
        }
        // Inline bodies are written in the same transaction as their record, so an orphan here
        // means a damaged database rather than a crash; remove it all the same.
        let mut orphan_bodies = 0;
        for kv in self.bodies.iter() {
            let (k, _) = kv?;
            if !self.messages.contains_key(&k)? {
                self.bodies.remove(&k)?;
                orphan_bodies += 1;
            }
        }
        if removed_tmp + orphans + orphan_bodies > 0 {
            self.spool.sync_msg_dir()?;
            self.db.flush()?;
        }
        tracing::info!(
            messages = self.messages.len(),
            removed_partial = removed_tmp,
            removed_unacknowledged = orphans,
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
            let result = self.commit_batch(&batch);
            if let Err(e) = &result {
                tracing::error!(error = %e, batch = batch.len(), "commit failed");
            }
            for req in batch.drain(..) {
                let _ = req
                    .done
                    .send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
        }
    }

    fn commit_batch(&self, batch: &[CommitRequest]) -> Result<(), StoreError> {
        let mut spooled = false;
        for req in batch {
            if let Body::Spooled { .. } = req.body {
                self.spool.publish(&req.record.queue_id)?;
                spooled = true;
            }
        }
        if spooled {
            self.spool.sync_msg_dir()?;
        }
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = batch
            .iter()
            .map(|r| {
                Ok((
                    r.record.queue_id.clone().into_bytes(),
                    serde_json::to_vec(&r.record)?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        (&self.messages, &self.bodies)
            .transaction(|(messages, bodies)| {
                for (req, (key, value)) in batch.iter().zip(&encoded) {
                    if let Body::Inline(bytes) = &req.body {
                        bodies.insert(key.as_slice(), bytes.as_slice())?;
                    }
                    messages.insert(key.as_slice(), value.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<sled::Error>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) | TransactionError::Storage(e) => StoreError::Db(e),
            })?;
        self.db.flush()?;
        Ok(())
    }
}
