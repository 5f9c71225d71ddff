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

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::{due_key, Delivery, OutboxItem, DEPTH_KEY};
use crate::config::outbound::OutboxConfig;
use crate::config::Config;
use crate::context::{Ctx, Shutdown};
use crate::store::{keys, Store, StoreError, TreeId};

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
        let id = item.id.as_bytes();
        let Some(mut cur) = tx.get_json::<OutboxItem>(TreeId::Outbox, id)? else {
            return Ok(Settled::Gone);
        };
        tx.remove(TreeId::OutboxDue, &due_key(cur.next_attempt_at, &cur.id))?;
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
                tx.put_json(TreeId::Outbox, id, &cur)?;
                tx.insert(
                    TreeId::OutboxDue,
                    &due_key(cur.next_attempt_at, &cur.id),
                    b"",
                )?;
                Ok(Settled::Rescheduled(cur.next_attempt_at))
            }
            _ => {
                tx.remove(TreeId::Outbox, id)?;
                tx.add(DEPTH_KEY, -1)?;
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

/// Run until shutdown. `wake` is notified whenever something was queued, so new items go out
/// at once rather than at the next poll.
pub async fn run(ctx: Arc<Ctx>, wake: Arc<Notify>, mut shutdown: Shutdown) {
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<(OutboxItem, Outcome)> = JoinSet::new();
    loop {
        let config = ctx.config();
        let cfg = config.outbound.outbox.clone();
        if let Ok(depth) = ctx.store.counter(DEPTH_KEY) {
            ctx.metrics.set_outbox_depth(depth.max(0) as u64);
        }
        // Items are keyed by ULID: the first is the oldest still waiting.
        if let Ok(oldest) = ctx.store.outbox_oldest::<OutboxItem>() {
            let age_ms = oldest.map_or(0, |i| keys::now_ms().saturating_sub(i.created_at));
            ctx.metrics.set_outbox_oldest_age(age_ms / 1000);
        }
        if tasks.len() < cfg.concurrency {
            let want = cfg.concurrency - tasks.len() + in_flight.len();
            match ctx.store.outbox_due::<OutboxItem>(keys::now_ms(), want) {
                Ok(items) => {
                    for item in items {
                        if tasks.len() >= cfg.concurrency {
                            break;
                        }
                        if in_flight.insert(item.id.clone()) {
                            tasks.spawn(deliver(config.clone(), item));
                        }
                    }
                }
                Err(e) => error!(error = %e, "outbox: cannot read due items"),
            }
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok((item, outcome)) = done {
                    finish(&ctx.store, &ctx.metrics, &cfg, &mut in_flight, item, outcome).await;
                }
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(cfg.poll_interval) => {}
        }
    }
    // Let deliveries in flight finish and be recorded, so a graceful restart repeats nothing.
    let cfg = ctx.config().outbound.outbox.clone();
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok((item, outcome)))) => {
                finish(
                    &ctx.store,
                    &ctx.metrics,
                    &cfg,
                    &mut in_flight,
                    item,
                    outcome,
                )
                .await
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
}

async fn finish(
    store: &Store,
    metrics: &crate::metrics::Metrics,
    cfg: &OutboxConfig,
    in_flight: &mut HashSet<String>,
    item: OutboxItem,
    outcome: Outcome,
) {
    let id = item.id.clone();
    let (store, cfg2) = (store.clone(), cfg.clone());
    let settled = tokio::task::spawn_blocking(move || {
        let r = settle(&store, &cfg2, &item, &outcome, keys::now_ms());
        (item, outcome, r)
    })
    .await;
    match settled {
        Ok((item, outcome, Ok(s))) => {
            count_outcome(metrics, &item, &outcome, &s);
            log_outcome(&item, &outcome, &s)
        }
        Ok((item, _, Err(e))) => {
            // Not recorded: the item stays due and is tried again (at least once).
            error!(outbox_id = %item.id, error = %e, "outbox: cannot record a delivery outcome")
        }
        Err(e) => error!(outbox_id = %id, error = %e, "outbox: settle task failed"),
    }
    in_flight.remove(&id);
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
