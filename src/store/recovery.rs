//! Recovery at open: what a crash left half-done is removed, so that every record has its body
//! and nothing unacknowledged stays (the commit order in `store`'s module doc is what makes this
//! sound).

use serde::Deserialize;

use super::{Inner, StoreError, TreeId};

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
        tracing::info!(
            removed_partial = removed_tmp,
            removed_without_record = orphans,
            removed_expired = expired,
            removed_orphan_bodies = orphan_bodies,
            "store recovered"
        );
        Ok(())
    }
}
