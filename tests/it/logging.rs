//! What an operator greps for (issue #16): one line per accepted message and one per rejection,
//! with queue id, client, HELO, envelope sender, every recipient, Message-ID, size, verdict and
//! inbox/conversation or reply code; a DNS outage that defers mail at WARN; a bad INBOUND_LOG
//! refused at start. Read from the log of the real binary.

use std::path::Path;
use std::time::Duration;

use crate::process::{free_port, ServerProcess};
use crate::support::dns::{Mode, TestDns};
use crate::support::{Client, ConfigBuilder, TempDir};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The log lines that contain every needle.
fn lines_with(log: &str, needles: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn start(dir: &TempDir, config: String) -> ServerProcess {
    let file = dir.path().join("inbound.toml");
    std::fs::write(&file, config).unwrap();
    ServerProcess::start(&file, free_port(), &dir.path().join("server.log"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_line_per_accepted_message_and_per_rejection_with_every_field() {
    let dir = TempDir::new("logacc");
    let mut srv = start(
        &dir,
        ConfigBuilder::child_process(&dir.path().join("data"), "127.0.0.1:0").toml(),
    );
    let mut c = Client::connect(srv.addr).await;
    c.expect("220").await;
    c.cmd("EHLO client.log.example", "250").await;
    c.cmd("MAIL FROM:<alice@sender.example>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("RCPT TO:<nobody@demo.inbound.test>", "550 5.1.1")
        .await;
    c.cmd("RCPT TO:<help@demo.inbound.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(
        b"From: Alice <alice@sender.example>\r\nTo: support@demo.inbound.test\r\n\
          Subject: logged\r\nMessage-ID: <log-line-1@sender.example>\r\n\r\nhello\r\n.\r\n",
    )
    .await;
    let queued = c.expect("250").await.text();
    let queue_id = queued.rsplit(' ').next().unwrap().to_string();
    // A message refused at MAIL (declared too big) gets its reject line too.
    c.cmd(
        "MAIL FROM:<bob@sender.example> SIZE=99999999999",
        "552 5.3.4",
    )
    .await;
    c.cmd("QUIT", "221").await;
    // Let the server write its lines before reading the file.
    let (status, _) = srv.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", srv.log_text());
    let log = std::fs::read_to_string(&srv.log).unwrap();

    let accepted = lines_with(&log, &[" accepted", &format!("queue_id={queue_id}")]);
    assert_eq!(accepted.len(), 1, "exactly one accept line:\n{log}");
    let line = &accepted[0];
    for field in [
        "client=[127.0.0.1]:",
        "helo=client.log.example",
        "from=<alice@sender.example>",
        "to=<support@demo.inbound.test>,<help@demo.inbound.test>",
        "message_id=log-line-1@sender.example",
        "size=",
        "auth=",
        "inbox=demo",
        "conversation=",
        "code=250",
        "INFO",
    ] {
        assert!(
            line.contains(field),
            "{field:?} missing from the accept line:\n{line}"
        );
    }

    let rejected = lines_with(&log, &[" reject", "to=<nobody@demo.inbound.test>"]);
    assert_eq!(rejected.len(), 1, "exactly one reject line:\n{log}");
    let line = &rejected[0];
    for field in [
        "stage=\"rcpt\"",
        "client=[127.0.0.1]:",
        "helo=client.log.example",
        "from=<alice@sender.example>",
        "code=550",
        "status=\"5.1.1\"",
        "INFO",
    ] {
        assert!(
            line.contains(field),
            "{field:?} missing from the reject line:\n{line}"
        );
    }
    let at_mail = lines_with(&log, &[" reject", "from=<bob@sender.example>"]);
    assert_eq!(at_mail.len(), 1, "one reject line at MAIL:\n{log}");
    for field in ["stage=\"mail\"", "helo=client.log.example", "code=552"] {
        assert!(at_mail[0].contains(field), "{field:?}:\n{}", at_mail[0]);
    }
}

/// With the nameservers down, a checked message is deferred (451 4.7.0) and the line that says
/// so is a WARN: an operator watching WARN and above sees mail being deferred.
#[tokio::test(flavor = "multi_thread")]
async fn a_dns_outage_that_defers_mail_is_logged_at_warn_with_the_message() {
    let dns = TestDns::start().await;
    dns.set_mode(Mode::Down);
    let dir = TempDir::new("logdns");
    let config = ConfigBuilder::child_process(&dir.path().join("data"), "127.0.0.1:0")
        .resolver(dns.addr())
        .set("dns", "timeout = \"500ms\"")
        // Loopback is checked like any client.
        .set("auth", "trusted_networks = []")
        .toml();
    let mut srv = start(&dir, config);
    let mut c = Client::connect(srv.addr).await;
    c.expect("220").await;
    c.cmd("EHLO mail.acme.example", "250").await;
    c.cmd("MAIL FROM:<carol@acme.example>", "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(
        b"From: carol@acme.example\r\nTo: support@demo.inbound.test\r\nSubject: dns\r\n\
          Message-ID: <dns-down-1@acme.example>\r\n\r\nhi\r\n.\r\n",
    )
    .await;
    c.expect("451 4.7.0").await;
    c.cmd("QUIT", "221").await;
    let (status, _) = srv.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", srv.log_text());
    let log = std::fs::read_to_string(&srv.log).unwrap();
    let deferred = lines_with(&log, &[" reject", "code=451"]);
    assert_eq!(deferred.len(), 1, "one line for the deferral:\n{log}");
    let line = &deferred[0];
    for field in [
        "WARN",
        "status=\"4.7.0\"",
        "stage=\"data\"",
        "from=<carol@acme.example>",
        "to=<support@demo.inbound.test>",
        "message_id=dns-down-1@acme.example",
        "queue_id=",
        "helo=mail.acme.example",
    ] {
        assert!(
            line.contains(field),
            "{field:?} missing from the deferral line:\n{line}"
        );
    }
    assert!(lines_with(&log, &[" accepted"]).is_empty(), "{log}");
}

#[test]
fn an_invalid_inbound_log_filter_is_an_error_at_start() {
    let dir = TempDir::new("logenv");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inbound"))
        .args([
            "serve",
            "--data-dir",
            &s(&dir.path().join("d")),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("INBOUND_LOG", "inbound=loud")
        .output()
        .expect("run inbound");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("INBOUND_LOG=\"inbound=loud\" is not a valid log filter"),
        "{stderr}"
    );
    assert!(!dir.path().join("d").exists(), "nothing started: {stderr}");
}
