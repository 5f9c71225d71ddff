//! Envelope + body + verdict + analysis -> what the commit needs: the message record (with its
//! `Received:` and `Authentication-Results:` trace fields, RFC 5321 §4.4) and the commit plan's
//! input (the rule each inbox's rules select, whether the message proves the inbox connected).
//! Everything here is decided before the commit, without reading stored state.

use std::net::IpAddr;
use std::sync::Arc;

use super::auth::{Assessment, Verdict};
use super::content::Analysis;
use super::threading::{InboxInput, ThreadInput};
use super::{parse, routing, Envelope};
use crate::config::Config;
use crate::store::model::AttributionRecord;
use crate::store::spool::Finished;
use crate::store::{Body, MessageRecord};
use crate::util::rfc5322_date;

/// The `Received:` header field for this message (RFC 5321 §4.4).
pub fn received_header(hostname: &str, env: &Envelope, queue_id: &str, now_ms: u64) -> String {
    let tls = env
        .tls
        .as_deref()
        .map(|v| format!(" (using {v})"))
        .unwrap_or_default();
    let for_clause = match env.rcpt.as_slice() {
        [one] => format!("\r\n\tfor <{}>", trace_text(&one.address)),
        _ => String::new(),
    };
    let helo = if env.helo.is_empty() {
        "unknown".into()
    } else {
        trace_text(&env.helo)
    };
    format!(
        "Received: from {helo} ({ip}){tls}\r\n\tby {hostname} (inbound) with {proto} id {queue_id}{for_clause};\r\n\t{date}\r\n",
        ip = address_literal(env.client_ip),
        proto = env.protocol(),
        date = rfc5322_date(now_ms),
    )
}

/// Client-chosen text for a trace field: control characters (a HELO may carry any byte but CR
/// and LF) are written as `\xNN`, so they cannot fold, end or corrupt the header or a reader's
/// terminal.
fn trace_text(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\x{:02x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// RFC 5321 §4.1.3 address literal: `[192.0.2.1]`, `[IPv6:2001:db8::1]`.
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Build the record for a finished message.
pub fn prepare(
    hostname: &str,
    env: &Envelope,
    body: &Finished,
    now_ms: u64,
    assessment: &Assessment,
    analysis: &Analysis,
) -> MessageRecord {
    let (parsed, attribution) = (&analysis.parsed, &analysis.attribution);
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
            Body::Inline(_) => "inline".into(),
            Body::Spooled { .. } => "spool".into(),
        },
        tls: env.tls.clone(),
        body_type: env.body_type.to_string(),
        smtputf8: env.smtputf8,
        // Newest first: our Authentication-Results sits above our Received (RFC 8601 §5).
        trace_headers: format!(
            "{}{}",
            assessment.header,
            received_header(hostname, env, &body.queue_id, now_ms)
        ),
        subject: parsed.subject.clone(),
        from: parsed.from_email.clone(),
        message_id: parsed.message_id.clone(),
        quarantined: matches!(assessment.verdict, Verdict::Quarantine(_)),
        auth: Some(assessment.record.clone()),
        attribution: Some(attribution.clone()),
        automatic: parsed.automatic.clone(),
        attachments: parsed.attachments.clone(),
        in_reply_to: parsed.in_reply_to.clone(),
        references: parsed.references.clone(),
        verification: analysis.verification.clone(),
        routing: Vec::new(),
        session_metadata_cleared: false,
    }
}

/// Whether this message shows that the team's forwarding to `inbox` works: it came from (or was
/// forwarded by) the inbox's `connected_address` (an address, or `@domain`). Without one
/// configured, any forwarded message counts.
pub fn connect_evidence(
    inbox: &crate::config::InboxConfig,
    env: &Envelope,
    parsed: &parse::Parsed,
    attribution: &AttributionRecord,
) -> Option<String> {
    if parsed.automatic.is_some() {
        return None;
    }
    let Some(connected) = &inbox.connected_address else {
        return attribution
            .forwarded_by
            .as_ref()
            .map(|f| format!("forwarded by {f}"));
    };
    let matches = |address: &str| {
        let a = address.trim().trim_matches(['<', '>']).to_lowercase();
        match connected.strip_prefix('@') {
            Some(domain) => a
                .rsplit_once('@')
                .is_some_and(|(_, d)| crate::util::domain_within(d, domain)),
            None => a == *connected,
        }
    };
    if let Some(f) = attribution.forwarded_by.as_deref().filter(|f| matches(f)) {
        return Some(format!("forwarded by {f}"));
    }
    for name in [
        "x-forwarded-for",
        "x-forwarded-to",
        "x-original-to",
        "delivered-to",
        "resent-from",
        "sender",
    ] {
        if let Some(value) = parsed.header(name) {
            let hit = value
                .split(|c: char| c.is_whitespace() || c == ',')
                .find(|t| t.contains('@') && matches(t));
            if let Some(t) = hit {
                return Some(format!("{name}: {}", t.trim_matches(['<', '>'])));
            }
        }
    }
    matches(&env.mail_from).then(|| format!("envelope sender {}", env.mail_from))
}

/// The routing decisions that do not depend on stored state (attribution, matched rule per
/// inbox), packed for the commit plan that makes the ones that do (thread, assignee, ticket).
pub fn thread_input(
    config: &Arc<Config>,
    env: &Envelope,
    analysis: &Analysis,
    body_sha256: &str,
    assessment: &Assessment,
    now_ms: u64,
) -> ThreadInput {
    let (auth_verdict, dmarc) = (assessment.verdict.name(), assessment.record.dmarc.as_str());
    let (parsed, attribution) = (&analysis.parsed, &analysis.attribution);
    // No Message-ID: a stable derived one, so a re-delivery is still recognised.
    let message_id = crate::store::keys::thread_message_id(
        &parsed.message_id,
        &parsed.from_email,
        &parsed.subject,
        body_sha256,
    );
    let names: Vec<String> = parsed.attachments.iter().map(|a| a.name.clone()).collect();
    let mut inboxes: Vec<InboxInput> = Vec::new();
    for rcpt in &env.rcpt {
        if inboxes.iter().any(|i| i.inbox == rcpt.inbox) {
            continue;
        }
        let Some(inbox) = config.inboxes.get(&rcpt.inbox) else {
            continue;
        };
        let address = rcpt.address.to_lowercase();
        let facts = routing::Facts {
            from: &attribution.email,
            subject: &parsed.subject,
            recipient: &address,
            tag: rcpt.tag.as_deref(),
            headers: &parsed.headers,
            attachment_names: &names,
            auth_verdict,
            dmarc,
        };
        inboxes.push(InboxInput {
            inbox: inbox.id.clone(),
            address: inbox.address.clone(),
            rule: routing::select(inbox, &facts).cloned(),
            tickets: inbox.tickets.clone(),
            connect_evidence: match analysis.verification {
                // The provider's own confirmation proves nothing about the forwarding yet.
                Some(_) => None,
                None => connect_evidence(inbox, env, parsed, attribution),
            },
            verification: analysis.verification.clone(),
        });
    }
    ThreadInput {
        config: config.clone(),
        message_id,
        in_reply_to: parsed.in_reply_to.clone(),
        references: parsed.references.clone(),
        subject: parsed.subject.clone(),
        contact_email: attribution.email.to_lowercase(),
        contact_name: attribution.name.clone(),
        is_forward: crate::pipeline::attribution::is_manual_forward(&attribution.method),
        automatic: parsed.automatic.is_some(),
        verification: analysis.verification.is_some(),
        received_at: now_ms,
        inboxes,
        content: analysis.content.clone(),
    }
}
