//! Every reply the server sends, named. RFC 5321 §4.2 basic codes, RFC 3463 enhanced codes.
//! Handlers return these; internal faults become `LOCAL_ERROR` with the detail in the log only.

use std::borrow::Cow;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (RFC 3463), empty for replies that carry none (220/221 greetings).
    pub enhanced: &'static str,
    pub text: Cow<'static, str>,
}

const fn r(code: u16, enhanced: &'static str, text: &'static str) -> Reply {
    Reply {
        code,
        enhanced,
        text: Cow::Borrowed(text),
    }
}

impl Reply {
    pub const OK: Reply = r(250, "2.0.0", "OK");
    pub const SENDER_OK: Reply = r(250, "2.1.0", "Sender OK");
    pub const RECIPIENT_OK: Reply = r(250, "2.1.5", "Recipient OK");
    pub const RESET_OK: Reply = r(250, "2.0.0", "Reset OK");
    pub const NOOP_OK: Reply = r(250, "2.0.0", "OK");
    pub const CANNOT_VRFY: Reply = r(
        252,
        "2.5.0",
        "Cannot VRFY user, but will accept message and attempt delivery",
    );
    pub const HELP: Reply = r(
        214,
        "2.0.0",
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS",
    );
    pub const START_DATA: Reply = r(354, "", "Start mail input; end with <CRLF>.<CRLF>");
    pub const READY_TO_START_TLS: Reply = r(220, "2.0.0", "Ready to start TLS");

    pub const SHUTTING_DOWN: Reply = r(421, "4.3.0", "Server shutting down, try again later");
    pub const TOO_MANY_CONNECTIONS: Reply =
        r(421, "4.7.0", "Too many connections, try again later");
    pub const TOO_MANY_FROM_IP: Reply = r(
        421,
        "4.7.0",
        "Too many connections from your address, try again later",
    );
    pub const UNTRUSTED_PROXY: Reply =
        r(421, "4.7.0", "PROXY protocol listener: not a trusted proxy");
    pub const CONNECTION_RATE: Reply = r(
        421,
        "4.7.0",
        "Too many connections from your address, slow down",
    );
    pub const TOO_MANY_ERRORS: Reply = r(421, "4.7.0", "Too many errors, closing connection");
    pub const COMMAND_TIMEOUT: Reply = r(
        421,
        "4.4.2",
        "Timeout waiting for command, closing connection",
    );
    pub const DATA_TIMEOUT: Reply = r(421, "4.4.2", "Timeout waiting for data, closing connection");
    /// The client sent message data below `limits.min_data_rate_bytes_per_second`.
    pub const DATA_TOO_SLOW: Reply =
        r(421, "4.4.2", "Data arriving too slowly, closing connection");
    pub const TOO_MANY_TRANSACTIONS: Reply =
        r(421, "4.7.0", "Too many transactions on one connection");
    pub const MESSAGE_RATE: Reply = r(
        451,
        "4.7.1",
        "Too many messages from your address, try again later",
    );
    pub const LOCAL_ERROR: Reply = r(451, "4.3.0", "Local error in processing, try again later");
    /// DNS trouble during sender authentication: the sender must retry (never a 5xx).
    pub const AUTH_TEMPFAIL: Reply = r(
        451,
        "4.7.0",
        "Temporary failure checking sender authentication (DNS), try again later",
    );
    pub const TLS_UNAVAILABLE: Reply = r(454, "4.7.0", "TLS not available");

    pub const SYNTAX_ERROR: Reply = r(500, "5.5.2", "Syntax error, command unrecognized");
    pub const LINE_TOO_LONG: Reply = r(500, "5.5.2", "Line too long");
    pub const NOT_IMPLEMENTED: Reply = r(502, "5.5.1", "Command not implemented");
    pub const BAD_SEQUENCE_HELO: Reply = r(503, "5.5.1", "Send EHLO or HELO first");
    pub const BAD_SEQUENCE_MAIL: Reply = r(503, "5.5.1", "Send MAIL first");
    pub const BAD_SEQUENCE_RCPT: Reply = r(503, "5.5.1", "Send RCPT first");
    pub const NESTED_MAIL: Reply = r(503, "5.5.1", "Sender already specified");
    pub const ALREADY_TLS: Reply = r(503, "5.5.1", "TLS already active");
    pub const BDAT_AFTER_DATA_MIX: Reply = r(503, "5.5.1", "DATA not allowed after BDAT");
    pub const AUTH_NOT_OFFERED: Reply = r(503, "5.5.1", "Authentication not available on this MX");
    pub const BAD_SENDER_SYNTAX: Reply = r(501, "5.1.7", "Bad sender address syntax");
    pub const BAD_RECIPIENT_SYNTAX: Reply = r(501, "5.1.3", "Bad recipient address syntax");
    pub const BAD_PARAMETER: Reply = r(501, "5.5.4", "Invalid command parameter");
    pub const HELO_REQUIRES_DOMAIN: Reply =
        r(501, "5.5.4", "EHLO/HELO requires a domain or address");
    pub const UNSUPPORTED_PARAMETER: Reply =
        r(555, "5.5.4", "Parameter not recognized or not implemented");
    pub const SMTPUTF8_REQUIRED: Reply = r(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
    /// A command line that is not valid UTF-8 (RFC 6531 allows UTF-8, not arbitrary bytes).
    pub const INVALID_UTF8: Reply = r(553, "5.6.7", "Invalid UTF-8 in command");

    pub const MAILBOX_UNKNOWN: Reply = r(550, "5.1.1", "No such mailbox here");
    pub const RELAY_DENIED: Reply = r(
        550,
        "5.7.1",
        "Relay access denied: we accept mail only for hosted addresses",
    );
    pub const TOO_MANY_RECIPIENTS: Reply = r(452, "4.5.3", "Too many recipients");
    /// RFC 3463 §3.4: the system's storage is (nearly) full; a sender retries later.
    pub const INSUFFICIENT_STORAGE: Reply =
        r(452, "4.3.1", "Insufficient system storage, try again later");
    pub const MESSAGE_TOO_BIG: Reply = r(
        552,
        "5.3.4",
        "Message size exceeds fixed maximum message size",
    );

    /// The header section ran past `limits.max_header_bytes` (Postfix's `header_size_limit`).
    pub const HEADER_TOO_BIG: Reply = r(
        552,
        "5.3.4",
        "Message header section exceeds fixed maximum size",
    );

    pub const GOODBYE: Reply = r(221, "2.0.0", "Bye");

    /// `250 2.0.0 Ok: queued as <id>`: the queue id is always the last word, for scripts.
    pub fn queued(queue_id: &str) -> Reply {
        Reply {
            code: 250,
            enhanced: "2.0.0",
            text: format!("Ok: queued as {queue_id}").into(),
        }
    }

    /// A policy verdict (DMARC, unauthenticated sender), with its reason on one line.
    pub fn policy_rejected(reason: &str) -> Reply {
        let clean: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(400)
            .collect();
        Reply {
            code: 550,
            enhanced: "5.7.1",
            text: format!("Message rejected: {clean}").into(),
        }
    }

    pub fn bdat_chunk(bytes: u64) -> Reply {
        Reply {
            code: 250,
            enhanced: "2.0.0",
            text: format!("{bytes} octets received").into(),
        }
    }

    pub fn greeting(hostname: &str) -> Reply {
        Reply {
            code: 220,
            enhanced: "",
            text: format!("{hostname} ESMTP inbound").into(),
        }
    }

    pub fn helo(hostname: &str, peer: &str) -> Reply {
        Reply {
            code: 250,
            enhanced: "",
            text: format!("{hostname} Hello {peer}").into(),
        }
    }

    pub fn goodbye(hostname: &str) -> Reply {
        Reply {
            code: 221,
            enhanced: "2.0.0",
            text: format!("{hostname} closing connection").into(),
        }
    }

    /// Whether the server closes the connection after sending this reply (RFC 5321 §3.8).
    pub fn closes_connection(&self) -> bool {
        self.code == 421 || self.code == 221
    }

    /// Write this reply, CRLF-terminated, into `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::with_capacity(64);
        let _ = write!(s, "{}", self.code);
        if !self.enhanced.is_empty() {
            let _ = write!(s, " {}", self.enhanced);
        }
        let _ = write!(s, " {}\r\n", self.text);
        out.extend_from_slice(s.as_bytes());
    }
}

/// Write a multi-line reply (EHLO): every line but the last with `code-`.
pub fn write_multiline(code: u16, lines: &[String], out: &mut Vec<u8>) {
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.extend_from_slice(format!("{code}{sep}{line}\r\n").as_bytes());
    }
}
