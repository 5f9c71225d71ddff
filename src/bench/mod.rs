//! `inbound bench`: message size × client count -> messages/s, end-of-data latency (p50, p99) and
//! the server's peak RSS, each the median of repeated runs. RFC 5321 §4.1.1.4 (DATA and its
//! terminator, §4.5.2 dot-stuffing), RFC 2920 (MAIL, RCPT and DATA go out in one write).
//!
//! Without `--target`, every run gets a server of its own: this binary re-executed as
//! `serve --config <tmp>.toml` on a fresh data directory and a free loopback port, so no run
//! inherits another's database, and VmHWM (peak RSS) belongs to that run alone. The server is
//! stopped with SIGTERM, as an operator would, and its directory removed.
//!
//! `--store postgres` puts those servers on PostgreSQL: the database at `--store-url`, or
//! without it a throwaway cluster per run started as the tests start theirs
//! (`testkit::pg`, fsync on: a commit is on disk, as sled's are). `--nodes 2` starts two servers
//! on 127.0.0.1 and 127.0.0.2 sharing the database and splits the clients between them; after a
//! PostgreSQL run the bench checks that every message answered 250 is stored and that no
//! Message-ID made two conversations. Commits and retries come from each server's `/metrics`.
//!
//! What a mode may change is confined to `Mode`: the message bytes (`Messages`) and the extra
//! server configuration (`Mode::configure`). A DKIM/SPF/DMARC mode adds a variant there.
//!
//! Compiled only with the `bench` feature. Here: the arguments, the modes and the run loop; the
//! messages in `messages`, the server a run measures in `server`, the clients in `load`, the
//! figures and the report in `report`. Its SMTP client, DKIM signer, DNS server and server
//! config are the tests' own, from `crate::testkit`.

mod load;
mod messages;
mod report;
mod server;

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use crate::config::DEFAULT_MAX_MESSAGE_BYTES;
use crate::testkit::config::ConfigBuilder;
use crate::testkit::dns::TestDns;
use crate::testkit::sign::{self, TestKey};
use crate::testkit::smtp::{dot_stuff, Client};
use load::*;
use messages::*;
use report::*;
use server::*;

/// How long a client waits for any one reply. Past it the message counts as failed and the client
/// stops (its connection is in an unknown state); the others go on.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a started server has to accept its first connection before the run is abandoned.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server has to exit after SIGTERM before it is killed (the generated config gives it
/// a shutdown deadline well below this).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Body text lines: 76 characters and CRLF, the width mail clients wrap at.
const LINE_CHARS: usize = 76;
/// Envelope and header senders of plain-mode messages (RFC 2606 reserved domain), numbered.
const PLAIN_FROM_DOMAIN: &str = "sender.bench.example";

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Message sizes in bytes as stored, comma-separated: 4k, 100k, 1m (binary units) or bytes.
    #[arg(long, value_delimiter = ',', default_value = "4k,100k,1m", value_parser = parse_size)]
    sizes: Vec<u64>,
    /// Concurrent clients, one connection each; a list (20,100) benches each count in turn.
    #[arg(long, value_delimiter = ',', default_value = "20")]
    clients: Vec<usize>,
    /// Runs per size × clients; every figure is the median of the runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Messages per run [default: 10000 up to 16 KiB, 2000 up to 256 KiB, 500 above: a few
    /// seconds per run at the target rates].
    #[arg(long)]
    messages: Option<u64>,
    /// Bench a server that is already running at HOST:PORT instead of starting one per run.
    #[arg(long)]
    target: Option<String>,
    /// With --target: the server's process id, to read its peak RSS from /proc.
    #[arg(long, requires = "target")]
    server_pid: Option<u32>,
    /// Recipient of every message; without --target the generated config hosts it.
    #[arg(long, default_value = "support@demo.inbound.test")]
    rcpt: String,
    /// Distinct senders (MAIL FROM and From:) the messages take turns with. 1, like smtp-source:
    /// one contact then collects every conversation, the worst case for per-sender state.
    #[arg(long, default_value_t = 1)]
    senders: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// What is sent and what the server checks.
    #[arg(long, value_enum, default_value_t = Mode::Plain)]
    mode: Mode,
    /// The store of the started servers.
    #[arg(long, value_enum, default_value_t = StoreKind::Sled, conflicts_with = "target")]
    store: StoreKind,
    /// With --store postgres: the database (empty, or at this build's schema; every run adds to
    /// it). Without it, each run starts a throwaway PostgreSQL cluster of its own.
    #[arg(long, conflicts_with = "target")]
    store_url: Option<String>,
    /// Servers per run sharing the database (2 needs --store postgres): on 127.0.0.1, then
    /// 127.0.0.2; client i talks to server i mod nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2), conflicts_with = "target")]
    nodes: u8,
    /// With --store postgres: committer connections per server [default: the server's own].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=64), conflicts_with = "target")]
    committers: Option<u8>,
}

/// The store the started servers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded store, one data directory per server.
    Sled,
    /// PostgreSQL, shared by the run's servers.
    Postgres,
}

/// What a bench mode decides: the bytes of each message and the server configuration they meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Unsigned RFC 5322 messages to a server with sender authentication off: the ingest path
    /// (session, parse, durable commit) alone, with no DNS.
    Plain,
    /// The same messages, each DKIM-signed (RSA-2048) by a sender domain with SPF, DKIM and
    /// DMARC (p=reject) records on a loopback DNS server started by the bench: every message
    /// goes through full SPF, DKIM, ARC and DMARC checks, with DNS answers cached.
    Auth,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Auth => "auth",
        }
    }

    /// The messages of one size. Built once per size and shared by every client, so rendering a
    /// message costs a copy, not a rebuild (a signing mode signs in `render`).
    fn messages(self, size: u64, rcpt: &str) -> Result<Arc<dyn Messages>> {
        match self {
            Mode::Plain => Ok(Arc::new(PlainMessages::new(size, rcpt, now_ms())?)),
            Mode::Auth => Ok(Arc::new(SignedMessages::new(PlainMessages::new(
                size,
                rcpt,
                now_ms(),
            )?)?)),
        }
    }

    /// What this mode changes in the generated server config.
    fn configure(self, config: ConfigBuilder) -> Result<ConfigBuilder> {
        match self {
            // Loopback has no resolver here: with checks on, every message would wait for DNS
            // timeouts and end 451. Measuring SPF/DKIM/DMARC is a mode of its own.
            Mode::Plain => Ok(config.set("auth", "enabled = false")),
            Mode::Auth => Ok(config.resolver(auth_dns()?).set("dns", "timeout = \"2s\"")),
        }
    }
}

/// `4k`, `100K`, `1m`, `2MiB`, `512`: binary units, as stored sizes are usually quoted.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("invalid size {s:?} (use e.g. 4k, 100k, 1m)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("invalid size {s:?}"))
}

/// The label a size is shown with: the shortest of `1m`, `100k`, `4000`.
fn size_label(size: u64) -> String {
    if size.is_multiple_of(1024 * 1024) {
        format!("{}m", size / (1024 * 1024))
    } else if size.is_multiple_of(1024) {
        format!("{}k", size / 1024)
    } else {
        size.to_string()
    }
}

/// Enough messages for a run of a few seconds at the targets (2400/s at 4 KiB, 188/s at 1 MiB):
/// a run of one second is mostly start-up and noise on a shared host.
fn default_messages(size: u64) -> u64 {
    match size {
        0..=16_384 => 10_000,
        16_385..=262_144 => 2000,
        _ => 500,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(!args.sizes.is_empty(), "--sizes needs at least one size");
    ensure!(
        args.clients.iter().all(|&c| (1..=MAX_CLIENTS).contains(&c)),
        "--clients must be between 1 and {MAX_CLIENTS}"
    );
    ensure!(
        (1..=MAX_SENDERS).contains(&args.senders),
        "--senders must be between 1 and {MAX_SENDERS}"
    );
    if let Some(m) = args.messages {
        ensure!(
            (1..=MAX_MESSAGES).contains(&m),
            "--messages must be between 1 and {MAX_MESSAGES}"
        );
    }
    ensure!(
        crate::config::split_address(&args.rcpt).is_some(),
        "--rcpt {:?} is not an address",
        args.rcpt
    );
    ensure!(
        args.nodes == 1 || args.store == StoreKind::Postgres,
        "--nodes 2 needs --store postgres (two servers can share only a database)"
    );
    ensure!(
        (args.store_url.is_none() && args.committers.is_none())
            || args.store == StoreKind::Postgres,
        "--store-url and --committers need --store postgres"
    );
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; only a `cargo build --release` binary gives real figures");
    }
    let load_at_start = load_average();
    let target = match &args.target {
        Some(t) => Some(
            t.to_socket_addrs()
                .with_context(|| format!("resolving --target {t}"))?
                .next()
                .with_context(|| format!("--target {t} resolves to no address"))?,
        ),
        None => None,
    };
    // One thread for all clients: the server under test gets the other cores, and a client's
    // work per message (a copy and four system calls) is small next to the server's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;

    let mut cases = Vec::new();
    for &size in &args.sizes {
        let messages = args.messages.unwrap_or_else(|| default_messages(size));
        let source = args.mode.messages(size, &args.rcpt)?;
        for &clients in &args.clients {
            let case = Case {
                size,
                clients,
                messages,
                senders: args.senders,
                source: source.clone(),
            };
            let mut runs = Vec::new();
            for i in 0..args.runs {
                let r = match target {
                    Some(addr) => run_against(&rt, addr, args.server_pid, &args.rcpt, &case),
                    None => run_with_children(&rt, &args, &case)?,
                };
                eprintln!(
                    "{} × {clients} run {}/{}: {}",
                    size_label(size),
                    i + 1,
                    args.runs,
                    progress(&r)
                );
                runs.push(r);
            }
            cases.push(summarize(size, clients, messages, runs));
        }
    }
    let report = Report {
        mode: args.mode,
        senders: args.senders,
        runs_per_case: args.runs,
        server: match &args.target {
            Some(t) => t.clone(),
            None => format!(
                "{} started per run on {}",
                match args.nodes {
                    1 => "one server".to_string(),
                    n => format!("{n} servers"),
                },
                match (args.store, &args.store_url) {
                    (StoreKind::Sled, _) => "sled".to_string(),
                    (StoreKind::Postgres, None) => "a throwaway PostgreSQL cluster".to_string(),
                    (StoreKind::Postgres, Some(u)) => {
                        format!("PostgreSQL at {}", crate::util::mask_url_password(u))
                    }
                }
            ),
        },
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_at_start,
        cases,
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        stdout.write_all(table(&report).as_bytes())?;
    }
    let failed = report.cases.iter().any(|c| c.failed_runs > 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Undo dot-stuffing and strip the terminator, as the server does.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let body = wire.strip_suffix(b".\r\n").expect("terminator");
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    #[test]
    fn messages_have_the_exact_size_and_unique_ids() {
        for size in [
            600,
            4096,
            4097,
            4098,
            4099,
            100 * 1024,
            1024 * 1024,
            1_000_001,
        ] {
            let m = PlainMessages::new(size, "support@demo.inbound.test", 0).unwrap();
            let mut a = Vec::new();
            let mut b = Vec::new();
            m.render(
                MessageId {
                    run: 1,
                    client: 2,
                    seq: 3,
                    sender: 0,
                },
                &mut a,
            );
            m.render(
                MessageId {
                    run: 1,
                    client: 2,
                    seq: 4,
                    sender: 7,
                },
                &mut b,
            );
            let (a, b) = (unstuff(&a), unstuff(&b));
            assert_eq!(a.len() as u64, size, "size {size}");
            assert_eq!(b.len() as u64, size, "size {size}");
            assert!(b.starts_with(b"From: Bench <bench000007@sender.bench.example>\r\n"));
            assert_eq!(m.mail_from(7), "bench000007@sender.bench.example");
            let text = String::from_utf8(a).unwrap();
            assert!(text.contains("Message-ID: <0000000000000001.00002.000000003@"));
            for field in ["From: ", "To: ", "Subject: ", "Date: ", "Message-ID: <"] {
                assert!(text.contains(&format!("\r\n{field}")) || text.starts_with(field));
            }
            let (_, body) = text.split_once("\r\n\r\n").expect("header/body separator");
            assert!(body.ends_with("\r\n"));
            assert!(body.split("\r\n").all(|l| l.len() <= LINE_CHARS));
        }
        assert!(PlainMessages::new(100, "a@b.example", 0).is_err());
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_only() {
        assert_eq!(dot_stuff(b".a\r\nb.\r\n..\r\n"), b"..a\r\nb.\r\n...\r\n");
    }

    #[test]
    fn sizes_and_medians() {
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("100K"), Ok(102_400));
        assert_eq!(parse_size("1m"), Ok(1_048_576));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("1g").is_err());
        assert_eq!(size_label(102_400), "100k");
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile_ms(&samples, 50.0), 50.0);
        assert_eq!(percentile_ms(&samples, 99.0), 99.0);
    }
}
