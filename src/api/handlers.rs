//! One function per endpoint: check the input, read the store (on the blocking pool: sled reads
//! and flushes touch disk), shape the answer with `views`. State changes are calls into
//! `crate::actions`, never store writes made here.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, JsonBody, PathParams, Query};
use super::params::{
    cursor_in, cursor_out, in_window, inbox_filter, limit, newest_first, page, time_window,
};
use super::ApiState;
use crate::actions::{self, Assignee};
use crate::config::Config;
use crate::pipeline::routing;
use crate::store::model::ConversationStatus;
use crate::store::{MessageRecord, Store, BODY_EXPIRED};
use crate::views;

pub(super) type St = State<Arc<ApiState>>;
pub(super) type Json<T> = Result<axum::Json<T>, ApiError>;

/// Records one page may read past its filter before it answers with what it has (and a cursor):
/// a filter that matches little must not make one request read the whole store.
const MAX_SCAN: usize = 10_000;

/// Run store work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("request task: {e}"))))
}

pub(super) fn ok<T>(v: T) -> Json<T> {
    Ok(axum::Json(v))
}

pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// The MTA-STS policy (RFC 8461 §3.2) for the hosted domains: senders that support MTA-STS then
/// deliver only over TLS to `server.hostname` (in "enforce" mode). Senders fetch it from
/// `https://mta-sts.<domain>/.well-known/mta-sts.txt`: put a TLS proxy with that name's
/// certificate in front of this endpoint. 404 unless `api.mta_sts` is set.
pub async fn mta_sts(State(s): St) -> Response {
    let config = s.ctx.config();
    let Some(mode) = config.api.mta_sts else {
        return (
            StatusCode::NOT_FOUND,
            "no MTA-STS policy configured (api.mta_sts)\n",
        )
            .into_response();
    };
    // A day while testing, a week once enforced (RFC 8461 §3.2 allows up to a year; a short
    // max_age lets a mistake expire quickly).
    let max_age = if mode == "enforce" { 604_800 } else { 86_400 };
    let body = format!(
        "version: STSv1\r\nmode: {mode}\r\nmx: {}\r\nmax_age: {max_age}\r\n",
        config.hostname
    );
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// Ready to take traffic: 200 with every check, or 503 with what failed.
pub async fn readyz(State(s): St) -> Response {
    let r = crate::context::health::readiness(&s.ctx).await;
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r)).into_response()
}

/// Prometheus text format.
pub async fn metrics(State(s): St) -> Response {
    let body = super::metrics_text(&s.ctx);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// Re-read the config file (the same as SIGHUP). The running config stays unless the new one is
/// valid and can be applied live.
pub async fn admin_reload(State(s): St) -> Json<crate::context::ReloadSummary> {
    use crate::context::ReloadError as E;
    let ctx = s.ctx.clone();
    let result = tokio::task::spawn_blocking(move || ctx.reload())
        .await
        .map_err(ApiError::internal)?;
    match result {
        Ok(summary) => Ok(axum::Json(summary)),
        Err(e) => Err(match &e {
            E::NoFile => ApiError::new(StatusCode::CONFLICT, "reload_unavailable", e.to_string()),
            E::Unreadable { .. } | E::Invalid { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "config_invalid",
                e.to_string(),
            ),
            E::Refused { .. } => {
                ApiError::new(StatusCode::CONFLICT, "reload_refused", e.to_string())
            }
            E::Store { .. } => ApiError::internal(&e),
        }),
    }
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("such endpoint (see /openapi.json)")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method (see /openapi.json)",
    )
}

// ---- conversations -----------------------------------------------------------------------------

pub async fn conversations(
    State(s): St,
    q: Query,
) -> Json<views::Page<views::ConversationSummary>> {
    q.only(&[
        "inbox", "assignee", "status", "since", "until", "order", "cursor", "limit",
    ])?;
    let config = s.ctx.config();
    let inbox = inbox_filter(&q, &config)?;
    let assignee = match q.get("assignee") {
        Some(u) if !config.directory.users.contains_key(u) => {
            return Err(ApiError::parameter(
                "assignee",
                format!("no user {u:?} in the config"),
            ))
        }
        a => a.map(str::to_string),
    };
    let status = match q.get("status") {
        None => None,
        Some(st) => Some(ConversationStatus::parse(st).ok_or_else(|| {
            ApiError::parameter("status", format!("must be open or closed, not {st:?}"))
        })?),
    };
    let (window, newest) = (time_window(&q)?, newest_first(&q)?);
    let (after, limit) = (cursor_in(&q, "conversations")?, limit(&q)?);
    let store = s.ctx.store.clone();
    let p = blocking(move || {
        Ok(store.conversations_page(
            after.as_deref(),
            newest,
            limit,
            MAX_SCAN,
            |c: &crate::store::model::Conversation| {
                // Conversation ids are ULIDs of their creation: `since`/`until` bound
                // `created_at`, as the CLI's --since does.
                in_window(c.created_at, window, newest).map(|inside| {
                    inside
                        && inbox.as_ref().is_none_or(|i| c.inbox == *i)
                        && assignee
                            .as_ref()
                            .is_none_or(|a| c.assignee.as_ref() == Some(a))
                        && status.is_none_or(|st| c.status == st)
                })
            },
        )?)
    })
    .await?;
    ok(page("conversations", p))
}

/// `GET /v1/conversations/{id}`: the conversation, and one page of its messages in arrival
/// order (`limit`, `cursor`; `messages_next_cursor` continues), so a thread of any length costs
/// one page per request.
pub async fn conversation(
    State(s): St,
    PathParams(id): PathParams<String>,
    q: Query,
) -> Json<views::ConversationDetail> {
    let store = s.ctx.store.clone();
    let limit = limit(&q)?;
    let after = cursor_in(&q, "conversation_messages")?;
    blocking(move || {
        let c = store
            .conversation(&id)?
            .ok_or_else(|| ApiError::not_found(format!("conversation {id}")))?;
        let after = after.map(|a| String::from_utf8_lossy(&a).into_owned());
        let ids = store.conversation_messages(&id, after.as_deref(), limit)?;
        let mut messages = Vec::with_capacity(ids.items.len());
        for q in &ids.items {
            if let Some(m) = store.get(q)? {
                messages.push(views::MessageSummary::from(m));
            }
        }
        let ticket = match &c.ticket {
            Some(t) => store.ticket(t)?.map(views::TicketView::from),
            None => None,
        };
        let contact = store.contact(&c.contact)?.map(views::ContactSummary::from);
        Ok(views::ConversationDetail {
            conversation: c.into(),
            messages,
            messages_next_cursor: cursor_out("conversation_messages", ids.next),
            ticket,
            contact,
        })
    })
    .await
    .map(axum::Json)
}

/// `POST /v1/conversations/{id}/assign`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    user: Option<String>,
    team: Option<String>,
}

pub async fn conversation_assign(
    State(s): St,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<AssignBody>,
) -> Json<views::ConversationSummary> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    let to = Assignee {
        user: body.user,
        team: body.team,
    };
    let answer = blocking(move || Ok(actions::assign(&store, &config, &id, &to)?.into())).await;
    // The assignment may have queued a webhook call or a notice.
    s.ctx.outbox_wake.notify_one();
    answer.map(axum::Json)
}

pub async fn conversation_unassign(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Json<views::ConversationSummary> {
    conversation_action(s, id, actions::unassign).await
}

pub async fn conversation_close(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Json<views::ConversationSummary> {
    conversation_action(s, id, actions::close).await
}

/// `POST /v1/conversations/{id}/reopen`.
pub async fn conversation_reopen(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Json<views::ConversationSummary> {
    conversation_action(s, id, actions::reopen).await
}

/// Run one conversation action off the async threads; it may have queued a webhook event.
async fn conversation_action(
    s: Arc<ApiState>,
    id: String,
    action: fn(
        &crate::store::Store,
        &Config,
        &str,
    ) -> Result<crate::store::model::Conversation, actions::ActionError>,
) -> Json<views::ConversationSummary> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    let answer = blocking(move || Ok(action(&store, &config, &id)?.into())).await;
    s.ctx.outbox_wake.notify_one();
    answer.map(axum::Json)
}

// ---- messages ----------------------------------------------------------------------------------

pub async fn messages(State(s): St, q: Query) -> Json<views::Page<views::MessageSummary>> {
    q.only(&[
        "inbox",
        "quarantined",
        "since",
        "until",
        "order",
        "cursor",
        "limit",
    ])?;
    let inbox = inbox_filter(&q, &s.ctx.config())?;
    let with_quarantined = q.bool("quarantined")?.unwrap_or(false);
    let (window, newest) = (time_window(&q)?, newest_first(&q)?);
    let (after, limit) = (cursor_in(&q, "messages")?, limit(&q)?);
    let store = s.ctx.store.clone();
    let p = blocking(move || {
        Ok(store.messages_page(
            after.as_deref(),
            newest,
            limit,
            MAX_SCAN,
            |m: &MessageRecord| {
                in_window(m.received_at, window, newest).map(|inside| {
                    inside
                        && (with_quarantined || !m.quarantined)
                        && inbox
                            .as_ref()
                            .is_none_or(|i| m.rcpt.iter().any(|r| r.inbox == *i))
                })
            },
        )?)
    })
    .await?;
    ok(page("messages", p))
}

fn find_message(store: &Store, id: &str) -> Result<MessageRecord, ApiError> {
    store
        .get(id)?
        .ok_or_else(|| ApiError::not_found(format!("message {id}")))
}

/// The stored body, or 410 when retention removed it (also when that happened since `record`
/// was read).
fn body_of(store: &Store, record: &MessageRecord) -> Result<Vec<u8>, ApiError> {
    if record.body_location == BODY_EXPIRED {
        return Err(ApiError::body_expired(&record.queue_id));
    }
    match store.body(record) {
        Ok(b) => Ok(b),
        Err(e) => match store.get(&record.queue_id)? {
            Some(now) if now.body_location == BODY_EXPIRED => {
                Err(ApiError::body_expired(&record.queue_id))
            }
            None => Err(ApiError::not_found(format!("message {}", record.queue_id))),
            Some(_) => Err(ApiError::internal(e)),
        },
    }
}

pub async fn message(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Json<views::MessageDetail> {
    let store = s.ctx.store.clone();
    blocking(move || message_detail(&store, find_message(&store, &id)?))
        .await
        .map(axum::Json)
}

/// The record with the content read from its body (`pipeline::body`); the content fields are
/// `null` once retention removed the body, the record's fields stay.
fn message_detail(store: &Store, record: MessageRecord) -> Result<views::MessageDetail, ApiError> {
    let content = match body_of(store, &record) {
        Ok(raw) => crate::pipeline::body::read(&raw),
        Err(e) if e.code == "body_expired" => None,
        Err(e) => return Err(e),
    };
    Ok(views::MessageDetail::new(record, content))
}

/// The message as stored: our trace header fields, then the body byte for byte as received.
pub async fn message_raw(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let store = s.ctx.store.clone();
    let raw = blocking(move || {
        let record = find_message(&store, &id)?;
        let body = body_of(&store, &record)?;
        // What `Store::raw_message` returns, from the body already read.
        let mut out = Vec::with_capacity(record.trace_headers.len() + body.len());
        out.extend_from_slice(record.trace_headers.as_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "message/rfc822")], raw).into_response())
}

pub async fn message_attachment(
    State(s): St,
    PathParams((id, index)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let index: usize = index.parse().map_err(|_| {
        ApiError::parameter(
            "index",
            format!("must be a whole number from 0, not {index:?}"),
        )
    })?;
    let store = s.ctx.store.clone();
    let (info, bytes) = blocking(move || {
        let record = find_message(&store, &id)?;
        let Some(listed) = record.attachments.get(index).cloned() else {
            return Err(ApiError::not_found(format!(
                "attachment {index} of message {id} (it has {})",
                record.attachments.len()
            )));
        };
        let body = body_of(&store, &record)?;
        match crate::pipeline::parse::attachment(&body, index) {
            // The hash proves the index means the attachment the record lists.
            Some((info, bytes)) if info.sha256 == listed.sha256 => Ok((info, bytes)),
            _ => Err(ApiError::internal(format!(
                "message {id}: attachment {index} no longer parses as recorded"
            ))),
        }
    })
    .await?;
    let disposition = HeaderValue::from_str(&content_disposition(&info.name, index))
        .map_err(ApiError::internal)?;
    let content_type = if is_media_type(&info.content_type) {
        HeaderValue::from_str(&info.content_type).map_err(ApiError::internal)?
    } else {
        HeaderValue::from_static("application/octet-stream")
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
            // The sender chose the content: a browser must not reinterpret it (HTML as a page).
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// `type/subtype` made of RFC 9110 token characters only (what mail-parser gives is not
/// checked, and a header value must not carry parameters or separators we did not put there).
fn is_media_type(v: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    v.split_once('/').is_some_and(|(t, s)| token(t) && token(s))
}

/// `attachment; filename="..."` (RFC 6266) with a plain-ASCII fallback name, plus `filename*`
/// (RFC 8187, UTF-8 percent-encoded) when the real name is not plain ASCII. Control characters,
/// quotes, backslashes and path separators never reach the header as they are, so a hostile
/// file name cannot add header fields or a path.
fn content_disposition(name: &str, index: usize) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    let name = if base.is_empty() || base == "." || base == ".." {
        format!("attachment-{index}")
    } else {
        base.to_string()
    };
    let fallback: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && !matches!(c, '"' | '\\' | '%' | ';') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut out = format!("attachment; filename=\"{fallback}\"");
    if fallback != name {
        out.push_str("; filename*=UTF-8''");
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

// ---- contacts ----------------------------------------------------------------------------------

pub async fn contacts(State(s): St, q: Query) -> Json<views::Page<views::ContactSummary>> {
    q.only(&["cursor", "limit"])?;
    let (after, limit) = (cursor_in(&q, "contacts")?, limit(&q)?);
    let store = s.ctx.store.clone();
    let p = blocking(move || {
        Ok(store.contacts_page(
            after.as_deref(),
            limit,
            MAX_SCAN,
            |_: &crate::store::model::Contact| true,
        )?)
    })
    .await?;
    ok(page("contacts", p))
}

pub async fn contact(
    State(s): St,
    PathParams(email): PathParams<String>,
) -> Json<views::ContactDetail> {
    let store = s.ctx.store.clone();
    blocking(move || {
        let c = store
            .contact(&email)?
            .ok_or_else(|| ApiError::not_found(format!("contact {email:?}")))?;
        let conversations = store.contact_conversations(&c.email)?;
        Ok(views::ContactDetail {
            contact: c.into(),
            conversations,
        })
    })
    .await
    .map(axum::Json)
}

// ---- quarantine --------------------------------------------------------------------------------

pub async fn quarantine(State(s): St, q: Query) -> Json<views::Page<views::MessageSummary>> {
    q.only(&["cursor", "limit"])?;
    let (after, limit) = (cursor_in(&q, "quarantine")?, limit(&q)?);
    let store = s.ctx.store.clone();
    let p = blocking(move || {
        Ok(store.messages_page(
            after.as_deref(),
            false,
            limit,
            MAX_SCAN,
            |m: &MessageRecord| Some(m.quarantined),
        )?)
    })
    .await?;
    ok(page("quarantine", p))
}

pub async fn quarantine_release(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Json<views::MessageDetail> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    let answer = blocking(move || {
        let record = actions::release_quarantined(&config, &store, &id)?;
        message_detail(&store, record)
    })
    .await;
    s.ctx.outbox_wake.notify_one();
    answer.map(axum::Json)
}

pub async fn quarantine_delete(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let store = s.ctx.store.clone();
    blocking(move || Ok(actions::delete_quarantined(&store, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- users -------------------------------------------------------------------------------------

fn user_view(store: &Store, config: &Config, id: &str) -> Result<views::UserView, ApiError> {
    let user = config
        .directory
        .users
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("user {id:?}")))?;
    let dir = &config.directory;
    let (available, over, open) = store.view(|tx| {
        let over = tx.user_state(id)?.and_then(|st| st.available);
        Ok((routing::available(tx, dir, id)?, over, tx.open_count(id)?))
    })?;
    Ok(views::UserView::new(user, available, over, open))
}

pub async fn users(State(s): St) -> Json<views::List<views::UserView>> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    let items = blocking(move || {
        config
            .directory
            .users
            .keys()
            .map(|id| user_view(&store, &config, id))
            .collect()
    })
    .await?;
    ok(views::List { items })
}

/// `PUT /v1/users/{id}/availability`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityBody {
    available: bool,
}

pub async fn user_availability(
    State(s): St,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<AvailabilityBody>,
) -> Json<views::UserView> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    blocking(move || {
        actions::set_availability(&store, &config, &id, body.available)?;
        user_view(&store, &config, &id)
    })
    .await
    .map(axum::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_safe_and_keeps_the_name() {
        assert_eq!(
            content_disposition("report.pdf", 0),
            "attachment; filename=\"report.pdf\""
        );
        let d = content_disposition("Rechnung März.pdf", 1);
        assert_eq!(
            d,
            "attachment; filename=\"Rechnung M_rz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
        );
        let evil = content_disposition("a\"b\r\nSet-Cookie: x=1;.txt", 2);
        assert!(!evil.contains(['\r', '\n']), "{evil}");
        assert!(
            evil.starts_with("attachment; filename=\"a_b__Set-Cookie: x=1_.txt\""),
            "{evil}"
        );
        assert!(HeaderValue::from_str(&evil).is_ok());
        assert_eq!(
            content_disposition("../../etc/passwd", 3),
            "attachment; filename=\"passwd\""
        );
        assert_eq!(
            content_disposition("", 4),
            "attachment; filename=\"attachment-4\""
        );
    }

    #[test]
    fn media_types() {
        assert!(is_media_type("application/pdf"));
        assert!(is_media_type("image/svg+xml"));
        assert!(!is_media_type("text/html; charset=utf-8"));
        assert!(!is_media_type("text"));
        assert!(!is_media_type("text/\r\nx"));
    }
}
