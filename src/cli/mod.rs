//! The `inbound` command line: parse, set up logging, dispatch to one file per group of
//! subcommands. Errors here are `anyhow` with context, printed once with `{:#}`; the library below
//! returns typed errors.

mod config;
mod conversations;
mod generate;
mod health;
mod inboxes;
mod messages;
mod outbox;
mod quarantine;
mod route;
mod serve;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::server::admin::{self, Request, Response};
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "inbound",
    // The commit too: "which build is this?" is the first question about a running server.
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("INBOUND_GIT_COMMIT"), ")"),
    about = "The MX for hosted team inboxes"
)]
pub(crate) struct Cli {
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
        command: messages::MessagesCommand,
    },
    /// Hosted inboxes: setup state, forwarding address, counts, latest verification request.
    Inboxes {
        #[command(subcommand)]
        command: inboxes::InboxesCommand,
    },
    /// Look at conversations (threads of messages, with assignee and ticket).
    Conversations {
        #[command(subcommand)]
        command: conversations::ConversationsCommand,
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
        #[command(subcommand)]
        command: Option<outbox::OutboxCommand>,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// The PostgreSQL store: apply its schema, copy an embedded store into it.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// The effective config: `inbound config show`.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Quarantined messages: list, release into their inboxes, delete.
    Quarantine {
        #[command(subcommand)]
        command: quarantine::QuarantineCommand,
    },
    /// Generate man pages or shell completions (for packagers; the image installs both).
    Generate {
        #[command(subcommand)]
        command: generate::GenerateCommand,
    },
    /// Probe the running server's API (/healthz): exit 0 when healthy (the image's HEALTHCHECK).
    Health {
        /// API address (default: api.listen of the config found as the other commands find it).
        #[arg(long)]
        api: Option<SocketAddr>,
    },
    /// Drive concurrent SMTP clients against a server and print throughput, latency and RSS.
    #[cfg(feature = "bench")]
    Bench(crate::bench::BenchArgs),
}

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Data directory of the server (default: the config's).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Config file whose data directory to read (default: the embedded config).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
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
    if let Err(e) = init_tracing(cli.log_json, default_level) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log to stderr. An `INBOUND_LOG` that is set but does not parse is an error: silently logging
/// at the default level would hide exactly what the operator asked to see.
fn init_tracing(json: bool, default_level: &str) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("INBOUND_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).map_err(|e| {
            anyhow::anyhow!(
                "INBOUND_LOG={spec:?} is not a valid log filter ({e}); e.g. INBOUND_LOG=info,inbound=debug"
            )
        })?,
        _ => EnvFilter::new(default_level),
    };
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
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Where the tools look for the config when no `--config` is given, after `$INBOUND_CONFIG`.
pub const SYSTEM_CONFIG: &str = "/etc/inbound/inbound.toml";

/// The config for an operator command, found as an operator expects without flags: `--config`,
/// else `$INBOUND_CONFIG`, else /etc/inbound/inbound.toml when it exists, else the embedded
/// demo config. (`serve` keeps its own rule: `--config` or the demo.)
fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    let found = match path {
        Some(p) => Some(p.clone()),
        None => match std::env::var_os("INBOUND_CONFIG") {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => Some(PathBuf::from(SYSTEM_CONFIG)).filter(|p| p.exists()),
        },
    };
    match found {
        Some(p) => Config::load(&p).with_context(|| format!("loading {}", p.display())),
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
        } => serve::run(config, listen, data_dir, api_listen),
        Command::CheckConfig { file } => config::check(file),
        Command::Messages { command } => messages::run(command),
        Command::Health { api } => health::run(api),
        Command::Generate { command } => generate::run(command),
        #[cfg(feature = "bench")]
        Command::Bench(args) => crate::bench::run(args),
        Command::Conversations { command } => conversations::run(command),
        Command::Inboxes { command } => inboxes::run(command),
        Command::Outbox {
            command: Some(command),
            ..
        } => outbox::act(command),
        Command::Outbox {
            command: None,
            store,
            json,
        } => outbox::run(&store, json),
        Command::Quarantine { command } => quarantine::run(command),
        Command::Config { command } => config::run(command),
        Command::Store { command } => store::run(command),
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
            route::explain(
                config.as_ref(),
                json,
                mail_from.as_deref(),
                rcpt.as_deref(),
                &message,
            )
        }
    }
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
    let embedded = matches!(cfg.store.backend, crate::config::StoreBackend::Sled);
    if embedded && !Store::data_path(&cfg.data_dir).exists() {
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
    // The definitions made through the API count as the running server's would (a clash is
    // reported by check-config and refused at start; here the file's are kept).
    if let Ok(Ok(merged)) = crate::context::reload::with_store_definitions(&cfg, &store) {
        cfg = merged;
    }
    Ok(admin::execute(&store, &cfg, &req))
}

/// The users, teams and active inboxes created through the API, asked of the running server
/// or read from the store; `None` when neither answers.
fn api_definitions(
    store: &StoreArgs,
) -> Option<(
    crate::config::people::ApiPeople,
    Vec<crate::config::raw::RawInbox>,
)> {
    let (resp, _) = admin_request(store, Request::InboxDefinitions).ok()?;
    let defs = decode::<Vec<crate::store::model::InboxDefinition>>(resp).ok()?;
    let (resp, _) = admin_request(store, Request::PeopleDefinitions).ok()?;
    let people = decode(resp).ok()?;
    Some((people, crate::context::reload::active_specs(&defs)))
}

/// `cfg` with the users, teams and inboxes created through the API added; `cfg` as it is when
/// neither the server nor the store answers or they clash (check-config says why).
fn with_api_definitions(store: &StoreArgs, cfg: Config) -> Config {
    let Some((people, specs)) = api_definitions(store) else {
        return cfg;
    };
    cfg.with_api_definitions(&people, &specs, crate::config::inboxes::Blame::File)
        .unwrap_or(cfg)
}

fn decode<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T> {
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()));
    }
    serde_json::from_value(resp.data.unwrap_or_default()).context("decoding the server's answer")
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
