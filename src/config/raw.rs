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
}
