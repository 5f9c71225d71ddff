//! What every stage shares, below all of them: the running server's context (`Ctx`: config
//! handle, store, limits, DNS, metrics, the auth memory budget), the shutdown signal, the TLS
//! acceptor, readiness state and config reload. Stages import this module; it imports no stage
//! but the store, config and the small leaf modules, so `server/` only has to start things.

pub mod health;
pub mod reload;
pub mod shutdown;
pub mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigSource};
use crate::dns::{Dns, DnsSetupError};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Store;
pub use reload::{ReloadError, ReloadSummary};
pub use shutdown::Shutdown;

/// What every session shares.
pub struct Ctx {
    config: RwLock<Arc<Config>>,
    pub store: Store,
    pub limits: Arc<Limits>,
    /// STARTTLS; replaced by a reload (certificate renewal), read once per use like the config.
    tls: RwLock<Option<TlsAcceptor>>,
    pub shutdown: Shutdown,
    pub dns: Arc<Dns>,
    /// KiB of message bodies that authentication may hold in memory at once. When used up, the
    /// next large message waits for its check (its client waits for the end-of-data reply).
    pub auth_budget: Arc<Semaphore>,
    /// Wakes the outbox worker after something was queued.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    pub metrics: Metrics,
    pub(crate) health: health::HealthState,
    /// Where the config came from, so `reload` reads it again the same way.
    source: ConfigSource,
    /// One reload at a time (SIGHUP and the HTTP API may ask at once): each compares against the
    /// config the other installed.
    reload_lock: Mutex<()>,
    /// The store's definitions generation the config in force was compiled at
    /// (`follow_definitions`); `u64::MAX` before the first look.
    definitions_seen: AtomicU64,
}

impl Ctx {
    /// Build the shared context from parts that are already open. `bind` makes one for the real
    /// server; harnesses that drive a `Session` without sockets (`smtp::fuzzing`) make their own.
    /// The caller keeps the `Trigger` behind `shutdown` alive: dropping it starts the shutdown.
    pub fn new(
        config: Config,
        store: Store,
        tls: Option<TlsAcceptor>,
        shutdown: Shutdown,
    ) -> Result<Ctx, DnsSetupError> {
        let dns = Arc::new(Dns::new(&config.dns)?);
        let auth_budget = Arc::new(Semaphore::new(
            auth_budget_kib(config.auth.max_inflight_bytes) as usize,
        ));
        Ok(Ctx {
            limits: Limits::new(config.limits.clone()),
            config: RwLock::new(Arc::new(config)),
            store,
            tls: RwLock::new(tls),
            shutdown,
            dns,
            auth_budget,
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            metrics: Metrics::new(),
            health: health::HealthState::default(),
            source: ConfigSource::default(),
            reload_lock: Mutex::new(()),
            definitions_seen: AtomicU64::new(u64::MAX),
        })
    }

    /// Record where the config came from (the file and the command-line overrides), so that
    /// `reload` can read it again. Without it, reload answers that there is no file.
    pub fn with_source(mut self, source: ConfigSource) -> Ctx {
        self.source = source;
        self
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// The STARTTLS acceptor in force now, if TLS is offered.
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Held while the inboxes, users and teams created through the API change (and by reload):
    /// each change validates against the config the previous one installed, so none is lost.
    /// On a store other nodes write too, the config first takes in what they changed, so a
    /// change here validates against theirs (a rule naming a user made on another node).
    pub fn config_change(&self) -> std::sync::MutexGuard<'_, ()> {
        let guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.follow_definitions_locked();
        guard
    }

    /// On a store shared with other nodes: when the inbox, user or team definitions were
    /// written since the config in force was compiled (by any node), compile them again with
    /// this node's file and put the result in force. Cheap when nothing changed (one read of a
    /// count). Called every second by the server, before refusing a recipient as unknown, and
    /// before every change through the API. Blocking: call it from a blocking context.
    pub fn follow_definitions(&self) {
        if self.definitions_moved().is_some() {
            drop(self.config_change());
        }
    }

    /// The store's generation when it differs from the one in force; `None` when they are the
    /// same, on the embedded store, or when the store cannot be read (the next look retries).
    fn definitions_moved(&self) -> Option<u64> {
        match self.store.definitions_generation() {
            Ok(Some(g)) if g != self.definitions_seen.load(Ordering::Acquire) => Some(g),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the definitions generation");
                None
            }
        }
    }

    fn follow_definitions_locked(&self) {
        let Some(generation) = self.definitions_moved() else {
            return;
        };
        // The count is read before the definitions: a write between the two is compiled now
        // and once more at the next look, never missed.
        let merged = match reload::with_store_definitions(&self.config(), &self.store) {
            Ok(merged) => merged,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the definitions other nodes changed; will retry");
                return;
            }
        };
        match merged {
            Ok(config) => {
                self.install_config(config);
                tracing::debug!(
                    generation,
                    "definitions changed by another node are in force"
                );
            }
            Err(errors) => tracing::warn!(
                generation,
                errors = %errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                "the inboxes, users or teams written to the shared store do not compile with this node's config file; the config in force is unchanged"
            ),
        }
        self.definitions_seen.store(generation, Ordering::Release);
    }

    /// Put `config` in force (after an API change to the inboxes, users or teams committed; hold
    /// `config_change`).
    pub fn install_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// The config in force now. Sessions take a snapshot per use, so a reload never changes the
    /// rules in the middle of a command.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The authentication memory budget in KiB permits (what `acquire_many` counts in).
pub fn auth_budget_kib(bytes: u64) -> u32 {
    (bytes / 1024).clamp(1, u32::MAX as u64 >> 4) as u32
}
