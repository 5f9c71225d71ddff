//! Arbitrary client bytes -> the bytes the server wrote back, with no socket: one `Session` over an
//! in-memory stream, against a real store in a directory of the caller's choosing. Used by the
//! cargo-fuzz target `session` (fuzz/) and by the plain test that replays its corpus
//! (tests/it/fuzz_corpus.rs), so both exercise exactly the code a TCP client reaches.
//!
//! The input is finite and the stream answers every read at once, so a session ends at EOF at the
//! latest: a session that does not end is a bug, reported by a panic after `SESSION_DEADLINE`.
//! STARTTLS is answered as on a real listener and the session then continues on the same stream
//! as if the handshake had succeeded, so the post-TLS state (RFC 3207 §4.2: forget everything
//! pipelined before the handshake) is fuzzed too.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::{self, ConfigErrors};
use crate::context::shutdown::{self, Trigger};
use crate::context::tls::{self, TlsError};
use crate::context::Ctx;
use crate::dns::DnsSetupError;
use crate::smtp::session::{Outcome, Session};
use crate::store::{Store, StoreError};

/// How long one session over a finite input may take before the harness calls it a hang.
const SESSION_DEADLINE: Duration = Duration::from_secs(60);

/// The client address every fuzzed session claims (TEST-NET-1; nothing is ever sent to it).
const PEER: &str = "192.0.2.1:40000";

/// What `Harness::new` can fail on.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("harness config: {0}")]
    Config(#[from] ConfigErrors),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("DNS: {0}")]
    Dns(#[from] DnsSetupError),
    #[error("runtime: {0}")]
    Io(#[from] io::Error),
}

/// How the in-memory stream hands the input to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// As much as the session asks for in each read.
    Greedy,
    /// At most this many bytes per read (at least 1).
    Fixed(usize),
    /// Read sizes from 1 byte to 16 KiB, drawn from a generator seeded by the input itself, so a
    /// failing input replays with the same split points.
    Varied,
}

/// What a transcript contained, once checked.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Every reply line: its code and its text after the separator.
    pub lines: Vec<(u16, String)>,
    /// Queue ids from `250 ... queued as ID` replies, in order.
    pub queued: Vec<String>,
}

/// One store, one TLS acceptor and one runtime, reused for every input (opening sled per input
/// would make fuzzing a hundred times slower).
pub struct Harness {
    rt: tokio::runtime::Runtime,
    ctx: Arc<Ctx>,
    /// Dropping the trigger starts a shutdown, which would make every session answer 421.
    _trigger: Trigger,
}

impl Harness {
    /// Open a store under `data_dir` (created if needed) with limits chosen for fuzzing: bodies
    /// over 1 KiB take the spool-file path, rate limits are out of the way, a message may be 1 MiB.
    /// Sender authentication is off: its DNS lookups would make every input wait on timeouts and
    /// send traffic off the machine; the resolver points at a closed loopback port all the same.
    pub fn new(data_dir: &Path) -> Result<Harness, HarnessError> {
        let text = format!(
            r#"
[server]
hostname = "mx.fuzz.test"
data_dir = "{data}"

[[listener]]
addr = "127.0.0.1:0"

[limits]
max_message_bytes = 1048576
max_recipients = 5
max_bad_commands = 50
messages_per_ip_per_minute = 1000000000
connections_per_ip_per_minute = 1000000000

[store]
inline_body_max_bytes = 1024

[dns]
nameservers = ["127.0.0.1:9"]
timeout = "100ms"
attempts = 1

[auth]
enabled = false

[[inbox]]
id = "demo"
address = "support@demo.inbound.test"
aliases = ["help@demo.inbound.test"]

[[inbox]]
id = "sales"
address = "sales@acme.inbound.test"
"#,
            data = data_dir.display()
        );
        let cfg = config::parse(&text)?;
        let store = Store::open(&cfg.data_dir, &cfg.store)?;
        let acceptor = tls::acceptor(&cfg.tls, &cfg.hostname)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (trigger, shutdown) = shutdown::channel();
        let ctx = Arc::new(
            Ctx::new(cfg, store, acceptor, shutdown).expect("resolver for the fuzz context"),
        );
        Ok(Harness {
            rt,
            ctx,
            _trigger: trigger,
        })
    }

    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Run one session over `input`, read in `chunking`-sized pieces; returns what it wrote.
    pub fn run(&self, input: &[u8], chunking: Chunking) -> Vec<u8> {
        self.rt
            .block_on(run_session_bytes(self.ctx.clone(), input, chunking))
    }

    /// Check a transcript produced by this harness: well-formed replies (no bare CR or LF inside
    /// a reply, no control characters, multi-line replies closed), the greeting first, and every
    /// queue id that was answered with 250 present in the store with a body matching its hash.
    pub fn check(&self, output: &[u8]) -> Result<Summary, String> {
        let summary = parse_transcript(output)?;
        for id in &summary.queued {
            let record = self
                .ctx
                .store
                .get(id)
                .map_err(|e| format!("reading record {id}: {e}"))?
                .ok_or_else(|| format!("queue id {id} was answered 250 but has no record"))?;
            let body = self
                .ctx
                .store
                .body(&record)
                .map_err(|e| format!("reading body of {id}: {e}"))?;
            if body.len() as u64 != record.size || crate::util::sha256_hex(&body) != record.sha256 {
                return Err(format!(
                    "body of {id} does not match its record ({} bytes stored, {} recorded)",
                    body.len(),
                    record.size
                ));
            }
        }
        Ok(summary)
    }
}

/// The transcript with every queue id replaced by `<ID>`, for comparing runs of the same input.
pub fn normalize(output: &[u8]) -> Vec<u8> {
    const MARK: &[u8] = b"queued as ";
    let mut out = Vec::with_capacity(output.len());
    let mut rest = output;
    while let Some(i) = memchr::memmem::find(rest, MARK) {
        out.extend_from_slice(&rest[..i + MARK.len()]);
        rest = &rest[i + MARK.len()..];
        let id_len = rest
            .iter()
            .position(|b| !b.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        out.extend_from_slice(b"<ID>");
        rest = &rest[id_len..];
    }
    out.extend_from_slice(rest);
    out
}

/// Split a transcript into reply lines and check their syntax (RFC 5321 §4.2).
pub fn parse_transcript(output: &[u8]) -> Result<Summary, String> {
    if !output.starts_with(b"220 ") {
        return Err("the transcript does not start with a 220 greeting".into());
    }
    if !output.ends_with(b"\r\n") {
        return Err("the transcript does not end with CRLF".into());
    }
    let mut summary = Summary::default();
    let mut open_multiline: Option<u16> = None;
    // Ends with CRLF (checked above), so the last piece of the split is empty.
    let body = &output[..output.len() - 1];
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line
            .strip_suffix(b"\r")
            .ok_or_else(|| format!("reply line {n} ends in a bare LF"))?;
        if let Some(b) = line.iter().find(|&&b| b < 0x20 || b == 0x7f) {
            return Err(format!("reply line {n} contains control byte {b:#04x}"));
        }
        let line = std::str::from_utf8(line).map_err(|_| format!("reply line {n} is not UTF-8"))?;
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| format!("reply line {n} has no valid code: {line:?}"))?;
        let continued = match line.as_bytes().get(3) {
            Some(b'-') => true,
            Some(b' ') | None => false,
            Some(_) => return Err(format!("reply line {n} has a bad separator: {line:?}")),
        };
        if let Some(open) = open_multiline {
            if open != code {
                return Err(format!(
                    "reply line {n}: code {code} inside a multi-line {open} reply"
                ));
            }
        }
        open_multiline = continued.then_some(code);
        let text = line.get(4..).unwrap_or("").to_string();
        if code == 250 {
            if let Some(id) = text.split_once("queued as ").map(|(_, id)| id) {
                summary.queued.push(id.trim().to_string());
            }
        }
        summary.lines.push((code, text));
    }
    if let Some(code) = open_multiline {
        return Err(format!(
            "the transcript ends inside a multi-line {code} reply"
        ));
    }
    Ok(summary)
}

/// Serve one session over `input` and return everything the server wrote. Ends when the session
/// does (EOF at the latest); panics if it has not ended after `SESSION_DEADLINE`.
pub async fn run_session_bytes(ctx: Arc<Ctx>, input: &[u8], chunking: Chunking) -> Vec<u8> {
    // A constant that parses: the literal above is a valid socket address.
    let peer: SocketAddr = PEER.parse().expect("PEER is a valid socket address");
    let stream = MemStream::new(input, chunking);
    let served = async {
        let mut session = Session::new(stream, ctx, peer, Vec::new());
        let mut outcome = session.greet_and_run().await;
        // Each round either ends the session or moves it to "TLS", where STARTTLS is refused, so
        // this loop runs at most twice.
        while let Ok(Outcome::StartTls) = outcome {
            let (stream, state) = session.into_parts();
            session = Session::resume(stream, state, "TLSv1.3".into());
            outcome = session.run().await;
        }
        session.into_parts().0.out
    };
    match tokio::time::timeout(SESSION_DEADLINE, served).await {
        Ok(out) => out,
        Err(_) => panic!(
            "the session did not end within {SESSION_DEADLINE:?} on a finite input of {} bytes",
            input.len()
        ),
    }
}

/// Reads come from `input`, writes go to `out`; nothing ever waits.
struct MemStream<'a> {
    input: &'a [u8],
    pos: usize,
    chunking: Chunking,
    rng: u64,
    out: Vec<u8>,
}

impl<'a> MemStream<'a> {
    fn new(input: &'a [u8], chunking: Chunking) -> MemStream<'a> {
        // FNV-1a of the input seeds the read sizes: same input, same split points.
        let seed = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        MemStream {
            input,
            pos: 0,
            chunking,
            rng: seed | 1,
            out: Vec::new(),
        }
    }

    fn next_len(&mut self, want: usize) -> usize {
        let cap = match self.chunking {
            Chunking::Greedy => want,
            Chunking::Fixed(n) => n.max(1),
            Chunking::Varied => {
                // xorshift64: cheap and deterministic.
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                const SCALES: [u64; 6] = [1, 8, 64, 512, 4096, 16384];
                let scale = SCALES[(self.rng >> 40) as usize % SCALES.len()];
                1 + (self.rng % scale) as usize
            }
        };
        cap.min(want).min(self.input.len() - self.pos)
    }
}

impl AsyncRead for MemStream<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.next_len(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemStream<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
