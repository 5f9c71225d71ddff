//! `[limits]`: raw -> validated, every value range-checked with its key path. The caps and
//! deadlines themselves are enforced by `crate::limits` and the SMTP session.

use std::time::Duration;

use super::errors::Errors;
use super::raw::RawLimits;

/// RFC 5321 §4.5.3.2.7: the server should wait at least 5 minutes for the next command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 §4.5.3.2.5-6 give 3 minutes per data block and 10 for the terminator; we apply one
/// idle timeout while reading data: a client that sends nothing for this long is dropped.
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(3 * 60);
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 31_457_280;

/// `[limits]`, validated: what one client may cost the server. Read at start (`Limits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    pub max_message_bytes: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub connections_per_ip_per_minute: u32,
    pub messages_per_ip_per_minute: u32,
    pub max_bad_commands: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_transactions_per_connection: u32,
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

pub(super) fn compile_limits(limits: &RawLimits, errors: &mut Errors) -> LimitsConfig {
    let max_message_bytes = errors.positive(
        "limits.max_message_bytes",
        limits.max_message_bytes,
        DEFAULT_MAX_MESSAGE_BYTES,
    );
    LimitsConfig {
        max_message_bytes,
        max_recipients: errors.positive("limits.max_recipients", limits.max_recipients, 100)
            as usize,
        max_connections: errors.positive("limits.max_connections", limits.max_connections, 1024)
            as usize,
        max_connections_per_ip: errors.positive(
            "limits.max_connections_per_ip",
            limits.max_connections_per_ip,
            32,
        ) as usize,
        connections_per_ip_per_minute: clamp_u32(errors.positive(
            "limits.connections_per_ip_per_minute",
            limits.connections_per_ip_per_minute,
            600,
        )),
        messages_per_ip_per_minute: clamp_u32(errors.positive(
            "limits.messages_per_ip_per_minute",
            limits.messages_per_ip_per_minute,
            6000,
        )),
        max_bad_commands: clamp_u32(errors.positive(
            "limits.max_bad_commands",
            limits.max_bad_commands,
            10,
        )),
        command_timeout: errors.duration(
            "limits.command_timeout",
            &limits.command_timeout,
            DEFAULT_COMMAND_TIMEOUT,
        ),
        data_timeout: errors.duration(
            "limits.data_timeout",
            &limits.data_timeout,
            DEFAULT_DATA_TIMEOUT,
        ),
        max_transactions_per_connection: clamp_u32(errors.positive(
            "limits.max_transactions_per_connection",
            limits.max_transactions_per_connection,
            1000,
        )),
    }
}
