//! The real `inbound` binary as a child process: start `serve` on a loopback port, wait for its
//! greeting, SIGKILL or SIGTERM it, and run CLI commands with a time limit. Used by the crash and
//! CLI tests, which need a process boundary (a crash, a signal, a second process reading the store).

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary cargo built for this test run, or `INBOUND_TEST_BIN` when set: several checkouts
/// sharing one target (or build) directory overwrite each other's `debug/inbound`, and a test
/// that ran another checkout's binary would prove nothing.
pub fn bin() -> String {
    std::env::var("INBOUND_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_inbound").into())
}

/// How long a server gets to print its greeting after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CLI command may run before the test calls it hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

pub use inbound::testkit::free_port;

/// A running `inbound serve`. Dropping it SIGKILLs a server that is still running, so a failing
/// test leaves no process behind.
pub struct ServerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl ServerProcess {
    /// `inbound serve` with these arguments, stderr (the log) to `log`. `addr` is where the
    /// greeting is expected.
    pub fn spawn(args: &[&str], addr: SocketAddr, log: &Path) -> ServerProcess {
        Self::spawn_via(&[], args, addr, log)
    }

    /// `spawn` through a wrapper that execs its arguments, so the pid stays the server's:
    /// `["prlimit", "--nofile=256:256", "--"]`, or `["sh", "-c", "umask 022; exec \"$@\"", "sh"]`.
    pub fn spawn_via(
        wrapper: &[&str],
        args: &[&str],
        addr: SocketAddr,
        log: &Path,
    ) -> ServerProcess {
        let log_file = std::fs::File::create(log).expect("create server log");
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin()),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
        };
        let child = cmd
            .arg("serve")
            .args(args)
            .env("INBOUND_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn inbound serve");
        ServerProcess {
            child: Some(child),
            addr,
            log: log.to_path_buf(),
        }
    }

    /// `inbound serve --config FILE --listen 127.0.0.1:PORT`, waiting for the greeting.
    pub fn start(config: &Path, port: u16, log: &Path) -> ServerProcess {
        Self::start_via(&[], config, port, log)
    }

    /// `start` through a wrapper (`spawn_via`).
    pub fn start_via(wrapper: &[&str], config: &Path, port: u16, log: &Path) -> ServerProcess {
        let listen = format!("127.0.0.1:{port}");
        let mut srv = ServerProcess::spawn_via(
            wrapper,
            &["--config", &config.to_string_lossy(), "--listen", &listen],
            listen.parse().expect("loopback address"),
            log,
        );
        srv.wait_ready();
        srv
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server process").id()
    }

    /// Wait until the server answers with a 220 greeting; panic (with its log) if it exits or
    /// does not answer in time.
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "inbound serve exited ({status}) before answering\n{}",
                    self.log_text()
                );
            }
            if let Ok(s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("220 ") {
                    return;
                }
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "inbound serve did not greet on {} within {READY_TIMEOUT:?}\n{}",
                self.addr,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("query child status"))
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap: a crash, as far as the server can tell.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM through `kill -TERM PID`; returns the exit status and how long the exit took.
    /// Panics if the process is still running after `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> (ExitStatus, Duration) {
        let pid = self.pid().to_string();
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        self.wait_exit(deadline, sent)
    }

    /// Wait for the process to exit on its own (after a signal sent at `since`).
    pub fn wait_exit(&mut self, deadline: Duration, since: Instant) -> (ExitStatus, Duration) {
        loop {
            if let Some(status) = self.try_wait() {
                self.child = None;
                return (status, since.elapsed());
            }
            if since.elapsed() > deadline {
                let log = self.log_text();
                self.kill();
                panic!("inbound serve still running {deadline:?} after SIGTERM\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        log_tail(&self.log)
    }

    /// A field of /proc/PID/status in kB (`VmHWM`: the peak resident set so far).
    pub fn status_kb(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last 60 lines of a log file, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(60);
    format!(
        "--- {} (last {} lines) ---\n{}",
        path.display(),
        lines.len() - from,
        lines[from..].join("\n")
    )
}

/// What a finished CLI command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panic with everything the command printed unless it succeeded.
    pub fn assert_ok(&self, what: &str) -> &Output {
        assert!(
            self.status.success(),
            "{what} failed ({})\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout_text(),
            self.stderr
        );
        self
    }

    /// Panic unless the command failed with a non-zero exit code and said `needle` on stderr.
    pub fn assert_fails_with(&self, what: &str, needle: &str) -> &Output {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "{what} should fail with an exit code, got {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout_text(),
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "{what}: stderr should mention {needle:?}:\n{}",
            self.stderr
        );
        self
    }
}

/// Run `inbound ARGS...` to completion (at most `COMMAND_TIMEOUT`).
pub fn inbound(args: &[&str]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("INBOUND_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn inbound");
    // Drain both pipes on threads: a command that fills one pipe would otherwise block forever.
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("query child status") {
            break s;
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`inbound {}` did not finish within {COMMAND_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&err_t.join().expect("stderr reader")).into_owned(),
    }
}
