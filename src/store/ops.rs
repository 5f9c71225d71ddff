//! What a transaction reads and writes, by domain name: messages, the thread index, conversations,
//! contacts, tickets, inbox states, users' runtime state, the routing counters and the outbox.
//! Trees, keys and their encodings stay behind these methods, so the stages above the store
//! (threading, routing, actions, notify) say what they mean and never how it is kept.

use super::keys;
use super::model::{
    Contact, Conversation, InboxDefinition, InboxState, MessageRecord, OutboxItem, Ticket,
    UserState,
};
use super::tx::{conversation_message_key, SledTx, TreeId, Tx, TxInner, TxResult};

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

/// The public operations of `Tx`, each sent to the backend holding the transaction. Every
/// backend implements each of them with the same meaning (the store conformance tests run the
/// same cases against both).
macro_rules! domain_ops {
    ($( $(#[$m:meta])* $vis:vis fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl Tx<'_> {
            $(
                $(#[$m])*
                $vis fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.0 {
                        TxInner::Sled(s) => s.$name($($arg),*),
                        TxInner::Pg(p) => p.$name($($arg),*),
                    }
                }
            )*
        }
    };
}

domain_ops! {
    pub fn message(&self, queue_id: &str) -> TxResult<Option<MessageRecord>>;
    /// Write a message's record (its body is the committer's to write).
    pub fn put_message(&self, record: &MessageRecord) -> TxResult<()>;
    /// Write a message's body (inside the commit of its record).
    pub(super) fn put_body(&self, queue_id: &str, body: &[u8]) -> TxResult<()>;
    /// Remove a message's stored body (retention); its record stays, marked expired by the caller.
    pub(super) fn drop_body(&self, queue_id: &str) -> TxResult<()>;
    /// Remove a message's record and body, nothing else (see `remove_message`).
    pub(super) fn delete_message_row(&self, queue_id: &str) -> TxResult<()>;
    /// The conversation a Message-ID received in `inbox` belongs to, with its first copy.
    pub fn thread_entry(&self, inbox: &str, message_id: &str) -> TxResult<Option<ThreadEntry>>;
    /// Record that `message_id` in `inbox` belongs to `conversation`, first received as
    /// `queue_id`.
    pub fn put_thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
        conversation: &str,
        queue_id: &str
    ) -> TxResult<()>;
    /// Remove a Message-ID's entry (retention does, for the messages it removes).
    pub fn remove_thread_entry(&self, inbox: &str, message_id: &str) -> TxResult<()>;
    pub fn conversation(&self, id: &str) -> TxResult<Option<Conversation>>;
    pub fn put_conversation(&self, c: &Conversation) -> TxResult<()>;
    pub(super) fn delete_conversation_row(&self, id: &str) -> TxResult<()>;
    /// Put a message in a conversation's index; true if it was not there yet.
    pub(super) fn link_conversation_message(&self, conversation: &str, queue_id: &str) -> TxResult<bool>;
    /// Put a message in the index of a conversation this transaction creates (the link cannot
    /// exist yet, so nothing is read to find out).
    pub(super) fn link_new_conversation_message(&self, conversation: &str, queue_id: &str) -> TxResult<()>;
    /// Take a message out of a conversation's index; true if it was there.
    pub(super) fn unlink_conversation_message(&self, conversation: &str, queue_id: &str) -> TxResult<bool>;
    /// A contact by (lower-case) email.
    pub fn contact(&self, email: &str) -> TxResult<Option<Contact>>;
    pub fn put_contact(&self, c: &Contact) -> TxResult<()>;
    /// Link a contact to a conversation; true if the link is new (the caller counts it on the
    /// contact's record).
    pub fn link_contact(&self, email: &str, conversation: &str) -> TxResult<bool>;
    /// Link a contact to a conversation this transaction creates (the link is new).
    pub fn link_new_contact(&self, email: &str, conversation: &str) -> TxResult<()>;
    /// Remove a contact's link to a conversation; true if it was there.
    pub(super) fn unlink_contact(&self, email: &str, conversation: &str) -> TxResult<bool>;
    pub fn ticket(&self, id: &str) -> TxResult<Option<Ticket>>;
    pub fn put_ticket(&self, t: &Ticket) -> TxResult<()>;
    pub(super) fn delete_ticket(&self, id: &str) -> TxResult<()>;
    /// The next ticket number (1, 2, ...), never given twice.
    pub fn next_ticket_number(&self) -> TxResult<i64>;
    pub fn inbox_state(&self, id: &str) -> TxResult<Option<InboxState>>;
    pub fn put_inbox_state(&self, st: &InboxState) -> TxResult<()>;
    /// What is stored at run time for `user` (nothing: the config applies).
    pub fn user_state(&self, user: &str) -> TxResult<Option<UserState>>;
    pub fn put_user_state(&self, user: &str, st: &UserState) -> TxResult<()>;
    /// How many open conversations `user` is assigned (`actions` keeps this in step).
    pub fn open_count(&self, user: &str) -> TxResult<i64>;
    /// `user` has one open conversation more.
    pub fn open_added(&self, user: &str) -> TxResult<()>;
    /// `user` has one open conversation fewer; never below zero (a count from before this
    /// invariant was kept must not make `least_open` prefer someone forever).
    pub fn open_removed(&self, user: &str) -> TxResult<()>;
    /// Where the round robin of `rule` (a name unique per rule and candidate list) continues.
    /// Reading it reserves it until the transaction ends: two nodes cannot both take the same
    /// turn.
    pub fn round_robin_position(&self, rule: &str) -> TxResult<i64>;
    pub fn set_round_robin_position(&self, rule: &str, next: i64) -> TxResult<()>;
    /// Add an item, due at its `next_attempt_at`.
    pub fn outbox_add(&self, item: &OutboxItem) -> TxResult<()>;
    pub fn outbox_item(&self, id: &str) -> TxResult<Option<OutboxItem>>;
    /// The item if this node may settle it (record a delivery, a retry, giving up): on a store
    /// shared by several nodes only while this node holds its lease (`Store::outbox_due`), so
    /// a node whose lease ran out cannot undo the claim of the node that took the item over;
    /// on the embedded store whenever it exists.
    pub fn outbox_claimed(&self, id: &str) -> TxResult<Option<OutboxItem>>;
    /// Store `item` changed (attempts, error, next attempt) in place of `old`: it is then due
    /// at its new `next_attempt_at`.
    pub fn outbox_update(&self, old: &OutboxItem, item: &OutboxItem) -> TxResult<()>;
    /// Remove an item (delivered, given up, dropped) as it is stored.
    pub fn outbox_remove(&self, item: &OutboxItem) -> TxResult<()>;
    /// An inbox created through the API, by id.
    pub fn inbox_definition(&self, id: &str) -> TxResult<Option<InboxDefinition>>;
    /// Store a definition and claim its address for its inbox (for good).
    pub fn put_inbox_definition(&self, def: &InboxDefinition) -> TxResult<()>;
    /// The API inbox that has or had `address`, if any.
    pub fn inbox_address_owner(&self, address: &str) -> TxResult<Option<String>>;
    /// An address given up while the inbox was still pending was never forwarded to: it may
    /// be used again.
    pub fn release_inbox_address(&self, address: &str) -> TxResult<()>;
}

/// Removals that keep every index in step, written once over the operations above for every
/// backend.
impl Tx<'_> {
    /// Add a message to a conversation: its index entry and the count on the record (which the
    /// caller writes).
    pub fn add_to_conversation(&self, conv: &mut Conversation, queue_id: &str) -> TxResult<()> {
        if self.link_conversation_message(&conv.id, queue_id)? {
            conv.message_count += 1;
        }
        Ok(())
    }

    /// Add the first message to a conversation this transaction creates: `add_to_conversation`
    /// without asking the store whether the message is there already (it cannot be).
    pub fn start_conversation(&self, conv: &mut Conversation, queue_id: &str) -> TxResult<()> {
        self.link_new_conversation_message(&conv.id, queue_id)?;
        conv.message_count += 1;
        Ok(())
    }

    /// Remove a message's record and body, the Message-ID entries it owns and its place in its
    /// conversations. Its spool file (if any) is the caller's to remove after the commit.
    pub(super) fn remove_message(&self, record: &MessageRecord) -> TxResult<()> {
        self.delete_message_row(&record.queue_id)?;
        for r in &record.routing {
            self.release_message_id(record, &r.inbox, None)?;
            if let Some(mut c) = self.conversation(&r.conversation)? {
                if self.unlink_conversation_message(&r.conversation, &record.queue_id)? {
                    c.message_count = c.message_count.saturating_sub(1);
                    self.put_conversation(&c)?;
                }
            }
        }
        Ok(())
    }

    /// Remove the thread index entry of `record` in `inbox` when it is this message's to remove:
    /// it belongs to `conversation` (when given), or was written for this message (only the first
    /// copy of a Message-ID owns its entry; duplicates point at it).
    fn release_message_id(
        &self,
        record: &MessageRecord,
        inbox: &str,
        conversation: Option<&str>,
    ) -> TxResult<()> {
        let message_id = keys::thread_message_id(
            &record.message_id,
            &record.from,
            &record.subject,
            &record.sha256,
        );
        if let Some(entry) = self.thread_entry(inbox, &message_id)? {
            let owned = match conversation {
                Some(c) => entry.conversation == c,
                None => entry.first == record.queue_id,
            };
            if owned {
                self.remove_thread_entry(inbox, &message_id)?;
            }
        }
        Ok(())
    }

    /// Remove a conversation with its ticket and contact link; each of its messages leaves it,
    /// and a message left in no conversation is removed (pushed onto `removed`).
    pub(super) fn remove_conversation(
        &self,
        conv: &Conversation,
        messages: &[String],
        removed: &mut Vec<MessageRecord>,
    ) -> TxResult<()> {
        self.delete_conversation_row(&conv.id)?;
        if let Some(t) = &conv.ticket {
            self.delete_ticket(t)?;
        }
        if !conv.contact.is_empty() && self.unlink_contact(&conv.contact, &conv.id)? {
            if let Some(mut c) = self.contact(&conv.contact)? {
                c.conversation_count = c.conversation_count.saturating_sub(1);
                self.put_contact(&c)?;
            }
        }
        for queue_id in messages {
            self.unlink_conversation_message(&conv.id, queue_id)?;
            let Some(mut record) = self.message(queue_id)? else {
                continue;
            };
            self.release_message_id(&record, &conv.inbox, Some(&conv.id))?;
            record.routing.retain(|r| r.conversation != conv.id);
            if record.routing.is_empty() {
                self.remove_message(&record)?;
                removed.push(record);
            } else {
                self.put_message(&record)?;
            }
        }
        Ok(())
    }
}

impl SledTx<'_> {
    // ---- messages ------------------------------------------------------------------------------

    pub(super) fn message(&self, queue_id: &str) -> TxResult<Option<MessageRecord>> {
        self.get_json(TreeId::Messages, queue_id.as_bytes())
    }

    /// Write a message's record (its body is the committer's to write).
    pub(super) fn put_message(&self, record: &MessageRecord) -> TxResult<()> {
        self.put_json(TreeId::Messages, record.queue_id.as_bytes(), record)
    }

    pub(super) fn put_body(&self, queue_id: &str, body: &[u8]) -> TxResult<()> {
        self.insert(TreeId::Bodies, queue_id.as_bytes(), body)
    }

    pub(super) fn drop_body(&self, queue_id: &str) -> TxResult<()> {
        self.remove(TreeId::Bodies, queue_id.as_bytes())
    }

    pub(super) fn delete_message_row(&self, queue_id: &str) -> TxResult<()> {
        self.remove(TreeId::Messages, queue_id.as_bytes())?;
        self.remove(TreeId::Bodies, queue_id.as_bytes())
    }

    pub(super) fn remove_thread_entry(&self, inbox: &str, message_id: &str) -> TxResult<()> {
        self.remove(TreeId::MessageIds, &thread_key(inbox, message_id))
    }

    pub(super) fn delete_conversation_row(&self, id: &str) -> TxResult<()> {
        self.remove(TreeId::Conversations, id.as_bytes())
    }

    pub(super) fn link_conversation_message(
        &self,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<bool> {
        let key = conversation_message_key(conversation, queue_id);
        if self.get(TreeId::ConversationMessages, &key)?.is_some() {
            return Ok(false);
        }
        self.insert(TreeId::ConversationMessages, &key, b"")?;
        Ok(true)
    }

    pub(super) fn link_new_conversation_message(
        &self,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<()> {
        let key = conversation_message_key(conversation, queue_id);
        self.insert(TreeId::ConversationMessages, &key, b"")
    }

    pub(super) fn unlink_conversation_message(
        &self,
        conversation: &str,
        queue_id: &str,
    ) -> TxResult<bool> {
        let key = conversation_message_key(conversation, queue_id);
        if self.get(TreeId::ConversationMessages, &key)?.is_none() {
            return Ok(false);
        }
        self.remove(TreeId::ConversationMessages, &key)?;
        Ok(true)
    }

    pub(super) fn unlink_contact(&self, email: &str, conversation: &str) -> TxResult<bool> {
        let link = contact_link(email, conversation);
        if self.get(TreeId::ContactConversations, &link)?.is_none() {
            return Ok(false);
        }
        self.remove(TreeId::ContactConversations, &link)?;
        Ok(true)
    }

    pub(super) fn delete_ticket(&self, id: &str) -> TxResult<()> {
        self.remove(TreeId::Tickets, id.as_bytes())
    }

    // ---- the thread index ----------------------------------------------------------------------

    /// The conversation a Message-ID received in `inbox` belongs to, with its first copy.
    pub(super) fn thread_entry(
        &self,
        inbox: &str,
        message_id: &str,
    ) -> TxResult<Option<ThreadEntry>> {
        Ok(self
            .get(TreeId::MessageIds, &thread_key(inbox, message_id))?
            .map(|v| ThreadEntry::decode(&v)))
    }

    /// Record that `message_id` in `inbox` belongs to `conversation`, first received as
    /// `queue_id`.
    pub(super) fn put_thread_entry(
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

    pub(super) fn conversation(&self, id: &str) -> TxResult<Option<Conversation>> {
        self.get_json(TreeId::Conversations, id.as_bytes())
    }

    pub(super) fn put_conversation(&self, c: &Conversation) -> TxResult<()> {
        self.put_json(TreeId::Conversations, c.id.as_bytes(), c)
    }

    /// A contact by (lower-case) email.
    pub(super) fn contact(&self, email: &str) -> TxResult<Option<Contact>> {
        self.get_json(TreeId::Contacts, email.as_bytes())
    }

    pub(super) fn put_contact(&self, c: &Contact) -> TxResult<()> {
        self.put_json(TreeId::Contacts, c.email.as_bytes(), c)
    }

    /// Link a contact to a conversation; true if the link is new (the caller counts it on the
    /// contact's record).
    pub(super) fn link_contact(&self, email: &str, conversation: &str) -> TxResult<bool> {
        let link = contact_link(email, conversation);
        if self.get(TreeId::ContactConversations, &link)?.is_some() {
            return Ok(false);
        }
        self.insert(TreeId::ContactConversations, &link, b"")?;
        Ok(true)
    }

    pub(super) fn link_new_contact(&self, email: &str, conversation: &str) -> TxResult<()> {
        let link = contact_link(email, conversation);
        self.insert(TreeId::ContactConversations, &link, b"")
    }

    pub(super) fn ticket(&self, id: &str) -> TxResult<Option<Ticket>> {
        self.get_json(TreeId::Tickets, id.as_bytes())
    }

    pub(super) fn put_ticket(&self, t: &Ticket) -> TxResult<()> {
        self.put_json(TreeId::Tickets, t.id.as_bytes(), t)
    }

    /// The next ticket number (1, 2, ...), never given twice.
    pub(super) fn next_ticket_number(&self) -> TxResult<i64> {
        self.add(TICKET_SEQUENCE, 1)
    }

    // ---- inboxes and users ---------------------------------------------------------------------

    pub(super) fn inbox_state(&self, id: &str) -> TxResult<Option<InboxState>> {
        self.get_json(TreeId::Inboxes, id.as_bytes())
    }

    pub(super) fn put_inbox_state(&self, st: &InboxState) -> TxResult<()> {
        self.put_json(TreeId::Inboxes, st.id.as_bytes(), st)
    }

    /// What is stored at run time for `user` (nothing: the config applies).
    pub(super) fn user_state(&self, user: &str) -> TxResult<Option<UserState>> {
        self.get_json(TreeId::Users, user.as_bytes())
    }

    pub(super) fn put_user_state(&self, user: &str, st: &UserState) -> TxResult<()> {
        self.put_json(TreeId::Users, user.as_bytes(), st)
    }

    // ---- routing counters ----------------------------------------------------------------------

    /// How many open conversations `user` is assigned (`actions` keeps this in step).
    pub(super) fn open_count(&self, user: &str) -> TxResult<i64> {
        self.counter(&open_key(user))
    }

    /// `user` has one open conversation more.
    pub(super) fn open_added(&self, user: &str) -> TxResult<()> {
        self.add(&open_key(user), 1).map(drop)
    }

    /// `user` has one open conversation fewer; never below zero (a count from before this
    /// invariant was kept must not make `least_open` prefer someone forever).
    pub(super) fn open_removed(&self, user: &str) -> TxResult<()> {
        let key = open_key(user);
        if self.counter(&key)? > 0 {
            self.add(&key, -1)?;
        }
        Ok(())
    }

    /// Where the round robin of `rule` (a name unique per rule and candidate list) continues.
    pub(super) fn round_robin_position(&self, rule: &str) -> TxResult<i64> {
        self.counter(&round_robin_key(rule))
    }

    pub(super) fn set_round_robin_position(&self, rule: &str, next: i64) -> TxResult<()> {
        self.insert(
            TreeId::Counters,
            &round_robin_key(rule),
            &next.to_be_bytes(),
        )
    }

    // ---- the outbox ----------------------------------------------------------------------------

    /// Add an item, due at its `next_attempt_at`.
    pub(super) fn outbox_add(&self, item: &OutboxItem) -> TxResult<()> {
        self.put_json(TreeId::Outbox, item.id.as_bytes(), item)?;
        self.insert(
            TreeId::OutboxDue,
            &due_key(item.next_attempt_at, &item.id),
            b"",
        )?;
        self.add(OUTBOX_DEPTH, 1).map(drop)
    }

    pub(super) fn outbox_item(&self, id: &str) -> TxResult<Option<OutboxItem>> {
        self.get_json(TreeId::Outbox, id.as_bytes())
    }

    /// One node: every item is this node's to settle.
    pub(super) fn outbox_claimed(&self, id: &str) -> TxResult<Option<OutboxItem>> {
        self.outbox_item(id)
    }

    /// Store `item` changed (attempts, error, next attempt) in place of `old`: it is then due at
    /// its new `next_attempt_at`.
    pub(super) fn outbox_update(&self, old: &OutboxItem, item: &OutboxItem) -> TxResult<()> {
        self.remove(TreeId::OutboxDue, &due_key(old.next_attempt_at, &old.id))?;
        self.put_json(TreeId::Outbox, item.id.as_bytes(), item)?;
        self.insert(
            TreeId::OutboxDue,
            &due_key(item.next_attempt_at, &item.id),
            b"",
        )
    }

    /// Remove an item (delivered, given up, dropped) as it is stored.
    pub(super) fn outbox_remove(&self, item: &OutboxItem) -> TxResult<()> {
        self.remove(TreeId::OutboxDue, &due_key(item.next_attempt_at, &item.id))?;
        self.remove(TreeId::Outbox, item.id.as_bytes())?;
        self.add(OUTBOX_DEPTH, -1).map(drop)
    }
}
