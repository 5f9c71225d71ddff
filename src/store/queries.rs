//! Reads: records by key, pages in key order, the outbox schedule, bodies. None of these take a
//! transaction except where several trees must agree (`Store::view`).

use super::model::{self, MessageRecord, OutboxItem};
use super::ops::OUTBOX_DEPTH;
use super::tx::{conversation_message_key, decode_counter, TreeId};
use super::{Store, StoreError, BODY_EXPIRED};

/// The PostgreSQL listing of a tree that is paged.
fn listed(tree: TreeId) -> super::pg::Listed {
    match tree {
        TreeId::Conversations => super::pg::Listed::Conversations,
        TreeId::Contacts => super::pg::Listed::Contacts,
        _ => super::pg::Listed::Messages,
    }
}

/// One page of `Store::page`.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The key to continue after; `None` at the end.
    pub next: Option<Vec<u8>>,
}

impl Store {
    /// One page of messages in arrival order, or newest first (see `page_in`).
    pub fn messages_page(
        &self,
        after: Option<&[u8]>,
        newest_first: bool,
        limit: usize,
        max_scan: usize,
        keep: impl Fn(&MessageRecord) -> Option<bool> + Sync,
    ) -> Result<Page<MessageRecord>, StoreError> {
        self.page_in(TreeId::Messages, after, newest_first, limit, max_scan, keep)
    }

    /// One page of conversations in creation order, or newest first (see `page_in`).
    pub fn conversations_page(
        &self,
        after: Option<&[u8]>,
        newest_first: bool,
        limit: usize,
        max_scan: usize,
        keep: impl Fn(&model::Conversation) -> Option<bool> + Sync,
    ) -> Result<Page<model::Conversation>, StoreError> {
        self.page_in(
            TreeId::Conversations,
            after,
            newest_first,
            limit,
            max_scan,
            keep,
        )
    }

    /// One page of contacts in email order (see `page_in`).
    pub fn contacts_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
        keep: impl Fn(&model::Contact) -> bool + Sync,
    ) -> Result<Page<model::Contact>, StoreError> {
        self.page_in(TreeId::Contacts, after, false, limit, max_scan, |c| {
            Some(keep(c))
        })
    }

    /// One page of a tree's records for cursor pagination, in either direction: oldest first (key order) or newest first (reversed, for
    /// trees keyed by ULID), after the cursor key `after` in that direction. `keep` answers
    /// `Some(true)` to take a record, `Some(false)` to skip it, and `None` when no record further
    /// in this direction can match (a time bound passed): the page then ends without a cursor.
    /// Bounded like `page`: at most `max_scan` records read, a page may end short with a cursor.
    fn page_in<T: serde::de::DeserializeOwned + Send>(
        &self,
        tree: TreeId,
        after: Option<&[u8]>,
        newest_first: bool,
        limit: usize,
        max_scan: usize,
        keep: impl Fn(&T) -> Option<bool> + Sync,
    ) -> Result<Page<T>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.page(listed(tree), after, newest_first, limit, max_scan, &keep);
        }
        use std::ops::Bound::{Excluded, Unbounded};
        type Entry = sled::Result<(sled::IVec, sled::IVec)>;
        let engine = self.inner.engine()?;
        let tree = engine.tree(tree);
        let range = match (after, newest_first) {
            (Some(a), false) => tree.range::<&[u8], _>((Excluded(a), Unbounded)),
            (Some(a), true) => tree.range::<&[u8], _>((Unbounded, Excluded(a))),
            (None, _) => tree.iter(),
        };
        let iter: Box<dyn Iterator<Item = Entry>> = if newest_first {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut items = Vec::new();
        let mut last: Option<sled::IVec> = None;
        for (scanned, kv) in iter.enumerate() {
            let (key, value) = kv?;
            if scanned >= max_scan.max(1) {
                return Ok(Page {
                    items,
                    next: last.map(|k| k.to_vec()),
                });
            }
            let record: T = serde_json::from_slice(&value)?;
            match keep(&record) {
                None => return Ok(Page { items, next: None }),
                Some(true) if items.len() >= limit => {
                    return Ok(Page {
                        items,
                        next: last.map(|k| k.to_vec()),
                    });
                }
                Some(true) => items.push(record),
                Some(false) => {}
            }
            last = Some(key);
        }
        Ok(Page { items, next: None })
    }

    /// Outbox items due by `until_ms`, earliest first, at most `limit`.
    pub fn outbox_due(&self, until_ms: u64, limit: usize) -> Result<Vec<OutboxItem>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.outbox_claim(until_ms, limit);
        }
        let engine = self.inner.engine()?;
        let (due, items) = (engine.tree(TreeId::OutboxDue), engine.tree(TreeId::Outbox));
        let mut out = Vec::new();
        let end = (until_ms.saturating_add(1)).to_be_bytes();
        for kv in due.range::<&[u8], _>(..&end[..]) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = kv?;
            if let Some(v) = items.get(&k[8..])? {
                out.push(serde_json::from_slice(&v)?);
            }
        }
        Ok(out)
    }

    /// Give back items `outbox_due` handed out that this node will not deliver now: due again
    /// at once for every node (a shared store), nothing to do on the embedded store.
    pub fn outbox_release(&self, items: &[OutboxItem]) -> Result<(), StoreError> {
        match &self.pg {
            Some(pg) if !items.is_empty() => pg.outbox_release(items),
            _ => Ok(()),
        }
    }

    /// How many outbox items are waiting.
    pub fn outbox_depth(&self) -> Result<i64, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.outbox_depth();
        }
        Ok(decode_counter(
            self.inner
                .engine()?
                .tree(TreeId::Counters)
                .get(OUTBOX_DEPTH)?,
        ))
    }

    /// The oldest outbox item waiting (ids are ULIDs: key order is creation order).
    pub fn outbox_oldest(&self) -> Result<Option<OutboxItem>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.outbox_oldest();
        }
        match self.inner.engine()?.tree(TreeId::Outbox).first()? {
            Some((_, v)) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every outbox item waiting, oldest first.
    pub fn outbox_items(&self) -> Result<Vec<OutboxItem>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.outbox_items();
        }
        self.inner
            .engine()?
            .tree(TreeId::Outbox)
            .iter()
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// Every inbox state recorded, by id.
    pub fn inbox_states(&self) -> Result<Vec<model::InboxState>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.inbox_states();
        }
        self.inner
            .engine()?
            .tree(TreeId::Inboxes)
            .iter()
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    pub fn inbox_state(&self, id: &str) -> Result<Option<model::InboxState>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.inbox_state(id);
        }
        self.get_json(TreeId::Inboxes, id)
    }

    /// Messages, oldest first, starting after `after` (a queue id), at most `limit`.
    pub fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        if self.pg.is_some() {
            return Ok(self
                .page_in(
                    TreeId::Messages,
                    after.map(str::as_bytes),
                    false,
                    limit,
                    usize::MAX,
                    |_: &MessageRecord| Some(true),
                )?
                .items);
        }
        let engine = self.inner.engine()?;
        let messages = engine.tree(TreeId::Messages);
        let iter = match after {
            Some(a) => messages.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => messages.iter(),
        };
        iter.take(limit)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    /// Messages newest first (queue ids are ULIDs: reversed key order), before `before`
    /// (exclusive), at most `limit` of those `keep` accepts, stopping at the first received
    /// before `since_ms` and after examining `max_scan` records (a filter that matches nothing
    /// must not read the whole store).
    pub fn list_newest(
        &self,
        before: Option<&str>,
        limit: usize,
        since_ms: u64,
        max_scan: usize,
        keep: impl Fn(&MessageRecord) -> bool + Sync,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let page = self.messages_page(
            before.map(str::as_bytes),
            true,
            limit,
            max_scan,
            |r: &MessageRecord| (r.received_at >= since_ms).then(|| keep(r)),
        )?;
        Ok(page.items)
    }

    /// Conversations newest first, before `before` (exclusive): at most `limit` that `keep`
    /// accepts (`Some(true)`), ending at the first for which it says `None` (older than wanted)
    /// or after examining `max_scan` records.
    pub fn conversations_newest(
        &self,
        before: Option<&str>,
        limit: usize,
        max_scan: usize,
        keep: impl Fn(&model::Conversation) -> Option<bool> + Sync,
    ) -> Result<Vec<model::Conversation>, StoreError> {
        let page =
            self.conversations_page(before.map(str::as_bytes), true, limit, max_scan, keep)?;
        Ok(page.items)
    }

    pub fn get(&self, queue_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.message(queue_id);
        }
        match self
            .inner
            .engine()?
            .tree(TreeId::Messages)
            .get(queue_id.as_bytes())?
        {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Conversations, oldest first, optionally of one inbox, after a conversation id.
    pub fn conversations(
        &self,
        inbox: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<model::Conversation>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.conversations(inbox, after, limit);
        }
        let engine = self.inner.engine()?;
        let tree = engine.tree(TreeId::Conversations);
        let iter = match after {
            Some(a) => tree.range::<&[u8], _>((
                std::ops::Bound::Excluded(a.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => tree.iter(),
        };
        let mut out = Vec::new();
        for kv in iter {
            let c: model::Conversation = serde_json::from_slice(&kv?.1)?;
            if inbox.is_none_or(|i| c.inbox == i) {
                out.push(c);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: TreeId,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.inner.engine()?.tree(tree).get(key.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    pub fn conversation(&self, id: &str) -> Result<Option<model::Conversation>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.conversation(id);
        }
        self.get_json(TreeId::Conversations, id)
    }

    pub fn contact(&self, email: &str) -> Result<Option<model::Contact>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.contact(&email.to_lowercase());
        }
        self.get_json(TreeId::Contacts, &email.to_lowercase())
    }

    /// Conversation ids of a contact, oldest first.
    pub fn contact_conversations(&self, email: &str) -> Result<Vec<String>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.contact_conversations(&email.to_lowercase());
        }
        let mut prefix = email.to_lowercase().into_bytes();
        prefix.push(0);
        let engine = self.inner.engine()?;
        let tree = engine.tree(TreeId::ContactConversations);
        tree.scan_prefix(&prefix)
            .map(|kv| Ok(String::from_utf8_lossy(&kv?.0[prefix.len()..]).into_owned()))
            .collect()
    }

    /// One page of a conversation's messages (queue ids in arrival order), after `after`.
    pub fn conversation_messages(
        &self,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<String>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.conversation_messages(id, after, limit);
        }
        let engine = self.inner.engine()?;
        let tree = engine.tree(TreeId::ConversationMessages);
        let prefix = conversation_message_key(id, "");
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(conversation_message_key(id, a)),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        let mut items = Vec::new();
        for kv in tree.range((start, std::ops::Bound::Unbounded)) {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) {
                return Ok(Page { items, next: None });
            }
            if items.len() >= limit.max(1) {
                let last: &String = items.last().expect("a full page has a last item");
                let next = Some(last.as_bytes().to_vec());
                return Ok(Page { items, next });
            }
            items.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(Page { items, next: None })
    }

    /// Every message of a conversation, in arrival order (for removals, which need them all).
    pub fn all_conversation_messages(&self, id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.conversation_messages(id, None, usize::MAX)?.items)
    }

    pub fn ticket(&self, id: &str) -> Result<Option<model::Ticket>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.ticket(id);
        }
        self.get_json(TreeId::Tickets, id)
    }

    /// The body exactly as the client sent it. An expired body (retention) is an error of kind
    /// `NotFound`.
    pub fn body(&self, record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
        if record.body_location == BODY_EXPIRED {
            Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the message body has expired (retention)",
            )))
        } else if let Some(pg) = &self.pg {
            pg.body(&record.queue_id)
        } else if record.body_location == "inline" {
            Ok(self
                .inner
                .engine()?
                .tree(TreeId::Bodies)
                .get(record.queue_id.as_bytes())?
                .map(|v| v.to_vec())
                .unwrap_or_default())
        } else {
            Ok(self.inner.spool.read(&record.queue_id)?)
        }
    }

    /// The stored RFC 5322 message: our trace header fields, then the body as received.
    pub fn raw_message(&self, record: &MessageRecord) -> Result<Vec<u8>, StoreError> {
        let body = self.body(record)?;
        let mut out = Vec::with_capacity(record.trace_headers.len() + body.len());
        out.extend_from_slice(record.trace_headers.as_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walk `Store::page` to the end; every page's items and whether it set `next`.
    fn walk(
        store: &Store,
        limit: usize,
        max_scan: usize,
        keep: impl Fn(&model::Contact) -> bool + Copy + Sync,
    ) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let p = store
                .contacts_page(after.as_deref(), limit, max_scan, keep)
                .unwrap();
            pages.push(p.items.into_iter().map(|c| c.email).collect());
            match p.next {
                Some(n) => after = Some(n),
                None => return pages,
            }
            assert!(pages.len() < 100, "no end");
        }
    }

    #[test]
    fn pages_have_no_gaps_or_duplicates_and_a_bounded_scan() {
        let cfg = crate::config::Config::embedded_default().store;
        let store = Store::open_temporary(&cfg).unwrap();
        let emails: Vec<String> = (0..10).map(|i| format!("c{i}@x.example")).collect();
        store
            .update(|tx| {
                for e in &emails {
                    let c = model::Contact {
                        email: e.clone(),
                        ..Default::default()
                    };
                    tx.put_contact(&c)?;
                }
                Ok(())
            })
            .unwrap();
        let flat = |pages: &[Vec<String>]| pages.concat();
        let all = walk(&store, 3, 1000, |_| true);
        assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        assert_eq!(flat(&all), emails);
        // Exactly full: the last page says there is nothing more.
        let exact = walk(&store, 5, 1000, |_| true);
        assert_eq!(exact.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5]);
        // A sparse filter with a small scan budget: short (even empty) pages, still everything once.
        let even = |c: &model::Contact| c.email[1..2].parse::<u32>().unwrap() % 2 == 0;
        let sparse = walk(&store, 2, 3, even);
        let want: Vec<String> = emails
            .iter()
            .filter(|e| e[1..2].parse::<u32>().unwrap() % 2 == 0)
            .cloned()
            .collect();
        assert_eq!(flat(&sparse), want);
        assert!(sparse.iter().all(|p| p.len() <= 2));
        let none = walk(&store, 5, 4, |_| false);
        assert!(flat(&none).is_empty());
        assert_eq!(none.len(), 3, "10 records read 4 at a time");
    }
}
