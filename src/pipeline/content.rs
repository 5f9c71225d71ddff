//! Raw message + envelope -> Analysis: the content stages in one place (parse, attribution,
//! verification), run once per message and guarded so hostile input costs the message its
//! analysis, never the session. RFC 5322 / RFC 2045.

use tracing::warn;

use std::sync::Arc;

use super::auth::Assessment;
use super::{attribution, parse, verification, Envelope};
use crate::config::Config;
use crate::store::model::{AttributionRecord, VerificationRecord};
use crate::views::Content;

/// The content stages in one place: parse the message once, then attribute it to its original
/// sender (for the first recipient's address, which SRS/`+caf_` decoding compares against).
pub fn analyse(raw: &[u8], env: &Envelope, config: &Config) -> Analysis {
    // Parsers of hostile input are where a panic would come from; one must cost this message
    // its analysis, never the session (the message is still stored as received).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        analyse_unguarded(raw, env, config)
    }))
    .unwrap_or_else(|_| {
        warn!("message analysis panicked; storing it unparsed");
        Analysis {
            parsed: parse::Parsed::default(),
            attribution: envelope_attribution(env),
            verification: None,
            content: None,
        }
    })
}

/// What the content stages found in a message.
pub struct Analysis {
    pub parsed: parse::Parsed,
    pub attribution: AttributionRecord,
    /// A provider's forwarding/verification confirmation, if the message is one.
    pub verification: Option<VerificationRecord>,
    /// What webhooks with `include_message` carry (`pipeline::body`), read from the same parse;
    /// `None` when no endpoint wants it (the work is skipped) or the message does not parse.
    pub content: Option<Arc<Content>>,
}

fn envelope_attribution(env: &Envelope) -> AttributionRecord {
    AttributionRecord {
        email: env.mail_from.clone(),
        name: None,
        method: "envelope_mail_from".into(),
        forwarded_by: None,
    }
}

fn analyse_unguarded(raw: &[u8], env: &Envelope, config: &Config) -> Analysis {
    let rcpt = env.rcpt.first();
    let rcpt_address = rcpt.map(|r| r.address.as_str()).unwrap_or("");
    // A generic "your verification code" mail counts only from the team's own provider.
    let hint = rcpt
        .and_then(|r| config.inboxes.get(&r.inbox))
        .and_then(|i| i.connected_address.as_deref());
    match mail_parser::MessageParser::new().parse(raw) {
        Some(msg) => {
            let parsed = parse::parse_message(&msg, &env.mail_from);
            let a = attribution::attribute(&msg, &env.mail_from, rcpt_address);
            let attribution = AttributionRecord {
                email: a.email,
                name: a.name,
                method: a.method.as_str().to_string(),
                forwarded_by: a.forwarded_by,
            };
            let verification =
                verification::recognise(&msg, &env.mail_from, hint).map(|v| VerificationRecord {
                    provider: v.provider,
                    code: v.code,
                    link: v.link,
                    address: v.address,
                    queue_id: String::new(),
                    received_at: 0,
                });
            let wanted = config.outbound.webhooks.iter().any(|w| w.include_message);
            Analysis {
                parsed,
                attribution,
                verification,
                content: wanted.then(|| Arc::new(super::body::read_message(&msg))),
            }
        }
        None => Analysis {
            parsed: parse::parse(raw, &env.mail_from),
            attribution: envelope_attribution(env),
            verification: None,
            content: None,
        },
    }
}

/// A confirmation's code and link are shown to the team as the provider's: only believe a
/// message that authenticates as coming from the provider (DMARC pass for its From domain).
/// Without checks (trusted network, disabled) the operator has chosen to trust the source.
pub fn believe_verification(analysis: &mut Analysis, assessment: &Assessment) {
    if analysis.verification.is_some()
        && assessment.record.status == "checked"
        && assessment.record.dmarc != "pass"
    {
        warn!(dmarc = %assessment.record.dmarc, "provider confirmation without DMARC pass ignored");
        analysis.verification = None;
    }
}
