//! What every stage shares, below all of them: the running server's context (`Ctx`: config
//! handle, store, limits, DNS, metrics, the auth memory budget), the shutdown signal, the TLS
//! acceptor, readiness state and config reload. Stages import this module; it imports no stage
//! but the store, config and the small leaf modules, so `server/` only has to start things.

pub mod health;
pub mod reload;
pub mod shutdown;
pub mod tls;

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

    /// Held while the inboxes created through the API change (and by reload): each change
    /// validates against the config the previous one installed, so none is lost.
    pub fn config_change(&self) -> std::sync::MutexGuard<'_, ()> {
        self.reload_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put `config` in force (after an API change to the inboxes committed; hold
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
