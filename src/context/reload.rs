//! The config file the server started with -> the config in force, swapped atomically; or a
//! refusal naming every key at fault, with the running config untouched. SIGHUP (`inbound serve`)
//! and the HTTP API call the same `Ctx::reload`.
//!
//! What a reload changes at once: inboxes (addresses, aliases, rules, tickets, auth policy),
//! users, teams and contact owners, `[auth]` (except `max_inflight_bytes`), `server.hostname`,
//! `server.shutdown_timeout`, `[retention]`, and `[tls]`: certificate and key are read again on
//! every reload, so a renewed certificate is picked up. Sessions take a config snapshot per
//! command, so an open session sees the new config from its next command, and nothing is
//! dropped.
//!
//! What only a restart changes (a reload that changes any of these is refused, naming each key):
//! the listeners, `server.data_dir`, `server.admin_socket`, `[limits]` (semaphores and rate
//! limiters sized at start), `[store]`, `[dns]` (the resolver is built at start),
//! `auth.max_inflight_bytes` (a semaphore) and `api.listen`/`api.enabled` (the API socket is
//! bound at start; `api.tokens` and `api.token_files` are read again and apply at once). The
//! command-line overrides (`--listen`, `--data-dir`, `--api-listen`) are applied to the new file
//! as at start, so they never count as changes.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::{tls, Ctx};
use crate::config::inboxes::Blame;
use crate::config::raw::RawInbox;
use crate::config::{Config, ConfigError, LoadError};
use crate::metrics::ReloadResult;
use crate::store::model::{DefinitionStatus, InboxDefinition};
use crate::store::{Store, StoreError};

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadSummary {
    /// The file read.
    pub file: String,
    /// Inbox ids new in this config.
    pub inboxes_added: Vec<String>,
    /// Inbox ids no longer configured (mail to their addresses is now refused).
    pub inboxes_removed: Vec<String>,
    /// Inbox ids whose address, aliases, rules, tickets or auth policy changed.
    pub inboxes_changed: Vec<String>,
    /// Other settings that changed: "server.hostname", "server.shutdown_timeout", "auth",
    /// "directory" (users, teams, contact owners), "retention", "tls".
    pub changed: Vec<String>,
}

/// Why a reload was refused. The running config stays in force in every case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReloadError {
    /// Started on the embedded default config (or one built in process): nothing to re-read.
    #[error("no config file to reload: the server was started without --config")]
    NoFile,
    #[error("cannot read {path}: {message}")]
    Unreadable { path: String, message: String },
    /// The file does not validate: every error, with its key path.
    #[error("{}", list(path, "is invalid", errors))]
    Invalid {
        path: String,
        errors: Vec<ConfigError>,
    },
    /// Valid, but it changes what cannot change now: a connected inbox's address, a setting
    /// only read at start (restart to apply it), or a TLS file that cannot be loaded.
    #[error("{}", list(path, "cannot be applied", errors))]
    Refused {
        path: String,
        errors: Vec<ConfigError>,
    },
    #[error("reading the store: {message}")]
    Store { message: String },
}

fn list(path: &str, what: &str, errors: &[ConfigError]) -> String {
    let mut s = format!("{path} {what}; the running config is unchanged:");
    for e in errors {
        s.push_str(&format!("\n  {e}"));
    }
    s
}

impl Ctx {
    /// Re-read the config file the server was started with (with the same command-line
    /// overrides), validate it, check it against the store (connected inboxes keep their
    /// address) and against what only a restart can change, then swap it in. Logs the outcome.
    /// Blocking (file and store reads): call it from a blocking context in async code.
    pub fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let result = self.reload_inner();
        match &result {
            Ok(s) => {
                self.metrics.config_reloads.inc(ReloadResult::Applied);
                tracing::info!(
                    file = %s.file,
                    inboxes_added = ?s.inboxes_added,
                    inboxes_removed = ?s.inboxes_removed,
                    inboxes_changed = ?s.inboxes_changed,
                    changed = ?s.changed,
                    "config reloaded"
                );
            }
            Err(e) => {
                self.metrics.config_reloads.inc(ReloadResult::Refused);
                tracing::warn!(error = %e, "config reload refused");
            }
        }
        result
    }

    fn reload_inner(&self) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = self.source.path.clone() else {
            return Err(ReloadError::NoFile);
        };
        let file = path.display().to_string();
        let new = self.source.load().map_err(|e| match e {
            LoadError::Read(_, io) => ReloadError::Unreadable {
                path: file.clone(),
                message: io.to_string(),
            },
            LoadError::Invalid(errors) => ReloadError::Invalid {
                path: file.clone(),
                errors: errors.0,
            },
        })?;
        let old = self.config();
        // Inboxes, users and teams created through the API stay: a file that clashes with one is
        // refused.
        let new =
            match with_store_definitions(&new, &self.store).map_err(|e| ReloadError::Store {
                message: e.to_string(),
            })? {
                Ok(merged) => merged,
                Err(errors) => return Err(ReloadError::Refused { path: file, errors }),
            };

        let mut errors = locked_addresses(&new, &self.store).map_err(|e| ReloadError::Store {
            message: e.to_string(),
        })?;
        errors.extend(restart_only_changes(&old, &new));
        // Certificate files are read on every reload (a renewal keeps their paths); a
        // generated self-signed certificate is kept while `[tls]` is unchanged.
        let tls_changed = old.tls != new.tls;
        let new_tls = if tls_changed || new.tls.cert_and_key.is_some() {
            match tls::acceptor(&new.tls, &new.hostname) {
                Ok(a) => Some(a),
                Err(e) => {
                    let key = match e {
                        tls::TlsError::Key { .. } => "tls.key",
                        _ => "tls.cert",
                    };
                    errors.push(ConfigError {
                        path: key.into(),
                        message: e.to_string(),
                    });
                    None
                }
            }
        } else {
            None
        };
        if !errors.is_empty() {
            return Err(ReloadError::Refused { path: file, errors });
        }

        let summary = summarize(file, &old, &new, tls_changed);
        if let Some(acceptor) = new_tls {
            *self.tls.write().unwrap_or_else(|p| p.into_inner()) = acceptor;
            self.metrics
                .set_tls_certificate_not_after(tls::configured_not_after(&new.tls));
        }
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(summary)
    }
}

/// `config` (as read from the file) with the users, teams and active inboxes created through
/// the API added; `Ok(Err(..))` names each clash between the two, blaming the file's keys.
pub(crate) fn with_store_definitions(
    config: &Config,
    store: &Store,
) -> Result<Result<Config, Vec<ConfigError>>, StoreError> {
    let specs = active_specs(&store.inbox_definitions()?);
    Ok(config
        .with_api_definitions(&store.api_people()?, &specs, Blame::File)
        .map_err(|e| e.0))
}

/// The specs of the definitions that still receive mail.
pub fn active_specs(defs: &[InboxDefinition]) -> Vec<RawInbox> {
    defs.iter()
        .filter(|d| d.status == DefinitionStatus::Active)
        .map(|d| d.spec.clone())
        .collect()
}

/// A connected inbox's forwarding address is locked (`Config::check_locked_addresses`): one
/// error for each that `config` would change or remove.
pub(crate) fn locked_addresses(
    config: &Config,
    store: &Store,
) -> Result<Vec<ConfigError>, StoreError> {
    let states = store.inbox_states()?;
    Ok(config.check_locked_addresses(
        states
            .iter()
            .filter(|s| s.state == crate::store::model::InboxLifecycle::Connected)
            .map(|s| (s.id.as_str(), s.address.as_str())),
    ))
}

/// One error per setting that differs and is only read at start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut check = |path: &str, a: &dyn fmt::Debug, b: &dyn fmt::Debug| {
        let (a, b) = (format!("{a:?}"), format!("{b:?}"));
        if a != b {
            out.push(ConfigError {
                path: path.to_string(),
                message: format!(
                    "changed from {a} to {b}; this setting is only read at start: restart the server to apply it"
                ),
            });
        }
    };
    let n = old.listeners.len().max(new.listeners.len());
    for i in 0..n {
        let show = |l: Option<&crate::config::ListenerConfig>| match l {
            None => "(none)".to_string(),
            Some(l) if l.proxy_protocol => format!("{} with PROXY protocol", l.addr),
            Some(l) => l.addr.to_string(),
        };
        let (a, b) = (old.listeners.get(i), new.listeners.get(i));
        if a != b {
            check(&format!("listener[{i}]"), &show(a), &show(b));
        }
    }
    check("server.data_dir", &old.data_dir, &new.data_dir);
    check("server.admin_socket", &old.admin_socket, &new.admin_socket);
    let (a, b) = (&old.limits, &new.limits);
    check(
        "limits.max_message_bytes",
        &a.max_message_bytes,
        &b.max_message_bytes,
    );
    check(
        "limits.max_recipients",
        &a.max_recipients,
        &b.max_recipients,
    );
    check(
        "limits.max_connections",
        &a.max_connections,
        &b.max_connections,
    );
    check(
        "limits.max_connections_per_ip",
        &a.max_connections_per_ip,
        &b.max_connections_per_ip,
    );
    check(
        "limits.connections_per_ip_per_minute",
        &a.connections_per_ip_per_minute,
        &b.connections_per_ip_per_minute,
    );
    check(
        "limits.messages_per_ip_per_minute",
        &a.messages_per_ip_per_minute,
        &b.messages_per_ip_per_minute,
    );
    check(
        "limits.max_bad_commands",
        &a.max_bad_commands,
        &b.max_bad_commands,
    );
    check(
        "limits.command_timeout",
        &a.command_timeout,
        &b.command_timeout,
    );
    check("limits.data_timeout", &a.data_timeout, &b.data_timeout);
    check(
        "limits.max_header_bytes",
        &a.max_header_bytes,
        &b.max_header_bytes,
    );
    check(
        "limits.ipv6_prefix_length",
        &a.ipv6_prefix_length,
        &b.ipv6_prefix_length,
    );
    check(
        "limits.min_data_rate_bytes_per_second",
        &a.min_data_rate_bytes_per_second,
        &b.min_data_rate_bytes_per_second,
    );
    check("limits.write_timeout", &a.write_timeout, &b.write_timeout);
    check(
        "limits.max_transactions_per_connection",
        &a.max_transactions_per_connection,
        &b.max_transactions_per_connection,
    );
    check(
        "store.inline_body_max_bytes",
        &old.store.inline_body_max_bytes,
        &new.store.inline_body_max_bytes,
    );
    check(
        "store.max_commit_batch",
        &old.store.max_commit_batch,
        &new.store.max_commit_batch,
    );
    check(
        "store.cache_bytes",
        &old.store.cache_bytes,
        &new.store.cache_bytes,
    );
    check(
        "dns.nameservers",
        &old.dns.nameservers,
        &new.dns.nameservers,
    );
    check("dns.timeout", &old.dns.timeout, &new.dns.timeout);
    check("dns.attempts", &old.dns.attempts, &new.dns.attempts);
    check(
        "dns.cache_entries",
        &old.dns.cache_entries,
        &new.dns.cache_entries,
    );
    check(
        "auth.max_inflight_bytes",
        &old.auth.max_inflight_bytes,
        &new.auth.max_inflight_bytes,
    );
    check("api.listen", &old.api.listen, &new.api.listen);
    check("api.enabled", &old.api.enabled, &new.api.enabled);
    check(
        "api.max_connections",
        &old.api.max_connections,
        &new.api.max_connections,
    );
    check(
        "api.metrics_listen",
        &old.api.metrics_listen,
        &new.api.metrics_listen,
    );
    out
}

fn summarize(file: String, old: &Config, new: &Config, tls_changed: bool) -> ReloadSummary {
    let ids = |c: &Config| {
        c.inboxes
            .list
            .iter()
            .map(|i| i.id.clone())
            .collect::<Vec<_>>()
    };
    let (old_ids, new_ids) = (ids(old), ids(new));
    let inboxes_added = new_ids
        .iter()
        .filter(|i| !old_ids.contains(i))
        .cloned()
        .collect();
    let inboxes_removed = old_ids
        .iter()
        .filter(|i| !new_ids.contains(i))
        .cloned()
        .collect();
    let inboxes_changed = new
        .inboxes
        .list
        .iter()
        .filter(|n| old.inboxes.get(&n.id).is_some_and(|o| o != n.as_ref()))
        .map(|n| n.id.clone())
        .collect();
    let mut changed = Vec::new();
    for (key, differs) in [
        ("server.hostname", old.hostname != new.hostname),
        (
            "server.shutdown_timeout",
            old.shutdown_timeout != new.shutdown_timeout,
        ),
        ("auth", old.auth != new.auth),
        ("directory", old.directory != new.directory),
        ("retention", old.retention != new.retention),
        ("api.tokens", old.api.token_digests != new.api.token_digests),
        ("tls", tls_changed),
    ] {
        if differs {
            changed.push(key.to_string());
        }
    }
    ReloadSummary {
        file,
        inboxes_added,
        inboxes_removed,
        inboxes_changed,
        changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        crate::config::parse(&format!(
            "[server]\ndata_dir = \"/tmp/x\"\n[[listener]]\naddr = \"127.0.0.1:2525\"\n\
             [[inbox]]\nid = \"a\"\naddress = \"a@x.example\"\n{extra}"
        ))
        .expect("valid test config")
    }

    /// The API answers with these: every variant must serialise (an internally tagged enum
    /// cannot hold a bare string).
    #[test]
    fn every_refusal_serialises_with_its_kind() {
        let errors = vec![ConfigError {
            path: "listener[0]".into(),
            message: "changed".into(),
        }];
        for (e, kind) in [
            (ReloadError::NoFile, "no_file"),
            (
                ReloadError::Unreadable {
                    path: "f".into(),
                    message: "gone".into(),
                },
                "unreadable",
            ),
            (
                ReloadError::Invalid {
                    path: "f".into(),
                    errors: errors.clone(),
                },
                "invalid",
            ),
            (
                ReloadError::Refused {
                    path: "f".into(),
                    errors,
                },
                "refused",
            ),
            (
                ReloadError::Store {
                    message: "io".into(),
                },
                "store",
            ),
        ] {
            let v = serde_json::to_value(&e).unwrap_or_else(|err| panic!("{e:?}: {err}"));
            assert_eq!(v["kind"], kind, "{v}");
        }
    }

    #[test]
    fn restart_only_settings_are_named_and_live_ones_are_not() {
        let old = cfg("");
        let same = restart_only_changes(&old, &cfg("# the same\n"));
        assert!(same.is_empty(), "{same:?}");
        // Live: inboxes, users, auth policy, retention, hostname.
        let live = cfg(
            "[[inbox]]\nid = \"b\"\naddress = \"b@x.example\"\n[[user]]\nid = \"u\"\n\
             [auth]\non_unauthenticated = \"accept\"\n[retention]\nbodies = \"30d\"\n\
             [api]\ntokens = [\"a-new-token-0123456789\"]\n",
        );
        assert!(restart_only_changes(&old, &live).is_empty());
        let s = summarize("f".into(), &old, &live, false);
        assert_eq!(s.inboxes_added, ["b"]);
        assert_eq!(s.changed, ["auth", "directory", "retention", "api.tokens"]);

        let mut moved = cfg(
            "[limits]\nmax_connections = 5\n[dns]\nattempts = 1\n[api]\nlisten = \"127.0.0.1:9\"\n",
        );
        moved.listeners[0].addr = "127.0.0.1:2526".parse().unwrap();
        moved.listeners.push(moved.listeners[0].clone());
        let keys: Vec<String> = restart_only_changes(&old, &moved)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            keys,
            [
                "listener[0]",
                "listener[1]",
                "limits.max_connections",
                "dns.attempts",
                "api.listen"
            ]
        );
    }
}
