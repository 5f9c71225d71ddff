//! A quarantined message + an operator's release -> the message routed as if just accepted, in
//! one durable transaction that also clears its quarantine flag.

use std::net::IpAddr;
use std::sync::Arc;

use super::auth::{Assessment, Verdict};
use super::content::{analyse, believe_verification};
use super::prepare::thread_input;
use super::{threading, Envelope};
use crate::config::Config;
use crate::store::MessageRecord;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no message {0}")]
    NotFound(String),
    #[error("message {0} is not quarantined")]
    NotQuarantined(String),
    #[error("the body of message {0} has expired; it cannot be released")]
    BodyExpired(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Release a quarantined message into its inboxes: analysed again from its stored body and
/// routed as if it had just been accepted (thread, contact, assignment, ticket, inbox state),
/// in one durable transaction that also clears the flag. Rules see the verdict `accept`: an
/// operator has vouched for it.
pub fn release(
    config: &Arc<Config>,
    store: &crate::store::Store,
    queue_id: &str,
) -> Result<MessageRecord, ReleaseError> {
    let record = store
        .get(queue_id)?
        .ok_or_else(|| ReleaseError::NotFound(queue_id.into()))?;
    if !record.quarantined {
        return Err(ReleaseError::NotQuarantined(queue_id.into()));
    }
    if record.body_location == crate::store::BODY_EXPIRED {
        return Err(ReleaseError::BodyExpired(queue_id.into()));
    }
    let raw = store.body(&record)?;
    let env = Envelope {
        client_ip: record
            .client_ip
            .parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        client_port: record.client_port,
        helo: record.helo.clone(),
        esmtp: true,
        tls: record.tls.clone(),
        mail_from: record.mail_from.clone(),
        rcpt: record.rcpt.clone(),
        body_type: match record.body_type.as_str() {
            "8BITMIME" => "8BITMIME",
            "BINARYMIME" => "BINARYMIME",
            _ => "7BIT",
        },
        smtputf8: record.smtputf8,
    };
    let mut auth = record.auth.clone().unwrap_or_default();
    auth.verdict = "accept".into();
    let assessment = Assessment {
        record: auth,
        header: String::new(),
        verdict: Verdict::Accept,
    };
    let mut analysis = analyse(&raw, &env, config);
    believe_verification(&mut analysis, &assessment);
    let input = thread_input(
        config,
        &env,
        &analysis,
        &record.sha256,
        &assessment,
        crate::store::keys::now_ms(),
    );
    let plan = threading::plan(input);
    let released = store.update(|tx| {
        let Some(mut rec) = tx.message(queue_id)? else {
            return Ok(None);
        };
        if !rec.quarantined {
            return Ok(None);
        }
        rec.quarantined = false;
        plan(tx, &mut rec)?;
        tx.put_message(&rec)?;
        Ok(Some(rec))
    })?;
    // Raced with another release or a delete.
    released.ok_or_else(|| ReleaseError::NotQuarantined(queue_id.into()))
}
