//! The outbox worker: takes due items in order, delivers up to `outbox.concurrency` at once, and
//! records each outcome in one durable transaction: delivered items leave the outbox, failed
//! ones get their next attempt (exponential backoff with jitter, capped), and items older than
//! `outbox.max_lifetime` are given up and logged at error level with what was lost (the
//! "bounce to the log").
//!
//! Delivery is at least once: an item leaves the outbox only after the relay or endpoint took
//! it. At shutdown the worker stops taking new items and waits for the ones in flight to finish
//! and be recorded, so a graceful restart sends nothing twice. A crash between the relay's 250
//! and the record of it would send that one item again after restart; mail carries a stable
//! Message-ID and webhooks an `Idempotency-Key`, so such a copy is recognisable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::{Delivery, OutboxItem};
use crate::config::outbound::OutboxConfig;
use crate::config::Config;
use crate::context::{Ctx, Shutdown};
use crate::store::{keys, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    /// Worth trying again later.
    Retry(String),
    /// Will never work (the relay refused the mail with 5xx, the endpoint is gone from config).
    Permanent(String),
}

/// How long to wait before attempt `attempts + 1`: `retry_initial * 2^(attempts-1)`, capped at
/// `retry_max`, plus up to 10% jitter so items that failed together do not retry together.
pub fn backoff(cfg: &OutboxConfig, attempts: u32, id: &str) -> Duration {
    let base = cfg
        .retry_initial
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(cfg.retry_max);
    let seed = id.bytes().fold(attempts as u64, |h, b| {
        h.wrapping_mul(31).wrapping_add(b as u64)
    });
    let jitter_ms = (base.as_millis() as u64 / 10).max(1);
    base + Duration::from_millis(seed % jitter_ms)
}

/// Deliver one item with the config in force now.
async fn deliver(config: Arc<Config>, item: OutboxItem) -> (OutboxItem, Outcome) {
    let outcome = match &item.delivery {
        Delivery::Mail { to, message, .. } => match &config.outbound.relay {
            Some(relay) => super::mail::send(relay, &config.hostname, to, message).await,
            None => Outcome::Retry("no [relay] configured".into()),
        },
        Delivery::Webhook {
            endpoint,
            event,
            event_id,
            body,
        } => match config.outbound.webhooks.iter().find(|w| &w.id == endpoint) {
            Some(w) => {
                let call = super::webhook::Call {
                    event,
                    event_id,
                    delivery_id: &item.id,
                    body,
                    now_ms: keys::now_ms(),
                };
                super::webhook::post(w, &call).await
            }
            None => Outcome::Permanent(format!("webhook {endpoint:?} is no longer configured")),
        },
    };
    (item, outcome)
}

/// What `settle` did, for the log.
enum Settled {
    Removed,
    Rescheduled(u64),
    GaveUp,
    Gone,
}

/// Record an outcome durably.
fn settle(
    store: &Store,
    cfg: &OutboxConfig,
    item: &OutboxItem,
    outcome: &Outcome,
    now: u64,
) -> Result<Settled, StoreError> {
    store.update(|tx| {
        // Another node's now (our lease ran out) or settled meanwhile: nothing of ours to record.
        let Some(old) = tx.outbox_claimed(&item.id)? else {
            return Ok(Settled::Gone);
        };
        let mut cur = old.clone();
        let reason = match outcome {
            Outcome::Delivered(_) | Outcome::Permanent(_) => None,
            Outcome::Retry(e) => Some(e),
        };
        let expired = now
            >= cur
                .created_at
                .saturating_add(cfg.max_lifetime.as_millis() as u64);
        match reason {
            Some(e) if !expired => {
                cur.attempts += 1;
                cur.last_error = Some(e.clone());
                cur.next_attempt_at = now + backoff(cfg, cur.attempts, &cur.id).as_millis() as u64;
                tx.outbox_update(&old, &cur)?;
                Ok(Settled::Rescheduled(cur.next_attempt_at))
            }
            _ => {
                tx.outbox_remove(&old)?;
                Ok(if reason.is_some() {
                    Settled::GaveUp
                } else {
                    Settled::Removed
                })
            }
        }
    })
}

/// `inbound_webhook_deliveries_total` / `inbound_relay_deliveries_total` by outcome.
fn count_outcome(
    metrics: &crate::metrics::Metrics,
    item: &OutboxItem,
    outcome: &Outcome,
    settled: &Settled,
) {
    use crate::metrics::DeliveryOutcome as D;
    let counted = match (outcome, settled) {
        (_, Settled::Gone) | (Outcome::Retry(_), Settled::Removed) => return,
        (Outcome::Delivered(_), _) => D::Delivered,
        (Outcome::Permanent(_), _) => D::Failed,
        (Outcome::Retry(_), Settled::GaveUp) => D::GaveUp,
        (Outcome::Retry(_), Settled::Rescheduled(_)) => D::Retry,
    };
    match item.delivery {
        super::Delivery::Mail { .. } => metrics.relay_deliveries.inc(counted),
        super::Delivery::Webhook { .. } => metrics.webhook_deliveries.inc(counted),
    }
}

fn log_outcome(item: &OutboxItem, outcome: &Outcome, settled: &Settled) {
    let what = item.describe();
    let attempts = item.attempts + 1;
    match (outcome, settled) {
        (_, Settled::Gone) => {}
        (Outcome::Delivered(how), _) => {
            info!(outbox_id = %item.id, attempts, detail = %how, "outbox: delivered {what}")
        }
        (Outcome::Permanent(why), _) => error!(
            outbox_id = %item.id, attempts, error = %why,
            "outbox: delivery failed permanently, dropped (bounce): {what}"
        ),
        (Outcome::Retry(why), Settled::GaveUp) => error!(
            outbox_id = %item.id, attempts, error = %why, created_at = %crate::util::rfc3339(item.created_at),
            "outbox: gave up after the outbox lifetime, dropped (bounce): {what}"
        ),
        (Outcome::Retry(why), Settled::Rescheduled(next)) => warn!(
            outbox_id = %item.id, attempts, error = %why, next_attempt = %crate::util::rfc3339(*next),
            "outbox: delivery failed, will retry: {what}"
        ),
        (Outcome::Retry(_), Settled::Removed) => {}
    }
}

/// Longest the worker waits at shutdown for deliveries in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Failures in a row after which a destination's circuit opens: nothing is sent to it for a
/// cool-down that follows the retry schedule (`retry_initial`, doubling each time it opens
/// again, at most `retry_max`); then one delivery tries it again.
const BREAKER_FAILURES: u32 = 5;
/// How long an outcome that could not be recorded waits before recording is tried again:
/// doubling from the first to the last. Failed bookkeeping backs off like a failed delivery.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(500);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(60);
/// How many due items one scan reads at most, so that items of a destination that is full or
/// whose circuit is open cannot hide the items behind them.
const SCAN_WINDOW: usize = 256;

/// A destination's recent failures.
#[derive(Default)]
struct Breaker {
    /// Failed deliveries in a row.
    failures: u32,
    /// Times the circuit opened in a row (for the doubling).
    trips: u32,
    open_until: Option<Instant>,
}

/// An outcome the worker got but could not record (the store refused the write). The item is
/// not delivered again while it waits here: only its recording is retried. A restart before it
/// is recorded delivers it once more (at least once).
struct Unrecorded {
    item: OutboxItem,
    outcome: Outcome,
    tries: u32,
    retry_at: Instant,
}

/// What the worker keeps between loop turns.
#[derive(Default)]
struct Flow {
    /// Items being delivered or waiting for their outcome to be recorded.
    in_flight: HashSet<String>,
    /// Deliveries running now, per destination.
    per_endpoint: HashMap<String, usize>,
    breakers: HashMap<String, Breaker>,
    unrecorded: HashMap<String, Unrecorded>,
    /// After a failed read of the schedule, the next read waits until then.
    read_retry_at: Option<Instant>,
    read_failures: u32,
}

/// `first * 2^(n-1)`, at most `max`.
fn doubling(first: Duration, n: u32, max: Duration) -> Duration {
    first
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max)
}

impl Flow {
    /// Whether `item` may start now: not already in flight, its destination's circuit closed
    /// (or its cool-down over) and below its concurrency.
    fn may_start(&self, item: &OutboxItem, cfg: &OutboxConfig, now: Instant) -> bool {
        let dest = item.destination();
        !self.in_flight.contains(&item.id)
            && self
                .breakers
                .get(&dest)
                .and_then(|b| b.open_until)
                .is_none_or(|t| now >= t)
            && self.per_endpoint.get(&dest).copied().unwrap_or(0) < cfg.per_endpoint_concurrency
    }

    fn started(&mut self, item: &OutboxItem) {
        self.in_flight.insert(item.id.clone());
        *self.per_endpoint.entry(item.destination()).or_default() += 1;
    }

    /// A delivery ended (recorded or not): free its destination's slot and update its breaker.
    fn delivered(&mut self, item: &OutboxItem, outcome: &Outcome, cfg: &OutboxConfig) {
        let dest = item.destination();
        if let Some(n) = self.per_endpoint.get_mut(&dest) {
            *n = n.saturating_sub(1);
        }
        let b = self.breakers.entry(dest.clone()).or_default();
        match outcome {
            // The destination answered: a 5xx refusal is about the message, not its health.
            Outcome::Delivered(_) | Outcome::Permanent(_) => *b = Breaker::default(),
            Outcome::Retry(why) => {
                b.failures += 1;
                if b.failures >= BREAKER_FAILURES {
                    b.trips += 1;
                    let cooldown = doubling(cfg.retry_initial, b.trips, cfg.retry_max);
                    b.open_until = Some(Instant::now() + cooldown);
                    warn!(
                        destination = %dest, failures = b.failures, error = %why,
                        cooldown_ms = cooldown.as_millis() as u64,
                        "outbox: destination failing repeatedly; circuit open, nothing sent to it until the cool-down ends"
                    );
                }
            }
        }
    }

    /// When the loop must wake next on its own: the poll interval, or sooner for an outcome
    /// waiting to be recorded.
    fn next_wake(&self, poll: Duration, now: Instant) -> Duration {
        self.unrecorded
            .values()
            .map(|u| u.retry_at.saturating_duration_since(now))
            .chain(self.read_retry_at.map(|t| t.saturating_duration_since(now)))
            .fold(poll, Duration::min)
    }
}

/// How often the outbox gauges (depth, oldest age) are read again.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Run until shutdown. `wake` is notified whenever something was queued, so new items go out
/// at once rather than at the next poll.
pub async fn run(ctx: Arc<Ctx>, wake: Arc<Notify>, mut shutdown: Shutdown) {
    let mut flow = Flow::default();
    let mut tasks: JoinSet<(OutboxItem, Outcome)> = JoinSet::new();
    let mut gauges_at: Option<Instant> = None;
    // Whether something may have changed the outbox since the gauges were read.
    let mut gauges_stale = true;
    loop {
        let config = ctx.config();
        let cfg = config.outbound.outbox.clone();
        // The gauges at most once a second: every commit wakes this loop, and on a shared
        // store each reading is a query (the depth a count), hundreds a second under load.
        // Skipped ones are read at the next second (`idle` below), so a gauge lags by at most
        // `GAUGES_EVERY`.
        if gauges_at.is_none_or(|t| t.elapsed() >= GAUGES_EVERY) {
            gauges_at = Some(Instant::now());
            gauges_stale = false;
            if let Ok(depth) = ctx.store.outbox_depth() {
                ctx.metrics.set_outbox_depth(depth.max(0) as u64);
            }
            // Items are keyed by ULID: the first is the oldest still waiting.
            if let Ok(oldest) = ctx.store.outbox_oldest() {
                let age_ms = oldest.map_or(0, |i| keys::now_ms().saturating_sub(i.created_at));
                ctx.metrics.set_outbox_oldest_age(age_ms / 1000);
            }
        }
        record_waiting(&ctx.store, &ctx.metrics, &cfg, &mut flow).await;
        // While outcomes wait to be recorded the store refuses writes: delivering more would
        // only add outcomes it cannot record.
        let now = Instant::now();
        if tasks.len() < cfg.concurrency
            && flow.unrecorded.is_empty()
            && flow.read_retry_at.is_none_or(|t| now >= t)
        {
            match ctx.store.outbox_due(keys::now_ms(), SCAN_WINDOW) {
                Ok(items) => {
                    flow.read_retry_at = None;
                    flow.read_failures = 0;
                    let mut not_started = Vec::new();
                    for item in items {
                        if tasks.len() < cfg.concurrency && flow.may_start(&item, &cfg, now) {
                            flow.started(&item);
                            tasks.spawn(deliver(config.clone(), item));
                        } else {
                            not_started.push(item);
                        }
                    }
                    // On a shared store reading claimed them for this node: hand back at once
                    // what it will not deliver now, for any node to take.
                    if let Err(e) = ctx.store.outbox_release(&not_started) {
                        warn!(error = %e, "outbox: cannot hand back undelivered claims (they are due again when the lease runs out)");
                    }
                }
                Err(e) => {
                    flow.read_failures += 1;
                    let wait = doubling(RECORD_RETRY_FIRST, flow.read_failures, RECORD_RETRY_MAX);
                    flow.read_retry_at = Some(now + wait);
                    error!(error = %e, retry_in_ms = wait.as_millis() as u64, "outbox: cannot read due items");
                }
            }
        }
        let mut idle = flow.next_wake(cfg.poll_interval, Instant::now());
        if gauges_stale {
            let read_at = gauges_at.map_or(Instant::now(), |t| t + GAUGES_EVERY);
            idle = idle.min(read_at.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok((item, outcome)) = done {
                    finish(&ctx.store, &ctx.metrics, &cfg, &mut flow, item, outcome).await;
                }
                gauges_stale = true;
            }
            _ = wake.notified() => gauges_stale = true,
            _ = tokio::time::sleep(idle) => {}
        }
    }
    // Let deliveries in flight finish and be recorded, so a graceful restart repeats nothing.
    let cfg = ctx.config().outbound.outbox.clone();
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok((item, outcome)))) => {
                finish(&ctx.store, &ctx.metrics, &cfg, &mut flow, item, outcome).await
            }
            Ok(Some(Err(_))) => {}
            Ok(None) => break,
            Err(_) => {
                warn!(
                    in_flight = tasks.len(),
                    "outbox: shutdown while deliveries were in flight; they will be retried at start"
                );
                tasks.abort_all();
                break;
            }
        }
    }
    // One last try for outcomes still unrecorded; what fails is delivered again after restart.
    for u in flow.unrecorded.values_mut() {
        u.retry_at = Instant::now();
    }
    record_waiting(&ctx.store, &ctx.metrics, &cfg, &mut flow).await;
    if !flow.unrecorded.is_empty() {
        warn!(
            unrecorded = flow.unrecorded.len(),
            "outbox: delivered items whose outcome could not be recorded will be delivered once more after restart"
        );
    }
}

/// Record `outcome` durably off the async threads.
async fn record(
    store: &Store,
    cfg: &OutboxConfig,
    item: OutboxItem,
    outcome: Outcome,
) -> (OutboxItem, Outcome, Result<Settled, String>) {
    let (store, cfg) = (store.clone(), cfg.clone());
    let id = item.id.clone();
    let fallback = (item.clone(), outcome.clone());
    match tokio::task::spawn_blocking(move || {
        let r = settle(&store, &cfg, &item, &outcome, keys::now_ms()).map_err(|e| e.to_string());
        (item, outcome, r)
    })
    .await
    {
        Ok(done) => done,
        Err(e) => (
            fallback.0,
            fallback.1,
            Err(format!("settle task for {id} failed: {e}")),
        ),
    }
}

/// A delivery finished: record its outcome, or keep it to record later without delivering the
/// item again.
async fn finish(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    cfg: &OutboxConfig,
    flow: &mut Flow,
    item: OutboxItem,
    outcome: Outcome,
) {
    flow.delivered(&item, &outcome, cfg);
    let (item, outcome, settled) = record(store, cfg, item, outcome).await;
    match settled {
        Ok(s) => {
            count_outcome(metrics, &item, &outcome, &s);
            log_outcome(&item, &outcome, &s);
            flow.in_flight.remove(&item.id);
        }
        Err(e) => {
            let retry_at = Instant::now() + RECORD_RETRY_FIRST;
            error!(outbox_id = %item.id, error = %e, "outbox: cannot record a delivery outcome; recording is retried with backoff, the item is not sent again meanwhile");
            flow.unrecorded.insert(
                item.id.clone(),
                Unrecorded {
                    item,
                    outcome,
                    tries: 1,
                    retry_at,
                },
            );
        }
    }
}

/// Try again to record the outcomes whose time has come.
async fn record_waiting(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    cfg: &OutboxConfig,
    flow: &mut Flow,
) {
    let now = Instant::now();
    let due: Vec<String> = flow
        .unrecorded
        .iter()
        .filter(|(_, u)| u.retry_at <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for id in due {
        let Some(u) = flow.unrecorded.remove(&id) else {
            continue;
        };
        let tries = u.tries;
        let (item, outcome, settled) = record(store, cfg, u.item, u.outcome).await;
        match settled {
            Ok(s) => {
                count_outcome(metrics, &item, &outcome, &s);
                log_outcome(&item, &outcome, &s);
                flow.in_flight.remove(&item.id);
            }
            Err(e) => {
                let wait = doubling(RECORD_RETRY_FIRST, tries + 1, RECORD_RETRY_MAX);
                warn!(outbox_id = %item.id, error = %e, retry_in_ms = wait.as_millis() as u64, "outbox: still cannot record a delivery outcome");
                flow.unrecorded.insert(
                    id,
                    Unrecorded {
                        item,
                        outcome,
                        tries: tries + 1,
                        retry_at: Instant::now() + wait,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let cfg = OutboxConfig {
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(60),
            ..Default::default()
        };
        let b = |n| backoff(&cfg, n, "01JEXAMPLE").as_millis() as u64;
        assert!((10_000..11_000).contains(&b(1)), "{}", b(1));
        assert!((20_000..22_000).contains(&b(2)), "{}", b(2));
        assert!((40_000..44_000).contains(&b(3)), "{}", b(3));
        assert!((60_000..66_000).contains(&b(4)), "{}", b(4));
        assert!((60_000..66_000).contains(&b(40)), "{}", b(40));
    }
}
