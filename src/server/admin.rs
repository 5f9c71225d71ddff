//! The local admin channel: a Unix socket (mode 0600, in the data directory by default) through
//! which the CLI reads a store that a running server holds open (sled allows one process).
//! Protocol: one JSON request line; one JSON response line, optionally followed by `raw_len`
//! bytes of message. `execute` is also what the CLI runs directly when no server is running, so
//! both paths give the same answers.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Ctx;
use crate::config::Config;
use crate::store::Store;

/// Longest request line accepted on the admin socket.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Newest first unless `oldest_first`; `after` is the last queue id of the previous page
    /// (in the order listed). Filters: received at or after `since_ms`, to `inbox`, quarantined.
    MessagesList {
        after: Option<String>,
        limit: usize,
        #[serde(default)]
        oldest_first: bool,
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        inbox: Option<String>,
        #[serde(default)]
        quarantined: Option<bool>,
    },
    MessagesShow {
        queue_id: String,
        raw: bool,
    },
    /// Conversations, newest first unless `oldest_first`, filtered by inbox, status and start.
    ConversationsList {
        inbox: Option<String>,
        after: Option<String>,
        limit: usize,
        #[serde(default)]
        oldest_first: bool,
        #[serde(default)]
        status: Option<String>,
        #[serde(default)]
        since_ms: Option<u64>,
    },
    /// A conversation and one page of its messages (in arrival order, after `after`).
    ConversationsShow {
        id: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default = "default_messages_page")]
        limit: usize,
    },
    InboxesList,
    /// The inboxes created through the API (retired ones too), as stored.
    InboxDefinitions,
    /// An operator confirms that the team's forwarding works.
    InboxConfirm {
        id: String,
        address: String,
    },
    /// Mail a one-time code to a from-address the inbox wants to use.
    VerifyFrom {
        id: String,
        address: String,
    },
    /// Check that code.
    ConfirmFrom {
        id: String,
        code: String,
    },
    /// Deliveries waiting in the outbox.
    OutboxList,
    /// Quarantined messages, oldest first (`after`: a queue id, for paging).
    QuarantineList {
        after: Option<String>,
        limit: usize,
    },
    QuarantineRelease {
        queue_id: String,
    },
    QuarantineDelete {
        queue_id: String,
    },
    ConversationAssign {
        id: String,
        user: Option<String>,
        team: Option<String>,
    },
    ConversationUnassign {
        id: String,
    },
    ConversationClose {
        id: String,
    },
    ConversationReopen {
        id: String,
    },
    OutboxRetry {
        id: String,
    },
    OutboxDrop {
        id: String,
    },
}

fn default_messages_page() -> usize {
    100
}

/// A conversation with everything `conversations show` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversationView {
    pub conversation: crate::store::model::Conversation,
    /// One page of its messages.
    pub messages: Vec<crate::store::MessageRecord>,
    /// The queue id to continue after, when there are more.
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub ticket: Option<crate::store::model::Ticket>,
    #[serde(default)]
    pub contact: Option<crate::store::model::Contact>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Length of the raw message that follows the JSON line, if any.
    #[serde(default)]
    pub raw_len: usize,
}

impl Response {
    fn err(e: impl ToString) -> (Response, Vec<u8>) {
        (
            Response {
                ok: false,
                error: Some(e.to_string()),
                data: None,
                raw_len: 0,
            },
            Vec::new(),
        )
    }
}

/// Answer one request from the store, under `config` (the running server's, or the CLI's own
/// when it opened the store itself).
pub fn execute(store: &Store, config: &Config, req: &Request) -> (Response, Vec<u8>) {
    let now = crate::store::keys::now_ms();
    match req {
        Request::VerifyFrom { id, address } => {
            match crate::notify::verify_from::request(store, config, id, address, now) {
                Ok(r) => ok(serde_json::to_value(r).ok()),
                Err(e) => Response::err(e),
            }
        }
        Request::ConfirmFrom { id, code } => {
            match crate::notify::verify_from::confirm(store, config, id, code, now) {
                Ok(address) => ok(Some(
                    serde_json::json!({ "inbox": id, "verified": address }),
                )),
                Err(e) => Response::err(e),
            }
        }
        Request::OutboxList => match store.outbox_items() {
            Ok(items) => ok(serde_json::to_value(items).ok()),
            Err(e) => Response::err(e),
        },
        Request::MessagesList {
            after,
            limit,
            oldest_first,
            since_ms,
            inbox,
            quarantined,
        } => match list_messages(
            store,
            after.as_deref(),
            *limit,
            *oldest_first,
            since_ms.unwrap_or(0),
            inbox.as_deref(),
            *quarantined,
        ) {
            Ok(list) => (
                Response {
                    ok: true,
                    error: None,
                    data: serde_json::to_value(list).ok(),
                    raw_len: 0,
                },
                Vec::new(),
            ),
            Err(e) => Response::err(e),
        },
        Request::MessagesShow { queue_id, raw } => match store.get(queue_id) {
            Ok(Some(record)) => {
                let bytes = if *raw {
                    match store.raw_message(&record) {
                        Ok(b) => b,
                        Err(e) => return Response::err(e),
                    }
                } else {
                    Vec::new()
                };
                (
                    Response {
                        ok: true,
                        error: None,
                        data: serde_json::to_value(record).ok(),
                        raw_len: bytes.len(),
                    },
                    bytes,
                )
            }
            Ok(None) => Response::err(format!("no message with queue id {queue_id}")),
            Err(e) => Response::err(e),
        },
        Request::ConversationsList {
            inbox,
            after,
            limit,
            oldest_first,
            status,
            since_ms,
        } => match list_conversations(
            store,
            after.as_deref(),
            *limit,
            *oldest_first,
            inbox.as_deref(),
            status.as_deref(),
            since_ms.unwrap_or(0),
        ) {
            Ok(list) => ok(serde_json::to_value(list).ok()),
            Err(e) => Response::err(e),
        },
        Request::InboxDefinitions => match store.inbox_definitions() {
            Ok(list) => ok(serde_json::to_value(list).ok()),
            Err(e) => Response::err(e),
        },
        Request::InboxesList => match store.inbox_states() {
            Ok(list) => ok(serde_json::to_value(list).ok()),
            Err(e) => Response::err(e),
        },
        Request::InboxConfirm { id, address } => {
            match crate::actions::confirm_inbox(store, config, id, address) {
                Ok(st) => ok(serde_json::to_value(st).ok()),
                Err(e) => Response::err(e),
            }
        }
        Request::QuarantineList { after, limit } => {
            let quarantined = store.messages_page(
                after.as_deref().map(str::as_bytes),
                false,
                *limit,
                QUARANTINE_MAX_SCAN,
                |m: &crate::store::MessageRecord| Some(m.quarantined),
            );
            match quarantined {
                Ok(p) => ok(serde_json::to_value(p.items).ok()),
                Err(e) => Response::err(e),
            }
        }
        Request::QuarantineRelease { queue_id } => {
            let config = std::sync::Arc::new(config.clone());
            action_answer(crate::actions::release_quarantined(
                &config, store, queue_id,
            ))
        }
        Request::QuarantineDelete { queue_id } => {
            action_answer(crate::actions::delete_quarantined(store, queue_id))
        }
        Request::ConversationAssign { id, user, team } => {
            let to = crate::actions::Assignee {
                user: user.clone(),
                team: team.clone(),
            };
            action_answer(crate::actions::assign(store, config, id, &to))
        }
        Request::ConversationUnassign { id } => {
            action_answer(crate::actions::unassign(store, config, id))
        }
        Request::ConversationClose { id } => {
            action_answer(crate::actions::close(store, config, id))
        }
        Request::ConversationReopen { id } => {
            action_answer(crate::actions::reopen(store, config, id))
        }
        Request::OutboxRetry { id } => action_answer(crate::actions::outbox_retry_now(store, id)),
        Request::OutboxDrop { id } => action_answer(crate::actions::outbox_drop(store, id)),
        Request::ConversationsShow { id, after, limit } => {
            match conversation_view(store, id, after.as_deref(), *limit) {
                Ok(Some(view)) => ok(serde_json::to_value(view).ok()),
                Ok(None) => Response::err(format!("no conversation with id {id}")),
                Err(e) => Response::err(e),
            }
        }
    }
}

/// Records a filtered message list examines at most: past it the list ends early with what it
/// found (narrow with --since, or page on with --after).
const LIST_MAX_SCAN: usize = 100_000;

fn list_messages(
    store: &Store,
    after: Option<&str>,
    limit: usize,
    oldest_first: bool,
    since_ms: u64,
    inbox: Option<&str>,
    quarantined: Option<bool>,
) -> Result<Vec<crate::store::MessageRecord>, crate::store::StoreError> {
    let keep = |r: &crate::store::MessageRecord| {
        r.received_at >= since_ms
            && inbox.is_none_or(|i| r.rcpt.iter().any(|x| x.inbox == i))
            && quarantined.is_none_or(|q| r.quarantined == q)
    };
    let filtered = since_ms > 0 || inbox.is_some() || quarantined.is_some();
    if !oldest_first {
        let max_scan = if filtered { LIST_MAX_SCAN } else { usize::MAX };
        return store.list_newest(after, limit, since_ms, max_scan, keep);
    }
    if !filtered {
        return store.list(after, limit);
    }
    Ok(store
        .messages_page(after.map(str::as_bytes), false, limit, LIST_MAX_SCAN, |m| {
            Some(keep(m))
        })?
        .items)
}

/// Conversations for `conversations list`: newest first unless `oldest_first`; a filtered list
/// examines at most `LIST_MAX_SCAN` records per page, like the message list.
fn list_conversations(
    store: &Store,
    after: Option<&str>,
    limit: usize,
    oldest_first: bool,
    inbox: Option<&str>,
    status: Option<&str>,
    since_ms: u64,
) -> Result<Vec<crate::store::model::Conversation>, crate::store::StoreError> {
    use crate::store::model::Conversation;
    let keep = |c: &Conversation| {
        inbox.is_none_or(|i| c.inbox == i) && status.is_none_or(|s| c.status.as_str() == s)
    };
    let filtered = since_ms > 0 || inbox.is_some() || status.is_some();
    let max_scan = if filtered { LIST_MAX_SCAN } else { usize::MAX };
    if oldest_first {
        return Ok(store
            .conversations_page(
                after.map(str::as_bytes),
                false,
                limit,
                max_scan,
                |c: &Conversation| Some(c.created_at >= since_ms && keep(c)),
            )?
            .items);
    }
    store.conversations_newest(after, limit, max_scan, |c: &Conversation| {
        (c.created_at >= since_ms).then(|| keep(c))
    })
}

/// Messages a quarantine page examines at most (as the API's page does): past it the page ends
/// early with what it found.
const QUARANTINE_MAX_SCAN: usize = 10_000;

/// An action's result as a response.
fn action_answer<T: Serialize>(r: Result<T, crate::actions::ActionError>) -> (Response, Vec<u8>) {
    match r {
        Ok(v) => ok(serde_json::to_value(v).ok()),
        Err(e) => Response::err(e),
    }
}

fn ok(data: Option<serde_json::Value>) -> (Response, Vec<u8>) {
    (
        Response {
            ok: true,
            error: None,
            data,
            raw_len: 0,
        },
        Vec::new(),
    )
}

fn conversation_view(
    store: &Store,
    id: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<ConversationView>, crate::store::StoreError> {
    let Some(conversation) = store.conversation(id)? else {
        return Ok(None);
    };
    let page = store.conversation_messages(id, after, limit.clamp(1, 1000))?;
    let mut messages = Vec::with_capacity(page.items.len());
    for q in &page.items {
        if let Some(m) = store.get(q)? {
            messages.push(m);
        }
    }
    let next = page.next.map(|k| String::from_utf8_lossy(&k).into_owned());
    let ticket = match &conversation.ticket {
        Some(t) => store.ticket(t)?,
        None => None,
    };
    let contact = store.contact(&conversation.contact)?;
    Ok(Some(ConversationView {
        conversation,
        messages,
        next,
        ticket,
        contact,
    }))
}

/// Bind the socket, replacing a stale one left by a crashed server (the store lock, taken
/// before this, guarantees no live server owns it).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            crate::util::private_dir(dir)?;
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

pub async fn serve(listener: UnixListener, ctx: Arc<Ctx>, path: PathBuf) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tracing::warn!(path = %path.display(), "admin socket accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &ctx).await {
                tracing::debug!(error = %e, "admin request failed");
            }
        });
    }
}

async fn answer(stream: UnixStream, ctx: &Ctx) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    // Bytes, not a String: a request that is not UTF-8 gets a "bad request" answer like any
    // other malformed one, instead of a closed connection.
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    let (resp, raw) = match serde_json::from_slice::<Request>(&line) {
        Ok(req) => {
            let (store, config) = (ctx.store.clone(), ctx.config());
            // Store reads touch disk: keep them off the async workers.
            let answer = tokio::task::spawn_blocking(move || execute(&store, &config, &req))
                .await
                .map_err(io::Error::other)?;
            // An action may have queued mail (verify-from): deliver it now, not at the next poll.
            ctx.outbox_wake.notify_one();
            answer
        }
        Err(e) => Response::err(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.write_all(&raw).await?;
    write.shutdown().await
}

/// Send one request to a running server. `Ok(None)`: no server is listening there.
pub async fn call(path: &Path, req: &Request) -> io::Result<Option<(Response, Vec<u8>)>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reader = BufReader::new(read);
    let mut resp = String::new();
    reader.read_line(&mut resp).await?;
    let resp: Response = serde_json::from_str(&resp).map_err(io::Error::other)?;
    let mut raw = vec![0u8; resp.raw_len];
    reader.read_exact(&mut raw).await?;
    Ok(Some((resp, raw)))
}
