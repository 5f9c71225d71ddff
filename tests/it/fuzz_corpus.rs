//! Replays every file of the fuzzer's corpus (fuzz/corpus/session/) through the real session state
//! machine on stable Rust, so the seeds — and any input the fuzzer found and saved there — stay
//! regression tests without cargo-fuzz or nightly.
//!
//! Each input runs with several read splits (all at once, byte by byte, 7 bytes, varied). Every
//! run must produce a well-formed transcript starting with 220 whose 250-acknowledged messages are
//! in the store intact (`Harness::check`). Replies may not depend on how the input was split
//! (PIPELINING buffers replies until the input is used up), except after STARTTLS, where bytes
//! read before the handshake are dropped by design. Named seeds also carry their own expectation.
use crate::support;

use std::path::PathBuf;

use inbound::fuzzing::session::{normalize, Chunking, Harness};
use support::TempDir;

const SPLITS: [Chunking; 4] = [
    Chunking::Greedy,
    Chunking::Fixed(1),
    Chunking::Fixed(7),
    Chunking::Varied,
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session")
}

/// Queue ids a seed must produce when read all at once: the number of 250 "queued" replies.
fn expected_queued(name: &str) -> Option<usize> {
    Some(match name {
        "normal_transaction" => 1,
        "pipelining_two_messages" => 2,
        "bdat_chunks" => 1,
        "bdat_without_mail" => 0,
        // One message whose body contains the would-be second one as text.
        "smuggling_lf_dot_lf" | "smuggling_cr_dot_cr" | "smuggling_lf_dot_crlf" => 1,
        "garbage" => 0,
        "long_command_line" => 0,
        "long_body_lines_spooled" => 1,
        // CVE-2011-0411: commands pipelined behind STARTTLS are discarded, not executed.
        "starttls_with_injection" | "starttls_then_transaction" => 0,
        "bad_sequence_and_errors" => 0,
        "smtputf8_and_params" => 1,
        "eof_in_data" => 0,
        "incomplete_command_lines" => 0,
        "regression_short_rcpt_line_swallowed_next" => 1,
        _ => return None,
    })
}

#[test]
fn every_corpus_input_gets_a_well_formed_answer() {
    let dir = TempDir::new("fuzzc");
    let harness = Harness::new(dir.path()).expect("harness opens a store");
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("fuzz/corpus/session exists")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 12,
        "the seed corpus has only {} files",
        files.len()
    );

    let mut failures = Vec::new();
    let mut named = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let input = std::fs::read(path).expect("read corpus file");
        let has_starttls = input
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"STARTTLS"));
        let mut first: Option<Vec<u8>> = None;
        for split in SPLITS {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                harness.run(&input, split)
            }));
            let output = match run {
                Ok(o) => o,
                Err(_) => {
                    failures.push(format!("{name} ({split:?}): the session panicked"));
                    continue;
                }
            };
            let transcript = String::from_utf8_lossy(&output);
            let summary = match harness.check(&output) {
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{name} ({split:?}): {e}\n{transcript}"));
                    continue;
                }
            };
            if split == Chunking::Greedy {
                if let Some(want) = expected_queued(&name) {
                    named += 1;
                    if summary.queued.len() != want {
                        failures.push(format!(
                            "{name}: expected {want} queued message(s), got {}\n{transcript}",
                            summary.queued.len()
                        ));
                    }
                }
                if name == "incomplete_command_lines" {
                    // Every line gets exactly one reply, at once: a short line such as
                    // `MAIL FROM` must neither wait for more input nor swallow the next line.
                    let lines = input.iter().filter(|&&b| b == b'\n').count();
                    let replies = output
                        .split(|&b| b == b'\n')
                        .filter(|l| l.get(3) == Some(&b' '))
                        .count();
                    if replies != lines + 1 {
                        failures.push(format!(
                            "{name}: {lines} command lines got {} replies (plus the greeting)\n{transcript}",
                            replies.saturating_sub(1)
                        ));
                    }
                }
                if name.starts_with("smuggling_") {
                    for id in &summary.queued {
                        let rec = harness.ctx().store.get(id).unwrap().unwrap();
                        let body = harness.ctx().store.body(&rec).unwrap();
                        if !String::from_utf8_lossy(&body).contains("admin@bank.example") {
                            failures.push(format!(
                                "{name}: the smuggled commands should be content of the one message"
                            ));
                        }
                    }
                }
            }
            match &first {
                None => first = Some(normalize(&output)),
                Some(f) if !has_starttls && *f != normalize(&output) => {
                    failures.push(format!(
                        "{name}: replies differ between read splits Greedy and {split:?}\n--- Greedy\n{}\n--- {split:?}\n{transcript}",
                        String::from_utf8_lossy(f)
                    ));
                }
                Some(_) => {}
            }
        }
    }
    assert!(named >= 14, "only {named} named seeds were found");
    assert!(
        failures.is_empty(),
        "{} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The harness check itself must be able to fail: a transcript with a queue id the store never
/// saw, a reply with an embedded bare LF, and one that stops mid multi-line reply are refused.
#[test]
fn the_transcript_check_rejects_bad_transcripts() {
    let dir = TempDir::new("fuzzk");
    let harness = Harness::new(dir.path()).expect("harness opens a store");
    let bad: [&[u8]; 5] = [
        b"220 mx ESMTP\r\n250 2.0.0 Ok: queued as 01ARZ3NDEKTSV4RRFFQ69G5FAV\r\n",
        b"220 mx ESMTP\r\n500 5.5.2 injected\nline\r\n",
        b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n",
        b"554 go away\r\n",
        b"220 mx ESMTP\r\n999 what\r\n",
    ];
    for t in bad {
        assert!(
            harness.check(t).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(t)
        );
    }
    let good = harness.run(b"EHLO x\r\nQUIT\r\n", Chunking::Greedy);
    let summary = harness.check(&good).expect("a plain EHLO/QUIT transcript");
    assert_eq!(summary.lines.last().map(|l| l.0), Some(221));
}

/// Found by the fuzzer's read-split check (seed `regression_short_rcpt_line_swallowed_next`): a
/// command line the parser found incomplete, such as `MAIL FROM`, got no reply until the next
/// line arrived, and that next line was then swallowed. A client that waits for each reply hung.
#[tokio::test(flavor = "multi_thread")]
async fn regression_incomplete_command_line_is_answered_at_once() {
    let srv = support::TestServer::start().await;
    let mut c = srv.connect().await;
    c.timeout = std::time::Duration::from_secs(3);
    c.hello().await;
    c.cmd("MAIL FROM", "501 5.5.4").await;
    c.cmd("NOOP", "250").await;
    c.cmd("RCPT TO", "501 5.5.4").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL", "501 5.5.4").await;
    c.cmd("MAIL FROM:<alice@example.com>", "250").await;
    c.cmd("QUIT", "221").await;
    srv.stop().await;
}
