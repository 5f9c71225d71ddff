//! What a transaction reads and writes, by domain name: messages, the thread index, conversations,
//! contacts, tickets, inbox states, users' runtime state, the routing counters and the outbox.
//! Trees, keys and their encodings stay behind these methods, so the stages above the store
//! (threading, routing, actions, notify) say what they mean and never how it is kept.

use super::model::{
    Contact, Conversation, InboxState, MessageRecord, OutboxItem, Ticket, UserState,
};
use super::tx::{TreeId, Tx, TxResult};

/// Counter of the number of outbox items waiting (a gauge kept in step by `outbox_*`).
pub(super) const OUTBOX_DEPTH: &[u8] = b"outbox:depth";
/// Counter of the last ticket number given.
const TICKET_SEQUENCE: &[u8] = b"seq:ticket";

/// The thread index's entry for one Message-ID in one inbox: the conversation it belongs to and
/// the queue id of the first copy received (later copies are duplicates of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadEntry {
    pub conversation: String,
    pub first: String,
}

impl ThreadEntry {
    /// Decode `conversation \0 first queue id`.
    pub(super) fn decode(v: &[u8]) -> ThreadEntry {
        let mut parts = v.split(|&b| b == 0);
        let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let conversation = next();
        ThreadEntry {
            conversation,
            first: next(),
        }
    }
}

/// The thread index key of `message_id` in `inbox`.
pub(super) fn thread_key(inbox: &str, message_id: &str) -> Vec<u8> {
    [inbox.as_bytes(), &[0], message_id.as_bytes()].concat()
}

/// The key of a contact's link to one of their conversations.
fn contact_link(email: &str, conversation: &str) -> Vec<u8> {
    [email.as_bytes(), &[0], conversation.as_bytes()].concat()
}

/// The outbox schedule's key: due time (big-endian unix ms) then the item id.
pub(super) fn due_key(due_ms: u64, id: &str) -> Vec<u8> {
    let mut k = due_ms.to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// The counter of `user`'s open conversations (see `Tx::open_count`).
fn open_key(user: &str) -> Vec<u8> {
    format!("open:{user}").into_bytes()
}

/// The round-robin position counter of an assignment rule.
fn round_robin_key(rule: &str) -> Vec<u8> {
    format!("rr:{rule}").into_bytes()
}

impl Tx<'_> {
    // ---- messages ------------------------------------------------------------------------------

    pub fn message(&self, queue_id: &str) -> TxResult<Option<MessageRecord>> {
        self.get_json(TreeId::Messages, queue_id.as_bytes())
    }

    /// Write a message's record (its body is the committer's to write).
    pub fn put_message(&self, record: &MessageRecord) -> TxResult<()> {
        self.put_json(TreeId::Messages, record.queue_id.as_bytes(), record)
    }

    // ---- the thread index ----------------------------------------------------------------------

    /// The conversation a Message-ID received in `inbox` belongs to, with its first copy.
    pub fn thread_entry(&self, inbox: &str, message_id: &str) -> TxResult<Option<ThreadEntry>> {
        Ok(self
            .get(TreeId::MessageIds, &thread_key(inbox, message_id))?
            .map(|v| ThreadEntry::decode(&v)))
    }

    /// Record that `message_id` in `inbox` belongs to `conversation`, first received as
    /// `queue_id`.
    pub fn put_thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<()> {
        let value = [conversation.as_bytes(), &[0], queue_id.as_bytes()].concat();
        self.insert(TreeId::MessageIds, &thread_key(inbox, message_id), &value)
    }

    // ---- conversations, contacts, tickets ------------------------------------------------------

    pub fn conversation(&self, id: &str) -> TxResult<Option<Conversation>> {
        self.get_json(TreeId::Conversations, id.as_bytes())
    }

    pub fn put_conversation(&self, c: &Conversation) -> TxResult<()> {
        self.put_json(TreeId::Conversations, c.id.as_bytes(), c)
    }

    /// A contact by (lower-case) email.
    pub fn contact(&self, email: &str) -> TxResult<Option<Contact>> {
        self.get_json(TreeId::Contacts, email.as_bytes())
    }

    pub fn put_contact(&self, c: &Contact) -> TxResult<()> {
        self.put_json(TreeId::Contacts, c.email.as_bytes(), c)
    }

    /// Link a contact to a conversation; true if the link is new (the caller counts it on the
    /// contact's record).
    pub fn link_contact(&self, email: &str, conversation: &str) -> TxResult<bool> {
        let link = contact_link(email, conversation);
        if self.get(TreeId::ContactConversations, &link)?.is_some() {
            return Ok(false);
        }
        self.insert(TreeId::ContactConversations, &link, b"")?;
        Ok(true)
    }

    pub fn ticket(&self, id: &str) -> TxResult<Option<Ticket>> {
        self.get_json(TreeId::Tickets, id.as_bytes())
    }

    pub fn put_ticket(&self, t: &Ticket) -> TxResult<()> {
        self.put_json(TreeId::Tickets, t.id.as_bytes(), t)
    }

    /// The next ticket number (1, 2, ...), never given twice.
    pub fn next_ticket_number(&self) -> TxResult<i64> {
        self.add(TICKET_SEQUENCE, 1)
    }

    // ---- inboxes and users ---------------------------------------------------------------------

    pub fn inbox_state(&self, id: &str) -> TxResult<Option<InboxState>> {
        self.get_json(TreeId::Inboxes, id.as_bytes())
    }

    pub fn put_inbox_state(&self, st: &InboxState) -> TxResult<()> {
        self.put_json(TreeId::Inboxes, st.id.as_bytes(), st)
    }

    /// What is stored at run time for `user` (nothing: the config applies).
    pub fn user_state(&self, user: &str) -> TxResult<Option<UserState>> {
        self.get_json(TreeId::Users, user.as_bytes())
    }

    pub fn put_user_state(&self, user: &str, st: &UserState) -> TxResult<()> {
        self.put_json(TreeId::Users, user.as_bytes(), st)
    }

    // ---- routing counters ----------------------------------------------------------------------

    /// How many open conversations `user` is assigned (`actions` keeps this in step).
    pub fn open_count(&self, user: &str) -> TxResult<i64> {
        self.counter(&open_key(user))
    }

    /// `user` has one open conversation more.
    pub fn open_added(&self, user: &str) -> TxResult<()> {
        self.add(&open_key(user), 1).map(drop)
    }

    /// `user` has one open conversation fewer; never below zero (a count from before this
    /// invariant was kept must not make `least_open` prefer someone forever).
    pub fn open_removed(&self, user: &str) -> TxResult<()> {
        let key = open_key(user);
        if self.counter(&key)? > 0 {
            self.add(&key, -1)?;
        }
        Ok(())
    }

    /// Where the round robin of `rule` (a name unique per rule and candidate list) continues.
    pub fn round_robin_position(&self, rule: &str) -> TxResult<i64> {
        self.counter(&round_robin_key(rule))
    }

    pub fn set_round_robin_position(&self, rule: &str, next: i64) -> TxResult<()> {
        self.insert(
            TreeId::Counters,
            &round_robin_key(rule),
            &next.to_be_bytes(),
        )
    }

    // ---- the outbox ----------------------------------------------------------------------------

    /// Add an item, due at its `next_attempt_at`.
    pub fn outbox_add(&self, item: &OutboxItem) -> TxResult<()> {
        self.put_json(TreeId::Outbox, item.id.as_bytes(), item)?;
        self.insert(
            TreeId::OutboxDue,
            &due_key(item.next_attempt_at, &item.id),
            b"",
        )?;
        self.add(OUTBOX_DEPTH, 1).map(drop)
    }

    pub fn outbox_item(&self, id: &str) -> TxResult<Option<OutboxItem>> {
        self.get_json(TreeId::Outbox, id.as_bytes())
    }

    /// Store `item` changed (attempts, error, next attempt) in place of `old`: it is then due at
    /// its new `next_attempt_at`.
    pub fn outbox_update(&self, old: &OutboxItem, item: &OutboxItem) -> TxResult<()> {
        self.remove(TreeId::OutboxDue, &due_key(old.next_attempt_at, &old.id))?;
        self.put_json(TreeId::Outbox, item.id.as_bytes(), item)?;
        self.insert(
            TreeId::OutboxDue,
            &due_key(item.next_attempt_at, &item.id),
            b"",
        )
    }

    /// Remove an item (delivered, given up, dropped) as it is stored.
    pub fn outbox_remove(&self, item: &OutboxItem) -> TxResult<()> {
        self.remove(TreeId::OutboxDue, &due_key(item.next_attempt_at, &item.id))?;
        self.remove(TreeId::Outbox, item.id.as_bytes())?;
        self.add(OUTBOX_DEPTH, -1).map(drop)
    }
}
