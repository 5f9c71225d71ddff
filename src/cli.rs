//! The `inbound` command line: serve, check-config, messages, bench. Errors here are `anyhow`
//! with context, printed once with `{:#}`; the library below returns typed errors.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};
use crate::server::admin::{self, Request, Response};
use crate::store::{MessageRecord, Store};
use crate::util::rfc3339;

#[derive(Parser)]
#[command(name = "inbound", version, about = "The MX for hosted team inboxes")]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (on the embedded default config unless --config is given).
    Serve {
        /// Config file (TOML); see config/inbound.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen on these addresses instead of the config's listeners (repeatable).
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// Keep data in this directory instead of the config's server.data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Serve the HTTP API on this address instead of the config's api.listen.
        #[arg(long)]
        api_listen: Option<SocketAddr>,
    },
    /// Validate a config file and print every error with its key path.
    CheckConfig { file: PathBuf },
    /// Look at accepted messages.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
    /// Hosted inboxes: setup state, forwarding address, counts, latest verification request.
    Inboxes {
        #[command(subcommand)]
        command: InboxesCommand,
    },
    /// Look at conversations (threads of messages, with assignee and ticket).
    Conversations {
        #[command(subcommand)]
        command: ConversationsCommand,
    },
    /// Show how a message would be attributed, threaded and routed, without storing it.
    Route {
        /// Explain the decisions (required: routing without storing is only ever an explanation).
        #[arg(long)]
        explain: bool,
        /// Config whose inboxes and rules to use (default: the embedded config).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Envelope sender (matters for SRS and Gmail +caf_ forwarders); default: the From
        /// address. Use `--mail-from ''` for a null sender (bounce).
        #[arg(long)]
        mail_from: Option<String>,
        /// Envelope recipient (default: the first inbox's address).
        #[arg(long)]
        rcpt: Option<String>,
        /// The message (RFC 5322 .eml file).
        message: PathBuf,
    },
    /// Deliveries waiting in the outbox (notification mail, webhook calls), with their retries.
    Outbox {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Drive concurrent SMTP clients against a server and print throughput, latency and RSS.
    Bench(crate::bench::BenchArgs),
}

#[derive(Subcommand)]
enum InboxesCommand {
    /// Every configured inbox with its state.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// One inbox: state, address, evidence, latest provider confirmation (code and link).
    Show {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Mark an inbox connected by hand (the team confirmed their forwarding works).
    Confirm {
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Mail a one-time code to ADDRESS, to prove the team may send as it (through [relay]).
    VerifyFrom {
        id: String,
        address: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Confirm the code mailed by verify-from; the address becomes usable as the inbox's from.
    ConfirmFrom {
        id: String,
        code: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ConversationsCommand {
    /// List conversations, oldest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this inbox.
        #[arg(long)]
        inbox: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
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
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Data directory of the server (default: the config's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Config file whose data directory to read (default: the embedded config).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum MessagesCommand {
    /// List accepted messages, oldest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this queue id (pagination).
        #[arg(long)]
        after: Option<String>,
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

pub fn main() -> ExitCode {
    crate::util::private_umask();
    let cli = Cli::parse();
    // The server logs what it does; the other commands print results and log only problems.
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    init_tracing(cli.log_json, default_level);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("INBOUND_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The config for a command: a file, or the embedded default.
fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(p) => Config::load(p).with_context(|| format!("loading {}", p.display())),
        None => Ok(Config::embedded_default()),
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve {
            config,
            listen,
            data_dir,
            api_listen,
        } => {
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
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            match config::parse(&text) {
                Ok(cfg) => {
                    // A connected inbox's address is locked: check against the store this
                    // config points at, when there is one.
                    let store = StoreArgs {
                        data_dir: None,
                        config: Some(file.clone()),
                    };
                    if let Ok((resp, _)) = admin_request(&store, Request::InboxesList) {
                        let states: Vec<crate::store::model::InboxState> = decode(resp)?;
                        let locked = cfg.check_locked_addresses(
                            states
                                .iter()
                                .filter(|s| s.state == "connected")
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
        Command::Messages { command } => messages(command),
        Command::Bench(args) => crate::bench::run(args),
        Command::Conversations { command } => conversations(command),
        Command::Inboxes { command } => inboxes(command),
        Command::Outbox { store, json } => outbox(&store, json),
        Command::Route {
            explain,
            config,
            json,
            mail_from,
            rcpt,
            message,
        } => {
            if !explain {
                bail!("`inbound route` only explains: add --explain");
            }
            route_explain(
                config.as_ref(),
                json,
                mail_from.as_deref(),
                rcpt.as_deref(),
                &message,
            )
        }
    }
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

/// A configured inbox joined with its stored state.
#[derive(serde::Serialize)]
struct InboxView {
    id: String,
    name: Option<String>,
    address: String,
    aliases: Vec<String>,
    state: String,
    connected_at: Option<String>,
    evidence: Option<String>,
    messages: u64,
    latest_verification: Option<crate::store::model::VerificationRecord>,
    /// The configured from-address, and whether it is verified (only then is it used).
    from_address: Option<String>,
    from_address_verified: bool,
    verified_from: Vec<String>,
    /// Address a from-verification code was sent to and not yet confirmed.
    pending_from_verification: Option<String>,
    admins: Vec<String>,
}

fn inbox_views(store: &StoreArgs) -> Result<Vec<InboxView>> {
    let cfg = load_config(store.config.as_ref())?;
    let states: Vec<crate::store::model::InboxState> =
        match admin_request(store, Request::InboxesList) {
            Ok((resp, _)) => decode(resp)?,
            // No store yet (the server never ran): every inbox is pending.
            Err(e) if e.to_string().contains("no store in") => Vec::new(),
            Err(e) => return Err(e),
        };
    Ok(cfg
        .inboxes
        .list
        .iter()
        .map(|i| {
            let st = states.iter().find(|s| s.id == i.id);
            InboxView {
                id: i.id.clone(),
                name: i.name.clone(),
                address: i.address.clone(),
                aliases: i.aliases.clone(),
                state: st
                    .map(|s| s.state.clone())
                    .unwrap_or_else(|| "pending".into()),
                connected_at: st.and_then(|s| s.connected_at).map(rfc3339),
                evidence: st.and_then(|s| s.evidence.clone()),
                messages: st.map(|s| s.messages).unwrap_or(0),
                latest_verification: st.and_then(|s| s.latest_verification.clone()),
                from_address: i.from_address.clone(),
                from_address_verified: i
                    .from_address
                    .as_ref()
                    .is_some_and(|a| st.is_some_and(|s| s.verified_from.contains(a))),
                verified_from: st.map(|s| s.verified_from.clone()).unwrap_or_default(),
                pending_from_verification: st
                    .and_then(|s| s.from_verification.as_ref())
                    .filter(|v| !v.code_sha256.is_empty())
                    .map(|v| v.address.clone()),
                admins: i.admins.clone(),
            }
        })
        .collect())
}

fn outbox(store: &StoreArgs, json: bool) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let (resp, _) = admin_request(store, Request::OutboxList)?;
    let items: Vec<crate::notify::OutboxItem> = decode(resp)?;
    if json {
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

fn inboxes(command: InboxesCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        InboxesCommand::List { store, json } => {
            let views = inbox_views(&store)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &views)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "{:<16}  {:<10}  {:>8}  {:<40}  VERIFICATION",
                "INBOX", "STATE", "MESSAGES", "ADDRESS"
            )?;
            for v in &views {
                let verification = v
                    .latest_verification
                    .as_ref()
                    .map(|x| format!("{} code {}", x.provider, x.code.as_deref().unwrap_or("-")))
                    .unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:<16}  {:<10}  {:>8}  {:<40}  {verification}",
                    v.id, v.state, v.messages, v.address
                )?;
            }
        }
        InboxesCommand::Show { id, store, json } => {
            let views = inbox_views(&store)?;
            let Some(v) = views.into_iter().find(|v| v.id == id) else {
                bail!("no inbox {id:?} in this config");
            };
            if json {
                serde_json::to_writer_pretty(&mut out, &v)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "inbox:        {}{}",
                v.id,
                v.name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            )?;
            writeln!(out, "address:      {}", v.address)?;
            if !v.aliases.is_empty() {
                writeln!(out, "aliases:      {}", v.aliases.join(", "))?;
            }
            writeln!(out, "state:        {}", v.state)?;
            if let Some(t) = &v.connected_at {
                writeln!(out, "connected at: {t}")?;
            }
            if let Some(e) = &v.evidence {
                writeln!(out, "evidence:     {e}")?;
            }
            writeln!(out, "messages:     {}", v.messages)?;
            match &v.latest_verification {
                Some(x) => {
                    writeln!(
                        out,
                        "verification: {} (message {}, {})",
                        x.provider,
                        x.queue_id,
                        rfc3339(x.received_at)
                    )?;
                    writeln!(out, "  code:       {}", x.code.as_deref().unwrap_or("-"))?;
                    writeln!(out, "  link:       {}", x.link.as_deref().unwrap_or("-"))?;
                    writeln!(out, "  confirms:   {}", x.address.as_deref().unwrap_or("-"))?;
                }
                None => writeln!(out, "verification: none received")?,
            }
            if !v.admins.is_empty() {
                writeln!(out, "admins:       {}", v.admins.join(", "))?;
            }
            match &v.from_address {
                Some(a) if v.from_address_verified => writeln!(out, "from:         {a} (verified)")?,
                Some(a) => writeln!(
                    out,
                    "from:         {a} (NOT verified: not used until `inbound inboxes verify-from {} {a}` and confirm-from)",
                    v.id
                )?,
                None => {}
            }
            if !v.verified_from.is_empty() {
                writeln!(out, "verified:     {}", v.verified_from.join(", "))?;
            }
            if let Some(p) = &v.pending_from_verification {
                writeln!(out, "pending:      code sent to {p}, awaiting confirm-from")?;
            }
        }
        InboxesCommand::Confirm { id, store } => {
            let cfg = load_config(store.config.as_ref())?;
            let Some(inbox) = cfg.inboxes.get(&id) else {
                bail!("no inbox {id:?} in this config");
            };
            let (resp, _) = admin_request(
                &store,
                Request::InboxConfirm {
                    id: id.clone(),
                    address: inbox.address.clone(),
                },
            )?;
            let st: crate::store::model::InboxState = decode(resp)?;
            writeln!(
                out,
                "{id}: {} ({})",
                st.state,
                st.evidence.unwrap_or_default()
            )?;
        }
        InboxesCommand::VerifyFrom { id, address, store } => {
            let (resp, _) = admin_request(&store, Request::VerifyFrom { id, address })?;
            let r: crate::notify::verify_from::Requested = decode(resp)?;
            writeln!(
                out,
                "{}: verification code sent to {} (outbox item {}); it expires at {}",
                r.inbox,
                r.address,
                r.outbox_id,
                rfc3339(r.expires_at)
            )?;
        }
        InboxesCommand::ConfirmFrom { id, code, store } => {
            let (resp, _) = admin_request(&store, Request::ConfirmFrom { id, code })?;
            let v: serde_json::Value = decode(resp)?;
            writeln!(
                out,
                "{}: {} verified as a from-address",
                v["inbox"].as_str().unwrap_or_default(),
                v["verified"].as_str().unwrap_or_default()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn conversations(command: ConversationsCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        ConversationsCommand::List {
            store,
            inbox,
            limit,
            after,
            json,
        } => {
            let (resp, _) = admin_request(
                &store,
                Request::ConversationsList {
                    inbox,
                    after,
                    limit,
                },
            )?;
            let list: Vec<crate::store::model::Conversation> = decode(resp)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &list)?;
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
                serde_json::to_writer_pretty(&mut out, &view)?;
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
                        .any(|r| r.thread == "duplicate")
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

fn route_explain(
    config: Option<&PathBuf>,
    json: bool,
    mail_from: Option<&str>,
    rcpt: Option<&str>,
    message: &PathBuf,
) -> Result<ExitCode> {
    let cfg = std::sync::Arc::new(load_config(config)?);
    let raw = std::fs::read(message).with_context(|| format!("reading {}", message.display()))?;
    let header_from = crate::pipeline::parse::summarize(&raw).from;
    let mail_from = mail_from.unwrap_or(&header_from);
    let e = runtime()?
        .block_on(crate::pipeline::explain(cfg, &raw, mail_from, rcpt))
        .context("explaining the message")?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &e)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let a = &e.attribution;
    writeln!(out, "inbox:        {}", e.inbox)?;
    writeln!(out, "subject:      {}", e.subject)?;
    writeln!(
        out,
        "attributed:   {}{} (method: {})",
        a.name
            .as_deref()
            .map(|n| format!("{n} "))
            .unwrap_or_default(),
        format_args!("<{}>", a.email),
        a.method
    )?;
    if let Some(f) = &a.forwarded_by {
        writeln!(out, "forwarded by: {f}")?;
    }
    writeln!(
        out,
        "thread:       {} ({})",
        e.thread["decision"].as_str().unwrap_or(""),
        e.thread["reason"].as_str().unwrap_or("")
    )?;
    writeln!(
        out,
        "rule:         {}",
        e.rule.as_deref().unwrap_or("(none matched: unassigned)")
    )?;
    writeln!(
        out,
        "assignment:   {} ({})",
        e.assignment["assignee"].as_str().unwrap_or("(unassigned)"),
        e.assignment["how"].as_str().unwrap_or("")
    )?;
    match &e.ticket {
        Some(t) => writeln!(
            out,
            "ticket:       yes: pipeline {}, stage {}, priority {}, owner {}",
            t.pipeline,
            t.stage,
            t.priority,
            t.owner.as_deref().unwrap_or("-")
        )?,
        None => writeln!(out, "ticket:       no")?,
    }
    if let Some(reason) = &e.automatic {
        writeln!(out, "automatic:    {reason}")?;
    }
    writeln!(
        out,
        "verification: {}",
        e.verification
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "none".into())
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Run one admin request: through the running server's socket when there is one, else on the
/// store directly.
fn admin_request(store: &StoreArgs, req: Request) -> Result<(Response, Vec<u8>)> {
    let mut cfg = load_config(store.config.as_ref())?;
    if let Some(dir) = &store.data_dir {
        cfg.override_data_dir(dir.clone());
    }
    let rt = runtime()?;
    if let Some(answer) = rt
        .block_on(admin::call(&cfg.admin_socket, &req))
        .with_context(|| {
            format!(
                "asking the running server at {}",
                cfg.admin_socket.display()
            )
        })?
    {
        return Ok(answer);
    }
    if !Store::data_path(&cfg.data_dir).exists() {
        bail!(
            "no store in {} (has the server run with this data directory?)",
            cfg.data_dir.display()
        );
    }
    let _guard = rt.enter();
    let store = Store::open(&cfg.data_dir, &cfg.store).with_context(|| {
        format!(
            "opening the store in {} (no server answered on {})",
            cfg.data_dir.display(),
            cfg.admin_socket.display()
        )
    })?;
    Ok(admin::execute(&store, &cfg, &req))
}

fn messages(command: MessagesCommand) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match command {
        MessagesCommand::List {
            store,
            limit,
            after,
            json,
        } => {
            let (resp, _) = admin_request(&store, Request::MessagesList { after, limit })?;
            let records: Vec<MessageRecord> = decode(resp)?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &records)?;
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
            let (resp, bytes) = admin_request(&store, Request::MessagesShow { queue_id, raw })?;
            let record: MessageRecord = decode(resp)?;
            if raw {
                stdout.write_all(&bytes)?;
            } else if json {
                serde_json::to_writer_pretty(&mut stdout, &record)?;
                writeln!(stdout)?;
            } else {
                print_record(&mut stdout, &record)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn decode<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T> {
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()));
    }
    serde_json::from_value(resp.data.unwrap_or_default()).context("decoding the server's answer")
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

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}
