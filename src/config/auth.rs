//! `[auth]` and each inbox's `[inbox.auth]`: raw -> the sender-authentication policy an inbox
//! applies (global settings merged with its own), every error with its key path.

use super::errors::Errors;
use super::raw::{RawAuth, RawInboxAuth};
use super::values::{domains, IpNet};

/// What to do with a message that a policy rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Quarantine,
    Reject,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "accept" => Some(Action::Accept),
            "quarantine" => Some(Action::Quarantine),
            "reject" => Some(Action::Reject),
            _ => None,
        }
    }
}

/// A host trusted to forward mail into an inbox: an address range, or a domain that must
/// authorise the connecting IP by SPF (as envelope or HELO domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarder {
    Net(IpNet),
    Domain(String),
}

/// The sender-authentication policy of one inbox (global `[auth]` merged with `[inbox.auth]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    pub enabled: bool,
    pub trusted_arc_sealers: Vec<String>,
    pub trusted_forwarders: Vec<Forwarder>,
    /// DMARC fail under `p=reject`, with no trusted ARC chain or forwarder to vouch for it.
    pub on_dmarc_reject: Action,
    /// DMARC fail under `p=quarantine`.
    pub on_dmarc_quarantine: Action,
    /// Nothing authenticates the message: no SPF pass, no DKIM pass aligned with an author and
    /// no DMARC pass (p=none included; also a message that names no domain at all).
    pub on_unauthenticated: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Clients here skip the checks (their messages are recorded as `auth: skipped`).
    pub trusted_networks: Vec<IpNet>,
    /// Bytes of large bodies held in memory for DKIM/ARC at once; when used up, further checks
    /// wait (their clients wait for the reply to end-of-data).
    pub max_inflight_bytes: u64,
    pub policy: AuthPolicy,
}

/// Sealers whose ARC results we trust by default: the big mailbox providers that forward.
pub const DEFAULT_ARC_SEALERS: &[&str] = &[
    "google.com",
    "outlook.com",
    "microsoft.com",
    "yahoo.com",
    "icloud.com",
    "fastmail.com",
    "messagingengine.com",
];

fn action(errors: &mut Errors, path: &str, value: &Option<String>, default: Action) -> Action {
    match value {
        None => default,
        Some(v) => Action::parse(v).unwrap_or_else(|| {
            errors.push(
                path,
                format!("invalid action {v:?} (accept, quarantine or reject)"),
            );
            default
        }),
    }
}

fn forwarders(errors: &mut Errors, path: &str, raw: &[String]) -> Vec<Forwarder> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, f)| {
            if let Some(net) = IpNet::parse(f) {
                Some(Forwarder::Net(net))
            } else if f.contains('.') && !f.contains(['/', ' ', '@']) {
                Some(Forwarder::Domain(f.trim_end_matches('.').to_lowercase()))
            } else {
                errors.push(
                    format!("{path}[{i}]"),
                    format!("{f:?} is neither an address range nor a domain"),
                );
                None
            }
        })
        .collect()
}

pub(super) fn compile_auth(raw: &RawAuth, errors: &mut Errors) -> AuthConfig {
    let trusted_networks = match &raw.trusted_networks {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let net = IpNet::parse(n);
                if net.is_none() {
                    errors.push(
                        format!("auth.trusted_networks[{i}]"),
                        format!("invalid address or CIDR {n:?}"),
                    );
                }
                net
            })
            .collect(),
    };
    AuthConfig {
        trusted_networks,
        max_inflight_bytes: errors.positive(
            "auth.max_inflight_bytes",
            raw.max_inflight_bytes,
            256 * 1024 * 1024,
        ),
        policy: AuthPolicy {
            enabled: raw.enabled.unwrap_or(true),
            trusted_arc_sealers: raw
                .trusted_arc_sealers
                .as_deref()
                .map(domains)
                .unwrap_or_else(|| DEFAULT_ARC_SEALERS.iter().map(|s| s.to_string()).collect()),
            trusted_forwarders: forwarders(
                errors,
                "auth.trusted_forwarders",
                &raw.trusted_forwarders,
            ),
            on_dmarc_reject: action(
                errors,
                "auth.on_dmarc_reject",
                &raw.on_dmarc_reject,
                Action::Reject,
            ),
            on_dmarc_quarantine: action(
                errors,
                "auth.on_dmarc_quarantine",
                &raw.on_dmarc_quarantine,
                Action::Quarantine,
            ),
            on_unauthenticated: action(
                errors,
                "auth.on_unauthenticated",
                &raw.on_unauthenticated,
                Action::Quarantine,
            ),
        },
    }
}

pub(super) fn inbox_auth(
    global: &AuthPolicy,
    raw: Option<&RawInboxAuth>,
    path: &str,
    errors: &mut Errors,
) -> AuthPolicy {
    let Some(raw) = raw else {
        return global.clone();
    };
    let mut trusted_forwarders = global.trusted_forwarders.clone();
    trusted_forwarders.extend(forwarders(
        errors,
        &format!("{path}.auth.trusted_forwarders"),
        &raw.trusted_forwarders,
    ));
    AuthPolicy {
        enabled: raw.enabled.unwrap_or(global.enabled),
        trusted_arc_sealers: raw
            .trusted_arc_sealers
            .as_deref()
            .map(domains)
            .unwrap_or_else(|| global.trusted_arc_sealers.clone()),
        trusted_forwarders,
        on_dmarc_reject: action(
            errors,
            &format!("{path}.auth.on_dmarc_reject"),
            &raw.on_dmarc_reject,
            global.on_dmarc_reject,
        ),
        on_dmarc_quarantine: action(
            errors,
            &format!("{path}.auth.on_dmarc_quarantine"),
            &raw.on_dmarc_quarantine,
            global.on_dmarc_quarantine,
        ),
        on_unauthenticated: action(
            errors,
            &format!("{path}.auth.on_unauthenticated"),
            &raw.on_unauthenticated,
            global.on_unauthenticated,
        ),
    }
}
