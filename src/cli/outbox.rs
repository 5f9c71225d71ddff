//! `inbound outbox`: deliveries waiting in the outbox (notification mail, webhook calls) with
//! their attempts and last error; `retry ID` makes one due now (`postqueue -i`), `drop ID`
//! removes it for good (`postsuper -d`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{admin_request, decode, StoreArgs};
use crate::server::admin::Request;
use crate::util::rfc3339;

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Try this item on the worker's next pass (attempts and lifetime unchanged).
    Retry {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove this item: its mail or webhook call is never made.
    Drop {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn act(command: OutboxCommand) -> Result<ExitCode> {
    let (store, req, verb) = match command {
        OutboxCommand::Retry { id, store } => (store, Request::OutboxRetry { id }, "due now"),
        OutboxCommand::Drop { id, store } => (store, Request::OutboxDrop { id }, "dropped"),
    };
    let (resp, _) = admin_request(&store, req)?;
    let item: crate::notify::OutboxItem = decode(resp)?;
    println!("{}: {verb} ({})", item.id, item.describe());
    Ok(ExitCode::SUCCESS)
}

pub fn run(store: &StoreArgs, json: bool) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let (resp, _) = admin_request(store, Request::OutboxList)?;
    let items: Vec<crate::notify::OutboxItem> = decode(resp)?;
    if json {
        let items: Vec<crate::views::OutboxEntry> = items
            .iter()
            .map(|i| crate::views::OutboxEntry {
                id: i.id.clone(),
                destination: i.destination(),
                what: i.describe(),
                attempts: i.attempts,
                created_at: rfc3339(i.created_at),
                created_at_ms: i.created_at,
                next_attempt_at: rfc3339(i.next_attempt_at),
                next_attempt_at_ms: i.next_attempt_at,
                last_error: i.last_error.clone(),
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &items)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<26}  {:>8}  {:<20}  {:<44}  LAST ERROR",
        "ID", "ATTEMPTS", "NEXT ATTEMPT", "WHAT"
    )?;
    for i in &items {
        writeln!(
            out,
            "{:<26}  {:>8}  {:<20}  {:<44}  {}",
            i.id,
            i.attempts,
            rfc3339(i.next_attempt_at),
            i.describe(),
            i.last_error.as_deref().unwrap_or("-")
        )?;
    }
    if items.is_empty() {
        writeln!(out, "(the outbox is empty)")?;
    }
    Ok(ExitCode::SUCCESS)
}
