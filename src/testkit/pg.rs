//! A throwaway PostgreSQL cluster for one test or bench run: `initdb` into a temporary
//! directory, `postgres` listening on 127.0.0.1 and a free port only (its Unix socket in the same
//! directory), trust authentication, a database per caller (`database`), and the server stopped
//! by its PID when the cluster is dropped. No test and no `inbound bench --store postgres`
//! without `--store-url` depends on a database someone else started. A test may give server
//! settings of its own (`start_with`), and stop the server and start it again on the same data
//! and port (`stop`, `start_again`) to see what a node does while its database is away.
//!
//! The server binaries come from `INBOUND_TEST_PG_BIN`, else the newest
//! `/usr/lib/postgresql/<version>/bin` (the distribution's `postgresql` package, which `.ci/run`
//! installs). Missing binaries FAIL the test, naming what to install: a skipped database test
//! would pass while proving nothing.
//!
//! initdb refuses to run as root: as root, the cluster runs as the `postgres` system user (else
//! `nobody`), which owns the temporary directory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{free_port, TempDir};

/// How long a fresh cluster gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding `initdb` and `postgres`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("INBOUND_TEST_PG_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((version, bin)) if version >= 13 => bin,
        _ => panic!(
            "PostgreSQL server binaries (initdb, postgres; version 13 or newer) not found under \
             /usr/lib/postgresql/<version>/bin: install the distribution's `postgresql` package \
             (CI does, in .ci/run) or set INBOUND_TEST_PG_BIN to the directory holding them"
        ),
    }
}

/// The (uid, gid) the cluster runs as: ours, or when we are root an unprivileged system user.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    for name in [c"postgres", c"nobody"] {
        // SAFETY: a NUL-terminated name; the returned record is read at once, before any other
        // call that could overwrite it (tests in this process may race here only on the same
        // static data, which holds the same answer).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: non-null, points to libc's passwd record.
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            return Some((uid, gid));
        }
    }
    panic!("running as root and neither a `postgres` nor a `nobody` user exists to run initdb as");
}

fn command(program: PathBuf, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = user {
        // std drops root's supplementary groups itself when it changes the uid.
        c.uid(uid).gid(gid);
    }
    c
}

fn chown(path: &Path, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown the cluster directory");
    }
}

/// Run `f` on a thread of its own: the synchronous client runs its own runtime, which cannot
/// start inside an async test's.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// A running throwaway cluster.
pub struct PgCluster {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    /// What `start_again` needs to run the same server on the same data and port.
    bin: PathBuf,
    user: Option<(u32, u32)>,
    data: PathBuf,
    sock: PathBuf,
    /// Server settings (`-c name=value`) given to `start_with`, after the kit's own.
    settings: Vec<String>,
    // Last: removed after the server has stopped.
    _dir: TempDir,
}

impl PgCluster {
    /// A cluster for a test: `fsync=off`, since nothing outlives the test (a SIGKILLed *node*
    /// loses nothing the server has committed; only a power cut would).
    pub fn start() -> PgCluster {
        PgCluster::start_with(&["fsync=off"])
    }

    /// A cluster with these `name=value` server settings on top of the kit's own. The bench
    /// passes none: its figures are for commits that reach the disk, as sled's do.
    pub fn start_with(settings: &[&str]) -> PgCluster {
        let bin = bin_dir();
        let user = run_as();
        let dir = TempDir::new("pg");
        chown(dir.path(), user);
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).expect("create the socket directory");
        chown(&sock, user);
        let log = dir.path().join("postgres.log");
        std::fs::File::create(&log).expect("create the server log");
        chown(&log, user);
        let out = command(bin.join("initdb"), user)
            .args(["-D", &data.to_string_lossy()])
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            // The cluster is thrown away with its user: initdb's own files need no fsync.
            .arg("--no-sync")
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = PgCluster {
            child: None,
            port: free_port(),
            log,
            bin,
            user,
            data,
            sock,
            settings: settings.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        cluster.spawn();
        cluster
    }

    /// Run the server on this cluster's data directory and port and wait until it takes
    /// connections.
    fn spawn(&mut self) {
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let child = command(self.bin.join("postgres"), self.user)
            .args(["-D", &self.data.to_string_lossy()])
            .args(["-p", &self.port.to_string()])
            .args(["-k", &self.sock.to_string_lossy()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn postgres");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Send `signal` to the server and every process it started (its backends, found by parent
    /// pid): SIGSTOP makes a database that neither answers nor refuses, SIGCONT ends that.
    pub fn signal_all(&self, signal: libc::c_int) {
        let Some(child) = &self.child else {
            return;
        };
        let parent = child.id();
        let mut pids = vec![parent];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so read after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) {
                pids.push(pid);
            }
        }
        for pid in pids {
            // SAFETY: signalling our own child and its children by pid.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// Start the server again after `stop`: the same data (what was committed before the stop
    /// is there, after crash recovery), the same port, so clients' URLs still work.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again on a running cluster");
        self.spawn();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("postgres exited at start ({status}): {}", self.log_text());
            }
            let url = self.url("postgres");
            if off_runtime(move || postgres::Client::connect(&url, postgres::NoTls).is_ok()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within {START_TIMEOUT:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new empty database; its URL.
    pub fn database(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!("t{}", N.fetch_add(1, Ordering::Relaxed));
        let url = self.url("postgres");
        let sql = format!("CREATE DATABASE {name}");
        off_runtime(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)
                .expect("connect to the test cluster");
            c.batch_execute(&sql).expect("create a test database");
        });
        self.url(&name)
    }

    /// Stop the server now (by its PID), e.g. to see what a node does without its database.
    pub fn stop(&mut self) {
        // A server a test left stopped (`signal_all(SIGSTOP)`) would not act on SIGQUIT.
        self.signal_all(libc::SIGCONT);
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: immediate shutdown; the cluster is thrown away.
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
