//! The servers a run measures: this binary started as `serve` on a generated config (one or
//! two, on sled or PostgreSQL), or one already running (`--target`); their peak RSS, their
//! store's commits and retries, and after a PostgreSQL run what the database holds.

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
    let mut r = rt.block_on(load(&[addr], rcpt, case));
    r.peak_rss_mib = pid.and_then(peak_rss_mib);
    r
}

/// One run against servers started for it, each on a fresh data directory (and, on
/// PostgreSQL without `--store-url`, a fresh cluster).
pub(super) fn run_with_children(
    rt: &tokio::runtime::Runtime,
    args: &BenchArgs,
    case: &Case,
) -> Result<RunResult> {
    let db = match args.store {
        StoreKind::Sled => None,
        StoreKind::Postgres => Some(Database::open(args.store_url.as_deref())?),
    };
    let mut servers = Vec::new();
    for node in 0..args.nodes {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, 1 + node);
        let url = db.as_ref().map(|d| d.url.as_str());
        let store = url.map(|url| (url, args.committers));
        servers.push(ChildServer::start(args.mode, &args.rcpt, case, ip, store)?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let mut r = rt.block_on(load(&addrs, &args.rcpt, case));
    // The largest node's: each is a process of its own.
    r.peak_rss_mib = servers
        .iter()
        .filter_map(|s| peak_rss_mib(s.child.id()))
        .max_by(f64::total_cmp);
    let (mut commits, mut retries) = (0, 0);
    for s in &servers {
        let (c, t) = s.store_counts()?;
        commits += c;
        retries += t;
    }
    if r.elapsed_s > 0.0 {
        r.commits_per_s = Some(commits as f64 / r.elapsed_s);
    }
    r.retries = Some(retries);
    for s in servers {
        s.stop()?;
    }
    if let Some(db) = &db {
        let (lost, duplicated) = db.check(&r.queued)?;
        r.lost = Some(lost);
        r.duplicated = Some(duplicated);
    }
    Ok(r)
}

/// The PostgreSQL database of a run, migrated to this build's schema; a throwaway cluster of
/// its own unless the user named one (`--store-url`), stopped and removed on drop.
pub(super) struct Database {
    pub(super) url: String,
    _cluster: Option<crate::testkit::pg::PgCluster>,
}

impl Database {
    fn open(url: Option<&str>) -> Result<Database> {
        let (url, cluster) = match url {
            Some(u) => (u.to_string(), None),
            None => {
                // No settings of our own: fsync stays on, so a 250 means on disk, as on sled.
                let cluster = crate::testkit::pg::PgCluster::start_with(&[]);
                (cluster.database(), Some(cluster))
            }
        };
        crate::store::Store::migrate_postgres(&crate::config::PostgresConfig::for_tool(
            url.clone(),
        ))
        .with_context(|| format!("migrating {}", crate::util::mask_url_password(&url)))?;
        Ok(Database {
            url,
            _cluster: cluster,
        })
    }

    /// After the servers stopped: how many of the messages answered 250 (`queued`, their
    /// queue ids) are not stored, and how many conversations more than distinct Message-IDs
    /// the database holds (a message the bench sent once that two commits threaded twice).
    /// Both must be 0.
    fn check(&self, queued: &[String]) -> Result<(u64, u64)> {
        let url = self.url.clone();
        let queued = queued.to_vec();
        let masked = crate::util::mask_url_password(&self.url);
        // The synchronous client runs a runtime of its own: not on the bench's.
        std::thread::spawn(move || -> Result<(u64, u64), postgres::Error> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            let found: i64 = c
                .query_one(
                    "SELECT count(*) FROM messages WHERE queue_id = ANY($1)",
                    &[&queued],
                )?
                .get(0);
            let extra: i64 = c
                .query_one(
                    "SELECT (SELECT count(*) FROM conversations)
                          - (SELECT count(DISTINCT record::json->>'message_id') FROM messages)",
                    &[],
                )?
                .get(0);
            Ok((
                (queued.len() as u64).saturating_sub(found as u64),
                extra.max(0) as u64,
            ))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the database check panicked"))?
        .with_context(|| format!("checking the run's messages in {masked}"))
    }
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
    /// Where it serves `GET /metrics` without a token.
    pub(super) metrics: SocketAddr,
}

impl ChildServer {
    pub(super) fn start(
        mode: Mode,
        rcpt: &str,
        case: &Case,
        ip: std::net::Ipv4Addr,
        postgres: Option<(&str, Option<u8>)>,
    ) -> Result<ChildServer> {
        static RUN: AtomicU64 = AtomicU64::new(0);
        // Short: the admin socket lives under it, and Unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!(
            "/tmp/ibb-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let addr = free_port(ip).context("finding a free loopback port")?;
        let metrics = free_port(ip).context("finding a free loopback port")?;
        let mut config = server_config(&dir, addr, rcpt, case.clients, case.size)
            .set("api", &format!("metrics_listen = \"{metrics}\""));
        if let Some((url, committers)) = postgres {
            config = config
                .set("store", "backend = \"postgres\"")
                .set("store", &format!("url = {}", toml_string(url)));
            if let Some(n) = committers {
                config = config.set("store", &format!("committers = {n}"));
            }
        }
        let config = mode.configure(config)?;
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
        let mut server = ChildServer {
            child,
            dir,
            addr,
            metrics,
        };
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

    /// Its store's transactions committed and run again since it started
    /// (`inbound_store_commits_total`, `inbound_store_retries_total`).
    pub(super) fn store_counts(&self) -> Result<(u64, u64)> {
        let mut s = std::net::TcpStream::connect_timeout(&self.metrics, START_TIMEOUT)
            .with_context(|| format!("connecting to {} for /metrics", self.metrics))?;
        s.set_read_timeout(Some(REPLY_TIMEOUT))?;
        // HTTP/1.0: the server closes the connection after the answer, which ends the read.
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text).context("reading /metrics")?;
        let value = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {name} in the server's /metrics"))
        };
        Ok((
            value("inbound_store_commits_total")?,
            value("inbound_store_retries_total")?,
        ))
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

/// A port nothing listens on now at `ip` (a loopback address). Another process could take it
/// before the server binds; the server then fails to start and the run reports it.
pub(super) fn free_port(ip: std::net::Ipv4Addr) -> std::io::Result<SocketAddr> {
    TcpListener::bind((ip, 0))?.local_addr()
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    // JSON's string escapes are valid TOML basic-string escapes.
    serde_json::to_string(s).unwrap_or_default()
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
