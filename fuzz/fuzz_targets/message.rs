//! Arbitrary bytes as a received message through every content stage (header/auth parsing,
//! MIME parse, attribution, routing, threading). `cargo +nightly fuzz run message`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    inbound::fuzzing::message::message(data);
});
