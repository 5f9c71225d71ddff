//! The `inbound` command as an operator runs it: the real binary, real signals, a second process
//! reading the data directory. `messages` is checked both while the server runs (it must go
//! through the admin socket: sled lets only one process open the store, and the test proves the
//! store is locked at that moment) and after it stopped (it opens the store itself).
use crate::process;
use crate::support;

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use process::{config_text, free_port, inbound, ServerProcess};
use support::{message, sha256, Client, TempDir};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn check_config_prints_every_error_with_its_key_path() {
    let dir = TempDir::new("cfgerr");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[server]
hostname = "mx.example"
colour = "blue"

[limits]
command_timeout = "five minutes"
max_recipients = 0

[[listener]]
addr = "not an address"

[[listener]]
addr = "127.0.0.1:2525"
proxy_protocol = true

[[inbox]]
id = "a"
address = "support@acme.example"

[[inbox]]
id = "a"
address = "Support@ACME.example"

[bogus]
"#,
    )
    .unwrap();
    let out = inbound(&["check-config", &s(&bad)]);
    out.assert_fails_with("check-config on a bad file", "errors in configuration");
    for path in [
        "colour",
        "limits.command_timeout",
        "limits.max_recipients",
        "listener[0].addr",
        "listener[1].trusted_proxies",
        "inbox[1].id",
        "inbox[1].address",
        "bogus",
    ] {
        assert!(
            out.stderr.contains(path),
            "check-config should name {path}:\n{}",
            out.stderr
        );
    }
    assert!(out.stdout.is_empty(), "errors go to stderr");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        config_text(&dir.path().join("data"), "127.0.0.1:2525", ""),
    )
    .unwrap();
    let out = inbound(&["check-config", &s(&good)]);
    out.assert_ok("check-config on a valid file");
    assert!(out.stdout_text().contains("OK"), "{}", out.stdout_text());

    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, "[server\nhostname = 1\n").unwrap();
    inbound(&["check-config", &s(&syntax)]).assert_fails_with("a TOML syntax error", "TOML");

    let missing = dir.path().join("missing.toml");
    inbound(&["check-config", &s(&missing)]).assert_fails_with("a missing file", "missing.toml");
}

/// `messages list --json`: the API's message summaries (one vocabulary, #15).
fn list_json(data: &str) -> Vec<serde_json::Value> {
    let out = inbound(&["messages", "list", "--data-dir", data, "--json"]);
    out.assert_ok("messages list --json");
    serde_json::from_slice(&out.stdout).expect("messages list --json prints a JSON array")
}

/// `messages list/show` (plain, --json, --raw) and an unknown id, the same wherever they are
/// answered from.
fn check_messages_cli(data: &str, expected: &[(String, Vec<u8>)], when: &str) {
    let records = list_json(data);
    let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    // Newest first by default.
    let want: Vec<&str> = expected.iter().rev().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, want, "{when}: messages list --json");

    let table = inbound(&["messages", "list", "--data-dir", data]);
    table.assert_ok("messages list");
    let text = table.stdout_text();
    assert!(text.starts_with("QUEUE_ID"), "{when}: {text}");
    assert!(
        text.contains(&format!("{} messages", expected.len())),
        "{when}: {text}"
    );
    for (id, body) in expected {
        assert!(
            text.contains(id.as_str()),
            "{when}: {id} missing from\n{text}"
        );
        let shown = inbound(&["messages", "show", id, "--data-dir", data]);
        shown.assert_ok("messages show");
        let shown = shown.stdout_text();
        assert!(
            shown.contains(&format!("queue id:    {id}")) && shown.contains(&sha256(body)),
            "{when}: {shown}"
        );

        let json = inbound(&["messages", "show", id, "--data-dir", data, "--json"]);
        json.assert_ok("messages show --json");
        let rec: serde_json::Value = serde_json::from_slice(&json.stdout).expect("a JSON detail");
        assert_eq!(rec["id"], id.as_str());
        assert_eq!(rec["sha256"], sha256(body), "{when}");
        // The content is read from the stored message, as the API reads it.
        assert!(rec["headers"].is_array(), "{when}: {rec}");

        let raw = inbound(&["messages", "show", id, "--data-dir", data, "--raw"]);
        raw.assert_ok("messages show --raw");
        assert!(raw.stdout.starts_with(b"Received: "), "{when}: trace first");
        assert!(
            raw.stdout.ends_with(body) && raw.stdout.len() > body.len(),
            "{when}: --raw is the trace header fields then the body as sent"
        );
    }

    for bad in ["01ARZ3NDEKTSV4RRFFQ69G5FAV", "no-such-id"] {
        inbound(&["messages", "show", bad, "--data-dir", data]).assert_fails_with(
            &format!("{when}: messages show {bad}"),
            &format!("no message with queue id {bad}"),
        );
        inbound(&["messages", "show", bad, "--data-dir", data, "--raw"]).assert_fails_with(
            &format!("{when}: messages show {bad} --raw"),
            "no message with queue id",
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_overrides_messages_through_socket_and_store_and_sigterm() {
    let root = TempDir::new("cli");
    let data = root.path().join("d");
    let configured_data = root.path().join("configured");
    let configured_port = free_port();
    let config = root.path().join("inbound.toml");
    std::fs::write(
        &config,
        config_text(
            &configured_data,
            &format!("127.0.0.1:{configured_port}"),
            "",
        ),
    )
    .unwrap();

    // --listen and --data-dir replace the config's listener and data directory.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut srv = ServerProcess::spawn(
        &[
            "--config",
            &s(&config),
            "--listen",
            &listen,
            "--data-dir",
            &s(&data),
        ],
        listen.parse().unwrap(),
        &root.path().join("server.log"),
    );
    srv.wait_ready();
    assert!(
        TcpStream::connect(("127.0.0.1", configured_port)).is_err(),
        "the configured listener should be replaced by --listen"
    );
    assert!(
        !configured_data.exists(),
        "the configured data_dir should be replaced by --data-dir"
    );
    assert!(
        data.join("admin.sock").exists(),
        "the admin socket follows --data-dir"
    );

    // Two messages: one inline, one spooled (> 64 KiB).
    let mut expected = Vec::new();
    let mut c = Client::connect(srv.addr).await;
    c.hello().await;
    let small = message("cli-small");
    let mut large = message("cli-large");
    while large.len() < 100 * 1024 {
        large.extend_from_slice(b"a longer body line for the spool file\r\n");
    }
    for body in [small, large] {
        let r = c
            .send_message("alice@example.com", &["support@demo.inbound.test"], &body)
            .await;
        assert_eq!(r.code, 250, "{r:?}");
        expected.push((r.last_word(), body));
    }
    c.cmd("QUIT", "221").await;

    // While the server holds the store, only its admin socket can answer.
    let cfg = inbound::config::Config::embedded_default();
    assert!(
        matches!(
            inbound::store::Store::open(&data, &cfg.store),
            Err(inbound::store::StoreError::Locked)
        ),
        "a running server must hold the store lock"
    );
    let data_arg = s(&data);
    check_messages_cli(&data_arg, &expected, "server running");

    // Garbage on the admin socket gets an error answer, and the server keeps answering.
    for garbage in [
        &b"not json\n"[..],
        b"{\"op\":\"messages_show\"}\n",
        &[0xff; 70_000],
    ] {
        use std::io::{Read, Write};
        let mut sock = std::os::unix::net::UnixStream::connect(data.join("admin.sock"))
            .expect("connect to the admin socket");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = sock.write_all(garbage);
        let _ = sock.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = sock.read_to_string(&mut answer);
        assert!(
            answer.contains("\"ok\":false") && answer.contains("bad request"),
            "admin socket answer to {:?}: {answer:?}",
            String::from_utf8_lossy(&garbage[..garbage.len().min(40)])
        );
    }
    assert_eq!(list_json(&data_arg).len(), expected.len());

    // A second server on the same data directory refuses to start, clearly, and the first one
    // keeps serving.
    let port2 = free_port();
    let listen2 = format!("127.0.0.1:{port2}");
    let mut second = ServerProcess::spawn(
        &[
            "--config",
            &s(&config),
            "--listen",
            &listen2,
            "--data-dir",
            &data_arg,
        ],
        listen2.parse().unwrap(),
        &root.path().join("second.log"),
    );
    let (status, _) = second.wait_exit(Duration::from_secs(20), std::time::Instant::now());
    assert!(
        !status.success(),
        "a second server on a locked data dir must fail"
    );
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(log.contains("in use by a running server"), "{log}");
    let mut c = Client::connect(srv.addr).await;
    c.hello().await;

    // SIGTERM: an idle session is told 421 and closed; a message in the middle of its data may
    // finish and is acknowledged; then the process exits 0 within the shutdown deadline (5s).
    let mut sending = Client::connect(srv.addr).await;
    sending.hello().await;
    sending.cmd("MAIL FROM:<late@example.com>", "250").await;
    sending
        .cmd("RCPT TO:<support@demo.inbound.test>", "250")
        .await;
    sending.cmd("DATA", "354").await;
    let late = message("cli-late");
    let (head, tail) = late.split_at(40);
    sending.send_raw(head).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let sent = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &srv.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    c.expect("421 4.3.0").await;
    c.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    sending.send_raw(tail).await;
    sending.send_raw(b".\r\n").await;
    let r = sending.expect("250").await;
    expected.push((r.last_word(), late));
    let (status, took) = srv.wait_exit(Duration::from_secs(15), sent);
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        srv.log_text()
    );
    assert!(
        took < Duration::from_secs(5) + Duration::from_secs(2),
        "shutdown took {took:?}, past the 5s deadline"
    );
    assert!(
        !data.join("admin.sock").exists(),
        "the admin socket is removed at shutdown"
    );

    // Stopped: the CLI opens the store itself and gives the same answers.
    check_messages_cli(&data_arg, &expected, "server stopped");
}

#[test]
fn messages_on_a_directory_without_a_store_is_a_clear_error() {
    let dir = TempDir::new("nostore");
    let empty = dir.path().join("empty");
    inbound(&["messages", "list", "--data-dir", &s(&empty)])
        .assert_fails_with("messages list without a store", "no store in");
    inbound(&[
        "messages",
        "show",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "--data-dir",
        &s(&empty),
    ])
    .assert_fails_with("messages show without a store", "no store in");
}

#[test]
fn serve_refuses_a_bad_config_or_a_taken_port_with_a_clear_error() {
    let dir = TempDir::new("badserve");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\ndata_dir = \"/tmp/x\"\n[[listener]]\naddr = \"nowhere\"\n[[inbox]]\nid = \"a\"\naddress = \"a@b.example\"\n",
    )
    .unwrap();
    inbound(&["serve", "--config", &s(&bad)])
        .assert_fails_with("serve with an invalid config", "listener[0].addr");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        config_text(&dir.path().join("data"), "127.0.0.1:0", ""),
    )
    .unwrap();
    inbound(&["serve", "--config", &s(&good), "--listen", &addr])
        .assert_fails_with("serve on a port in use", "cannot listen on");
}

/// `inbound serve --listen ADDR --data-dir DIR` with no config file: the embedded default config
/// with both overridden. Only EHLO/QUIT is exchanged: the embedded config checks senders against
/// the system resolver, and tests send no traffic off the machine.
#[tokio::test(flavor = "multi_thread")]
async fn serve_without_config_uses_the_overrides() {
    let root = TempDir::new("cliemb");
    let data = root.path().join("d");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut srv = ServerProcess::spawn(
        &[
            "--listen",
            &listen,
            "--data-dir",
            &s(&data),
            "--api-listen",
            "127.0.0.1:0",
        ],
        listen.parse().unwrap(),
        &root.path().join("server.log"),
    );
    srv.wait_ready();
    let mut c = Client::connect(srv.addr).await;
    let ehlo = c.hello().await;
    assert!(
        ehlo.lines[0].starts_with("mx.demo.inbound.test"),
        "{ehlo:?}"
    );
    c.cmd("QUIT", "221").await;
    assert!(data.join("db").exists() && data.join("admin.sock").exists());
    let (status, took) = srv.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", srv.log_text());
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert!(list_json(&s(&data)).is_empty());
}
