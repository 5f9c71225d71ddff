//! Users and teams created through the API: create, change, delete; one set of functions for
//! both (`config::people::Person`). Each is one store transaction (the definition and its
//! `user.*` or `team.*` webhook event together), validated exactly like a `[[user]]` or
//! `[[team]]` table together with the file's and every inbox
//! (`Config::with_api_definitions`, the same code and messages, field paths without the
//! item's prefix), and put in force at once (under `Ctx::config_change`).
//!
//! Rules kept here:
//! - the config file is the declarative way: its users and teams are read-only through the API;
//! - what another part still names (an inbox's rules, auto-assignment or admins, a team's
//!   members, a contact's owner; the file's or the API's) cannot be deleted: the refusal names
//!   each place, and nothing is written.

use crate::config::inboxes::Blame;
use crate::config::people::{ApiPeople, Person};
use crate::config::{Config, ConfigError};
use crate::context::Ctx;
use crate::store::{keys, PersonDefinition, Tx};

use super::ActionError;

/// `POST /v1/users`, `POST /v1/teams`.
pub fn create<T: Person>(ctx: &Ctx, spec: T) -> Result<PersonDefinition<T>, ActionError> {
    let _one_change = ctx.config_change();
    let config = ctx.config();
    let id = spec.id().to_string();
    if let Some(path) = T::file_path(&config, &id) {
        return Err(read_only::<T>(&id, path));
    }
    let mut people = config.api_people.clone();
    if T::list(&mut people).iter().any(|x| x.id() == id) {
        return Err(exists::<T>(&id));
    }
    T::list(&mut people).push(spec.clone());
    let next = validate::<T>(&config, &people, &id)?;
    let now = keys::now_ms();
    let def = PersonDefinition {
        spec,
        created_at: now,
        updated_at: now,
    };
    ctx.store
        .update(|tx| {
            if tx.person::<T>(&id)?.is_some() {
                return Ok(Err(exists::<T>(&id)));
            }
            tx.put_person(&def)?;
            announce(tx, &next, "created", &def.spec, &[], now)?;
            Ok(Ok(()))
        })
        .map_err(ActionError::Store)??;
    tracing::info!(kind = T::KIND, id = id.as_str(), "created through the API");
    ctx.install_config(next);
    ctx.outbox_wake.notify_one();
    Ok(def)
}

/// `PATCH /v1/users/{id}`, `PATCH /v1/teams/{id}`: `patch` replaces the fields it names
/// (`null` removes one).
pub fn update<T: Person>(
    ctx: &Ctx,
    id: &str,
    patch: serde_json::Map<String, serde_json::Value>,
) -> Result<PersonDefinition<T>, ActionError> {
    let _one_change = ctx.config_change();
    let config = ctx.config();
    let old = stored::<T>(ctx, &config, id)?;
    let (merged, changes) = super::merge_patch(&old.spec, id, T::KIND, patch)?;
    let spec: T = super::parse_merged(merged)?;
    let mut people = config.api_people.clone();
    T::list(&mut people).retain(|x| x.id() != id);
    T::list(&mut people).push(spec.clone());
    let next = validate::<T>(&config, &people, id)?;
    let now = keys::now_ms();
    let def = PersonDefinition {
        spec,
        updated_at: now,
        ..old
    };
    ctx.store.update(|tx| {
        tx.put_person(&def)?;
        if changes.is_empty() {
            return Ok(());
        }
        announce(tx, &next, "updated", &def.spec, &changes, now)
    })?;
    ctx.install_config(next);
    ctx.outbox_wake.notify_one();
    Ok(def)
}

/// `DELETE /v1/users/{id}`, `DELETE /v1/teams/{id}`: refused while anything names it.
/// Conversations assigned to a deleted user keep the id (as for a user removed from the file).
pub fn delete<T: Person>(ctx: &Ctx, id: &str) -> Result<PersonDefinition<T>, ActionError> {
    let _one_change = ctx.config_change();
    let config = ctx.config();
    let old = stored::<T>(ctx, &config, id)?;
    let mut people = config.api_people.clone();
    T::list(&mut people).retain(|x| x.id() != id);
    let next = config
        .with_api_definitions(&people, &config.api_inbox_specs(), Blame::Last)
        .map_err(|e| still_named::<T>(id, e.0))?;
    let now = keys::now_ms();
    ctx.store.update(|tx| {
        tx.remove_person::<T>(id)?;
        announce(tx, &next, "deleted", &old.spec, &[], now)
    })?;
    tracing::info!(kind = T::KIND, id, "deleted through the API");
    ctx.install_config(next);
    ctx.outbox_wake.notify_one();
    Ok(old)
}

/// The stored definition `id`, or why there is none to change.
fn stored<T: Person>(
    ctx: &Ctx,
    config: &Config,
    id: &str,
) -> Result<PersonDefinition<T>, ActionError> {
    match ctx.store.person::<T>(id)? {
        Some(d) => Ok(d),
        None => match T::file_path(config, id) {
            Some(path) => Err(read_only::<T>(id, path)),
            None => Err(ActionError::NotFound(format!("{} {id:?}", T::KIND))),
        },
    }
}

fn read_only<T: Person>(id: &str, path: &str) -> ActionError {
    let kind = T::KIND;
    ActionError::Conflict(format!(
        "{kind} {id:?} is defined in the config file ({path}): {kind}s from the config file are \
         read-only through the API; change the file and reload"
    ))
}

fn exists<T: Person>(id: &str) -> ActionError {
    ActionError::Conflict(format!("id: duplicate {} id {id:?}", T::KIND))
}

/// The config with `people` (the changed item last), or its errors with field paths.
fn validate<T: Person>(
    config: &Config,
    people: &ApiPeople,
    id: &str,
) -> Result<Config, ActionError> {
    config
        .with_api_definitions(people, &config.api_inbox_specs(), Blame::Last)
        .map_err(|e| super::config_refusal(&T::api_path(id), e.0))
}

/// A deletion the rest of the config does not survive: each key that still names the item.
fn still_named<T: Person>(id: &str, errors: Vec<ConfigError>) -> ActionError {
    let places: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    ActionError::Conflict(format!(
        "{} {id:?} is still named at {}; change those first",
        T::KIND,
        places.join(", ")
    ))
}

/// The webhook event of a change (`user.created`, `team.deleted`, ...), in its transaction:
/// the item as defined, what changed, and who changed it.
fn announce<T: Person>(
    tx: &Tx<'_>,
    config: &Config,
    what: &str,
    spec: &T,
    changes: &[String],
    now: u64,
) -> crate::store::TxResult<()> {
    let mut data = serde_json::Map::new();
    data.insert(
        T::KIND.into(),
        serde_json::to_value(spec).unwrap_or_default(),
    );
    data.insert("changes".into(), serde_json::json!(changes));
    data.insert("by".into(), "api".into());
    let event = format!("{}.{what}", T::KIND);
    crate::notify::queue_directory_event(tx, config, &event, data.into(), now)
}
