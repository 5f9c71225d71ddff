//! What the server counts -> Prometheus text exposition format 0.0.4. Counters, gauges and
//! fixed-bucket histograms are plain atomics: recording on the hot path is one relaxed add, with
//! no lock and no allocation. Every label has a fixed set of values (an enum), so a series
//! exists from the start (a rate over a counter that appears late misses its first increments)
//! and a hostile client cannot grow the set.
//!
//! Who records what: the listener (connections), the session (bytes, rejections, end-of-data
//! latency), the pipeline (auth verdicts, commit latency), the retention sweeper, reload, and the
//! outbox worker (`set_outbox_depth`). Gauges that mirror state kept elsewhere (open sessions,
//! commit queue) are sampled by the API's `/metrics` handler before it renders instead of being kept in step.

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The Content-Type to serve `render`'s output with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket upper bounds (seconds) of the latency histograms: from a group commit that shares an
/// fsync (milliseconds) to a DNS-bound check that runs into its timeouts (tens of seconds).
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The metrics of everything running on one `Ctx` (one server).
pub struct Metrics {
    /// Connections that became sessions (passed every admission check).
    pub connections_accepted: Counter,
    pub connections_refused: CounterVec<ConnectionRefusal>,
    /// Sessions open now; sampled from `Limits` at render.
    pub(crate) sessions_open: Gauge,
    /// Messages acknowledged with 250 (each counted once, whatever its number of recipients).
    pub messages_accepted: Counter,
    pub messages_rejected: CounterVec<Rejection>,
    pub auth_verdicts: CounterVec<AuthVerdict>,
    /// Bytes read from SMTP clients (commands and data, after TLS decryption).
    pub received_bytes: Counter,
    /// Body bytes of acknowledged messages.
    pub accepted_message_bytes: Counter,
    /// From handing a message to the committer to its answer (it is durable).
    pub commit_duration: Histogram,
    /// From the end of a message's data to the reply, whatever the reply: what a sending MTA
    /// waits for (checks, commit).
    pub end_of_data_duration: Histogram,
    /// Messages waiting for the committer; sampled from the store at render.
    pub(crate) commit_queue_depth: Gauge,
    /// Store transactions committed by the committers (a batch of messages is one), and store
    /// transactions run again after losing a race to another (PostgreSQL: a serialization
    /// failure, deadlock or duplicate key; sled: always 0). Sampled from the store at render.
    pub(crate) store_commits: Counter,
    pub(crate) store_retries: Counter,
    /// Flushed writes made by `/readyz` to see whether the store takes a commit. Readiness
    /// reuses a result for `context::health::STORE_CACHE`, so however often it is asked, this
    /// grows by at most one per interval.
    pub readiness_store_probes: Counter,
    /// Outbox items waiting for delivery; set by the outbox worker.
    outbox_depth: Gauge,
    pub retention_removed: CounterVec<RetentionAction>,
    pub config_reloads: CounterVec<ReloadResult>,
    /// Age of the oldest outbox item waiting, seconds (0 when empty); set by the outbox worker.
    outbox_oldest_age: Gauge,
    /// When the configured TLS certificate expires (Unix seconds; 0: none configured, or a
    /// generated self-signed one). Set when the certificate is loaded, at start and reload.
    tls_certificate_not_after: Gauge,
    /// Outcomes of webhook calls and of mail through the relay, as the outbox worker settles them.
    pub webhook_deliveries: CounterVec<DeliveryOutcome>,
    pub relay_deliveries: CounterVec<DeliveryOutcome>,
    /// Accepted and rejected messages per configured inbox. Bounded: only inbox ids of the
    /// config ever become label values (recipients are resolved to inboxes before counting, and
    /// an unknown recipient has no inbox), so a client cannot grow the set; at most
    /// `MAX_INBOX_SERIES` ids are kept, the rest count under `inbox="_other"`.
    per_inbox: std::sync::Mutex<std::collections::BTreeMap<String, [u64; 2]>>,
}

/// Most inbox ids with series of their own (see `Metrics::per_inbox`).
pub const MAX_INBOX_SERIES: usize = 1000;

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            connections_accepted: Counter::default(),
            connections_refused: CounterVec::new(),
            sessions_open: Gauge::default(),
            messages_accepted: Counter::default(),
            messages_rejected: CounterVec::new(),
            auth_verdicts: CounterVec::new(),
            received_bytes: Counter::default(),
            accepted_message_bytes: Counter::default(),
            commit_duration: Histogram::new(LATENCY_BUCKETS_SECONDS),
            end_of_data_duration: Histogram::new(LATENCY_BUCKETS_SECONDS),
            commit_queue_depth: Gauge::default(),
            store_commits: Counter::default(),
            store_retries: Counter::default(),
            readiness_store_probes: Counter::default(),
            outbox_depth: Gauge::default(),
            retention_removed: CounterVec::new(),
            config_reloads: CounterVec::new(),
            outbox_oldest_age: Gauge::default(),
            tls_certificate_not_after: Gauge::default(),
            webhook_deliveries: CounterVec::new(),
            relay_deliveries: CounterVec::new(),
            per_inbox: Default::default(),
        }
    }

    /// Age in seconds of the oldest outbox item (0: empty). Shown as
    /// `inbound_outbox_oldest_item_age_seconds`.
    pub fn set_outbox_oldest_age(&self, seconds: u64) {
        self.outbox_oldest_age
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
    }

    /// The expiry of the certificate now served (Unix seconds), or `None` for none configured.
    pub fn set_tls_certificate_not_after(&self, unix_seconds: Option<i64>) {
        self.tls_certificate_not_after
            .set(unix_seconds.unwrap_or(0));
    }

    /// Count a message for each of its (configured) inboxes, accepted or rejected.
    pub fn count_inboxes<'a>(&self, inboxes: impl IntoIterator<Item = &'a str>, accepted: bool) {
        // A poisoned lock only means a panic elsewhere mid-increment; the counts stay usable.
        // Two recipients in one inbox are one message for it.
        let inboxes: std::collections::BTreeSet<&str> = inboxes.into_iter().collect();
        let mut map = self.per_inbox.lock().unwrap_or_else(|p| p.into_inner());
        for inbox in inboxes {
            let key = if map.contains_key(inbox) || map.len() < MAX_INBOX_SERIES {
                inbox
            } else {
                "_other"
            };
            let counts = map.entry(key.to_string()).or_default();
            counts[usize::from(!accepted)] += 1;
        }
    }

    /// Make the series of these inboxes exist (at 0) before their first message, so a rate over
    /// them sees the first increment. Called with the config's inboxes at render.
    pub fn known_inboxes<'a>(&self, inboxes: impl IntoIterator<Item = &'a str>) {
        let mut map = self.per_inbox.lock().unwrap_or_else(|p| p.into_inner());
        for inbox in inboxes {
            if map.len() >= MAX_INBOX_SERIES {
                break;
            }
            map.entry(inbox.to_string()).or_default();
        }
    }

    /// The outbox worker reports how many items wait for delivery (after each pass, and when it
    /// adds or finishes items). Shown as `inbound_outbox_depth`.
    pub fn set_outbox_depth(&self, items: u64) {
        self.outbox_depth
            .set(i64::try_from(items).unwrap_or(i64::MAX));
    }

    /// Render every family. `render(ctx)` samples the mirrored gauges first.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let o = &mut out;
        // Which build answers: constant 1, the version and commit as labels (the commit comes
        // from build.rs; "unknown" when built without git).
        header(
            o,
            "inbound_build_info",
            "The running build: version and git commit.",
            "gauge",
        );
        let _ = writeln!(
            o,
            "inbound_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            escape_label_value(env!("CARGO_PKG_VERSION")),
            escape_label_value(env!("INBOUND_GIT_COMMIT"))
        );
        counter(
            o,
            "inbound_connections_accepted_total",
            "Connections that passed admission and became SMTP sessions.",
            &self.connections_accepted,
        );
        counter_vec(
            o,
            "inbound_connections_refused_total",
            "Connections refused before a session started, by reason.",
            &self.connections_refused,
        );
        gauge(
            o,
            "inbound_sessions_open",
            "SMTP sessions open now.",
            &self.sessions_open,
        );
        counter(
            o,
            "inbound_messages_accepted_total",
            "Messages acknowledged with 250 after their durable commit.",
            &self.messages_accepted,
        );
        counter_vec(
            o,
            "inbound_messages_rejected_total",
            "Messages refused, by reason; recipient reasons count refused RCPT commands.",
            &self.messages_rejected,
        );
        counter_vec(
            o,
            "inbound_auth_verdicts_total",
            "Sender authentication verdicts (skipped: trusted network or checks disabled).",
            &self.auth_verdicts,
        );
        counter(
            o,
            "inbound_received_bytes_total",
            "Bytes read from SMTP clients, commands and data, after TLS decryption.",
            &self.received_bytes,
        );
        counter(
            o,
            "inbound_accepted_message_bytes_total",
            "Body bytes of acknowledged messages.",
            &self.accepted_message_bytes,
        );
        histogram(
            o,
            "inbound_store_commit_duration_seconds",
            "Time from handing a message to the store to its durable commit.",
            &self.commit_duration,
        );
        histogram(
            o,
            "inbound_end_of_data_reply_duration_seconds",
            "Time from the end of a message's data to the reply (checks and commit).",
            &self.end_of_data_duration,
        );
        gauge(
            o,
            "inbound_store_commit_queue_depth",
            "Messages waiting for the store committer.",
            &self.commit_queue_depth,
        );
        counter(
            o,
            "inbound_store_commits_total",
            "Store transactions committed by the committers (a batch of messages is one).",
            &self.store_commits,
        );
        counter(
            o,
            "inbound_store_retries_total",
            "Store transactions run again after losing a race (PostgreSQL serialization failure, deadlock or duplicate key).",
            &self.store_retries,
        );
        counter(
            o,
            "inbound_readiness_store_probes_total",
            "Flushed store writes made by readiness checks (at most one per 2 s, however often /readyz is asked).",
            &self.readiness_store_probes,
        );
        gauge(
            o,
            "inbound_outbox_depth",
            "Outbox items waiting for delivery.",
            &self.outbox_depth,
        );
        counter_vec(
            o,
            "inbound_retention_removed_total",
            "What the retention sweeper removed, by kind.",
            &self.retention_removed,
        );
        counter_vec(
            o,
            "inbound_config_reloads_total",
            "Configuration reloads, by result.",
            &self.config_reloads,
        );
        gauge(
            o,
            "inbound_tls_certificate_not_after_seconds",
            "When the configured TLS certificate expires, as Unix time (0: none configured or self-signed).",
            &self.tls_certificate_not_after,
        );
        gauge(
            o,
            "inbound_outbox_oldest_item_age_seconds",
            "Age of the oldest outbox item still waiting for delivery (0 when the outbox is empty).",
            &self.outbox_oldest_age,
        );
        counter_vec(
            o,
            "inbound_webhook_deliveries_total",
            "Webhook calls settled by the outbox worker, by outcome.",
            &self.webhook_deliveries,
        );
        counter_vec(
            o,
            "inbound_relay_deliveries_total",
            "Mail through the relay settled by the outbox worker, by outcome.",
            &self.relay_deliveries,
        );
        header(
            o,
            "inbound_inbox_messages_total",
            "Messages per configured inbox, by outcome (a message to two inboxes counts in both).",
            "counter",
        );
        let map = self.per_inbox.lock().unwrap_or_else(|p| p.into_inner());
        for (inbox, counts) in map.iter() {
            for (outcome, n) in ["accepted", "rejected"].iter().zip(counts) {
                let _ = writeln!(
                    o,
                    "inbound_inbox_messages_total{{inbox=\"{}\",outcome=\"{outcome}\"}} {n}",
                    escape_label_value(inbox)
                );
            }
        }
        drop(map);
        out
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    /// For a counter that mirrors one kept elsewhere, sampled at render.
    pub(crate) fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A label whose values are fixed: an enum. `index` is the position in `ALL`.
pub trait Label: Copy + 'static {
    const NAME: &'static str;
    const ALL: &'static [Self];
    fn index(self) -> usize;
    fn value(self) -> &'static str;
}

/// One counter per value of `L`.
pub struct CounterVec<L: Label> {
    counters: Box<[Counter]>,
    _label: PhantomData<L>,
}

impl<L: Label> CounterVec<L> {
    pub fn new() -> Self {
        CounterVec {
            counters: L::ALL.iter().map(|_| Counter::default()).collect(),
            _label: PhantomData,
        }
    }

    pub fn inc(&self, label: L) {
        self.add(label, 1);
    }

    pub fn add(&self, label: L, n: u64) {
        self.counters[label.index()].add(n);
    }

    pub fn get(&self, label: L) -> u64 {
        self.counters[label.index()].get()
    }
}

impl<L: Label> Default for CounterVec<L> {
    fn default() -> Self {
        Self::new()
    }
}

/// Observations of durations in fixed buckets. Buckets are kept per bucket (not cumulative) so
/// an observation is one add; `render` accumulates them, and derives `_count` from them so that
/// `le="+Inf"` and `_count` always agree.
pub struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` counts; the last one is above every bound.
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }
}

macro_rules! label {
    ($(#[$m:meta])* $name:ident, $label:literal, { $($variant:ident => $value:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl Label for $name {
            const NAME: &'static str = $label;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn index(self) -> usize {
                self as usize
            }
            fn value(self) -> &'static str {
                match self { $($name::$variant => $value),+ }
            }
        }
    };
}

label!(
    /// Why a connection did not become a session.
    ConnectionRefusal, "reason", {
        MaxConnections => "max_connections",
        PerIp => "per_ip",
        Rate => "rate",
        Shutdown => "shutdown",
        UntrustedProxy => "untrusted_proxy",
        ProxyHeader => "proxy_header",
    }
);

label!(
    /// Why a message (or one of its recipients) was refused.
    Rejection, "reason", {
        Policy => "policy",
        TempFail => "tempfail",
        Size => "size",
        UnknownRecipient => "unknown_recipient",
        RelayDenied => "relay_denied",
        TooManyRecipients => "too_many_recipients",
        RateLimited => "rate_limited",
        LocalError => "local_error",
        LowDiskSpace => "low_disk_space",
    }
);

label!(
    /// The sender-authentication verdict of a message that reached the end of its data.
    AuthVerdict, "verdict", {
        Accept => "accept",
        Quarantine => "quarantine",
        Reject => "reject",
        TempFail => "tempfail",
        Skipped => "skipped",
    }
);

label!(
    /// What a retention sweep removed.
    RetentionAction, "kind", {
        BodyExpired => "body",
        QuarantineDeleted => "quarantined_message",
        SessionMetadataCleared => "session_metadata",
        ConversationDeleted => "conversation",
        ConversationMessageDeleted => "conversation_message",
    }
);

label!(
    /// How the outbox worker settled one delivery attempt.
    DeliveryOutcome, "outcome", {
        Delivered => "delivered",
        Retry => "retry",
        Failed => "failed",
        GaveUp => "gave_up",
    }
);
label!(
    /// How a configuration reload ended.
    ReloadResult, "result", {
        Applied => "applied",
        Refused => "refused",
    }
);

/// A label value as the text format needs it: backslash, double quote and newline escaped.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and newline (not quotes).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, c: &Counter) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {}", c.get());
}

fn counter_vec<L: Label>(out: &mut String, name: &str, help: &str, v: &CounterVec<L>) {
    header(out, name, help, "counter");
    for &l in L::ALL {
        let _ = writeln!(
            out,
            "{name}{{{}=\"{}\"}} {}",
            L::NAME,
            escape_label_value(l.value()),
            v.get(l)
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, g: &Gauge) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {}", g.get());
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, help, "histogram");
    let mut cumulative = 0;
    for (i, b) in h.buckets.iter().enumerate() {
        cumulative += b.load(Relaxed);
        let le = match h.bounds.get(i) {
            Some(bound) => format!("{bound}"),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let sum = h.sum_nanos.load(Relaxed) as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// One sample line: metric name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A strict reader of the text format as `render` must write it: every sample belongs to a
    /// family declared by `# HELP` then `# TYPE` before it; label values are quoted with escapes.
    fn parse(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
        let mut types = HashMap::new();
        let mut helped = std::collections::HashSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has text");
                assert!(helped.insert(name.to_string()), "HELP twice for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(types.insert(name.to_string(), kind.to_string()).is_none());
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let name_end = line.find(['{', ' ']).expect("name then labels or value");
            let name = &line[..name_end];
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name {name:?}"
            );
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                rest = r;
                loop {
                    let eq = rest.find("=\"").expect("label=\"value\"");
                    let key = rest[..eq].to_string();
                    rest = &rest[eq + 2..];
                    let mut value = String::new();
                    let mut chars = rest.char_indices();
                    let end = loop {
                        let (i, c) = chars.next().expect("closing quote");
                        match c {
                            '\\' => match chars.next().expect("escape").1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => panic!("bad escape \\{c}"),
                            },
                            '"' => break i,
                            '\n' => panic!("raw newline in label value"),
                            c => value.push(c),
                        }
                    };
                    labels.push((key, value));
                    rest = &rest[end + 1..];
                    if let Some(r) = rest.strip_prefix(',') {
                        rest = r;
                    } else {
                        rest = rest.strip_prefix('}').expect("labels end with }");
                        break;
                    }
                }
            }
            let value: f64 = rest
                .strip_prefix(' ')
                .expect("space before value")
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "sample before its TYPE: {line}");
            samples.push((name.to_string(), labels, value));
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && match label {
                        None => l.is_empty(),
                        Some((k, v)) => l.iter().any(|(lk, lv)| lk == k && lv == v),
                    }
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
            .2
    }

    #[test]
    fn render_is_valid_text_format_with_the_recorded_values() {
        let m = Metrics::new();
        m.connections_accepted.add(3);
        m.connections_refused.inc(ConnectionRefusal::PerIp);
        m.messages_rejected.add(Rejection::UnknownRecipient, 2);
        m.auth_verdicts.inc(AuthVerdict::Quarantine);
        m.set_outbox_depth(7);
        for ms in [0, 3, 3, 40, 2_000, 60_000] {
            m.commit_duration.observe(Duration::from_millis(ms));
        }
        let text = m.render();
        let (types, samples) = parse(&text);
        assert_eq!(types["inbound_connections_accepted_total"], "counter");
        assert_eq!(types["inbound_outbox_depth"], "gauge");
        assert_eq!(types["inbound_store_commit_duration_seconds"], "histogram");
        assert_eq!(
            value(&samples, "inbound_connections_accepted_total", None),
            3.0
        );
        assert_eq!(
            value(
                &samples,
                "inbound_connections_refused_total",
                Some(("reason", "per_ip"))
            ),
            1.0
        );
        // Every value of a label is present from the start.
        assert_eq!(
            value(
                &samples,
                "inbound_connections_refused_total",
                Some(("reason", "shutdown"))
            ),
            0.0
        );
        assert_eq!(
            value(
                &samples,
                "inbound_messages_rejected_total",
                Some(("reason", "unknown_recipient"))
            ),
            2.0
        );
        assert_eq!(value(&samples, "inbound_outbox_depth", None), 7.0);

        let h = "inbound_store_commit_duration_seconds";
        let bucket = |le: &str| value(&samples, &format!("{h}_bucket"), Some(("le", le)));
        assert_eq!(bucket("0.001"), 1.0);
        assert_eq!(bucket("0.005"), 3.0);
        assert_eq!(bucket("0.05"), 4.0);
        assert_eq!(bucket("2.5"), 5.0);
        assert_eq!(bucket("30"), 5.0);
        assert_eq!(bucket("+Inf"), 6.0);
        assert_eq!(value(&samples, &format!("{h}_count"), None), 6.0);
        let sum = value(&samples, &format!("{h}_sum"), None);
        assert!((sum - 62.046).abs() < 1e-9, "{sum}");
        // Buckets are cumulative: never decreasing, in the order of their bounds.
        let les: Vec<f64> = samples
            .iter()
            .filter(|(n, _, _)| n == &format!("{h}_bucket"))
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(les.len(), LATENCY_BUCKETS_SECONDS.len() + 1);
        assert!(les.windows(2).all(|w| w[0] <= w[1]), "{les:?}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        let mut out = String::new();
        header(&mut out, "x_total", "line one\nback\\slash", "counter");
        assert_eq!(
            out,
            "# HELP x_total line one\\nback\\\\slash\n# TYPE x_total counter\n"
        );
    }
}
