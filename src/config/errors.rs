//! Validation errors with the key path they are about (`limits.max_connections`,
//! `inbox[2].rule[0].assign.users[1]`), and `Errors`, which collects them while every section is
//! checked so `check-config` shows them all at once.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::values::parse_duration;

/// One problem in a config file, with the path of the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file, not just the first.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} error{} in configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Collects errors while validating, so `check-config` can show them all.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserialize one part of the document; on failure record the error under the path of
    /// the key it is about (`limits.max_connections`, `inbox[0].aliases`), not just `path`.
    pub(crate) fn section<T: DeserializeOwned>(
        &mut self,
        path: &str,
        value: toml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner.is_empty() || inner == "." {
                    path.to_string()
                } else {
                    format!("{path}.{inner}")
                };
                self.push(full, e.into_inner().message().trim().to_string());
                None
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|| {
                self.push(
                    path,
                    format!("invalid duration {s:?} (use e.g. \"30s\", \"5m\", \"1h\")"),
                );
                default
            }),
        }
    }

    /// A retention lifetime: "keep" (`None`) or a positive duration.
    pub(crate) fn lifetime(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        let Some(s) = value else {
            return default;
        };
        if s.trim() == "keep" {
            return None;
        }
        match parse_duration(s) {
            Some(d) if d.is_zero() => {
                self.push(
                    path,
                    "must be greater than 0 (use \"keep\" to keep forever)",
                );
                default
            }
            Some(d) => Some(d),
            None => {
                self.push(
                    path,
                    format!("invalid lifetime {s:?} (use \"keep\" or a duration such as \"7d\", \"12h\")"),
                );
                default
            }
        }
    }

    /// A duration that must not be zero: a zero deadline would end every session at once.
    pub(crate) fn positive_duration(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d.is_zero() {
            self.push(path, "must be greater than 0");
            return default;
        }
        d
    }

    /// An integer in `min..=max`; out of range it is an error naming the range, and `default`
    /// stands in so the other checks go on.
    pub(crate) fn range(
        &mut self,
        path: &str,
        value: Option<u64>,
        min: u64,
        max: u64,
        default: u64,
    ) -> u64 {
        match value {
            None => default,
            Some(v) if v < min || v > max => {
                self.push(path, format!("must be between {min} and {max} (got {v})"));
                default
            }
            Some(v) => v,
        }
    }

    pub(crate) fn positive(&mut self, path: &str, value: Option<u64>, default: u64) -> u64 {
        match value {
            Some(0) => {
                self.push(path, "must be greater than 0");
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}
