//! The operator's commands (issue #16) as transcripts against the real binary and a running
//! server: conversations assign/close/reopen, outbox retry/drop, quarantine list/release/delete,
//! config show with secrets masked, the config found without flags, --version, generate.

use std::path::Path;
use std::time::Duration;

use crate::process::{bin, config_text, free_port, inbound, ServerProcess};
use crate::support::{message, Client, TempDir};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A webhook to a closed loopback port keeps its item in the outbox (retried, never delivered).
const EXTRA: &str = r#"
[[user]]
id = "alice"

[[webhook]]
id = "app"
url = "http://127.0.0.1:9/hook"
secret = "webhook-secret-that-must-not-print"
timeout = "1s"
"#;

fn run(args: &[&str], what: &str) -> String {
    inbound(args).assert_ok(what).stdout_text()
}

#[tokio::test(flavor = "multi_thread")]
async fn conversations_outbox_and_quarantine_actions_through_the_running_server() {
    let root = TempDir::new("opcli");
    let data = root.path().join("data");
    let config = root.path().join("inbound.toml");
    std::fs::write(&config, config_text(&data, "127.0.0.1:0", EXTRA)).unwrap();
    let cfg = s(&config);
    let mut srv = ServerProcess::start(&config, free_port(), &root.path().join("server.log"));
    let mut c = Client::connect(srv.addr).await;
    c.hello().await;
    c.send_message(
        "carol@customer.example",
        &["support@demo.inbound.test"],
        &message("needs an owner"),
    )
    .await;
    c.cmd("QUIT", "221").await;

    let list = run(&["conversations", "list", "-c", &cfg, "--json"], "list");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = list[0]["id"].as_str().expect("a conversation").to_string();

    let out = run(
        &[
            "conversations",
            "assign",
            &id,
            "--user",
            "alice",
            "-c",
            &cfg,
        ],
        "assign",
    );
    assert_eq!(out.trim(), format!("{id}: open (assignee alice)"));
    inbound(&[
        "conversations",
        "assign",
        &id,
        "--user",
        "nobody",
        "-c",
        &cfg,
    ])
    .assert_fails_with("assign to an unknown user", "no user \"nobody\"");
    let out = run(&["conversations", "close", &id, "-c", &cfg], "close");
    assert_eq!(out.trim(), format!("{id}: closed (assignee alice)"));
    let out = run(&["conversations", "reopen", &id, "-c", &cfg], "reopen");
    assert_eq!(out.trim(), format!("{id}: open (assignee alice)"));
    let out = run(&["conversations", "unassign", &id, "-c", &cfg], "unassign");
    assert_eq!(out.trim(), format!("{id}: open (assignee none)"));
    inbound(&[
        "conversations",
        "reopen",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "-c",
        &cfg,
    ])
    .assert_fails_with("reopen an unknown conversation", "no conversation");

    // The webhook cannot be delivered: its items wait in the outbox.
    let items = run(&["outbox", "-c", &cfg, "--json"], "outbox list");
    let items: Vec<serde_json::Value> = serde_json::from_str(&items).unwrap();
    assert!(!items.is_empty(), "webhook items wait in the outbox");
    let first = items[0]["id"].as_str().unwrap().to_string();
    let out = run(&["outbox", "retry", &first, "-c", &cfg], "outbox retry");
    assert!(out.starts_with(&format!("{first}: due now (")), "{out}");
    for item in &items {
        let id = item["id"].as_str().unwrap();
        let out = run(&["outbox", "drop", id, "-c", &cfg], "outbox drop");
        assert!(out.starts_with(&format!("{id}: dropped (")), "{out}");
    }
    let out = run(&["outbox", "-c", &cfg], "outbox list after drop");
    assert!(out.contains("(the outbox is empty)"), "{out}");
    inbound(&["outbox", "drop", &first, "-c", &cfg])
        .assert_fails_with("drop a dropped item", "no outbox item");

    // Nothing is quarantined (loopback is trusted): the list says so and actions refuse.
    let out = run(&["quarantine", "list", "-c", &cfg], "quarantine list");
    assert!(out.contains("0 quarantined messages"), "{out}");
    let accepted = run(&["messages", "list", "-c", &cfg, "--json"], "messages");
    let accepted: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    let queue_id = accepted[0]["id"].as_str().unwrap();
    inbound(&["quarantine", "release", queue_id, "-c", &cfg]).assert_fails_with(
        "release a message that is not quarantined",
        "not quarantined",
    );
    inbound(&["quarantine", "delete", queue_id, "-c", &cfg]).assert_fails_with(
        "delete a message that is not quarantined",
        "not quarantined",
    );

    // Lists: newest first, --oldest-first, filters by inbox, age and quarantine.
    let mut c = Client::connect(srv.addr).await;
    c.hello().await;
    c.send_message(
        "dave@customer.example",
        &["sales@acme.inbound.test"],
        &message("a quote"),
    )
    .await;
    c.cmd("QUIT", "221").await;
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["messages", "list", "-c", cfg.as_str(), "--json"];
        all.extend_from_slice(args);
        let out = run(&all, "messages list");
        let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        v.iter()
            .map(|r| r["subject"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&[]), ["a quote", "needs an owner"]);
    assert_eq!(ids(&["--oldest-first"]), ["needs an owner", "a quote"]);
    assert_eq!(ids(&["--inbox", "sales"]), ["a quote"]);
    assert_eq!(
        ids(&["--inbox", "demo", "--since", "1h"]),
        ["needs an owner"]
    );
    assert_eq!(ids(&["--limit", "1"]), ["a quote"]);
    assert!(ids(&["--quarantined"]).is_empty());
    inbound(&["messages", "list", "-c", &cfg, "--since", "soon"])
        .assert_fails_with("a bad --since", "not a duration");

    let (status, _) = srv.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", srv.log_text());
}

#[test]
fn config_show_prints_the_effective_config_with_secrets_masked_and_is_found_through_inbound_config()
{
    let root = TempDir::new("cfgshow");
    let config = root.path().join("inbound.toml");
    std::fs::write(
        &config,
        config_text(&root.path().join("data"), "127.0.0.1:0", EXTRA),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["config", "show"])
        .env("INBOUND_CONFIG", &config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("mx.proc.test"),
        "the file named by INBOUND_CONFIG: {text}"
    );
    assert!(text.contains("secret: \"********\""), "{text}");
    assert!(
        !text.contains("webhook-secret-that-must-not-print"),
        "{text}"
    );
    // Defaults are filled in: the compiled config, not the file.
    assert!(text.contains("max_message_bytes"), "{text}");

    // Without flags or INBOUND_CONFIG (and no /etc/inbound here): the embedded demo.
    if !Path::new("/etc/inbound/inbound.toml").exists() {
        let out = std::process::Command::new(bin())
            .args(["config", "show"])
            .env_remove("INBOUND_CONFIG")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("mx.demo.inbound.test"));
    }
}

#[test]
fn inboxes_on_a_data_dir_where_no_server_ran_says_so() {
    let root = TempDir::new("noserver");
    let out = inbound(&[
        "inboxes",
        "list",
        "--data-dir",
        &s(&root.path().join("never")),
    ]);
    out.assert_ok("inboxes list without a store");
    assert!(out.stderr.contains("no store in"), "{}", out.stderr);
    assert!(
        out.stderr.contains("showing the configured inboxes only"),
        "{}",
        out.stderr
    );
}

#[test]
fn version_names_the_commit_and_generate_writes_man_pages_and_completions() {
    let v = run(&["--version"], "--version");
    // "inbound 0.1.0 (<commit or unknown>)"
    assert!(
        v.starts_with("inbound ") && v.contains(" (") && v.trim_end().ends_with(')'),
        "{v}"
    );
    let root = TempDir::new("gen");
    run(
        &["generate", "man", &s(&root.path().join("man"))],
        "generate man",
    );
    run(
        &["generate", "completions", &s(&root.path().join("c"))],
        "generate completions",
    );
    for f in [
        "man/inbound.1",
        "man/inbound-quarantine-release.1",
        "c/inbound.bash",
        "c/_inbound",
        "c/inbound.fish",
    ] {
        let p = root.path().join(f);
        assert!(
            std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false),
            "{f} written"
        );
    }
}

/// `conversations list` reads like `messages list`: newest first, `--oldest-first`, and filters
/// by status and inbox, through the running server.
#[tokio::test(flavor = "multi_thread")]
async fn conversations_list_is_newest_first_and_filters_by_status() {
    let root = TempDir::new("opconv");
    let data = root.path().join("data");
    let config = root.path().join("inbound.toml");
    std::fs::write(&config, config_text(&data, "127.0.0.1:0", EXTRA)).unwrap();
    let cfg = s(&config);
    let _srv = ServerProcess::start(&config, free_port(), &root.path().join("server.log"));
    let mut c = Client::connect(_srv.addr).await;
    c.hello().await;
    for subject in ["first", "second", "third"] {
        let r = c
            .send_message(
                &format!("{subject}@customer.example"),
                &["support@demo.inbound.test"],
                &message(subject),
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.cmd("QUIT", "221").await;
    let ids = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["conversations", "list", "-c", &cfg, "--json"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&run(&all, "list")).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["subject"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&[]), ["third", "second", "first"]);
    assert_eq!(ids(&["--oldest-first"]), ["first", "second", "third"]);
    let v: serde_json::Value = serde_json::from_str(&run(
        &["conversations", "list", "-c", &cfg, "--json"],
        "list",
    ))
    .unwrap();
    let second = v[1]["id"].as_str().unwrap().to_string();
    run(&["conversations", "close", &second, "-c", &cfg], "close");
    assert_eq!(ids(&["--status", "closed"]), ["second"]);
    assert_eq!(ids(&["--status", "open"]), ["third", "first"]);
    assert_eq!(ids(&["--inbox", "sales"]), Vec::<String>::new());
    assert_eq!(ids(&["--since", "1h", "--limit", "2"]), ["third", "second"]);
    inbound(&["conversations", "list", "-c", &cfg, "--status", "pending"])
        .assert_fails_with("an unknown status", "pending");
}
