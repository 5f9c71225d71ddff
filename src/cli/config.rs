//! `inbound check-config`: validate a config file and print every error with its key path;
//! `inbound config show`: the effective config (defaults filled in, overrides applied) with
//! every secret masked.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{admin_request, decode, StoreArgs};
use crate::config;
use crate::server::admin::Request;
use crate::store::model::InboxLifecycle;

/// Exit 0 when the file is valid, 2 with every error listed when it is not.
pub fn check(file: PathBuf) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    match config::parse(&text) {
        Ok(cfg) => {
            // The inboxes created through the API and the connected inboxes' locked addresses:
            // checked against the store this config points at, when there is one.
            let store = StoreArgs {
                data_dir: None,
                config: Some(file.clone()),
            };
            let mut cfg = cfg;
            if let Ok((resp, _)) = admin_request(&store, Request::InboxDefinitions) {
                let defs: Vec<crate::store::model::InboxDefinition> = decode(resp)?;
                let specs = crate::context::reload::active_specs(&defs);
                match cfg.with_api_inboxes(&specs, config::inboxes::Blame::File) {
                    Ok(merged) => cfg = merged,
                    Err(errors) => {
                        eprint!(
                            "{}: clashes with inboxes created through the API: {errors}",
                            file.display()
                        );
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            if let Ok((resp, _)) = admin_request(&store, Request::InboxesList) {
                let states: Vec<crate::store::model::InboxState> = decode(resp)?;
                let locked = cfg.check_locked_addresses(
                    states
                        .iter()
                        .filter(|s| s.state == InboxLifecycle::Connected)
                        .map(|s| (s.id.as_str(), s.address.as_str())),
                );
                if !locked.is_empty() {
                    eprint!("{}: {}", file.display(), config::ConfigErrors(locked));
                    return Ok(ExitCode::from(2));
                }
            }
            println!(
                "{}: OK ({} listener{}, {} inbox{})",
                file.display(),
                cfg.listeners.len(),
                if cfg.listeners.len() == 1 { "" } else { "s" },
                cfg.inboxes.list.len(),
                if cfg.inboxes.list.len() == 1 {
                    ""
                } else {
                    "es"
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprint!("{}: {errors}", file.display());
            Ok(ExitCode::from(2))
        }
    }
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective config (as compiled, defaults included) with secrets masked.
    Show {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// What a masked secret prints as.
const MASK: &str = "********";

pub fn run(command: ConfigCommand) -> Result<ExitCode> {
    match command {
        ConfigCommand::Show { store } => {
            let mut cfg = super::load_config(store.config.as_ref())?;
            if let Some(dir) = &store.data_dir {
                cfg.override_data_dir(dir.clone());
            }
            // Masked here, before printing: the relay password and webhook secrets. API tokens
            // are kept only as digests, whose Debug prints their count.
            let outbound = &mut cfg.outbound;
            if let Some(relay) = outbound.relay.as_mut() {
                if let Some((_, password)) = relay.credentials.as_mut() {
                    *password = MASK.into();
                }
            }
            for w in &mut outbound.webhooks {
                w.secret = MASK.into();
            }
            println!("{cfg:#?}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
