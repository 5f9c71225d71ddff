//! The serde mirror of the TOML file: names and shapes only, no meaning. Every table denies unknown
//! fields so a misspelt key is an error with its path, not a silently ignored setting.
//! Validation (ranges, cross-references, parsing of addresses and durations) lives in `config::mod`.

use serde::Deserialize;

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
    pub max_recipients: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub connections_per_ip_per_minute: Option<u64>,
    pub messages_per_ip_per_minute: Option<u64>,
    pub max_bad_commands: Option<u64>,
    pub command_timeout: Option<String>,
    pub data_timeout: Option<String>,
    pub max_transactions_per_connection: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Bodies up to this size are stored inside the database record; larger ones in spool files.
    pub inline_body_max_bytes: Option<u64>,
    /// Most messages one group commit makes durable together.
    pub max_commit_batch: Option<u64>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawInbox {
    pub id: String,
    pub address: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub name: Option<String>,
    /// Per-inbox overrides of the global `[auth]` policy.
    pub auth: Option<RawInboxAuth>,
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

#[derive(Debug, Default, Deserialize, Clone)]
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
