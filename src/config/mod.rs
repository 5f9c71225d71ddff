//! TOML text -> validated `Config`. Raw (serde mirror, `raw.rs`) -> validated (this file, every error
//! collected with its key path) -> compiled lookup tables (`Inboxes`) that the hot path reads.

pub mod outbound;
pub mod raw;
pub mod routes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::*;
use serde::de::DeserializeOwned;

/// The embedded default configuration (`inbound serve` with no flags).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// RFC 5321 §4.5.3.2.7: the server should wait at least 5 minutes for the next command.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 §4.5.3.2.5-6 give 3 minutes per data block and 10 for the terminator; we apply one
/// idle timeout while reading data: a client that sends nothing for this long is dropped.
const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(3 * 60);
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 31_457_280;

/// One problem in a config file, with the path of the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file, not just the first.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} error{} in configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub shutdown_timeout: Duration,
    pub admin_socket: PathBuf,
    /// Whether `admin_socket` was set in the file (else it follows `data_dir`).
    pub admin_socket_explicit: bool,
    pub listeners: Vec<ListenerConfig>,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub dns: DnsConfig,
    pub auth: AuthConfig,
    pub directory: routes::Directory,
    pub inboxes: Inboxes,
    /// Relay, outbox, notification links and webhooks.
    pub outbound: outbound::OutboundConfig,
    pub retention: RetentionConfig,
    pub api: ApiConfig,
}

/// Where the HTTP API listens unless `api.listen` says otherwise: loopback, so a default install
/// exposes nothing.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8025";

/// `[api]`, validated. Tokens are kept only as SHA-256 digests, so `Debug` (and any log of the
/// config) cannot show them and `api::auth` compares values of one fixed size.
#[derive(Clone)]
pub struct ApiConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// SHA-256 of each accepted bearer token (`api.tokens` and `api.token_files`). Empty: every
    /// protected endpoint answers 401.
    pub token_digests: Vec<[u8; 32]>,
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("tokens", &self.token_digests.len())
            .finish()
    }
}

/// Shortest bearer token accepted: guessing one must be hopeless.
const MIN_TOKEN_CHARS: usize = 16;

/// SHA-256 of a bearer token, as `ApiConfig::token_digests` keeps it.
pub fn token_digest(token: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

/// Why `token` cannot be a bearer token, if it cannot: RFC 6750 §2.1 `b64token` characters only
/// (anything else could not be sent in an `Authorization` header), and not short.
fn token_problem(token: &str) -> Option<String> {
    let body = token.trim_end_matches('=');
    if let Some(c) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~+/".contains(*c)))
    {
        return Some(format!(
            "a token may contain only letters, digits and -._~+/ (found {c:?})"
        ));
    }
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Some(format!(
            "a token must be at least {MIN_TOKEN_CHARS} characters (e.g. the output of `openssl rand -hex 32`)"
        ));
    }
    None
}

fn compile_api(raw: &RawApi, errors: &mut Errors) -> ApiConfig {
    let listen = match &raw.listen {
        None => DEFAULT_API_LISTEN
            .parse()
            .expect("the default API address parses"),
        Some(s) => s.parse::<SocketAddr>().unwrap_or_else(|_| {
            errors.push(
                "api.listen",
                format!("invalid socket address {s:?} (use \"IP:PORT\", e.g. \"127.0.0.1:8025\")"),
            );
            DEFAULT_API_LISTEN
                .parse()
                .expect("the default API address parses")
        }),
    };
    let mut token_digests = Vec::new();
    for (i, t) in raw.tokens.iter().enumerate() {
        match token_problem(t) {
            Some(problem) => errors.push(format!("api.tokens[{i}]"), problem),
            None => token_digests.push(token_digest(t.as_bytes())),
        }
    }
    for (i, path) in raw.token_files.iter().enumerate() {
        let key = format!("api.token_files[{i}]");
        match std::fs::read_to_string(path) {
            Err(e) => errors.push(key, format!("cannot read {path}: {e}")),
            Ok(text) => {
                let t = text.trim();
                if t.is_empty() {
                    errors.push(key, format!("{path} is empty"));
                } else if let Some(problem) = token_problem(t) {
                    errors.push(key, format!("{path}: {problem}"));
                } else {
                    token_digests.push(token_digest(t.as_bytes()));
                }
            }
        }
    }
    ApiConfig {
        enabled: raw.enabled.unwrap_or(true),
        listen,
        token_digests,
    }
}

/// How long stored data is kept (`[retention]`); `None` keeps it forever. Applied by the
/// retention sweeper (`store::retention`); reloadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Message bodies (with their attachments): removed, the record kept, marked expired.
    pub bodies: Option<Duration>,
    /// Quarantined messages: deleted entirely.
    pub quarantine: Option<Duration>,
    /// The SMTP session facts on each record (client address, HELO, TLS, envelope sender,
    /// trace header fields): cleared.
    pub session_metadata: Option<Duration>,
    /// Closed conversations whose last update is older: deleted with their messages.
    pub conversations: Option<Duration>,
    /// Time between sweeps.
    pub sweep_interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            bodies: None,
            quarantine: Some(Duration::from_secs(7 * 86_400)),
            session_metadata: Some(Duration::from_secs(60 * 86_400)),
            conversations: None,
            sweep_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Empty: the system resolver configuration (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout; a lookup that runs out of attempts is a temporary error (451 4.7.0).
    pub timeout: Duration,
    pub attempts: usize,
    /// Parsed records kept per record type (SPF, DKIM keys, DMARC), honouring their TTLs.
    pub cache_entries: usize,
}

/// What to do with a message that a policy rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Quarantine,
    Reject,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "accept" => Some(Action::Accept),
            "quarantine" => Some(Action::Quarantine),
            "reject" => Some(Action::Reject),
            _ => None,
        }
    }
}

/// A host trusted to forward mail into an inbox: an address range, or a domain that must
/// authorise the connecting IP by SPF (as envelope or HELO domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarder {
    Net(IpNet),
    Domain(String),
}

/// The sender-authentication policy of one inbox (global `[auth]` merged with `[inbox.auth]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    pub enabled: bool,
    pub trusted_arc_sealers: Vec<String>,
    pub trusted_forwarders: Vec<Forwarder>,
    /// DMARC fail under `p=reject`, with no trusted ARC chain or forwarder to vouch for it.
    pub on_dmarc_reject: Action,
    /// DMARC fail under `p=quarantine`.
    pub on_dmarc_quarantine: Action,
    /// No DMARC policy, and neither SPF nor DKIM passes.
    pub on_unauthenticated: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Clients here skip the checks (their messages are recorded as `auth: skipped`).
    pub trusted_networks: Vec<IpNet>,
    /// Bytes of large bodies held in memory for DKIM/ARC at once; when used up, further checks
    /// wait (their clients wait for the reply to end-of-data).
    pub max_inflight_bytes: u64,
    pub policy: AuthPolicy,
}

/// Sealers whose ARC results we trust by default: the big mailbox providers that forward.
pub const DEFAULT_ARC_SEALERS: &[&str] = &[
    "google.com",
    "outlook.com",
    "microsoft.com",
    "yahoo.com",
    "icloud.com",
    "fastmail.com",
    "messagingengine.com",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub proxy_protocol: bool,
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub enabled: bool,
    /// Certificate chain and key, PEM. `None`: a self-signed certificate is generated at start.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub max_message_bytes: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub connections_per_ip_per_minute: u32,
    pub messages_per_ip_per_minute: u32,
    pub max_bad_commands: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_transactions_per_connection: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub inline_body_max_bytes: u64,
    pub max_commit_batch: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxConfig {
    pub id: String,
    pub name: Option<String>,
    /// Canonical hosted address, lower case.
    pub address: String,
    pub aliases: Vec<String>,
    pub auth: AuthPolicy,
    pub from_name: Option<String>,
    /// The team's mailbox (or `@domain`) whose forwarded mail connects the inbox.
    pub connected_address: Option<String>,
    pub tickets: routes::TicketDefaults,
    pub rules: Vec<routes::Rule>,
    /// Who is told by email about this inbox's setup (provider confirmations): addresses,
    /// resolved from user ids where configured that way.
    pub admins: Vec<String>,
    /// The address this inbox's outbound mail should come from; used only once verified
    /// (`inbound inboxes verify-from`), until then the relay's `from`.
    pub from_address: Option<String>,
}

/// The compiled recipient table: hosted address -> inbox, and the set of hosted domains.
#[derive(Debug, Clone, Default)]
pub struct Inboxes {
    pub list: Vec<InboxConfig>,
    by_address: HashMap<String, usize>,
    domains: HashSet<String>,
}

/// What a RCPT address resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient<'a> {
    Hosted {
        inbox: &'a InboxConfig,
        tag: Option<String>,
    },
    /// A hosted domain, but no such inbox.
    UnknownMailbox,
    /// Not a domain we host: accepting would make us a relay.
    ForeignDomain,
}

impl Inboxes {
    /// Resolve a RCPT address. Domains and local parts compare case-insensitively (RFC 5321 allows
    /// case-sensitive local parts, but no operator wants `Support@` bounced); `local+tag@domain`
    /// reaches `local@domain` and keeps the tag.
    pub fn resolve(&self, address: &str) -> Recipient<'_> {
        // RFC 5321 §4.5.1: `postmaster` (bare, or at any domain we host) must be accepted; it
        // reaches the first inbox of that domain unless an inbox claims the address itself.
        if address.eq_ignore_ascii_case("postmaster") {
            return match self.list.first() {
                Some(inbox) => Recipient::Hosted { inbox, tag: None },
                None => Recipient::UnknownMailbox,
            };
        }
        let Some((local, domain)) = split_address(address) else {
            return Recipient::UnknownMailbox;
        };
        let domain = domain.trim_end_matches('.').to_lowercase();
        if !self.domains.contains(&domain) {
            return Recipient::ForeignDomain;
        }
        let local = local.to_lowercase();
        if let Some(&i) = self.by_address.get(&format!("{local}@{domain}")) {
            return Recipient::Hosted {
                inbox: &self.list[i],
                tag: None,
            };
        }
        if let Some((base, tag)) = local.split_once('+') {
            if let Some(&i) = self.by_address.get(&format!("{base}@{domain}")) {
                return Recipient::Hosted {
                    inbox: &self.list[i],
                    tag: Some(tag.to_string()),
                };
            }
        }
        if local == "postmaster" {
            let first = self.list.iter().find(|i| {
                std::iter::once(&i.address)
                    .chain(&i.aliases)
                    .any(|a| a.rsplit_once('@').is_some_and(|(_, d)| d == domain))
            });
            if let Some(inbox) = first {
                return Recipient::Hosted { inbox, tag: None };
            }
        }
        Recipient::UnknownMailbox
    }

    pub fn get(&self, id: &str) -> Option<&InboxConfig> {
        self.list.iter().find(|i| i.id == id)
    }
}

/// `local@domain` split at the last `@`; `None` when either side is empty.
pub fn split_address(address: &str) -> Option<(&str, &str)> {
    let (local, domain) = address.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some((local, domain))
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`), or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are IPv4 for every check we make.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Parse "90s", "5m", "1h", "250ms", "2d"; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Collects errors while validating, so `check-config` can show them all.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserialize one part of the document; on failure record the error under `path`.
    fn section<T: DeserializeOwned>(&mut self, path: &str, value: toml::Value) -> Option<T> {
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(path, e.message().trim().to_string());
                None
            }
        }
    }

    fn duration(&mut self, path: &str, value: &Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|| {
                self.push(
                    path,
                    format!("invalid duration {s:?} (use e.g. \"30s\", \"5m\", \"1h\")"),
                );
                default
            }),
        }
    }

    /// A retention lifetime: "keep" (`None`) or a positive duration.
    fn lifetime(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        let Some(s) = value else {
            return default;
        };
        if s.trim() == "keep" {
            return None;
        }
        match parse_duration(s) {
            Some(d) if d.is_zero() => {
                self.push(
                    path,
                    "must be greater than 0 (use \"keep\" to keep forever)",
                );
                default
            }
            Some(d) => Some(d),
            None => {
                self.push(
                    path,
                    format!("invalid lifetime {s:?} (use \"keep\" or a duration such as \"7d\", \"12h\")"),
                );
                default
            }
        }
    }

    fn positive(&mut self, path: &str, value: Option<u64>, default: u64) -> u64 {
        match value {
            Some(0) => {
                self.push(path, "must be greater than 0");
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}

/// Parse and validate a whole config text. `base` resolves relative paths (the config file's
/// directory is not used: paths are relative to the working directory, as operators expect from
/// `data_dir = "./data"`). `api.token_files` are read here, so `check-config` reports a missing
/// or malformed token file like any other error.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::default();
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("TOML syntax: {}", e.to_string().trim()),
        }])
    })?;

    let mut server = RawServer::default();
    let mut listeners: Vec<RawListener> = Vec::new();
    let mut tls = RawTls::default();
    let mut limits = RawLimits::default();
    let mut store = RawStore::default();
    let mut dns = RawDns::default();
    let mut auth = RawAuth::default();
    let mut api = RawApi::default();
    let mut retention = RawRetention::default();
    let mut inboxes: Vec<(String, RawInbox)> = Vec::new();
    let mut users: Vec<(String, RawUser)> = Vec::new();
    let mut teams: Vec<(String, RawTeam)> = Vec::new();
    let mut contacts: Vec<(String, RawContact)> = Vec::new();
    let mut relay: Option<outbound::RawRelay> = None;
    let mut outbox = outbound::RawOutbox::default();
    let mut notify = outbound::RawNotify::default();
    let mut webhooks: Vec<(String, outbound::RawWebhook)> = Vec::new();

    for (key, value) in doc {
        match key.as_str() {
            "server" => server = errors.section("server", value).unwrap_or_default(),
            "tls" => tls = errors.section("tls", value).unwrap_or_default(),
            "limits" => limits = errors.section("limits", value).unwrap_or_default(),
            "store" => store = errors.section("store", value).unwrap_or_default(),
            "dns" => dns = errors.section("dns", value).unwrap_or_default(),
            "auth" => auth = errors.section("auth", value).unwrap_or_default(),
            "api" => api = errors.section("api", value).unwrap_or_default(),
            "relay" => relay = errors.section("relay", value),
            "outbox" => outbox = errors.section("outbox", value).unwrap_or_default(),
            "notify" => notify = errors.section("notify", value).unwrap_or_default(),
            "retention" => retention = errors.section("retention", value).unwrap_or_default(),
            "listener" | "inbox" | "user" | "team" | "contact" | "webhook" => {
                let toml::Value::Array(items) = value else {
                    errors.push(&key, format!("must be an array of tables ([[{key}]])"));
                    continue;
                };
                for (i, item) in items.into_iter().enumerate() {
                    let path = format!("{key}[{i}]");
                    match key.as_str() {
                        "listener" => listeners.extend(errors.section::<RawListener>(&path, item)),
                        "inbox" => {
                            if let Some(v) = errors.section::<RawInbox>(&path, item) {
                                inboxes.push((path, v));
                            }
                        }
                        "user" => {
                            if let Some(v) = errors.section::<RawUser>(&path, item) {
                                users.push((path, v));
                            }
                        }
                        "team" => {
                            if let Some(v) = errors.section::<RawTeam>(&path, item) {
                                teams.push((path, v));
                            }
                        }
                        "webhook" => {
                            if let Some(v) = errors.section(&path, item) {
                                webhooks.push((path, v));
                            }
                        }
                        _ => {
                            if let Some(v) = errors.section::<RawContact>(&path, item) {
                                contacts.push((path, v));
                            }
                        }
                    }
                }
            }
            other => errors.push(other, "unknown section"),
        }
    }

    let hostname = server
        .hostname
        .clone()
        .unwrap_or_else(|| "localhost".into());
    if hostname.is_empty() || hostname.contains(char::is_whitespace) {
        errors.push("server.hostname", format!("invalid hostname {hostname:?}"));
    }
    let data_dir = PathBuf::from(server.data_dir.clone().unwrap_or_else(|| "./data".into()));
    let shutdown_timeout = errors.duration(
        "server.shutdown_timeout",
        &server.shutdown_timeout,
        Duration::from_secs(30),
    );
    let admin_socket = server
        .admin_socket
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("admin.sock"));

    if listeners.is_empty() && !errors.0.iter().any(|e| e.path.starts_with("listener")) {
        errors.push("listener", "at least one [[listener]] is required");
    }
    let mut seen_addrs = HashSet::new();
    let listeners: Vec<ListenerConfig> = listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let path = format!("listener[{i}]");
            let addr = match l.addr.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    errors.push(format!("{path}.addr"), format!("invalid socket address {:?}", l.addr));
                    return None;
                }
            };
            if addr.port() != 0 && !seen_addrs.insert(addr) {
                errors.push(format!("{path}.addr"), format!("{addr} is listed twice"));
            }
            let mut trusted = Vec::new();
            for (j, t) in l.trusted_proxies.iter().enumerate() {
                match IpNet::parse(t) {
                    Some(n) => trusted.push(n),
                    None => errors.push(format!("{path}.trusted_proxies[{j}]"), format!("invalid address or CIDR {t:?}")),
                }
            }
            if l.proxy_protocol && l.trusted_proxies.is_empty() {
                errors.push(
                    format!("{path}.trusted_proxies"),
                    "proxy_protocol needs at least one trusted proxy address (anyone could forge client addresses)",
                );
            }
            Some(ListenerConfig { addr, proxy_protocol: l.proxy_protocol, trusted_proxies: trusted })
        })
        .collect();

    let cert_and_key = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        (Some(_), None) => {
            errors.push("tls.key", "tls.cert is set but tls.key is missing");
            None
        }
        (None, Some(_)) => {
            errors.push("tls.cert", "tls.key is set but tls.cert is missing");
            None
        }
    };
    let tls = TlsConfig {
        enabled: tls.enabled.unwrap_or(true),
        cert_and_key,
    };

    let max_message_bytes = errors.positive(
        "limits.max_message_bytes",
        limits.max_message_bytes,
        DEFAULT_MAX_MESSAGE_BYTES,
    );
    let limits = LimitsConfig {
        max_message_bytes,
        max_recipients: errors.positive("limits.max_recipients", limits.max_recipients, 100)
            as usize,
        max_connections: errors.positive("limits.max_connections", limits.max_connections, 1024)
            as usize,
        max_connections_per_ip: errors.positive(
            "limits.max_connections_per_ip",
            limits.max_connections_per_ip,
            32,
        ) as usize,
        connections_per_ip_per_minute: clamp_u32(errors.positive(
            "limits.connections_per_ip_per_minute",
            limits.connections_per_ip_per_minute,
            600,
        )),
        messages_per_ip_per_minute: clamp_u32(errors.positive(
            "limits.messages_per_ip_per_minute",
            limits.messages_per_ip_per_minute,
            6000,
        )),
        max_bad_commands: clamp_u32(errors.positive(
            "limits.max_bad_commands",
            limits.max_bad_commands,
            10,
        )),
        command_timeout: errors.duration(
            "limits.command_timeout",
            &limits.command_timeout,
            DEFAULT_COMMAND_TIMEOUT,
        ),
        data_timeout: errors.duration(
            "limits.data_timeout",
            &limits.data_timeout,
            DEFAULT_DATA_TIMEOUT,
        ),
        max_transactions_per_connection: clamp_u32(errors.positive(
            "limits.max_transactions_per_connection",
            limits.max_transactions_per_connection,
            1000,
        )),
    };
    let store = StoreConfig {
        inline_body_max_bytes: store
            .inline_body_max_bytes
            .unwrap_or(64 * 1024)
            .min(max_message_bytes),
        max_commit_batch: errors.positive("store.max_commit_batch", store.max_commit_batch, 512)
            as usize,
    };

    let dns = DnsConfig {
        nameservers: dns
            .nameservers
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                // A bare IP means port 53.
                let parsed = n
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| n.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
                if parsed.is_none() {
                    errors.push(
                        format!("dns.nameservers[{i}]"),
                        format!("invalid address {n:?} (use \"IP\" or \"IP:PORT\")"),
                    );
                }
                parsed
            })
            .collect(),
        timeout: errors.duration("dns.timeout", &dns.timeout, Duration::from_secs(5)),
        attempts: errors.positive("dns.attempts", dns.attempts, 2) as usize,
        cache_entries: dns.cache_entries.unwrap_or(10_000) as usize,
    };
    let auth = compile_auth(&auth, &mut errors);
    let api = compile_api(&api, &mut errors);
    let directory = routes::compile_directory(&users, &teams, &contacts, &mut errors);
    let pattern = server
        .address_pattern
        .clone()
        .unwrap_or_else(|| "{local}@{tenant}.{hosted_domain}".into());
    for (path, inbox) in &mut inboxes {
        if inbox.address.is_some() {
            continue;
        }
        match (&inbox.tenant, &server.hosted_domain) {
            (Some(tenant), Some(hosted)) => {
                let local = inbox.local.clone().unwrap_or_else(|| inbox.id.clone());
                inbox.address = Some(
                    pattern
                        .replace("{local}", &local)
                        .replace("{tenant}", tenant)
                        .replace("{hosted_domain}", hosted),
                );
            }
            _ => errors.push(
                format!("{path}.address"),
                "give an address, or a tenant (with server.hosted_domain) to generate one",
            ),
        }
    }
    let inboxes = compile_inboxes(&inboxes, &auth.policy, &directory, &mut errors);
    let inbox_ids: Vec<&str> = inboxes.list.iter().map(|i| i.id.as_str()).collect();
    let outbound = outbound::compile(
        relay.as_ref(),
        &outbox,
        &notify,
        &webhooks,
        &inbox_ids,
        &mut errors,
    );
    let retention = compile_retention(&retention, &mut errors);

    if errors.0.is_empty() {
        Ok(Config {
            hostname,
            data_dir,
            shutdown_timeout,
            admin_socket_explicit: server.admin_socket.is_some(),
            admin_socket,
            listeners,
            tls,
            limits,
            store,
            dns,
            auth,
            directory,
            inboxes,
            outbound,
            api,
            retention,
        })
    } else {
        Err(ConfigErrors(errors.0))
    }
}

fn compile_retention(raw: &RawRetention, errors: &mut Errors) -> RetentionConfig {
    let d = RetentionConfig::default();
    let sweep_interval = errors.duration(
        "retention.sweep_interval",
        &raw.sweep_interval,
        d.sweep_interval,
    );
    if sweep_interval.is_zero() {
        errors.push("retention.sweep_interval", "must be greater than 0");
    }
    RetentionConfig {
        bodies: errors.lifetime("retention.bodies", &raw.bodies, d.bodies),
        quarantine: errors.lifetime("retention.quarantine", &raw.quarantine, d.quarantine),
        session_metadata: errors.lifetime(
            "retention.session_metadata",
            &raw.session_metadata,
            d.session_metadata,
        ),
        conversations: errors.lifetime(
            "retention.conversations",
            &raw.conversations,
            d.conversations,
        ),
        sweep_interval,
    }
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

fn normalize_address(address: &str) -> Option<String> {
    let (local, domain) = split_address(address.trim())?;
    if local.contains(char::is_whitespace)
        || domain.contains(char::is_whitespace)
        || !domain.contains('.')
    {
        return None;
    }
    Some(format!(
        "{}@{}",
        local.to_lowercase(),
        domain.trim_end_matches('.').to_lowercase()
    ))
}

fn action(errors: &mut Errors, path: &str, value: &Option<String>, default: Action) -> Action {
    match value {
        None => default,
        Some(v) => Action::parse(v).unwrap_or_else(|| {
            errors.push(
                path,
                format!("invalid action {v:?} (accept, quarantine or reject)"),
            );
            default
        }),
    }
}

fn forwarders(errors: &mut Errors, path: &str, raw: &[String]) -> Vec<Forwarder> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, f)| {
            if let Some(net) = IpNet::parse(f) {
                Some(Forwarder::Net(net))
            } else if f.contains('.') && !f.contains(['/', ' ', '@']) {
                Some(Forwarder::Domain(f.trim_end_matches('.').to_lowercase()))
            } else {
                errors.push(
                    format!("{path}[{i}]"),
                    format!("{f:?} is neither an address range nor a domain"),
                );
                None
            }
        })
        .collect()
}

fn domains(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|d| d.trim_end_matches('.').to_lowercase())
        .collect()
}

fn compile_auth(raw: &RawAuth, errors: &mut Errors) -> AuthConfig {
    let trusted_networks = match &raw.trusted_networks {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let net = IpNet::parse(n);
                if net.is_none() {
                    errors.push(
                        format!("auth.trusted_networks[{i}]"),
                        format!("invalid address or CIDR {n:?}"),
                    );
                }
                net
            })
            .collect(),
    };
    AuthConfig {
        trusted_networks,
        max_inflight_bytes: errors.positive(
            "auth.max_inflight_bytes",
            raw.max_inflight_bytes,
            256 * 1024 * 1024,
        ),
        policy: AuthPolicy {
            enabled: raw.enabled.unwrap_or(true),
            trusted_arc_sealers: raw
                .trusted_arc_sealers
                .as_deref()
                .map(domains)
                .unwrap_or_else(|| DEFAULT_ARC_SEALERS.iter().map(|s| s.to_string()).collect()),
            trusted_forwarders: forwarders(
                errors,
                "auth.trusted_forwarders",
                &raw.trusted_forwarders,
            ),
            on_dmarc_reject: action(
                errors,
                "auth.on_dmarc_reject",
                &raw.on_dmarc_reject,
                Action::Reject,
            ),
            on_dmarc_quarantine: action(
                errors,
                "auth.on_dmarc_quarantine",
                &raw.on_dmarc_quarantine,
                Action::Quarantine,
            ),
            on_unauthenticated: action(
                errors,
                "auth.on_unauthenticated",
                &raw.on_unauthenticated,
                Action::Quarantine,
            ),
        },
    }
}

fn inbox_auth(
    global: &AuthPolicy,
    raw: Option<&RawInboxAuth>,
    path: &str,
    errors: &mut Errors,
) -> AuthPolicy {
    let Some(raw) = raw else {
        return global.clone();
    };
    let mut trusted_forwarders = global.trusted_forwarders.clone();
    trusted_forwarders.extend(forwarders(
        errors,
        &format!("{path}.auth.trusted_forwarders"),
        &raw.trusted_forwarders,
    ));
    AuthPolicy {
        enabled: raw.enabled.unwrap_or(global.enabled),
        trusted_arc_sealers: raw
            .trusted_arc_sealers
            .as_deref()
            .map(domains)
            .unwrap_or_else(|| global.trusted_arc_sealers.clone()),
        trusted_forwarders,
        on_dmarc_reject: action(
            errors,
            &format!("{path}.auth.on_dmarc_reject"),
            &raw.on_dmarc_reject,
            global.on_dmarc_reject,
        ),
        on_dmarc_quarantine: action(
            errors,
            &format!("{path}.auth.on_dmarc_quarantine"),
            &raw.on_dmarc_quarantine,
            global.on_dmarc_quarantine,
        ),
        on_unauthenticated: action(
            errors,
            &format!("{path}.auth.on_unauthenticated"),
            &raw.on_unauthenticated,
            global.on_unauthenticated,
        ),
    }
}

/// Inbox admins: user ids (who must have an email) or addresses.
fn compile_admins(
    raw: &[String],
    directory: &routes::Directory,
    path: &str,
    errors: &mut Errors,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let key = format!("{path}.admins[{i}]");
        if a.contains('@') {
            match normalize_address(a) {
                Some(n) => out.push(n),
                None => errors.push(key, format!("invalid address {a:?}")),
            }
        } else {
            match directory.users.get(a) {
                None => errors.push(key, format!("unknown user {a:?} (a user id or an address)")),
                Some(u) => match &u.email {
                    Some(e) => out.push(e.clone()),
                    None => errors.push(key, format!("user {a:?} has no email to notify")),
                },
            }
        }
    }
    out
}

fn compile_inboxes(
    raw: &[(String, RawInbox)],
    global_auth: &AuthPolicy,
    directory: &routes::Directory,
    errors: &mut Errors,
) -> Inboxes {
    let mut from_names: HashMap<String, String> = HashMap::new();
    let mut out = Inboxes::default();
    let mut ids: BTreeMap<&str, &str> = BTreeMap::new();
    let mut owners: HashMap<String, String> = HashMap::new();
    for (path, inbox) in raw {
        if inbox.id.is_empty()
            || !inbox
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(
                format!("{path}.id"),
                format!("invalid inbox id {:?} (letters, digits, - and _)", inbox.id),
            );
        } else if let Some(first) = ids.insert(&inbox.id, path) {
            errors.push(
                format!("{path}.id"),
                format!("duplicate inbox id {:?} (also {first})", inbox.id),
            );
        }
        let index = out.list.len();
        let mut addresses = Vec::new();
        let primary = inbox.address.clone().unwrap_or_default();
        let all = std::iter::once((format!("{path}.address"), &primary)).chain(
            inbox
                .aliases
                .iter()
                .enumerate()
                .map(|(j, a)| (format!("{path}.aliases[{j}]"), a)),
        );
        for (key, address) in all {
            match normalize_address(address) {
                None => errors.push(&key, format!("invalid address {address:?}")),
                Some(a) if a.split_once('@').is_some_and(|(l, _)| l.contains('+')) => {
                    errors.push(&key, format!("{a:?}: '+' is reserved for sub-addressing"))
                }
                Some(a) => {
                    if let Some(first) = owners.get(&a) {
                        errors.push(
                            &key,
                            format!("duplicate hosted address {a:?} (also {first})"),
                        );
                    } else {
                        owners.insert(a.clone(), key.clone());
                        out.by_address.insert(a.clone(), index);
                        out.domains.insert(
                            a.split_once('@')
                                .map(|(_, d)| d.to_string())
                                .unwrap_or_default(),
                        );
                        addresses.push(a);
                    }
                }
            }
        }
        let mut addresses = addresses.into_iter();
        out.list.push(InboxConfig {
            id: inbox.id.clone(),
            name: inbox.name.clone(),
            address: addresses.next().unwrap_or_default(),
            aliases: addresses.collect(),
            auth: inbox_auth(global_auth, inbox.auth.as_ref(), path, errors),
            from_name: inbox.from_name.clone(),
            connected_address: inbox
                .connected_address
                .as_ref()
                .map(|a| a.trim().to_lowercase()),
            tickets: routes::compile_tickets(inbox.tickets.as_ref()),
            rules: routes::compile_rules(&inbox.rule, directory, path, errors),
            admins: compile_admins(&inbox.admins, directory, path, errors),
            from_address: inbox.from_address.as_ref().and_then(|a| {
                let n = normalize_address(a);
                if n.is_none() {
                    errors.push(
                        format!("{path}.from_address"),
                        format!("invalid address {a:?}"),
                    );
                }
                n
            }),
        });
        if let Some(name) = &inbox.from_name {
            let key = name.trim().to_lowercase();
            if let Some(first) = from_names.get(&key) {
                errors.push(
                    format!("{path}.from_name"),
                    format!("duplicate from_name {name:?} (also {first}.from_name): recipients could not tell the inboxes apart"),
                );
            } else {
                from_names.insert(key, path.clone());
            }
        }
    }
    out
}

impl Config {
    /// The embedded default config (always valid: a unit test proves it).
    pub fn embedded_default() -> Config {
        parse(DEFAULT_TOML).expect("the embedded default config is valid (tested)")
    }

    /// A connected inbox's forwarding address is locked: the team's provider forwards to it, and
    /// changing it would silently break their setup. `connected` gives (inbox id, address) of
    /// every connected inbox in the store; an error for each one this config would break.
    pub fn check_locked_addresses<'a>(
        &self,
        connected: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<ConfigError> {
        let mut out = Vec::new();
        for (id, address) in connected {
            let index = self.inboxes.list.iter().position(|i| i.id == id);
            let keeps = index.is_some_and(|i| {
                let inbox = &self.inboxes.list[i];
                inbox.address == address || inbox.aliases.iter().any(|a| a == address)
            });
            if keeps {
                continue;
            }
            let path = match index {
                Some(i) => format!("inbox[{i}].address"),
                None => "inbox".to_string(),
            };
            let what = if index.is_some() {
                "changes the address of"
            } else {
                "removes"
            };
            out.push(ConfigError {
                path,
                message: format!(
                    "this config {what} inbox {id:?}, which is connected: the team's provider forwards to {address}. \
                     To migrate, keep {id:?} with {address} (as its address or an alias) and add a new inbox for the new address"
                ),
            });
        }
        out
    }

    /// `--data-dir`: data (and the default admin socket) move to `dir`.
    pub fn override_data_dir(&mut self, dir: PathBuf) {
        if !self.admin_socket_explicit {
            self.admin_socket = dir.join("admin.sock");
        }
        self.data_dir = dir;
    }

    /// `--listen`: replace the configured listeners by plain ones on these addresses.
    pub fn override_listeners(&mut self, addrs: &[SocketAddr]) {
        self.listeners = addrs
            .iter()
            .map(|&addr| ListenerConfig {
                addr,
                proxy_protocol: false,
                trusted_proxies: Vec::new(),
            })
            .collect();
    }

    /// `--api-listen`: serve the HTTP API on this address instead of `api.listen` (tests use
    /// port 0).
    pub fn override_api_listen(&mut self, addr: SocketAddr) {
        self.api.listen = addr;
    }

    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| LoadError::Read(path.to_path_buf(), e))?;
        parse(&text).map_err(LoadError::Invalid)
    }
}

/// Where a server's config came from, so that a reload reads it again the same way: the file
/// (`None`: the embedded default, or a config built in process) and the command-line overrides,
/// which a reload applies again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    /// `--listen`: replaces the configured listeners.
    pub listen: Vec<SocketAddr>,
    /// `--data-dir`: replaces `server.data_dir` (and the default admin socket).
    pub data_dir: Option<PathBuf>,
    /// `--api-listen`: replaces `api.listen`.
    pub api_listen: Option<SocketAddr>,
}

impl ConfigSource {
    /// Read and validate the file (or take the embedded default), then apply the overrides.
    pub fn load(&self) -> Result<Config, LoadError> {
        let mut cfg = match &self.path {
            Some(p) => Config::load(p)?,
            None => Config::embedded_default(),
        };
        self.apply_overrides(&mut cfg);
        Ok(cfg)
    }

    pub fn apply_overrides(&self, cfg: &mut Config) {
        if !self.listen.is_empty() {
            cfg.override_listeners(&self.listen);
        }
        if let Some(dir) = &self.data_dir {
            cfg.override_data_dir(dir.clone());
        }
        if let Some(addr) = self.api_listen {
            cfg.override_api_listen(addr);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}")]
    Invalid(ConfigErrors),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_production_example_is_valid_but_for_its_secret_files() {
        // config/inbound.toml names secret files under /etc/inbound, which a test machine has
        // not: those are the only errors it may have.
        let errs = parse(include_str!("../../config/inbound.toml")).unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["relay.password_file", "webhook[0].secret_file"],
            "{errs}"
        );
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(c.listeners[0].addr, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.limits.max_message_bytes, 31_457_280);
        assert!(matches!(
            c.inboxes.resolve("support@demo.inbound.test"),
            Recipient::Hosted { .. }
        ));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
            [server]
            hostname = "mx.example"
            colour = "blue"
            [limits]
            command_timeout = "five minutes"
            max_recipients = 0
            [[listener]]
            addr = "not an address"
            [[listener]]
            addr = "127.0.0.1:25"
            proxy_protocol = true
            [[inbox]]
            id = "a"
            address = "support@acme.example"
            [[inbox]]
            id = "a"
            address = "Support@ACME.example"
            [bogus]
        "#;
        let errs = parse(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "server",
            "bogus",
            "listener[0].addr",
            "listener[1].trusted_proxies",
            "inbox[1].id",
            "inbox[1].address",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:#?}");
        }
        assert!(
            errs.iter().any(|e| e.message.contains("colour")),
            "{errs:#?}"
        );
        // `[limits]` is valid TOML shape; its values are checked after deserialising.
        let errs2 = parse(
            "[limits]\ncommand_timeout = \"five minutes\"\nmax_recipients = 0\n[[listener]]\naddr=\"127.0.0.1:1\"",
        )
        .unwrap_err()
        .0;
        let paths: Vec<&str> = errs2.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["limits.max_recipients", "limits.command_timeout"]);
    }

    #[test]
    fn recipients_resolve_case_insensitively_with_tags() {
        let c = Config::embedded_default();
        let r = |a| c.inboxes.resolve(a);
        assert!(matches!(
            r("SUPPORT@Demo.Inbound.Test"),
            Recipient::Hosted { tag: None, .. }
        ));
        assert!(
            matches!(r("support+billing@demo.inbound.test"), Recipient::Hosted { tag: Some(t), .. } if t == "billing")
        );
        assert_eq!(r("sales@demo.inbound.test"), Recipient::UnknownMailbox);
        assert_eq!(r("support@example.com"), Recipient::ForeignDomain);
        assert_eq!(r("nobody"), Recipient::UnknownMailbox);
        assert!(matches!(r("postmaster"), Recipient::Hosted { .. }));
        assert!(matches!(
            r("PostMaster@demo.inbound.test"),
            Recipient::Hosted { .. }
        ));
        assert_eq!(r("postmaster@example.com"), Recipient::ForeignDomain);
    }

    #[test]
    fn routing_references_and_reachability_are_checked() {
        let text = r#"
            [[listener]]
            addr = "127.0.0.1:0"
            [[user]]
            id = "alice"
            [[team]]
            id = "t1"
            members = ["alice", "ghost"]
            [[contact]]
            domain = "bigcorp.example"
            owner = "nobody"
            [[inbox]]
            id = "a"
            address = "a@x.example"
            from_name = "ACME Support"
            [[inbox.rule]]
            name = "all"
            assign = { users = ["alice"] }
            [[inbox.rule]]
            name = "never"
            match.subject = ["x"]
            assign = { users = ["bob"], teams = ["t9"], strategy = "random" }
            [[inbox]]
            id = "b"
            address = "b@x.example"
            from_name = "acme support"
        "#;
        let errs = parse(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "team[0].members[1]",
            "contact[0].owner",
            "inbox[0].rule[1]",
            "inbox[0].rule[1].assign.users[0]",
            "inbox[0].rule[1].assign.teams[0]",
            "inbox[0].rule[1].assign.strategy",
            "inbox[1].from_name",
        ] {
            assert!(paths.contains(&want), "missing {want} in {errs:#?}");
        }
        assert!(
            errs.iter().any(|e| e.message.contains("unreachable")),
            "{errs:#?}"
        );
    }

    #[test]
    fn api_section_is_validated_with_key_paths() {
        let c = Config::embedded_default();
        assert!(c.api.enabled);
        assert_eq!(c.api.listen, DEFAULT_API_LISTEN.parse().unwrap());
        assert!(c.api.token_digests.is_empty(), "the demo has no token");

        let dir = std::env::temp_dir().join(format!("inbound-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  from-a-file-0123456789\n\n").unwrap();
        let base = "[[listener]]\naddr = \"127.0.0.1:0\"\n[[inbox]]\nid = \"a\"\naddress = \"a@x.example\"\n";
        let good = format!(
            "{base}[api]\nlisten = \"127.0.0.1:0\"\ntokens = [\"inline-token-0123456789\"]\ntoken_files = [\"{}\"]\n",
            file.display()
        );
        let c = parse(&good).unwrap();
        assert_eq!(c.api.listen.port(), 0);
        assert_eq!(
            c.api.token_digests,
            [
                token_digest(b"inline-token-0123456789"),
                token_digest(b"from-a-file-0123456789")
            ],
            "a token file is trimmed"
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("inline-token") && !shown.contains("from-a-file"),
            "Debug must not show tokens: {shown}"
        );

        let bad = format!(
            "{base}[api]\nlisten = \"localhost\"\ntokens = [\"short\", \"has space in it 0123456789\"]\ntoken_files = [\"{}\"]\n",
            dir.join("missing").display()
        );
        let errs = parse(&bad).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "api.listen",
                "api.tokens[0]",
                "api.tokens[1]",
                "api.token_files[0]"
            ],
            "{errs:#?}"
        );
        let errs = parse(&format!("{base}[api]\nport = 8025\n")).unwrap_err().0;
        assert!(
            errs[0].path == "api" && errs[0].message.contains("port"),
            "{errs:#?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_lifetimes_take_keep_or_a_duration() {
        let base = "[[listener]]\naddr = \"127.0.0.1:1\"\n";
        let d = parse(base).unwrap().retention;
        assert_eq!(d, RetentionConfig::default());
        assert_eq!(d.bodies, None, "bodies are kept by default");
        assert_eq!(d.quarantine, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(d.session_metadata, Some(Duration::from_secs(60 * 86_400)));
        let r = parse(&format!(
            "{base}[retention]\nbodies = \"30d\"\nquarantine = \"keep\"\n\
             session_metadata = \"12h\"\nconversations = \"365d\"\nsweep_interval = \"5m\"\n"
        ))
        .unwrap()
        .retention;
        assert_eq!(r.bodies, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(r.quarantine, None);
        assert_eq!(r.session_metadata, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(r.conversations, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(r.sweep_interval, Duration::from_secs(300));

        let errs = parse(&format!(
            "{base}[retention]\nbodies = \"forever\"\nquarantine = \"0d\"\n\
             sweep_interval = \"0s\"\nsession_metadata = \"60\"\n"
        ))
        .unwrap_err()
        .0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "retention.sweep_interval",
                "retention.bodies",
                "retention.quarantine"
            ],
            "{errs:#?}"
        );
        assert!(errs[1].message.contains("keep"), "{errs:#?}");
        let errs = parse(&format!("{base}[retention]\nmessages = \"1d\"\n"))
            .unwrap_err()
            .0;
        assert_eq!(errs[0].path, "retention", "{errs:#?}");
        assert!(errs[0].message.contains("messages"), "{errs:#?}");
    }

    #[test]
    fn cidr_matching() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.9.9".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("1.2.3.4/33").is_none());
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("x"), None);
    }
}
