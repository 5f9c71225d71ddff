//! `inbound bench`: message size × client count -> messages/s, end-of-data latency (p50, p99) and
//! the server's peak RSS, each the median of repeated runs. RFC 5321 §4.1.1.4 (DATA and its
//! terminator, §4.5.2 dot-stuffing), RFC 2920 (MAIL, RCPT and DATA go out in one write).
//!
//! Without `--target`, every run gets a server of its own: this binary re-executed as
//! `serve --config <tmp>.toml` on a fresh data directory and a free loopback port, so no run
//! inherits another's database, and VmHWM (peak RSS) belongs to that run alone. The server is
//! stopped with SIGTERM, as an operator would, and its directory removed.
//!
//! What a mode may change is confined to `Mode`: the message bytes (`Messages`) and the extra
//! server configuration (`Mode::configure`). A DKIM/SPF/DMARC mode adds a variant there.
//!
//! Long file: the whole load generator (cases, runs, messages, the pipelined transaction, the
//! report), compiled only with the `bench` feature. Its SMTP client, DKIM signer, DNS server and
//! server config are the tests' own, from `crate::testkit`.

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

/// The DKIM selector of the bench sender domain.
const DKIM_SELECTOR: &str = "bench";
/// The loopback DNS server of `--mode auth` (started once per process, on a thread and runtime
/// of its own that outlive every run): SPF authorises 127.0.0.1 for the sender domain, its DKIM
/// key, and DMARC p=reject; every other name is NXDOMAIN, so no query leaves the machine.
fn auth_dns() -> Result<SocketAddr> {
    static DNS: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    if let Some(a) = DNS.get() {
        return Ok(*a);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-dns".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return drop(tx.send(Err(e))),
            };
            rt.block_on(async {
                let dns = TestDns::start().await;
                dns.add_txt(PLAIN_FROM_DOMAIN, "v=spf1 ip4:127.0.0.1 -all");
                dns.add_txt(&format!("_dmarc.{PLAIN_FROM_DOMAIN}"), "v=DMARC1; p=reject");
                TestKey::rsa().publish(&dns, DKIM_SELECTOR, PLAIN_FROM_DOMAIN);
                let _ = tx.send(Ok(dns.addr()));
                // Serve until the process exits.
                std::future::pending::<()>().await
            })
        })
        .context("starting the bench DNS server")?;
    let addr = rx
        .recv()
        .context("the bench DNS server did not start")?
        .context("starting the bench DNS server")?;
    Ok(*DNS.get_or_init(|| addr))
}

/// Plain messages with a DKIM-Signature of the sender domain. The signature covers From, To,
/// Subject and Date and the body, not the Message-ID, so one signature per sender serves every
/// message: the server verifies each one in full while the client signs once.
struct SignedMessages {
    plain: PlainMessages,
    signatures: std::sync::Mutex<std::collections::HashMap<u32, Vec<u8>>>,
}

impl SignedMessages {
    fn new(plain: PlainMessages) -> Result<SignedMessages> {
        Ok(SignedMessages {
            plain,
            signatures: Default::default(),
        })
    }

    fn signature(&self, sender: u32) -> Vec<u8> {
        let mut map = self.signatures.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(sender)
            .or_insert_with(|| {
                let mut template = Vec::new();
                self.plain.render(
                    MessageId {
                        run: 0,
                        client: 0,
                        seq: 0,
                        sender,
                    },
                    &mut template,
                );
                // The rendered message is dot-stuffed and terminated; sign the message itself.
                let unstuffed = template
                    .strip_suffix(b".\r\n")
                    .map(|m| m.to_vec())
                    .unwrap_or_default()
                    .split(|&b| b == b'\n')
                    .map(|line| {
                        line.strip_prefix(b"..")
                            .map(|l| [b".", l].concat())
                            .unwrap_or(line.to_vec())
                    })
                    .collect::<Vec<_>>()
                    .join(&b'\n');
                sign::dkim_signature(
                    &unstuffed,
                    PLAIN_FROM_DOMAIN,
                    DKIM_SELECTOR,
                    &TestKey::rsa(),
                    &["From", "To", "Subject", "Date"],
                )
                .into_bytes()
            })
            .clone()
    }
}

impl Messages for SignedMessages {
    fn mail_from(&self, sender: u32) -> String {
        self.plain.mail_from(sender)
    }

    fn render(&self, id: MessageId, out: &mut Vec<u8>) {
        let sig = self.signature(id.sender);
        self.plain.render(id, out);
        out.splice(0..0, sig);
    }
}

/// Which message a client sends: unique across runs, clients and sequence numbers.
#[derive(Debug, Clone, Copy)]
struct MessageId {
    run: u64,
    client: u32,
    seq: u64,
    /// Which of the `--senders` sends it.
    sender: u32,
}

/// A source of benchmark messages for one size.
trait Messages: Send + Sync {
    /// The envelope sender (MAIL FROM) of `sender`'s messages.
    fn mail_from(&self, sender: u32) -> String;
    /// Replace `out` with message `id` as sent after the 354: dot-stuffed and terminated by
    /// `.<CRLF>`. Unstuffed, it is exactly the size the source was built for.
    fn render(&self, id: MessageId, out: &mut Vec<u8>);
}

/// Plain messages: From, To, Subject, Date, MIME-Version, Content-Type and a unique Message-ID,
/// then text lines up to the exact size. The sender and the Message-ID have fixed widths, so the
/// padding is computed once and shared.
struct PlainMessages {
    /// Header fields after the From address, up to and including `Message-ID: <`.
    head: Vec<u8>,
    /// After the Message-ID's local part: its domain, the end of the header section.
    head_tail: &'static [u8],
    /// The body, dot-stuffed, with the terminator.
    body: Vec<u8>,
}

/// Width of `{run:016x}.{client:05}.{seq:09}`.
const MESSAGE_ID_LOCAL_CHARS: usize = 16 + 1 + 5 + 1 + 9;
const MAX_CLIENTS: usize = 99_999;
const MAX_MESSAGES: u64 = 999_999_999;
const MAX_SENDERS: u32 = 999_999;
/// `From: Bench <` and the address, whose local part is `bench{sender:06}`.
const FROM_FIELD: &str = "From: Bench <";

fn plain_sender(sender: u32) -> String {
    format!("bench{sender:06}@{PLAIN_FROM_DOMAIN}")
}

impl PlainMessages {
    fn new(size: u64, rcpt: &str, date_ms: u64) -> Result<PlainMessages> {
        let head = format!(
            ">\r\nTo: <{rcpt}>\r\nSubject: inbound bench, {size} bytes\r\n\
             Date: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\
             Message-ID: <",
            crate::util::rfc5322_date(date_ms)
        )
        .into_bytes();
        let head_tail: &'static [u8] = b"@bench.inbound.test>\r\n\r\n";
        let head_len = FROM_FIELD.len()
            + plain_sender(0).len()
            + head.len()
            + MESSAGE_ID_LOCAL_CHARS
            + head_tail.len();
        let body = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_sub(head_len))
            .and_then(padding);
        let Some(body) = body else {
            let min = head_len + LINE_CHARS + 2;
            bail!("size {size} is too small: its header section is {head_len} bytes; use {min}+");
        };
        let mut body = dot_stuff(&body);
        body.extend_from_slice(b".\r\n");
        Ok(PlainMessages {
            head,
            head_tail,
            body,
        })
    }
}

impl Messages for PlainMessages {
    fn mail_from(&self, sender: u32) -> String {
        plain_sender(sender)
    }

    fn render(&self, id: MessageId, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(FROM_FIELD.as_bytes());
        out.extend_from_slice(plain_sender(id.sender).as_bytes());
        out.extend_from_slice(&self.head);
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{:016x}.{:05}.{:09}", id.run, id.client, id.seq);
        out.extend_from_slice(self.head_tail);
        out.extend_from_slice(&self.body);
    }
}

/// `bytes` of body text: lines of `LINE_CHARS` characters and CRLF, the last one or two shorter so
/// the total is exact. `None` when no set of lines adds up (1 byte).
fn padding(bytes: usize) -> Option<Vec<u8>> {
    const TEXT: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod \
        tempor incididunt ut labore et dolore magna aliqua 0123456789 ";
    let line = LINE_CHARS + 2;
    let (mut full, rest) = (bytes / line, bytes % line);
    let mut tail: Vec<usize> = Vec::new();
    match rest {
        0 => {}
        // A lone byte cannot be a line: split one full line and the byte into two lines.
        1 if full > 0 => {
            full -= 1;
            let first = (line + 1).div_ceil(2);
            tail.extend([first - 2, line + 1 - first - 2]);
        }
        1 => return None,
        r => tail.push(r - 2),
    }
    let mut out = Vec::with_capacity(bytes);
    let lengths = std::iter::repeat_n(LINE_CHARS, full).chain(tail);
    for (i, chars) in lengths.enumerate() {
        let start = (i * 7) % TEXT.len();
        out.extend((0..chars).map(|k| TEXT[(start + k) % TEXT.len()]));
        out.extend_from_slice(b"\r\n");
    }
    debug_assert_eq!(out.len(), bytes);
    Some(out)
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

// ---------------------------------------------------------------------------------------------
// Results

/// One size × client count, run `--runs` times.
struct Case {
    size: u64,
    clients: usize,
    messages: u64,
    senders: u32,
    source: Arc<dyn Messages>,
}

#[derive(Debug, Clone, Serialize)]
struct RunResult {
    /// Messages answered 250.
    ok: u64,
    /// Messages not answered 250 (any reply in the transaction, or a broken connection).
    failed: u64,
    /// From the moment every client had its EHLO answered to the last final reply.
    elapsed_s: f64,
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// VmHWM of the server process; `None` when there is no process to read.
    peak_rss_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Medians {
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct CaseResult {
    size: String,
    size_bytes: u64,
    clients: usize,
    messages: u64,
    median: Medians,
    /// Runs with at least one failed message.
    failed_runs: usize,
    runs: Vec<RunResult>,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: Mode,
    senders: u32,
    runs_per_case: usize,
    /// "started per run" or the --target address.
    server: String,
    /// Clients and server share these CPUs; other load on them shows in the figures.
    cpus: usize,
    /// 1-minute load average when the bench started (from /proc/loadavg).
    load_at_start: Option<f64>,
    cases: Vec<CaseResult>,
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn summarize(size: u64, clients: usize, messages: u64, runs: Vec<RunResult>) -> CaseResult {
    let pick = |f: &dyn Fn(&RunResult) -> Option<f64>| {
        let mut v: Vec<f64> = runs.iter().filter_map(f).collect();
        median(&mut v)
    };
    CaseResult {
        size: size_label(size),
        size_bytes: size,
        clients,
        messages,
        median: Medians {
            msgs_per_s: pick(&|r| Some(r.msgs_per_s)).unwrap_or(0.0),
            p50_ms: pick(&|r| Some(r.p50_ms)).unwrap_or(0.0),
            p99_ms: pick(&|r| Some(r.p99_ms)).unwrap_or(0.0),
            peak_rss_mib: pick(&|r| r.peak_rss_mib),
        },
        failed_runs: runs.iter().filter(|r| r.failed > 0).count(),
        runs,
    }
}

// ---------------------------------------------------------------------------------------------
// Entry point

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
                    None => run_with_child(&rt, args.mode, &args.rcpt, &case)?,
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
            None => "started per run".into(),
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

/// One run in a line, for stderr while the bench goes on.
fn progress(r: &RunResult) -> String {
    let rss = r
        .peak_rss_mib
        .map(|m| format!("{m:.1} MiB"))
        .unwrap_or_else(|| "n/a".into());
    let mut line = format!(
        "{:.1} msgs/s, p50 {:.2} ms, p99 {:.2} ms, peak RSS {rss}",
        r.msgs_per_s, r.p50_ms, r.p99_ms
    );
    if r.failed > 0 {
        let error = r.first_error.as_deref().unwrap_or("?");
        let _ = write!(line, ", {} FAILED: {error}", r.failed);
    }
    line
}

fn table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "inbound bench: mode {}, {} sender{}, server {}, {} run{} per case (median, then each run)",
        report.mode.name(),
        report.senders,
        if report.senders == 1 { "" } else { "s" },
        report.server,
        report.runs_per_case,
        if report.runs_per_case == 1 { "" } else { "s" }
    );
    let load = report
        .load_at_start
        .map(|l| format!(", load average {l:.2} at start"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "host: {} CPUs shared by clients and server{load}\n",
        report.cpus
    );
    let header = [
        "size",
        "clients",
        "msgs",
        "msgs/s",
        "p50 ms",
        "p99 ms",
        "peak RSS MiB",
        "result",
    ];
    row(&mut s, header.map(String::from));
    let rss = |v: Option<f64>| v.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into());
    for c in &report.cases {
        let verdict = if c.failed_runs == 0 {
            "ok".to_string()
        } else {
            format!("{} of {} runs FAILED", c.failed_runs, c.runs.len())
        };
        let m = &c.median;
        row(
            &mut s,
            [
                c.size.clone(),
                c.clients.to_string(),
                c.messages.to_string(),
                format!("{:.1}", m.msgs_per_s),
                format!("{:.2}", m.p50_ms),
                format!("{:.2}", m.p99_ms),
                rss(m.peak_rss_mib),
                verdict,
            ],
        );
        for (i, r) in c.runs.iter().enumerate() {
            let verdict = match (r.failed, &r.first_error) {
                (0, _) => String::new(),
                (n, e) => format!("{n} FAILED: {}", e.as_deref().unwrap_or("?")),
            };
            row(
                &mut s,
                [
                    format!("  #{}", i + 1),
                    String::new(),
                    (r.ok + r.failed).to_string(),
                    format!("{:.1}", r.msgs_per_s),
                    format!("{:.2}", r.p50_ms),
                    format!("{:.2}", r.p99_ms),
                    rss(r.peak_rss_mib),
                    verdict,
                ],
            );
        }
    }
    s
}

/// One table line: the size left-aligned, figures right-aligned, the verdict last.
fn row(s: &mut String, [size, clients, msgs, rate, p50, p99, rss, verdict]: [String; 8]) {
    let line = format!(
        "{size:<6} {clients:>7} {msgs:>6}  {rate:>10} {p50:>8} {p99:>8} {rss:>13}  {verdict}"
    );
    // A row without a verdict would end in padding.
    let _ = writeln!(s, "{}", line.trim_end());
}

// ---------------------------------------------------------------------------------------------
// Servers

/// One run against a server we do not own. Its peak RSS is the process's since start unless
/// /proc/<pid>/clear_refs lets us reset it (same user, Linux ≥ 4.0).
fn run_against(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    pid: Option<u32>,
    rcpt: &str,
    case: &Case,
) -> RunResult {
    if let Some(pid) = pid {
        // "5" resets the peak RSS to the current RSS (proc(5)); without it the figure is the
        // peak since the server started, which is still an upper bound.
        if std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_err() {
            eprintln!(
                "note: cannot reset the peak RSS of pid {pid}; reporting its peak since start"
            );
        }
    }
    let mut r = rt.block_on(load(addr, rcpt, case));
    r.peak_rss_mib = pid.and_then(peak_rss_mib);
    r
}

/// One run against a server started for it, on a fresh data directory.
fn run_with_child(
    rt: &tokio::runtime::Runtime,
    mode: Mode,
    rcpt: &str,
    case: &Case,
) -> Result<RunResult> {
    let server = ChildServer::start(mode, rcpt, case.clients, case.size)?;
    let mut r = rt.block_on(load(server.addr, rcpt, case));
    r.peak_rss_mib = peak_rss_mib(server.child.id());
    server.stop()?;
    Ok(r)
}

/// VmHWM of a process, from /proc/<pid>/status (kB there).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `inbound serve` as a child process on a scratch directory. Dropping it kills the server and
/// removes the directory, so an error half-way through a run leaves nothing behind.
struct ChildServer {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl ChildServer {
    fn start(mode: Mode, rcpt: &str, clients: usize, size: u64) -> Result<ChildServer> {
        static RUN: AtomicU64 = AtomicU64::new(0);
        // Short: the admin socket lives under it, and Unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!(
            "/tmp/ibb-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let addr = free_port().context("finding a free loopback port")?;
        let config = mode.configure(server_config(&dir, addr, rcpt, clients, size))?;
        let config_path = dir.join("inbound.toml");
        std::fs::write(&config_path, config.toml())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let exe = std::env::current_exe().context("locating the inbound binary")?;
        let child = Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let mut server = ChildServer { child, dir, addr };
        server.wait_ready()?;
        Ok(server)
    }

    /// Until the server answers a connection with 220 (it binds only after opening its store).
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited at start ({status}):\n{}",
                    self.log_tail()
                );
            }
            if let Ok(mut s) =
                std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200))
            {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut greeting = [0u8; 512];
                let n = s.read(&mut greeting).unwrap_or(0);
                if greeting[..n].starts_with(b"220") {
                    let _ = s.write_all(b"QUIT\r\n");
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not answer on {} within {:?}:\n{}",
                    self.addr,
                    START_TIMEOUT,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, as an operator stops it (graceful shutdown is part of what is being run), then
    /// wait; a server that does not exit in time is killed and reported.
    fn stop(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("running kill -TERM")?;
        ensure!(status.success(), "kill -TERM {pid} failed ({status})");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    eprintln!(
                        "warning: the server exited with {status}:\n{}",
                        self.log_tail()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not exit within {:?} of SIGTERM (killed):\n{}",
                    STOP_TIMEOUT,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on now. Another process could take it before the server
/// binds; the server then fails to start and the run reports it.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The generated server config: one loopback listener, the recipient's inbox, and limits raised
/// so that the bench measures the server's work rather than its abuse limits.
fn server_config(
    dir: &Path,
    addr: SocketAddr,
    rcpt: &str,
    clients: usize,
    size: u64,
) -> ConfigBuilder {
    // The inbox is the recipient without any +tag (a tagged address reaches its inbox).
    let (local, domain) = crate::config::split_address(rcpt).unwrap_or((rcpt, "invalid"));
    let local = local.split('+').next().unwrap_or(local);
    let max_connections = (clients + 16).max(64);
    let max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES.max(size.saturating_mul(2));
    ConfigBuilder::new(&dir.join("data"))
        .set("server", "hostname = \"mx.bench.inbound.test\"")
        .set("server", "shutdown_timeout = \"10s\"")
        .listener(&addr.to_string())
        .set(
            "limits",
            &format!("max_message_bytes = {max_message_bytes}"),
        )
        .set("limits", &format!("max_connections = {max_connections}"))
        .set(
            "limits",
            &format!("max_connections_per_ip = {max_connections}"),
        )
        .set("limits", "connections_per_ip_per_minute = 1000000")
        .set("limits", "messages_per_ip_per_minute = 1000000000")
        .set("limits", "max_transactions_per_connection = 1000000000")
        // The benchmark measures SMTP; an API on a fixed port would collide with another server.
        .set("api", "enabled = false")
        .inbox("bench", &format!("{local}@{domain}"))
}

// ---------------------------------------------------------------------------------------------
// Clients

/// What every client of a run shares.
struct Shared {
    source: Arc<dyn Messages>,
    rcpt: String,
    senders: u32,
    run: u64,
    messages: u64,
    /// The next message number to take; a client stops when it reaches `messages`. Taking numbers
    /// rather than a fixed share keeps every client busy until the run's last message.
    next: AtomicU64,
    /// Released once every client has connected and said EHLO, so the clock measures mail only.
    ready: Barrier,
}

#[derive(Default)]
struct ClientOutcome {
    ok: u64,
    failed: u64,
    /// End-of-data to final reply, for each message answered 250.
    latencies: Vec<Duration>,
    /// When this client's last final reply arrived.
    finished: Option<Instant>,
    first_error: Option<String>,
}

impl ClientOutcome {
    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }
}

/// One run: `case.clients` connections send `case.messages` messages between them.
async fn load(addr: SocketAddr, rcpt: &str, case: &Case) -> RunResult {
    let (clients, messages) = (case.clients, case.messages);
    let shared = Arc::new(Shared {
        source: case.source.clone(),
        rcpt: rcpt.to_string(),
        senders: case.senders,
        run: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        messages,
        next: AtomicU64::new(0),
        ready: Barrier::new(clients + 1),
    });
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(i as u32, addr, shared.clone())))
        .collect();
    shared.ready.wait().await;
    let started = Instant::now();
    let mut total = ClientOutcome::default();
    for t in tasks {
        let out = t.await.unwrap_or_else(|e| ClientOutcome {
            first_error: Some(format!("client task failed: {e}")),
            ..ClientOutcome::default()
        });
        total.ok += out.ok;
        total.failed += out.failed;
        total.latencies.extend(out.latencies);
        total.finished = total.finished.max(out.finished);
        if total.first_error.is_none() {
            total.first_error = out.first_error;
        }
    }
    // Messages never sent (every client gave up) count as failed too.
    let attempted = shared.next.load(Ordering::Relaxed).min(messages);
    total.failed += messages - attempted;
    if total.failed > 0 && total.first_error.is_none() {
        total.first_error = Some("messages not sent".into());
    }
    let elapsed = total
        .finished
        .map(|f| f.saturating_duration_since(started))
        .unwrap_or_default();
    total.latencies.sort_unstable();
    RunResult {
        ok: total.ok,
        failed: total.failed,
        elapsed_s: elapsed.as_secs_f64(),
        msgs_per_s: if elapsed.is_zero() {
            0.0
        } else {
            total.ok as f64 / elapsed.as_secs_f64()
        },
        p50_ms: percentile_ms(&total.latencies, 50.0),
        p99_ms: percentile_ms(&total.latencies, 99.0),
        peak_rss_mib: None,
        first_error: total.first_error,
    }
}

async fn client(index: u32, addr: SocketAddr, shared: Arc<Shared>) -> ClientOutcome {
    let setup = async {
        let mut c = Client::try_connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        c.timeout = REPLY_TIMEOUT;
        expect_code(&mut c, 220, "greeting").await?;
        c.write(b"EHLO client.bench.example\r\n")
            .await
            .map_err(|e| format!("EHLO: {e}"))?;
        expect_code(&mut c, 250, "EHLO").await?;
        Ok::<Client<TcpStream>, String>(c)
    }
    .await;
    // Every client reaches the barrier, ready or not, or the run would never start.
    shared.ready.wait().await;
    let mut out = ClientOutcome::default();
    let mut conn = match setup {
        Ok(c) => c,
        Err(e) => {
            out.first_error = Some(format!("client {index}: {e}"));
            return out;
        }
    };
    let (mut commands, mut message) = (Vec::new(), Vec::new());
    loop {
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        if seq >= shared.messages {
            break;
        }
        let id = MessageId {
            run: shared.run,
            client: index,
            seq,
            // Below MAX_SENDERS, so it fits.
            sender: (seq % u64::from(shared.senders)) as u32,
        };
        let buffers = (&mut commands, &mut message);
        if let Err(e) = transaction(&mut conn, &shared, id, buffers, &mut out).await {
            // The connection is in an unknown state: this message failed and this client stops.
            out.fail(format!("client {index}: {e}"));
            out.finished = Some(Instant::now());
            return out;
        }
    }
    let _ = conn.write(b"QUIT\r\n").await;
    let _ = conn.reply_code().await;
    out
}

/// Read a reply and insist on `code`.
async fn expect_code(c: &mut Client<TcpStream>, code: u16, what: &str) -> Result<(), String> {
    match c.reply_code().await {
        Ok(got) if got == code => Ok(()),
        Ok(_) => Err(format!("{what}: {}", c.last_line())),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// One message: MAIL, RCPT and DATA in one write (PIPELINING), their three replies, the body and
/// the final reply. Protocol refusals are counted in `out`; `Err` is for a broken connection.
async fn transaction(
    conn: &mut Client<TcpStream>,
    shared: &Shared,
    id: MessageId,
    (commands, message): (&mut Vec<u8>, &mut Vec<u8>),
    out: &mut ClientOutcome,
) -> std::io::Result<()> {
    commands.clear();
    let from = shared.source.mail_from(id.sender);
    // Writing into a Vec cannot fail.
    let _ = write!(
        commands,
        "MAIL FROM:<{from}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        shared.rcpt
    );
    conn.write(commands).await?;
    let mut refused: Option<String> = None;
    for (want, what) in [(250, "MAIL"), (250, "RCPT")] {
        if conn.reply_code().await? != want && refused.is_none() {
            refused = Some(format!("{what}: {}", conn.last_line()));
        }
    }
    let data = conn.reply_code().await?;
    if data != 354 {
        refused.get_or_insert_with(|| format!("DATA: {}", conn.last_line()));
        // Whatever part of the transaction was accepted is dropped before the next one.
        conn.write(b"RSET\r\n").await?;
        conn.reply_code().await?;
        out.fail(refused.unwrap_or_default());
        out.finished = Some(Instant::now());
        return Ok(());
    }
    shared.source.render(id, message);
    conn.write(message).await?;
    let sent = Instant::now();
    let code = conn.reply_code().await?;
    let now = Instant::now();
    out.finished = Some(now);
    match (code, refused) {
        (250, None) => {
            out.ok += 1;
            out.latencies.push(now - sent);
        }
        (_, Some(r)) => out.fail(r),
        (_, None) => out.fail(format!("end of data: {}", conn.last_line())),
    }
    Ok(())
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
