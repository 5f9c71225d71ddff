//! Proving a team controls an address before inbound sends mail "from" it for their inbox:
//! `inbound inboxes verify-from ID ADDRESS` mails a one-time code to ADDRESS through the relay;
//! `inbound inboxes confirm-from ID CODE` checks it. The code is six digits, lives 30 minutes,
//! is stored only as a salted SHA-256, allows five wrong tries, and at most three codes are sent
//! per inbox and hour (at least a minute apart), so the relay cannot be used to flood an address.

use crate::config::Config;
use crate::store::model::{FromVerification, InboxState};
use crate::store::{Store, StoreError, Tx, TxResult};

pub const CODE_LIFETIME_MS: u64 = 30 * 60 * 1000;
pub const MAX_FAILED_ATTEMPTS: u32 = 5;
pub const MAX_SENDS_PER_HOUR: usize = 3;
pub const MIN_SEND_INTERVAL_MS: u64 = 60 * 1000;
const HOUR_MS: u64 = 3_600_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("no inbox {0:?} in this config")]
    UnknownInbox(String),
    #[error("no [relay] is configured, so no verification mail can be sent")]
    NoRelay,
    #[error("{0:?} is not a valid email address")]
    InvalidAddress(String),
    #[error("too many verification mails for this inbox; try again in {0} s")]
    RateLimited(u64),
    #[error("no from-address verification is pending for this inbox (run verify-from first)")]
    NoneRequested,
    #[error("the code has expired; request a new one with verify-from")]
    Expired,
    #[error("wrong code ({0} tries left)")]
    WrongCode(u32),
    #[error("too many wrong codes; this code is void, request a new one with verify-from")]
    TooManyAttempts,
    #[error("store: {0}")]
    Store(String),
}

impl From<StoreError> for VerifyError {
    fn from(e: StoreError) -> Self {
        VerifyError::Store(e.to_string())
    }
}

fn hash(salt: &str, code: &str) -> String {
    crate::util::sha256_hex(format!("{salt}:{code}").as_bytes())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("operating system random number generator");
    b
}

/// Six uniformly random digits (rejection sampling: no modulo bias).
fn new_code() -> String {
    loop {
        let n = u32::from_be_bytes(random_bytes::<4>());
        if n < 4_294_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

fn state(tx: &Tx<'_>, config: &Config, inbox: &str) -> TxResult<InboxState> {
    Ok(tx.inbox_state(inbox)?.unwrap_or_else(|| {
        let address = config.inboxes.get(inbox).map(|i| i.address.as_str());
        InboxState::pending(inbox, address.unwrap_or_default())
    }))
}

/// What `request` did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Requested {
    pub inbox: String,
    pub address: String,
    pub expires_at: u64,
    /// The outbox item carrying the mail.
    pub outbox_id: String,
}

/// Send a new code to `address` for `inbox` (replacing any pending one).
pub fn request(
    store: &Store,
    config: &Config,
    inbox: &str,
    address: &str,
    now: u64,
) -> Result<Requested, VerifyError> {
    let cfg = config
        .inboxes
        .get(inbox)
        .ok_or_else(|| VerifyError::UnknownInbox(inbox.into()))?;
    if config.outbound.relay.is_none() {
        return Err(VerifyError::NoRelay);
    }
    let address = address.trim().to_lowercase();
    let valid = crate::config::split_address(&address).is_some_and(|(l, d)| {
        !l.is_empty()
            && d.contains('.')
            && !address.contains(|c: char| c.is_whitespace() || "<>,;\"".contains(c))
    });
    if !valid {
        return Err(VerifyError::InvalidAddress(address));
    }
    let code = new_code();
    let salt = crate::util::hex(&random_bytes::<16>());
    let code_hash = hash(&salt, &code);
    let subject = format!("Verification code {code} for {}", cfg.address);
    let text = format!(
        "Someone asked to send mail as {address} for the inbound inbox {} ({}).\r\n\r\n\
         Verification code: {code}\r\n\r\n\
         It expires in 30 minutes. To confirm, run:\r\n\r\n    inbound inboxes confirm-from {} {code}\r\n\r\n\
         If you did not ask for this, ignore this message: nothing changes without the code.\r\n",
        cfg.id, cfg.address, cfg.id
    );
    let outcome = store.update(|tx| {
        let mut st = state(tx, config, inbox)?;
        let mut recent: Vec<u64> = st
            .from_verification
            .as_ref()
            .map(|v| v.recent_sends.clone())
            .unwrap_or_default();
        recent.retain(|&t| now.saturating_sub(t) < HOUR_MS);
        if let Some(&last) = recent.last() {
            if now.saturating_sub(last) < MIN_SEND_INTERVAL_MS {
                return Ok(Err(VerifyError::RateLimited(
                    (MIN_SEND_INTERVAL_MS - now.saturating_sub(last)).div_ceil(1000),
                )));
            }
        }
        if recent.len() >= MAX_SENDS_PER_HOUR {
            let oldest = recent[0];
            return Ok(Err(VerifyError::RateLimited(
                (HOUR_MS - now.saturating_sub(oldest)).div_ceil(1000),
            )));
        }
        recent.push(now);
        // Sent from the relay's own address: the one being verified is not proven yet.
        let notice = super::Notice {
            inbox: None,
            purpose: "from_verification",
            to: std::slice::from_ref(&address),
            subject: &subject,
            text: &text,
        };
        let Some(outbox_id) = super::queue_mail(tx, config, &notice, now)? else {
            return Ok(Err(VerifyError::NoRelay));
        };
        st.from_verification = Some(FromVerification {
            address: address.clone(),
            salt: salt.clone(),
            code_sha256: code_hash.clone(),
            sent_at: now,
            expires_at: now + CODE_LIFETIME_MS,
            failed_attempts: 0,
            recent_sends: recent,
        });
        tx.put_inbox_state(&st)?;
        Ok(Ok(Requested {
            inbox: inbox.into(),
            address: address.clone(),
            expires_at: now + CODE_LIFETIME_MS,
            outbox_id,
        }))
    })?;
    outcome
}

/// Check `code` against the pending verification of `inbox`; on success the address joins the
/// inbox's verified from-addresses. Wrong tries are counted durably.
pub fn confirm(
    store: &Store,
    config: &Config,
    inbox: &str,
    code: &str,
    now: u64,
) -> Result<String, VerifyError> {
    if config.inboxes.get(inbox).is_none() {
        return Err(VerifyError::UnknownInbox(inbox.into()));
    }
    let code = code.trim().to_string();
    store.update(|tx| {
        let mut st = state(tx, config, inbox)?;
        let Some(mut v) = st.from_verification.clone() else {
            return Ok(Err(VerifyError::NoneRequested));
        };
        if v.code_sha256.is_empty() {
            return Ok(Err(VerifyError::NoneRequested));
        }
        // A used, expired or void code keeps only its send times (for the rate limit).
        let void = |st: &mut InboxState, v: &FromVerification| {
            st.from_verification = Some(FromVerification {
                recent_sends: v.recent_sends.clone(),
                ..Default::default()
            });
        };
        if now >= v.expires_at {
            void(&mut st, &v);
            tx.put_inbox_state(&st)?;
            return Ok(Err(VerifyError::Expired));
        }
        if !crate::util::constant_time_eq(hash(&v.salt, &code).as_bytes(), v.code_sha256.as_bytes())
        {
            v.failed_attempts += 1;
            let left = MAX_FAILED_ATTEMPTS.saturating_sub(v.failed_attempts);
            if left == 0 {
                void(&mut st, &v);
            } else {
                st.from_verification = Some(v);
            }
            tx.put_inbox_state(&st)?;
            return Ok(Err(if left == 0 {
                VerifyError::TooManyAttempts
            } else {
                VerifyError::WrongCode(left)
            }));
        }
        if !st.verified_from.contains(&v.address) {
            st.verified_from.push(v.address.clone());
        }
        void(&mut st, &v);
        tx.put_inbox_state(&st)?;
        Ok(Ok(v.address.clone()))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..200 {
            let c = new_code();
            assert_eq!(c.len(), 6);
            assert!(c.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
