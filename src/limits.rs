//! Every abuse limit in one struct: global and per-IP connection caps, per-IP connection and
//! message rates (governor, GCRA), and the size/recipient/time caps sessions read from config.
//! Limits are checked before the work they protect is done (permit before accept, SIZE= at MAIL).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{canonical_ip, LimitsConfig};

/// Connections refused with a 421 while the server is full are handled by at most this many
/// extra tasks. When these are taken too, the listener stops accepting until a session ends
/// (new connections wait in the kernel's backlog).
pub const OVERFLOW_REJECTERS: usize = 32;

pub struct Limits {
    pub cfg: LimitsConfig,
    /// One permit per open session. When none is left, new connections get `421 4.7.0`.
    connections: Arc<Semaphore>,
    /// Bounds the work spent telling clients we are full.
    rejecters: Arc<Semaphore>,
    /// Open sessions per client key (`client_key`). Past `max_connections_per_ip` a new
    /// connection from that key gets `421 4.7.0`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Sessions registered and not yet ended.
    active: AtomicUsize,
    connection_rate: DefaultKeyedRateLimiter<IpAddr>,
    message_rate: DefaultKeyedRateLimiter<IpAddr>,
}

/// Held for the life of a session; releases its global permit and per-IP slot on drop.
pub struct ConnectionGuard {
    limits: Arc<Limits>,
    ip: Option<IpAddr>,
    _permit: OwnedSemaphorePermit,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyFromIp,
    RateFromIp,
}

fn per_minute(n: u32) -> Quota {
    // `n` is validated as > 0 in config; `max(1)` keeps this total anyway.
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl Limits {
    pub fn new(cfg: LimitsConfig) -> Arc<Limits> {
        Arc::new(Limits {
            connections: Arc::new(Semaphore::new(cfg.max_connections)),
            rejecters: Arc::new(Semaphore::new(OVERFLOW_REJECTERS)),
            per_ip: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            connection_rate: RateLimiter::keyed(per_minute(cfg.connections_per_ip_per_minute)),
            message_rate: RateLimiter::keyed(per_minute(cfg.messages_per_ip_per_minute)),
            cfg,
        })
    }

    /// Wait for a session permit, or for the right to send one "too busy" reply when the server is
    /// full. Called before `accept`, so a full server stops taking connections instead of
    /// growing.
    pub async fn admit(self: &Arc<Self>) -> Admission {
        if let Ok(p) = self.connections.clone().try_acquire_owned() {
            return Admission::Session(p);
        }
        tokio::select! {
            p = self.connections.clone().acquire_owned() => match p {
                Ok(p) => Admission::Session(p),
                Err(_) => Admission::Closed,
            },
            r = self.rejecters.clone().acquire_owned() => match r {
                Ok(r) => Admission::Busy(r),
                Err(_) => Admission::Closed,
            },
        }
    }

    /// A session permit if one is free now, without waiting. `admit` decides before `accept`, so
    /// a connection admitted as `Busy` may arrive after a session has ended: the listener calls
    /// this to serve it instead of refusing a client the server has room for.
    pub fn try_session(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// What per-IP limits count a client as: its IPv4 address, or its IPv6 network of
    /// `ipv6_prefix_length` bits (one host usually holds a whole /64 and could otherwise open
    /// `max_connections_per_ip` sessions from each of its addresses).
    pub fn client_key(&self, ip: IpAddr) -> IpAddr {
        match canonical_ip(ip) {
            IpAddr::V6(v6) => {
                let bits = u32::from(self.cfg.ipv6_prefix_length.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            v4 => v4,
        }
    }

    /// Per-IP checks once the real client address is known (after any PROXY header).
    pub fn register(
        self: &Arc<Self>,
        ip: IpAddr,
        permit: OwnedSemaphorePermit,
    ) -> Result<ConnectionGuard, Refusal> {
        let ip = self.client_key(ip);
        if self.connection_rate.check_key(&ip).is_err() {
            return Err(Refusal::RateFromIp);
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= self.cfg.max_connections_per_ip {
            return Err(Refusal::TooManyFromIp);
        }
        *n += 1;
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionGuard {
            limits: self.clone(),
            ip: Some(ip),
            _permit: permit,
        })
    }

    /// Per-IP message rate (per IPv6 network, as `client_key`), checked at MAIL FROM.
    pub fn message_allowed(&self, ip: IpAddr) -> bool {
        self.message_rate.check_key(&self.client_key(ip)).is_ok()
    }

    /// Serve at most `n` sessions at once (fewer than `max_connections`), when the process may
    /// not open enough files for all of them. Called at start, before any session.
    pub fn cap_sessions(&self, n: usize) {
        let surplus = self.cfg.max_connections.saturating_sub(n);
        self.connections.forget_permits(surplus);
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Drop rate-limiter state for idle addresses, so memory does not grow with the number of
    /// distinct clients ever seen. Called periodically by the listener.
    pub fn housekeeping(&self) {
        self.connection_rate.retain_recent();
        self.message_rate.retain_recent();
        self.connection_rate.shrink_to_fit();
        self.message_rate.shrink_to_fit();
    }

    /// Stop handing out permits (shutdown): waiting `admit` calls return `Closed`.
    pub fn close(&self) {
        self.connections.close();
        self.rejecters.close();
    }
}

pub enum Admission {
    Session(OwnedSemaphorePermit),
    /// Full: accept, answer `421 4.7.0`, close.
    Busy(OwnedSemaphorePermit),
    Closed,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            self.limits.active.fetch_sub(1, Ordering::Relaxed);
            let mut map = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}
