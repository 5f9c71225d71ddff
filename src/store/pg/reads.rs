//! Reads of the PostgreSQL store, with the meaning of the `Store` methods that call them: pages
//! in key order with the same bounded scan as the embedded store, newest-first lists, single
//! records, bodies, and the outbox (which, shared by several nodes, is claimed with a lease).

use serde::de::DeserializeOwned;

use super::{pg_error, Conn, PgStore};
use crate::store::model::{self, InboxState, MessageRecord, OutboxItem};
use crate::store::{Page, StoreError};

/// Rows read per round trip while paging.
const CHUNK: i64 = 500;

/// The tables that are paged by key, with their SQL.
#[derive(Clone, Copy)]
pub(in crate::store) enum Listed {
    Messages,
    Conversations,
    Contacts,
}

impl Listed {
    /// (from the start, after a key) ascending; (from the end, before a key) descending.
    fn sql(self) -> [&'static str; 4] {
        match self {
            Listed::Messages => [
                "SELECT queue_id, record FROM messages ORDER BY queue_id LIMIT $1",
                "SELECT queue_id, record FROM messages WHERE queue_id > $2 ORDER BY queue_id LIMIT $1",
                "SELECT queue_id, record FROM messages ORDER BY queue_id DESC LIMIT $1",
                "SELECT queue_id, record FROM messages WHERE queue_id < $2 ORDER BY queue_id DESC LIMIT $1",
            ],
            Listed::Conversations => [
                "SELECT id, record FROM conversations ORDER BY id LIMIT $1",
                "SELECT id, record FROM conversations WHERE id > $2 ORDER BY id LIMIT $1",
                "SELECT id, record FROM conversations ORDER BY id DESC LIMIT $1",
                "SELECT id, record FROM conversations WHERE id < $2 ORDER BY id DESC LIMIT $1",
            ],
            Listed::Contacts => [
                "SELECT email, record FROM contacts ORDER BY email LIMIT $1",
                "SELECT email, record FROM contacts WHERE email > $2 ORDER BY email LIMIT $1",
                "SELECT email, record FROM contacts ORDER BY email DESC LIMIT $1",
                "SELECT email, record FROM contacts WHERE email < $2 ORDER BY email DESC LIMIT $1",
            ],
        }
    }
}

/// Up to `n` (key, record) rows after (ascending) or before (descending) `from`.
fn chunk(
    c: &mut Conn,
    table: Listed,
    descending: bool,
    from: Option<&str>,
    n: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let [first, after, last, before] = table.sql();
    let rows = match (descending, from) {
        (false, None) => c.query(first, &[&n]),
        (false, Some(k)) => c.query(after, &[&n, &k]),
        (true, None) => c.query(last, &[&n]),
        (true, Some(k)) => c.query(before, &[&n, &k]),
    }
    .map_err(pg_error)?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn decode<T: DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    Ok(serde_json::from_str(json)?)
}

impl PgStore {
    /// `Store::page_in` for this backend: the same directions, scan bound and cursor rule.
    pub(in crate::store) fn page<T: DeserializeOwned + Send>(
        &self,
        table: Listed,
        after: Option<&[u8]>,
        newest_first: bool,
        limit: usize,
        max_scan: usize,
        keep: &(dyn Fn(&T) -> Option<bool> + Sync),
    ) -> Result<Page<T>, StoreError> {
        let after = after.map(|a| String::from_utf8_lossy(a).into_owned());
        self.with_conn(|c| {
            let mut items = Vec::new();
            // The key of the last record this page has consumed (kept or skipped).
            let mut last: Option<String> = None;
            let mut from = after.clone();
            let mut scanned = 0usize;
            loop {
                let rows = chunk(c, table, newest_first, from.as_deref(), CHUNK)?;
                let done = (rows.len() as i64) < CHUNK;
                for (key, json) in rows {
                    if scanned >= max_scan.max(1) {
                        return Ok(Page {
                            items,
                            next: last.map(String::into_bytes),
                        });
                    }
                    scanned += 1;
                    let record: T = decode(&json)?;
                    match keep(&record) {
                        None => return Ok(Page { items, next: None }),
                        Some(true) if items.len() >= limit => {
                            // Another match exists: the next page starts right before it.
                            return Ok(Page {
                                items,
                                next: last.map(String::into_bytes),
                            });
                        }
                        Some(true) => items.push(record),
                        Some(false) => {}
                    }
                    from = Some(key.clone());
                    last = Some(key);
                }
                if done {
                    return Ok(Page { items, next: None });
                }
            }
        })
    }

    /// One record by key from a table with a `record` column.
    fn one<T: DeserializeOwned + Send>(
        &self,
        sql: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        self.with_conn(|c| {
            let rows = c.query(sql, &[&key]).map_err(pg_error)?;
            rows.first()
                .map(|r| decode(r.get::<_, &str>(0)))
                .transpose()
        })
    }

    pub(in crate::store) fn message(
        &self,
        queue_id: &str,
    ) -> Result<Option<MessageRecord>, StoreError> {
        self.one("SELECT record FROM messages WHERE queue_id = $1", queue_id)
    }

    pub(in crate::store) fn conversation(
        &self,
        id: &str,
    ) -> Result<Option<model::Conversation>, StoreError> {
        self.one("SELECT record FROM conversations WHERE id = $1", id)
    }

    pub(in crate::store) fn contact(
        &self,
        email: &str,
    ) -> Result<Option<model::Contact>, StoreError> {
        self.one("SELECT record FROM contacts WHERE email = $1", email)
    }

    pub(in crate::store) fn ticket(&self, id: &str) -> Result<Option<model::Ticket>, StoreError> {
        self.one("SELECT record FROM tickets WHERE id = $1", id)
    }

    pub(in crate::store) fn inbox_state(&self, id: &str) -> Result<Option<InboxState>, StoreError> {
        self.one("SELECT record FROM inbox_states WHERE id = $1", id)
    }

    pub(in crate::store) fn inbox_definitions(
        &self,
    ) -> Result<Vec<model::InboxDefinition>, StoreError> {
        self.all("SELECT record FROM inbox_definitions ORDER BY id")
    }

    pub(in crate::store) fn inbox_definition(
        &self,
        id: &str,
    ) -> Result<Option<model::InboxDefinition>, StoreError> {
        self.one("SELECT record FROM inbox_definitions WHERE id = $1", id)
    }

    pub(in crate::store) fn inbox_states(&self) -> Result<Vec<InboxState>, StoreError> {
        self.all("SELECT record FROM inbox_states ORDER BY id")
    }

    /// Users or teams (`kind`) created through the API, in id order.
    pub(in crate::store) fn people<T: DeserializeOwned + Send>(
        &self,
        kind: &str,
    ) -> Result<Vec<T>, StoreError> {
        self.with_conn(|c| {
            c.query(
                "SELECT record FROM people WHERE kind = $1 ORDER BY id",
                &[&kind],
            )
            .map_err(pg_error)?
            .iter()
            .map(|r| decode(r.get::<_, &str>(0)))
            .collect()
        })
    }

    pub(in crate::store) fn person<T: DeserializeOwned + Send>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        self.with_conn(|c| {
            c.query(
                "SELECT record FROM people WHERE kind = $1 AND id = $2",
                &[&kind, &id],
            )
            .map_err(pg_error)?
            .first()
            .map(|r| decode(r.get::<_, &str>(0)))
            .transpose()
        })
    }

    fn all<T: DeserializeOwned + Send>(&self, sql: &'static str) -> Result<Vec<T>, StoreError> {
        self.with_conn(|c| {
            c.query(sql, &[])
                .map_err(pg_error)?
                .iter()
                .map(|r| decode(r.get::<_, &str>(0)))
                .collect()
        })
    }

    /// Conversation ids of a contact, oldest first.
    pub(in crate::store) fn contact_conversations(
        &self,
        email: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.with_conn(|c| {
            Ok(c.query(
                "SELECT conversation FROM contact_conversations WHERE email = $1 ORDER BY conversation",
                &[&email],
            )
            .map_err(pg_error)?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    /// One page of a conversation's messages in arrival order.
    pub(in crate::store) fn conversation_messages(
        &self,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>, StoreError> {
        let n = limit.max(1).min(i64::MAX as usize - 1) as i64 + 1;
        self.with_conn(|c| {
            let rows = match after {
                None => c.query(
                    "SELECT queue_id FROM conversation_messages WHERE conversation = $1 ORDER BY queue_id LIMIT $2",
                    &[&id, &n],
                ),
                Some(a) => c.query(
                    "SELECT queue_id FROM conversation_messages WHERE conversation = $1 AND queue_id > $3 ORDER BY queue_id LIMIT $2",
                    &[&id, &n, &a],
                ),
            }
            .map_err(pg_error)?;
            let mut items: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let more = items.len() > limit.max(1);
            items.truncate(limit.max(1));
            let next = more
                .then(|| items.last().map(|l| l.as_bytes().to_vec()))
                .flatten();
            Ok(Page { items, next })
        })
    }

    /// Conversations in id order after `after`, optionally of one inbox.
    pub(in crate::store) fn conversations(
        &self,
        inbox: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<model::Conversation>, StoreError> {
        let keep = |c: &model::Conversation| Some(inbox.is_none_or(|i| c.inbox == i));
        Ok(self
            .page(
                Listed::Conversations,
                after.map(str::as_bytes),
                false,
                limit,
                usize::MAX,
                &keep,
            )?
            .items)
    }

    pub(in crate::store) fn body(&self, queue_id: &str) -> Result<Vec<u8>, StoreError> {
        self.with_conn(|c| {
            Ok(
                c.query("SELECT body FROM bodies WHERE queue_id = $1", &[&queue_id])
                    .map_err(pg_error)?
                    .first()
                    .map(|r| r.get::<_, Vec<u8>>(0))
                    .unwrap_or_default(),
            )
        })
    }

    pub(in crate::store) fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with_conn(|c| {
            Ok(
                c.query("SELECT value FROM store_state WHERE key = $1", &[&key])
                    .map_err(pg_error)?
                    .first()
                    .map(|r| r.get(0)),
            )
        })
    }

    pub(in crate::store) fn set_state(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with_conn(|c| {
            c.execute(
                "INSERT INTO store_state (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&key, &value],
            )
            .map(drop)
            .map_err(pg_error)
        })
    }

    /// Claim up to `limit` items due by `until_ms` for this node: their due time moves
    /// `[store] outbox_lease` ahead, so no other node takes them while this one delivers (the
    /// config keeps the lease longer than a delivery's timeout); if this node dies, they are due
    /// again for every node when the lease runs out. Settling an item (delivered, rescheduled,
    /// dropped) ends the lease. Locked rows are skipped, not waited for.
    pub(in crate::store) fn outbox_claim(
        &self,
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let lease_ms = self.pool.cfg.outbox_lease.as_millis() as u64;
        let lease_until = crate::store::keys::now_ms().saturating_add(lease_ms) as i64;
        self.with_conn(|c| {
            let rows = c
                .query(
                    "UPDATE outbox SET due = $3, lease_owner = $4 WHERE id IN (
                         SELECT id FROM outbox WHERE due <= $1 ORDER BY due, id LIMIT $2
                         FOR UPDATE SKIP LOCKED)
                     RETURNING record",
                    &[
                        &(until_ms as i64),
                        &(limit as i64),
                        &lease_until,
                        &&*self.node,
                    ],
                )
                .map_err(pg_error)?;
            let mut items: Vec<OutboxItem> = rows
                .iter()
                .map(|r| decode(r.get::<_, &str>(0)))
                .collect::<Result<_, _>>()?;
            items.sort_by(|a, b| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
            Ok(items)
        })
    }

    /// End this node's lease on `items` (still unsettled): due at their own time again.
    pub(in crate::store) fn outbox_release(&self, items: &[OutboxItem]) -> Result<(), StoreError> {
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let due: Vec<i64> = items.iter().map(|i| i.next_attempt_at as i64).collect();
        self.with_conn(|c| {
            c.execute(
                "UPDATE outbox SET due = r.due, lease_owner = NULL
                 FROM unnest($1::text[], $2::bigint[]) AS r(id, due)
                 WHERE outbox.id = r.id AND outbox.lease_owner = $3",
                &[&ids, &due, &&*self.node],
            )
            .map(drop)
            .map_err(pg_error)
        })
    }

    pub(in crate::store) fn outbox_depth(&self) -> Result<i64, StoreError> {
        self.with_conn(|c| {
            Ok(c.query("SELECT count(*) FROM outbox", &[])
                .map_err(pg_error)?
                .first()
                .map(|r| r.get(0))
                .unwrap_or(0))
        })
    }

    pub(in crate::store) fn outbox_items(&self) -> Result<Vec<OutboxItem>, StoreError> {
        self.all("SELECT record FROM outbox ORDER BY id")
    }

    pub(in crate::store) fn outbox_oldest(&self) -> Result<Option<OutboxItem>, StoreError> {
        Ok(self
            .all::<OutboxItem>("SELECT record FROM outbox ORDER BY id LIMIT 1")?
            .pop())
    }
}
