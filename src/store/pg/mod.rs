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
//!   price: commits to one inbox run one batch at a time, on every node together. A batch that
//!   had to wait takes in what arrived meanwhile for the same locks (`commit_batch`'s top-up),
//!   so a wait makes the next transaction bigger rather than adding one.
//! - **Few round trips per batch.** A transaction reads what its batch's plans will ask for
//!   first in one statement (`pending::ReadAhead`), holds its writes back and sends them in one
//!   statement before `COMMIT` (`pending::Pending`), takes ticket numbers from the sequence
//!   sixteen at a time, and links a new conversation without asking whether the link exists.
//!   A batch of new conversations costs five round trips (locks, `BEGIN`, read-ahead, writes,
//!   `COMMIT`) instead of about seventeen per message; #13 measured 356 messages/s before and
//!   1,090 to 1,590 after (medians of sets of runs; release build, 4 KiB × 20 clients, one
//!   sender, a shared 2-core host).
//! - **No hot row.** Ticket numbers come from a sequence, open counts and round-robin positions
//!   are one row per user and per rule, and the outbox depth is counted.
//! - **Group commit.** Several committer connections, each committing the messages of its share
//!   of the inboxes (`start_committers`); the database's own WAL flush groups their commits.
//!
//! The client is the synchronous `postgres` crate: plans are synchronous code run inside the
//! transaction. From inside an async context calls run on a scoped thread of their own, waited
//! for through `block_in_place` so that the worker's other tasks move on (`off_runtime`).

mod capacity;
mod copy;
mod ops;
mod pending;
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

use self::pending::ReadAheadKeys;
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
    /// Ticket numbers this connection took from the sequence and has not given out yet
    /// (`PgTx::next_ticket_number`), lowest last.
    ticket_numbers: Vec<i64>,
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
            ticket_numbers: Vec::new(),
        })
    }

    /// A committer's connection: `connect`, with `COMMITTER_LOCK_TIMEOUT`.
    fn connect_committer(cfg: &PostgresConfig) -> Result<Conn, StoreError> {
        let mut conn = Conn::connect(cfg)?;
        conn.client
            .batch_execute(&format!("SET lock_timeout = '{COMMITTER_LOCK_TIMEOUT}'"))
            .map_err(pg_error)?;
        // Bodies and records over about 2 KB are compressed as they are stored, inside the
        // batch's transaction and its locks: pglz, the default, cost more CPU than anything
        // else in a batch of 100 KiB messages. LZ4 (PostgreSQL 14 and newer, when the server
        // was built with it) is several times faster; a server without it keeps its default.
        let _ = conn
            .client
            .batch_execute("SET default_toast_compression = 'lz4'");
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
    /// The writes held back until the commit (`pending`).
    pending: RefCell<pending::Pending>,
    /// The rows read ahead for a batch (`pending::ReadAhead`).
    ahead: RefCell<pending::ReadAhead>,
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
        self.with_conn(|conn| {
            transaction(
                conn,
                &self.node,
                &self.counts,
                &[],
                &ReadAheadKeys::default(),
                |tx| f(tx),
            )
        })
    }

    /// Start the committers: each has its own connection and commits the messages of its
    /// share of the inboxes (`committer_of`), whatever batch of them is waiting.
    ///
    /// Why a share and not "whoever is free": every message counts into its inbox's state row,
    /// so two batches for one inbox cannot commit at once (`hot_keys`). Four committers taking
    /// turns from one queue split a busy inbox's messages into four small batches that then
    /// wait for each other, each paying a transaction's round trips: 4 committers ran at about
    /// half the rate of 1 (#13, 4 KiB × 20 clients to one inbox). Routed by inbox, one busy
    /// inbox gets one committer and big batches, and different inboxes still commit side by side.
    pub(super) fn start_committers(
        self: &Arc<Self>,
        mut rx: mpsc::Receiver<CommitRequest>,
        spool: Spool,
        max_batch: usize,
    ) -> Result<Vec<thread::JoinHandle<()>>, StoreError> {
        let mut threads = Vec::new();
        let mut queues = Vec::new();
        for i in 0..self.pool.cfg.committers.max(1) {
            let (queue, own) = std::sync::mpsc::sync_channel::<CommitRequest>(max_batch.max(1));
            queues.push(queue);
            let (spool, cfg) = (spool.clone(), self.pool.cfg.clone());
            let (node, counts) = (self.node.clone(), self.counts.clone());
            let mut conn = Some(off_runtime(|| Conn::connect_committer(&cfg))?);
            threads.push(
                thread::Builder::new()
                    .name(format!("inbound-commit-{i}"))
                    .spawn(move || {
                        // Requests taken out of the queue that did not fit the last batch's
                        // locks: the next batch starts with them.
                        let mut held_over = std::collections::VecDeque::new();
                        loop {
                        let Some(first) = held_over.pop_front().or_else(|| own.recv().ok()) else {
                            return;
                        };
                        let mut batch = vec![first];
                        while batch.len() < max_batch {
                            match held_over.pop_front().map(Ok).unwrap_or_else(|| own.try_recv()) {
                                Ok(r) => batch.push(r),
                                Err(_) => break,
                            }
                        }
                        let top_up = |locks: &[i64], batch: &mut Vec<CommitRequest>| {
                            while batch.len() < max_batch {
                                match own.try_recv() {
                                    Ok(r) if fits(&r, locks) => batch.push(r),
                                    Ok(r) => held_over.push_back(r),
                                    Err(_) => break,
                                }
                            }
                        };
                        let c = match conn.take().filter(|c| !c.client.is_closed()) {
                            Some(c) => Ok(c),
                            None => Conn::connect_committer(&cfg),
                        };
                        let results = match c {
                            Ok(mut c) => {
                                // A plan that panics fails its batch, not this committer: the
                                // inboxes routed here would have nobody to commit them. Its
                                // connection may be inside the transaction: it is dropped.
                                let run = std::panic::AssertUnwindSafe(|| {
                                    commit_batch(&mut c, &node, &counts, &spool, &mut batch, top_up)
                                });
                                match std::panic::catch_unwind(run) {
                                    Ok(r) => {
                                        conn = Some(c);
                                        r
                                    }
                                    Err(_) => batch
                                        .iter()
                                        .map(|_| Err("the commit plan failed (a panic, logged)".to_string()))
                                        .collect(),
                                }
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
                        }
                    })?,
            );
        }
        // The router: ends when the store's queue closes, and the committers with it.
        threads.push(
            thread::Builder::new()
                .name("inbound-commit-route".into())
                .spawn(move || {
                    while let Some(req) = rx.blocking_recv() {
                        let i = committer_of(&req.record, queues.len());
                        if queues[i].send(req).is_err() {
                            return;
                        }
                    }
                })?,
        );
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
    ahead: &ReadAheadKeys,
    f: impl Fn(&Tx<'_>) -> TxResult<T>,
) -> Result<T, StoreError> {
    take_locks(conn, locks)?;
    transaction_holding(conn, node, counts, !locks.is_empty(), ahead, f)
}

/// Take the advisory locks `locks` (sorted) for this session, waiting for each; on an error
/// none stays taken.
fn take_locks(conn: &mut Conn, locks: &[i64]) -> Result<(), StoreError> {
    if locks.is_empty() {
        return Ok(());
    }
    // One statement for every key: unnest keeps the array's (sorted) order.
    conn.execute(
        "SELECT pg_advisory_lock(k) FROM unnest($1::int8[]) AS k",
        &[&locks],
    )
    .map(drop)
    .map_err(|e| {
        unlock_all(conn);
        pg_error(e)
    })
}

/// `transaction` for a session that already holds its advisory locks (`locked`): released
/// with the `COMMIT`, or after the last failed attempt.
fn transaction_holding<T>(
    conn: &mut Conn,
    node: &str,
    counts: &TxCounts,
    locked: bool,
    ahead: &ReadAheadKeys,
    f: impl Fn(&Tx<'_>) -> TxResult<T>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let mut attempt = 0;
    let out = loop {
        attempt += 1;
        match try_transaction(conn, node, locked, ahead, &f) {
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
    if locked && out.is_err() {
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

/// Which of `committers` commits `record`: chosen by its first recipient's inbox, so that one
/// inbox's messages meet in one committer's batches (see `start_committers`).
fn committer_of(record: &MessageRecord, committers: usize) -> usize {
    let inbox = record.rcpt.first().map_or("", |r| r.inbox.as_str());
    (lock_key("inbox", inbox) as u64 % committers.max(1) as u64) as usize
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
    ahead: &ReadAheadKeys,
    f: &impl Fn(&Tx<'_>) -> TxResult<T>,
) -> TxResult<T> {
    conn.client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")?;
    let out = {
        let pg = PgTx {
            conn: RefCell::new(&mut *conn),
            node,
            pending: RefCell::default(),
            ahead: RefCell::default(),
        };
        pg.read_ahead(ahead)
            .and_then(|()| f(&Tx(TxInner::Pg(&pg))))
            .and_then(|v| pg.flush().map(|()| v))
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
///
/// The batch's locks are taken first; once they are held (which may have meant waiting for
/// another node's commit), `top_up` may add requests that arrived meanwhile, so that the wait
/// makes the next transaction bigger instead of leaving them to one more transaction after it.
fn commit_batch(
    conn: &mut Conn,
    node: &str,
    counts: &TxCounts,
    spool: &Spool,
    batch: &mut Vec<CommitRequest>,
    top_up: impl FnOnce(&[i64], &mut Vec<CommitRequest>),
) -> Vec<Result<MessageRecord, String>> {
    // Spooled bodies are read before the transaction and its locks: they hold no file I/O.
    let mut bodies: Vec<Result<Option<Vec<u8>>, String>> = batch
        .iter()
        .map(|req| match &req.body {
            Body::Inline(_) => Ok(None),
            Body::Spooled { .. } => std::fs::read(spool.tmp_path(&req.record.queue_id))
                .map(Some)
                .map_err(|e| format!("reading the spooled body: {e}")),
        })
        .collect();
    let locks = hot_keys(batch.iter().map(|r| &r.record));
    if let Err(e) = take_locks(conn, &locks) {
        return batch.iter().map(|_| Err(e.to_string())).collect();
    }
    top_up(&locks, batch);
    bodies.resize_with(batch.len(), || Ok(None));
    let batch = &*batch;
    let all: Vec<usize> = (0..batch.len()).collect();
    let commit = |conn: &mut Conn, items: &[usize], locked: bool| {
        commit_items(conn, node, counts, batch, &bodies, items, locked)
    };
    match commit(conn, &all, !locks.is_empty()) {
        Ok(records) => records.into_iter().map(Ok).collect(),
        // The failed transaction released the batch's locks: each message takes its own.
        Err(StoreError::Io(_)) if batch.len() > 1 => (0..batch.len())
            .map(|i| {
                commit(conn, &[i], false)
                    .map(|mut r| r.remove(0))
                    .map_err(|e| e.to_string())
            })
            .collect(),
        Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
    }
}

/// One transaction for the requests at `items`, in order, holding their `hot_keys`: already
/// held when `locked`, taken here otherwise.
fn commit_items(
    conn: &mut Conn,
    node: &str,
    counts: &TxCounts,
    batch: &[CommitRequest],
    bodies: &[Result<Option<Vec<u8>>, String>],
    items: &[usize],
    locked: bool,
) -> Result<Vec<MessageRecord>, StoreError> {
    let ahead = ReadAheadKeys::of(items.iter().map(|&i| &batch[i].record));
    let plans = |tx: &Tx<'_>| {
        let mut out = Vec::with_capacity(items.len());
        for &i in items {
            let req = &batch[i];
            let mut record = req.record.clone();
            if let Some(plan) = &req.plan {
                crate::store::tx::run_plan(plan, tx, &mut record)?;
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
    };
    if locked {
        transaction_holding(conn, node, counts, true, &ahead, plans)
    } else {
        let locks = hot_keys(items.iter().map(|&i| &batch[i].record));
        transaction(conn, node, counts, &locks, &ahead, plans)
    }
}

/// Whether `req` may join a batch holding `locks` (`commit_batch`'s top-up): its body is in
/// memory (a spooled one would be read while holding the locks) and every hot key it needs is
/// held already (taking another now could deadlock with a committer that holds it and waits
/// for ours).
fn fits(req: &CommitRequest, locks: &[i64]) -> bool {
    matches!(req.body, Body::Inline(_))
        && hot_keys(std::iter::once(&req.record))
            .iter()
            .all(|k| locks.binary_search(k).is_ok())
}
