//! Inboxes created through the API: one definition per id, and an index of every address any
//! of them ever had (retired ones included), so that an address is never given to a second
//! inbox by accident. The transaction operations are domain operations (`ops`); the checks
//! that keep ids and addresses unique run inside the caller's transaction. Here: the embedded
//! store's keys (the `InboxDefinitions` tree) and the reads.

use super::model::InboxDefinition;
use super::tx::SledTx;
use super::{Store, StoreError, TreeId, TxResult};

fn definition_key(id: &str) -> Vec<u8> {
    [b"i\0".as_slice(), id.as_bytes()].concat()
}

fn address_key(address: &str) -> Vec<u8> {
    [b"a\0".as_slice(), address.to_lowercase().as_bytes()].concat()
}

impl SledTx<'_> {
    pub(super) fn inbox_definition(&self, id: &str) -> TxResult<Option<InboxDefinition>> {
        self.get_json(TreeId::InboxDefinitions, &definition_key(id))
    }

    pub(super) fn put_inbox_definition(&self, def: &InboxDefinition) -> TxResult<()> {
        self.put_json(TreeId::InboxDefinitions, &definition_key(&def.spec.id), def)?;
        self.insert(
            TreeId::InboxDefinitions,
            &address_key(def.address()),
            def.spec.id.as_bytes(),
        )
    }

    pub(super) fn inbox_address_owner(&self, address: &str) -> TxResult<Option<String>> {
        Ok(self
            .get(TreeId::InboxDefinitions, &address_key(address))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub(super) fn release_inbox_address(&self, address: &str) -> TxResult<()> {
        self.remove(TreeId::InboxDefinitions, &address_key(address))
    }
}

impl Store {
    /// Every inbox created through the API, retired ones too, in id order.
    pub fn inbox_definitions(&self) -> Result<Vec<InboxDefinition>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.inbox_definitions();
        }
        self.inner
            .engine()?
            .tree(TreeId::InboxDefinitions)
            .scan_prefix(b"i\0")
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    pub fn inbox_definition(&self, id: &str) -> Result<Option<InboxDefinition>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.inbox_definition(id);
        }
        Ok(self
            .inner
            .engine()?
            .tree(TreeId::InboxDefinitions)
            .get(definition_key(id))?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?)
    }
}
