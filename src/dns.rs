//! `[dns]` config -> the resolver every check uses: mail-auth's `MessageAuthenticator` over
//! hickory, pointed at the configured nameservers (or the system's), with per-query timeouts, and
//! TTL-honouring caches of parsed records so a busy sender's SPF, DKIM key and DMARC record are
//! fetched and parsed once per TTL, not once per message.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::{DnsError, NetError};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::{MessageAuthenticator, RecordSet, ResolverCache, Txt, MX};

use crate::config::DnsConfig;

#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("reading the system resolver configuration: {0}")]
    System(String),
    #[error("building the resolver: {0}")]
    Build(String),
}

/// mail-auth parameters whose lookups go through `Dns`'s caches.
pub type CachedParams<'a, P> = mail_auth::Parameters<
    'a,
    P,
    TtlCache<Box<str>, Txt>,
    TtlCache<Box<str>, RecordSet<MX>>,
    TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    TtlCache<IpAddr, RecordSet<Box<str>>>,
>;

/// Longest a readiness probe waits for the resolver (shorter when `dns.timeout` is).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The resolver and its record caches, shared by every session.
pub struct Dns {
    pub authenticator: MessageAuthenticator,
    /// The same nameservers without a cache and with one short attempt, for `probe`: a cached
    /// answer would say nothing about whether the nameservers answer now.
    probe: MessageAuthenticator,
    pub txt: TtlCache<Box<str>, Txt>,
    pub mx: TtlCache<Box<str>, RecordSet<MX>>,
    pub ipv4: TtlCache<Box<str>, RecordSet<Ipv4Addr>>,
    pub ipv6: TtlCache<Box<str>, RecordSet<Ipv6Addr>>,
    pub ptr: TtlCache<IpAddr, RecordSet<Box<str>>>,
}

impl Dns {
    pub fn new(cfg: &DnsConfig) -> Result<Dns, DnsSetupError> {
        let (config, mut opts) = if cfg.nameservers.is_empty() {
            read_system_conf().map_err(|e| DnsSetupError::System(e.to_string()))?
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    ns
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        // Our own caches hold parsed records; hickory's holds raw answers (and negative ones).
        opts.cache_size = cfg.cache_entries as u64;
        // Never consult /etc/hosts for mail authentication.
        opts.use_hosts_file = mail_auth::hickory_resolver::config::ResolveHosts::Never;
        let mut probe_opts = opts.clone();
        probe_opts.timeout = cfg.timeout.min(PROBE_TIMEOUT);
        probe_opts.attempts = 1;
        probe_opts.cache_size = 0;
        probe_opts.positive_max_ttl = Some(Duration::ZERO);
        probe_opts.negative_max_ttl = Some(Duration::ZERO);
        let probe = MessageAuthenticator::new(config.clone(), probe_opts)
            .map_err(|e| DnsSetupError::Build(e.to_string()))?;
        let authenticator = MessageAuthenticator::new(config, opts)
            .map_err(|e| DnsSetupError::Build(e.to_string()))?;
        let n = cfg.cache_entries;
        Ok(Dns {
            authenticator,
            probe,
            txt: TtlCache::new(n),
            mx: TtlCache::new(n),
            ipv4: TtlCache::new(n),
            ipv6: TtlCache::new(n),
            ptr: TtlCache::new(n),
        })
    }

    /// Whether the configured nameservers answer at all: one query for the root's NS records.
    /// Any answer counts, NXDOMAIN and SERVFAIL included (the server is there and talking); a
    /// timeout or a network error does not. Takes at most `min(dns.timeout, 2s)` and a little.
    pub async fn probe(&self) -> Result<(), String> {
        let lookup = self.probe.resolver().lookup(Name::root(), RecordType::NS);
        match tokio::time::timeout(PROBE_TIMEOUT + Duration::from_millis(500), lookup).await {
            Ok(Ok(_)) | Ok(Err(NetError::Dns(_))) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }

    /// Every TXT record at `name`, each record's character-strings joined (RFC 7208 §3.3, RFC 6376
    /// §3.6.2.2), through the resolver's own cache (so a repeated lookup costs no query). No
    /// record (NXDOMAIN, NODATA) is `Ok` and empty; a name that cannot be encoded is `Ok` and empty
    /// too (nothing can be published there); only an unanswered query is `Err`. For the checks
    /// mail-auth's parsed-record cache cannot answer: how many DMARC records a name has, and a
    /// DKIM key record's tags as published.
    pub async fn txt_records(&self, name: &str) -> Result<Vec<Vec<u8>>, String> {
        let Ok(name) = Name::from_str_relaxed(name) else {
            return Ok(Vec::new());
        };
        match self.authenticator.resolver().txt_lookup(name).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(txt.txt_data.iter().flatten().copied().collect()),
                    _ => None,
                })
                .collect()),
            Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// mail-auth call parameters carrying our caches.
    pub fn params<P>(&self, p: P) -> CachedParams<'_, P> {
        mail_auth::Parameters::new(p)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }
}

/// A bounded map whose entries expire at the time the resolver gives (the record's TTL).
/// When full, expired entries are dropped first; if none, the whole map is cleared (simple, and
/// a full cache of live entries means an unusual load where refetching is cheap anyway).
pub struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize) -> TtlCache<K, V> {
        TtlCache {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for TtlCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(name) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, (value, valid_until));
    }
}
