//! The domain operations of a transaction (`store::ops`), in SQL. Each has the meaning its
//! declaration in `store::ops` gives; records are stored as their JSON (the same encoding as
//! the embedded store), with the columns that queries select or order by beside them.

use serde::de::DeserializeOwned;

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

fn json<T: serde::Serialize>(value: &T) -> TxResult<String> {
    Ok(serde_json::to_string(value)?)
}

impl PgTx<'_> {
    pub(in crate::store) fn message(&self, queue_id: &str) -> TxResult<Option<MessageRecord>> {
        record(self.query(
            "SELECT record FROM messages WHERE queue_id = $1",
            &[&queue_id],
        )?)
    }

    pub(in crate::store) fn put_message(&self, r: &MessageRecord) -> TxResult<()> {
        self.execute(
            "INSERT INTO messages (queue_id, received_at, record) VALUES ($1, $2, $3)
             ON CONFLICT (queue_id) DO UPDATE SET received_at = EXCLUDED.received_at, record = EXCLUDED.record",
            &[&r.queue_id, &(r.received_at as i64), &json(r)?],
        )
        .map(drop)
    }

    pub(in crate::store) fn put_body(&self, queue_id: &str, body: &[u8]) -> TxResult<()> {
        self.execute(
            "INSERT INTO bodies (queue_id, body) VALUES ($1, $2)
             ON CONFLICT (queue_id) DO UPDATE SET body = EXCLUDED.body",
            &[&queue_id, &body],
        )
        .map(drop)
    }

    pub(in crate::store) fn drop_body(&self, queue_id: &str) -> TxResult<()> {
        self.execute("DELETE FROM bodies WHERE queue_id = $1", &[&queue_id])
            .map(drop)
    }

    pub(in crate::store) fn delete_message_row(&self, queue_id: &str) -> TxResult<()> {
        self.execute("DELETE FROM messages WHERE queue_id = $1", &[&queue_id])?;
        self.drop_body(queue_id)
    }

    pub(in crate::store) fn thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
    ) -> TxResult<Option<ThreadEntry>> {
        let rows = self.query(
            "SELECT conversation, first_queue_id FROM thread_index WHERE inbox = $1 AND message_id = $2",
            &[&inbox, &message_id],
        )?;
        Ok(rows.first().map(|r| ThreadEntry {
            conversation: r.get(0),
            first: r.get(1),
        }))
    }

    /// A plain insert: the same Message-ID written by another node meanwhile fails this
    /// transaction on the primary key, and the retry finds it (a duplicate).
    pub(in crate::store) fn put_thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<()> {
        self.execute(
            "INSERT INTO thread_index (inbox, message_id, conversation, first_queue_id) VALUES ($1, $2, $3, $4)",
            &[&inbox, &message_id, &conversation, &queue_id],
        )
        .map(drop)
    }

    pub(in crate::store) fn remove_thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
    ) -> TxResult<()> {
        self.execute(
            "DELETE FROM thread_index WHERE inbox = $1 AND message_id = $2",
            &[&inbox, &message_id],
        )
        .map(drop)
    }

    pub(in crate::store) fn conversation(&self, id: &str) -> TxResult<Option<Conversation>> {
        record(self.query("SELECT record FROM conversations WHERE id = $1", &[&id])?)
    }

    pub(in crate::store) fn put_conversation(&self, c: &Conversation) -> TxResult<()> {
        self.execute(
            "INSERT INTO conversations (id, created_at, record) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&c.id, &(c.created_at as i64), &json(c)?],
        )
        .map(drop)
    }

    pub(in crate::store) fn delete_conversation_row(&self, id: &str) -> TxResult<()> {
        self.execute("DELETE FROM conversations WHERE id = $1", &[&id])
            .map(drop)
    }

    pub(in crate::store) fn link_conversation_message(
        &self,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<bool> {
        Ok(self.execute(
            "INSERT INTO conversation_messages (conversation, queue_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&conversation, &queue_id],
        )? == 1)
    }

    pub(in crate::store) fn unlink_conversation_message(
        &self,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<bool> {
        Ok(self.execute(
            "DELETE FROM conversation_messages WHERE conversation = $1 AND queue_id = $2",
            &[&conversation, &queue_id],
        )? == 1)
    }

    pub(in crate::store) fn contact(&self, email: &str) -> TxResult<Option<Contact>> {
        record(self.query("SELECT record FROM contacts WHERE email = $1", &[&email])?)
    }

    pub(in crate::store) fn put_contact(&self, c: &Contact) -> TxResult<()> {
        self.execute(
            "INSERT INTO contacts (email, record) VALUES ($1, $2)
             ON CONFLICT (email) DO UPDATE SET record = EXCLUDED.record",
            &[&c.email, &json(c)?],
        )
        .map(drop)
    }

    pub(in crate::store) fn link_contact(&self, email: &str, conversation: &str) -> TxResult<bool> {
        Ok(self.execute(
            "INSERT INTO contact_conversations (email, conversation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&email, &conversation],
        )? == 1)
    }

    pub(in crate::store) fn unlink_contact(
        &self,
        email: &str,
        conversation: &str,
    ) -> TxResult<bool> {
        Ok(self.execute(
            "DELETE FROM contact_conversations WHERE email = $1 AND conversation = $2",
            &[&email, &conversation],
        )? == 1)
    }

    pub(in crate::store) fn ticket(&self, id: &str) -> TxResult<Option<Ticket>> {
        record(self.query("SELECT record FROM tickets WHERE id = $1", &[&id])?)
    }

    pub(in crate::store) fn put_ticket(&self, t: &Ticket) -> TxResult<()> {
        self.execute(
            "INSERT INTO tickets (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&t.id, &json(t)?],
        )
        .map(drop)
    }

    pub(in crate::store) fn delete_ticket(&self, id: &str) -> TxResult<()> {
        self.execute("DELETE FROM tickets WHERE id = $1", &[&id])
            .map(drop)
    }

    /// From the sequence: never the same number twice, never a row every commit locks (a
    /// rolled-back transaction leaves a gap).
    pub(in crate::store) fn next_ticket_number(&self) -> TxResult<i64> {
        let rows = self.query("SELECT nextval('ticket_numbers')", &[])?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }

    pub(in crate::store) fn inbox_state(&self, id: &str) -> TxResult<Option<InboxState>> {
        record(self.query("SELECT record FROM inbox_states WHERE id = $1", &[&id])?)
    }

    pub(in crate::store) fn put_inbox_state(&self, st: &InboxState) -> TxResult<()> {
        self.execute(
            "INSERT INTO inbox_states (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&st.id, &json(st)?],
        )
        .map(drop)
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
        self.execute(
            "INSERT INTO outbox (id, due, record) VALUES ($1, $2, $3)",
            &[&item.id, &(item.next_attempt_at as i64), &json(item)?],
        )
        .map(drop)
    }

    pub(in crate::store) fn outbox_item(&self, id: &str) -> TxResult<Option<OutboxItem>> {
        record(self.query("SELECT record FROM outbox WHERE id = $1", &[&id])?)
    }

    pub(in crate::store) fn outbox_claimed(&self, id: &str) -> TxResult<Option<OutboxItem>> {
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
        self.execute(
            "UPDATE outbox SET due = $2, lease_owner = NULL, record = $3 WHERE id = $1",
            &[&item.id, &(item.next_attempt_at as i64), &json(item)?],
        )
        .map(drop)
    }

    pub(in crate::store) fn outbox_remove(&self, item: &OutboxItem) -> TxResult<()> {
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
