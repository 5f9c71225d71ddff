//! The user and team endpoints: list and read (the file's and the API's), create, change,
//! delete, and a user's availability. Every change is one call into `crate::actions`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, JsonBody, PathParams};
use super::handlers::{blocking, ok, Json, St};
use crate::actions;
use crate::config::raw::{RawTeam, RawUser};
use crate::config::Config;
use crate::pipeline::routing;
use crate::store::Store;
use crate::views;

type Patch = serde_json::Map<String, serde_json::Value>;

fn user_view(store: &Store, config: &Config, id: &str) -> Result<views::UserView, ApiError> {
    let user = config
        .directory
        .users
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("user {id:?}")))?;
    let dir = &config.directory;
    let (available, over, open) = store.view(|tx| {
        let over = tx.user_state(id)?.and_then(|st| st.available);
        Ok((routing::available(tx, dir, id)?, over, tx.open_count(id)?))
    })?;
    Ok(views::UserView::new(user, available, over, open))
}

fn team_view(config: &Config, id: &str) -> Result<views::TeamView, ApiError> {
    config
        .directory
        .teams
        .get(id)
        .map(views::TeamView::new)
        .ok_or_else(|| ApiError::not_found(format!("team {id:?}")))
}

/// `GET /v1/users`: the file's and the API's, in id order.
pub async fn users(State(s): St) -> Json<views::List<views::UserView>> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    let items = blocking(move || {
        config
            .directory
            .users
            .keys()
            .map(|id| user_view(&store, &config, id))
            .collect()
    })
    .await?;
    ok(views::List { items })
}

pub async fn user(State(s): St, PathParams(id): PathParams<String>) -> Json<views::UserView> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    blocking(move || user_view(&store, &config, &id))
        .await
        .map(axum::Json)
}

/// `POST /v1/users`: 201 with the user, whom routing may choose from now on.
pub async fn user_create(
    State(s): St,
    JsonBody(spec): JsonBody<RawUser>,
) -> Result<(StatusCode, axum::Json<views::UserView>), ApiError> {
    let ctx = s.ctx.clone();
    blocking(move || {
        let def = actions::people::create(&ctx, spec)?;
        user_view(&ctx.store, &ctx.config(), &def.spec.id)
    })
    .await
    .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// `PATCH /v1/users/{id}`: the fields given replace the user's (`null` removes one).
pub async fn user_update(
    State(s): St,
    PathParams(id): PathParams<String>,
    JsonBody(patch): JsonBody<Patch>,
) -> Json<views::UserView> {
    let ctx = s.ctx.clone();
    blocking(move || {
        actions::people::update::<RawUser>(&ctx, &id, patch)?;
        user_view(&ctx.store, &ctx.config(), &id)
    })
    .await
    .map(axum::Json)
}

/// `DELETE /v1/users/{id}`: 204; refused while an inbox, team or contact names the user.
pub async fn user_delete(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let ctx = s.ctx.clone();
    blocking(move || Ok(actions::people::delete::<RawUser>(&ctx, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/users/{id}/availability`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityBody {
    available: bool,
}

pub async fn user_availability(
    State(s): St,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<AvailabilityBody>,
) -> Json<views::UserView> {
    let (config, store) = (s.ctx.config(), s.ctx.store.clone());
    blocking(move || {
        actions::set_availability(&store, &config, &id, body.available)?;
        user_view(&store, &config, &id)
    })
    .await
    .map(axum::Json)
}

/// `GET /v1/teams`: the file's and the API's, in id order.
pub async fn teams(State(s): St) -> Json<views::List<views::TeamView>> {
    let config = s.ctx.config();
    let items = config
        .directory
        .teams
        .values()
        .map(views::TeamView::new)
        .collect();
    ok(views::List { items })
}

pub async fn team(State(s): St, PathParams(id): PathParams<String>) -> Json<views::TeamView> {
    team_view(&s.ctx.config(), &id).map(axum::Json)
}

/// `POST /v1/teams`: 201 with the team, which rules and auto-assignment may name from now on.
pub async fn team_create(
    State(s): St,
    JsonBody(spec): JsonBody<RawTeam>,
) -> Result<(StatusCode, axum::Json<views::TeamView>), ApiError> {
    let ctx = s.ctx.clone();
    blocking(move || {
        let def = actions::people::create(&ctx, spec)?;
        team_view(&ctx.config(), &def.spec.id)
    })
    .await
    .map(|v| (StatusCode::CREATED, axum::Json(v)))
}

/// `PATCH /v1/teams/{id}`: the fields given replace the team's (`members` as a whole).
pub async fn team_update(
    State(s): St,
    PathParams(id): PathParams<String>,
    JsonBody(patch): JsonBody<Patch>,
) -> Json<views::TeamView> {
    let ctx = s.ctx.clone();
    blocking(move || {
        actions::people::update::<RawTeam>(&ctx, &id, patch)?;
        team_view(&ctx.config(), &id)
    })
    .await
    .map(axum::Json)
}

/// `DELETE /v1/teams/{id}`: 204; refused while an inbox names the team.
pub async fn team_delete(
    State(s): St,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let ctx = s.ctx.clone();
    blocking(move || Ok(actions::people::delete::<RawTeam>(&ctx, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
