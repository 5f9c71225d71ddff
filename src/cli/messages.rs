//! `inbound messages`: list accepted messages and show one record or its stored RFC 5322 bytes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{admin_request, decode, truncate, StoreArgs};
use crate::server::admin::Request;
use crate::store::MessageRecord;
use crate::util::rfc3339;
use crate::views;

#[derive(Subcommand)]
pub enum MessagesCommand {
    /// List accepted messages, newest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this queue id (pagination: the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Oldest first instead.
        #[arg(long)]
        oldest_first: bool,
        /// Only messages received within this long (30m, 2h, 7d).
        #[arg(long, value_parser = parse_since)]
        since: Option<std::time::Duration>,
        /// Only messages to this inbox.
        #[arg(long)]
        inbox: Option<String>,
        /// Only quarantined messages.
        #[arg(long)]
        quarantined: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one message's record; --raw prints the stored RFC 5322 message instead.
    Show {
        queue_id: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        raw: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: MessagesCommand) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match command {
        MessagesCommand::List {
            store,
            limit,
            after,
            oldest_first,
            since,
            inbox,
            quarantined,
            json,
        } => {
            let since_ms =
                since.map(|d| crate::store::keys::now_ms().saturating_sub(d.as_millis() as u64));
            let req = Request::MessagesList {
                after,
                limit,
                oldest_first,
                since_ms,
                inbox,
                quarantined: quarantined.then_some(true),
            };
            let (resp, _) = admin_request(&store, req)?;
            let records: Vec<MessageRecord> = decode(resp)?;
            if json {
                // The API's shape (`views`): one vocabulary for the CLI, the API and webhooks.
                let items: Vec<views::MessageSummary> = records
                    .into_iter()
                    .map(views::MessageSummary::from)
                    .collect();
                serde_json::to_writer_pretty(&mut stdout, &items)?;
                writeln!(stdout)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                stdout,
                "{:<26}  {:<20}  {:>9}  {:<30}  {:<30}  SUBJECT",
                "QUEUE_ID", "RECEIVED", "SIZE", "FROM", "TO"
            )?;
            for r in &records {
                let to = r
                    .rcpt
                    .iter()
                    .map(|x| x.address.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let from = if r.from.is_empty() {
                    &r.mail_from
                } else {
                    &r.from
                };
                writeln!(
                    stdout,
                    "{:<26}  {:<20}  {:>9}  {:<30}  {:<30}  {}",
                    r.queue_id,
                    rfc3339(r.received_at),
                    r.size,
                    truncate(from, 30),
                    truncate(&to, 30),
                    truncate(&r.subject, 60)
                )?;
            }
            writeln!(
                stdout,
                "{} message{}",
                records.len(),
                if records.len() == 1 { "" } else { "s" }
            )?;
        }
        MessagesCommand::Show {
            queue_id,
            store,
            raw,
            json,
        } => {
            let (resp, bytes) = admin_request(
                &store,
                Request::MessagesShow {
                    queue_id: queue_id.clone(),
                    raw,
                },
            )?;
            let record: MessageRecord = decode(resp)?;
            if raw {
                stdout.write_all(&bytes)?;
            } else if json {
                // The content is read from the stored message, as the API does: our trace
                // fields, then the body as received. Without a body the content is null.
                let content = if record.body_location == crate::store::BODY_EXPIRED {
                    None
                } else {
                    let (_, stored) = admin_request(
                        &store,
                        Request::MessagesShow {
                            queue_id,
                            raw: true,
                        },
                    )?;
                    stored
                        .get(record.trace_headers.len()..)
                        .and_then(crate::pipeline::body::read)
                };
                let detail = views::MessageDetail::new(record, content);
                serde_json::to_writer_pretty(&mut stdout, &detail)?;
                writeln!(stdout)?;
            } else {
                print_record(&mut stdout, &record)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_record(out: &mut impl Write, r: &MessageRecord) -> std::io::Result<()> {
    writeln!(out, "queue id:    {}", r.queue_id)?;
    writeln!(out, "received:    {}", rfc3339(r.received_at))?;
    writeln!(
        out,
        "client:      [{}]:{} helo={}",
        r.client_ip, r.client_port, r.helo
    )?;
    writeln!(out, "tls:         {}", r.tls.as_deref().unwrap_or("none"))?;
    writeln!(out, "mail from:   <{}>", r.mail_from)?;
    for rc in &r.rcpt {
        let tag = rc
            .tag
            .as_deref()
            .map(|t| format!(" (tag {t})"))
            .unwrap_or_default();
        writeln!(
            out,
            "rcpt to:     <{}> -> inbox {}{tag}",
            rc.address, rc.inbox
        )?;
    }
    writeln!(out, "from:        {}", r.from)?;
    writeln!(out, "subject:     {}", r.subject)?;
    writeln!(out, "message-id:  {}", r.message_id)?;
    writeln!(
        out,
        "size:        {} bytes ({}, {})",
        r.size, r.body_type, r.body_location
    )?;
    writeln!(out, "sha256:      {}", r.sha256)?;
    Ok(())
}

pub(super) fn parse_since(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (30m, 2h, 7d)"))
}
