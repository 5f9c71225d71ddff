//! The domain operations of a transaction (`store::ops`), in SQL. Each has the meaning its
//! declaration in `store::ops` gives; records are stored as their JSON (the same encoding as
//! the embedded store), with the columns that queries select or order by beside them.

use serde::de::DeserializeOwned;

use super::pending::MAX_PENDING_BODY;
use super::PgTx;
use crate::store::model::{
    Contact, Conversation, InboxDefinition, InboxState, MessageRecord, OutboxItem, Ticket,
    UserState,
};
use crate::store::ops::ThreadEntry;
use crate::store::tx::TxResult;

/// The record in the first column of the first row, if any.
fn record<T: DeserializeOwned>(rows: Vec<postgres::Row>) -> TxResult<Option<T>> {
    match rows.first() {
        None => Ok(None),
        Some(r) => Ok(Some(serde_json::from_str(r.get::<_, &str>(0))?)),
    }
}

/// How many ticket numbers a connection takes from the sequence at once.
const TICKET_NUMBERS_AT_ONCE: i32 = 16;

fn json<T: serde::Serialize>(value: &T) -> TxResult<String> {
    Ok(serde_json::to_string(value)?)
}

impl PgTx<'_> {
    pub(in crate::store) fn message(&self, queue_id: &str) -> TxResult<Option<MessageRecord>> {
        if let Some(r) = self.pending.borrow().messages.get(queue_id) {
            return Ok(Some(r.clone()));
        }
        record(self.query(
            "SELECT record FROM messages WHERE queue_id = $1",
            &[&queue_id],
        )?)
    }

    pub(in crate::store) fn put_message(&self, r: &MessageRecord) -> TxResult<()> {
        let mut p = self.pending.borrow_mut();
        p.messages.insert(r.queue_id.clone(), r.clone());
        Ok(())
    }

    /// Held back up to `MAX_PENDING_BODY`; a bigger body is written at once.
    pub(in crate::store) fn put_body(&self, queue_id: &str, body: &[u8]) -> TxResult<()> {
        let mut p = self.pending.borrow_mut();
        if body.len() <= MAX_PENDING_BODY {
            p.bodies.insert(queue_id.to_string(), body.to_vec());
            return Ok(());
        }
        p.bodies.remove(queue_id);
        drop(p);
        self.execute(
            "INSERT INTO bodies (queue_id, body) VALUES ($1, $2)
             ON CONFLICT (queue_id) DO UPDATE SET body = EXCLUDED.body",
            &[&queue_id, &body],
        )
        .map(drop)
    }

    pub(in crate::store) fn drop_body(&self, queue_id: &str) -> TxResult<()> {
        self.pending.borrow_mut().bodies.remove(queue_id);
        self.execute("DELETE FROM bodies WHERE queue_id = $1", &[&queue_id])
            .map(drop)
    }

    pub(in crate::store) fn delete_message_row(&self, queue_id: &str) -> TxResult<()> {
        self.pending.borrow_mut().messages.remove(queue_id);
        self.execute("DELETE FROM messages WHERE queue_id = $1", &[&queue_id])?;
        self.drop_body(queue_id)
    }

    pub(in crate::store) fn thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
    ) -> TxResult<Option<ThreadEntry>> {
        let key = (inbox.to_string(), message_id.to_string());
        if let Some(e) = self.pending.borrow().thread.get(&key) {
            return Ok(Some(e.clone()));
        }
        if let Some(e) = self.ahead.borrow().thread.get(&key) {
            return Ok(e.clone());
        }
        let rows = self.query(
            "SELECT conversation, first_queue_id FROM thread_index WHERE inbox = $1 AND message_id = $2",
            &[&inbox, &message_id],
        )?;
        Ok(rows.first().map(|r| ThreadEntry {
            conversation: r.get(0),
            first: r.get(1),
        }))
    }

    /// Inserted at the flush (see there for a Message-ID another node wrote meanwhile).
    pub(in crate::store) fn put_thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<()> {
        self.pending.borrow_mut().thread.insert(
            (inbox.to_string(), message_id.to_string()),
            ThreadEntry {
                conversation: conversation.to_string(),
                first: queue_id.to_string(),
            },
        );
        Ok(())
    }

    pub(in crate::store) fn remove_thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
    ) -> TxResult<()> {
        let key = (inbox.to_string(), message_id.to_string());
        self.pending.borrow_mut().thread.remove(&key);
        self.ahead.borrow_mut().thread.remove(&key);
        self.execute(
            "DELETE FROM thread_index WHERE inbox = $1 AND message_id = $2",
            &[&inbox, &message_id],
        )
        .map(drop)
    }

    pub(in crate::store) fn conversation(&self, id: &str) -> TxResult<Option<Conversation>> {
        if let Some(c) = self.pending.borrow().conversations.get(id) {
            return Ok(Some(c.clone()));
        }
        record(self.query("SELECT record FROM conversations WHERE id = $1", &[&id])?)
    }

    pub(in crate::store) fn put_conversation(&self, c: &Conversation) -> TxResult<()> {
        let mut p = self.pending.borrow_mut();
        p.conversations.insert(c.id.clone(), c.clone());
        Ok(())
    }

    pub(in crate::store) fn delete_conversation_row(&self, id: &str) -> TxResult<()> {
        self.pending.borrow_mut().conversations.remove(id);
        self.execute("DELETE FROM conversations WHERE id = $1", &[&id])
            .map(drop)
    }

    pub(in crate::store) fn link_conversation_message(
        &self,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<bool> {
        let link = (conversation.to_string(), queue_id.to_string());
        if self.pending.borrow().conversation_links.contains(&link) {
            return Ok(false);
        }
        Ok(self.execute(
            "INSERT INTO conversation_messages (conversation, queue_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&conversation, &queue_id],
        )? == 1)
    }

    pub(in crate::store) fn link_new_conversation_message(
        &self,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<()> {
        let link = (conversation.to_string(), queue_id.to_string());
        self.pending.borrow_mut().conversation_links.insert(link);
        Ok(())
    }

    pub(in crate::store) fn unlink_conversation_message(
        &self,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<bool> {
        let link = (conversation.to_string(), queue_id.to_string());
        let was_pending = self.pending.borrow_mut().conversation_links.remove(&link);
        Ok(self.execute(
            "DELETE FROM conversation_messages WHERE conversation = $1 AND queue_id = $2",
            &[&conversation, &queue_id],
        )? == 1
            || was_pending)
    }

    pub(in crate::store) fn contact(&self, email: &str) -> TxResult<Option<Contact>> {
        if let Some(c) = self.pending.borrow().contacts.get(email) {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = self.ahead.borrow().contacts.get(email) {
            return Ok(c.clone());
        }
        record(self.query("SELECT record FROM contacts WHERE email = $1", &[&email])?)
    }

    pub(in crate::store) fn put_contact(&self, c: &Contact) -> TxResult<()> {
        let mut p = self.pending.borrow_mut();
        p.contacts.insert(c.email.clone(), c.clone());
        Ok(())
    }

    pub(in crate::store) fn link_contact(&self, email: &str, conversation: &str) -> TxResult<bool> {
        let link = (email.to_string(), conversation.to_string());
        if self.pending.borrow().contact_links.contains(&link) {
            return Ok(false);
        }
        Ok(self.execute(
            "INSERT INTO contact_conversations (email, conversation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&email, &conversation],
        )? == 1)
    }

    pub(in crate::store) fn link_new_contact(
        &self,
        email: &str,
        conversation: &str,
    ) -> TxResult<()> {
        let link = (email.to_string(), conversation.to_string());
        self.pending.borrow_mut().contact_links.insert(link);
        Ok(())
    }

    pub(in crate::store) fn unlink_contact(
        &self,
        email: &str,
        conversation: &str,
    ) -> TxResult<bool> {
        let link = (email.to_string(), conversation.to_string());
        let was_pending = self.pending.borrow_mut().contact_links.remove(&link);
        Ok(self.execute(
            "DELETE FROM contact_conversations WHERE email = $1 AND conversation = $2",
            &[&email, &conversation],
        )? == 1
            || was_pending)
    }

    pub(in crate::store) fn ticket(&self, id: &str) -> TxResult<Option<Ticket>> {
        if let Some(t) = self.pending.borrow().tickets.get(id) {
            return Ok(Some(t.clone()));
        }
        record(self.query("SELECT record FROM tickets WHERE id = $1", &[&id])?)
    }

    pub(in crate::store) fn put_ticket(&self, t: &Ticket) -> TxResult<()> {
        let mut p = self.pending.borrow_mut();
        p.tickets.insert(t.id.clone(), t.clone());
        Ok(())
    }

    pub(in crate::store) fn delete_ticket(&self, id: &str) -> TxResult<()> {
        self.pending.borrow_mut().tickets.remove(id);
        self.execute("DELETE FROM tickets WHERE id = $1", &[&id])
            .map(drop)
    }

    /// From the sequence: never the same number twice, never a row every commit locks. A
    /// connection takes `TICKET_NUMBERS_AT_ONCE` numbers in one round trip and gives them out
    /// in order, as PostgreSQL's own sequence `CACHE` does for a session: numbers from two
    /// connections interleave, and a rolled-back transaction or a closed connection leaves a
    /// gap (numbers are unique, not consecutive).
    pub(in crate::store) fn next_ticket_number(&self) -> TxResult<i64> {
        let mut conn = self.conn.borrow_mut();
        if conn.ticket_numbers.is_empty() {
            let rows = conn.query(
                "SELECT nextval('ticket_numbers') FROM generate_series(1, $1::int4)",
                &[&TICKET_NUMBERS_AT_ONCE],
            )?;
            let mut numbers: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            numbers.sort_unstable_by(|a, b| b.cmp(a));
            conn.ticket_numbers = numbers;
        }
        Ok(conn.ticket_numbers.pop().unwrap_or(0))
    }

    pub(in crate::store) fn inbox_state(&self, id: &str) -> TxResult<Option<InboxState>> {
        if let Some(st) = self.pending.borrow().inbox_states.get(id) {
            return Ok(Some(st.clone()));
        }
        if let Some(st) = self.ahead.borrow().inbox_states.get(id) {
            return Ok(st.clone());
        }
        record(self.query("SELECT record FROM inbox_states WHERE id = $1", &[&id])?)
    }

    pub(in crate::store) fn put_inbox_state(&self, st: &InboxState) -> TxResult<()> {
        let mut p = self.pending.borrow_mut();
        p.inbox_states.insert(st.id.clone(), st.clone());
        Ok(())
    }

    pub(in crate::store) fn user_state(&self, user: &str) -> TxResult<Option<UserState>> {
        record(self.query("SELECT record FROM user_states WHERE name = $1", &[&user])?)
    }

    pub(in crate::store) fn put_user_state(&self, user: &str, st: &UserState) -> TxResult<()> {
        self.execute(
            "INSERT INTO user_states (name, record) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
            &[&user, &json(st)?],
        )
        .map(drop)
    }

    pub(in crate::store) fn open_count(&self, user: &str) -> TxResult<i64> {
        let rows = self.query("SELECT open FROM open_counts WHERE name = $1", &[&user])?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }

    pub(in crate::store) fn open_added(&self, user: &str) -> TxResult<()> {
        self.execute(
            "INSERT INTO open_counts (name, open) VALUES ($1, 1)
             ON CONFLICT (name) DO UPDATE SET open = open_counts.open + 1",
            &[&user],
        )
        .map(drop)
    }

    pub(in crate::store) fn open_removed(&self, user: &str) -> TxResult<()> {
        self.execute(
            "UPDATE open_counts SET open = open - 1 WHERE name = $1 AND open > 0",
            &[&user],
        )
        .map(drop)
    }

    /// Locks the rule's row until the transaction ends: another node's assignment by the same
    /// rule waits, then fails as a serialization conflict and runs again with the new position.
    pub(in crate::store) fn round_robin_position(&self, rule: &str) -> TxResult<i64> {
        self.execute(
            "INSERT INTO round_robin (rule, position) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            &[&rule],
        )?;
        let rows = self.query(
            "SELECT position FROM round_robin WHERE rule = $1 FOR UPDATE",
            &[&rule],
        )?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }

    pub(in crate::store) fn set_round_robin_position(&self, rule: &str, next: i64) -> TxResult<()> {
        self.execute(
            "INSERT INTO round_robin (rule, position) VALUES ($1, $2)
             ON CONFLICT (rule) DO UPDATE SET position = EXCLUDED.position",
            &[&rule, &next],
        )
        .map(drop)
    }

    pub(in crate::store) fn outbox_add(&self, item: &OutboxItem) -> TxResult<()> {
        let mut p = self.pending.borrow_mut();
        p.outbox.insert(item.id.clone(), item.clone());
        Ok(())
    }

    pub(in crate::store) fn outbox_item(&self, id: &str) -> TxResult<Option<OutboxItem>> {
        if let Some(item) = self.pending.borrow().outbox.get(id) {
            return Ok(Some(item.clone()));
        }
        record(self.query("SELECT record FROM outbox WHERE id = $1", &[&id])?)
    }

    /// An item added by this transaction has no lease yet: it is nobody's claim.
    pub(in crate::store) fn outbox_claimed(&self, id: &str) -> TxResult<Option<OutboxItem>> {
        if self.pending.borrow().outbox.contains_key(id) {
            return Ok(None);
        }
        record(self.query(
            "SELECT record FROM outbox WHERE id = $1 AND lease_owner = $2",
            &[&id, &self.node],
        )?)
    }

    /// The lease ends with the update: the item is due again at its new time, for any node.
    pub(in crate::store) fn outbox_update(
        &self,
        _old: &OutboxItem,
        item: &OutboxItem,
    ) -> TxResult<()> {
        if let Some(pending) = self.pending.borrow_mut().outbox.get_mut(&item.id) {
            *pending = item.clone();
            return Ok(());
        }
        self.execute(
            "UPDATE outbox SET due = $2, lease_owner = NULL, record = $3 WHERE id = $1",
            &[&item.id, &(item.next_attempt_at as i64), &json(item)?],
        )
        .map(drop)
    }

    pub(in crate::store) fn outbox_remove(&self, item: &OutboxItem) -> TxResult<()> {
        self.pending.borrow_mut().outbox.remove(&item.id);
        self.execute("DELETE FROM outbox WHERE id = $1", &[&item.id])
            .map(drop)
    }

    pub(in crate::store) fn inbox_definition(&self, id: &str) -> TxResult<Option<InboxDefinition>> {
        record(self.query("SELECT record FROM inbox_definitions WHERE id = $1", &[&id])?)
    }

    /// Two nodes claiming one address at once: the later upsert fails as a serialization
    /// conflict, and its retry finds the address taken.
    pub(in crate::store) fn put_inbox_definition(&self, def: &InboxDefinition) -> TxResult<()> {
        self.execute(
            "INSERT INTO inbox_definitions (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&def.spec.id, &json(def)?],
        )?;
        self.definitions_changed()?;
        self.execute(
            "INSERT INTO inbox_addresses (address, inbox) VALUES ($1, $2)
             ON CONFLICT (address) DO UPDATE SET inbox = EXCLUDED.inbox",
            &[&def.address().to_lowercase(), &def.spec.id],
        )
        .map(drop)
    }

    pub(in crate::store) fn inbox_address_owner(&self, address: &str) -> TxResult<Option<String>> {
        let rows = self.query(
            "SELECT inbox FROM inbox_addresses WHERE address = $1",
            &[&address.to_lowercase()],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub(in crate::store) fn release_inbox_address(&self, address: &str) -> TxResult<()> {
        self.execute(
            "DELETE FROM inbox_addresses WHERE address = $1",
            &[&address.to_lowercase()],
        )
        .map(drop)
    }

    pub(in crate::store) fn person<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> TxResult<Option<T>> {
        record(self.query(
            "SELECT record FROM people WHERE kind = $1 AND id = $2",
            &[&kind, &id],
        )?)
    }

    pub(in crate::store) fn put_person<T: serde::Serialize>(
        &self,
        kind: &str,
        id: &str,
        def: &T,
    ) -> TxResult<()> {
        self.execute(
            "INSERT INTO people (kind, id, record) VALUES ($1, $2, $3)
             ON CONFLICT (kind, id) DO UPDATE SET record = EXCLUDED.record",
            &[&kind, &id, &json(def)?],
        )?;
        self.definitions_changed()
    }

    pub(in crate::store) fn remove_person(&self, kind: &str, id: &str) -> TxResult<()> {
        self.execute(
            "DELETE FROM people WHERE kind = $1 AND id = $2",
            &[&kind, &id],
        )?;
        self.definitions_changed()
    }

    /// Every write of an inbox, user or team definition counts here, in its own transaction:
    /// the other nodes compare the count with the one they last compiled
    /// (`Store::definitions_generation`) and compile the definitions again when it moved.
    fn definitions_changed(&self) -> TxResult<()> {
        self.execute(
            "INSERT INTO store_state (key, value) VALUES ($1, '1')
             ON CONFLICT (key) DO UPDATE SET value = (store_state.value::bigint + 1)::text",
            &[&super::DEFINITIONS_GENERATION],
        )
        .map(drop)
    }
}
