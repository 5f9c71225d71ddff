//! A server config for a test or a bench run -> TOML text, as `inbound serve --config` reads it.
//!
//! Built table by table from a base, so that a test writes only what it changes
//! (`ConfigBuilder::test(dir).set("limits", "max_connections = 2")`) and no two files repeat the
//! server's TOML. `set` replaces a key a base already has, so no test edits config text with
//! `str::replace`. What has no method (arrays of tables such as `[[webhook]]` and `[[user]]`) goes
//! in as raw TOML with `extra`; a test that needs text the builder cannot make (a config error)
//! writes that text itself.
//!
//! The text comes out in this order, which `[[inbox.rule]]` tables in `extra` may rely on:
//! `[server]`, `[[listener]]`s, the other tables, `[[inbox]]`es, then `extra`.

use std::net::SocketAddr;
use std::path::Path;

/// The bearer token `ConfigBuilder::test` configures for the API.
pub const API_TOKEN: &str = "test-token-0123456789abcdef";

#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    /// Tables by name, in the order they were first set (`server` first), each with its
    /// `key = value` lines.
    tables: Vec<(String, Vec<String>)>,
    /// The bodies of the `[[listener]]` tables.
    listeners: Vec<String>,
    /// Whole `[[inbox]]` tables (with their `[[inbox.rule]]`s).
    inboxes: Vec<String>,
    /// Raw TOML appended after everything else.
    extra: Vec<String>,
}

impl ConfigBuilder {
    /// The least a server starts with: `[server]` with this data directory, no listener, no
    /// inbox.
    pub fn new(data_dir: &Path) -> ConfigBuilder {
        ConfigBuilder {
            tables: Vec::new(),
            listeners: Vec::new(),
            inboxes: Vec::new(),
            extra: Vec::new(),
        }
        .set("server", "hostname = \"mx.test.example\"")
        .set("server", &format!("data_dir = \"{}\"", data_dir.display()))
        .set("server", "shutdown_timeout = \"5s\"")
    }

    /// The base of the in-process tests: one listener on an ephemeral loopback port, sender
    /// authentication skipped for loopback clients (auth tests present other addresses through
    /// PROXY or `unset` it), the API on an ephemeral port with `API_TOKEN`, and two inboxes: `demo`
    /// (support@demo.inbound.test, alias help@) and `sales` (sales@acme.inbound.test).
    pub fn test(data_dir: &Path) -> ConfigBuilder {
        ConfigBuilder::new(data_dir)
            .listener("127.0.0.1:0")
            .set("auth", "trusted_networks = [\"127.0.0.0/8\", \"::1\"]")
            .set("api", "listen = \"127.0.0.1:0\"")
            .set("api", &format!("tokens = [\"{API_TOKEN}\"]"))
            .inbox_toml(
                "[[inbox]]\nid = \"demo\"\naddress = \"support@demo.inbound.test\"\n\
                 aliases = [\"help@demo.inbound.test\"]",
            )
            .inbox("sales", "sales@acme.inbound.test")
    }

    /// The base of the sender-authentication tests: every client is checked (no trusted
    /// networks) and the only listener takes PROXY headers from loopback, so a test connects as
    /// any address it likes; the resolver asks only `dns`; one inbox, `demo`.
    pub fn checked(data_dir: &Path, dns: SocketAddr) -> ConfigBuilder {
        ConfigBuilder::new(data_dir)
            .set("server", "hostname = \"mx.inbound.test\"")
            .listener_toml(
                "addr = \"127.0.0.1:0\"\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
            )
            .resolver(dns)
            .inbox("demo", "support@demo.inbound.test")
    }

    /// The base of a child `inbound serve` (tests/it/process): the test base on `listener`
    /// (tests override it with `--listen`), rates raised for tests that send many messages, the
    /// resolver pointed at a closed loopback port so nothing leaves the machine, and an API
    /// without tokens.
    pub fn child_process(data_dir: &Path, listener: &str) -> ConfigBuilder {
        ConfigBuilder::test(data_dir)
            .set("server", "hostname = \"mx.proc.test\"")
            .listener(listener)
            .unset("api", "tokens")
            .set("limits", "messages_per_ip_per_minute = 1000000")
            .set("limits", "connections_per_ip_per_minute = 100000")
            .set("limits", "max_connections_per_ip = 200")
            .set("dns", "nameservers = [\"127.0.0.1:9\"]")
            .set("dns", "timeout = \"200ms\"")
            .set("dns", "attempts = 1")
    }

    /// Outbox retries and polls in milliseconds, so that a test of a retry takes moments.
    pub fn fast_outbox(self) -> ConfigBuilder {
        self.set("outbox", "retry_initial = \"100ms\"")
            .set("outbox", "retry_max = \"300ms\"")
            .set("outbox", "poll_interval = \"50ms\"")
    }

    /// Set `line` (`key = value`) in `[table]`: it replaces the table's line with the same key,
    /// or is added at the table's end (the table after the others when it is new).
    pub fn set(mut self, table: &str, line: &str) -> ConfigBuilder {
        let key = key_of(line).to_string();
        let lines = self.table_mut(table);
        match lines.iter_mut().find(|l| key_of(l) == key) {
            Some(l) => *l = line.to_string(),
            None => lines.push(line.to_string()),
        }
        self
    }

    /// Remove `key` from `[table]`.
    pub fn unset(mut self, table: &str, key: &str) -> ConfigBuilder {
        self.table_mut(table).retain(|l| key_of(l) != key);
        self
    }

    /// Remove `[table]` with every key in it.
    pub fn without(mut self, table: &str) -> ConfigBuilder {
        self.tables.retain(|(name, _)| name != table);
        self
    }

    /// Listen on `addr` only.
    pub fn listener(mut self, addr: &str) -> ConfigBuilder {
        self.listeners = vec![format!("addr = \"{addr}\"")];
        self
    }

    /// Listen only as the body of this `[[listener]]` says (`addr = ...`, `proxy_protocol`, ...).
    pub fn listener_toml(mut self, body: &str) -> ConfigBuilder {
        self.listeners = vec![body.trim().to_string()];
        self
    }

    /// Listen on `addr` too.
    pub fn add_listener(mut self, addr: &str) -> ConfigBuilder {
        self.listeners.push(format!("addr = \"{addr}\""));
        self
    }

    /// Resolve through the name server at `addr` only (a `testkit::dns::TestDns`), one try of
    /// `dns::RESOLVER_TIMEOUT` per query, as the tests' own resolvers do.
    pub fn resolver(self, addr: SocketAddr) -> ConfigBuilder {
        let timeout_ms = super::dns::RESOLVER_TIMEOUT.as_millis();
        self.set("dns", &format!("nameservers = [\"{addr}\"]"))
            .set("dns", &format!("timeout = \"{timeout_ms}ms\""))
            .set("dns", "attempts = 1")
    }

    /// Present the certificate and key in these PEM files (`[tls]`).
    pub fn tls_files(self, cert: &Path, key: &Path) -> ConfigBuilder {
        self.set("tls", &format!("cert = \"{}\"", cert.display()))
            .set("tls", &format!("key = \"{}\"", key.display()))
    }

    /// Add an inbox with only an id and an address.
    pub fn inbox(self, id: &str, address: &str) -> ConfigBuilder {
        self.inbox_toml(&format!(
            "[[inbox]]\nid = \"{id}\"\naddress = \"{address}\"\n"
        ))
    }

    /// Add an inbox written out (an `[[inbox]]` table and its `[[inbox.rule]]`s), or replace the
    /// inbox with the same `id = "..."` line where it stands (so `inbox[N]` paths stay).
    pub fn inbox_toml(mut self, toml: &str) -> ConfigBuilder {
        let toml = toml.trim().to_string();
        match id_line(&toml).and_then(|id| self.inbox_index(id)) {
            Some(i) => self.inboxes[i] = toml,
            None => self.inboxes.push(toml),
        }
        self
    }

    /// Remove the inbox `id`.
    pub fn without_inbox(mut self, id: &str) -> ConfigBuilder {
        if let Some(i) = self.inbox_index(&format!("id = \"{id}\"")) {
            self.inboxes.remove(i);
        }
        self
    }

    fn inbox_index(&self, id_line: &str) -> Option<usize> {
        self.inboxes
            .iter()
            .position(|t| t.lines().any(|l| l.trim() == id_line))
    }

    /// Remove every inbox.
    pub fn no_inboxes(mut self) -> ConfigBuilder {
        self.inboxes.clear();
        self
    }

    /// Append raw TOML: arrays of tables the builder has no method for, or whole tables the base
    /// does not have.
    pub fn extra(mut self, toml: &str) -> ConfigBuilder {
        self.extra.push(toml.to_string());
        self
    }

    /// The config text.
    pub fn toml(&self) -> String {
        let mut out = String::new();
        let table = |out: &mut String, (name, lines): &(String, Vec<String>)| {
            out.push_str(&format!("[{name}]\n"));
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
            out.push('\n');
        };
        let (server, rest): (Vec<_>, Vec<_>) = self.tables.iter().partition(|(n, _)| n == "server");
        for t in server {
            table(&mut out, t);
        }
        for body in &self.listeners {
            out.push_str(&format!("[[listener]]\n{body}\n\n"));
        }
        for t in rest {
            table(&mut out, t);
        }
        for inbox in &self.inboxes {
            out.push_str(inbox);
            out.push_str("\n\n");
        }
        for e in &self.extra {
            out.push_str(e);
            out.push('\n');
        }
        out
    }

    /// The config as the server would load it; panics when it does not validate.
    pub fn parse(&self) -> crate::config::Config {
        crate::config::parse(&self.toml()).unwrap_or_else(|e| panic!("test config invalid: {e}"))
    }

    /// Write the config text to `path`; panics when it cannot.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.toml())
            .unwrap_or_else(|e| panic!("write config {}: {e}", path.display()));
    }

    fn table_mut(&mut self, table: &str) -> &mut Vec<String> {
        let i = match self.tables.iter().position(|(n, _)| n == table) {
            Some(i) => i,
            None => {
                self.tables.push((table.to_string(), Vec::new()));
                self.tables.len() - 1
            }
        };
        &mut self.tables[i].1
    }
}

/// The `id = "..."` line of an `[[inbox]]` table.
fn id_line(toml: &str) -> Option<&str> {
    toml.lines()
        .map(str::trim)
        .find(|l| key_of(l) == "id" && l.contains('='))
}

/// The key of a `key = value` line.
fn key_of(line: &str) -> &str {
    line.split('=').next().unwrap_or("").trim()
}
