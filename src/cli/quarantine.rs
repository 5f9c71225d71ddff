//! `inbound quarantine`: messages held back by sender authentication: list them, release one
//! into its inboxes (analysed and routed as if it had just arrived), or delete one for good.
//! The same actions as the API's /v1/quarantine, through `actions`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{admin_request, decode, truncate, StoreArgs};
use crate::server::admin::Request;
use crate::store::MessageRecord;
use crate::util::rfc3339;

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Quarantined messages, oldest first, with the verdict that held each back.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this queue id (pagination).
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Deliver a quarantined message into its inboxes.
    Release {
        queue_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a quarantined message (record and body).
    Delete {
        queue_id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(command: QuarantineCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        QuarantineCommand::List {
            store,
            limit,
            after,
            json,
        } => {
            let (resp, _) = admin_request(&store, Request::QuarantineList { after, limit })?;
            let records: Vec<MessageRecord> = decode(resp)?;
            if json {
                let items: Vec<crate::views::MessageSummary> = records
                    .into_iter()
                    .map(crate::views::MessageSummary::from)
                    .collect();
                serde_json::to_writer_pretty(&mut out, &items)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "{:<26}  {:<20}  {:<30}  {:<30}  WHY",
                "QUEUE_ID", "RECEIVED", "FROM", "TO"
            )?;
            for r in &records {
                let to = r
                    .rcpt
                    .iter()
                    .map(|x| x.address.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let why = r.auth.as_ref().map(|a| a.reason.as_str()).unwrap_or("-");
                writeln!(
                    out,
                    "{:<26}  {:<20}  {:<30}  {:<30}  {}",
                    r.queue_id,
                    rfc3339(r.received_at),
                    truncate(&r.mail_from, 30),
                    truncate(&to, 30),
                    truncate(why, 80)
                )?;
            }
            writeln!(
                out,
                "{} quarantined message{}",
                records.len(),
                if records.len() == 1 { "" } else { "s" }
            )?;
        }
        QuarantineCommand::Release { queue_id, store } => {
            let (resp, _) = admin_request(&store, Request::QuarantineRelease { queue_id })?;
            let r: MessageRecord = decode(resp)?;
            let inboxes = r
                .routing
                .iter()
                .map(|x| format!("{} (conversation {})", x.inbox, x.conversation))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(out, "{}: released into {inboxes}", r.queue_id)?;
        }
        QuarantineCommand::Delete { queue_id, store } => {
            let (resp, _) = admin_request(&store, Request::QuarantineDelete { queue_id })?;
            let r: MessageRecord = decode(resp)?;
            writeln!(out, "{}: deleted", r.queue_id)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
