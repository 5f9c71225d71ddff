//! Test harness: a real server on 127.0.0.1:0 in this process (`TestServer`, its HTTP API on
//! another ephemeral port), a line-oriented SMTP client that reads like a transcript (`Client`),
//! an HTTP client for the API (`http`), and temporary directories.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use inbound::config::{self, Config};
use inbound::context::Ctx;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod dns;
pub mod http;
pub mod pg;
pub mod schema;
pub mod sign;
pub mod sink;

/// The bearer token `config_text` configures for the API.
pub const API_TOKEN: &str = "test-token-0123456789abcdef";

/// A directory under /tmp removed on drop. Kept short: the admin Unix socket lives inside it and
/// socket paths are limited to 108 bytes.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("inb-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The base config every test starts from: one listener on an ephemeral loopback port, the
/// demo inbox plus a second one, generous limits. `extra` is appended (TOML tables that the base
/// does not define, e.g. `[limits]`).
pub fn config_text(data_dir: &Path, extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "mx.test.example"
data_dir = "{data}"
shutdown_timeout = "5s"

[[listener]]
addr = "127.0.0.1:0"

# Plain protocol tests talk from loopback and skip sender authentication; auth tests present
# other client addresses through PROXY or build their own config.
[auth]
trusted_networks = ["127.0.0.0/8", "::1"]

[api]
listen = "127.0.0.1:0"
tokens = ["{token}"]

[[inbox]]
id = "demo"
address = "support@demo.inbound.test"
aliases = ["help@demo.inbound.test"]

[[inbox]]
id = "sales"
address = "sales@acme.inbound.test"

{extra}
"#,
        data = data_dir.display(),
        token = API_TOKEN,
    )
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// Where the HTTP API listens; `None` when the config disables it.
    pub api_addr: Option<SocketAddr>,
    pub ctx: Arc<Ctx>,
    pub dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Start with extra TOML appended to the base config.
    pub async fn start_with(extra: &str) -> TestServer {
        let dir = TempDir::new("srv");
        Self::start_in(dir, extra).await
    }

    /// Start on an existing data directory (restart tests).
    pub async fn start_in(dir: TempDir, extra: &str) -> TestServer {
        let text = config_text(dir.path(), extra);
        let cfg: Config =
            config::parse(&text).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        Self::start_config(dir, cfg).await
    }

    /// Start on a config. Its API always gets an ephemeral loopback port: tests run side by side,
    /// and a config of their own that leaves `[api]` out would otherwise take the fixed default.
    pub async fn start_config(dir: TempDir, mut cfg: Config) -> TestServer {
        cfg.override_api_listen(SocketAddr::from(([127, 0, 0, 1], 0)));
        let bound = inbound::server::bind(cfg).await.expect("server binds");
        Self::start_bound(dir, bound).await
    }

    /// Start from a config file, as `inbound serve --config FILE` does, so that `ctx.reload()`
    /// has a file to read again. The API gets an ephemeral port as `--api-listen` would give it
    /// (a reload applies that override again).
    pub async fn start_file(dir: TempDir, file: &Path) -> TestServer {
        let source = config::ConfigSource {
            path: Some(file.to_path_buf()),
            api_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Default::default()
        };
        let cfg = source
            .load()
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let bound = inbound::server::bind_with_source(cfg, source)
            .await
            .expect("server binds");
        Self::start_bound(dir, bound).await
    }

    async fn start_bound(dir: TempDir, bound: inbound::server::Bound) -> TestServer {
        let addr = bound.local_addrs()[0];
        let api_addr = bound.api_addr();
        let ctx = bound.ctx();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bound
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        TestServer {
            addr,
            api_addr,
            ctx,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client of this server's API with the test token, checking answers against its
    /// `/openapi.json`.
    pub async fn api(&self) -> http::Api {
        http::Api::new(self.api_addr.expect("the API is enabled"), Some(API_TOKEN)).await
    }

    pub async fn connect(&self) -> Client<TcpStream> {
        Client::connect(self.addr).await
    }

    /// Begin shutdown and wait for the server to finish. Returns the data directory so a test can
    /// start a new server on it.
    pub async fn stop(mut self) -> TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
        // Wait for the committer thread to release the database lock.
        drop(self.ctx);
        for _ in 0..100 {
            if !is_locked(self.dir.path()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.dir
    }

    /// Begin shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub async fn wait_stopped(&mut self) {
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }

    pub fn messages(&self) -> Vec<inbound::store::MessageRecord> {
        self.ctx.store.list(None, usize::MAX).expect("list")
    }
}

fn is_locked(dir: &Path) -> bool {
    let cfg = inbound::config::Config::embedded_default().store;
    inbound::store::Store::open(dir, &cfg).is_err()
}

/// A line-oriented SMTP client: `c.send("MAIL FROM:<a@b>").await; c.expect("250").await;`
pub struct Client<S> {
    reader: BufReader<tokio::io::ReadHalf<S>>,
    writer: tokio::io::WriteHalf<S>,
    pub timeout: Duration,
}

/// One reply: its code and its lines' text (without the code and separator).
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The last word of the last line (the queue id of a `250 ... queued as ID`).
    pub fn last_word(&self) -> String {
        self.lines
            .last()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .to_string()
    }
}

impl Client<TcpStream> {
    pub async fn connect(addr: SocketAddr) -> Client<TcpStream> {
        let s = TcpStream::connect(addr).await.expect("connect");
        Client::new(s)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Client<S> {
        let (r, w) = tokio::io::split(stream);
        Client {
            reader: BufReader::new(r),
            writer: w,
            timeout: Duration::from_secs(10),
        }
    }

    pub fn into_inner(self) -> S {
        self.reader.into_inner().unsplit(self.writer)
    }

    /// Send one command line (CRLF added).
    pub async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        self.writer.flush().await.expect("flush");
    }

    /// Send raw bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
        self.writer.flush().await.expect("flush");
    }

    /// Try to send; false when the server has closed the connection.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok() && self.writer.flush().await.is_ok()
    }

    /// Read one (possibly multi-line) reply; `None` on EOF or timeout.
    pub async fn read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.timeout, self.reader.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3]
                .parse()
                .unwrap_or_else(|_| panic!("bad reply line {line:?}"));
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Some(Reply { code, lines });
            }
        }
    }

    /// Read a reply and assert that it starts with `prefix` ("250", "550 5.1.1").
    pub async fn expect(&mut self, prefix: &str) -> Reply {
        let r = self
            .read_reply()
            .await
            .unwrap_or_else(|| panic!("expected {prefix:?}, got EOF/timeout"));
        let full = format!("{} {}", r.code, r.lines.last().cloned().unwrap_or_default());
        assert!(full.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        r
    }

    /// `send` then `expect`.
    pub async fn cmd(&mut self, line: &str, prefix: &str) -> Reply {
        self.send(line).await;
        self.expect(prefix).await
    }

    /// Whether the server closed the connection (EOF within the timeout).
    pub async fn expect_closed(&mut self) {
        let mut buf = String::new();
        let n = tokio::time::timeout(self.timeout, self.reader.read_line(&mut buf))
            .await
            .expect("server should close the connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected EOF, got {buf:?}");
    }

    /// Greeting + EHLO.
    pub async fn hello(&mut self) -> Reply {
        self.expect("220").await;
        self.cmd("EHLO client.example", "250").await
    }

    /// A whole transaction with DATA; returns the final reply.
    pub async fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>"), "250").await;
        }
        self.cmd("DATA", "354").await;
        self.send_raw(&dot_stuff(body)).await;
        self.send_raw(b".\r\n").await;
        self.read_reply().await.expect("reply to end of data")
    }
}

/// Dot-stuff a CRLF message for DATA and make sure it ends with CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A small valid message.
pub fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice Example <alice@example.com>\r\nTo: support@demo.inbound.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nHello,\r\nthis is {subject}.\r\n"
    )
    .into_bytes()
}

/// SHA-256 hex of bytes (as the store records it).
pub fn sha256(bytes: &[u8]) -> String {
    inbound::util::sha256_hex(bytes)
}
