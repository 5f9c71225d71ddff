//! Removals that retention and the operator make: a message with its indexes, a body (the record
//! kept), a record's session facts, closed conversations. Each is one flushed transaction that
//! re-checks its condition inside; spool files go after the commit, and recovery removes any that
//! a crash left behind.

use super::model::{self, MessageRecord};
use super::{Store, StoreError, BODY_EXPIRED};

impl Store {
    /// Remove a message entirely: record, body (inline or spool file), its Message-ID index entries
    /// and its place in its conversations. Returns the removed record, or `None` if there was none.
    pub fn delete_message(&self, queue_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        Ok(self
            .delete_messages_if(&[queue_id.to_string()], |_| true)?
            .pop())
    }

    /// Remove every listed message for which `keep_going` holds, in one transaction (the
    /// condition is checked inside it, so a message released or changed meanwhile is judged as
    /// it is now), flushed, then their spool files go. A crash between the two leaves spool files
    /// without records, which recovery removes. Returns the removed records.
    pub fn delete_messages_if(
        &self,
        queue_ids: &[String],
        keep_going: impl Fn(&MessageRecord) -> bool + Sync,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let removed = self.update(|tx| {
            let mut removed = Vec::new();
            for id in queue_ids {
                match tx.message(id)? {
                    Some(record) if keep_going(&record) => {
                        tx.remove_message(&record)?;
                        removed.push(record);
                    }
                    _ => {}
                }
            }
            Ok(removed)
        })?;
        self.remove_spool_files(removed.iter().filter(|r| r.body_location == "spool"));
        Ok(removed)
    }

    /// Drop a message's body but keep its record (metadata, routing), marked
    /// `body_location = "expired"`. Returns false if the message is unknown or already expired.
    pub fn expire_body(&self, queue_id: &str) -> Result<bool, StoreError> {
        Ok(self.expire_bodies_if(&[queue_id.to_string()], |_| true)? == 1)
    }

    /// Expire the bodies of the listed messages for which `keep_going` holds (checked inside the
    /// transaction), in one flushed transaction; then their spool files go. Returns how many
    /// bodies expired. After a crash between the two, recovery removes the spool file of a record
    /// marked expired.
    pub fn expire_bodies_if(
        &self,
        queue_ids: &[String],
        keep_going: impl Fn(&MessageRecord) -> bool + Sync,
    ) -> Result<usize, StoreError> {
        let spooled = self.update(|tx| {
            let mut expired = Vec::new();
            for id in queue_ids {
                let Some(mut record) = tx.message(id)? else {
                    continue;
                };
                if record.body_location == BODY_EXPIRED || !keep_going(&record) {
                    continue;
                }
                let was = std::mem::replace(&mut record.body_location, BODY_EXPIRED.into());
                tx.drop_body(id)?;
                tx.put_message(&record)?;
                expired.push((id.as_str(), was == "spool"));
            }
            Ok(expired)
        })?;
        let n = spooled.len();
        for (id, _) in spooled.iter().filter(|(_, spool)| *spool) {
            if let Err(e) = self.inner.spool.remove(id) {
                // The record says expired: recovery removes the file at the next start.
                tracing::warn!(queue_id = %id, error = %e, "cannot remove an expired spool file");
            }
        }
        Ok(n)
    }

    /// Clear the SMTP session facts of the listed messages for which `keep_going` holds (see
    /// `MessageRecord::clear_session_metadata`), in one flushed transaction. Body, routing and
    /// conversations stay. Returns how many records were cleared.
    pub fn clear_session_metadata_if(
        &self,
        queue_ids: &[String],
        keep_going: impl Fn(&MessageRecord) -> bool + Sync,
    ) -> Result<usize, StoreError> {
        self.update(|tx| {
            let mut n = 0;
            for id in queue_ids {
                let Some(mut record) = tx.message(id)? else {
                    continue;
                };
                if record.session_metadata_cleared || !keep_going(&record) {
                    continue;
                }
                record.clear_session_metadata();
                tx.put_message(&record)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Delete the listed conversations that are closed and were last updated at or before
    /// `updated_before_ms` (checked inside the transaction: one that a new message just joined
    /// stays), with their ticket, their contact link, their Message-ID entries and their messages.
    /// A message that also belongs to a conversation of another inbox (sent to both) only leaves
    /// this one. Returns (conversations deleted, messages deleted).
    pub fn delete_closed_conversations(
        &self,
        ids: &[String],
        updated_before_ms: u64,
    ) -> Result<(usize, usize), StoreError> {
        // A transaction cannot scan, so each conversation's messages are listed first. A message
        // that joins meanwhile changes the record's count and time, which are checked inside the
        // transaction: such a conversation is left for the next sweep.
        let lists = ids
            .iter()
            .map(|id| self.all_conversation_messages(id))
            .collect::<Result<Vec<_>, _>>()?;
        let (conversations, removed) = self.update(|tx| {
            let (mut conversations, mut removed) = (0, Vec::new());
            for (id, messages) in ids.iter().zip(&lists) {
                let Some(conv) = tx.conversation(id)? else {
                    continue;
                };
                if conv.status != model::ConversationStatus::Closed
                    || conv.updated_at > updated_before_ms
                    || conv.message_count != messages.len() as u64
                {
                    continue;
                }
                tx.remove_conversation(&conv, messages, &mut removed)?;
                conversations += 1;
            }
            Ok((conversations, removed))
        })?;
        self.remove_spool_files(removed.iter().filter(|r| r.body_location == "spool"));
        Ok((conversations, removed.len()))
    }

    fn remove_spool_files<'a>(&self, records: impl Iterator<Item = &'a MessageRecord>) {
        for r in records {
            if let Err(e) = self.inner.spool.remove(&r.queue_id) {
                // The record is gone: recovery removes the orphan file at the next start.
                tracing::warn!(queue_id = %r.queue_id, error = %e, "cannot remove a deleted message's spool file");
            }
        }
    }
}
