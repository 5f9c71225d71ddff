//! `inbound conversations`: list conversations and show one with its messages, assignee and
//! ticket; assign, unassign, close and reopen one (the API's actions, through `actions`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use super::{admin_request, decode, truncate, StoreArgs};
use crate::server::admin::{self, Request};
use crate::util::rfc3339;

#[derive(Subcommand)]
pub enum ConversationsCommand {
    /// List conversations, newest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this inbox.
        #[arg(long)]
        inbox: Option<String>,
        /// Only open or only closed ones.
        #[arg(long, value_parser = ["open", "closed"])]
        status: Option<String>,
        /// Only those started within this long (30m, 2h, 7d).
        #[arg(long, value_parser = super::messages::parse_since)]
        since: Option<std::time::Duration>,
        /// Oldest first instead.
        #[arg(long)]
        oldest_first: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this conversation id (the last one the previous page printed).
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one conversation: its messages in order (a page at a time), sender, assignee, ticket.
    Show {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Messages per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue after this queue id (what the previous page printed).
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Assign a conversation to a configured user, a team, or a user on behalf of a team.
    Assign {
        id: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        team: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Take a conversation off its user and team.
    Unassign {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Close a conversation (its assignee keeps it, with one open conversation fewer).
    Close {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Reopen a closed conversation.
    Reopen {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(command: ConversationsCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        ConversationsCommand::List {
            store,
            inbox,
            status,
            since,
            oldest_first,
            limit,
            after,
            json,
        } => {
            let since_ms =
                since.map(|d| crate::store::keys::now_ms().saturating_sub(d.as_millis() as u64));
            let (resp, _) = admin_request(
                &store,
                Request::ConversationsList {
                    inbox,
                    after,
                    limit,
                    oldest_first,
                    status,
                    since_ms,
                },
            )?;
            let list: Vec<crate::store::model::Conversation> = decode(resp)?;
            if json {
                let items: Vec<crate::views::ConversationSummary> = list
                    .into_iter()
                    .map(crate::views::ConversationSummary::from)
                    .collect();
                serde_json::to_writer_pretty(&mut out, &items)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "{:<26}  {:<12}  {:<6}  {:>4}  {:<12}  {:<8}  {:<28}  SUBJECT",
                "CONVERSATION", "INBOX", "STATUS", "MSGS", "ASSIGNEE", "TICKET", "CONTACT"
            )?;
            for c in &list {
                writeln!(
                    out,
                    "{:<26}  {:<12}  {:<6}  {:>4}  {:<12}  {:<8}  {:<28}  {}",
                    c.id,
                    truncate(&c.inbox, 12),
                    c.status,
                    c.message_count,
                    c.assignee.as_deref().unwrap_or("-"),
                    c.ticket.as_deref().unwrap_or("-"),
                    truncate(&c.contact, 28),
                    truncate(&c.subject, 60)
                )?;
            }
            writeln!(
                out,
                "{} conversation{}",
                list.len(),
                if list.len() == 1 { "" } else { "s" }
            )?;
        }
        ConversationsCommand::Assign {
            id,
            user,
            team,
            store,
        } => change(
            &mut out,
            &store,
            Request::ConversationAssign { id, user, team },
        )?,
        ConversationsCommand::Unassign { id, store } => {
            change(&mut out, &store, Request::ConversationUnassign { id })?
        }
        ConversationsCommand::Close { id, store } => {
            change(&mut out, &store, Request::ConversationClose { id })?
        }
        ConversationsCommand::Reopen { id, store } => {
            change(&mut out, &store, Request::ConversationReopen { id })?
        }
        ConversationsCommand::Show {
            id,
            store,
            limit,
            after,
            json,
        } => {
            let (resp, _) = admin_request(
                &store,
                Request::ConversationsShow {
                    id: id.clone(),
                    after,
                    limit,
                },
            )?;
            let view: admin::ConversationView = decode(resp)?;
            if json {
                let detail = crate::views::ConversationDetail {
                    conversation: view.conversation.into(),
                    messages: view
                        .messages
                        .into_iter()
                        .map(crate::views::MessageSummary::from)
                        .collect(),
                    // The CLI pages with --after QUEUE_ID: the cursor is that queue id.
                    messages_next_cursor: view.next,
                    ticket: view.ticket.map(crate::views::TicketView::from),
                    contact: view.contact.map(crate::views::ContactSummary::from),
                };
                serde_json::to_writer_pretty(&mut out, &detail)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            let c = &view.conversation;
            writeln!(out, "conversation: {}", c.id)?;
            writeln!(out, "inbox:        {}", c.inbox)?;
            writeln!(out, "subject:      {}", c.subject)?;
            writeln!(out, "status:       {}", c.status)?;
            let name = view
                .contact
                .as_ref()
                .and_then(|k| k.name.clone())
                .unwrap_or_default();
            writeln!(out, "contact:      {name} <{}>", c.contact)?;
            writeln!(
                out,
                "assignee:     {}",
                c.assignee.as_deref().unwrap_or("(unassigned)")
            )?;
            if let Some(team) = &c.team {
                writeln!(out, "team:         {team}")?;
            }
            match &view.ticket {
                Some(t) => writeln!(
                    out,
                    "ticket:       {} (pipeline {}, stage {}, priority {}, owner {})",
                    t.id,
                    t.pipeline,
                    t.stage,
                    t.priority,
                    t.owner.as_deref().unwrap_or("-")
                )?,
                None => writeln!(out, "ticket:       (none)")?,
            }
            writeln!(out, "messages:")?;
            for m in &view.messages {
                let who = m
                    .attribution
                    .as_ref()
                    .map(|a| a.email.as_str())
                    .unwrap_or(&m.from);
                let how = m
                    .attribution
                    .as_ref()
                    .map(|a| a.method.as_str())
                    .unwrap_or("");
                let flags = [
                    m.quarantined.then_some("quarantined"),
                    m.automatic.as_ref().map(|_| "automatic"),
                    m.routing
                        .iter()
                        .any(|r| r.thread == crate::store::model::ThreadDecision::Duplicate)
                        .then_some("duplicate"),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(",");
                writeln!(
                    out,
                    "  {}  {}  {} ({how})  {}{}",
                    m.queue_id,
                    rfc3339(m.received_at),
                    who,
                    truncate(&m.subject, 50),
                    if flags.is_empty() {
                        String::new()
                    } else {
                        format!("  [{flags}]")
                    }
                )?;
            }
            if let Some(next) = &view.next {
                writeln!(
                    out,
                    "({} messages in all; more: inbound conversations show {id} --after {next})",
                    c.message_count
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run one conversation action and print the conversation as it now is.
fn change(out: &mut impl Write, store: &StoreArgs, req: Request) -> Result<()> {
    let (resp, _) = admin_request(store, req)?;
    let c: crate::store::model::Conversation = decode(resp)?;
    writeln!(
        out,
        "{}: {} (assignee {}{})",
        c.id,
        c.status,
        c.assignee.as_deref().unwrap_or("none"),
        c.team
            .as_deref()
            .map(|t| format!(", team {t}"))
            .unwrap_or_default()
    )?;
    Ok(())
}
