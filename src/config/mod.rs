//! TOML text -> validated `Config`, in three steps: raw (`raw.rs`, the serde mirror of the file)
//! -> validated (one module per part of the file, every error collected with its key path, every
//! value range-checked) -> compiled lookup tables (`Inboxes`, `routes`) that the hot path reads.
//!
//! - `raw`: the file's shape; `errors`: key-path errors and the checks that make them;
//!   `values`: durations, CIDR ranges, addresses, domains;
//! - `server`: `[server]`, `[[listener]]`, `[tls]`, `[store]`, `[dns]`, `[api]`, `[retention]`;
//! - `limits`: `[limits]`; `auth`: `[auth]` and `[inbox.auth]`; `inboxes`: `[[inbox]]`;
//! - `routes`: users, teams, contacts and rules; `outbound`: relay, outbox, notify, webhooks.

pub mod auth;
pub mod errors;
pub mod inboxes;
pub mod limits;
pub mod outbound;
pub mod people;
pub mod raw;
pub mod routes;
pub mod server;
pub mod store;
pub mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use auth::{Action, AuthConfig, AuthPolicy, Forwarder, DEFAULT_ARC_SEALERS};
pub(crate) use errors::Errors;
pub use errors::{ConfigError, ConfigErrors};
pub use inboxes::{InboxConfig, Inboxes, Recipient};
pub use limits::{LimitsConfig, DEFAULT_MAX_MESSAGE_BYTES};
pub use server::{
    token_digest, ApiConfig, DnsConfig, ListenerConfig, RetentionConfig, TlsConfig,
    DEFAULT_API_LISTEN,
};
pub use store::{PostgresConfig, StoreBackend, StoreConfig};
pub use values::{canonical_ip, parse_duration, split_address, IpNet};

/// The embedded default configuration (`inbound serve` with no flags).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

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
    /// The file's `[[inbox]]` tables as read (addresses generated), with their key paths: what
    /// `with_api_inboxes` compiles again together with the inboxes created through the API.
    pub file_inboxes: Vec<(String, raw::RawInbox)>,
    /// The active inboxes created through the API that `with_api_inboxes` compiled in (empty
    /// for a config as read from the file). Shared, like the compiled inboxes, with the
    /// configs before and after a change.
    pub api_inboxes: Vec<std::sync::Arc<raw::RawInbox>>,
    /// The file's `[[user]]`, `[[team]]` and `[[contact]]` tables with their key paths: what
    /// `with_api_definitions` compiles again together with the users and teams of the API.
    pub file_people: people::FilePeople,
    /// The users and teams created through the API compiled into `directory` (empty for a
    /// config as read from the file).
    pub api_people: people::ApiPeople,
    /// `server.hosted_domain`: API-created inboxes may use it and its subdomains.
    pub hosted_domain: Option<String>,
    /// `server.address_pattern` (or its default): how an inbox's address is made from its
    /// tenant and local part.
    pub address_pattern: String,
}

/// Parse and validate a whole config text. Relative paths are relative to the working directory
/// (not the config file's), as operators expect from `data_dir = "./data"`. `api.token_files`
/// are read here, so `check-config` reports a missing or malformed token file like any other
/// error.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::default();
    let mut raw = raw::read(text, &mut errors)?;
    let server_section = server::compile_server(&raw.server, &mut errors);
    let listeners = server::compile_listeners(&raw.listeners, raw.listener_errors, &mut errors);
    let tls = server::compile_tls(&raw.tls, &mut errors);
    let limits = limits::compile_limits(&raw.limits, &mut errors);
    let store = store::compile_store(&raw.store, limits.max_message_bytes, &mut errors);
    let dns = server::compile_dns(&raw.dns, &mut errors);
    let auth = auth::compile_auth(&raw.auth, &mut errors);
    let api = server::compile_api(&raw.api, &mut errors);
    let directory = routes::compile_directory(&raw.users, &raw.teams, &raw.contacts, &mut errors);
    inboxes::generate_addresses(&mut raw.inboxes, &raw.server, &mut errors);
    let hosted_domain = raw
        .server
        .hosted_domain
        .as_deref()
        .map(values::normalize_domain);
    let address_pattern = inboxes::address_pattern(&raw.server);
    let inboxes = inboxes::compile_inboxes(&raw.inboxes, &auth.policy, &directory, &mut errors);
    let inbox_ids: Vec<&str> = inboxes.list.iter().map(|i| i.id.as_str()).collect();
    let outbound = outbound::compile(
        raw.relay.as_ref(),
        &raw.outbox,
        &raw.notify,
        &raw.webhooks,
        &inbox_ids,
        &mut errors,
    );
    store::check_outbox_lease(&store, &outbound, &mut errors);
    let retention = server::compile_retention(&raw.retention, &mut errors);

    if !errors.0.is_empty() {
        return Err(ConfigErrors(errors.0));
    }
    let server::ServerSection {
        hostname,
        data_dir,
        shutdown_timeout,
        admin_socket,
        admin_socket_explicit,
    } = server_section;
    Ok(Config {
        hostname,
        data_dir,
        shutdown_timeout,
        admin_socket_explicit,
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
        file_inboxes: raw.inboxes,
        api_inboxes: Vec::new(),
        file_people: people::FilePeople {
            users: raw.users,
            teams: raw.teams,
            contacts: raw.contacts,
        },
        api_people: people::ApiPeople::default(),
        hosted_domain,
        address_pattern,
    })
}

impl Config {
    /// The specs of the API inboxes compiled in, as `with_api_inboxes` takes them.
    pub fn api_inbox_specs(&self) -> Vec<raw::RawInbox> {
        self.api_inboxes.iter().map(|i| (**i).clone()).collect()
    }

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
                    "this config {what} {}",
                    locked_reason(id, address, "connected")
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

/// Why an inbox's forwarding address cannot change (the config lock, and the API's after
/// "connect & finish"): `state` says what locked it ("connected", "finished").
pub fn locked_reason(id: &str, address: &str, state: &str) -> String {
    format!(
        "inbox {id:?}, which is {state}: the team's provider forwards to {address}. \
         To migrate, keep {id:?} with {address} (as its address or an alias) and add a new inbox for the new address"
    )
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
            "server.colour",
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
}
