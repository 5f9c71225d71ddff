//! Replays the `message` fuzz target's corpus (fuzz/corpus/message/) and every .eml fixture of
//! the test suite through all content stages on stable Rust: none may panic, and each message
//! must be routed into exactly one conversation of the fuzz inbox.

use std::path::{Path, PathBuf};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

#[test]
fn message_stage_handles_the_corpus() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    files_under(&root.join("fuzz/corpus/message"), &mut files);
    let corpus = files.len();
    let mut fixtures = Vec::new();
    files_under(&root.join("tests/fixtures"), &mut fixtures);
    files.extend(
        fixtures
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "eml")),
    );
    assert!(corpus >= 5, "the message corpus has its seeds");
    for f in &files {
        let data = std::fs::read(f).expect("read corpus file");
        assert_eq!(
            inbound::fuzzing::message::message(&data),
            1,
            "{}",
            f.display()
        );
        // Truncations exercise half-read headers and MIME parts.
        for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
            inbound::fuzzing::message::message(&data[..cut]);
        }
    }
    println!(
        "message stage: {} inputs replayed ({corpus} from the fuzz corpus)",
        files.len()
    );
}
