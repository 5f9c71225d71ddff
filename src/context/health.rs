//! The running server -> whether it can take mail now (`Readiness`), for a load balancer's or
//! orchestrator's readiness probe. The HTTP layer serves it; this module only answers.
//!
//! Ready means all three: the store takes a flushed write, every SMTP listener's accept loop is
//! running, and the configured nameservers answer. Without DNS every checked message would be
//! deferred (451 4.7.0), so a node that cannot resolve is better taken out of rotation. The DNS
//! answer is cached for `DNS_CACHE` so that frequent probes cost one query per interval, and
//! the store's for `STORE_CACHE` (the endpoint needs no token: probes must not cost a flushed
//! write each).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Ctx;

/// How long a DNS probe result is reused.
pub const DNS_CACHE: Duration = Duration::from_secs(10);
/// How long a store probe result is reused. The probe is a flushed write: unauthenticated
/// clients may ask for `/readyz` as often as they like, the disk sees one probe per interval.
pub const STORE_CACHE: Duration = Duration::from_secs(2);
/// How long a check waits for the store probe. A database that neither answers nor refuses (a
/// host gone behind a partition, a frozen server) would otherwise hold `/readyz` with it; past
/// this the store counts as not writable. The probe itself keeps running: the next check waits
/// on that one again instead of starting another, so at most one probe is ever in flight.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub store_writable: bool,
    pub listeners_up: bool,
    pub dns_reachable: bool,
    /// All of the above.
    pub ready: bool,
    /// What is wrong, one entry per failed check (`[]` when ready: never a missing key).
    pub problems: Vec<String>,
}

/// What readiness needs to remember between probes.
#[derive(Default)]
pub(crate) struct HealthState {
    /// Accept loops `Bound::run` started.
    listeners_expected: AtomicUsize,
    /// Accept loops running now (each holds a `ListenerRunning`).
    listeners_running: AtomicUsize,
    /// The last DNS probe: when, and its outcome. A tokio mutex, held across the probe, so that
    /// probes arriving together wait for one query instead of each sending their own.
    dns: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// The last store probe, shared the same way.
    store: tokio::sync::Mutex<StoreProbe>,
}

/// The store probe's last result, and a probe still running past `STORE_PROBE_TIMEOUT`.
#[derive(Default)]
struct StoreProbe {
    last: Option<(Instant, Result<(), String>)>,
    /// When it started, and the probe itself.
    running: Option<(Instant, tokio::task::JoinHandle<Result<(), String>>)>,
}

/// Held by an accept loop while it runs.
pub(crate) struct ListenerRunning<'a>(&'a HealthState);

impl HealthState {
    pub(crate) fn expect_listeners(&self, n: usize) {
        self.listeners_expected.store(n, Ordering::SeqCst);
    }

    pub(crate) fn listener_running(&self) -> ListenerRunning<'_> {
        self.listeners_running.fetch_add(1, Ordering::SeqCst);
        ListenerRunning(self)
    }
}

impl Drop for ListenerRunning<'_> {
    fn drop(&mut self) {
        self.0.listeners_running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Run a store probe, or wait again for the one still running, at most `STORE_PROBE_TIMEOUT`.
async fn probe_store(ctx: &Ctx, probe: &mut StoreProbe) -> Result<(), String> {
    let (started, mut running) = match probe.running.take() {
        Some(still) => still,
        None => {
            // sled's flush is blocking file I/O, PostgreSQL's client a blocking call.
            ctx.metrics.readiness_store_probes.inc();
            let store = ctx.store.clone();
            let task =
                tokio::task::spawn_blocking(move || store.probe_write().map_err(|e| e.to_string()));
            (Instant::now(), task)
        }
    };
    match tokio::time::timeout(STORE_PROBE_TIMEOUT, &mut running).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("probe failed: {e}")),
        Err(_) => {
            probe.running = Some((started, running));
            Err(format!(
                "no answer to a write probe for {} s",
                started.elapsed().as_secs()
            ))
        }
    }
}

/// Check the store, the listeners and DNS now (DNS from a cache of at most `DNS_CACHE`).
pub async fn readiness(ctx: &Ctx) -> Readiness {
    let mut problems = Vec::new();

    let store = {
        let mut probe = ctx.health.store.lock().await;
        match &probe.last {
            Some((at, result)) if at.elapsed() < STORE_CACHE => result.clone(),
            _ => {
                let result = probe_store(ctx, &mut probe).await;
                probe.last = Some((Instant::now(), result.clone()));
                result
            }
        }
    };
    let store_writable = store.is_ok();
    if let Err(e) = store {
        problems.push(format!("store: {e}"));
    }

    let expected = ctx.health.listeners_expected.load(Ordering::SeqCst);
    let running = ctx.health.listeners_running.load(Ordering::SeqCst);
    let listeners_up = expected > 0 && running == expected;
    if !listeners_up {
        problems.push(format!(
            "listeners: {running} of {expected} accept loops running"
        ));
    }

    let dns = {
        let mut last = ctx.health.dns.lock().await;
        match &*last {
            Some((at, result)) if at.elapsed() < DNS_CACHE => result.clone(),
            _ => {
                let result = ctx.dns.probe().await;
                *last = Some((Instant::now(), result.clone()));
                result
            }
        }
    };
    let dns_reachable = dns.is_ok();
    if let Err(e) = dns {
        problems.push(format!("dns: {e}"));
    }

    Readiness {
        store_writable,
        listeners_up,
        dns_reachable,
        ready: store_writable && listeners_up && dns_reachable,
        problems,
    }
}
