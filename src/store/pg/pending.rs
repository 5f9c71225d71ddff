//! The writes a transaction holds back until it commits, and the rows it reads ahead. A batch
//! of twenty messages used to send about seventeen statements per message, each a round trip
//! the committer waited for while it held its batch's locks; most of them were writes whose
//! answer nobody reads. Now the records a message writes (message, body, thread entry,
//! conversation and its new links, contact and its new links, ticket, inbox state, outbox
//! items) are kept here, keyed like their table, and written at the end in one statement, a
//! multi-row insert per table (`FLUSH`, just before `COMMIT`). Reads of those records inside
//! the transaction look here first, so the transaction still reads its own writes; a record
//! written twice (the inbox state of every message of the batch) is written once, in its last
//! form. What the plans read first is fetched for the whole batch in one statement
//! (`ReadAhead`).
//!
//! What must not wait stays immediate: deletes (they first drop the pending write and the
//! read-ahead row of the same key, then delete in the database, which is correct whether or
//! not the row was there), the links whose answer the caller needs (`link_contact`,
//! `link_conversation_message`, for a conversation that existed before), and every table not
//! kept here. A unique key another node took meanwhile fails the flush instead of the insert,
//! which fails the transaction the same way: it is retried from the start.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::PgTx;
use crate::store::model::{Contact, Conversation, InboxState, MessageRecord, OutboxItem, Ticket};
use crate::store::ops::ThreadEntry;
use crate::store::tx::TxResult;

/// A body above this size is written at once instead of copied into the pending writes: a
/// 30 MB message would otherwise be held twice, and twenty of them would make one statement
/// of 600 MB.
pub(super) const MAX_PENDING_BODY: usize = 256 * 1024;

/// The pending writes of one transaction, by table and key. Sorted maps: every committer
/// writes the rows of one table in key order, so two batches touching the same rows take
/// their row locks in the same order.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) messages: BTreeMap<String, MessageRecord>,
    pub(super) bodies: BTreeMap<String, Vec<u8>>,
    pub(super) thread: BTreeMap<(String, String), ThreadEntry>,
    pub(super) conversations: BTreeMap<String, Conversation>,
    /// (conversation, queue id) links known to be new (`link_new_conversation_message`).
    pub(super) conversation_links: BTreeSet<(String, String)>,
    pub(super) contacts: BTreeMap<String, Contact>,
    /// (email, conversation) links known to be new (`link_new_contact`).
    pub(super) contact_links: BTreeSet<(String, String)>,
    pub(super) tickets: BTreeMap<String, Ticket>,
    pub(super) inbox_states: BTreeMap<String, InboxState>,
    pub(super) outbox: BTreeMap<String, OutboxItem>,
}

fn json<T: serde::Serialize>(value: &T) -> TxResult<String> {
    Ok(serde_json::to_string(value)?)
}

/// The keys of `map` as `&str`, for a `text[]` parameter.
fn keys<V>(map: &BTreeMap<String, V>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

/// The values of `map` as JSON, for a `text[]` parameter.
fn records<V: serde::Serialize>(map: &BTreeMap<String, V>) -> TxResult<Vec<String>> {
    map.values().map(json).collect()
}

/// Every pending write in one statement, one round trip: an insert per table, each of an
/// array per column (an empty array inserts nothing). Data-modifying `WITH` parts all run,
/// against the same snapshot; no two of them touch the same table.
const FLUSH: &str = "WITH
  m AS (INSERT INTO messages (queue_id, received_at, record)
        SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
        ON CONFLICT (queue_id) DO UPDATE SET received_at = EXCLUDED.received_at, record = EXCLUDED.record),
  b AS (INSERT INTO bodies (queue_id, body)
        SELECT * FROM unnest($4::text[], $5::bytea[])
        ON CONFLICT (queue_id) DO UPDATE SET body = EXCLUDED.body),
  t AS (INSERT INTO thread_index (inbox, message_id, conversation, first_queue_id)
        SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::text[])),
  c AS (INSERT INTO conversations (id, created_at, record)
        SELECT * FROM unnest($10::text[], $11::int8[], $12::text[])
        ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record),
  cm AS (INSERT INTO conversation_messages (conversation, queue_id)
        SELECT * FROM unnest($13::text[], $14::text[]) ON CONFLICT DO NOTHING),
  k AS (INSERT INTO contacts (email, record)
        SELECT * FROM unnest($15::text[], $16::text[])
        ON CONFLICT (email) DO UPDATE SET record = EXCLUDED.record),
  kc AS (INSERT INTO contact_conversations (email, conversation)
        SELECT * FROM unnest($17::text[], $18::text[]) ON CONFLICT DO NOTHING),
  tk AS (INSERT INTO tickets (id, record)
        SELECT * FROM unnest($19::text[], $20::text[])
        ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record),
  s AS (INSERT INTO inbox_states (id, record)
        SELECT * FROM unnest($21::text[], $22::text[])
        ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record)
INSERT INTO outbox (id, due, record) SELECT * FROM unnest($23::text[], $24::int8[], $25::text[])";

impl Pending {
    fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.bodies.is_empty()
            && self.thread.is_empty()
            && self.conversations.is_empty()
            && self.conversation_links.is_empty()
            && self.contacts.is_empty()
            && self.contact_links.is_empty()
            && self.tickets.is_empty()
            && self.inbox_states.is_empty()
            && self.outbox.is_empty()
    }
}

impl PgTx<'_> {
    /// Write every pending record (`FLUSH`).
    pub(super) fn flush(&self) -> TxResult<()> {
        let p = std::mem::take(&mut *self.pending.borrow_mut());
        if p.is_empty() {
            return Ok(());
        }
        let received: Vec<i64> = p.messages.values().map(|r| r.received_at as i64).collect();
        let bodies: Vec<&[u8]> = p.bodies.values().map(Vec::as_slice).collect();
        let created: Vec<i64> = (p.conversations.values())
            .map(|c| c.created_at as i64)
            .collect();
        let due: Vec<i64> = (p.outbox.values())
            .map(|i| i.next_attempt_at as i64)
            .collect();
        self.execute(
            FLUSH,
            &[
                &keys(&p.messages),
                &received,
                &records(&p.messages)?,
                &keys(&p.bodies),
                &bodies,
                &firsts(&p.thread, |k| k.0.as_str()),
                &firsts(&p.thread, |k| k.1.as_str()),
                &(p.thread.values())
                    .map(|e| e.conversation.as_str())
                    .collect::<Vec<_>>(),
                &p.thread
                    .values()
                    .map(|e| e.first.as_str())
                    .collect::<Vec<_>>(),
                &keys(&p.conversations),
                &created,
                &records(&p.conversations)?,
                &pairs(&p.conversation_links, |k| k.0.as_str()),
                &pairs(&p.conversation_links, |k| k.1.as_str()),
                &keys(&p.contacts),
                &records(&p.contacts)?,
                &pairs(&p.contact_links, |k| k.0.as_str()),
                &pairs(&p.contact_links, |k| k.1.as_str()),
                &keys(&p.tickets),
                &records(&p.tickets)?,
                &keys(&p.inbox_states),
                &records(&p.inbox_states)?,
                &keys(&p.outbox),
                &due,
                &records(&p.outbox)?,
            ],
        )?;
        Ok(())
    }
}

/// One part of the keys of a map keyed by pairs, for a `text[]` parameter.
fn firsts<'a, V>(
    map: &'a BTreeMap<(String, String), V>,
    part: impl Fn(&'a (String, String)) -> &'a str,
) -> Vec<&'a str> {
    map.keys().map(part).collect()
}

/// One column of a set of pairs.
fn pairs<'a>(
    set: &'a BTreeSet<(String, String)>,
    part: impl Fn(&'a (String, String)) -> &'a str,
) -> Vec<&'a str> {
    set.iter().map(part).collect()
}

/// The rows a batch's plans will read first, fetched in one round trip at the start of its
/// transaction (`PgTx::read_ahead`) instead of one query per message: each message's own
/// thread index entry (the duplicate check), its attributed contact and its inboxes' states.
/// A key asked for and not found is remembered as absent, so the plan does not ask again.
#[derive(Default)]
pub(super) struct ReadAhead {
    pub(super) thread: HashMap<(String, String), Option<ThreadEntry>>,
    pub(super) contacts: HashMap<String, Option<Contact>>,
    pub(super) inbox_states: HashMap<String, Option<InboxState>>,
}

/// What to read ahead for a batch.
#[derive(Default)]
pub(in crate::store) struct ReadAheadKeys {
    thread: (Vec<String>, Vec<String>),
    contacts: Vec<String>,
    inboxes: Vec<String>,
}

impl ReadAheadKeys {
    /// The keys the threading plan of each of `records` looks up first: the same derivation of
    /// the thread key as the plan's (`keys::thread_message_id`), the lower-case contact.
    pub(super) fn of<'a>(records: impl Iterator<Item = &'a MessageRecord>) -> ReadAheadKeys {
        let mut keys = ReadAheadKeys::default();
        for r in records {
            let message_id = crate::store::keys::thread_message_id(
                &r.message_id,
                &r.from,
                &r.subject,
                &r.sha256,
            );
            for rcpt in &r.rcpt {
                keys.thread.0.push(rcpt.inbox.clone());
                keys.thread.1.push(message_id.clone());
                keys.inboxes.push(rcpt.inbox.clone());
            }
            if let Some(a) = &r.attribution {
                keys.contacts.push(a.email.to_lowercase());
            }
        }
        keys.inboxes.sort_unstable();
        keys.inboxes.dedup();
        keys.contacts.sort_unstable();
        keys.contacts.dedup();
        keys
    }

    fn is_empty(&self) -> bool {
        self.thread.0.is_empty() && self.contacts.is_empty() && self.inboxes.is_empty()
    }
}

impl PgTx<'_> {
    /// Fetch the rows of `keys`: one statement, the first of the transaction (so inside its
    /// snapshot, as every later read).
    pub(super) fn read_ahead(&self, keys: &ReadAheadKeys) -> TxResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let rows = self.query(
            // LATERAL: one primary-key lookup per key. A plain join let the planner hash the
            // whole thread index once per batch (found with perf: a cost growing with the store).
            "SELECT 0, t.inbox::text, t.message_id::text, t.conversation, t.first_queue_id
               FROM unnest($1::text[], $2::text[]) AS k(inbox, message_id),
                    LATERAL (SELECT * FROM thread_index i
                              WHERE i.inbox = k.inbox AND i.message_id = k.message_id) t
             UNION ALL SELECT 1, email::text, '', record, '' FROM contacts WHERE email = ANY($3::text[])
             UNION ALL SELECT 2, id::text, '', record, '' FROM inbox_states WHERE id = ANY($4::text[])",
            &[&keys.thread.0, &keys.thread.1, &keys.contacts, &keys.inboxes],
        )?;
        let mut ahead = ReadAhead::default();
        for (inbox, id) in keys.thread.0.iter().zip(&keys.thread.1) {
            ahead.thread.insert((inbox.clone(), id.clone()), None);
        }
        for c in &keys.contacts {
            ahead.contacts.insert(c.clone(), None);
        }
        for i in &keys.inboxes {
            ahead.inbox_states.insert(i.clone(), None);
        }
        for row in rows {
            let (kind, key): (i32, String) = (row.get(0), row.get(1));
            match kind {
                0 => {
                    let entry = ThreadEntry {
                        conversation: row.get(3),
                        first: row.get(4),
                    };
                    ahead.thread.insert((key, row.get(2)), Some(entry));
                }
                1 => {
                    let c = serde_json::from_str(row.get::<_, &str>(3))?;
                    ahead.contacts.insert(key, Some(c));
                }
                _ => {
                    let st = serde_json::from_str(row.get::<_, &str>(3))?;
                    ahead.inbox_states.insert(key, Some(st));
                }
            }
        }
        *self.ahead.borrow_mut() = ahead;
        Ok(())
    }
}
