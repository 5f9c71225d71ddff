//! A received message -> the record we commit. Runs the stages in order on a finished body:
//! parse (header summary) now; authentication, attribution, threading and routing plug in here as
//! they are built. Each stage is a module named after what it does.

pub mod parse;

use crate::store::spool::Finished;
use crate::store::{MessageRecord, RcptRecord};
use crate::util::rfc5322_date;

/// The SMTP envelope and connection facts every stage may read.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub client_ip: std::net::IpAddr,
    pub client_port: u16,
    pub helo: String,
    pub esmtp: bool,
    pub tls: Option<String>,
    pub mail_from: String,
    pub rcpt: Vec<RcptRecord>,
    pub body_type: &'static str,
    pub smtputf8: bool,
}

impl Envelope {
    /// RFC 3848 / RFC 6531 protocol name for the `with` clause of `Received:`.
    pub fn protocol(&self) -> &'static str {
        match (self.smtputf8, self.esmtp, self.tls.is_some()) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, true) => "SMTPS",
            (false, false, false) => "SMTP",
        }
    }
}

/// The `Received:` header field for this message (RFC 5321 §4.4).
pub fn received_header(hostname: &str, env: &Envelope, queue_id: &str, now_ms: u64) -> String {
    let tls = env
        .tls
        .as_deref()
        .map(|v| format!(" (using {v})"))
        .unwrap_or_default();
    let for_clause = match env.rcpt.as_slice() {
        [one] => format!("\r\n\tfor <{}>", one.address),
        _ => String::new(),
    };
    let helo = if env.helo.is_empty() {
        "unknown"
    } else {
        env.helo.as_str()
    };
    format!(
        "Received: from {helo} ([{ip}]){tls}\r\n\tby {hostname} (inbound) with {proto} id {queue_id}{for_clause};\r\n\t{date}\r\n",
        ip = env.client_ip,
        proto = env.protocol(),
        date = rfc5322_date(now_ms),
    )
}

/// Build the record for a finished message.
pub fn prepare(hostname: &str, env: &Envelope, body: &Finished, now_ms: u64) -> MessageRecord {
    let summary = parse::summarize(body.head());
    MessageRecord {
        queue_id: body.queue_id.clone(),
        received_at: now_ms,
        client_ip: env.client_ip.to_string(),
        client_port: env.client_port,
        helo: env.helo.clone(),
        mail_from: env.mail_from.clone(),
        rcpt: env.rcpt.clone(),
        size: body.len,
        sha256: body.sha256.clone(),
        body_location: match body.body {
            crate::store::Body::Inline(_) => "inline".into(),
            crate::store::Body::Spooled { .. } => "spool".into(),
        },
        tls: env.tls.clone(),
        body_type: env.body_type.to_string(),
        smtputf8: env.smtputf8,
        trace_headers: received_header(hostname, env, &body.queue_id, now_ms),
        subject: summary.subject,
        from: summary.from,
        message_id: summary.message_id,
    }
}
