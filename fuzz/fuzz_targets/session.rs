//! Arbitrary bytes -> one SMTP session against a real store (`inbound::fuzzing::session`).
//! Fails on a panic, a hang, a malformed reply, a 250 for a message the store does not hold
//! intact, or replies that change with how the input was split into reads (except after
//! STARTTLS, where pre-handshake input is dropped on purpose).
#![no_main]

use std::sync::OnceLock;

use inbound::fuzzing::session::{normalize, Chunking, Harness};
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("inbound-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Harness::new(&dir).unwrap_or_else(|e| panic!("fuzz harness in {}: {e}", dir.display()))
    })
}

fuzz_target!(|input: &[u8]| {
    let h = harness();
    let greedy = h.run(input, Chunking::Greedy);
    if let Err(e) = h.check(&greedy) {
        panic!(
            "{e}\n--- transcript ---\n{}",
            String::from_utf8_lossy(&greedy)
        );
    }
    let varied = h.run(input, Chunking::Varied);
    if let Err(e) = h.check(&varied) {
        panic!(
            "{e}\n--- transcript ---\n{}",
            String::from_utf8_lossy(&varied)
        );
    }
    let starttls = input
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"STARTTLS"));
    if !starttls && normalize(&greedy) != normalize(&varied) {
        panic!(
            "replies depend on read splits\n--- greedy ---\n{}\n--- varied ---\n{}",
            String::from_utf8_lossy(&greedy),
            String::from_utf8_lossy(&varied)
        );
    }
});
