//! `[retention]` + the store + now -> what was removed (`SweepReport`). Removes what has outlived
//! its configured lifetime: quarantined messages and closed conversations (deleted), session
//! metadata (cleared on the record), message bodies (expired, the record kept).
//!
//! A sweep reads records in pages, oldest first (queue and conversation ids are ULIDs, so key
//! order is creation order and a pass stops at the first id younger than its cutoff), and applies
//! each page in one transaction of its own through the store's delete/expire/clear operations,
//! which re-check the condition inside the transaction (a message released or a conversation
//! that a new message joined meanwhile is left alone). So no transaction spans more than one
//! page, and sessions committing meanwhile wait at most for one page.
//!
//! The message passes keep a cursor each (in the counters tree): every record before it is done
//! for good (its body expired, its metadata cleared, or it was quarantined and is deleted, or it
//! never can be), so a sweep only reads what is new since the last one instead of the whole
//! history. The conversation pass has no cursor: an open conversation can close later, so it reads
//! every conversation created before its cutoff.
//!
//! Rejected messages are never stored (a refusal leaves nothing), so there is nothing of them to
//! expire.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::keys::id_time_ms;
use super::{MessageRecord, Store, StoreError, BODY_EXPIRED};
use crate::config::RetentionConfig;

/// Records read, and changed in one transaction, at a time.
const PAGE: usize = 128;

/// A message pass never moves its cursor past messages younger than this: a message's queue id
/// is made at DATA and its record committed when the data is in and checked, so a record can
/// appear behind ids already passed. An hour is far longer than any transaction takes.
const CURSOR_LAG: Duration = Duration::from_secs(3600);

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub quarantined_deleted: usize,
    pub conversations_deleted: usize,
    /// Messages deleted because their (every) conversation was.
    pub conversation_messages_deleted: usize,
    pub session_metadata_cleared: usize,
    pub bodies_expired: usize,
    /// The sweep stopped early because shutdown began.
    pub interrupted: bool,
    /// The store error that ended the sweep early; what is counted above was done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl SweepReport {
    pub fn removed_anything(&self) -> bool {
        self.quarantined_deleted
            + self.conversations_deleted
            + self.conversation_messages_deleted
            + self.session_metadata_cleared
            + self.bodies_expired
            > 0
    }

    /// One log line: info when something was removed, debug when nothing was, warn on an error.
    pub fn log(&self) {
        if let Some(e) = &self.error {
            tracing::warn!(
                error = %e,
                quarantined_deleted = self.quarantined_deleted,
                conversations_deleted = self.conversations_deleted,
                conversation_messages_deleted = self.conversation_messages_deleted,
                session_metadata_cleared = self.session_metadata_cleared,
                bodies_expired = self.bodies_expired,
                "retention sweep failed; it resumes at the next interval"
            );
        } else if self.removed_anything() {
            tracing::info!(
                quarantined_deleted = self.quarantined_deleted,
                conversations_deleted = self.conversations_deleted,
                conversation_messages_deleted = self.conversation_messages_deleted,
                session_metadata_cleared = self.session_metadata_cleared,
                bodies_expired = self.bodies_expired,
                interrupted = self.interrupted,
                duration_ms = self.duration_ms,
                "retention sweep"
            );
        } else {
            tracing::debug!(
                duration_ms = self.duration_ms,
                "retention sweep: nothing due"
            );
        }
    }
}

/// One whole sweep at `now_ms`, to the end (for tests and tools).
pub fn sweep_once(store: &Store, cfg: &RetentionConfig, now_ms: u64) -> SweepReport {
    sweep(store, cfg, now_ms, || false)
}

/// One sweep at `now_ms`; `stop` is asked between pages and ends the sweep early when true.
pub fn sweep(
    store: &Store,
    cfg: &RetentionConfig,
    now_ms: u64,
    stop: impl Fn() -> bool,
) -> SweepReport {
    let started = Instant::now();
    let mut report = SweepReport::default();
    let result = run(store, cfg, now_ms, &stop, &mut report);
    report.interrupted = stop();
    if let Err(e) = result {
        report.error = Some(e.to_string());
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

fn cutoff(now_ms: u64, lifetime: Option<Duration>) -> Option<u64> {
    lifetime.map(|d| now_ms.saturating_sub(d.as_millis() as u64))
}

fn run(
    store: &Store,
    cfg: &RetentionConfig,
    now_ms: u64,
    stop: &dyn Fn() -> bool,
    report: &mut SweepReport,
) -> Result<(), StoreError> {
    let settled_before = now_ms.saturating_sub(CURSOR_LAG.as_millis() as u64);
    if let Some(cut) = cutoff(now_ms, cfg.quarantine) {
        let pass = MessagePass {
            cursor_key: "retention:cursor:quarantine",
            cutoff: cut,
            settled_before,
            pending: |r: &MessageRecord| r.quarantined,
        };
        pass.run(store, stop, |ids| {
            let n = store
                .delete_messages_if(ids, |r| r.quarantined && r.received_at <= cut)?
                .len();
            report.quarantined_deleted += n;
            Ok(())
        })?;
    }
    if let Some(cut) = cutoff(now_ms, cfg.conversations) {
        conversations_pass(store, cut, stop, report)?;
    }
    if let Some(cut) = cutoff(now_ms, cfg.session_metadata) {
        let pass = MessagePass {
            cursor_key: "retention:cursor:session_metadata",
            cutoff: cut,
            settled_before,
            pending: |r: &MessageRecord| !r.session_metadata_cleared,
        };
        pass.run(store, stop, |ids| {
            report.session_metadata_cleared +=
                store.clear_session_metadata_if(ids, |r| r.received_at <= cut)?;
            Ok(())
        })?;
    }
    if let Some(cut) = cutoff(now_ms, cfg.bodies) {
        let pass = MessagePass {
            cursor_key: "retention:cursor:bodies",
            cutoff: cut,
            settled_before,
            pending: |r: &MessageRecord| r.body_location != BODY_EXPIRED,
        };
        pass.run(store, stop, |ids| {
            report.bodies_expired += store.expire_bodies_if(ids, |r| r.received_at <= cut)?;
            Ok(())
        })?;
    }
    Ok(())
}

/// One kind of work over the messages, oldest first.
struct MessagePass<P> {
    /// Where the pass's cursor is kept (counters tree).
    cursor_key: &'static str,
    /// Messages received at or before this (unix ms) are due.
    cutoff: u64,
    /// The cursor may only pass ids made before this.
    settled_before: u64,
    /// Whether a message still needs this pass's work (false: done for good, or never needed).
    pending: P,
}

impl<P: Fn(&MessageRecord) -> bool> MessagePass<P> {
    fn run(
        &self,
        store: &Store,
        stop: &dyn Fn() -> bool,
        mut apply: impl FnMut(&[String]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut after = store.state(self.cursor_key)?;
        // The cursor only advances over a prefix in which every message is settled.
        let mut cursor_free = true;
        loop {
            if stop() {
                return Ok(());
            }
            let page = store.list(after.as_deref(), PAGE)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.queue_id.clone());
            let mut due = Vec::new();
            let mut new_cursor = None;
            let mut reached_end = false;
            for r in &page {
                let made = id_time_ms(&r.queue_id).unwrap_or(0);
                if made > self.cutoff {
                    // Every later id is younger still.
                    reached_end = true;
                    break;
                }
                let pending = (self.pending)(r);
                if pending && r.received_at <= self.cutoff {
                    due.push(r.queue_id.clone());
                } else if pending {
                    // Made before the cutoff but received after it (a long transfer): due at a
                    // later sweep, so the cursor must stay before it.
                    cursor_free = false;
                }
                if cursor_free && made < self.settled_before {
                    new_cursor = Some(r.queue_id.as_str());
                }
            }
            if !due.is_empty() {
                apply(&due)?;
            }
            if let Some(c) = new_cursor {
                store.set_state(self.cursor_key, c)?;
            }
            if reached_end || page.len() < PAGE {
                return Ok(());
            }
        }
    }
}

fn conversations_pass(
    store: &Store,
    cut: u64,
    stop: &dyn Fn() -> bool,
    report: &mut SweepReport,
) -> Result<(), StoreError> {
    let mut after: Option<String> = None;
    loop {
        if stop() {
            return Ok(());
        }
        let page = store.conversations(None, after.as_deref(), PAGE)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.id.clone());
        let mut due = Vec::new();
        let mut reached_end = false;
        for c in &page {
            // A conversation is created no later than its last update.
            if id_time_ms(&c.id).unwrap_or(0) > cut {
                reached_end = true;
                break;
            }
            if c.status == super::model::ConversationStatus::Closed && c.updated_at <= cut {
                due.push(c.id.clone());
            }
        }
        if !due.is_empty() {
            let (conversations, messages) = store.delete_closed_conversations(&due, cut)?;
            report.conversations_deleted += conversations;
            report.conversation_messages_deleted += messages;
        }
        if reached_end || page.len() < PAGE {
            return Ok(());
        }
    }
}
