//! Inboxes created through the API: create, change, "connect & finish", retire. Each is one
//! store transaction (the definition, its address claim, its setup state and the webhook event
//! together), validated exactly like an `[[inbox]]` table (`Config::with_api_inboxes`, the same
//! code and messages, field paths without the table's prefix), and put in force at once: the
//! running server's recipient table is rebuilt from the file and the store before the answer.
//!
//! Rules kept here:
//! - the config file is the declarative way: its inboxes are read-only through the API;
//! - an address can change only while the inbox is pending and not finished; after that the
//!   refusal is the config lock's (`config::locked_reason`);
//! - retiring keeps the id and every address the inbox had reserved for good, so the provider
//!   of a team that still forwards there can never deliver into another team's inbox.

use crate::config::inboxes::{api_path, Blame, InboxSource};
use crate::config::raw::RawInbox;
use crate::config::{Config, ConfigError};
use crate::context::Ctx;
use crate::store::keys;
use crate::store::model::{DefinitionStatus, InboxDefinition, InboxLifecycle, InboxState};
use crate::store::Tx;

use super::ActionError;

/// What happened, for the webhook event and the log.
const CREATED: &str = "inbox.created";
const UPDATED: &str = "inbox.updated";
const RETIRED: &str = "inbox.retired";

/// `POST /v1/inboxes`.
pub fn create(ctx: &Ctx, mut spec: RawInbox) -> Result<InboxDefinition, ActionError> {
    let _one_change = ctx.config_change();
    let config = ctx.config();
    if let Some(existing) = config.inboxes.get(&spec.id) {
        if existing.source == InboxSource::Config {
            return Err(read_only(&config, &spec.id));
        }
    }
    make_address(&config, &mut spec)?;
    let next = config
        .with_api_inbox_added(&spec)
        .map_err(|e| invalid(&spec.id, e.0))?;
    let now = keys::now_ms();
    let def = InboxDefinition {
        spec,
        status: DefinitionStatus::Active,
        created_at: now,
        updated_at: now,
        finished_at: None,
        retired_at: None,
    };
    let id = def.spec.id.as_str();
    ctx.store
        .update(|tx| {
            if let Some(old) = tx.inbox_definition(id)? {
                return Ok(Err(ActionError::Conflict(match old.status {
                    DefinitionStatus::Retired => format!(
                        "id: inbox {id:?} was retired; the ids of retired inboxes are not used again"
                    ),
                    DefinitionStatus::Active => format!("id: inbox {id:?} already exists"),
                })));
            }
            if let Err(e) = claim_address(tx, id, def.address())? {
                return Ok(Err(e));
            }
            tx.put_inbox_definition(&def)?;
            tx.put_inbox_state(&InboxState::pending(id, def.address()))?;
            announce(tx, &next, CREATED, &def, &[], now)?;
            Ok(Ok(()))
        })
        .map_err(ActionError::Store)??;
    tracing::info!(
        inbox = id,
        address = def.address(),
        "inbox created through the API"
    );
    ctx.install_config(next);
    ctx.outbox_wake.notify_one();
    Ok(def)
}

/// `PATCH /v1/inboxes/{id}`: `patch` replaces the fields it names (`null` removes one). A new
/// tenant or local part without an address makes the address again.
pub fn update(
    ctx: &Ctx,
    id: &str,
    patch: serde_json::Map<String, serde_json::Value>,
) -> Result<InboxDefinition, ActionError> {
    let _one_change = ctx.config_change();
    let config = ctx.config();
    let old = active_definition(ctx, &config, id)?;
    let remake = (patch.contains_key("tenant") || patch.contains_key("local"))
        && !patch.contains_key("address");
    let (mut merged, mut changes) = super::merge_patch(&old.spec, id, "inbox", patch)?;
    if remake {
        // Made again below from the new tenant and local part.
        merged.insert("address".into(), serde_json::Value::Null);
    }
    let mut spec: RawInbox = super::parse_merged(merged)?;
    make_address(&config, &mut spec)?;
    let moved = spec.address != old.spec.address;
    changes.retain(|c| c != "address");
    if moved {
        changes.push("address".into());
    }
    let state = ctx.store.inbox_state(id)?;
    if moved {
        let connected = state
            .as_ref()
            .is_some_and(|s| s.state == InboxLifecycle::Connected);
        if connected || old.finished_at.is_some() {
            let why = if connected { "connected" } else { "finished" };
            return Err(ActionError::Conflict(format!(
                "address: this change changes the address of {}",
                crate::config::locked_reason(id, old.address(), why)
            )));
        }
    }
    let next = validate(&config, others(&config, id), &spec)?;
    let now = keys::now_ms();
    let def = InboxDefinition {
        spec,
        updated_at: now,
        ..old.clone()
    };
    ctx.store
        .update(|tx| {
            if moved {
                if let Err(e) = claim_address(tx, id, def.address())? {
                    return Ok(Err(e));
                }
                // Pending and never finished: nobody forwards to the old address yet.
                tx.release_inbox_address(old.address())?;
                let mut st = tx
                    .inbox_state(id)?
                    .unwrap_or_else(|| InboxState::pending(id, def.address()));
                st.address = def.address().to_string();
                tx.put_inbox_state(&st)?;
            }
            tx.put_inbox_definition(&def)?;
            if !changes.is_empty() {
                announce(tx, &next, UPDATED, &def, &changes, now)?;
            }
            Ok(Ok(()))
        })
        .map_err(ActionError::Store)??;
    ctx.install_config(next);
    ctx.outbox_wake.notify_one();
    Ok(def)
}

/// `POST /v1/inboxes/{id}/finish` ("connect & finish"): the address is locked from now on.
/// Finishing a finished inbox changes nothing.
pub fn finish(ctx: &Ctx, id: &str) -> Result<InboxDefinition, ActionError> {
    let _one_change = ctx.config_change();
    let config = ctx.config();
    let mut def = active_definition(ctx, &config, id)?;
    if def.finished_at.is_some() {
        return Ok(def);
    }
    let now = keys::now_ms();
    def.finished_at = Some(now);
    def.updated_at = now;
    ctx.store.update(|tx| {
        tx.put_inbox_definition(&def)?;
        announce(tx, &config, UPDATED, &def, &["finished".into()], now)
    })?;
    ctx.outbox_wake.notify_one();
    Ok(def)
}

/// `DELETE /v1/inboxes/{id}`: the inbox stops receiving (RCPT to its address is refused as an
/// unknown mailbox); its conversations stay, and its id and address are never used again.
pub fn retire(ctx: &Ctx, id: &str) -> Result<InboxDefinition, ActionError> {
    let _one_change = ctx.config_change();
    let config = ctx.config();
    let mut def = active_definition(ctx, &config, id)?;
    let next = config
        .with_api_inboxes(&others(&config, id), Blame::Last)
        .map_err(|e| invalid(id, e.0))?;
    let now = keys::now_ms();
    def.status = DefinitionStatus::Retired;
    def.retired_at = Some(now);
    def.updated_at = now;
    ctx.store.update(|tx| {
        tx.put_inbox_definition(&def)?;
        announce(tx, &config, RETIRED, &def, &[], now)
    })?;
    tracing::info!(
        inbox = id,
        address = def.address(),
        "inbox retired through the API"
    );
    ctx.install_config(next);
    ctx.outbox_wake.notify_one();
    Ok(def)
}

/// The active API definition `id`, or why there is none to change.
fn active_definition(ctx: &Ctx, config: &Config, id: &str) -> Result<InboxDefinition, ActionError> {
    match ctx.store.inbox_definition(id)? {
        Some(d) if d.status == DefinitionStatus::Retired => Err(ActionError::Conflict(format!(
            "inbox {id:?} is retired; a retired inbox does not change"
        ))),
        Some(d) => Ok(d),
        None if config.inboxes.get(id).is_some() => Err(read_only(config, id)),
        None => Err(ActionError::NotFound(format!("inbox {id:?}"))),
    }
}

fn read_only(config: &Config, id: &str) -> ActionError {
    let key = config
        .file_inboxes
        .iter()
        .find(|(_, i)| i.id == id)
        .map(|(path, _)| path.as_str())
        .unwrap_or("[[inbox]]");
    ActionError::Conflict(format!(
        "inbox {id:?} is defined in the config file ({key}): inboxes from the config file are \
         read-only through the API; change the file and reload"
    ))
}

/// The specs of every other active API inbox (the config in force holds them all: every
/// change installs the config it validated, under `Ctx::config_change`).
fn others(config: &Config, id: &str) -> Vec<RawInbox> {
    let mut specs = config.api_inbox_specs();
    specs.retain(|s| s.id != id);
    specs
}

/// The config with `spec` (last) among the API inboxes, or its errors with field paths.
fn validate(
    config: &Config,
    mut others: Vec<RawInbox>,
    spec: &RawInbox,
) -> Result<Config, ActionError> {
    others.push(spec.clone());
    config
        .with_api_inboxes(&others, Blame::Last)
        .map_err(|e| invalid(&spec.id, e.0))
}

/// Validation errors as one refusal naming the first field (`super::config_refusal`).
fn invalid(id: &str, errors: Vec<ConfigError>) -> ActionError {
    super::config_refusal(&api_path(id), errors)
}

/// Give `spec` its canonical address: the one given, or the one `address_pattern` makes from
/// its tenant and local part (the id when no local part is given).
fn make_address(config: &Config, spec: &mut RawInbox) -> Result<(), ActionError> {
    if spec.address.is_none() {
        let made = spec.tenant.as_deref().and_then(|tenant| {
            config.generated_address(tenant, spec.local.as_deref().unwrap_or(&spec.id))
        });
        spec.address = Some(made.ok_or_else(|| {
            ActionError::invalid(
                "address",
                "give an address, or a tenant (with server.hosted_domain) to generate one",
            )
        })?);
    }
    if let Some(a) = &spec.address {
        match crate::config::values::normalize_address(a) {
            Some(n) => spec.address = Some(n),
            None => {
                return Err(ActionError::invalid(
                    "address",
                    format!("invalid address {a:?}"),
                ))
            }
        }
    }
    Ok(())
}

/// Claim `address` for inbox `id` inside the transaction: an address another API inbox has or
/// had (retired) is refused, naming it.
fn claim_address(
    tx: &Tx<'_>,
    id: &str,
    address: &str,
) -> crate::store::TxResult<Result<(), ActionError>> {
    match tx.inbox_address_owner(address)? {
        Some(owner) if owner != id => {
            let retired = tx
                .inbox_definition(&owner)?
                .is_some_and(|d| d.status == DefinitionStatus::Retired);
            Ok(Err(ActionError::Conflict(if retired {
                format!(
                    "address: {address} belonged to inbox {owner:?}, which is retired; the address \
                     of a retired inbox is never used again (its team's provider may still forward there)"
                )
            } else {
                format!("address: duplicate hosted address {address:?} (also inbox {owner:?})")
            })))
        }
        _ => Ok(Ok(())),
    }
}

/// The webhook event of a change, in the change's transaction.
fn announce(
    tx: &Tx<'_>,
    config: &Config,
    event: &str,
    def: &InboxDefinition,
    changes: &[String],
    now: u64,
) -> crate::store::TxResult<()> {
    let data = serde_json::json!({
        "inbox": def.spec.id,
        "address": def.address(),
        "status": def.status,
        "finished": def.finished_at.is_some(),
        "changes": changes,
        "by": "api",
    });
    crate::notify::queue_event(tx, config, event, &def.spec.id, data, now)
}
