//! `inbound store`: the PostgreSQL backend's schema (`migrate`) and moving a stopped embedded
//! store into PostgreSQL (`copy`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::load_config;
use crate::config::{PostgresConfig, StoreBackend};
use crate::store::{CopySide, Store};
use crate::util::mask_url_password;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Apply the PostgreSQL schema this build needs (safe to run again, and from several nodes
    /// at once: they take turns).
    Migrate {
        /// The database (default: `[store] url` of the config).
        #[arg(long)]
        url: Option<String>,
        /// Config file whose `[store]` names the database.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Copy a stopped embedded store (records, bodies, conversations, counters, outbox) into an
    /// empty PostgreSQL database; prints counts and a checksum of both sides.
    Copy {
        /// The data directory of the stopped server.
        #[arg(long)]
        from_data_dir: PathBuf,
        /// The database (`postgres://user@host:port/db`).
        #[arg(long)]
        to: String,
    },
}

/// A connection config for `url` with the defaults of `[store]`.
fn pg_config(url: String) -> Result<PostgresConfig> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("{} is not a postgres:// URL", mask_url_password(&url));
    }
    Ok(PostgresConfig::for_tool(url))
}

pub fn run(command: StoreCommand) -> Result<ExitCode> {
    match command {
        StoreCommand::Migrate { url, config } => {
            let cfg = match url {
                Some(url) => pg_config(url)?,
                None => match load_config(config.as_ref())?.store.backend {
                    StoreBackend::Postgres(pg) => pg,
                    StoreBackend::Sled => bail!(
                        "the config's store is the embedded one (backend = \"sled\"): give --url or a config with backend = \"postgres\""
                    ),
                },
            };
            let (before, after) = Store::migrate_postgres(&cfg)
                .with_context(|| format!("migrating {}", mask_url_password(&cfg.url)))?;
            if before == after {
                println!("schema already at version {after}");
            } else {
                println!("schema migrated from version {before} to {after}");
            }
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Copy { from_data_dir, to } => {
            let to = pg_config(to)?;
            let store_cfg = crate::config::Config::embedded_default().store;
            let report =
                Store::copy_to_postgres(&from_data_dir, &store_cfg, &to).with_context(|| {
                    format!(
                        "copying {} to {}",
                        from_data_dir.display(),
                        mask_url_password(&to.url)
                    )
                })?;
            print_side("source", &report.source);
            print_side("destination", &report.destination);
            if report.source != report.destination {
                bail!("the copy does not match its source (counts or checksum differ)");
            }
            println!("copy complete: counts and checksum match");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_side(name: &str, side: &CopySide) {
    let counts: Vec<String> = side
        .counts
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect();
    println!("{name}: {} checksum={}", counts.join(" "), side.checksum);
}
