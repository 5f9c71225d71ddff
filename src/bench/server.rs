//! The server a run measures: this binary started as `serve` on a generated config, or one
//! already running (`--target`), and its peak RSS.

use super::*;

/// One run against a server we do not own. Its peak RSS is the process's since start unless
/// /proc/<pid>/clear_refs lets us reset it (same user, Linux ≥ 4.0).
pub(super) fn run_against(
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
pub(super) fn run_with_child(
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
pub(super) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `inbound serve` as a child process on a scratch directory. Dropping it kills the server and
/// removes the directory, so an error half-way through a run leaves nothing behind.
pub(super) struct ChildServer {
    pub(super) child: Child,
    pub(super) dir: PathBuf,
    pub(super) addr: SocketAddr,
}

impl ChildServer {
    pub(super) fn start(mode: Mode, rcpt: &str, clients: usize, size: u64) -> Result<ChildServer> {
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
    pub(super) fn wait_ready(&mut self) -> Result<()> {
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

    pub(super) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, as an operator stops it (graceful shutdown is part of what is being run), then
    /// wait; a server that does not exit in time is killed and reported.
    pub(super) fn stop(mut self) -> Result<()> {
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
pub(super) fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The generated server config: one loopback listener, the recipient's inbox, and limits raised
/// so that the bench measures the server's work rather than its abuse limits.
pub(super) fn server_config(
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
