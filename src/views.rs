//! Stored records -> the JSON shapes the outside reads: the HTTP API's answers, the CLI's
//! `--json` output and the webhook payloads all serialize these structs, so one object has one
//! set of field names wherever it shows (`tests/it/vocabulary.rs` compares them). The shapes are
//! their own, so the store's records can change without breaking clients.
//!
//! The vocabulary: every field is always present (`null` when there is no value, `[]` for an
//! empty list; never a missing key); a time is RFC 3339 in UTC (`received_at`) with its Unix
//! milliseconds twin (`received_at_ms`), both everywhere the time shows; sizes are bytes
//! (`_bytes`); a message is named by its queue id (`id`, or `message` from another object).
//! Each struct has a schema of the same name in `api/openapi.json`; the API tests validate every
//! answer against it.

use serde::Serialize;

use crate::config::inboxes::{FromNameMode, InboxSource};
use crate::config::raw::{RawInbox, RawRule};
use crate::config::routes::User;
use crate::config::InboxConfig;
use crate::store::model::{
    AttributionRecord, Contact, Conversation, InboxState, RoutingRecord, Ticket, VerificationRecord,
};
use crate::store::model::{AuthRecord, ConversationStatus, InboxLifecycle, ThreadDecision};
use crate::store::model::{DefinitionStatus, InboxDefinition};
use crate::store::{MessageRecord, BODY_EXPIRED};
use crate::util::rfc3339;

/// A time as RFC 3339, `null` when there is none (a zero time is none).
fn time(ms: Option<u64>) -> Option<String> {
    ms.filter(|&t| t > 0).map(rfc3339)
}

/// A list, with the cursor of the next page (`null` on the last page).
#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// A list that is never paged (it comes from the config).
#[derive(Serialize)]
pub struct List<T> {
    pub items: Vec<T>,
}

#[derive(Serialize)]
pub struct Inbox {
    pub id: String,
    pub name: Option<String>,
    pub address: String,
    pub aliases: Vec<String>,
    /// The team's own mailbox (or `@domain`) whose forwarded mail connects the inbox.
    pub connected_address: Option<String>,
    /// "pending", "connected" (the setup state, `InboxLifecycle`) or "retired" (an API inbox
    /// that receives nothing any more).
    pub state: &'static str,
    /// The address the team's provider forwards to (locked once connected).
    pub forwarding_address: String,
    pub message_count: u64,
    pub connected_at: Option<String>,
    pub connected_at_ms: Option<u64>,
    pub evidence: Option<String>,
    pub latest_verification: Option<Verification>,
    /// "config" (read-only through the API) or "api".
    pub source: InboxSource,
    /// Whether the address can no longer change (connected, or finished).
    pub locked: bool,
    pub finished_at: Option<String>,
    pub finished_at_ms: Option<u64>,
    pub retired_at: Option<String>,
    pub retired_at_ms: Option<u64>,
    pub tenant: Option<String>,
    pub local: Option<String>,
    pub from_name: Option<String>,
    pub from_name_mode: FromNameMode,
    pub from_address: Option<String>,
    /// Whether `from_address` was proven with a one-time code.
    pub from_address_verified: bool,
    pub signature: Option<String>,
    pub admins: Vec<String>,
    pub tickets: TicketSettings,
    pub auto_assign: Option<AutoAssign>,
    /// The routing rules as given (the config file's rule language).
    pub rule: Vec<RawRule>,
}

#[derive(Serialize)]
pub struct TicketSettings {
    pub enabled: bool,
    pub pipeline: String,
    pub stage: String,
    pub priority: String,
}

#[derive(Serialize)]
pub struct AutoAssign {
    pub enabled: bool,
    pub strategy: String,
    pub users: Vec<String>,
    pub teams: Vec<String>,
}

impl Inbox {
    /// An inbox from its spec (the file's table or the API's definition), its compiled form
    /// when it receives mail, its API definition if it has one, and its setup state.
    pub fn new(
        spec: &RawInbox,
        cfg: Option<&InboxConfig>,
        def: Option<&InboxDefinition>,
        state: Option<InboxState>,
    ) -> Inbox {
        let st = state.unwrap_or_default();
        let address = cfg
            .map(|c| c.address.clone())
            .or_else(|| spec.address.clone())
            .unwrap_or_default();
        let retired = def.is_some_and(|d| d.status == DefinitionStatus::Retired);
        let finished_at_ms = def.and_then(|d| d.finished_at);
        let tickets = crate::config::routes::TicketDefaults::from_raw(spec.tickets.as_ref());
        let from_address = cfg
            .and_then(|c| c.from_address.clone())
            .or_else(|| spec.from_address.clone());
        Inbox {
            id: spec.id.clone(),
            name: spec.name.clone(),
            aliases: cfg
                .map(|c| c.aliases.clone())
                .unwrap_or_else(|| spec.aliases.clone()),
            connected_address: cfg
                .and_then(|c| c.connected_address.clone())
                .or_else(|| spec.connected_address.clone()),
            state: if retired {
                "retired"
            } else {
                st.state.as_str()
            },
            forwarding_address: if st.address.is_empty() {
                address.clone()
            } else {
                st.address.clone()
            },
            address,
            message_count: st.messages,
            connected_at: time(st.connected_at),
            connected_at_ms: st.connected_at,
            evidence: st.evidence,
            latest_verification: st.latest_verification.map(Verification::from),
            source: if def.is_some() {
                InboxSource::Api
            } else {
                InboxSource::Config
            },
            locked: st.state == InboxLifecycle::Connected || finished_at_ms.is_some() || retired,
            finished_at: time(finished_at_ms),
            finished_at_ms,
            retired_at: time(def.and_then(|d| d.retired_at)),
            retired_at_ms: def.and_then(|d| d.retired_at),
            tenant: spec.tenant.clone(),
            local: spec.local.clone(),
            from_name: spec.from_name.clone(),
            from_name_mode: cfg.map(|c| c.from_name_mode).unwrap_or_default(),
            from_address_verified: from_address
                .as_ref()
                .is_some_and(|a| st.verified_from.contains(a)),
            from_address,
            signature: spec.signature.clone(),
            admins: spec.admins.clone(),
            tickets: TicketSettings {
                enabled: tickets.enabled,
                pipeline: tickets.pipeline,
                stage: tickets.stage,
                priority: tickets.priority,
            },
            auto_assign: spec.auto_assign.as_ref().map(|a| AutoAssign {
                enabled: a.enabled.unwrap_or(true),
                strategy: a.strategy.clone().unwrap_or_else(|| "round_robin".into()),
                users: a.users.clone(),
                teams: a.teams.clone(),
            }),
            rule: spec.rule.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct Verification {
    pub provider: String,
    pub code: Option<String>,
    pub link: Option<String>,
    /// The address the provider asks to confirm.
    pub address: Option<String>,
    /// The message that carried it.
    pub message: Option<String>,
    pub received_at: Option<String>,
    pub received_at_ms: Option<u64>,
}

impl From<VerificationRecord> for Verification {
    fn from(v: VerificationRecord) -> Verification {
        Verification {
            provider: v.provider,
            code: v.code,
            link: v.link,
            address: v.address,
            message: Some(v.queue_id).filter(|q| !q.is_empty()),
            received_at: time(Some(v.received_at)),
            received_at_ms: Some(v.received_at).filter(|&t| t > 0),
        }
    }
}

#[derive(Serialize)]
pub struct ConversationSummary {
    pub id: String,
    pub inbox: String,
    pub subject: String,
    /// The original sender who started it.
    pub contact: String,
    pub status: ConversationStatus,
    pub assignee: Option<String>,
    pub team: Option<String>,
    pub ticket: Option<String>,
    pub message_count: usize,
    pub created_at: String,
    pub created_at_ms: u64,
    pub updated_at: String,
    pub updated_at_ms: u64,
}

impl From<Conversation> for ConversationSummary {
    fn from(c: Conversation) -> ConversationSummary {
        ConversationSummary {
            message_count: c.message_count as usize,
            id: c.id,
            inbox: c.inbox,
            subject: c.subject,
            contact: c.contact,
            status: c.status,
            assignee: c.assignee,
            team: c.team,
            ticket: c.ticket,
            created_at: rfc3339(c.created_at),
            created_at_ms: c.created_at,
            updated_at: rfc3339(c.updated_at),
            updated_at_ms: c.updated_at,
        }
    }
}

#[derive(Serialize)]
pub struct ConversationDetail {
    pub conversation: ConversationSummary,
    /// One page of its messages, in arrival order.
    pub messages: Vec<MessageSummary>,
    /// Pass as `cursor` for the next page of messages; `null` after the last.
    pub messages_next_cursor: Option<String>,
    pub ticket: Option<TicketView>,
    pub contact: Option<ContactSummary>,
}

#[derive(Serialize)]
pub struct TicketView {
    pub id: String,
    pub conversation: String,
    pub inbox: String,
    pub pipeline: String,
    pub stage: String,
    pub priority: String,
    /// The assignee when the ticket was opened.
    pub owner: Option<String>,
    pub created_at: String,
    pub created_at_ms: u64,
}

impl From<Ticket> for TicketView {
    fn from(t: Ticket) -> TicketView {
        TicketView {
            id: t.id,
            conversation: t.conversation,
            inbox: t.inbox,
            pipeline: t.pipeline,
            stage: t.stage,
            priority: t.priority,
            owner: t.owner,
            created_at: rfc3339(t.created_at),
            created_at_ms: t.created_at,
        }
    }
}

#[derive(Serialize)]
pub struct ContactSummary {
    pub email: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub conversation_count: u64,
    pub first_seen: String,
    pub first_seen_ms: u64,
    pub last_seen: String,
    pub last_seen_ms: u64,
}

impl From<Contact> for ContactSummary {
    fn from(c: Contact) -> ContactSummary {
        ContactSummary {
            email: c.email,
            name: c.name,
            owner: c.owner,
            conversation_count: c.conversation_count,
            first_seen: rfc3339(c.first_seen),
            first_seen_ms: c.first_seen,
            last_seen: rfc3339(c.last_seen),
            last_seen_ms: c.last_seen,
        }
    }
}

#[derive(Serialize)]
pub struct ContactDetail {
    #[serde(flatten)]
    pub contact: ContactSummary,
    /// Conversation ids, oldest first.
    pub conversations: Vec<String>,
}

#[derive(Serialize)]
pub struct Attribution {
    pub email: String,
    pub name: Option<String>,
    /// How it was decided: "header_from", "manual_forward:yahoo" (the layout that matched),
    /// "x_original_from", ...
    pub method: String,
    pub forwarded_by: Option<String>,
}

impl From<AttributionRecord> for Attribution {
    fn from(a: AttributionRecord) -> Attribution {
        Attribution {
            email: a.email,
            name: a.name,
            method: a.method,
            forwarded_by: a.forwarded_by,
        }
    }
}

/// What lists show of a message.
#[derive(Serialize)]
pub struct MessageSummary {
    pub id: String,
    pub received_at: String,
    pub received_at_ms: u64,
    pub mail_from: String,
    pub from: String,
    pub subject: String,
    /// The inboxes it was sent to.
    pub inboxes: Vec<String>,
    pub attribution: Option<Attribution>,
    pub quarantined: bool,
    pub automatic: Option<String>,
    pub size_bytes: u64,
    pub attachment_count: usize,
    /// "available" or "expired" (removed by retention).
    pub body: &'static str,
}

fn body_state(r: &MessageRecord) -> &'static str {
    if r.body_location == BODY_EXPIRED {
        "expired"
    } else {
        "available"
    }
}

fn inboxes_of(r: &MessageRecord) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for rc in &r.rcpt {
        if !out.contains(&rc.inbox) {
            out.push(rc.inbox.clone());
        }
    }
    out
}

impl From<MessageRecord> for MessageSummary {
    fn from(r: MessageRecord) -> MessageSummary {
        MessageSummary {
            body: body_state(&r),
            inboxes: inboxes_of(&r),
            attachment_count: r.attachments.len(),
            id: r.queue_id,
            received_at: rfc3339(r.received_at),
            received_at_ms: r.received_at,
            mail_from: r.mail_from,
            from: r.from,
            subject: r.subject,
            attribution: r.attribution.map(Attribution::from),
            quarantined: r.quarantined,
            automatic: r.automatic,
            size_bytes: r.size,
        }
    }
}

/// What reading a stored body gives (`pipeline::body::read`): the parts of a message an
/// integrator would otherwise parse MIME for. Built on read, never stored.
#[derive(Debug, Clone, Default)]
pub struct Content {
    pub text: Option<String>,
    pub html: Option<String>,
    pub stripped_text: Option<String>,
    pub headers: Vec<Header>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub date: Option<String>,
    /// In the order of the record's attachment list.
    pub attachments: Vec<AttachmentPart>,
}

/// One header field: the name as written, the value unfolded with RFC 2047 encoded words
/// decoded (see `pipeline::body`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// An address of To, Cc or Reply-To (group members are listed as addresses).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mailbox {
    pub name: Option<String>,
    pub email: String,
}

/// What the MIME part of an attachment says about how it is shown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachmentPart {
    /// SHA-256 of the decoded content: proves the part is the record's attachment.
    pub sha256: String,
    /// Content-ID without its angle brackets.
    pub content_id: Option<String>,
    /// Content-Disposition's type in lower case ("inline", "attachment").
    pub disposition: Option<String>,
    pub inline: bool,
}

/// Everything the API tells about one message: the record, and the content read from its
/// stored body (`null`s once retention has removed the body).
#[derive(Serialize)]
pub struct MessageDetail {
    pub id: String,
    pub received_at: String,
    pub received_at_ms: u64,
    pub client_ip: String,
    pub client_port: u16,
    pub helo: String,
    /// The envelope sender; empty for the null sender `<>`.
    pub mail_from: String,
    pub rcpt: Vec<Recipient>,
    pub size_bytes: u64,
    /// SHA-256 of the body as received, hex.
    pub sha256: String,
    /// "available" or "expired".
    pub body: &'static str,
    pub tls: Option<String>,
    pub body_type: String,
    pub smtputf8: bool,
    pub subject: String,
    pub from: String,
    pub message_id: String,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub quarantined: bool,
    pub automatic: Option<String>,
    pub attribution: Option<Attribution>,
    pub auth: Option<Auth>,
    pub attachments: Vec<Attachment>,
    pub routing: Vec<Routing>,
    pub verification: Option<Verification>,
    /// The Date field, RFC 3339 in UTC; `null` without one (or without the body).
    pub date: Option<String>,
    pub to: Option<Vec<Mailbox>>,
    pub cc: Option<Vec<Mailbox>>,
    pub reply_to: Option<Vec<Mailbox>>,
    pub headers: Option<Vec<Header>>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub stripped_text: Option<String>,
}

impl From<MessageRecord> for MessageDetail {
    fn from(r: MessageRecord) -> MessageDetail {
        MessageDetail::new(r, None)
    }
}

impl MessageDetail {
    /// The record with the content read from its body; `content` is `None` when the body is
    /// gone (or was not read): the content fields are then `null`.
    pub fn new(r: MessageRecord, content: Option<Content>) -> MessageDetail {
        let parts = content.as_ref().map(|c| c.attachments.as_slice());
        MessageDetail {
            body: body_state(&r),
            id: r.queue_id,
            received_at: rfc3339(r.received_at),
            received_at_ms: r.received_at,
            client_ip: r.client_ip,
            client_port: r.client_port,
            helo: r.helo,
            mail_from: r.mail_from,
            rcpt: r
                .rcpt
                .into_iter()
                .map(|rc| Recipient {
                    address: rc.address,
                    inbox: rc.inbox,
                    tag: rc.tag,
                })
                .collect(),
            size_bytes: r.size,
            sha256: r.sha256,
            tls: r.tls,
            body_type: r.body_type,
            smtputf8: r.smtputf8,
            subject: r.subject,
            from: r.from,
            message_id: r.message_id,
            in_reply_to: r.in_reply_to,
            references: r.references,
            quarantined: r.quarantined,
            automatic: r.automatic,
            attribution: r.attribution.map(Attribution::from),
            auth: r.auth.map(Auth::from),
            attachments: r
                .attachments
                .into_iter()
                .enumerate()
                .map(|(index, a)| {
                    // The part at the same index, when its content is the one recorded.
                    let part = parts
                        .and_then(|p| p.get(index))
                        .filter(|p| p.sha256 == a.sha256);
                    Attachment {
                        index,
                        name: a.name,
                        content_type: a.content_type,
                        size_bytes: a.size,
                        sha256: a.sha256,
                        content_id: part.and_then(|p| p.content_id.clone()),
                        disposition: part.and_then(|p| p.disposition.clone()),
                        inline: part.map(|p| p.inline),
                    }
                })
                .collect(),
            routing: r.routing.into_iter().map(Routing::from).collect(),
            verification: r.verification.map(Verification::from),
            date: content.as_ref().and_then(|c| c.date.clone()),
            to: content.as_ref().map(|c| c.to.clone()),
            cc: content.as_ref().map(|c| c.cc.clone()),
            reply_to: content.as_ref().map(|c| c.reply_to.clone()),
            headers: content.as_ref().map(|c| c.headers.clone()),
            text: content.as_ref().and_then(|c| c.text.clone()),
            html: content.as_ref().and_then(|c| c.html.clone()),
            stripped_text: content.and_then(|c| c.stripped_text),
        }
    }
}

#[derive(Serialize)]
pub struct Recipient {
    pub address: String,
    pub inbox: String,
    /// The `+tag` of `local+tag@domain`.
    pub tag: Option<String>,
}

#[derive(Serialize)]
pub struct Attachment {
    /// Its number in `GET /v1/messages/{id}/attachments/{index}`.
    pub index: usize,
    pub name: String,
    pub content_type: String,
    pub size_bytes: u64,
    /// SHA-256 of the decoded content, hex.
    pub sha256: String,
    /// Content-ID without angle brackets (what `cid:` URLs in the HTML name); `null` without.
    pub content_id: Option<String>,
    /// Content-Disposition's type, lower case; `null` when the part has none (or the body is
    /// gone).
    pub disposition: Option<String>,
    /// Shown within the message rather than offered as a file: disposition `inline`, or no
    /// disposition and a Content-ID. `null` when the body is gone.
    pub inline: Option<bool>,
}

#[derive(Serialize)]
pub struct Auth {
    /// "checked", or "skipped" (trusted network, checks disabled).
    pub status: String,
    pub spf_helo: String,
    pub spf_mail_from: String,
    pub spf_domain: String,
    pub dkim: Vec<Dkim>,
    pub arc: String,
    pub arc_sealer: Option<String>,
    pub dmarc: String,
    pub dmarc_domain: String,
    pub dmarc_policy: String,
    pub dmarc_pct: u8,
    /// accept, quarantine, reject, tempfail.
    pub verdict: String,
    pub reason: String,
    pub override_by: Option<String>,
}

#[derive(Serialize)]
pub struct Dkim {
    pub result: String,
    pub domain: String,
    pub selector: String,
    pub error: Option<String>,
}

impl From<AuthRecord> for Auth {
    fn from(a: AuthRecord) -> Auth {
        Auth {
            status: a.status,
            spf_helo: a.spf_helo,
            spf_mail_from: a.spf_mail_from,
            spf_domain: a.spf_domain,
            dkim: a
                .dkim
                .into_iter()
                .map(|d| Dkim {
                    result: d.result,
                    domain: d.domain,
                    selector: d.selector,
                    error: Some(d.error).filter(|e| !e.is_empty()),
                })
                .collect(),
            arc: a.arc,
            arc_sealer: a.arc_sealer,
            dmarc: a.dmarc,
            dmarc_domain: a.dmarc_domain,
            dmarc_policy: a.dmarc_policy,
            dmarc_pct: a.dmarc_pct,
            verdict: a.verdict,
            reason: a.reason,
            override_by: a.override_by,
        }
    }
}

#[derive(Serialize)]
pub struct Routing {
    pub inbox: String,
    pub conversation: String,
    /// "new", "joined" or "duplicate".
    pub thread: ThreadDecision,
    pub thread_reason: String,
    pub duplicate_of: Option<String>,
    pub rule: Option<String>,
    pub assignee: Option<String>,
    pub team: Option<String>,
    /// How the assignee was chosen ("round_robin", "owner", "kept", "unassigned", ...).
    pub assignment: String,
    pub ticket: Option<String>,
}

impl From<RoutingRecord> for Routing {
    fn from(r: RoutingRecord) -> Routing {
        Routing {
            inbox: r.inbox,
            conversation: r.conversation,
            thread: r.thread,
            thread_reason: r.thread_reason,
            duplicate_of: r.duplicate_of,
            rule: r.rule,
            assignee: r.assignee,
            team: r.team,
            assignment: r.assignment,
            ticket: r.ticket,
        }
    }
}

#[derive(Serialize)]
pub struct UserView {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// In force now: the runtime setting if there is one, else the config's.
    pub available: bool,
    pub available_configured: bool,
    /// Set through `PUT /v1/users/{id}/availability`; `null` when never set.
    pub available_override: Option<bool>,
    pub open_conversations: i64,
}

impl UserView {
    /// `available` is what `routing::available` says; the other two show why.
    pub fn new(
        user: &User,
        available: bool,
        available_override: Option<bool>,
        open: i64,
    ) -> UserView {
        UserView {
            id: user.id.clone(),
            name: user.name.clone(),
            email: user.email.clone(),
            available,
            available_configured: user.available,
            available_override,
            open_conversations: open,
        }
    }
}

/// An item waiting in the outbox, as `inbound outbox --json` lists it (the outbox has no API
/// endpoint; its shape follows the same vocabulary).
#[derive(Serialize)]
pub struct OutboxEntry {
    /// Also the `Inbound-Delivery` header of a webhook call.
    pub id: String,
    /// "relay", or "webhook:<endpoint id>".
    pub destination: String,
    /// "webhook message.received to app", "mail assignment_notice to …".
    pub what: String,
    pub attempts: u32,
    pub created_at: String,
    pub created_at_ms: u64,
    pub next_attempt_at: String,
    pub next_attempt_at_ms: u64,
    pub last_error: Option<String>,
}
