//! A small validator for the OpenAPI 3.0 schema subset the API document uses: `type`,
//! `required`, `properties`, `additionalProperties`, `items`, `$ref` (local), `allOf`,
//! `nullable`, `enum`, `minimum`/`maximum`, `format: date-time`. And `check_response`: find the
//! operation a request went to in the document, require the answer's status to be documented
//! there (5xx may fall to `default`), and validate a JSON body against its schema.
//!
//! Strict, as the API promises (issue #15): an answer's object carries every property its schema
//! lists (`null` for no value, never a missing key), nothing the schema does not list unless it
//! says `additionalProperties`, `null` only where the schema says `nullable`, and a `date-time`
//! is RFC 3339.

use serde_json::Value;

use super::http::HttpResponse;

/// Follow a local `$ref` (`#/components/schemas/Name`).
pub fn resolve<'a>(doc: &'a Value, reference: &str) -> Result<&'a Value, String> {
    let path = reference
        .strip_prefix("#/")
        .ok_or_else(|| format!("non-local $ref {reference}"))?;
    let mut v = doc;
    for part in path.split('/') {
        v = v
            .get(part)
            .ok_or_else(|| format!("$ref {reference} does not resolve"))?;
    }
    Ok(v)
}

/// Validate `value` against `schema`; the error says where (`$.items[2].status`) and why.
pub fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return validate(doc, resolve(doc, r)?, value, at);
    }
    if value.is_null() {
        return if schema.get("nullable") == Some(&Value::Bool(true)) {
            Ok(())
        } else {
            Err(format!("{at}: null where the schema does not allow it"))
        };
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate(doc, s, value, at)?;
        }
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => return Err(format!("{at}: unknown schema type {other}")),
        };
        if !ok {
            return Err(format!("{at}: expected {t}, got {value}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return Err(format!("{at}: {value} is not one of {options:?}"));
        }
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") {
        let t = value.as_str().unwrap_or_default();
        if !is_rfc3339(t) {
            return Err(format!("{at}: {value} is not an RFC 3339 date-time"));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return Err(format!("{at}: {n} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return Err(format!("{at}: {n} is above the maximum {max}"));
            }
        }
    }
    if let Some(obj) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required {
                let r = r.as_str().unwrap_or_default();
                if !obj.contains_key(r) {
                    return Err(format!("{at}: required property {r:?} is missing"));
                }
            }
        }
        // Every listed property is present in an answer: absent values are `null`.
        for k in props.into_iter().flat_map(|p| p.keys()) {
            if !obj.contains_key(k) {
                return Err(format!(
                    "{at}: property {k:?} is missing (absent values are null)"
                ));
            }
        }
        // Closed unless the schema opens it: a schema with properties lists them all.
        let open = match schema.get("additionalProperties") {
            Some(Value::Bool(b)) => *b,
            Some(_) => true,
            None => props.is_none(),
        };
        for (k, v) in obj {
            match (
                props.and_then(|p| p.get(k)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => validate(doc, s, v, &format!("{at}.{k}"))?,
                (None, Some(extra)) if extra.is_object() => {
                    validate(doc, extra, v, &format!("{at}.{k}"))?
                }
                (None, _) if !open => {
                    return Err(format!("{at}: property {k:?} is not in the schema"));
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            validate(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// `2026-11-22T10:00:00Z`, with optional fractional seconds and a `Z` or `±hh:mm` offset.
fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !(digits(0..4)
            && digits(5..7)
            && digits(8..10)
            && digits(11..13)
            && digits(14..16)
            && digits(17..19))
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return false;
    }
    let mut rest = &t[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// The document's path template matching a request path (`/v1/messages/{id}`), if any.
pub fn template_for<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"].as_object()?.keys().find_map(|t| {
        let tsegs: Vec<&str> = t.split('/').collect();
        (tsegs.len() == segs.len()
            && tsegs
                .iter()
                .zip(&segs)
                .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s))
        .then_some(t.as_str())
    })
}

pub fn check_response(
    doc: &Value,
    method: &str,
    target: &str,
    r: &HttpResponse,
) -> Result<(), String> {
    let path = target.split('?').next().unwrap_or(target);
    let Some(template) = template_for(doc, path) else {
        // Not an API route: the answer must still be the error shape.
        return validate(
            doc,
            &serde_json::json!({"$ref": "#/components/schemas/Error"}),
            &json(r)?,
            "$",
        );
    };
    let Some(op) = doc["paths"][template].get(method.to_ascii_lowercase()) else {
        if r.status == 405 {
            return validate(
                doc,
                &serde_json::json!({"$ref": "#/components/schemas/Error"}),
                &json(r)?,
                "$",
            );
        }
        return Err(format!("{method} {template} is not in the document"));
    };
    let status = r.status.to_string();
    let response = match op["responses"].get(&status) {
        Some(resp) => resp,
        None if r.status >= 500 => op["responses"]
            .get("default")
            .ok_or_else(|| format!("status {status} and no default response"))?,
        None => {
            return Err(format!(
                "status {status} is not documented for {method} {template}"
            ))
        }
    };
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(rf) => resolve(doc, rf)?,
        None => response,
    };
    match response
        .get("content")
        .and_then(|c| c.get("application/json"))
    {
        Some(media) => {
            let ct = r.header("content-type").unwrap_or_default();
            if !ct.starts_with("application/json") {
                return Err(format!("documented as JSON, sent as {ct:?}"));
            }
            validate(doc, &media["schema"], &json(r)?, "$")
        }
        None => {
            if response.get("content").is_none() && !r.body.is_empty() {
                return Err(format!("status {status} is documented without a body"));
            }
            Ok(())
        }
    }
}

fn json(r: &HttpResponse) -> Result<Value, String> {
    serde_json::from_slice(&r.body).map_err(|e| {
        format!(
            "status {}: not JSON ({e}): {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )
    })
}
