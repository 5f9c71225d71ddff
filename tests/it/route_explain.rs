//! `inbound route --explain`: the real binary, on message files, with and without a config.
use std::process::Command;

use crate::support;
use support::TempDir;

fn explain(args: &[&str], message: &[u8]) -> (i32, String, String) {
    let dir = TempDir::new("explain");
    let path = dir.path().join("m.eml");
    std::fs::write(&path, message).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inbound"))
        .arg("route")
        .args(args)
        .arg(&path)
        .output()
        .expect("run inbound");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MESSAGE: &[u8] = b"From: Dana Client <dana@client.example>\r\nTo: support@demo.inbound.test\r\nSubject: Invoice 42 is wrong\r\nMessage-ID: <e1@client.example>\r\n\r\nHello\r\n";

#[test]
fn json_on_the_embedded_config() {
    let (code, out, err) = explain(&["--explain", "--json"], MESSAGE);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["attribution"]["email"], "dana@client.example");
    assert_eq!(v["attribution"]["name"], "Dana Client");
    assert!(v["attribution"]["method"].is_string());
    assert_eq!(v["thread"]["decision"], "new");
    assert!(v["rule"].is_null(), "the demo inbox has no rules: {v}");
    assert!(v["assignment"]["assignee"].is_null());
    assert_eq!(v["ticket"]["pipeline"], "support");
    assert!(
        v.get("verification").is_some_and(|x| x.is_null()),
        "customer mail: verification null"
    );
}

#[test]
fn rules_from_a_config_file_and_envelope_options() {
    let dir = TempDir::new("explaincfg");
    let cfg = dir.path().join("inbound.toml");
    std::fs::write(
        &cfg,
        r#"
[[listener]]
addr = "127.0.0.1:0"
[[user]]
id = "alice"
[[inbox]]
id = "billing"
address = "billing@acme.inbound.test"
[[inbox.rule]]
name = "invoices"
match.subject = ["invoice"]
match.tag = ["vip"]
assign = { users = ["alice"] }
ticket = { priority = "high" }
"#,
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = explain(
        &[
            "--explain",
            "--json",
            "--config",
            cfg,
            "--rcpt",
            "billing+vip@acme.inbound.test",
            "--mail-from",
            "dana@client.example",
        ],
        MESSAGE,
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["inbox"], "billing");
    assert_eq!(v["rule"], "invoices");
    assert_eq!(v["assignment"]["assignee"], "alice");
    assert_eq!(v["ticket"]["priority"], "high");
    assert_eq!(v["ticket"]["owner"], "alice");
    // Without the tag the rule does not match.
    let (_, out, _) = explain(
        &[
            "--explain",
            "--json",
            "--config",
            cfg,
            "--rcpt",
            "billing@acme.inbound.test",
        ],
        MESSAGE,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["rule"].is_null());
    // Text output names the same decisions.
    let (code, out, _) = explain(
        &[
            "--explain",
            "--config",
            cfg,
            "--rcpt",
            "billing+vip@acme.inbound.test",
        ],
        MESSAGE,
    );
    assert_eq!(code, 0);
    assert!(out.contains("rule:         invoices"), "{out}");
    assert!(out.contains("alice"), "{out}");
}

#[test]
fn clear_errors() {
    let (code, _, err) = explain(
        &["--explain", "--rcpt", "someone@elsewhere.example"],
        MESSAGE,
    );
    assert_ne!(code, 0);
    assert!(err.contains("not a hosted address"), "{err}");
    let (code, _, err) = explain(&["--json"], MESSAGE);
    assert_ne!(code, 0);
    assert!(err.contains("--explain"), "{err}");
}

/// Issue #14: the layout that decided a manual forward shows, in JSON and in text.
#[test]
fn the_forward_layout_that_matched_is_shown() {
    let message = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/attribution/yahoo_en_plain_one_line.eml"),
    )
    .expect("fixture");
    let (code, out, err) = explain(&["--explain", "--json"], &message);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["attribution"]["email"], "jane.doe@client-corp.example");
    assert_eq!(v["attribution"]["method"], "manual_forward:yahoo");
    let (code, out, _) = explain(&["--explain"], &message);
    assert_eq!(code, 0);
    assert!(out.contains("manual_forward:yahoo"), "{out}");
}
