//! `Authorization: Bearer <token>` (RFC 6750 §2.1) -> the request goes on, or 401. The token is
//! compared with every configured one in time that depends on neither its content nor its length:
//! both sides are SHA-256 digests (the config keeps only digests), compared byte by byte without
//! an early exit, and every configured token is compared.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::config::token_digest;

/// Middleware on every protected route.
pub async fn require_token(
    State(state): State<Arc<ApiState>>,
    req: Request,
    next: Next,
) -> Response {
    let digests = state.ctx.config().api.token_digests.clone();
    match check(req.headers().get(AUTHORIZATION), &digests) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check(header: Option<&axum::http::HeaderValue>, digests: &[[u8; 32]]) -> Result<(), ApiError> {
    let Some(value) = header else {
        return Err(ApiError::unauthorized(
            "this endpoint needs an Authorization: Bearer <token> header",
            false,
        ));
    };
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(ApiError::unauthorized(
            "the Authorization header must be \"Bearer <token>\"",
            true,
        ));
    };
    if digests.is_empty() {
        return Err(ApiError::unauthorized(
            "the API has no tokens configured (api.tokens or api.token_files)",
            true,
        ));
    }
    let presented = token_digest(token.as_bytes());
    let mut accepted = false;
    for d in digests {
        // `|` not `||`: every token is compared, whichever matches.
        accepted |= ct_eq(&presented, d);
    }
    if accepted {
        Ok(())
    } else {
        Err(ApiError::unauthorized("the token is not accepted", true))
    }
}

/// Equality of two digests in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    crate::util::constant_time_eq(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn constant_time_equality() {
        let a = token_digest(b"alpha-token-0123456789");
        let b = token_digest(b"beta-token-0123456789");
        assert!(ct_eq(&a, &a));
        assert!(!ct_eq(&a, &b));
        let mut last = a;
        last[31] ^= 1;
        assert!(!ct_eq(&a, &last));
    }

    #[test]
    fn bearer_header_forms() {
        let digests = [
            token_digest(b"first-token-0123456789"),
            token_digest(b"second-token-0123456789"),
        ];
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(check(Some(&h("Bearer first-token-0123456789")), &digests).is_ok());
        assert!(check(Some(&h("bearer  second-token-0123456789 ")), &digests).is_ok());
        for bad in [
            "Bearer first-token-012345678",
            "Basic Zmlyc3Q=",
            "Bearer",
            "first-token-0123456789",
        ] {
            let e = check(Some(&h(bad)), &digests).unwrap_err();
            assert_eq!(e.status, 401, "{bad}");
        }
        assert_eq!(check(None, &digests).unwrap_err().status, 401);
        assert_eq!(
            check(Some(&h("Bearer first-token-0123456789")), &[])
                .unwrap_err()
                .status,
            401,
            "no tokens configured: nothing is accepted"
        );
    }
}
