//! Query parameters -> what a list reads: the page size and cursor every list takes, and the
//! filters they share (`inbox`, `order`, `since`/`until`). Each error names its parameter (400).

use super::error::{ApiError, Query};
use crate::config::Config;
use crate::views;

/// Page size when `limit` is not given, and the largest one allowed.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

/// `limit`: default 50, from 1 to 500.
pub(super) fn limit(q: &Query) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::parameter(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}, not {v:?}"),
                )
            }),
    }
}

/// Cursors are opaque to clients: hex of `list:key`, so one list's cursor cannot be replayed on
/// another and the value needs no escaping in a URL.
pub(super) fn cursor_out(list: &str, key: Option<Vec<u8>>) -> Option<String> {
    key.map(|k| crate::util::hex(&[list.as_bytes(), b":", &k].concat()))
}

pub(super) fn cursor_in(q: &Query, list: &str) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(v) = q.get("cursor") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::parameter(
            "cursor",
            "not a cursor of this list (use next_cursor as given)",
        )
    };
    if v.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..v.len())
        .step_by(2)
        .map(|i| v.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let prefix = [list.as_bytes(), b":"].concat();
    bytes
        .strip_prefix(prefix.as_slice())
        .map(|k| Some(k.to_vec()))
        .ok_or_else(bad)
}

pub(super) fn page<T, V: From<T>>(list: &str, p: crate::store::Page<T>) -> views::Page<V> {
    views::Page {
        items: p.items.into_iter().map(V::from).collect(),
        next_cursor: cursor_out(list, p.next),
    }
}

/// A filter that must name a configured inbox.
pub(super) fn inbox_filter(q: &Query, config: &Config) -> Result<Option<String>, ApiError> {
    match q.get("inbox") {
        None => Ok(None),
        Some(i) if config.inboxes.get(i).is_some() => Ok(Some(i.to_string())),
        Some(i) => Err(ApiError::parameter(
            "inbox",
            format!("no inbox {i:?} in the config"),
        )),
    }
}

/// `order`: `oldest` (the default: key order, ids ascending) or `newest`. A cursor continues
/// in the order it was made in, so pass the same `order` with it.
pub(super) fn newest_first(q: &Query) -> Result<bool, ApiError> {
    match q.get("order") {
        None | Some("oldest") => Ok(false),
        Some("newest") => Ok(true),
        Some(other) => Err(ApiError::parameter(
            "order",
            format!("must be newest or oldest, not {other:?}"),
        )),
    }
}

/// A time bound (`since`, `until`): RFC 3339 (`2026-11-22T10:00:00Z`, any offset) or Unix
/// milliseconds, as the `_at` and `_at_ms` fields of the answers give them.
pub(super) fn time_param(q: &Query, name: &'static str) -> Result<Option<u64>, ApiError> {
    let Some(v) = q.get(name) else {
        return Ok(None);
    };
    let ms = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u64>().ok()
    } else {
        mail_parser::DateTime::parse_rfc3339(v)
            .filter(|d| d.is_valid())
            .map(|d| d.to_timestamp())
            .and_then(|t| u64::try_from(t).ok())
            .map(|t| t * 1000)
    };
    ms.map(Some).ok_or_else(|| {
        ApiError::parameter(
            name,
            format!(
                "must be an RFC 3339 time (2026-11-22T10:00:00Z) or Unix milliseconds, not {v:?}"
            ),
        )
    })
}

/// `since` and `until` together, checked against each other.
pub(super) fn time_window(q: &Query) -> Result<(u64, u64), ApiError> {
    let since = time_param(q, "since")?.unwrap_or(0);
    let until = time_param(q, "until")?.unwrap_or(u64::MAX);
    if since > until {
        return Err(ApiError::parameter("until", "must not be before since"));
    }
    Ok((since, until))
}

/// Whether a record at time `t` is in `[since, until]`, for `Store::page_ordered`: `None` once
/// the walk has passed the window (records are in time order: ULID keys).
pub(super) fn in_window(t: u64, (since, until): (u64, u64), newest_first: bool) -> Option<bool> {
    match (t < since, t > until) {
        (true, _) if newest_first => None,
        (_, true) if !newest_first => None,
        (false, false) => Some(true),
        _ => Some(false),
    }
}
