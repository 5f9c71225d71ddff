//! The committer: one thread that takes every commit request waiting, makes the batch durable
//! together (bodies into place, one sled transaction, one flush) and only then answers each
//! session. The order of those steps is what recovery relies on (see the module doc of `store`).

use std::thread;

use sled::transaction::TransactionError;
use tokio::sync::{mpsc, oneshot};

use super::model::MessageRecord;
use super::tx::Plan;
use super::{Body, Engine, Inner, Store, StoreError};

pub(super) struct CommitRequest {
    pub(super) record: MessageRecord,
    pub(super) body: Body,
    pub(super) plan: Option<Plan>,
    pub(super) done: oneshot::Sender<Result<MessageRecord, String>>,
}

/// The committer thread's handle. When the last `Store` clone goes, the queue closes, the thread
/// finishes what it was sent, and `drop` waits for it: so when a `Store` is gone, the database
/// is closed and its lock released (a restart in the same process can open it at once).
pub(super) struct Committer {
    pub(super) commits: Option<mpsc::Sender<CommitRequest>>,
    /// One thread for sled; one per committer connection for PostgreSQL.
    pub(super) threads: Vec<thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.commits.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How many commit requests may wait for the committer. When full, sessions wait at end-of-data
/// (the client waits for its reply); nothing is dropped.
pub(super) const COMMIT_QUEUE: usize = 4096;

impl Store {
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

    /// Run `plan` and write the record in one transaction on the calling thread, without a
    /// flush: for tools on throw-away stores (`route --explain`, benchmarks). The server uses
    /// `commit`, which is durable.
    pub fn apply_volatile(
        &self,
        record: &MessageRecord,
        body: &Body,
        plan: Option<&Plan>,
    ) -> Result<MessageRecord, StoreError> {
        let engine = self.inner.engine()?;
        transact_items(&engine, &[(record, body, plan)])
            .map(|mut v| v.remove(0))
            .map_err(super::tx_error)
    }
}

impl Inner {
    /// The committer loop: take every waiting request (up to `max_batch`), make them durable
    /// together, answer them all. Ends when every `Store` handle is dropped.
    pub(super) fn run(&self, mut rx: mpsc::Receiver<CommitRequest>, max_batch: usize) {
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
            if results.iter().any(Result::is_ok) {
                self.counts
                    .commits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
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
    ///
    /// A storage failure (a full disk) fails the whole batch and reopens the database before
    /// anything else reads it, so records whose flush failed never stay visible; the next batch
    /// finds a database that takes writes again once the cause is gone.
    fn commit_batch(&self, batch: &[CommitRequest]) -> Vec<Result<MessageRecord, String>> {
        let fail_all =
            |e: &dyn std::fmt::Display| batch.iter().map(|_| Err(e.to_string())).collect();
        let engine = match self.engine() {
            Ok(engine) => engine,
            Err(e) => return fail_all(&e),
        };
        let mut spooled = false;
        for req in batch {
            if let Body::Spooled { .. } = req.body {
                if let Err(e) = self.spool.publish(&req.record.queue_id) {
                    return self.unpublish(batch, fail_all(&e));
                }
                spooled = true;
            }
        }
        if spooled {
            if let Err(e) = self.spool.sync_msg_dir() {
                return self.unpublish(batch, fail_all(&e));
            }
        }
        let mut storage_failed = None;
        let results = match self.transact(&engine, batch) {
            Ok(records) => records.into_iter().map(Ok).collect(),
            Err(TransactionError::Abort(_)) if batch.len() > 1 => batch
                .iter()
                .map(
                    |req| match self.transact(&engine, std::slice::from_ref(req)) {
                        Ok(mut r) => Ok(r.remove(0)),
                        Err(TransactionError::Abort(reason)) => Err(reason),
                        Err(TransactionError::Storage(e)) => {
                            let e = StoreError::Db(e);
                            let text = e.to_string();
                            storage_failed = Some(e);
                            Err(text)
                        }
                    },
                )
                .collect(),
            Err(TransactionError::Abort(reason)) => {
                return self.unpublish(batch, fail_all(&reason))
            }
            Err(TransactionError::Storage(e)) => {
                storage_failed = Some(StoreError::Db(e));
                Vec::new()
            }
        };
        let flushed = match storage_failed {
            Some(e) => Err(e),
            None => engine.db.flush().map(drop).map_err(StoreError::Db),
        };
        match flushed {
            Ok(()) => self.unpublish(batch, results),
            Err(e) => {
                self.write_failed(&e);
                // Our handle must go before the reopen can take the database's lock.
                drop(engine);
                let _ = self.heal();
                self.unpublish(batch, fail_all(&e))
            }
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
        engine: &Engine,
        reqs: &[CommitRequest],
    ) -> Result<Vec<MessageRecord>, TransactionError<String>> {
        let items: Vec<_> = reqs
            .iter()
            .map(|r| (&r.record, &r.body, r.plan.as_ref()))
            .collect();
        transact_items(engine, &items)
    }
}

/// One transaction over every tree for `items`, in order.
fn transact_items(
    engine: &Engine,
    items: &[(&MessageRecord, &Body, Option<&Plan>)],
) -> Result<Vec<MessageRecord>, TransactionError<String>> {
    engine.transaction(|tx| {
        let mut out = Vec::with_capacity(items.len());
        for (record, body, plan) in items {
            let mut record = (*record).clone();
            if let Some(plan) = plan {
                super::tx::run_plan(plan, tx, &mut record)?;
            }
            if let Body::Inline(bytes) = body {
                tx.put_body(&record.queue_id, &bytes[..])?;
            }
            tx.put_message(&record)?;
            out.push(record);
        }
        Ok(out)
    })
}
