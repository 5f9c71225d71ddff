//! HTTP requests -> JSON answers: reads of inboxes, conversations, messages, contacts, quarantine
//! users and teams, and operator actions (whose store changes live in `crate::actions`). Served with
//! axum on the server's own runtime (`server::Bound::run`), on `api.listen`.
//!
//! Every route except `/healthz` and `/openapi.json` needs `Authorization: Bearer <token>`
//! (`auth`). Answers that are not successes share one JSON shape (`error`). The document at
//! `/openapi.json` describes every route; the API tests validate each answer against it.

mod auth;
mod error;
mod handlers;
mod inboxes;
mod params;
mod people;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use error::ApiError;

use crate::context::Ctx;

/// The OpenAPI 3.0 description of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest request body read (they are small JSON objects). Past it: 413 `payload_too_large`.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Requests handled at once. Past it a request is answered 503 `overloaded` at once instead of
/// queueing store work behind the others (every request may read the disk on the blocking pool,
/// and `/raw` or an attachment holds one message body, at most `limits.max_message_bytes`).
pub const MAX_INFLIGHT: usize = 64;

/// What every handler shares.
pub struct ApiState {
    pub ctx: Arc<Ctx>,
    inflight: Semaphore,
}

/// The whole API, in one place. Routes in `public` answer without a token; routes in
/// `protected` pass the bearer-token check first. Endpoints that other parts of the server own
/// (`/readyz`, `/metrics`, `/admin/reload`) are added here, to the group that fits, with
/// handlers taking `State<Arc<ApiState>>` (which holds the `Ctx`).
pub fn router(ctx: Arc<Ctx>) -> Router {
    let state = Arc::new(ApiState {
        ctx,
        inflight: Semaphore::new(MAX_INFLIGHT),
    });
    let public = Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/openapi.json", get(handlers::openapi))
        .route("/.well-known/mta-sts.txt", get(handlers::mta_sts));
    let protected = Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/admin/reload", post(handlers::admin_reload))
        .route(
            "/v1/inboxes",
            get(inboxes::inboxes).post(inboxes::inbox_create),
        )
        .route(
            "/v1/inboxes/{id}",
            get(inboxes::inbox)
                .patch(inboxes::inbox_update)
                .delete(inboxes::inbox_retire),
        )
        .route("/v1/inboxes/{id}/confirm", post(inboxes::inbox_confirm))
        .route("/v1/inboxes/{id}/finish", post(inboxes::inbox_finish))
        .route(
            "/v1/inboxes/{id}/from-address",
            post(inboxes::inbox_from_address),
        )
        .route(
            "/v1/inboxes/{id}/from-address/confirm",
            post(inboxes::inbox_from_address_confirm),
        )
        .route("/v1/conversations", get(handlers::conversations))
        .route("/v1/conversations/{id}", get(handlers::conversation))
        .route(
            "/v1/conversations/{id}/assign",
            post(handlers::conversation_assign),
        )
        .route(
            "/v1/conversations/{id}/unassign",
            post(handlers::conversation_unassign),
        )
        .route(
            "/v1/conversations/{id}/close",
            post(handlers::conversation_close),
        )
        .route(
            "/v1/conversations/{id}/reopen",
            post(handlers::conversation_reopen),
        )
        .route("/v1/messages", get(handlers::messages))
        .route("/v1/messages/{id}", get(handlers::message))
        .route("/v1/messages/{id}/raw", get(handlers::message_raw))
        .route(
            "/v1/messages/{id}/attachments/{index}",
            get(handlers::message_attachment),
        )
        .route("/v1/contacts", get(handlers::contacts))
        .route("/v1/contacts/{email}", get(handlers::contact))
        .route("/v1/quarantine", get(handlers::quarantine))
        .route(
            "/v1/quarantine/{id}",
            axum::routing::delete(handlers::quarantine_delete),
        )
        .route(
            "/v1/quarantine/{id}/release",
            post(handlers::quarantine_release),
        )
        .route("/v1/users", get(people::users).post(people::user_create))
        .route(
            "/v1/users/{id}",
            get(people::user)
                .patch(people::user_update)
                .delete(people::user_delete),
        )
        .route(
            "/v1/users/{id}/availability",
            put(people::user_availability),
        )
        .route("/v1/teams", get(people::teams).post(people::team_create))
        .route(
            "/v1/teams/{id}",
            get(people::team)
                .patch(people::team_update)
                .delete(people::team_delete),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    public
        .merge(protected)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_inflight,
        ))
        .with_state(state)
}

async fn limit_inflight(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let Ok(_permit) = state.inflight.try_acquire() else {
        return ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in progress; retry shortly",
        )
        .into_response();
    };
    next.run(req).await
}

/// Serve the API on `listener` until the server's shutdown begins; then stop accepting, let
/// requests in progress finish and close idle connections. `Bound::run` bounds the wait.
///
/// Each connection holds a file descriptor, and the SMTP listener needs them too: at most
/// `api.max_connections` are open at once (a connection past it is closed at once), a request
/// header must arrive within `api.header_read_timeout` (an idle keep-alive connection gets the
/// same), and a connection where nothing moves for `api.idle_timeout` is closed.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) -> std::io::Result<()> {
    let mut shutdown = ctx.shutdown.clone();
    let connections = Arc::new(Semaphore::new(ctx.config().api.max_connections));
    let app = router(ctx.clone());
    let mut open = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow.
        while open.try_join_next().is_some() {}
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::info!(peer = %peer, "API at max_connections; connection closed");
            drop(stream);
            continue;
        };
        let cfg = ctx.config();
        let (header_timeout, idle) = (cfg.api.header_read_timeout, cfg.api.idle_timeout);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stop = ctx.shutdown.clone();
        open.spawn(async move {
            let _permit = permit;
            let io = hyper_util::rt::TokioIo::new(idle::IdleTimeout::new(stream, idle));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "API connection ended");
                    }
                    return;
                }
                _ = stop.wait() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    while open.join_next().await.is_some() {}
    Ok(())
}

mod idle {
    //! A stream that fails with `TimedOut` when a read or a write has waited `idle` without
    //! progress: what `api.idle_timeout` is made of.

    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::time::{Instant, Sleep};

    pub struct IdleTimeout<S> {
        inner: S,
        idle: Duration,
        /// Armed when an operation first returns Pending, disarmed on progress.
        read_timer: Option<Pin<Box<Sleep>>>,
        write_timer: Option<Pin<Box<Sleep>>>,
    }

    impl<S> IdleTimeout<S> {
        pub fn new(inner: S, idle: Duration) -> Self {
            IdleTimeout {
                inner,
                idle,
                read_timer: None,
                write_timer: None,
            }
        }
    }

    fn check(
        timer: &mut Option<Pin<Box<Sleep>>>,
        idle: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Error> {
        let t =
            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + idle)));
        match t.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no traffic for the idle timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    use std::future::Future;

    impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = &mut *self;
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(r) => {
                    this.read_timer = None;
                    Poll::Ready(r)
                }
                Poll::Pending => check(&mut this.read_timer, this.idle, cx).map(Err),
            }
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = &mut *self;
            match Pin::new(&mut this.inner).poll_write(cx, buf) {
                Poll::Ready(r) => {
                    this.write_timer = None;
                    Poll::Ready(r)
                }
                Poll::Pending => check(&mut this.write_timer, this.idle, cx).map(Err),
            }
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }
}

/// Serve only `GET /metrics`, without a token, on `api.metrics_listen`: for a Prometheus that
/// should not hold an API token. Whoever reaches this socket reads every metric (no message
/// content, no addresses; inbox ids are label values), so bind it to a private network.
pub async fn serve_metrics(listener: TcpListener, ctx: Arc<Ctx>) -> std::io::Result<()> {
    let mut shutdown = ctx.shutdown.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let ctx = ctx.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        crate::metrics::CONTENT_TYPE,
                    )],
                    metrics_text(&ctx),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

/// Every metric of the server in the Prometheus text format (what `GET /metrics` serves, with
/// `metrics::CONTENT_TYPE`). Gauges that mirror state kept elsewhere (open sessions, the commit
/// queue) are sampled here, when they are asked for, instead of being kept in step.
pub fn metrics_text(ctx: &Ctx) -> String {
    let m = &ctx.metrics;
    m.sessions_open
        .set(i64::try_from(ctx.limits.open_sessions()).unwrap_or(i64::MAX));
    m.commit_queue_depth
        .set(i64::try_from(ctx.store.commit_queue_depth()).unwrap_or(i64::MAX));
    let (commits, retries) = ctx.store.transaction_counts();
    m.store_commits.set(commits);
    m.store_retries.set(retries);
    m.known_inboxes(ctx.config().inboxes.list.iter().map(|i| i.id.as_str()));
    m.render()
}
