//! Other people's SMTP clients against the real server: Python's `smtplib` (plain, STARTTLS,
//! SMTPUTF8) and `swaks` (STARTTLS with PIPELINING, and a body large enough for the spool path).
//! Each message they send must be stored byte for byte as they sent it. Both tools are required:
//! a missing one fails the test with what to install (.ci/run installs them), it never skips.
use crate::support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use inbound::store::MessageRecord;
use support::*;

/// Sends one message read from stdin, printing one JSON line with the final reply and the TLS
/// version. argv: host port mode(plain|starttls|utf8) mail_from rcpt.
const SMTPLIB_CLIENT: &str = r#"
import json, smtplib, ssl, sys
host, port, mode, sender, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
msg = sys.stdin.buffer.read()
s = smtplib.SMTP(host, port, local_hostname="py.example", timeout=30)
code, _ = s.ehlo()
assert code == 250, code
tls = None
if mode == "starttls":
    if not s.has_extn("starttls"):
        sys.exit("the server did not offer STARTTLS")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test server's certificate is self-signed
    s.starttls(context=ctx)
    s.ehlo()
    if s.has_extn("starttls"):
        sys.exit("STARTTLS still offered inside TLS")
    tls = s.sock.version()
opts = ["SMTPUTF8", "BODY=8BITMIME"] if mode == "utf8" else []
code, resp = s.mail(sender, opts)
assert code == 250, (code, resp)
code, resp = s.rcpt(rcpt)
assert code == 250, (code, resp)
code, resp = s.data(msg)
print(json.dumps({"code": code, "reply": resp.decode("utf-8", "replace"), "tls": tls}))
s.quit()
"#;

fn require(tool: &str, install: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{tool}` is not installed; this interoperability test needs it ({install}; .ci/run does this)"
    );
}

fn check_output(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn smtplib(srv: &TestServer, mode: &str, from: &str, to: &str, body: &[u8]) -> String {
    let (port, mode, from, to, body) = (
        srv.addr.port().to_string(),
        mode.to_string(),
        from.to_string(),
        to.to_string(),
        body.to_vec(),
    );
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .args(["-c", SMTPLIB_CLIENT, "127.0.0.1", &port, &mode, &from, &to])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(&body).expect("write message to python");
        }
        child.wait_with_output().expect("python3 output")
    })
    .await
    .unwrap();
    let stdout = check_output("python smtplib client", &out);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["code"], 250, "{v}");
    let reply = v["reply"].as_str().unwrap();
    let id = reply.split_whitespace().last().unwrap().to_string();
    if mode_is_tls(&v) {
        assert_eq!(v["tls"], "TLSv1.3", "{v}");
    }
    id
}

fn mode_is_tls(v: &serde_json::Value) -> bool {
    !v["tls"].is_null()
}

async fn swaks(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("swaks")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run swaks")
    })
    .await
    .unwrap();
    check_output("swaks", &out)
}

/// The queue id from a swaks transcript (`<~  250 2.0.0 Ok: queued as ID`).
fn swaks_queue_id(transcript: &str) -> String {
    transcript
        .lines()
        .find(|l| l.contains("queued as"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no queued reply in swaks output:\n{transcript}"))
        .to_string()
}

fn stored(srv: &TestServer, id: &str) -> (MessageRecord, Vec<u8>) {
    let rec = srv
        .ctx
        .store
        .get(id)
        .unwrap()
        .unwrap_or_else(|| panic!("no record for {id}"));
    let body = srv.ctx.store.body(&rec).unwrap();
    assert_eq!(rec.sha256, sha256(&body), "{id}: body matches its hash");
    (rec, body)
}

fn text_message(subject: &str, lines: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Interop <interop@example.com>\r\nTo: support@demo.inbound.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@interop.example>\r\n\r\n"
    )
    .into_bytes();
    for i in 0..lines {
        m.extend_from_slice(format!("line {i} of {subject}\r\n").as_bytes());
        if i % 10 == 0 {
            m.extend_from_slice(b".a line that starts with a dot\r\n..and two\r\n");
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn python_smtplib_plain_starttls_and_smtputf8() {
    require("python3", "apt-get install -y python3");
    let srv = TestServer::start().await;

    let plain = text_message("py-plain", 20);
    let id = smtplib(
        &srv,
        "plain",
        "alice@example.com",
        "support@demo.inbound.test",
        &plain,
    )
    .await;
    let (rec, body) = stored(&srv, &id);
    assert_eq!(body, plain, "smtplib plain: stored byte for byte");
    assert_eq!(rec.tls, None);
    assert_eq!(rec.helo, "py.example");
    assert_eq!(rec.subject, "py-plain");

    let secret = text_message("py-starttls", 3000);
    assert!(secret.len() > 64 * 1024, "large enough for a spool file");
    let id = smtplib(
        &srv,
        "starttls",
        "alice@example.com",
        "help+urgent@demo.inbound.test",
        &secret,
    )
    .await;
    let (rec, body) = stored(&srv, &id);
    assert_eq!(body, secret, "smtplib STARTTLS: stored byte for byte");
    assert_eq!(rec.tls.as_deref(), Some("TLSv1.3"));
    assert_eq!(rec.body_location, "spool");
    assert_eq!(rec.rcpt[0].inbox, "demo");
    assert_eq!(rec.rcpt[0].tag.as_deref(), Some("urgent"));
    assert!(
        rec.trace_headers.contains("with ESMTPS"),
        "{}",
        rec.trace_headers
    );

    let utf8 = "From: Jürgen <jürgen@example.com>\r\nTo: sales@acme.inbound.test\r\nSubject: Grüße aus Köln\r\n\r\nÄrger? Nein.\r\n"
        .as_bytes()
        .to_vec();
    let id = smtplib(
        &srv,
        "utf8",
        "jürgen@example.com",
        "sales@acme.inbound.test",
        &utf8,
    )
    .await;
    let (rec, body) = stored(&srv, &id);
    assert_eq!(body, utf8, "smtplib SMTPUTF8: stored byte for byte");
    assert!(rec.smtputf8);
    assert_eq!(rec.mail_from, "jürgen@example.com");
    assert_eq!(rec.body_type, "8BITMIME");
    assert!(
        rec.trace_headers.contains("with UTF8SMTP"),
        "{}",
        rec.trace_headers
    );
    srv.stop().await;
}

/// swaks ends the data it sends with one more CRLF than the file holds (when the file already
/// ends with one); either form is accepted, anything else is not.
fn assert_swaks_body(what: &str, stored: &[u8], sent: &[u8]) {
    let mut with_crlf = sent.to_vec();
    with_crlf.extend_from_slice(b"\r\n");
    assert!(
        stored == sent || stored == with_crlf.as_slice(),
        "{what}: stored body differs from the file swaks sent ({} vs {} bytes)",
        stored.len(),
        sent.len()
    );
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_starttls_pipelining_and_large_body() {
    require("swaks", "apt-get install -y swaks");
    let srv = TestServer::start().await;
    let files = TempDir::new("swaks");
    let server = srv.addr.to_string();

    let small = text_message("swaks-tls", 15);
    let path = write(files.path(), "small.eml", &small);
    let transcript = swaks(
        [
            "--server",
            &server,
            "--ehlo",
            "swaks.example",
            "--from",
            "bob@example.com",
            "--to",
            "support@demo.inbound.test",
            "--tls",
            "--pipeline",
            "--data",
            &format!("@{path}"),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(
        transcript.contains("250-PIPELINING") && transcript.contains("STARTTLS"),
        "{transcript}"
    );
    let id = swaks_queue_id(&transcript);
    let (rec, body) = stored(&srv, &id);
    assert_swaks_body("swaks --tls --pipeline", &body, &small);
    assert_eq!(rec.tls.as_deref(), Some("TLSv1.3"));
    assert_eq!(rec.helo, "swaks.example");
    assert_eq!(rec.mail_from, "bob@example.com");

    let large = text_message("swaks-large", 4000);
    assert!(large.len() > 64 * 1024);
    let path = write(files.path(), "large.eml", &large);
    let transcript = swaks(
        [
            "--server",
            &server,
            "--from",
            "bob@example.com",
            "--to",
            "sales@acme.inbound.test",
            "--data",
            &format!("@{path}"),
            "--suppress-data",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let id = swaks_queue_id(&transcript);
    let (rec, body) = stored(&srv, &id);
    assert_swaks_body("swaks large body", &body, &large);
    assert_eq!(rec.body_location, "spool");
    assert_eq!(rec.tls, None);

    // A refusal is reported to swaks as such (and nothing is stored).
    let before = srv.messages().len();
    let out = tokio::task::spawn_blocking({
        let server = server.clone();
        move || {
            Command::new("swaks")
                .args([
                    "--server",
                    &server,
                    "--from",
                    "bob@example.com",
                    "--to",
                    "nobody@elsewhere.example",
                ])
                .output()
                .expect("run swaks")
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "swaks should report the refusal");
    assert!(text.contains("550 5.7.1"), "{text}");
    assert_eq!(srv.messages().len(), before);
    srv.stop().await;
}
