//! `[limits]`: raw -> validated, every value range-checked with its key path. The caps and
//! deadlines themselves are enforced by `crate::limits` and the SMTP session.

use std::time::Duration;

use super::errors::Errors;
use super::raw::RawLimits;

/// RFC 5321 §4.5.3.2.2-4 and .7: at least 5 minutes for a command (the MAIL, RCPT and
/// end-of-data replies are the ones senders wait longest for).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 §4.5.3.2.5-6 give 3 minutes per data block and 10 for the terminator; we apply one
/// idle timeout while reading data: a client that sends nothing for this long is dropped.
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(3 * 60);
/// Postfix's `smtpd_min_data_rate`: slow links pass, a byte every few seconds does not.
pub const DEFAULT_MIN_DATA_RATE_BYTES_PER_SECOND: u64 = 500;
/// How long a reply may wait for the client to read it. A client that reads nothing keeps its
/// replies in our socket buffer; once that is full the session would wait forever.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 31_457_280;
/// The header section of a message: well above any real one (ARC and DKIM sets included;
/// Postfix keeps 100 KiB), far below what a parser may safely hold many times over.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 256 * 1024;
/// One ISP's customer usually gets a /64: per-IP limits count every address in it as one client.
pub const DEFAULT_IPV6_PREFIX_LENGTH: u8 = 64;
/// The most sessions a server may be configured for; far beyond what one process serves, far
/// below tokio's semaphore limit (which panics at start past 2^61).
pub const MAX_CONNECTIONS_CEILING: u64 = 1_000_000;
/// Timeouts longer than a day are mistakes; tokio's timers overflow far beyond that.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// `[limits]`, validated: what one client may cost the server. Read at start (`Limits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Past it the message is read to its end without being stored and answered `552 5.3.4`.
    pub max_message_bytes: u64,
    /// Past it the header section is discarded while it streams in and the message is answered
    /// `552 5.3.4` at its end; the connection stays usable.
    pub max_header_bytes: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    /// Counted per address, and per `ipv6_prefix_length` network for IPv6 clients.
    pub max_connections_per_ip: usize,
    pub connections_per_ip_per_minute: u32,
    pub messages_per_ip_per_minute: u32,
    /// IPv6 clients in one network of this prefix length share the per-IP limits (a host with a
    /// /64 has 2^64 addresses to rotate through).
    pub ipv6_prefix_length: u8,
    pub max_bad_commands: u32,
    /// Deadline for a whole command line from the moment the server waits for it; not restarted
    /// by each byte, so a client trickling one byte at a time is cut too (`421 4.4.2`).
    pub command_timeout: Duration,
    /// Longest silence while reading DATA or BDAT bytes (`421 4.4.2`).
    pub data_timeout: Duration,
    /// During DATA/BDAT, after a grace of `data_timeout`, a client must average at least this
    /// rate; one that falls behind is cut with `421 4.4.2`.
    pub min_data_rate_bytes_per_second: u64,
    /// Longest wait for the client to take our replies; past it the connection is dropped
    /// without a goodbye (it is not reading one).
    pub write_timeout: Duration,
    pub max_transactions_per_connection: u32,
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

impl Errors {
    /// A limit's timeout: more than 0, at most a day.
    fn timeout(&mut self, path: &str, value: &Option<String>, default: Duration) -> Duration {
        let d = self.positive_duration(path, value, default);
        if d > MAX_TIMEOUT {
            self.push(path, "must be at most 1d");
            return default;
        }
        d
    }
}

pub(super) fn compile_limits(limits: &RawLimits, errors: &mut Errors) -> LimitsConfig {
    let max_message_bytes = errors.range(
        "limits.max_message_bytes",
        limits.max_message_bytes,
        1,
        1 << 40,
        DEFAULT_MAX_MESSAGE_BYTES,
    );
    let max_header_bytes = errors.range(
        "limits.max_header_bytes",
        limits.max_header_bytes,
        1024,
        1 << 40,
        DEFAULT_MAX_HEADER_BYTES,
    );
    let u32_max = u32::MAX as u64;
    LimitsConfig {
        max_message_bytes,
        max_header_bytes,
        max_recipients: errors.range(
            "limits.max_recipients",
            limits.max_recipients,
            1,
            100_000,
            100,
        ) as usize,
        max_connections: errors.range(
            "limits.max_connections",
            limits.max_connections,
            1,
            MAX_CONNECTIONS_CEILING,
            1024,
        ) as usize,
        max_connections_per_ip: errors.range(
            "limits.max_connections_per_ip",
            limits.max_connections_per_ip,
            1,
            MAX_CONNECTIONS_CEILING,
            32,
        ) as usize,
        connections_per_ip_per_minute: clamp_u32(errors.range(
            "limits.connections_per_ip_per_minute",
            limits.connections_per_ip_per_minute,
            1,
            u32_max,
            600,
        )),
        messages_per_ip_per_minute: clamp_u32(errors.range(
            "limits.messages_per_ip_per_minute",
            limits.messages_per_ip_per_minute,
            1,
            u32_max,
            6000,
        )),
        ipv6_prefix_length: errors.range(
            "limits.ipv6_prefix_length",
            limits.ipv6_prefix_length,
            1,
            128,
            DEFAULT_IPV6_PREFIX_LENGTH as u64,
        ) as u8,
        max_bad_commands: clamp_u32(errors.range(
            "limits.max_bad_commands",
            limits.max_bad_commands,
            1,
            u32_max,
            10,
        )),
        command_timeout: errors.timeout(
            "limits.command_timeout",
            &limits.command_timeout,
            DEFAULT_COMMAND_TIMEOUT,
        ),
        data_timeout: errors.timeout(
            "limits.data_timeout",
            &limits.data_timeout,
            DEFAULT_DATA_TIMEOUT,
        ),
        min_data_rate_bytes_per_second: errors.range(
            "limits.min_data_rate_bytes_per_second",
            limits.min_data_rate_bytes_per_second,
            1,
            1 << 40,
            DEFAULT_MIN_DATA_RATE_BYTES_PER_SECOND,
        ),
        write_timeout: errors.timeout(
            "limits.write_timeout",
            &limits.write_timeout,
            DEFAULT_WRITE_TIMEOUT,
        ),
        max_transactions_per_connection: clamp_u32(errors.range(
            "limits.max_transactions_per_connection",
            limits.max_transactions_per_connection,
            1,
            u32_max,
            1000,
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    /// Issue #11: `max_connections` of 2^61 passed and then panicked at start; zero timeouts
    /// were accepted. Every value is range-checked, each error with its key path.
    #[test]
    fn out_of_range_values_are_errors_with_their_key_paths() {
        let text = "[[listener]]\naddr = \"127.0.0.1:1\"\n[limits]\n\
                    max_connections = 2305843009213693952\ncommand_timeout = \"0s\"\n\
                    data_timeout = \"0ms\"\nwrite_timeout = \"2d\"\nipv6_prefix_length = 129\n\
                    min_data_rate_bytes_per_second = 0\nmax_header_bytes = 10\n";
        let errs = parse(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "limits.max_header_bytes",
                "limits.max_connections",
                "limits.ipv6_prefix_length",
                "limits.command_timeout",
                "limits.data_timeout",
                "limits.min_data_rate_bytes_per_second",
                "limits.write_timeout",
            ],
            "{errs:#?}"
        );
        assert!(
            errs[1].message.contains("between 1 and 1000000"),
            "{errs:#?}"
        );
        // Issue #11: a type error inside a table names its key, not only the table.
        let errs = parse(
            "[[listener]]\naddr = \"127.0.0.1:1\"\n[limits]\nmax_connections = \"many\"\n\
             [[inbox]]\nid = \"a\"\naddress = \"a@x.example\"\naliases = \"b@x.example\"\n",
        )
        .unwrap_err()
        .0;
        let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            ["inbox[0].aliases", "limits.max_connections"],
            "{errs:#?}"
        );
        let ok = parse("[[listener]]\naddr = \"127.0.0.1:1\"\n")
            .unwrap()
            .limits;
        assert_eq!(ok.ipv6_prefix_length, 64);
        assert_eq!(ok.command_timeout, super::DEFAULT_COMMAND_TIMEOUT);
    }
}
