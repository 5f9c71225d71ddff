//! `[server]`, `[[listener]]`, `[tls]`, `[dns]`, `[api]` and `[retention]`: raw -> validated,
//! every error with its key path. What the server binds, whom it asks for DNS, and how long it
//! keeps what it stored (`[store]` is in `store.rs`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::errors::Errors;
use super::raw::{RawApi, RawDns, RawListener, RawRetention, RawServer, RawTls};
use super::values::IpNet;

/// `[server]`, validated.
pub(super) struct ServerSection {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub shutdown_timeout: Duration,
    pub admin_socket: PathBuf,
    pub admin_socket_explicit: bool,
}

pub(super) fn compile_server(server: &RawServer, errors: &mut Errors) -> ServerSection {
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
    ServerSection {
        hostname,
        data_dir,
        shutdown_timeout,
        admin_socket,
        admin_socket_explicit: server.admin_socket.is_some(),
    }
}

/// Whether two listeners would fight over one port: same port and family, and the same address
/// or a wildcard on either side. IPv4 and IPv6 never overlap: IPv6 listeners are IPv6-only.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `[[listener]]` items; at least one is required (unless one was given but malformed, which
/// is already an error of its own).
pub(super) fn compile_listeners(
    raw: &[(String, RawListener)],
    malformed: bool,
    errors: &mut Errors,
) -> Vec<ListenerConfig> {
    if raw.is_empty() && !malformed {
        errors.push("listener", "at least one [[listener]] is required");
    }
    // Listeners bind with IPV6_V6ONLY (server::listener::bind), so `0.0.0.0:25` and `[::]:25`
    // coexist; within one family a wildcard and any address on the same port collide at bind.
    let mut seen_addrs: Vec<(&str, SocketAddr)> = Vec::new();
    raw.iter()
        .filter_map(|(path, l)| {
            let addr = match l.addr.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    errors.push(
                        format!("{path}.addr"),
                        format!("invalid socket address {:?}", l.addr),
                    );
                    return None;
                }
            };
            if addr.port() != 0 {
                if seen_addrs.iter().any(|(_, a)| *a == addr) {
                    errors.push(format!("{path}.addr"), format!("{addr} is listed twice"));
                } else if let Some((other, a)) = seen_addrs.iter().find(|(_, a)| overlaps(*a, addr)) {
                    errors.push(
                        format!("{path}.addr"),
                        format!("{addr} overlaps {other}.addr ({a}): both bind port {} in one address family", addr.port()),
                    );
                }
                seen_addrs.push((path, addr));
            }
            let mut trusted = Vec::new();
            for (j, t) in l.trusted_proxies.iter().enumerate() {
                match IpNet::parse(t) {
                    Some(n) => trusted.push(n),
                    None => errors.push(
                        format!("{path}.trusted_proxies[{j}]"),
                        format!("invalid address or CIDR {t:?}"),
                    ),
                }
            }
            if l.proxy_protocol && l.trusted_proxies.is_empty() {
                errors.push(
                    format!("{path}.trusted_proxies"),
                    "proxy_protocol needs at least one trusted proxy address (anyone could forge client addresses)",
                );
            }
            Some(ListenerConfig {
                addr,
                proxy_protocol: l.proxy_protocol,
                trusted_proxies: trusted,
            })
        })
        .collect()
}

pub(super) fn compile_tls(tls: &RawTls, errors: &mut Errors) -> TlsConfig {
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
    TlsConfig {
        enabled: tls.enabled.unwrap_or(true),
        cert_and_key,
    }
}

pub(super) fn compile_dns(dns: &RawDns, errors: &mut Errors) -> DnsConfig {
    DnsConfig {
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
    }
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
    /// HTTP connections open at once. When all are taken a new connection is closed at once
    /// (its file descriptor is what must not run out), until one ends.
    pub max_connections: usize,
    /// How long a request's header may take to arrive, counted from the moment the connection
    /// waits for one (so an idle keep-alive connection is closed after it too).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed: a body trickled
    /// in, or an answer the client never reads.
    pub idle_timeout: Duration,
    /// The MTA-STS (RFC 8461) policy mode the API serves at `/.well-known/mta-sts.txt` for the
    /// hosted domains, with `server.hostname` as the MX; `None`: not served (404).
    pub mta_sts: Option<&'static str>,
    /// Where `GET /metrics` is also served without a token (`api.metrics_listen`); read at start.
    pub metrics_listen: Option<SocketAddr>,
}

/// Default `api.max_connections`: operators' tools and a scraper, with room to spare.
pub const DEFAULT_API_MAX_CONNECTIONS: u64 = 256;

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("tokens", &self.token_digests.len())
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("mta_sts", &self.mta_sts)
            .field("metrics_listen", &self.metrics_listen)
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

pub(super) fn compile_api(raw: &RawApi, errors: &mut Errors) -> ApiConfig {
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
        match super::values::read_secret_file(path) {
            Err(e) => errors.push(key, e),
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
    let max_connections = errors.range(
        "api.max_connections",
        raw.max_connections,
        1,
        100_000,
        DEFAULT_API_MAX_CONNECTIONS,
    ) as usize;
    let header_read_timeout = errors.positive_duration(
        "api.header_read_timeout",
        &raw.header_read_timeout,
        Duration::from_secs(10),
    );
    let idle_timeout = errors.positive_duration(
        "api.idle_timeout",
        &raw.idle_timeout,
        Duration::from_secs(60),
    );
    let mta_sts = match raw.mta_sts.as_deref() {
        None => None,
        Some("testing") => Some("testing"),
        Some("enforce") => Some("enforce"),
        Some("none") => Some("none"),
        Some(other) => {
            errors.push(
                "api.mta_sts",
                format!("{other:?} is not an MTA-STS mode (\"testing\", \"enforce\" or \"none\")"),
            );
            None
        }
    };
    let metrics_listen = raw.metrics_listen.as_ref().and_then(|s| {
        let parsed = s.parse::<SocketAddr>();
        if parsed.is_err() {
            errors.push(
                "api.metrics_listen",
                format!("invalid socket address {s:?} (use \"IP:PORT\", e.g. \"127.0.0.1:9125\")"),
            );
        }
        parsed.ok()
    });
    ApiConfig {
        enabled: raw.enabled.unwrap_or(true),
        listen,
        token_digests,
        max_connections,
        header_read_timeout,
        idle_timeout,
        mta_sts,
        metrics_listen,
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

pub(super) fn compile_retention(raw: &RawRetention, errors: &mut Errors) -> RetentionConfig {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Config};

    #[test]
    fn listeners_overlapping_within_a_family_are_refused_ipv4_and_ipv6_wildcards_are_not() {
        let inbox = "[[inbox]]\nid = \"a\"\naddress = \"a@x.example\"\n";
        let listeners = |addrs: &[&str]| {
            let mut t = String::new();
            for a in addrs {
                t.push_str(&format!("[[listener]]\naddr = \"{a}\"\n"));
            }
            format!("{t}{inbox}")
        };
        assert!(parse(&listeners(&["0.0.0.0:25", "[::]:25"])).is_ok());
        assert!(parse(&listeners(&["127.0.0.1:25", "127.0.0.1:587"])).is_ok());
        let e = parse(&listeners(&["0.0.0.0:25", "192.0.2.1:25"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listener[1].addr") && e.contains("overlaps listener[0].addr"),
            "{e}"
        );
        let e = parse(&listeners(&["[::1]:25", "[::]:25"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlaps"), "{e}");
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
            errs[0].path == "api.port" && errs[0].message.contains("port"),
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
        assert_eq!(errs[0].path, "retention.messages", "{errs:#?}");
        assert!(errs[0].message.contains("messages"), "{errs:#?}");
    }
}
