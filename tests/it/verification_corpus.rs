//! The verification corpus: `tests/fixtures/verification/*.eml` (CRLF, one case each, named by
//! behaviour) against `expected.json` beside them (its README says what each field means). Every
//! fixture must match exactly: provider, code, link and address for a confirmation, `None` for a
//! negative. The run prints a summary per provider, language and body format. Also here: the
//! fixtures mutated and random bytes, showing `recognise` never panics; the scan limits on a huge
//! body. What recognising costs is measured by the criterion bench (`cargo bench --bench pipeline
//! -- verification`), not here: a test cannot time reliably on a shared machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use inbound::pipeline::verification::{recognise, Verification};
use mail_parser::MessageParser;
use serde::Deserialize;

/// One entry of expected.json.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// The envelope sender passed to `recognise`.
    mail_from: String,
    /// The inbox's connected domain passed to `recognise`, if any.
    provider_hint: Option<String>,
    lang: String,
    /// `text`, `html` (HTML only) or `multipart` (both).
    format: String,
    /// The exact result; `null` for a negative.
    expect: Option<Verification>,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verification")
}

fn load() -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, Expect>) {
    let dir = fixture_dir();
    let mut fixtures = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("fixture dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "eml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            fixtures.insert(name, std::fs::read(&path).expect("read fixture"));
        }
    }
    let json = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    let expected: BTreeMap<String, Expect> =
        serde_json::from_str(&json).expect("expected.json parses");
    (fixtures, expected)
}

fn run(raw: &[u8], want: &Expect) -> Option<Verification> {
    let message = MessageParser::new().parse(raw)?;
    recognise(&message, &want.mail_from, want.provider_hint.as_deref())
}

#[test]
fn every_fixture_matches_expected_json() {
    let (fixtures, expected) = load();
    let unlisted: Vec<&String> = fixtures
        .keys()
        .filter(|n| !expected.contains_key(*n))
        .collect();
    let missing: Vec<&String> = expected
        .keys()
        .filter(|n| !fixtures.contains_key(*n))
        .collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "fixtures without an entry: {unlisted:?}; entries without a fixture: {missing:?}"
    );
    for (name, raw) in &fixtures {
        assert!(
            raw.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r') && raw.first() != Some(&b'\n'),
            "{name}: every line ends in CRLF"
        );
    }

    // (group, key) -> (passed, total)
    let mut tally: BTreeMap<(&str, String), (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for (name, raw) in &fixtures {
        let want = &expected[name];
        let got = run(raw, want);
        let ok = got == want.expect;
        if !ok {
            failures.push(format!(
                "{name}:\n    got  {got:?}\n    want {:?}",
                want.expect
            ));
        }
        let provider = want
            .expect
            .as_ref()
            .map_or("(negative)".to_string(), |v| v.provider.clone());
        for key in [
            ("provider", provider),
            ("lang", want.lang.clone()),
            ("format", want.format.clone()),
        ] {
            let entry = tally.entry(key).or_default();
            entry.0 += usize::from(ok);
            entry.1 += 1;
        }
    }
    let positives = expected.values().filter(|e| e.expect.is_some()).count();
    println!(
        "verification corpus: {} fixtures ({} confirmations, {} negatives), {} failed",
        fixtures.len(),
        positives,
        fixtures.len() - positives,
        failures.len()
    );
    for ((group, key), (passed, total)) in &tally {
        println!("  {group:<8} {key:<14} {passed}/{total}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

/// The corpus covers what the stage promises: every provider, several languages, HTML-only
/// bodies, and at least six negatives.
#[test]
fn corpus_covers_providers_languages_and_negatives() {
    let (_, expected) = load();
    let providers: Vec<&str> = expected
        .values()
        .filter_map(|e| e.expect.as_ref().map(|v| v.provider.as_str()))
        .collect();
    for p in [
        "gmail",
        "google_groups",
        "outlook",
        "microsoft365",
        "yahoo",
        "zoho",
        "fastmail",
        "icloud",
        "generic",
    ] {
        assert!(providers.contains(&p), "no fixture for {p}");
    }
    let gmail_langs: Vec<&str> = expected
        .iter()
        .filter(|(n, _)| n.starts_with("gmail_forwarding_confirmation_"))
        .map(|(_, e)| e.lang.as_str())
        .collect();
    for lang in ["en", "de", "fr", "es"] {
        assert!(gmail_langs.contains(&lang), "no Gmail fixture in {lang}");
    }
    let html_only = expected
        .values()
        .filter(|e| e.format == "html" && e.expect.is_some())
        .count();
    assert!(html_only >= 3, "{html_only} HTML-only confirmations");
    let negatives = expected.values().filter(|e| e.expect.is_none()).count();
    assert!(negatives >= 6, "{negatives} negatives");
}

/// xorshift64: enough randomness to mutate fixtures, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the parsers: markup, entities, separators, digits, multi-byte UTF-8.
const INTERESTING: &[&[u8]] = &[
    b"<",
    b">",
    b"&",
    b"&#",
    b";",
    b"@",
    b":",
    b"\r\n",
    b"\n",
    b"\"",
    b"'",
    b"(#",
    b")",
    b"https://",
    b"<a href=",
    b"</a>",
    b"<!--",
    b"<style>",
    b"<blockquote>",
    b"code: ",
    b"123456",
    b"*",
    b"\xc3\xa9",
    b"\xe2\x80\x8b",
    b"\xef\xbc\x91",
    b"\xff",
    b"\x00",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let pos = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let end = (pos + rng.below(64)).min(out.len());
                out.drain(pos.min(end)..end);
            }
            1 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(pos..pos, piece.iter().copied());
            }
            2 if !out.is_empty() => {
                let i = pos.min(out.len() - 1);
                out[i] = rng.next() as u8;
            }
            3 if !out.is_empty() => {
                // Duplicate a slice: long lines, repeated tags.
                let start = pos.min(out.len() - 1);
                let end = (start + rng.below(256)).min(out.len());
                let copy = out[start..end].to_vec();
                out.splice(start..start, copy);
            }
            _ => out.truncate(pos),
        }
    }
    out
}

#[test]
fn never_panics_on_mutated_fixtures_or_random_bytes() {
    let (fixtures, _) = load();
    let seeds: Vec<&Vec<u8>> = fixtures.values().collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let hints = [None, Some("acme.com"), Some("@"), Some("")];
    let mut recognised = 0usize;
    let rounds = 4000;
    for round in 0..rounds {
        let input = if round % 8 == 7 {
            let len = rng.below(2048);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let seed = seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        let Some(message) = MessageParser::new().parse(&input) else {
            continue;
        };
        let mail_from = ["", "forwarding-noreply@google.com", "@", "x@"][rng.below(4)];
        let hint = hints[rng.below(hints.len())];
        if recognise(&message, mail_from, hint).is_some() {
            recognised += 1;
        }
    }
    println!("never-panics: {rounds} inputs, {recognised} still recognised");
}

/// A body far past the scan limits is read only up to them, and quickly; the same body cut
/// short is recognised, so the limit (not the content) is what hides the code.
#[test]
fn huge_bodies_are_bounded() {
    let build = |repeats: usize| {
        let mut raw = b"From: Gmail Team <forwarding-noreply@google.com>\r\nTo: support@acme.inbound.example\r\nSubject: Gmail Forwarding Confirmation\r\nContent-Type: text/html\r\n\r\n".to_vec();
        for _ in 0..repeats {
            raw.extend_from_slice(b"<td>&amp; code: 1</td><a href='https://x'>");
        }
        raw.extend_from_slice(b"<p>Confirmation code: 123456789</p>\r\n");
        raw
    };
    let small = build(100);
    let message = MessageParser::new().parse(&small).expect("parses");
    let got = recognise(&message, "forwarding-noreply@google.com", None);
    assert_eq!(got.and_then(|v| v.code).as_deref(), Some("123456789"));

    let huge = build(200_000);
    let message = MessageParser::new().parse(&huge).expect("parses");
    let got = recognise(&message, "forwarding-noreply@google.com", None);
    assert_eq!(got, None, "the code past the limit is not read");
}
