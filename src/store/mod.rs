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

mod committer;
mod inboxes;
pub mod keys;
pub mod model;
mod ops;
mod people;
mod pg;
mod queries;
mod recovery;
mod removal;
pub mod retention;
pub mod spool;
mod tx;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use sled::Transactional;
use tokio::sync::mpsc;

use crate::config::StoreConfig;
use committer::{Committer, COMMIT_QUEUE};
pub use model::{MessageRecord, RcptRecord, BODY_EXPIRED};
pub use ops::ThreadEntry;
pub use people::PersonDefinition;
pub use pg::{CopyReport, CopySide};
pub use queries::Page;
pub use spool::{Body, BodyBuffer, Spool};
use tx::TREE_NAMES;
pub use tx::{Plan, Tx, TxError, TxResult};
use tx::{SledTx, TreeId, TxInner};

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
    /// The store cannot take the operation now and heals by itself once the cause is gone: a
    /// write failed (a full disk, an I/O error) and sled is being reopened from what is on disk,
    /// or the PostgreSQL database is unreachable, refused or lost the connection. The text says
    /// which.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

/// Handle to the store, cheap to clone. Dropping every clone stops the committer thread after it
/// has drained what was already sent to it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    committer: Arc<Committer>,
    /// The PostgreSQL backend, when `[store] backend = "postgres"`; `None`: sled (`inner`).
    pg: Option<Arc<pg::PgStore>>,
}

/// The open sled database and its trees. Replaced whole when the store heals after a failed
/// write; every operation takes its own `Arc` to the current one for its duration.
struct Engine {
    db: sled::Db,
    /// Every tree, indexed by `TreeId`.
    trees: Vec<sled::Tree>,
}

impl Engine {
    fn open(path: Option<&Path>, cache_bytes: u64) -> Result<Engine, StoreError> {
        let db = match path {
            Some(path) => sled::Config::new()
                .path(path)
                // Durability comes from our explicit flush per batch; sled's own periodic flush
                // only adds background I/O.
                .flush_every_ms(None)
                // sled's page cache; the rest of its memory is its page table, which grows with
                // the database (see `StoreConfig::cache_bytes`).
                .cache_capacity(cache_bytes)
                .open()
                .map_err(|e| match e {
                    sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                        StoreError::Locked
                    }
                    sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked,
                    other => StoreError::Db(other),
                })?,
            None => sled::Config::new().temporary(true).open()?,
        };
        let trees = TREE_NAMES
            .iter()
            .map(|n| db.open_tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Engine { db, trees })
    }

    fn tree(&self, id: TreeId) -> &sled::Tree {
        &self.trees[id as usize]
    }

    /// One transaction over every tree; a storage error (not an abort) is returned as such, so
    /// that the caller can tell a broken database from a refused plan.
    fn transaction<T>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<T, sled::transaction::TransactionError<String>> {
        self.trees.as_slice().transaction(|views| {
            f(&Tx(TxInner::Sled(SledTx { views }))).map_err(TxError::into_sled)
        })
    }
}

/// A transaction's failure as a store error: a plan's abort is a refusal with its reason; a
/// storage error means the database needs healing.
fn tx_error(e: sled::transaction::TransactionError<String>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(reason) => {
            StoreError::Io(std::io::Error::other(reason))
        }
        sled::transaction::TransactionError::Storage(e) => StoreError::Db(e),
    }
}

/// Bytes available to this (unprivileged) process on the filesystem holding `path`, or on the
/// nearest existing ancestor of it; `None` when it cannot be read.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = Some(path);
    while let Some(p) = at {
        if p.exists() {
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
            if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
                return None;
            }
            return Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64));
        }
        at = p.parent();
    }
    None
}

/// How often a broken store tries to reopen its database: each attempt costs an open of sled
/// (recovery reads its log), so a full disk is probed at this rate, not per message.
const HEAL_INTERVAL: Duration = Duration::from_millis(500);
/// How long a reopen waits for operations still holding the old database to finish. Past it
/// the attempt is abandoned (the old database stays) and tried again later.
const HEAL_WAIT: Duration = Duration::from_secs(5);

/// What the committers did, for `/metrics` and `inbound bench`: transactions committed (a batch
/// of messages is one) and transactions run again
/// after losing a race (PostgreSQL only: sled's committer is alone with its database).
#[derive(Debug, Default)]
pub(crate) struct TxCounts {
    pub(crate) commits: AtomicU64,
    pub(crate) retries: AtomicU64,
}

struct Inner {
    /// The open database; `None` only while a reopen has failed (the disk is still full).
    engine: RwLock<Option<Arc<Engine>>>,
    /// Where the database lives; `None` for a temporary store, which is never reopened.
    db_path: Option<PathBuf>,
    cache_bytes: u64,
    /// A write failed since the database was last opened: sled refuses writes until reopened,
    /// and its memory may show records whose commit failed. The next operation reopens it.
    broken: AtomicBool,
    /// The last `has_room` answer was "no" (to log each change once).
    low_space: AtomicBool,
    /// When the last reopen was tried (bounded by `HEAL_INTERVAL`).
    last_heal: Mutex<Option<Instant>>,
    spool: Spool,
    inline_max: usize,
    /// sled's counts; the PostgreSQL backend keeps its own (`PgStore::counts`).
    counts: TxCounts,
}

impl Inner {
    /// The current database. Heals first if a write failed (see `heal`).
    fn engine(&self) -> Result<Arc<Engine>, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            // A failed heal leaves `None` and an error to report; a heal that is merely not due
            // yet leaves the old engine, whose reads still work.
            let _ = self.heal();
        }
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable(
                    "a write failed and the database could not be reopened yet (it is reopened when the disk takes writes again)".into(),
                ))
    }

    /// Note that a write failed: sled now refuses writes until the database is reopened, and
    /// its memory may hold the failed commit's records. The next operation reopens it; a caller
    /// that must not leave those records visible even briefly drops its engine and calls `heal`.
    fn write_failed(&self, error: &StoreError) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %error, "store: a write failed; refusing mail (451) until the database reopens");
        }
        *self.last_heal.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Reopen the database from what is on disk, if a write failed and an attempt is due. Only
    /// what was flushed survives the reopen, which is exactly what was acknowledged.
    fn heal(&self) -> Result<(), StoreError> {
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(path) = self.db_path.as_deref() else {
            return Err(StoreError::Unavailable(
                "a temporary store cannot reopen".into(),
            ));
        };
        {
            let mut last = self.last_heal.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < HEAL_INTERVAL) {
                return Err(StoreError::Unavailable(
                    "a write failed; waiting to reopen the database (it is reopened when the disk takes writes again)".into(),
                ));
            }
            *last = Some(Instant::now());
        }
        let mut slot = self.engine.write().unwrap_or_else(|p| p.into_inner());
        if !self.broken.load(Ordering::Acquire) {
            return Ok(()); // healed by another thread meanwhile
        }
        // sled holds a file lock for as long as any handle lives: every operation still using
        // the old database must finish before it can be opened again.
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + HEAL_WAIT;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= deadline {
                    *slot = Some(old);
                    return Err(StoreError::Unavailable(
                        "a write failed and the database is still in use; reopening later".into(),
                    ));
                }
                thread::sleep(Duration::from_millis(2));
            }
            drop(old);
        }
        match Engine::open(Some(path), self.cache_bytes) {
            Ok(engine) => {
                *slot = Some(Arc::new(engine));
                self.broken.store(false, Ordering::Release);
                tracing::warn!(path = %path.display(), "store: database reopened after a failed write; accepting mail again");
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "store: reopen failed; trying again later");
                Err(StoreError::Unavailable(format!(
                    "a write failed and reopening the database failed (tried again later): {e}"
                )))
            }
        }
    }

    /// Flush the database, noting a failure.
    fn flush(&self, engine: &Engine) -> Result<(), StoreError> {
        engine.db.flush().map(drop).map_err(|e| {
            let e = StoreError::Db(e);
            self.write_failed(&e);
            e
        })
    }

    /// Run `f` in one transaction over every tree, noting a storage failure.
    fn transaction<T>(
        &self,
        engine: &Engine,
        f: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        engine.transaction(f).map_err(|e| {
            let storage = matches!(e, sled::transaction::TransactionError::Storage(_));
            let e = tx_error(e);
            // A plan's abort is a refusal; only a storage error means sled needs reopening.
            if storage {
                self.write_failed(&e);
            }
            e
        })
    }
}

impl Store {
    /// Open (creating if needed) the store under `data_dir` and run recovery.
    pub fn open(data_dir: &Path, cfg: &StoreConfig) -> Result<Store, StoreError> {
        if let crate::config::StoreBackend::Postgres(pg) = &cfg.backend {
            return Self::open_postgres(data_dir, cfg, pg);
        }
        crate::util::private_dir(data_dir)?;
        let path = Self::data_path(data_dir);
        crate::util::private_dir(&path)?;
        let engine = Engine::open(Some(&path), cfg.cache_bytes)?;
        Self::with_engine(engine, Some(path), &data_dir.join("spool"), cfg)
    }

    /// A throw-away store (in memory, spool in a temporary directory) for `route --explain`:
    /// the same commit path as the server, with nothing kept.
    pub fn open_temporary(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let dir = std::env::temp_dir().join(format!(
            "inbound-explain-{}-{}",
            std::process::id(),
            keys::new_queue_id()
        ));
        let engine = Engine::open(None, cfg.cache_bytes)?;
        let store = Self::with_engine(engine, None, &dir, cfg)?;
        // Nothing is ever published there: the spool directory can go at once (open files and
        // later writes only happen for spooled bodies, which explain never makes).
        let _ = std::fs::remove_dir_all(&dir);
        Ok(store)
    }

    fn with_engine(
        engine: Engine,
        db_path: Option<PathBuf>,
        spool_dir: &Path,
        cfg: &StoreConfig,
    ) -> Result<Store, StoreError> {
        let inner = Inner {
            engine: RwLock::new(Some(Arc::new(engine))),
            db_path,
            cache_bytes: cfg.cache_bytes,
            broken: AtomicBool::new(false),
            low_space: AtomicBool::new(false),
            last_heal: Mutex::new(None),
            spool: Spool::open(spool_dir)?,
            inline_max: cfg.inline_body_max_bytes as usize,
            counts: TxCounts::default(),
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
            threads: vec![thread],
        });
        Ok(Store {
            inner,
            committer,
            pg: None,
        })
    }

    /// Connect to PostgreSQL (the schema must be at this build's version) and start its
    /// committers. The spool directory under `data_dir` only holds bodies being received.
    fn open_postgres(
        data_dir: &Path,
        cfg: &StoreConfig,
        pg_cfg: &crate::config::PostgresConfig,
    ) -> Result<Store, StoreError> {
        crate::util::private_dir(data_dir)?;
        let pg = Arc::new(pg::PgStore::open(pg_cfg)?);
        let spool = Spool::open(&data_dir.join("spool"))?;
        spool.clear_tmp()?;
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let threads = pg.start_committers(rx, spool.clone(), cfg.max_commit_batch)?;
        let inner = Arc::new(Inner {
            engine: RwLock::new(None),
            db_path: None,
            cache_bytes: cfg.cache_bytes,
            broken: AtomicBool::new(false),
            low_space: AtomicBool::new(false),
            last_heal: Mutex::new(None),
            spool,
            inline_max: cfg.inline_body_max_bytes as usize,
            counts: TxCounts::default(),
        });
        let committer = Arc::new(Committer {
            commits: Some(tx),
            threads,
        });
        Ok(Store {
            inner,
            committer,
            pg: Some(pg),
        })
    }

    /// Apply the PostgreSQL schema this build needs (`inbound store migrate`). Returns the
    /// versions before and after.
    pub fn migrate_postgres(cfg: &crate::config::PostgresConfig) -> Result<(i32, i32), StoreError> {
        pg::migrate(cfg)
    }

    /// Copy the stopped embedded store under `data_dir` into an empty PostgreSQL database
    /// (`inbound store copy`): counts and checksums of both sides, which must agree.
    pub fn copy_to_postgres(
        data_dir: &Path,
        cfg: &StoreConfig,
        to: &crate::config::PostgresConfig,
    ) -> Result<CopyReport, StoreError> {
        pg::copy(data_dir, cfg.cache_bytes, to)
    }

    /// This store's name among the nodes sharing a database (whose outbox leases it holds);
    /// "local" for the embedded store, which has no other node.
    pub fn node_id(&self) -> String {
        match &self.pg {
            Some(pg) => pg.node.to_string(),
            None => "local".into(),
        }
    }

    /// Which backend keeps the records: "sled" or "postgres".
    pub fn backend_name(&self) -> &'static str {
        if self.pg.is_some() {
            "postgres"
        } else {
            "sled"
        }
    }

    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    pub fn inline_max(&self) -> usize {
        self.inner.inline_max
    }

    /// An operator action (confirm an inbox, assign a conversation): one transaction over every
    /// tree, made durable before it returns. It may run concurrently with the committer: sled
    /// transactions are serializable, and a conflicting one is retried, so `f` may run twice.
    pub fn update<T: Send>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T> + Sync,
    ) -> Result<T, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.update(f);
        }
        let engine = self.inner.engine()?;
        let out = self.inner.transaction(&engine, f)?;
        self.inner.flush(&engine)?;
        Ok(out)
    }

    /// Reads over several trees that must agree with each other (a user's availability and open
    /// count): one transaction, not flushed. `f` must only read; it may run more than once.
    pub fn view<T: Send>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T> + Sync,
    ) -> Result<T, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.update(f);
        }
        let engine = self.inner.engine()?;
        self.inner.transaction(&engine, f)
    }

    /// Write and flush a small value (`health:probe` in the counters tree): whether the store can
    /// take a commit right now. Also false when the committer thread is gone, and while the
    /// database is being reopened after a failed write.
    pub fn probe_write(&self) -> Result<(), StoreError> {
        if self
            .committer
            .commits
            .as_ref()
            .is_none_or(|c| c.is_closed())
        {
            return Err(StoreError::Closed);
        }
        if let Some(pg) = &self.pg {
            return pg.probe_write();
        }
        let engine = self.inner.engine()?;
        if let Err(e) = engine
            .tree(TreeId::Counters)
            .insert(b"health:probe", &keys::now_ms().to_be_bytes())
        {
            let e = StoreError::Db(e);
            self.inner.write_failed(&e);
            return Err(e);
        }
        self.inner.flush(&engine)
    }

    /// Whether the data directory's filesystem has at least `min_free_bytes` available (always,
    /// when it is 0 or the store is temporary). A change either way is logged once: WARN when
    /// mail starts being refused for space, INFO when it is taken again.
    pub fn has_room(&self, min_free_bytes: u64) -> bool {
        let Some(path) = self.inner.db_path.as_deref() else {
            return true;
        };
        if min_free_bytes == 0 {
            return true;
        }
        // When the size cannot be read, the writes themselves will tell.
        let free = free_bytes(path);
        let room = free.is_none_or(|f| f >= min_free_bytes);
        let was_low = self.inner.low_space.swap(!room, Ordering::AcqRel);
        if was_low == room {
            if room {
                tracing::info!(free_bytes = free, min_free_bytes, path = %path.display(), "store: free space is back above the low-space watermark; taking mail again");
            } else {
                tracing::warn!(free_bytes = free, min_free_bytes, path = %path.display(), "store: free space below the low-space watermark; refusing new mail with 452 4.3.1");
            }
        }
        room
    }

    /// Free bytes on the data directory's filesystem, when known.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(self.inner.db_path.as_deref()?)
    }

    /// Whether a write failed and the database has not been reopened since.
    pub fn is_broken(&self) -> bool {
        self.inner.broken.load(Ordering::Acquire)
    }

    /// Commit requests waiting for the committer now (at most `COMMIT_QUEUE`).
    /// Transactions the committers committed and transactions run again after losing a race
    /// (a serialization failure, deadlock or duplicate key on PostgreSQL; always 0 on sled),
    /// since the store opened.
    pub fn transaction_counts(&self) -> (u64, u64) {
        let c = match &self.pg {
            Some(pg) => &pg.counts,
            None => &self.inner.counts,
        };
        (
            c.commits.load(Ordering::Relaxed),
            c.retries.load(Ordering::Relaxed),
        )
    }

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
        if let Some(pg) = &self.pg {
            return pg.state(key);
        }
        Ok(self
            .inner
            .engine()?
            .tree(TreeId::Counters)
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        if let Some(pg) = &self.pg {
            return pg.set_state(key, value);
        }
        self.inner
            .engine()?
            .tree(TreeId::Counters)
            .insert(key.as_bytes(), value.as_bytes())?;
        Ok(())
    }

    /// Whether other processes write this store too (PostgreSQL shared by several nodes):
    /// what this node compiled from it may then be out of date (`definitions_generation`).
    pub fn is_shared(&self) -> bool {
        self.pg.is_some()
    }

    /// A count that moves whenever an inbox, user or team definition is written, by any node;
    /// `None` on the embedded store, which only this process writes (its own changes are put
    /// in force as they are made).
    pub fn definitions_generation(&self) -> Result<Option<u64>, StoreError> {
        self.pg
            .as_ref()
            .map(|pg| pg.definitions_generation())
            .transpose()
    }

    /// Path of the database, for messages.
    pub fn data_path(data_dir: &Path) -> PathBuf {
        data_dir.join("db")
    }

    /// Flush everything (used at shutdown; commits already flush).
    pub fn flush(&self) -> Result<(), StoreError> {
        if self.pg.is_some() {
            return Ok(()); // every commit is durable when COMMIT returns
        }
        let engine = self.inner.engine()?;
        self.inner.flush(&engine)
    }
}
