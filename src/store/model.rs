//! The records the store keeps: messages, conversations, contacts, tickets, the
//! per-inbox routing outcome and the sender-authentication results recorded on each message. Plain data; the decisions that create and
//! update them live in `pipeline::threading` and `pipeline::routing`.

use serde::{Deserialize, Serialize};

/// Whether a conversation still wants attention.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    #[default]
    Open,
    Closed,
}

impl ConversationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationStatus::Open => "open",
            ConversationStatus::Closed => "closed",
        }
    }

    /// The status named `s` ("open", "closed").
    pub fn parse(s: &str) -> Option<ConversationStatus> {
        match s {
            "open" => Some(ConversationStatus::Open),
            "closed" => Some(ConversationStatus::Closed),
            _ => None,
        }
    }
}

impl std::fmt::Display for ConversationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
    pub inbox: String,
    pub subject: String,
    /// The original sender who started it (attributed contact).
    pub contact: String,
    pub created_at: u64,
    pub updated_at: u64,
    pub status: ConversationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// How many messages it holds. Their queue ids are in the store's conversation index
    /// (`Store::conversation_messages`), so adding one costs the same however long the thread.
    #[serde(default)]
    pub message_count: u64,
    /// Queue ids as records written before the index kept them; moved into the index when the
    /// store opens, and empty ever after.
    #[serde(default, rename = "messages", skip_serializing_if = "Vec::is_empty")]
    pub legacy_messages: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contact {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub first_seen: u64,
    pub last_seen: u64,
    /// How many conversations they started or took part in (the ids are in the store's
    /// contact-conversations index: `Store::contact_conversations`).
    #[serde(default)]
    pub conversation_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ticket {
    pub id: String,
    pub conversation: String,
    pub inbox: String,
    pub pipeline: String,
    pub stage: String,
    pub priority: String,
    /// The assignee at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub created_at: u64,
}

/// How a message found its conversation.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ThreadDecision {
    /// It started one.
    #[default]
    New,
    /// It continues one (by In-Reply-To/References).
    Joined,
    /// Its Message-ID was already received: it points at the first copy's conversation.
    Duplicate,
    /// A provider's forwarding confirmation: setup mail, in no conversation.
    Setup,
}

impl ThreadDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadDecision::New => "new",
            ThreadDecision::Joined => "joined",
            ThreadDecision::Duplicate => "duplicate",
            ThreadDecision::Setup => "setup",
        }
    }
}

impl std::fmt::Display for ThreadDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a message in one inbox: thread decision, rule, assignment, ticket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoutingRecord {
    pub inbox: String,
    pub conversation: String,
    pub thread: ThreadDecision,
    /// How the thread decision was made, e.g. "in-reply-to <id>", "forward starts a new conversation".
    pub thread_reason: String,
    /// Queue id of the first copy when the thread decision is `Duplicate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// How the assignee was chosen: "kept" (conversation already assigned), "round_robin",
    /// "least_open", "owner", "owner_fallback", "unassigned", "automatic" (auto-replies are not
    /// routed), "verification".
    pub assignment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The message reopened its closed conversation (a customer wrote again).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reopened: bool,
}

/// An attachment as listed on the message record; its bytes stay in the stored message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentInfo {
    pub name: String,
    pub content_type: String,
    pub size: u64,
    /// SHA-256 of the decoded content, hex.
    pub sha256: String,
}

/// Who a message is attributed to (the original author, not the forwarding mailbox) and how
/// that was decided, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttributionRecord {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// e.g. "header_from", "manual_forward:outlook" (the layout that matched; older records say
    /// "forwarded_inline"), "x_original_from", "srs_envelope".
    pub method: String,
    /// The mailbox that forwarded it, when it was forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_by: Option<String>,
}

/// Where an inbox is in its setup.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum InboxLifecycle {
    /// Waiting for the team's first forwarded message (or an operator's confirmation).
    #[default]
    Pending,
    /// Forwarding works: the address is locked.
    Connected,
}

impl InboxLifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            InboxLifecycle::Pending => "pending",
            InboxLifecycle::Connected => "connected",
        }
    }
}

impl std::fmt::Display for InboxLifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inbox's setup state. `pending` until the team's first forwarded message arrives (or an
/// operator confirms), then `connected`: from then on its forwarding address is locked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboxState {
    pub id: String,
    pub state: InboxLifecycle,
    /// The forwarding address the team's provider sends to (locked once connected).
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<u64>,
    /// What showed the connection: "forwarded message <queue id> from ..." or "confirmed by operator".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    pub messages: u64,
    /// The newest provider confirmation (code, link) received, for the team to finish setup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_verification: Option<VerificationRecord>,
    /// From-addresses proven by `inboxes confirm-from` (lower case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verified_from: Vec<String>,
    /// The pending from-address verification, if one was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_verification: Option<FromVerification>,
}

impl InboxState {
    /// The state of an inbox nothing has been recorded for yet.
    pub fn pending(id: &str, address: &str) -> InboxState {
        InboxState {
            id: id.to_string(),
            state: InboxLifecycle::Pending,
            address: address.to_string(),
            ..Default::default()
        }
    }
}

/// What a user's runtime state overrides of the config (set through the API).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserState {
    /// Availability set at run time; `None`: the config's `available` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<bool>,
    /// Whatever else another version stored for the user, kept as it was.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// A one-time code sent to prove the team controls a from-address. Only a salted hash of the
/// code is stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FromVerification {
    pub address: String,
    /// Hex random salt and hex SHA-256(salt ‖ code).
    pub salt: String,
    pub code_sha256: String,
    pub sent_at: u64,
    pub expires_at: u64,
    /// Wrong codes tried against this one; at the limit it is void.
    pub failed_attempts: u32,
    /// Send times (unix ms) within the rate-limit window, newest last.
    #[serde(default)]
    pub recent_sends: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerificationRecord {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub queue_id: String,
    #[serde(default)]
    pub received_at: u64,
}

/// What the checks found, as stored on the message record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthRecord {
    /// "checked", or "skipped" (trusted network / checks disabled).
    pub status: String,
    pub spf_helo: String,
    pub spf_mail_from: String,
    /// Domain the MAIL FROM SPF check ran for.
    pub spf_domain: String,
    pub dkim: Vec<DkimRecord>,
    pub arc: String,
    /// `d=` of the newest ARC seal, when there is a chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc_sealer: Option<String>,
    pub dmarc: String,
    /// RFC 5322 From domain DMARC was evaluated for.
    pub dmarc_domain: String,
    /// Policy published by that domain (after sp/np and t= handling): none, quarantine, reject.
    pub dmarc_policy: String,
    /// pct= of the record (RFC 7489 §6.3), 100 when absent.
    pub dmarc_pct: u8,
    /// accept, quarantine, reject, tempfail.
    pub verdict: String,
    pub reason: String,
    /// Why a DMARC failure was forgiven: `arc:<sealer>` or `trusted-forwarder:<what>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_by: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DkimRecord {
    pub result: String,
    pub domain: String,
    pub selector: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// What a recipient of an accepted message resolved to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RcptRecord {
    pub address: String,
    pub inbox: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// Everything we keep about one accepted message, except its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    pub queue_id: String,
    /// Unix milliseconds.
    pub received_at: u64,
    /// The client address after PROXY protocol, as every check sees it.
    pub client_ip: String,
    pub client_port: u16,
    pub helo: String,
    /// Reverse path; empty for the null sender `<>`.
    pub mail_from: String,
    pub rcpt: Vec<RcptRecord>,
    /// Body size in bytes as received (after dot-unstuffing).
    pub size: u64,
    /// SHA-256 of the body as received, hex.
    pub sha256: String,
    /// "inline" (inside the database), "spool" (`spool/msg/<queue_id>.eml`) or "expired" (removed
    /// by retention; the record stays).
    pub body_location: String,
    /// TLS protocol used by the session, if any ("TLSv1_3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// "7BIT", "8BITMIME" or "BINARYMIME" (BDAT) as declared at MAIL.
    pub body_type: String,
    pub smtputf8: bool,
    /// Trace header fields we prepend (Received:, and later Authentication-Results:). Kept apart so
    /// the spooled body stays byte-identical to what the client sent.
    pub trace_headers: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub message_id: String,
    /// Sender authentication results and verdict; `None` for records from before the checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthRecord>,
    /// Stored but held back from the inbox by policy (see `auth.reason`).
    #[serde(default)]
    pub quarantined: bool,
    /// The original sender this message is attributed to, and how that was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<AttributionRecord>,
    /// Why the message counts as automatic (bounce, auto-reply), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_reply_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// A provider's forwarding confirmation (code, link) recognised in this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationRecord>,
    /// Per inbox: conversation, thread decision, rule, assignee, ticket.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<RoutingRecord>,
    /// Retention cleared the SMTP session facts (client address, HELO, TLS, envelope sender,
    /// trace header fields): their empty values mean "no longer kept", not "there were none".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session_metadata_cleared: bool,
}

impl MessageRecord {
    /// Forget what the SMTP session told us about the client: its address and port, HELO, TLS,
    /// the envelope sender (and the SPF domain taken from it), and our trace header fields, which
    /// repeat them. What the message is and where it went (recipients, headers summary,
    /// attribution, routing, body) stays.
    pub fn clear_session_metadata(&mut self) {
        self.client_ip.clear();
        self.client_port = 0;
        self.helo.clear();
        self.tls = None;
        self.mail_from.clear();
        self.trace_headers.clear();
        if let Some(auth) = self.auth.as_mut() {
            auth.spf_domain.clear();
        }
        self.session_metadata_cleared = true;
    }
}

/// `MessageRecord::body_location` of a message whose body retention removed.
pub const BODY_EXPIRED: &str = "expired";

/// Something that must leave the server (a notification mail, a webhook call), written in the
/// same transaction as the event that causes it and delivered by `notify::worker`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxItem {
    /// ULID: creation order. Also the idempotency key a receiver can use.
    pub id: String,
    /// Unix ms.
    pub created_at: u64,
    pub attempts: u32,
    /// Unix ms of the next attempt (its place in the store's delivery schedule).
    pub next_attempt_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub delivery: Delivery,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delivery {
    /// A mail through the relay. `message` is the complete RFC 5322 text, rendered when the
    /// event happened (its Message-ID is derived from the item id, so a copy delivered twice is
    /// recognisably the same message).
    Mail {
        /// Why: "verification_notice", "from_verification", "assignment_notice".
        purpose: String,
        to: Vec<String>,
        message: String,
    },
    /// A webhook event for one configured endpoint.
    Webhook {
        endpoint: String,
        event: String,
        /// The event's id: the same for every endpoint and every retry (idempotency key).
        event_id: String,
        /// The JSON body, as sent.
        body: String,
    },
}

impl OutboxItem {
    /// Where it goes, for per-destination limits: a webhook endpoint's id, or the relay.
    pub fn destination(&self) -> String {
        match &self.delivery {
            Delivery::Mail { .. } => "relay".into(),
            Delivery::Webhook { endpoint, .. } => format!("webhook:{endpoint}"),
        }
    }

    pub fn describe(&self) -> String {
        match &self.delivery {
            Delivery::Mail { purpose, to, .. } => format!("mail {purpose} to {}", to.join(", ")),
            Delivery::Webhook {
                endpoint, event, ..
            } => format!("webhook {event} to {endpoint}"),
        }
    }
}

/// An inbox created through the API, as kept: what the team asked for (the same fields as an
/// `[[inbox]]` table, address made) and where it is in its life.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxDefinition {
    pub spec: crate::config::raw::RawInbox,
    pub status: DefinitionStatus,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    /// "Connect & finish" was pressed: the address is locked from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
}

impl InboxDefinition {
    /// The canonical address (made and checked before it was stored).
    pub fn address(&self) -> &str {
        self.spec.address.as_deref().unwrap_or_default()
    }
}

/// Where an API-created inbox is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionStatus {
    /// Receives mail (pending or connected: `InboxState` tells).
    Active,
    /// Receives nothing any more; its id and address stay reserved for good.
    Retired,
}
