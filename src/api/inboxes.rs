//! The inbox endpoints: list and read (the file's inboxes and the API's), create, change,
//! finish ("connect & finish"), retire, the operator's confirm, and the from-address code flow.
//! Every change is one call into `crate::actions::inboxes`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, JsonBody, PathParams};
use super::handlers::{blocking, ok, Json, St};
use crate::actions;
use crate::config::Config;
use crate::store::Store;
use crate::views;

/// The view of inbox `id`: in force (the file's or the API's), or retired.
fn inbox_view(store: &Store, config: &Config, id: &str) -> Result<views::Inbox, ApiError> {
    let def = store.inbox_definition(id)?;
    let cfg = config.inboxes.get(id);
    let spec = match (&def, cfg) {
        (Some(d), _) => d.spec.clone(),
        (None, Some(_)) => match config.file_inboxes.iter().find(|(_, i)| i.id == id) {
            Some((_, raw)) => raw.clone(),
            None => return Err(ApiError::not_found(format!("inbox {id:?}"))),
        },
        (None, None) => return Err(ApiError::not_found(format!("inbox {id:?}"))),
    };
    Ok(views::Inbox::new(
        &spec,
        cfg,
        def.as_ref(),
        store.inbox_state(id)?,
    ))
}

/// `GET /v1/inboxes`: every inbox in force (the file's first), then the retired ones.
pub async fn inboxes(State(s): St) -> Json<views::List<views::Inbox>> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    let items = blocking(move || {
        let mut items = config
            .inboxes
            .list
            .iter()
            .map(|i| inbox_view(&store, &config, &i.id))
            .collect::<Result<Vec<_>, ApiError>>()?;
        for def in store.inbox_definitions()? {
            if config.inboxes.get(&def.spec.id).is_none() {
                items.push(inbox_view(&store, &config, &def.spec.id)?);
            }
        }
        Ok(items)
    })
    .await?;
    ok(views::List { items })
}

pub async fn inbox(State(s): St, PathParams(id): PathParams<String>) -> Json<views::Inbox> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    blocking(move || inbox_view(&store, &config, &id))
        .await
        .map(axum::Json)
}

/// `POST /v1/inboxes`: 201 with the inbox, which receives mail from now on.
pub async fn inbox_create(
    State(s): St,
    JsonBody(spec): JsonBody<crate::config::raw::RawInbox>,
) -> Result<(StatusCode, axum::Json<views::Inbox>), ApiError> {
    let ctx = s.ctx.clone();
    blocking(move || {
        let def = actions::inboxes::create(&ctx, spec)?;
        inbox_view(&ctx.store, &ctx.config(), &def.spec.id)
    })
    .await
    .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// `PATCH /v1/inboxes/{id}`: the fields given replace the inbox's (`null` removes one).
pub async fn inbox_update(
    State(s): St,
    PathParams(id): PathParams<String>,
    JsonBody(patch): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> Json<views::Inbox> {
    let ctx = s.ctx.clone();
    blocking(move || {
        actions::inboxes::update(&ctx, &id, patch)?;
        inbox_view(&ctx.store, &ctx.config(), &id)
    })
    .await
    .map(axum::Json)
}

/// `POST /v1/inboxes/{id}/finish`: "connect & finish"; the address is locked from now on.
pub async fn inbox_finish(State(s): St, PathParams(id): PathParams<String>) -> Json<views::Inbox> {
    let ctx = s.ctx.clone();
    blocking(move || {
        actions::inboxes::finish(&ctx, &id)?;
        inbox_view(&ctx.store, &ctx.config(), &id)
    })
    .await
    .map(axum::Json)
}

/// `DELETE /v1/inboxes/{id}`: retire (never delete) an inbox created through the API.
pub async fn inbox_retire(State(s): St, PathParams(id): PathParams<String>) -> Json<views::Inbox> {
    let ctx = s.ctx.clone();
    blocking(move || {
        actions::inboxes::retire(&ctx, &id)?;
        inbox_view(&ctx.store, &ctx.config(), &id)
    })
    .await
    .map(axum::Json)
}

pub async fn inbox_confirm(State(s): St, PathParams(id): PathParams<String>) -> Json<views::Inbox> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    blocking(move || {
        let cfg = config
            .inboxes
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("inbox {id:?}")))?;
        actions::confirm_inbox(&store, &config, &cfg.id, &cfg.address)?;
        inbox_view(&store, &config, &id)
    })
    .await
    .map(axum::Json)
}

/// `POST /v1/inboxes/{id}/from-address`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromAddressBody {
    address: String,
}

/// `POST /v1/inboxes/{id}/from-address/confirm`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromCodeBody {
    code: String,
}

fn verify_error(e: crate::notify::verify_from::VerifyError) -> ApiError {
    use crate::notify::verify_from::VerifyError as V;
    match e {
        V::UnknownInbox(id) => ApiError::not_found(format!("inbox {id:?}")),
        e @ V::InvalidAddress(_) => ApiError::body(format!("address: {e}")),
        e @ V::WrongCode(_) => ApiError::body(format!("code: {e}")),
        e @ V::RateLimited(_) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
        }
        V::Store(e) => ApiError::internal(e),
        e => ApiError::conflict(e.to_string()),
    }
}

/// Mail a one-time code to the from-address the inbox wants to send as (`verify-from`).
pub async fn inbox_from_address(
    State(s): St,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<FromAddressBody>,
) -> Json<views::Inbox> {
    let ctx = s.ctx.clone();
    blocking(move || {
        let config = ctx.config();
        crate::notify::verify_from::request(
            &ctx.store,
            &config,
            &id,
            &body.address,
            crate::store::keys::now_ms(),
        )
        .map_err(verify_error)?;
        ctx.outbox_wake.notify_one();
        inbox_view(&ctx.store, &config, &id)
    })
    .await
    .map(axum::Json)
}

/// Check the code mailed by `from-address` (`confirm-from`).
pub async fn inbox_from_address_confirm(
    State(s): St,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<FromCodeBody>,
) -> Json<views::Inbox> {
    let ctx = s.ctx.clone();
    blocking(move || {
        let config = ctx.config();
        crate::notify::verify_from::confirm(
            &ctx.store,
            &config,
            &id,
            &body.code,
            crate::store::keys::now_ms(),
        )
        .map_err(verify_error)?;
        inbox_view(&ctx.store, &config, &id)
    })
    .await
    .map(axum::Json)
}
