//! Test harness: a real server on 127.0.0.1:0 in this process (`TestServer`, its HTTP API on
//! another ephemeral port), an HTTP client for the API (`http`), temporary directories, and the
//! kit shared with the bench (`inbound::testkit`: the transcript-style SMTP `Client`, the loopback
//! DNS server `dns`, the signer `sign`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use inbound::config::{self, Config};
use inbound::context::Ctx;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod http;
pub mod pg;
pub mod schema;
pub mod sink;

// The kit shared with the bench (src/testkit/), under the names the tests have always used.
pub use inbound::testkit::config::{ConfigBuilder, API_TOKEN};
pub use inbound::testkit::smtp::{dot_stuff, Client, Reply};
pub use inbound::testkit::{dns, sign, TempDir};

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

    /// Start with extra TOML appended to the base config (`ConfigBuilder::test`).
    pub async fn start_with(extra: &str) -> TestServer {
        let dir = TempDir::new("srv");
        Self::start_in(dir, extra).await
    }

    /// Start on an existing data directory (restart tests).
    pub async fn start_in(dir: TempDir, extra: &str) -> TestServer {
        let cfg = ConfigBuilder::test(dir.path()).extra(extra).parse();
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
