//! `[store]`: raw -> validated, every error with its key path. Which backend keeps the
//! records (sled under `data_dir`, or a PostgreSQL database several nodes share), how large
//! its cache and inline bodies are, and how long a node's outbox claims last.

use std::time::Duration;

use super::errors::Errors;
use super::raw::RawStore;

/// `[store]`; an inline body is never larger than a message may be.
pub(super) fn compile_store(
    store: &RawStore,
    max_message_bytes: u64,
    errors: &mut Errors,
) -> StoreConfig {
    StoreConfig {
        inline_body_max_bytes: store
            .inline_body_max_bytes
            .unwrap_or(64 * 1024)
            .min(max_message_bytes),
        max_commit_batch: errors.positive("store.max_commit_batch", store.max_commit_batch, 512)
            as usize,
        cache_bytes: match store.cache_bytes {
            None => DEFAULT_CACHE_BYTES,
            Some(n) if (MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&n) => n,
            Some(n) => {
                errors.push(
                    "store.cache_bytes",
                    format!("{n} is out of range ({MIN_CACHE_BYTES} to {MAX_CACHE_BYTES})"),
                );
                DEFAULT_CACHE_BYTES
            }
        },
        // Room for two messages of the largest size: the one being received and its spool copy.
        min_free_bytes: store
            .min_free_bytes
            .unwrap_or(max_message_bytes.saturating_mul(2)),
        backend: compile_backend(store, errors),
        commit_timeout: commit_timeout(store, errors),
    }
}

/// `[store] commit_timeout`'s bounds: a second at least (a 30 MB body's commit takes a
/// fraction of it), ten minutes at most, the time RFC 5321 §4.5.3.2.6 gives a client to wait
/// for the answer to its data.
const MIN_COMMIT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

/// `[store] commit_timeout`: a minute unless set. A commit that outlasts it may still land
/// later; the sender, told `451`, sends again and the copy is recorded as a duplicate.
fn commit_timeout(store: &RawStore, errors: &mut Errors) -> Duration {
    let default = Duration::from_secs(60);
    let t = errors.duration("store.commit_timeout", &store.commit_timeout, default);
    if (MIN_COMMIT_TIMEOUT..=MAX_COMMIT_TIMEOUT).contains(&t) {
        t
    } else {
        errors.push(
            "store.commit_timeout",
            format!("{t:?} is out of range (1s to 10m)"),
        );
        default
    }
}

/// `[store] backend` and, for PostgreSQL, where it is and how many connections to use.
fn compile_backend(store: &RawStore, errors: &mut Errors) -> StoreBackend {
    let pg_only = [
        ("store.url", store.url.is_some() || store.url_file.is_some()),
        ("store.pool_size", store.pool_size.is_some()),
        ("store.committers", store.committers.is_some()),
        ("store.connect_timeout", store.connect_timeout.is_some()),
        ("store.outbox_lease", store.outbox_lease.is_some()),
    ];
    match store.backend.as_deref() {
        None | Some("sled") => {
            for (path, given) in pg_only {
                if given {
                    errors.push(path, "only used with backend = \"postgres\"");
                }
            }
            StoreBackend::Sled
        }
        Some("postgres") => {
            let url = match super::outbound::read_secret(
                errors,
                "store.url",
                &store.url,
                &store.url_file,
            ) {
                Ok(Some(url)) => url,
                Ok(None) => {
                    errors.push("store.url", "backend = \"postgres\" needs url or url_file");
                    String::new()
                }
                Err(()) => String::new(),
            };
            let is_pg_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
            if !url.is_empty() && !is_pg_url {
                errors.push(
                    "store.url",
                    format!(
                        "{} is not a postgres:// URL",
                        crate::util::mask_url_password(&url)
                    ),
                );
            }
            let count = |errors: &mut Errors, path: &str, v: Option<u64>, default: u64| match v {
                None => default,
                Some(n) if (1..=64).contains(&n) => n,
                Some(n) => {
                    errors.push(path, format!("{n} is out of range (1 to 64)"));
                    default
                }
            };
            StoreBackend::Postgres(PostgresConfig {
                url,
                pool_size: count(errors, "store.pool_size", store.pool_size, 4) as usize,
                committers: count(errors, "store.committers", store.committers, 4) as usize,
                connect_timeout: errors.duration(
                    "store.connect_timeout",
                    &store.connect_timeout,
                    Duration::from_secs(5),
                ),
                outbox_lease: outbox_lease(store, errors),
            })
        }
        Some(other) => {
            errors.push(
                "store.backend",
                format!("{other:?} is not a store backend (use \"sled\" or \"postgres\")"),
            );
            StoreBackend::Sled
        }
    }
}

/// The lease's bounds: under a second, a node's own delivery and the recording of it could
/// outlast it; past a day, an item of a node that died would wait longer than a sender retries.
const MIN_OUTBOX_LEASE: Duration = Duration::from_secs(1);
const MAX_OUTBOX_LEASE: Duration = Duration::from_secs(86_400);

/// `[store] outbox_lease`: two minutes unless set, within the bounds above.
fn outbox_lease(store: &RawStore, errors: &mut Errors) -> Duration {
    let default = PostgresConfig::DEFAULT_OUTBOX_LEASE;
    let lease = errors.duration("store.outbox_lease", &store.outbox_lease, default);
    if (MIN_OUTBOX_LEASE..=MAX_OUTBOX_LEASE).contains(&lease) {
        lease
    } else {
        errors.push(
            "store.outbox_lease",
            format!("{lease:?} is out of range (1s to 1d)"),
        );
        default
    }
}

/// A lease must outlast one delivery attempt: if it ran out while this node still waited for
/// an endpoint or the relay, another node would claim the item and deliver it a second time
/// (at least once would still hold, but every slow endpoint would see doubles). Checked against
/// each webhook's `timeout` and the relay's, after both sections are compiled.
pub(super) fn check_outbox_lease(
    store: &StoreConfig,
    outbound: &super::outbound::OutboundConfig,
    errors: &mut Errors,
) {
    let StoreBackend::Postgres(pg) = &store.backend else {
        return;
    };
    let timeouts = outbound
        .webhooks
        .iter()
        .map(|w| (format!("webhook {:?}", w.id), w.timeout))
        .chain(
            outbound
                .relay
                .iter()
                .map(|r| ("the relay".to_string(), r.timeout)),
        );
    for (what, timeout) in timeouts {
        if pg.outbox_lease <= timeout {
            errors.push(
                "store.outbox_lease",
                format!(
                    "{:?} must be longer than {what}'s timeout ({timeout:?}): a lease that runs \
                     out during a delivery lets another node deliver the same item again",
                    pg.outbox_lease
                ),
            );
        }
    }
}

/// sled's page cache by default: with its page table, the process stays within its 64 MiB
/// memory budget as the store grows.
const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;
const MIN_CACHE_BYTES: u64 = 1024 * 1024;
const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub inline_body_max_bytes: u64,
    pub max_commit_batch: usize,
    /// sled's page cache. Changing it takes a restart.
    pub cache_bytes: u64,
    /// Free space on the data directory's filesystem below which MAIL is answered
    /// `452 4.3.1` (0: never). Live: a reload changes it.
    pub min_free_bytes: u64,
    /// Where the records live. Changing it takes a restart.
    pub backend: StoreBackend,
    /// How long an SMTP session waits for its message to be durable before it answers
    /// `451 4.3.0` (a database that stopped answering, a disk that hangs). Live.
    pub commit_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// The embedded database under `data_dir` (one node).
    #[default]
    Sled,
    /// A PostgreSQL database that several nodes share.
    Postgres(PostgresConfig),
}

#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `postgres://...`; may hold a password (see `Debug`, which masks it).
    pub url: String,
    pub pool_size: usize,
    pub committers: usize,
    pub connect_timeout: Duration,
    /// How long an outbox claim keeps the other nodes off the items claimed: when a node dies
    /// mid-delivery, its items wait this long before another node takes them.
    pub outbox_lease: Duration,
}

impl PostgresConfig {
    /// `[store] outbox_lease` unless set: longer than the default webhook (10 s) and relay
    /// (30 s) timeouts, short enough that a dead node's items wait minutes, not hours.
    pub const DEFAULT_OUTBOX_LEASE: Duration = Duration::from_secs(120);

    /// One connection to `url` for a tool that is not a node (`inbound store`, the bench's
    /// migration): no committers beyond one, ten seconds to connect.
    pub fn for_tool(url: String) -> PostgresConfig {
        PostgresConfig {
            url,
            pool_size: 1,
            committers: 1,
            connect_timeout: Duration::from_secs(10),
            outbox_lease: Self::DEFAULT_OUTBOX_LEASE,
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &crate::util::mask_url_password(&self.url))
            .field("pool_size", &self.pool_size)
            .field("committers", &self.committers)
            .field("connect_timeout", &self.connect_timeout)
            .field("outbox_lease", &self.outbox_lease)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn outbox_lease_is_a_bounded_duration_longer_than_any_delivery_timeout() {
        let base = "[[listener]]\naddr = \"127.0.0.1:1\"\n\
                    [store]\nbackend = \"postgres\"\nurl = \"postgres://db/inbound\"\n";
        let lease = |text: &str| match parse(text).unwrap().store.backend {
            StoreBackend::Postgres(pg) => pg.outbox_lease,
            StoreBackend::Sled => panic!("not postgres"),
        };
        assert_eq!(lease(base), Duration::from_secs(120));
        assert_eq!(
            lease(&format!("{base}outbox_lease = \"3s\"\n")),
            Duration::from_secs(3)
        );
        for bad in ["0s", "500ms", "2d", "soon"] {
            let errs = parse(&format!("{base}outbox_lease = \"{bad}\"\n"))
                .unwrap_err()
                .0;
            assert_eq!(errs[0].path, "store.outbox_lease", "{bad}: {errs:#?}");
        }
        // Not longer than a webhook's timeout (10s by default): refused, naming the webhook.
        let hook = "[[webhook]]\nid = \"app\"\nurl = \"http://127.0.0.1:9/h\"\n\
                    secret = \"whsec-0123456789abcdef\"\nevents = [\"message.received\"]\n";
        let errs = parse(&format!("{base}outbox_lease = \"10s\"\n{hook}"))
            .unwrap_err()
            .0;
        assert_eq!(errs[0].path, "store.outbox_lease", "{errs:#?}");
        assert!(errs[0].message.contains("webhook \"app\""), "{errs:#?}");
        assert!(parse(&format!("{base}outbox_lease = \"11s\"\n{hook}")).is_ok());
        // A sled store has no lease to set.
        let errs = parse("[[listener]]\naddr = \"127.0.0.1:1\"\n[store]\noutbox_lease = \"3s\"\n")
            .unwrap_err()
            .0;
        assert_eq!(errs[0].path, "store.outbox_lease", "{errs:#?}");
    }

    #[test]
    fn commit_timeout_is_a_bounded_duration_on_either_backend() {
        let base = "[[listener]]\naddr = \"127.0.0.1:1\"\n[store]\n";
        let timeout = |extra: &str| {
            parse(&format!("{base}{extra}"))
                .unwrap()
                .store
                .commit_timeout
        };
        assert_eq!(timeout(""), Duration::from_secs(60));
        assert_eq!(timeout("commit_timeout = \"5s\"\n"), Duration::from_secs(5));
        for bad in ["0s", "500ms", "11m", "soon"] {
            let errs = parse(&format!("{base}commit_timeout = \"{bad}\"\n"))
                .unwrap_err()
                .0;
            assert_eq!(errs[0].path, "store.commit_timeout", "{bad}: {errs:#?}");
        }
    }
}
