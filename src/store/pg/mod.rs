//! The PostgreSQL backend: the same records and domain operations as the embedded store, in a
//! database several nodes share. What sled gives by being in one process, this module gets from
//! PostgreSQL's own guarantees:
//!
//! - **Durable accept.** A batch of messages is one transaction; its sessions get their answer
//!   only after `COMMIT` returned. A connection lost before that is an error for every message
//!   of the batch (the clients get `451`, retry, and the Message-ID rule keeps a retry whose
//!   first copy did commit from doubling a conversation).
//! - **Isolation.** Transactions run at REPEATABLE READ: a row that two nodes update at once
//!   (a conversation both add a reply to, a round-robin position) fails the later one with a
//!   serialization error instead of losing an update; the same Message-ID inserted by two nodes
//!   at once fails the later one on the thread index's primary key. Both are retried from the
//!   start a bounded number of times (`MAX_ATTEMPTS`, `RETRY_BUDGET`), seeing the other's
//!   commit, after a growing, jittered pause.
//! - **Hot rows wait instead of failing.** Every message counts into its inbox's state row, and
//!   one sender's messages update one contact row: at REPEATABLE READ, concurrent batches to the
//!   same inbox would fail each other and run out of attempts (`451`). So a committer first takes
//!   a session-level advisory lock per inbox and contact of its batch (`hot_keys`), sorted so
//!   two committers never wait for each other in a cycle, *then* begins the transaction, whose
//!   snapshot therefore already sees the previous holder's commit. Every node takes the same
//!   locks, so the cluster serialises per inbox, not per row conflict; what still races (the
//!   API, a hash collision) is retried as above. Why wait rather than only retry with a longer
//!   backoff: at REPEATABLE READ two transactions that update one row cannot overlap at all, so
//!   every overlap is a whole transaction thrown away; a wait costs one lock hand-over. The
//!   price: commits to one inbox run one batch at a time, so for one busy inbox fewer
//!   committers (bigger batches) are faster (#13: 1 committer ~530 messages/s, 4 ~360, release
//!   build, 4 KiB × 20 clients, one sender, on a shared 2-core host).
//! - **No hot row.** Ticket numbers come from a sequence, open counts and round-robin positions
//!   are one row per user and per rule, and the outbox depth is counted.
//! - **Group commit.** Several committer connections each take whatever batch is waiting; the
//!   database's own WAL flush groups their commits.
//!
//! The client is the synchronous `postgres` crate: plans are synchronous code run inside the
//! transaction. From inside an async context calls run on a scoped thread of their own, waited
//! for through `block_in_place` so that the worker's other tasks move on (`off_runtime`).

mod capacity;
mod copy;
mod ops;
mod reads;
pub(super) mod schema;

pub use copy::{CopyReport, CopySide};
pub(super) use reads::Listed;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Statement};
use tokio::sync::mpsc;

use super::committer::CommitRequest;
use super::tx::{Tx, TxError, TxErrorKind, TxInner, TxResult};
use super::{Body, MessageRecord, Spool, StoreError, TxCounts};
use crate::config::PostgresConfig;
use crate::util::mask_url_password;

/// How many times a transaction that lost a race (serialization failure, deadlock, duplicate
/// key) runs in all before its messages get `451`; also bounded by `RETRY_BUDGET`.
const MAX_ATTEMPTS: u32 = 12;
/// How long a transaction keeps running again after lost races: past it, the next loss is the
/// final answer (`451`, and the client retries later). Well inside an SMTP client's 10-minute
/// end-of-data timeout (RFC 5321 §4.5.3.2.6), and short enough that a stuck batch does not hold
/// its committer for long.
const RETRY_BUDGET: Duration = Duration::from_secs(5);
/// The first pause after a lost race; each further loss doubles it, up to `MAX_BACKOFF`. The
/// pause is jittered (half to all of it) so that two losers do not meet again in step.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// How long a committer waits for any lock (the advisory locks of `hot_keys`, a row another
/// transaction holds): past it the statement fails and the batch gets `451` (the clients retry).
/// A holder that commits takes milliseconds; this bounds the wait behind one that hangs with its
/// session still open (a node cut off mid-batch).
const COMMITTER_LOCK_TIMEOUT: &str = "30s";

/// The `store_state` key counting the writes of inbox, user and team definitions.
const DEFINITIONS_GENERATION: &str = "definitions:generation";

/// One connection with the statements it has prepared (prepared once per connection, by SQL
/// text).
pub(super) struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    fn connect(cfg: &PostgresConfig) -> Result<Conn, StoreError> {
        let mut pg: postgres::Config = cfg.url.parse().map_err(|e| {
            StoreError::Unavailable(format!(
                "{}: not a PostgreSQL URL: {e}",
                mask_url_password(&cfg.url)
            ))
        })?;
        pg.connect_timeout(cfg.connect_timeout);
        pg.application_name("inbound");
        let client = pg.connect(NoTls).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                mask_url_password(&cfg.url)
            ))
        })?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// A committer's connection: `connect`, with `COMMITTER_LOCK_TIMEOUT`.
    fn connect_committer(cfg: &PostgresConfig) -> Result<Conn, StoreError> {
        let mut conn = Conn::connect(cfg)?;
        conn.client
            .batch_execute(&format!("SET lock_timeout = '{COMMITTER_LOCK_TIMEOUT}'"))
            .map_err(pg_error)?;
        Ok(conn)
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    pub(super) fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.query(&s, params)
    }

    pub(super) fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        self.client.execute(&s, params)
    }
}

/// A transaction in progress on one connection (between `BEGIN` and `COMMIT`): what `Tx`
/// holds for this backend.
pub(in crate::store) struct PgTx<'a> {
    conn: RefCell<&'a mut Conn>,
    /// This node's name: whose outbox leases are ours (`outbox_claimed`).
    pub(super) node: &'a str,
}

impl PgTx<'_> {
    pub(super) fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> TxResult<Vec<postgres::Row>> {
        Ok(self.conn.borrow_mut().query(sql, params)?)
    }

    pub(super) fn execute(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> TxResult<u64> {
        Ok(self.conn.borrow_mut().execute(sql, params)?)
    }
}

/// Whether a failed transaction should simply run again: it lost a race with another
/// transaction (its own or another node's), and the next attempt sees the winner's commit.
fn retryable(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::UNIQUE_VIOLATION
    })
}

/// Run `f` where a blocking database call is allowed: directly on a plain thread, on a scoped
/// thread of its own when called from inside an async runtime (inside which the `postgres`
/// crate cannot run its own). Waiting for that thread still blocks the caller: on a worker of
/// a multi-thread runtime the wait goes through `block_in_place`, which hands the worker's
/// other tasks to another thread first. A database that stops answering (neither replies nor
/// refuses) then holds only the tasks that called it, not every SMTP session and `/readyz`.
pub(super) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return f();
    };
    let run = || {
        thread::scope(|s| {
            thread::Builder::new()
                .name("inbound-pg".into())
                .spawn_scoped(s, f)
                .expect("spawn a database thread")
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    };
    // block_in_place panics on a current-thread runtime (and there is no other worker to hand
    // tasks to anyway).
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
        _ => run(),
    }
}

/// Connections for reads and operator actions, made as needed up to `size`.
struct Pool {
    cfg: PostgresConfig,
    idle: Mutex<(Vec<Conn>, usize)>,
    freed: Condvar,
}

impl Pool {
    fn get(&self) -> Result<Conn, StoreError> {
        let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(c) = guard.0.pop() {
                return Ok(c);
            }
            if guard.1 < self.cfg.pool_size {
                guard.1 += 1;
                drop(guard);
                return Conn::connect(&self.cfg).inspect_err(|_| {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).1 -= 1;
                });
            }
            guard = self.freed.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Give a connection back; a broken one is closed instead (a new one is made when needed).
    fn put(&self, conn: Conn) {
        let mut guard = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if conn.client.is_closed() {
            guard.1 -= 1;
        } else {
            guard.0.push(conn);
        }
        drop(guard);
        self.freed.notify_one();
    }
}

impl Drop for Pool {
    /// Closing a connection blocks on the client's own runtime: never on a runtime worker.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.idle.get_mut().unwrap_or_else(|p| p.into_inner()).0);
        off_runtime(move || drop(idle));
    }
}

/// The PostgreSQL store of one node.
pub(super) struct PgStore {
    pool: Pool,
    /// This node's name among the nodes sharing the database (outbox leases): host, pid and a
    /// random part, new for every open store.
    pub(super) node: Arc<str>,
    /// Commits and retries of this store's transactions (`Store::transaction_counts`).
    pub(super) counts: Arc<TxCounts>,
}

impl PgStore {
    /// Connect and check the schema (it must be exactly the version this build knows) and that
    /// this node's connections fit in the server's (`capacity`).
    pub(super) fn open(cfg: &PostgresConfig) -> Result<PgStore, StoreError> {
        let store = PgStore {
            pool: Pool {
                cfg: cfg.clone(),
                idle: Mutex::new((Vec::new(), 0)),
                freed: Condvar::new(),
            },
            node: node_name().into(),
            counts: Arc::default(),
        };
        let url = mask_url_password(&cfg.url);
        store.with_conn(|c| {
            schema::check(c, &url)?;
            capacity::check(c, cfg, &url)
        })?;
        Ok(store)
    }

    /// Run `f` with a pooled connection (see `off_runtime`).
    pub(super) fn with_conn<T: Send>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        off_runtime(|| {
            let mut conn = self.pool.get()?;
            let out = f(&mut conn);
            self.pool.put(conn);
            out
        })
    }

    /// One transaction with the domain operations, committed before it returns; retried when
    /// it lost a race (see the module doc).
    pub(super) fn update<T: Send>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T> + Sync,
    ) -> Result<T, StoreError> {
        self.with_conn(|conn| transaction(conn, &self.node, &self.counts, &[], |tx| f(tx)))
    }

    /// Start the committers: each has its own connection and takes whatever batch is waiting.
    pub(super) fn start_committers(
        self: &Arc<Self>,
        rx: mpsc::Receiver<CommitRequest>,
        spool: Spool,
        max_batch: usize,
    ) -> Result<Vec<thread::JoinHandle<()>>, StoreError> {
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..self.pool.cfg.committers {
            let (rx, spool, cfg) = (rx.clone(), spool.clone(), self.pool.cfg.clone());
            let (node, counts) = (self.node.clone(), self.counts.clone());
            let mut conn = Some(off_runtime(|| Conn::connect_committer(&cfg))?);
            threads.push(
                thread::Builder::new()
                    .name(format!("inbound-commit-{i}"))
                    .spawn(move || loop {
                        let batch = {
                            let mut rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            let Some(first) = rx.blocking_recv() else {
                                return;
                            };
                            let mut batch = vec![first];
                            while batch.len() < max_batch {
                                match rx.try_recv() {
                                    Ok(r) => batch.push(r),
                                    Err(_) => break,
                                }
                            }
                            batch
                        };
                        let c = match conn.take().filter(|c| !c.client.is_closed()) {
                            Some(c) => Ok(c),
                            None => Conn::connect_committer(&cfg),
                        };
                        let results = match c {
                            Ok(mut c) => {
                                let r = commit_batch(&mut c, &node, &counts, &spool, &batch);
                                conn = Some(c);
                                r
                            }
                            Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
                        };
                        for (req, result) in batch.into_iter().zip(results) {
                            if let Body::Spooled { .. } = req.body {
                                let _ = std::fs::remove_file(spool.tmp_path(&req.record.queue_id));
                            }
                            if let Err(e) = &result {
                                tracing::error!(queue_id = %req.record.queue_id, error = %e, "commit failed");
                            }
                            let _ = req.done.send(result);
                        }
                    })?,
            );
        }
        Ok(threads)
    }

    /// How many times the inbox, user and team definitions were written, by any node.
    pub(super) fn definitions_generation(&self) -> Result<u64, StoreError> {
        Ok(self
            .state(DEFINITIONS_GENERATION)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Whether the database takes a write now (`/readyz`).
    pub(super) fn probe_write(&self) -> Result<(), StoreError> {
        self.with_conn(|c| {
            c.execute(
                "INSERT INTO store_state (key, value) VALUES ('health:probe', $1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&crate::store::keys::now_ms().to_string()],
            )
            .map(drop)
            .map_err(pg_error)
        })
    }
}

pub(super) use copy::copy;

/// A name for this node that no other node sharing the database has: host, pid, random part.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!(
        "{host}:{}:{}",
        std::process::id(),
        crate::store::keys::new_queue_id()
    )
}

/// Bring the database's schema to this build's version (`inbound store migrate`).
pub(super) fn migrate(cfg: &PostgresConfig) -> Result<(i32, i32), StoreError> {
    off_runtime(|| schema::migrate(&mut Conn::connect(cfg)?))
}

/// A database error as a store error: the store is unavailable (a 4xx for mail).
pub(super) fn pg_error(e: postgres::Error) -> StoreError {
    // The client's Display says only "db error": the server's message and code are the news.
    match e.as_db_error() {
        Some(db) => StoreError::Unavailable(format!(
            "PostgreSQL: {} ({})",
            db.message(),
            db.code().code()
        )),
        None => StoreError::Unavailable(format!("PostgreSQL: {e}")),
    }
}

/// Run `f` in one REPEATABLE READ transaction on `conn`, committed; a lost race runs it again
/// (bounded by `MAX_ATTEMPTS` and `RETRY_BUDGET`, with a growing jittered pause between runs).
///
/// `locks` are advisory lock keys (`hot_keys`), sorted: held at session level from before
/// `BEGIN` until after `COMMIT` or the last `ROLLBACK`, across retries. Taken inside the
/// transaction they would not help: at REPEATABLE READ the snapshot is taken at the first
/// statement, and a snapshot older than the previous holder's commit fails on its rows anyway.
pub(super) fn transaction<T>(
    conn: &mut Conn,
    node: &str,
    counts: &TxCounts,
    locks: &[i64],
    f: impl Fn(&Tx<'_>) -> TxResult<T>,
) -> Result<T, StoreError> {
    if !locks.is_empty() {
        // One statement for every key: unnest keeps the array's (sorted) order.
        if let Err(e) = conn.execute(
            "SELECT pg_advisory_lock(k) FROM unnest($1::int8[]) AS k",
            &[&locks],
        ) {
            // A lock taken before the error must not outlive this call.
            unlock_all(conn);
            return Err(pg_error(e));
        }
    }
    let started = Instant::now();
    let mut attempt = 0;
    let out = loop {
        attempt += 1;
        match try_transaction(conn, node, !locks.is_empty(), &f) {
            Ok(v) => {
                counts.commits.fetch_add(1, Ordering::Relaxed);
                break Ok(v);
            }
            Err(TxError(TxErrorKind::Pg(e)))
                if retryable(&e) && attempt < MAX_ATTEMPTS && started.elapsed() < RETRY_BUDGET =>
            {
                counts.retries.fetch_add(1, Ordering::Relaxed);
                thread::sleep(backoff(attempt));
                continue;
            }
            Err(TxError(TxErrorKind::Abort(reason))) => {
                break Err(StoreError::Io(std::io::Error::other(reason)))
            }
            Err(TxError(TxErrorKind::Pg(e))) => break Err(pg_error(e)),
            Err(e) => break Err(StoreError::Unavailable(e.to_string())),
        }
    };
    if !locks.is_empty() && out.is_err() {
        // A commit released them with its `COMMIT`; a failure did not.
        unlock_all(conn);
    }
    out
}

/// Release every advisory lock this session holds. A broken connection has none left to
/// release (the server drops a session's locks with it).
fn unlock_all(conn: &mut Conn) {
    let _ = conn.client.batch_execute("SELECT pg_advisory_unlock_all()");
}

/// The pause after the `attempt`th lost race: `FIRST_BACKOFF` doubled per attempt up to
/// `MAX_BACKOFF`, then a random point in its upper half.
fn backoff(attempt: u32) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    // RandomState is seeded randomly per instance: a random number without a crate for it.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = full / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64).max(1))
}

/// The advisory lock keys of the rows a batch's plans will update that every message to the
/// same place shares: each recipient's inbox (its state row counts every message; its rules'
/// round-robin positions and conversations are the inbox's too) and the attributed sender's
/// contact row. Hashed to a lock key (a collision only makes two keys wait for each other),
/// sorted and without repeats, so committers take them in one order and cannot deadlock.
fn hot_keys<'a>(records: impl Iterator<Item = &'a MessageRecord>) -> Vec<i64> {
    let mut keys = Vec::new();
    for r in records {
        for rcpt in &r.rcpt {
            keys.push(lock_key("inbox", &rcpt.inbox));
        }
        if let Some(a) = &r.attribution {
            keys.push(lock_key("contact", &a.email.to_lowercase()));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// FNV-1a of `kind` and `name`: stable across processes and builds, as every node must compute
/// the same key (std's hasher is seeded per process).
fn lock_key(kind: &str, name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain([0]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

fn try_transaction<T>(
    conn: &mut Conn,
    node: &str,
    unlock: bool,
    f: &impl Fn(&Tx<'_>) -> TxResult<T>,
) -> TxResult<T> {
    conn.client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")?;
    let out = {
        let pg = PgTx {
            conn: RefCell::new(&mut *conn),
            node,
        };
        f(&Tx(TxInner::Pg(&pg)))
    };
    match out {
        Ok(v) => {
            // The unlock rides in the same round trip; it runs only if COMMIT succeeded, and
            // `transaction` releases the locks itself otherwise.
            conn.client.batch_execute(if unlock {
                "COMMIT; SELECT pg_advisory_unlock_all()"
            } else {
                "COMMIT"
            })?;
            Ok(v)
        }
        Err(e) => {
            // A broken connection is dropped by its pool; a live one must be usable again.
            let _ = conn.client.batch_execute("ROLLBACK");
            Err(e)
        }
    }
}

/// Make a batch durable: each plan runs in order inside one transaction with the records and
/// bodies; if a plan refuses, each message is committed alone so one bad message cannot fail
/// the others.
fn commit_batch(
    conn: &mut Conn,
    node: &str,
    counts: &TxCounts,
    spool: &Spool,
    batch: &[CommitRequest],
) -> Vec<Result<MessageRecord, String>> {
    // Spooled bodies are read before the transaction: it holds no file I/O.
    let bodies: Vec<Result<Option<Vec<u8>>, String>> = batch
        .iter()
        .map(|req| match &req.body {
            Body::Inline(_) => Ok(None),
            Body::Spooled { .. } => std::fs::read(spool.tmp_path(&req.record.queue_id))
                .map(Some)
                .map_err(|e| format!("reading the spooled body: {e}")),
        })
        .collect();
    let all: Vec<usize> = (0..batch.len()).collect();
    let commit =
        |conn: &mut Conn, items: &[usize]| commit_items(conn, node, counts, batch, &bodies, items);
    match commit(conn, &all) {
        Ok(records) => records.into_iter().map(Ok).collect(),
        Err(StoreError::Io(_)) if batch.len() > 1 => (0..batch.len())
            .map(|i| {
                commit(conn, &[i])
                    .map(|mut r| r.remove(0))
                    .map_err(|e| e.to_string())
            })
            .collect(),
        Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
    }
}

/// One transaction for the requests at `items`, in order, holding their `hot_keys`.
fn commit_items(
    conn: &mut Conn,
    node: &str,
    counts: &TxCounts,
    batch: &[CommitRequest],
    bodies: &[Result<Option<Vec<u8>>, String>],
    items: &[usize],
) -> Result<Vec<MessageRecord>, StoreError> {
    let locks = hot_keys(items.iter().map(|&i| &batch[i].record));
    transaction(conn, node, counts, &locks, |tx| {
        let mut out = Vec::with_capacity(items.len());
        for &i in items {
            let req = &batch[i];
            let mut record = req.record.clone();
            if let Some(plan) = &req.plan {
                plan(tx, &mut record)?;
            }
            let body: &[u8] = match (&req.body, &bodies[i]) {
                (Body::Inline(b), _) => b,
                (_, Ok(Some(b))) => b,
                (_, Err(e)) => return Err(TxError::abort(e.clone())),
                (_, Ok(None)) => &[],
            };
            // Every body lives in the database: any node can serve it.
            record.body_location = "inline".into();
            tx.put_body(&record.queue_id, body)?;
            tx.put_message(&record)?;
            out.push(record);
        }
        Ok(out)
    })
}
