//! `inbound serve`: load the config, bind the listeners, reload on SIGHUP, run until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::runtime;
use crate::config;

/// Run the server until a shutdown signal; the overrides replace the config's own values.
pub fn run(
    config: Option<PathBuf>,
    listen: Vec<SocketAddr>,
    data_dir: Option<PathBuf>,
    api_listen: Option<SocketAddr>,
) -> Result<ExitCode> {
    let source = config::ConfigSource {
        path: config,
        listen,
        data_dir,
        api_listen,
    };
    let cfg = match &source.path {
        Some(p) => source
            .load()
            .with_context(|| format!("loading {}", p.display()))?,
        None => {
            tracing::info!("no --config given: running on the embedded default config");
            source.load()?
        }
    };
    runtime()?.block_on(async {
        let bound = crate::server::bind_with_source(cfg, source)
            .await
            .context("starting the server")?;
        reload_on_sighup(bound.ctx())?;
        bound
            .run(crate::context::shutdown::signal())
            .await
            .context("running the server")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP reloads the config file (`Ctx::reload`, which logs the outcome). Installed before the
/// server greets anyone, so a SIGHUP can never hit the default action (terminate).
fn reload_on_sighup(ctx: std::sync::Arc<crate::context::Ctx>) -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            let mut shutdown = ctx.shutdown.clone();
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                tracing::info!(signal = "SIGHUP", "reloading the config");
                let ctx = ctx.clone();
                // Reading the file and the store blocks; the outcome is logged by `reload`.
                let _ = tokio::task::spawn_blocking(move || ctx.reload()).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = ctx;
    Ok(())
}
