//! TOML text -> `RawConfig`: the serde mirror of the file, names and shapes only, no meaning.
//! Every table denies unknown fields so a misspelt key is an error with its path, not a silently
//! ignored setting. Validation (ranges, cross-references, parsing of addresses and durations)
//! happens in the section modules (`server`, `limits`, `auth`, `inboxes`, `routes`, `outbound`).

use serde::{Deserialize, Serialize};

use super::errors::{ConfigError, ConfigErrors, Errors};
use super::outbound::{RawNotify, RawOutbox, RawRelay, RawWebhook};

/// The whole file, table by table. Arrays of tables keep each item's key path (`inbox[2]`) so
/// later errors can name it even when an earlier item failed to deserialize.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub server: RawServer,
    pub listeners: Vec<(String, RawListener)>,
    pub tls: RawTls,
    pub limits: RawLimits,
    pub store: RawStore,
    pub dns: RawDns,
    pub auth: RawAuth,
    pub api: RawApi,
    pub retention: RawRetention,
    pub inboxes: Vec<(String, RawInbox)>,
    pub users: Vec<(String, RawUser)>,
    pub teams: Vec<(String, RawTeam)>,
    pub contacts: Vec<(String, RawContact)>,
    pub relay: Option<RawRelay>,
    pub outbox: RawOutbox,
    pub notify: RawNotify,
    pub webhooks: Vec<(String, RawWebhook)>,
    /// Whether some `[[listener]]` item was present but malformed (so "at least one listener
    /// is required" would be a second, misleading error).
    pub listener_errors: bool,
}

/// Read the TOML text into its raw shape. A syntax error ends reading at once (nothing after
/// it can be trusted); a table of the wrong shape is recorded in `errors` under its path and
/// left at its default, so the other tables are still checked.
pub(crate) fn read(text: &str, errors: &mut Errors) -> Result<RawConfig, ConfigErrors> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("TOML syntax: {}", e.to_string().trim()),
        }])
    })?;
    let mut raw = RawConfig::default();
    for (key, value) in doc {
        match key.as_str() {
            "server" => raw.server = errors.section("server", value).unwrap_or_default(),
            "tls" => raw.tls = errors.section("tls", value).unwrap_or_default(),
            "limits" => raw.limits = errors.section("limits", value).unwrap_or_default(),
            "store" => raw.store = errors.section("store", value).unwrap_or_default(),
            "dns" => raw.dns = errors.section("dns", value).unwrap_or_default(),
            "auth" => raw.auth = errors.section("auth", value).unwrap_or_default(),
            "api" => raw.api = errors.section("api", value).unwrap_or_default(),
            "relay" => raw.relay = errors.section("relay", value),
            "outbox" => raw.outbox = errors.section("outbox", value).unwrap_or_default(),
            "notify" => raw.notify = errors.section("notify", value).unwrap_or_default(),
            "retention" => raw.retention = errors.section("retention", value).unwrap_or_default(),
            "listener" | "inbox" | "user" | "team" | "contact" | "webhook" => {
                let toml::Value::Array(items) = value else {
                    errors.push(&key, format!("must be an array of tables ([[{key}]])"));
                    raw.listener_errors |= key == "listener";
                    continue;
                };
                for (i, item) in items.into_iter().enumerate() {
                    let path = format!("{key}[{i}]");
                    match key.as_str() {
                        "listener" => match errors.section(&path, item) {
                            Some(v) => raw.listeners.push((path, v)),
                            None => raw.listener_errors = true,
                        },
                        "inbox" => raw
                            .inboxes
                            .extend(errors.section(&path, item).map(|v| (path, v))),
                        "user" => raw
                            .users
                            .extend(errors.section(&path, item).map(|v| (path, v))),
                        "team" => raw
                            .teams
                            .extend(errors.section(&path, item).map(|v| (path, v))),
                        "webhook" => raw
                            .webhooks
                            .extend(errors.section(&path, item).map(|v| (path, v))),
                        _ => raw
                            .contacts
                            .extend(errors.section(&path, item).map(|v| (path, v))),
                    }
                }
            }
            other => errors.push(other, "unknown section"),
        }
    }
    Ok(raw)
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Our name in the greeting, in `Received:` and as the authserv-id.
    pub hostname: Option<String>,
    pub data_dir: Option<String>,
    /// How long shutdown waits for in-flight transactions, e.g. "30s".
    pub shutdown_timeout: Option<String>,
    /// Unix socket the CLI uses to reach a running server; default `<data_dir>/admin.sock`.
    pub admin_socket: Option<String>,
    /// Domain under which inbox addresses are generated, e.g. "inbound.example".
    pub hosted_domain: Option<String>,
    /// How an inbox address is generated when `address` is not given; default
    /// "{local}@{tenant}.{hosted_domain}".
    pub address_pattern: Option<String>,
}

/// `[api]`: the HTTP API.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// Serve the API at all (default true).
    pub enabled: Option<bool>,
    /// Address to listen on; default "127.0.0.1:8025".
    pub listen: Option<String>,
    /// Bearer tokens, each accepted on its own.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Files holding one token each (surrounding whitespace trimmed), so secrets can stay out of
    /// the config file.
    #[serde(default)]
    pub token_files: Vec<String>,
    /// HTTP connections open at once; past it new ones are closed at once.
    pub max_connections: Option<u64>,
    /// Time for a request header to arrive, e.g. "10s".
    pub header_read_timeout: Option<String>,
    /// A connection with no traffic either way for this long is closed, e.g. "60s".
    pub idle_timeout: Option<String>,
    /// MTA-STS policy mode served at /.well-known/mta-sts.txt: "testing", "enforce" or "none";
    /// unset: not served.
    pub mta_sts: Option<String>,
    /// A second listener serving only GET /metrics, without a token (for a Prometheus on a
    /// private network); unset: metrics only on the API, with a token.
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub addr: String,
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Addresses or CIDR ranges allowed to send a PROXY header.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Offer STARTTLS at all (default true).
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_message_bytes: Option<u64>,
    pub max_header_bytes: Option<u64>,
    pub max_recipients: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub connections_per_ip_per_minute: Option<u64>,
    pub messages_per_ip_per_minute: Option<u64>,
    pub ipv6_prefix_length: Option<u64>,
    pub max_bad_commands: Option<u64>,
    pub command_timeout: Option<String>,
    pub data_timeout: Option<String>,
    pub min_data_rate_bytes_per_second: Option<u64>,
    pub write_timeout: Option<String>,
    pub max_transactions_per_connection: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Bodies up to this size are stored inside the database record; larger ones in spool files.
    pub inline_body_max_bytes: Option<u64>,
    /// Most messages one group commit makes durable together.
    pub max_commit_batch: Option<u64>,
    /// The database's page cache in bytes.
    pub cache_bytes: Option<u64>,
    /// Below this much free space on the data directory's filesystem, new mail is refused with
    /// `452 4.3.1` before the disk is actually full. 0 turns the check off.
    pub min_free_bytes: Option<u64>,
    /// "sled" (embedded, the default) or "postgres" (shared by several nodes).
    pub backend: Option<String>,
    /// PostgreSQL connection URL (`postgres://user:password@host:port/db`).
    pub url: Option<String>,
    /// A file holding the URL (for credentials kept out of the config).
    pub url_file: Option<String>,
    /// Connections for reads and operator actions.
    pub pool_size: Option<u64>,
    /// Connections committing messages in parallel (each takes a batch at a time).
    pub committers: Option<u64>,
    /// How long to wait for a connection to the database.
    pub connect_timeout: Option<String>,
    /// How long a node's claim on outbox items keeps the other nodes off them, e.g. "2m".
    pub outbox_lease: Option<String>,
    /// How long a session waits for its message's commit before answering `451`, e.g. "60s".
    pub commit_timeout: Option<String>,
}

/// How long stored data is kept: each value is "keep" or a duration ("7d", "12h").
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Message bodies (attachments are part of them); the record stays.
    pub bodies: Option<String>,
    /// Quarantined messages, deleted entirely.
    pub quarantine: Option<String>,
    /// The SMTP session facts on each message record.
    pub session_metadata: Option<String>,
    /// Closed conversations, by last update, deleted with their messages.
    pub conversations: Option<String>,
    /// How often the sweeper runs.
    pub sweep_interval: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawInbox {
    pub id: String,
    /// The forwarding address. Absent: generated from `server.address_pattern`.
    pub address: Option<String>,
    /// Tenant label for generated addresses (`support@<tenant>.<hosted_domain>`).
    pub tenant: Option<String>,
    /// Local part for generated addresses (default: the inbox id).
    pub local: Option<String>,
    /// The team's own mailbox (or `@domain`) that forwards here: its first forwarded message
    /// marks the inbox connected.
    pub connected_address: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub name: Option<String>,
    /// Per-inbox overrides of the global `[auth]` policy.
    pub auth: Option<RawInboxAuth>,
    /// Display name of outbound mail from this inbox ("ACME Support").
    pub from_name: Option<String>,
    /// The team's own address for outbound mail about this inbox; used once verified with
    /// `inbound inboxes verify-from`.
    pub from_address: Option<String>,
    /// User ids or addresses told by email when a provider confirmation arrives.
    #[serde(default)]
    pub admins: Vec<String>,
    pub tickets: Option<RawTickets>,
    /// Routing rules, in order; the first that matches decides.
    #[serde(default)]
    pub rule: Vec<RawRule>,
    /// How the From name of outbound mail is made: "agent_and_company" ("Jane at ACME
    /// Support") or "company" ("ACME Support"); default "company".
    pub from_name_mode: Option<String>,
    /// The team signature appended to outbound mail; `{first_name}` and `{full_name}` stand for
    /// the agent who writes.
    pub signature: Option<String>,
    /// Assign every conversation no rule assigned, among these users and teams.
    pub auto_assign: Option<RawAutoAssign>,
}

/// `[inbox.auto_assign]`: the inbox's default assignment, after its rules.
#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAutoAssign {
    /// Off keeps the members for later (default on).
    pub enabled: Option<bool>,
    /// "round_robin" (default) or "least_open".
    pub strategy: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// Unavailable users (away, offline) are skipped by round robin and owner assignment.
    pub available: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    pub id: String,
    pub name: Option<String>,
    #[serde(default)]
    pub members: Vec<String>,
}

/// A contact owner: by exact address or by domain.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawContact {
    pub address: Option<String>,
    pub domain: Option<String>,
    pub owner: String,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTickets {
    pub enabled: Option<bool>,
    pub pipeline: Option<String>,
    pub stage: Option<String>,
    pub priority: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    /// Conditions: all given ones must hold; within a list, any value may match.
    #[serde(default, rename = "match")]
    pub when: RawMatch,
    pub assign: Option<RawAssign>,
    pub ticket: Option<RawTickets>,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Original sender addresses.
    #[serde(default)]
    pub from: Vec<String>,
    /// Original sender domains (a domain matches its subdomains).
    #[serde(default)]
    pub from_domain: Vec<String>,
    /// Case-insensitive substrings of the subject.
    #[serde(default)]
    pub subject: Vec<String>,
    /// Recipient addresses as sent (`support+billing@...` or `help@...`).
    #[serde(default)]
    pub recipient: Vec<String>,
    /// Sub-address tags (`billing` for `support+billing@...`).
    #[serde(default)]
    pub tag: Vec<String>,
    #[serde(default)]
    pub header: Vec<RawHeaderMatch>,
    pub has_attachment: Option<bool>,
    /// Case-insensitive substrings of an attachment file name (".pdf", "invoice").
    #[serde(default)]
    pub attachment_name: Vec<String>,
    /// Authentication verdict: "accept" (passed or forgiven), "quarantine".
    pub auth: Option<String>,
    /// DMARC result: "pass", "fail", "none".
    pub dmarc: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    /// Case-insensitive substring of the value; absent: the header merely has to exist.
    pub contains: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAssign {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    /// "round_robin" (default) or "least_open".
    pub strategy: Option<String>,
    /// Assign to the contact's owner (from `[[contact]]`) when there is one and they are available.
    #[serde(default)]
    pub owner: bool,
    /// Used when the owner is unknown or unavailable (and `owner = true`).
    #[serde(default)]
    pub fallback_users: Vec<String>,
    #[serde(default)]
    pub fallback_teams: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// `["127.0.0.1:5353"]`; empty or absent: the system resolver (/etc/resolv.conf).
    #[serde(default)]
    pub nameservers: Vec<String>,
    pub timeout: Option<String>,
    pub attempts: Option<u64>,
    pub cache_entries: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub enabled: Option<bool>,
    /// Clients in these networks are not checked (local relays, content filters).
    pub trusted_networks: Option<Vec<String>>,
    /// ARC sealers whose recorded results we believe (domain or parent domain of the seal's d=).
    pub trusted_arc_sealers: Option<Vec<String>>,
    /// Hosts (CIDR) or domains (SPF-authorised envelope or HELO domain) trusted to forward.
    #[serde(default)]
    pub trusted_forwarders: Vec<String>,
    pub on_dmarc_reject: Option<String>,
    pub on_dmarc_quarantine: Option<String>,
    pub on_unauthenticated: Option<String>,
    /// Bytes of message bodies held in memory for checks at once, e.g. 268435456.
    pub max_inflight_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawInboxAuth {
    pub enabled: Option<bool>,
    #[serde(default)]
    pub trusted_forwarders: Vec<String>,
    pub trusted_arc_sealers: Option<Vec<String>>,
    pub on_dmarc_reject: Option<String>,
    pub on_dmarc_quarantine: Option<String>,
    pub on_unauthenticated: Option<String>,
}
