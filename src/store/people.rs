//! Users and teams created through the API, in the `People` tree: one definition per id,
//! `user\0<id>` or `team\0<id>`. Removed for good when deleted (nothing else is keyed by them:
//! conversations keep the id they were assigned to). The checks run in the caller's
//! transaction. On PostgreSQL: the `people` table, keyed by kind and id.

use serde::{Deserialize, Serialize};

use super::tx::TxInner;
use super::{Store, StoreError, TreeId, Tx, TxResult};
use crate::config::people::{ApiPeople, Person};

/// A user or team created through the API, as kept: the same fields as its `[[user]]` or
/// `[[team]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "T: Person")]
pub struct PersonDefinition<T> {
    pub spec: T,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
}

fn key<T: Person>(id: &str) -> Vec<u8> {
    [T::KIND.as_bytes(), b"\0", id.as_bytes()].concat()
}

impl Tx<'_> {
    pub fn person<T: Person>(&self, id: &str) -> TxResult<Option<PersonDefinition<T>>> {
        match &self.0 {
            TxInner::Sled(s) => s.get_json(TreeId::People, &key::<T>(id)),
            TxInner::Pg(p) => p.person(T::KIND, id),
        }
    }

    pub fn put_person<T: Person>(&self, def: &PersonDefinition<T>) -> TxResult<()> {
        match &self.0 {
            TxInner::Sled(s) => s.put_json(TreeId::People, &key::<T>(def.spec.id()), def),
            TxInner::Pg(p) => p.put_person(T::KIND, def.spec.id(), def),
        }
    }

    pub fn remove_person<T: Person>(&self, id: &str) -> TxResult<()> {
        match &self.0 {
            TxInner::Sled(s) => s.remove(TreeId::People, &key::<T>(id)),
            TxInner::Pg(p) => p.remove_person(T::KIND, id),
        }
    }
}

impl Store {
    /// Every user (or team) created through the API, in id order.
    pub fn people<T: Person>(&self) -> Result<Vec<PersonDefinition<T>>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.people(T::KIND);
        }
        self.inner
            .engine()?
            .tree(TreeId::People)
            .scan_prefix(key::<T>(""))
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect()
    }

    pub fn person<T: Person>(&self, id: &str) -> Result<Option<PersonDefinition<T>>, StoreError> {
        if let Some(pg) = &self.pg {
            return pg.person(T::KIND, id);
        }
        Ok(self
            .inner
            .engine()?
            .tree(TreeId::People)
            .get(key::<T>(id))?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?)
    }

    /// The specs of every user and team created through the API: what the config in force
    /// compiles in (`Config::with_api_definitions`).
    pub fn api_people(&self) -> Result<ApiPeople, StoreError> {
        Ok(ApiPeople {
            users: self
                .people()
                .map(|l| l.into_iter().map(|d| d.spec).collect())?,
            teams: self
                .people()
                .map(|l| l.into_iter().map(|d| d.spec).collect())?,
        })
    }
}
