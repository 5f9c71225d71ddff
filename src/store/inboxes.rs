//! Inboxes created through the API, in the `InboxDefinitions` tree: one definition per id, and
//! an index of every address any of them ever had (retired ones included), so that an address
//! is never given to a second inbox by accident. Reads and writes by domain name; the checks
//! that keep ids and addresses unique run inside the caller's transaction.

use super::model::InboxDefinition;
use super::{Store, StoreError, TreeId, Tx, TxResult};

fn definition_key(id: &str) -> Vec<u8> {
    [b"i\0".as_slice(), id.as_bytes()].concat()
}

fn address_key(address: &str) -> Vec<u8> {
    [b"a\0".as_slice(), address.to_lowercase().as_bytes()].concat()
}

impl Tx<'_> {
    pub fn inbox_definition(&self, id: &str) -> TxResult<Option<InboxDefinition>> {
        self.get_json(TreeId::InboxDefinitions, &definition_key(id))
    }

    /// Store a definition and claim its address for its inbox (for good).
    pub fn put_inbox_definition(&self, def: &InboxDefinition) -> TxResult<()> {
        self.put_json(TreeId::InboxDefinitions, &definition_key(&def.spec.id), def)?;
        self.insert(
            TreeId::InboxDefinitions,
            &address_key(def.address()),
            def.spec.id.as_bytes(),
        )
    }

    /// The API inbox that has or had `address`, if any.
    pub fn inbox_address_owner(&self, address: &str) -> TxResult<Option<String>> {
        Ok(self
            .get(TreeId::InboxDefinitions, &address_key(address))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// An address given up while the inbox was still pending was never forwarded to: it may
    /// be used again.
    pub fn release_inbox_address(&self, address: &str) -> TxResult<()> {
        self.remove(TreeId::InboxDefinitions, &address_key(address))
    }
}

impl Store {
    /// Every inbox created through the API, retired ones too, in id order.
    pub fn inbox_definitions(&self) -> Result<Vec<InboxDefinition>, StoreError> {
        self.inner
            .engine()?
            .tree(TreeId::InboxDefinitions)
            .scan_prefix(b"i\0")
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    pub fn inbox_definition(&self, id: &str) -> Result<Option<InboxDefinition>, StoreError> {
        Ok(self
            .inner
            .engine()?
            .tree(TreeId::InboxDefinitions)
            .get(definition_key(id))?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?)
    }
}
