//! Queue ids: ULIDs (48-bit millisecond time + 80 random bits, Crockford base32, 26 characters).
//! They sort by arrival time, so the `messages` tree iterates oldest first without an index, and
//! they are unique across restarts and across nodes without coordination.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

struct Last {
    ms: u64,
    random: u128,
}

static LAST: Mutex<Last> = Mutex::new(Last { ms: 0, random: 0 });

fn random_80() -> u128 {
    let mut bytes = [0u8; 16];
    // SystemRandom reads the OS generator; it only fails when the OS has none, where no TLS or
    // DKIM could work either.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes[6..])
        .expect("operating system random number generator");
    u128::from_be_bytes(bytes)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new queue id, strictly greater than every id this process made before (monotonic ULID: within
/// one millisecond the random part is incremented instead of redrawn).
pub fn new_queue_id() -> String {
    let ms = now_ms();
    // The lock is held for a few arithmetic operations; a poisoned lock only means another thread
    // panicked in this block, which cannot leave `Last` in an unusable state.
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if ms > last.ms {
        last.ms = ms;
        last.random = random_80();
    } else {
        last.random = (last.random + 1) & ((1u128 << 80) - 1);
    }
    encode(((last.ms as u128) << 80) | last.random)
}

fn encode(mut v: u128) -> String {
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v & 31) as usize];
        v >>= 5;
    }
    // Every byte comes from ALPHABET, which is ASCII.
    String::from_utf8(out.to_vec()).expect("ascii")
}

/// The millisecond timestamp a queue id (or conversation id: the same ULIDs) was made at, from
/// its first 10 characters. `None` for strings that are not ids.
pub fn id_time_ms(id: &str) -> Option<u64> {
    if !is_queue_id(id) {
        return None;
    }
    let mut ms: u64 = 0;
    for b in id.bytes().take(10) {
        // `is_queue_id` checked that every byte is in ALPHABET.
        let v = ALPHABET.iter().position(|&a| a == b)? as u64;
        ms = (ms << 5) | v;
    }
    Some(ms)
}

/// The Message-ID threading indexes a message under: its own, or, when it has none, one derived
/// from what identifies a re-delivery of the same message (author, subject, body). Threading
/// writes the `message_ids` entry under this id and deleting a message must find it again, so
/// both call this.
pub fn thread_message_id(message_id: &str, from: &str, subject: &str, body_sha256: &str) -> String {
    if !message_id.is_empty() {
        return message_id.to_string();
    }
    let basis = format!("{from}|{subject}|{body_sha256}");
    format!(
        "{}@inbound.synthetic",
        &crate::util::sha256_hex(basis.as_bytes())[..32]
    )
}

/// True for strings that look like our queue ids (26 Crockford base32 characters).
pub fn is_queue_id(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sortable_and_unique() {
        let ids: Vec<String> = (0..10_000).map(|_| new_queue_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted);
        assert!(ids.iter().all(|i| is_queue_id(i)));
    }

    #[test]
    fn id_time_is_the_creation_time() {
        let before = now_ms();
        let id = new_queue_id();
        let at = id_time_ms(&id).expect("a queue id");
        assert!(
            at >= before && at <= now_ms(),
            "{at} not in [{before}, now]"
        );
        assert_eq!(id_time_ms("not an id"), None);
    }
}
