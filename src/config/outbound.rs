//! What leaves the server: `[relay]` (the SMTP relay that notification and verification mail goes
//! through), `[outbox]` (how deliveries are retried), `[notify]` (links in notifications) and
//! `[[webhook]]` (HTTP endpoints told about events). Raw shapes and their validation, kept apart
//! from the inbound settings in `config::mod`.

use std::time::Duration;

use serde::Deserialize;

use super::Errors;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    pub host: String,
    /// Default: 465 with `security = "tls"`, else 587 ("starttls") or 25 ("none").
    pub port: Option<u16>,
    /// "starttls" (default), "tls" (implicit TLS, port 465) or "none".
    pub security: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored); keeps it out of the config.
    pub password_file: Option<String>,
    /// Envelope sender of everything we send, and the From of mail not sent for an inbox with a
    /// verified from-address.
    pub from: String,
    /// Display name for `from` (default "inbound").
    pub from_name: Option<String>,
    /// Per-connection timeout, e.g. "30s".
    pub timeout: Option<String>,
    /// Accept any certificate from the relay. Only for a relay you reach over a trusted path.
    pub accept_invalid_certs: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    /// How long a delivery is retried before it is given up and logged as bounced ("2d").
    pub max_lifetime: Option<String>,
    /// First retry delay; it doubles per attempt up to `retry_max`.
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    /// Deliveries in flight at once.
    pub concurrency: Option<u64>,
    /// Deliveries in flight at once to one destination (one webhook endpoint, or the relay).
    pub per_endpoint_concurrency: Option<u64>,
    /// How often the worker looks for due deliveries when nothing wakes it.
    pub poll_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Link to a conversation in the team's application, with `{conversation}` and `{inbox}`
    /// placeholders, e.g. "https://app.example/inboxes/{inbox}/c/{conversation}".
    pub conversation_url: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub id: String,
    /// http:// or https:// URL the JSON events are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key for the signature header (at least 16 bytes).
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    /// Events to send (default: all of `EVENTS`).
    pub events: Option<Vec<String>>,
    /// Inbox ids whose events are sent (default: every inbox).
    #[serde(default)]
    pub inboxes: Vec<String>,
    /// Per-request timeout, e.g. "10s".
    pub timeout: Option<String>,
    /// Message events carry the parsed message (`detail`: the API's message detail).
    pub include_message: Option<bool>,
    /// The largest `detail` sent, in bytes of JSON; a larger one is left out (`detail_omitted`
    /// = "too_large") and read from `detail_url` instead.
    pub message_max_bytes: Option<u64>,
}

/// Every webhook event, in the order they happen to a message.
pub const EVENTS: [&str; 19] = [
    "message.received",
    "message.quarantined",
    "conversation.created",
    "conversation.assigned",
    "conversation.unassigned",
    "conversation.closed",
    "conversation.reopened",
    "ticket.created",
    "verification.received",
    "inbox.created",
    "inbox.updated",
    "inbox.connected",
    "inbox.retired",
    "user.created",
    "user.updated",
    "user.deleted",
    "team.created",
    "team.updated",
    "team.deleted",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelaySecurity {
    /// TLS from the first byte (submissions port 465).
    Tls,
    /// STARTTLS required: a relay that does not offer it is an error, never a clear-text send.
    StartTls,
    /// Clear text. Credentials are refused with it unless the relay is on loopback.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub host: String,
    pub port: u16,
    pub security: RelaySecurity,
    pub credentials: Option<(String, String)>,
    pub from: String,
    pub from_name: String,
    pub timeout: Duration,
    pub accept_invalid_certs: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    pub max_lifetime: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub concurrency: usize,
    /// At most this many deliveries in flight to one webhook endpoint, or to the relay: a slow
    /// receiver cannot take every slot, and is never sent more than this at once.
    pub per_endpoint_concurrency: usize,
    pub poll_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_lifetime: Duration::from_secs(2 * 86_400),
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            concurrency: 4,
            per_endpoint_concurrency: 2,
            poll_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyConfig {
    pub conversation_url: Option<String>,
}

impl NotifyConfig {
    /// The link for a conversation, when a template is configured.
    pub fn conversation_link(&self, inbox: &str, conversation: &str) -> Option<String> {
        self.conversation_url.as_ref().map(|t| {
            t.replace("{conversation}", conversation)
                .replace("{inbox}", inbox)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
    /// Empty: every inbox.
    pub inboxes: Vec<String>,
    pub timeout: Duration,
    /// Message events carry the parsed message (the API's message detail), up to
    /// `message_max_bytes` of JSON: past it they carry only the link to it.
    pub include_message: bool,
    pub message_max_bytes: u64,
}

/// `message_max_bytes` when not set: a 100 KiB mail with its text and HTML fits; larger mail is
/// read from the API.
pub const DEFAULT_MESSAGE_MAX_BYTES: u64 = 256 * 1024;
/// The largest `message_max_bytes`: the size limit of a message, read twice (text and HTML).
pub const MAX_MESSAGE_MAX_BYTES: u64 = 64 * 1024 * 1024;

impl WebhookConfig {
    /// The URL as logs and recorded outcomes show it: scheme, host, port and path. Receivers
    /// put tokens in query strings (and userinfo), which must not end up in a log.
    pub fn url_for_logs(&self) -> String {
        url_for_logs(&self.url)
    }
}

/// `url` without its userinfo, query and fragment.
pub fn url_for_logs(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            )
        }
        Err(_) => "(invalid URL)".into(),
    }
}

impl WebhookConfig {
    pub fn wants(&self, event: &str, inbox: &str) -> bool {
        self.events.iter().any(|e| e == event)
            && (self.inboxes.is_empty() || self.inboxes.iter().any(|i| i == inbox))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundConfig {
    /// None: no outbound mail (notifications are logged only; `verify-from` is refused).
    pub relay: Option<RelayConfig>,
    pub outbox: OutboxConfig,
    pub notify: NotifyConfig,
    pub webhooks: Vec<WebhookConfig>,
}

/// A secret given inline or as a file. `Err(())`: an error was already recorded (so callers
/// do not add a second one saying it is missing).
pub(super) fn read_secret(
    errors: &mut Errors,
    path: &str,
    inline: &Option<String>,
    file: &Option<String>,
) -> Result<Option<String>, ()> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            errors.push(path, "give the secret inline or as a file, not both");
            Err(())
        }
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(f)) => match super::values::read_secret_file(f) {
            Ok(s) => Ok(Some(s.trim_end_matches(['\r', '\n']).to_string())),
            Err(e) => {
                errors.push(format!("{path}_file"), e);
                Err(())
            }
        },
        (None, None) => Ok(None),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_mailbox(address: &str) -> bool {
    super::split_address(address).is_some_and(|(l, d)| {
        !l.is_empty()
            && d.contains('.')
            && !address.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
    })
}

fn compile_relay(raw: &RawRelay, errors: &mut Errors) -> Option<RelayConfig> {
    let security = match raw.security.as_deref().unwrap_or("starttls") {
        "starttls" => RelaySecurity::StartTls,
        "tls" => RelaySecurity::Tls,
        "none" => RelaySecurity::None,
        other => {
            errors.push(
                "relay.security",
                format!("invalid value {other:?} (starttls, tls or none)"),
            );
            RelaySecurity::StartTls
        }
    };
    let host = raw.host.trim().to_string();
    if host.is_empty() || host.contains(char::is_whitespace) {
        errors.push("relay.host", format!("invalid host {:?}", raw.host));
    }
    let port = raw.port.unwrap_or(match security {
        RelaySecurity::Tls => 465,
        RelaySecurity::StartTls => 587,
        RelaySecurity::None => 25,
    });
    if port == 0 {
        errors.push("relay.port", "must be greater than 0");
    }
    let password = read_secret(errors, "relay.password", &raw.password, &raw.password_file);
    let credentials = match (&raw.username, password) {
        (_, Err(())) => None,
        (Some(u), Ok(Some(p))) => Some((u.clone(), p)),
        (None, Ok(None)) => None,
        (Some(_), Ok(None)) => {
            errors.push("relay.password", "username given without a password");
            None
        }
        (None, Ok(Some(_))) => {
            errors.push("relay.username", "password given without a username");
            None
        }
    };
    if credentials.is_some() && security == RelaySecurity::None && !is_loopback_host(&host) {
        errors.push(
            "relay.security",
            "credentials would cross the network in clear text: use \"starttls\" or \"tls\"",
        );
    }
    if !valid_mailbox(&raw.from) {
        errors.push("relay.from", format!("invalid address {:?}", raw.from));
    }
    Some(RelayConfig {
        host,
        port,
        security,
        credentials,
        from: raw.from.trim().to_string(),
        from_name: raw.from_name.clone().unwrap_or_else(|| "inbound".into()),
        timeout: errors.duration("relay.timeout", &raw.timeout, Duration::from_secs(30)),
        accept_invalid_certs: raw.accept_invalid_certs.unwrap_or(false),
    })
}

fn compile_outbox(raw: &RawOutbox, errors: &mut Errors) -> OutboxConfig {
    let d = OutboxConfig::default();
    let out = OutboxConfig {
        max_lifetime: errors.duration("outbox.max_lifetime", &raw.max_lifetime, d.max_lifetime),
        retry_initial: errors.duration("outbox.retry_initial", &raw.retry_initial, d.retry_initial),
        retry_max: errors.duration("outbox.retry_max", &raw.retry_max, d.retry_max),
        concurrency: errors.positive("outbox.concurrency", raw.concurrency, d.concurrency as u64)
            as usize,
        per_endpoint_concurrency: errors.positive(
            "outbox.per_endpoint_concurrency",
            raw.per_endpoint_concurrency,
            d.per_endpoint_concurrency as u64,
        ) as usize,
        poll_interval: errors.duration("outbox.poll_interval", &raw.poll_interval, d.poll_interval),
    };
    if out.retry_initial.is_zero() {
        errors.push("outbox.retry_initial", "must be greater than 0");
    }
    if out.retry_max < out.retry_initial {
        errors.push(
            "outbox.retry_max",
            "must not be shorter than outbox.retry_initial",
        );
    }
    if out.poll_interval.is_zero() {
        errors.push("outbox.poll_interval", "must be greater than 0");
    }
    out
}

fn compile_webhooks(
    raw: &[(String, RawWebhook)],
    inbox_ids: &[&str],
    errors: &mut Errors,
) -> Vec<WebhookConfig> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (path, w) in raw {
        if w.id.is_empty() || !seen.insert(w.id.clone()) {
            errors.push(
                format!("{path}.id"),
                format!("empty or duplicate webhook id {:?}", w.id),
            );
        }
        match url::Url::parse(&w.url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {}
            Ok(_) => errors.push(
                format!("{path}.url"),
                "must be an http:// or https:// URL with a host",
            ),
            // Not the URL itself: it may carry a token.
            Err(e) => errors.push(format!("{path}.url"), format!("invalid URL: {e}")),
        }
        let secret = read_secret(errors, &format!("{path}.secret"), &w.secret, &w.secret_file);
        match &secret {
            Err(()) => {}
            Ok(None) => errors.push(format!("{path}.secret"), "a signing secret is required"),
            Ok(Some(s)) if s.len() < 16 => {
                errors.push(format!("{path}.secret"), "must be at least 16 bytes")
            }
            _ => {}
        }
        let events = match &w.events {
            None => EVENTS.iter().map(|e| e.to_string()).collect(),
            Some(list) => {
                for (i, e) in list.iter().enumerate() {
                    if !EVENTS.contains(&e.as_str()) {
                        errors.push(
                            format!("{path}.events[{i}]"),
                            format!("unknown event {e:?} (one of {})", EVENTS.join(", ")),
                        );
                    }
                }
                list.clone()
            }
        };
        for (i, inbox) in w.inboxes.iter().enumerate() {
            if !inbox_ids.contains(&inbox.as_str()) {
                errors.push(
                    format!("{path}.inboxes[{i}]"),
                    format!("unknown inbox {inbox:?}"),
                );
            }
        }
        let include_message = w.include_message.unwrap_or(false);
        if w.message_max_bytes.is_some() && !include_message {
            errors.push(
                format!("{path}.message_max_bytes"),
                "only has a meaning with include_message = true",
            );
        }
        let message_max_bytes = errors.range(
            &format!("{path}.message_max_bytes"),
            w.message_max_bytes,
            1024,
            MAX_MESSAGE_MAX_BYTES,
            DEFAULT_MESSAGE_MAX_BYTES,
        );
        out.push(WebhookConfig {
            include_message,
            message_max_bytes,
            id: w.id.clone(),
            url: w.url.clone(),
            secret: secret.ok().flatten().unwrap_or_default(),
            events,
            inboxes: w.inboxes.clone(),
            timeout: errors.duration(
                &format!("{path}.timeout"),
                &w.timeout,
                Duration::from_secs(10),
            ),
        });
    }
    out
}

pub(super) fn compile(
    relay: Option<&RawRelay>,
    outbox: &RawOutbox,
    notify: &RawNotify,
    webhooks: &[(String, RawWebhook)],
    inbox_ids: &[&str],
    errors: &mut Errors,
) -> OutboundConfig {
    if let Some(url) = &notify.conversation_url {
        if !url.starts_with("https://") && !url.starts_with("http://") {
            errors.push(
                "notify.conversation_url",
                "must be an http:// or https:// URL template",
            );
        }
    }
    OutboundConfig {
        relay: relay.and_then(|r| compile_relay(r, errors)),
        outbox: compile_outbox(outbox, errors),
        notify: NotifyConfig {
            conversation_url: notify.conversation_url.clone(),
        },
        webhooks: compile_webhooks(webhooks, inbox_ids, errors),
    }
}
