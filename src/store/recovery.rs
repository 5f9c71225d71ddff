//! Recovery at open: what a crash left half-done is removed, so that every record has its body
//! and nothing unacknowledged stays (the commit order in `store`'s module doc is what makes this
//! sound).

use serde::Deserialize;

use super::model::Conversation;
use super::tx::conversation_message_key;
use super::{Engine, Inner, StoreError, TreeId};

/// The one field recovery reads of a record (serde skips the rest without building it).
#[derive(Deserialize)]
struct BodyLocation {
    body_location: String,
}

impl Inner {
    pub(super) fn recover(&self) -> Result<(), StoreError> {
        let engine = self.engine()?;
        let (messages, bodies) = (engine.tree(TreeId::Messages), engine.tree(TreeId::Bodies));
        let removed_tmp = self.spool.clear_tmp()?;
        let (mut orphans, mut expired) = (0, 0);
        for id in self.spool.published_ids()? {
            // No record: never acknowledged, or deleted just before a crash. A record whose body
            // is no longer in the spool: expired (retention) just before a crash.
            match messages.get(id.as_bytes())? {
                None => orphans += 1,
                Some(v)
                    if serde_json::from_slice::<BodyLocation>(&v)
                        .is_ok_and(|r| r.body_location != "spool") =>
                {
                    expired += 1
                }
                Some(_) => continue,
            }
            self.spool.remove(&id)?;
        }
        let orphans_and_expired = orphans + expired;
        // Inline bodies are written in the same transaction as their record, so an orphan can
        // only come from a damaged database. Looking for one reads every body (sled loads values
        // with their keys), which on a large store costs seconds and hundreds of MiB at every
        // start; so it is done only when the spool shows the last run did not end cleanly.
        let mut orphan_bodies = 0;
        if removed_tmp + orphans_and_expired > 0 {
            for kv in bodies.iter() {
                let (k, _) = kv?;
                if !messages.contains_key(&k)? {
                    bodies.remove(&k)?;
                    orphan_bodies += 1;
                }
            }
        }
        if removed_tmp + orphans_and_expired + orphan_bodies > 0 {
            self.spool.sync_msg_dir()?;
            engine.db.flush()?;
        }
        let migrated = migrate_conversation_index(&engine)?;
        tracing::info!(
            migrated_conversations = migrated,
            removed_partial = removed_tmp,
            removed_without_record = orphans,
            removed_expired = expired,
            removed_orphan_bodies = orphan_bodies,
            "store recovered"
        );
        Ok(())
    }
}

/// Marks that every conversation keeps its messages in the index (`ConversationMessages`).
const CONVERSATION_INDEX_DONE: &[u8] = b"schema:conversation_index";

/// Conversation records written before the index held their message ids in a list that every
/// new message rewrote: move them into the index, once per store. Idempotent, so a crash midway
/// only repeats work at the next start. Returns how many conversations moved.
fn migrate_conversation_index(engine: &Engine) -> Result<usize, StoreError> {
    let counters = engine.tree(TreeId::Counters);
    if counters.contains_key(CONVERSATION_INDEX_DONE)? {
        return Ok(0);
    }
    let (conversations, index) = (
        engine.tree(TreeId::Conversations),
        engine.tree(TreeId::ConversationMessages),
    );
    let mut moved = 0;
    for kv in conversations.iter() {
        let (key, value) = kv?;
        let mut c: Conversation = serde_json::from_slice(&value)?;
        if c.legacy_messages.is_empty() {
            continue;
        }
        c.message_count = c.legacy_messages.len() as u64;
        for queue_id in std::mem::take(&mut c.legacy_messages) {
            index.insert(conversation_message_key(&c.id, &queue_id), &[])?;
        }
        conversations.insert(key, serde_json::to_vec(&c)?)?;
        moved += 1;
    }
    counters.insert(CONVERSATION_INDEX_DONE, &b"1"[..])?;
    engine.db.flush()?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, TreeId};

    /// A store written before the conversation index: its conversation records hold their
    /// message ids in a list. Opening it moves them into the index, once.
    #[test]
    fn a_conversation_list_from_before_the_index_moves_into_it_at_open() {
        let dir = std::env::temp_dir().join(format!("inb-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = crate::config::Config::embedded_default().store;
        {
            let store = Store::open(&dir, &cfg).unwrap();
            // Written as an old build left it, below the domain operations.
            let engine = store.inner.engine().unwrap();
            let legacy = br#"{"id":"C1","inbox":"demo","subject":"s","contact":"a@x.example","created_at":1,"updated_at":2,"status":"open","messages":["Q1","Q2","Q3"]}"#;
            engine
                .tree(TreeId::Conversations)
                .insert(b"C1", &legacy[..])
                .unwrap();
            engine
                .tree(TreeId::Counters)
                .remove(super::CONVERSATION_INDEX_DONE)
                .unwrap();
            engine.db.flush().unwrap();
        }
        // sled's I/O threads let go of the file lock a moment after the last handle is dropped.
        let mut store = Store::open(&dir, &cfg);
        for _ in 0..200 {
            if !matches!(store, Err(crate::store::StoreError::Locked)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            store = Store::open(&dir, &cfg);
        }
        let store = store.unwrap();
        assert_eq!(
            store.all_conversation_messages("C1").unwrap(),
            ["Q1", "Q2", "Q3"]
        );
        let c = store.conversation("C1").unwrap().unwrap();
        assert_eq!(c.message_count, 3);
        assert!(c.legacy_messages.is_empty());
        let page = store.conversation_messages("C1", Some("Q1"), 1).unwrap();
        assert_eq!(page.items, ["Q2"]);
        assert_eq!(page.next.as_deref(), Some(&b"Q2"[..]));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A plan or action that refuses (aborts) leaves a healthy store: only a storage error makes
    /// the database reopen.
    #[test]
    fn an_aborted_transaction_is_a_refusal_not_a_broken_store() {
        let cfg = crate::config::Config::embedded_default().store;
        let store = Store::open_temporary(&cfg).unwrap();
        let r: Result<(), _> =
            store.update(|_| Err(crate::store::TxError::abort("no such conversation")));
        assert!(r.unwrap_err().to_string().contains("no such conversation"));
        assert!(!store.is_broken());
        store.probe_write().unwrap();
    }
}
