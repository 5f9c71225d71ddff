//! The running server: binds the listeners, opens the store, serves sessions until shutdown.
//! `bind` does everything that can fail at start (ports, store lock, TLS), so `inbound serve`
//! exits with a clear error before it claims to be running; `Bound::run` then serves.

pub mod admin;
pub mod listener;
pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Config, ConfigSource, ListenerConfig};
use crate::context::{reload, shutdown, tls, Ctx};
use crate::dns::DnsSetupError;
use crate::metrics::RetentionAction;
use crate::store::{retention, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `error` is in the message, not the source chain: printed with `{:#}`, it would be said
    /// twice.
    #[error("cannot open the store in {dir}: {error}{}", free_space_note(dir))]
    Store { dir: String, error: StoreError },
    /// The same for a database the store lives in: the error names it (password masked); the
    /// data directory's free space is beside the point.
    #[error("cannot open the store: {0}")]
    Database(StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    LockedAddress(crate::config::ConfigErrors),
    /// The config file and the inboxes, users or teams created through the API (kept in the
    /// store) clash.
    #[error("the config file clashes with what was created through the API: {0}")]
    InboxClash(crate::config::ConfigErrors),
    #[error("DNS resolver: {0}")]
    Dns(#[from] DnsSetupError),
    #[error("API: cannot listen on {addr}: {source}")]
    ApiBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "RLIMIT_NOFILE allows {limit} open files, too few for the server (it needs {needed} at \
         most: limits.max_connections + api.max_connections + {reserved} for the store, spool \
         and outbound connections); raise it (LimitNOFILE= in the systemd unit, ulimit -n) or lower \
         limits.max_connections"
    )]
    FileLimit {
        limit: u64,
        needed: u64,
        reserved: u64,
    },
    #[error("admin socket {path}: {source}")]
    Admin {
        path: String,
        source: std::io::Error,
    },
}

/// What an operator needs to know when the store cannot open: how much room its filesystem has.
fn free_space_note(dir: &str) -> String {
    match crate::store::free_bytes(std::path::Path::new(dir)) {
        Some(free) if free < 1024 * 1024 => format!(
            " (only {free} bytes free on that filesystem: free space there and start again)"
        ),
        Some(free) => format!(" ({free} bytes free on that filesystem)"),
        None => String::new(),
    }
}

/// A server whose sockets and store are open, ready to `run`.
pub struct Bound {
    ctx: Arc<Ctx>,
    listeners: Vec<(TcpListener, ListenerConfig)>,
    /// The HTTP API's socket and the address it got; `None` when `api.enabled = false`.
    api: Option<(TcpListener, SocketAddr)>,
    /// `api.metrics_listen`'s socket and address, when configured.
    metrics: Option<(TcpListener, SocketAddr)>,
    admin: tokio::net::UnixListener,
    trigger: shutdown::Trigger,
}

/// Open everything the server needs. Errors here are start-up errors with their cause. A server
/// bound this way has no config file to reload; `bind_with_source` gives it one.
pub async fn bind(config: Config) -> Result<Bound, ServerError> {
    bind_with_source(config, ConfigSource::default()).await
}

/// `bind`, remembering where `config` came from (`ConfigSource::load` made it) for `reload`.
pub async fn bind_with_source(config: Config, source: ConfigSource) -> Result<Bound, ServerError> {
    let store_error = |error| match config.store.backend {
        crate::config::StoreBackend::Postgres(_) => ServerError::Database(error),
        _ => ServerError::Store {
            dir: config.data_dir.display().to_string(),
            error,
        },
    };
    let store = Store::open(&config.data_dir, &config.store).map_err(store_error)?;
    // Opening read sled's snapshot and rebuilt its page table; the snapshot is garbage now.
    crate::util::release_free_memory();
    // The inboxes, users and teams created through the API join the file's; a clash between
    // them is named.
    let config = reload::with_store_definitions(&config, &store)
        .map_err(store_error)?
        .map_err(|e| ServerError::InboxClash(crate::config::ConfigErrors(e)))?;
    let locked = reload::locked_addresses(&config, &store).map_err(store_error)?;
    if !locked.is_empty() {
        return Err(ServerError::LockedAddress(crate::config::ConfigErrors(
            locked,
        )));
    }
    crate::notify::warn_unsendable(&config);
    let tls = tls::acceptor(&config.tls, &config.hostname)?;
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let socket = listener::bind(l.addr).map_err(|source| ServerError::Bind {
            addr: l.addr,
            source,
        })?;
        let mut l = l.clone();
        l.addr = socket.local_addr().map_err(|source| ServerError::Bind {
            addr: l.addr,
            source,
        })?;
        listeners.push((socket, l));
    }
    let api = if config.api.enabled {
        let addr = config.api.listen;
        let socket =
            listener::bind(addr).map_err(|source| ServerError::ApiBind { addr, source })?;
        let bound = socket
            .local_addr()
            .map_err(|source| ServerError::ApiBind { addr, source })?;
        Some((socket, bound))
    } else {
        None
    };
    let metrics = match config.api.metrics_listen {
        Some(addr) => {
            let socket =
                listener::bind(addr).map_err(|source| ServerError::ApiBind { addr, source })?;
            let bound = socket
                .local_addr()
                .map_err(|source| ServerError::ApiBind { addr, source })?;
            Some((socket, bound))
        }
        None => None,
    };
    let admin = admin::bind(&config.admin_socket).map_err(|source| ServerError::Admin {
        path: config.admin_socket.display().to_string(),
        source,
    })?;
    let (trigger, shutdown) = shutdown::channel();
    let ctx = Arc::new(Ctx::new(config, store, tls, shutdown)?.with_source(source));
    ctx.metrics
        .set_tls_certificate_not_after(tls::configured_not_after(&ctx.config().tls));
    size_for_file_limit(&ctx)?;
    Ok(Bound {
        ctx,
        listeners,
        api,
        metrics,
        admin,
        trigger,
    })
}

impl Bound {
    /// The addresses actually bound (port 0 in config gets a real port here).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, l)| l.addr).collect()
    }

    /// Where the HTTP API listens (port 0 in config gets a real port here); `None` when disabled.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|(_, a)| *a)
    }

    /// Where `GET /metrics` is served without a token (`api.metrics_listen`), when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, a)| *a)
    }

    pub fn ctx(&self) -> Arc<Ctx> {
        self.ctx.clone()
    }

    /// Serve until `shutdown` resolves, then stop accepting, tell idle sessions `421 4.3.0`, let
    /// messages in flight finish, and return within the configured deadline.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let Bound {
            ctx,
            listeners,
            api,
            metrics,
            admin,
            trigger,
        } = self;
        let config = ctx.config();
        // Every session holds a clone of `done_tx`; when all are dropped, `done_rx` yields None.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut tasks = Vec::new();
        ctx.health.expect_listeners(listeners.len());
        for (socket, lcfg) in listeners {
            tracing::info!(addr = %lcfg.addr, proxy_protocol = lcfg.proxy_protocol, "listening");
            tasks.push(tokio::spawn(listener::accept_loop(
                socket,
                lcfg,
                ctx.clone(),
                done_tx.clone(),
            )));
        }
        let api_task = api.map(|(socket, addr)| {
            let tokens = config.api.token_digests.len();
            tracing::info!(addr = %addr, tokens, "API listening");
            if tokens == 0 {
                tracing::warn!(
                    "the API has no tokens (api.tokens, api.token_files): every endpoint but /healthz, /readyz and /openapi.json answers 401"
                );
            }
            if !addr.ip().is_loopback() {
                tracing::warn!(addr = %addr, "the API serves plain HTTP beyond loopback: put a TLS-terminating proxy in front of it");
            }
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::api::serve(socket, ctx).await {
                    tracing::error!(error = %e, "API server stopped");
                }
            })
        });
        let metrics_task = metrics.map(|(socket, addr)| {
            tracing::info!(addr = %addr, "metrics listening (GET /metrics, no token)");
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::api::serve_metrics(socket, ctx).await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            })
        });
        let admin_task = tokio::spawn(admin::serve(
            admin,
            ctx.clone(),
            config.admin_socket.clone(),
        ));
        let housekeeping = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    ctx.limits.housekeeping();
                    let _ = tokio::task::spawn_blocking(crate::util::release_free_memory).await;
                }
            })
        };
        // Inboxes, users and teams changed through another node's API: in force here within
        // a second (and at once for a recipient that would otherwise be refused).
        let follower = ctx.store.is_shared().then(|| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let ctx = ctx.clone();
                    let _ = tokio::task::spawn_blocking(move || ctx.follow_definitions()).await;
                }
            })
        });
        let outbox = tokio::spawn(crate::notify::worker::run(
            ctx.clone(),
            ctx.outbox_wake.clone(),
            ctx.shutdown.clone(),
        ));
        let sweeper = tokio::spawn(retention_loop(ctx.clone()));
        drop(done_tx);

        shutdown.await;
        tracing::info!(
            open_sessions = ctx.limits.open_sessions(),
            "shutdown: no longer accepting"
        );
        trigger.trigger();
        ctx.limits.close();
        for t in tasks {
            let _ = t.await;
        }
        // A sweep in progress stops after its current batch.
        let _ = sweeper.await;
        // Read now, not at start: a reload may have changed it.
        let deadline = ctx.config().shutdown_timeout;
        let stop_by = tokio::time::Instant::now() + deadline;
        match tokio::time::timeout_at(stop_by, done_rx.recv()).await {
            Ok(_) => tracing::info!("shutdown: all sessions finished"),
            Err(_) => tracing::warn!(
                open_sessions = ctx.limits.open_sessions(),
                deadline_ms = deadline.as_millis() as u64,
                "shutdown deadline reached; closing remaining sessions (their messages were not acknowledged)"
            ),
        }
        if let Some(mut api_task) = api_task {
            // It stopped accepting at the trigger; requests in progress get what is left of the
            // same deadline, then their connections are dropped.
            if tokio::time::timeout_at(stop_by, &mut api_task)
                .await
                .is_err()
            {
                tracing::warn!("shutdown deadline reached; closing API connections");
                api_task.abort();
            }
        }
        // The worker saw the trigger too; it may record the deliveries it has in flight within
        // what is left of the same deadline. A receiver that hangs does not extend it: what was
        // not recorded is delivered again after the restart (receivers dedup by
        // Idempotency-Key).
        let mut outbox = outbox;
        if tokio::time::timeout_at(stop_by, &mut outbox).await.is_err() {
            tracing::warn!("shutdown deadline reached; webhook and mail deliveries in flight will be retried at start");
            outbox.abort();
        }
        admin_task.abort();
        housekeeping.abort();
        if let Some(t) = follower {
            t.abort();
        }
        // A scrape is short and carries no state: it need not be waited for.
        if let Some(t) = metrics_task {
            t.abort();
        }
        let _ = std::fs::remove_file(&config.admin_socket);
        if let Err(e) = ctx.store.flush() {
            tracing::warn!(error = %e, "final store flush failed");
        }
        Ok(())
    }
}

/// The retention sweeper: one sweep every `retention.sweep_interval` (read before each wait, so
/// a reload applies to the next one), the first a minute after start at the latest so a server
/// restarted more often than the interval still sweeps. A sweep runs on a blocking thread in
/// bounded batches and stops between two batches when shutdown begins.
async fn retention_loop(ctx: Arc<Ctx>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut first = true;
    loop {
        let mut wait = ctx.config().retention.sweep_interval;
        if first {
            wait = wait.min(Duration::from_secs(60));
            first = false;
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let (store, cfg, stop) = (
            ctx.store.clone(),
            ctx.config().retention.clone(),
            ctx.shutdown.clone(),
        );
        let now = crate::store::keys::now_ms();
        let report = match tokio::task::spawn_blocking(move || {
            retention::sweep(&store, &cfg, now, || stop.is_triggered())
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "retention sweep panicked");
                continue;
            }
        };
        let m = &ctx.metrics.retention_removed;
        m.add(RetentionAction::BodyExpired, report.bodies_expired as u64);
        m.add(
            RetentionAction::QuarantineDeleted,
            report.quarantined_deleted as u64,
        );
        m.add(
            RetentionAction::SessionMetadataCleared,
            report.session_metadata_cleared as u64,
        );
        m.add(
            RetentionAction::ConversationDeleted,
            report.conversations_deleted as u64,
        );
        m.add(
            RetentionAction::ConversationMessageDeleted,
            report.conversation_messages_deleted as u64,
        );
        report.log();
    }
}

/// File descriptors kept for everything but client connections: the store's files, spool files
/// being written, DNS sockets, webhook and relay connections, the admin socket.
const RESERVED_FDS: u64 = 128;

/// Make sure the API can never starve SMTP of file descriptors (#11: 1,100 half-open API
/// requests made every SMTP accept fail with EMFILE). Both listeners' caps are known, so the
/// process needs at most their sum plus `RESERVED_FDS`: the soft RLIMIT_NOFILE is raised to that
/// (up to the hard limit), and when even the hard limit is lower, SMTP serves fewer sessions
/// than `limits.max_connections`, with a warning. A limit too low for a handful of sessions is
/// a start-up error.
fn size_for_file_limit(ctx: &Ctx) -> Result<(), ServerError> {
    let cfg = ctx.config();
    let api = if cfg.api.enabled {
        cfg.api.max_connections as u64
    } else {
        0
    };
    let others = api + crate::limits::OVERFLOW_REJECTERS as u64 + RESERVED_FDS;
    let needed = cfg.limits.max_connections as u64 + others;
    let Some(limit) = raise_file_limit(needed) else {
        tracing::warn!("cannot read RLIMIT_NOFILE; connection caps not checked against it");
        return Ok(());
    };
    if limit >= needed {
        return Ok(());
    }
    let sessions = limit.saturating_sub(others);
    if sessions < 2 {
        return Err(ServerError::FileLimit {
            limit,
            needed,
            reserved: RESERVED_FDS,
        });
    }
    ctx.limits.cap_sessions(sessions as usize);
    tracing::warn!(
        rlimit_nofile = limit,
        needed,
        smtp_sessions = sessions,
        "RLIMIT_NOFILE is below limits.max_connections + api.max_connections + {RESERVED_FDS}: \
         serving fewer SMTP sessions at once; raise the limit (LimitNOFILE=) to serve all"
    );
    Ok(())
}

/// Raise the soft RLIMIT_NOFILE towards `wanted` (never above the hard limit); the soft limit
/// in force afterwards, `None` if it cannot be read.
// `rlim_t` is u64 on Linux but not on every Unix.
#[allow(clippy::unnecessary_cast)]
fn raise_file_limit(wanted: u64) -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on our stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if (lim.rlim_cur as u64) < wanted {
        let raised = libc::rlimit {
            rlim_cur: (wanted as libc::rlim_t).min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    Some(lim.rlim_cur as u64)
}

/// Bind and serve: the whole server in one call.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    bind(config).await?.run(shutdown).await
}
