//! Every answer that is not a success, in one shape: `{"error":{"code","message"}}`. `code` is
//! stable snake_case for programs; `message` is for people and names the input at fault. Our own
//! failures are `500 internal` with the detail in the log only, never in the answer.
//! Also the request extractors whose rejections must use that shape (axum's own answer in
//! plain text).

use std::fmt::Display;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::actions::ActionError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `WWW-Authenticate` (401 only).
    challenge: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            challenge: None,
        }
    }

    /// A query or path parameter is wrong; `message` starts with its name.
    pub fn parameter(name: &str, problem: impl Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("{name}: {problem}"),
        )
    }

    /// The JSON body is wrong; `message` names the field when there is one.
    pub fn body(problem: impl Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", problem.to_string())
    }

    pub fn not_found(what: impl Display) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no {what}"))
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn body_expired(queue_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::GONE,
            "body_expired",
            format!("the body of message {queue_id} was removed by retention; its record remains"),
        )
    }

    /// 401. `presented`: a token was sent but is not accepted (RFC 6750 §3.1 `invalid_token`).
    pub fn unauthorized(message: impl Into<String>, presented: bool) -> ApiError {
        ApiError {
            challenge: Some(if presented {
                "Bearer realm=\"inbound\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"inbound\""
            }),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    /// Our own failure: logged with its detail, answered without it.
    pub fn internal(detail: impl Display) -> ApiError {
        tracing::error!(error = %detail, "API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message }
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(c) = self.challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::internal(e)
    }
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> ApiError {
        match e {
            ActionError::NotFound(what) => ApiError::not_found(what),
            ActionError::Invalid { field, message } => {
                ApiError::body(format!("{field}: {message}"))
            }
            ActionError::Conflict(m) => ApiError::conflict(m),
            ActionError::BodyExpired(m) => ApiError::new(StatusCode::GONE, "body_expired", m),
            ActionError::Store(e) => ApiError::internal(e),
        }
    }
}

/// A JSON request body. Unlike `axum::Json` it does not insist on a `Content-Type` (the bearer
/// token, not the media type, is what keeps browsers from sending these requests), and its
/// rejection is an `ApiError` naming the field at fault (`available: invalid type: ...`).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is larger than {} bytes",
                        super::MAX_REQUEST_BODY
                    ),
                )
            } else {
                ApiError::body(e.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::body("the request needs a JSON body"));
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(v)| JsonBody(v))
            .map_err(|e| ApiError::body(json_problem(e)))
    }
}

/// What was wrong with a JSON body, without axum's preamble: `available: invalid type: string
/// "yes", expected a boolean at line 1 column 18` (the path to the field comes first).
fn json_problem(e: axum::extract::rejection::JsonRejection) -> String {
    use axum::extract::rejection::JsonRejection;
    use std::error::Error;
    let inner = match &e {
        JsonRejection::JsonDataError(d) => d.source().map(|s| s.to_string()),
        JsonRejection::JsonSyntaxError(s) => s.source().map(|x| format!("not valid JSON: {x}")),
        _ => None,
    };
    inner.unwrap_or_else(|| e.body_text())
}

/// The query string as name/value pairs, checked against the names an endpoint knows: a typo
/// (`?assigne=bob`) is an error, not a silently ignored filter. An empty value counts as absent.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::parameter("query", e.body_text()))?;
        Ok(Query { pairs })
    }
}

impl Query {
    /// Reject names outside `known` and names given twice.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        for (i, (name, _)) in self.pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::parameter(
                    name,
                    format!(
                        "unknown parameter (this endpoint takes {})",
                        known.join(", ")
                    ),
                ));
            }
            if self.pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::parameter(name, "given more than once"));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// `true` or `false`; absent: `None`.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::parameter(
                name,
                format!("must be true or false, not {v:?}"),
            )),
        }
    }
}

/// Path parameters, with an `ApiError` rejection.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| PathParams(v))
            .map_err(|e| ApiError::parameter("path", e.body_text()))
    }
}
