//! What a run measured, the median of a case's runs, and the report: a table or JSON.

use super::*;

/// One size × client count, run `--runs` times.
pub(super) struct Case {
    pub(super) size: u64,
    pub(super) clients: usize,
    pub(super) messages: u64,
    pub(super) senders: u32,
    pub(super) source: Arc<dyn Messages>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct RunResult {
    /// Messages answered 250.
    pub(super) ok: u64,
    /// Messages not answered 250 (any reply in the transaction, or a broken connection).
    pub(super) failed: u64,
    /// From the moment every client had its EHLO answered to the last final reply.
    pub(super) elapsed_s: f64,
    pub(super) msgs_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// VmHWM of the server process (the largest, with two); `None` when there is no process
    /// to read.
    pub(super) peak_rss_mib: Option<f64>,
    /// Messages answered 4xx or 5xx (a subset of `failed`).
    pub(super) refused: u64,
    /// Store transactions committed per second of the run, all servers together; `None` with
    /// `--target`.
    pub(super) commits_per_s: Option<f64>,
    /// Store transactions run again after losing a race, all servers together.
    pub(super) retries: Option<u64>,
    /// After a PostgreSQL run: messages answered 250 that the database does not hold, and
    /// conversations beyond one per Message-ID. Both must be 0.
    pub(super) lost: Option<u64>,
    pub(super) duplicated: Option<u64>,
    /// The queue ids answered 250 (for `lost`); not reported.
    #[serde(skip)]
    pub(super) queued: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) first_error: Option<String>,
}

impl RunResult {
    /// Retries per committed transaction.
    fn retry_rate(&self) -> Option<f64> {
        let commits = self.commits_per_s? * self.elapsed_s;
        Some(if commits > 0.0 {
            self.retries? as f64 / commits
        } else {
            0.0
        })
    }

    /// "0 lost, 0 dup", or "3 LOST, 0 dup" when the check found any.
    fn checked(&self) -> String {
        match (self.lost, self.duplicated) {
            (Some(l), Some(d)) => format!(
                "{l} {}, {d} {}",
                if l == 0 { "lost" } else { "LOST" },
                if d == 0 { "dup" } else { "DUP" }
            ),
            _ => "-".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Medians {
    pub(super) msgs_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) peak_rss_mib: Option<f64>,
    pub(super) commits_per_s: Option<f64>,
    /// Retries per committed transaction.
    pub(super) retry_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct CaseResult {
    pub(super) size: String,
    pub(super) size_bytes: u64,
    pub(super) clients: usize,
    pub(super) messages: u64,
    pub(super) median: Medians,
    /// Runs with at least one failed message, or a lost or duplicated one.
    pub(super) failed_runs: usize,
    pub(super) runs: Vec<RunResult>,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) mode: Mode,
    pub(super) senders: u32,
    pub(super) runs_per_case: usize,
    /// "started per run" or the --target address.
    pub(super) server: String,
    /// Clients and server share these CPUs; other load on them shows in the figures.
    pub(super) cpus: usize,
    /// 1-minute load average when the bench started (from /proc/loadavg).
    pub(super) load_at_start: Option<f64>,
    pub(super) cases: Vec<CaseResult>,
}

pub(super) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(super) fn median(values: &mut [f64]) -> Option<f64> {
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
pub(super) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

pub(super) fn summarize(
    size: u64,
    clients: usize,
    messages: u64,
    runs: Vec<RunResult>,
) -> CaseResult {
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
            commits_per_s: pick(&|r| r.commits_per_s),
            retry_rate: pick(&|r| r.retry_rate()),
        },
        failed_runs: runs.iter().filter(|r| r.failed_badly()).count(),
        runs,
    }
}

impl RunResult {
    pub(super) fn failed_badly(&self) -> bool {
        self.failed > 0
            || self.lost.is_some_and(|n| n > 0)
            || self.duplicated.is_some_and(|n| n > 0)
    }
}

/// One run in a line, for stderr while the bench goes on.
pub(super) fn progress(r: &RunResult) -> String {
    let rss = r
        .peak_rss_mib
        .map(|m| format!("{m:.1} MiB"))
        .unwrap_or_else(|| "n/a".into());
    let mut line = format!(
        "{:.1} msgs/s, p50 {:.2} ms, p99 {:.2} ms, peak RSS {rss}",
        r.msgs_per_s, r.p50_ms, r.p99_ms
    );
    if let (Some(c), Some(t)) = (r.commits_per_s, r.retries) {
        let _ = write!(line, ", {c:.1} commits/s, {t} retries");
    }
    if r.lost.is_some() {
        let _ = write!(line, ", {}", r.checked());
    }
    if r.failed > 0 {
        let error = r.first_error.as_deref().unwrap_or("?");
        let _ = write!(
            line,
            ", {} FAILED ({} refused): {error}",
            r.failed, r.refused
        );
    }
    line
}

pub(super) fn table(report: &Report) -> String {
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
        "commits/s",
        "retry/commit",
        "check",
        "result",
    ];
    row(&mut s, header.map(String::from));
    let rss = |v: Option<f64>| v.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into());
    let rate = |v: Option<f64>| v.map(|m| format!("{m:.3}")).unwrap_or_else(|| "-".into());
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
                rss(m.commits_per_s),
                rate(m.retry_rate),
                String::new(),
                verdict,
            ],
        );
        for (i, r) in c.runs.iter().enumerate() {
            let verdict = match (r.failed, &r.first_error) {
                (0, _) => String::new(),
                (n, e) => format!(
                    "{n} FAILED ({} refused): {}",
                    r.refused,
                    e.as_deref().unwrap_or("?")
                ),
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
                    rss(r.commits_per_s),
                    rate(r.retry_rate()),
                    r.checked(),
                    verdict,
                ],
            );
        }
    }
    s
}

/// One table line: the size left-aligned, figures right-aligned, the verdict last.
pub(super) fn row(
    s: &mut String,
    [size, clients, msgs, rate, p50, p99, rss, commits, retries, check, verdict]: [String; 11],
) {
    let line = format!(
        "{size:<6} {clients:>7} {msgs:>6}  {rate:>10} {p50:>8} {p99:>8} {rss:>13} {commits:>10} \
         {retries:>12} {check:>14}  {verdict}"
    );
    // A row without a verdict would end in padding.
    let _ = writeln!(s, "{}", line.trim_end());
}
