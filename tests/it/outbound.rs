//! Outbound mail through a real SMTP relay on loopback (`support::sink::SmtpSink`): provider
//! confirmation notices to an inbox's admins, notices to away assignees, from-address
//! verification codes; with the relay down, refusing, or gone past the outbox lifetime; across
//! restarts; over STARTTLS with AUTH.
use crate::support;

use std::time::Duration;

use inbound::notify::OutboxItem;
use inbound::server::admin::{self, Request};
use support::sink::{dead_port, SmtpSink, SmtpSinkOptions};
use support::*;

const ADDRESS: &str = "support@acme.inbound.test";
const CODE: &str = "418297350";

fn relay_block(port: u16, extra: &str) -> String {
    format!(
        r#"
[relay]
host = "127.0.0.1"
port = {port}
security = "none"
from = "inbound@mx.test.example"
from_name = "inbound at ACME"
timeout = "3s"
{extra}
"#
    )
}

/// Two users and the acme inbox: its admins get the notices, every conversation goes to alice.
/// `relay` is the `[relay]` table, `outbox` lines for `[outbox]`, `extra` any other TOML.
fn config(data: &std::path::Path, relay: &str, outbox: &str, extra: &str) -> ConfigBuilder {
    let mut b = ConfigBuilder::new(data)
        .listener("127.0.0.1:0")
        .set("auth", "trusted_networks = [\"127.0.0.0/8\"]")
        .fast_outbox();
    for line in outbox.lines().filter(|l| !l.trim().is_empty()) {
        b = b.set("outbox", line);
    }
    b.inbox_toml(&format!(
        r#"
[[inbox]]
id = "acme"
name = "ACME Support"
address = "{ADDRESS}"
connected_address = "jane.doe@gmail.com"
admins = ["alice", "ops@team.example"]
from_address = "support@acme.example"

[[inbox.rule]]
name = "everyone to alice"
assign = {{ users = ["alice"] }}
"#
    ))
    .extra(relay)
    .extra(
        r#"
[[user]]
id = "alice"
email = "alice@team.example"

[[user]]
id = "bob"
email = "bob@team.example"
"#,
    )
    .extra(extra)
}

async fn start(dir: TempDir, config: &ConfigBuilder) -> TestServer {
    TestServer::start_config(dir, config.parse()).await
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel),
    )
    .unwrap()
}

async fn send(srv: &TestServer, from: &str, body: &[u8]) -> inbound::store::MessageRecord {
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c.send_message(from, &[ADDRESS], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    srv.ctx.store.get(&r.last_word()).unwrap().expect("record")
}

async fn send_confirmation(srv: &TestServer) {
    let body = fixture("verification/gmail_forwarding_confirmation_en.eml");
    let rec = send(srv, "forwarding-noreply@google.com", &body).await;
    assert_eq!(
        rec.verification.as_ref().unwrap().code.as_deref(),
        Some(CODE)
    );
}

fn outbox(srv: &TestServer) -> Vec<OutboxItem> {
    srv.ctx.store.outbox_items().unwrap()
}

async fn wait_outbox(
    srv: &TestServer,
    what: &str,
    f: impl Fn(&[OutboxItem]) -> bool,
) -> Vec<OutboxItem> {
    for _ in 0..400 {
        let items = outbox(srv);
        if f(&items) {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("outbox never reached: {what}; now {:?}", outbox(srv));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_confirmation_is_mailed_to_the_inbox_admins() {
    let sink = SmtpSink::start(SmtpSinkOptions::default()).await;
    let dir = TempDir::new("ob-notice");
    let text = config(dir.path(), &relay_block(sink.addr.port(), ""), "", "");
    let srv = start(dir, &text).await;
    send_confirmation(&srv).await;

    let got = sink.wait_for(1, Duration::from_secs(10)).await;
    let m = &got[0];
    assert_eq!(m.mail_from, "inbound@mx.test.example");
    assert_eq!(m.rcpt, vec!["alice@team.example", "ops@team.example"]);
    // The from-address is configured but not verified: the relay's own address is used.
    assert_eq!(
        m.header("From").unwrap(),
        "inbound at ACME <inbound@mx.test.example>"
    );
    assert_eq!(
        m.header("To").unwrap(),
        "<alice@team.example>, <ops@team.example>"
    );
    let subject = m.header("Subject").unwrap();
    assert!(
        subject.contains(CODE) && subject.contains(ADDRESS),
        "{subject}"
    );
    assert_eq!(
        m.header("Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    assert!(m
        .header("Message-ID")
        .unwrap()
        .ends_with("@mx.test.example>"));
    assert!(m.header("Date").is_some());
    let text = m.text();
    assert!(
        text.contains(&format!("Confirmation code: {CODE}")),
        "{text}"
    );
    assert!(
        text.contains("Confirmation link: https://mail-settings.google.com/mail/vf-"),
        "{text}"
    );
    assert!(
        text.contains("Mailbox being confirmed: jane.doe@gmail.com"),
        "{text}"
    );
    // Delivered means gone from the outbox, and sent once.
    wait_outbox(&srv, "empty", |i| i.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1);
    // Customer mail sends no notice (alice is available).
    send(&srv, "someone@customer.example", &message("Question")).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sink.received().len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_down_retries_then_delivers_exactly_once_across_restarts() {
    let port = dead_port().await;
    let dir = TempDir::new("ob-down");
    let text = config(dir.path(), &relay_block(port, ""), "", "");
    let srv = start(dir, &text).await;
    send_confirmation(&srv).await;
    // Retried with backoff while the relay is down.
    let items = wait_outbox(&srv, "two failed attempts", |i| {
        i.len() == 1 && i[0].attempts >= 2
    })
    .await;
    let err = items[0].last_error.clone().unwrap();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    let dir = srv.stop().await;

    // The relay comes back while inbound is down; nothing is sent until inbound starts again.
    let sink = SmtpSink::start_on(port, SmtpSinkOptions::default()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.received().is_empty());
    let srv = start(dir, &text).await;
    let got = sink.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].header("Subject").unwrap().contains(CODE));
    wait_outbox(&srv, "empty", |i| i.is_empty()).await;
    let dir = srv.stop().await;
    // And another restart does not send it again.
    let srv = start(dir, &text).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(sink.received().len(), 1, "exactly once");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_refusal_is_final_and_an_expired_item_is_given_up() {
    // 5xx at end of data: dropped after one attempt (and logged), not retried.
    let sink = SmtpSink::start(SmtpSinkOptions {
        data_reply: Some("554 5.7.1 not from you".into()),
        ..Default::default()
    })
    .await;
    let dir = TempDir::new("ob-refuse");
    let text = config(dir.path(), &relay_block(sink.addr.port(), ""), "", "");
    let srv = start(dir, &text).await;
    send_confirmation(&srv).await;
    wait_outbox(&srv, "empty", |i| i.is_empty()).await;
    assert!(sink.received().is_empty());
    srv.stop().await;

    // Relay down for longer than the lifetime: given up.
    let port = dead_port().await;
    let dir = TempDir::new("ob-expire");
    let text = config(
        dir.path(),
        &relay_block(port, ""),
        "max_lifetime = \"700ms\"",
        "",
    );
    let srv = start(dir, &text).await;
    send_confirmation(&srv).await;
    wait_outbox(&srv, "an attempt", |i| i.len() == 1 && i[0].attempts >= 1).await;
    wait_outbox(&srv, "given up", |i| i.is_empty()).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_with_auth_and_never_clear_text_when_tls_is_required() {
    let sink = SmtpSink::start(SmtpSinkOptions {
        starttls: true,
        auth: Some(("relayuser".into(), "s3cret pass".into())),
        ..Default::default()
    })
    .await;
    let dir = TempDir::new("ob-tls");
    let relay = format!(
        r#"
[relay]
host = "127.0.0.1"
port = {}
security = "starttls"
accept_invalid_certs = true
username = "relayuser"
password = "s3cret pass"
from = "inbound@mx.test.example"
timeout = "3s"
"#,
        sink.addr.port()
    );
    let text = config(dir.path(), &relay, "", "");
    let srv = start(dir, &text).await;
    send_confirmation(&srv).await;
    let got = sink.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].tls, "sent inside TLS");
    assert_eq!(got[0].auth_user.as_deref(), Some("relayuser"));
    srv.stop().await;

    // A relay that does not offer STARTTLS gets nothing while TLS is required.
    let plain = SmtpSink::start(SmtpSinkOptions::default()).await;
    let dir = TempDir::new("ob-notls");
    let relay = format!(
        "[relay]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"starttls\"\nfrom = \"inbound@mx.test.example\"\n",
        plain.addr.port()
    );
    let text = config(dir.path(), &relay, "", "");
    let srv = start(dir, &text).await;
    send_confirmation(&srv).await;
    let items = wait_outbox(&srv, "a failed attempt", |i| {
        i.len() == 1 && i[0].attempts >= 1
    })
    .await;
    assert!(
        items[0]
            .last_error
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("starttls"),
        "{:?}",
        items[0].last_error
    );
    assert!(plain.received().is_empty());
    srv.stop().await;
}

async fn admin(srv: &TestServer, req: Request) -> Result<serde_json::Value, String> {
    let socket = srv.ctx.config().admin_socket.clone();
    let (resp, _) = admin::call(&socket, &req)
        .await
        .unwrap()
        .expect("server answers");
    if resp.ok {
        Ok(resp.data.unwrap_or_default())
    } else {
        Err(resp.error.unwrap_or_default())
    }
}

fn code_in(subject: &str) -> String {
    subject
        .split_whitespace()
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .expect("a six-digit code")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_from_sends_a_code_and_only_a_verified_address_is_used() {
    let sink = SmtpSink::start(SmtpSinkOptions::default()).await;
    let dir = TempDir::new("ob-vfrom");
    let text = config(dir.path(), &relay_block(sink.addr.port(), ""), "", "");
    let srv = start(dir, &text).await;

    let r = admin(
        &srv,
        Request::VerifyFrom {
            id: "acme".into(),
            address: "Support@ACME.example".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(r["address"], "support@acme.example");
    let got = sink.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].rcpt, vec!["support@acme.example"]);
    assert_eq!(
        got[0].header("X-Inbound-Purpose").as_deref(),
        Some("from_verification")
    );
    let code = code_in(&got[0].header("Subject").unwrap());
    assert!(got[0]
        .text()
        .contains(&format!("inbound inboxes confirm-from acme {code}")));

    // Rate limited: a second code within the minute is refused.
    let again = admin(
        &srv,
        Request::VerifyFrom {
            id: "acme".into(),
            address: "support@acme.example".into(),
        },
    )
    .await
    .unwrap_err();
    assert!(again.contains("try again in"), "{again}");

    // The code is stored hashed: not in the inbox state.
    wait_outbox(&srv, "empty", |i| i.is_empty()).await;
    let st = srv.ctx.store.inbox_state("acme").unwrap().unwrap();
    assert!(!serde_json::to_string(&st).unwrap().contains(&code));

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let e = admin(
        &srv,
        Request::ConfirmFrom {
            id: "acme".into(),
            code: wrong.into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e, "wrong code (4 tries left)");
    let ok = admin(
        &srv,
        Request::ConfirmFrom {
            id: "acme".into(),
            code: code.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(ok["verified"], "support@acme.example");
    // Used once.
    let e = admin(
        &srv,
        Request::ConfirmFrom {
            id: "acme".into(),
            code,
        },
    )
    .await
    .unwrap_err();
    assert!(e.contains("no from-address verification is pending"), "{e}");

    // Now the inbox's notices come from its verified address.
    send_confirmation(&srv).await;
    let got = sink.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        got[1].header("From").unwrap(),
        "ACME Support <support@acme.example>"
    );
    assert_eq!(
        got[1].mail_from, "inbound@mx.test.example",
        "envelope stays the relay's"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_from_codes_expire_and_wrong_tries_void_them() {
    use inbound::notify::verify_from::{confirm, request, VerifyError, CODE_LIFETIME_MS};
    let dir = TempDir::new("ob-vexp");
    let cfg = config(dir.path(), &relay_block(dead_port().await, ""), "", "").parse();
    let store = inbound::store::Store::open(dir.path(), &cfg.store).unwrap();
    let code_of = |store: &inbound::store::Store| {
        let items: Vec<OutboxItem> = store.outbox_items().unwrap();
        let inbound::notify::Delivery::Mail { message, .. } = &items.last().unwrap().delivery
        else {
            panic!("mail")
        };
        let subject = message.lines().find(|l| l.starts_with("Subject:")).unwrap();
        code_in(subject)
    };
    let t0 = 1_700_000_000_000u64;
    request(&store, &cfg, "acme", "team@acme.example", t0).unwrap();
    let code = code_of(&store);
    assert_eq!(
        confirm(&store, &cfg, "acme", &code, t0 + CODE_LIFETIME_MS + 1),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        confirm(&store, &cfg, "acme", &code, t0 + CODE_LIFETIME_MS + 2),
        Err(VerifyError::NoneRequested)
    );

    let t1 = t0 + 2 * 3_600_000;
    request(&store, &cfg, "acme", "team@acme.example", t1).unwrap();
    let code = code_of(&store);
    let wrong = if code == "999999" { "888888" } else { "999999" };
    for left in (1..5).rev() {
        assert_eq!(
            confirm(&store, &cfg, "acme", wrong, t1 + 1),
            Err(VerifyError::WrongCode(left))
        );
    }
    assert_eq!(
        confirm(&store, &cfg, "acme", wrong, t1 + 1),
        Err(VerifyError::TooManyAttempts)
    );
    assert_eq!(
        confirm(&store, &cfg, "acme", &code, t1 + 2),
        Err(VerifyError::NoneRequested)
    );

    // Three sends per hour at most, a minute apart.
    let t2 = t1 + 2 * 3_600_000;
    request(&store, &cfg, "acme", "team@acme.example", t2).unwrap();
    assert!(matches!(
        request(&store, &cfg, "acme", "team@acme.example", t2 + 1000),
        Err(VerifyError::RateLimited(59))
    ));
    request(&store, &cfg, "acme", "team@acme.example", t2 + 61_000).unwrap();
    request(&store, &cfg, "acme", "team@acme.example", t2 + 122_000).unwrap();
    assert!(matches!(
        request(&store, &cfg, "acme", "team@acme.example", t2 + 183_000),
        Err(VerifyError::RateLimited(_))
    ));
    assert!(matches!(
        request(&store, &cfg, "nope", "team@acme.example", t2),
        Err(VerifyError::UnknownInbox(_))
    ));
    assert!(matches!(
        request(&store, &cfg, "acme", "not an address", t2 + 10_000_000),
        Err(VerifyError::InvalidAddress(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_away_assignee_is_mailed_about_their_conversation() {
    let sink = SmtpSink::start(SmtpSinkOptions::default()).await;
    let dir = TempDir::new("ob-away");
    let text = config(
        dir.path(),
        &relay_block(sink.addr.port(), ""),
        "",
        "[notify]\nconversation_url = \"https://app.example/inboxes/{inbox}/c/{conversation}\"",
    );
    let srv = start(dir, &text).await;
    let first = b"From: Carol <carol@customer.example>\r\nTo: support@acme.example\r\n\
Subject: Invoice 42 is wrong\r\nMessage-ID: <inv42@customer.example>\r\n\r\nPlease fix.\r\n";
    let rec = send(&srv, "carol@customer.example", first).await;
    let r = &rec.routing[0];
    assert_eq!(r.assignee.as_deref(), Some("alice"));
    // alice is available: no notice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.received().is_empty());

    // alice goes away; the customer writes again in the same conversation, which stays hers.
    srv.ctx
        .store
        .update(|tx| {
            let st = inbound::store::model::UserState {
                available: Some(false),
                ..Default::default()
            };
            tx.put_user_state("alice", &st)
        })
        .unwrap();
    let reply = b"From: Carol <carol@customer.example>\r\nTo: support@acme.example\r\n\
Subject: Re: Invoice 42 is wrong\r\nMessage-ID: <inv42-2@customer.example>\r\n\
In-Reply-To: <inv42@customer.example>\r\n\r\nAny news?\r\n";
    let rec2 = send(&srv, "carol@customer.example", reply).await;
    assert_eq!(rec2.routing[0].assignment, "kept");
    let got = sink.wait_for(1, Duration::from_secs(10)).await;
    let m = &got[0];
    assert_eq!(m.rcpt, vec!["alice@team.example"]);
    assert_eq!(
        m.header("X-Inbound-Purpose").as_deref(),
        Some("assignment_notice")
    );
    let subject = m.header("Subject").unwrap();
    assert!(subject.contains("Re: Invoice 42 is wrong"), "{subject}");
    let text = m.text();
    assert!(text.contains("From: carol@customer.example"), "{text}");
    assert!(
        text.contains(&format!(
            "Open: https://app.example/inboxes/acme/c/{}",
            r.conversation
        )),
        "{text}"
    );
    srv.stop().await;
}

#[test]
fn relay_and_webhook_config_errors_name_their_keys() {
    let dir = TempDir::new("ob-cfg");
    let bad = config(
        dir.path(),
        r#"
[relay]
host = "smtp.example.net"
security = "none"
username = "u"
password = "p"
from = "not-an-address"
"#,
        "concurrency = 0",
        r#"
[[webhook]]
id = "app"
url = "ftp://example.net/hook"
secret = "short"
events = ["message.received", "message.exploded"]
inboxes = ["nope"]
"#,
    );
    let errs = inbound::config::parse(&bad.toml()).unwrap_err().to_string();
    for key in [
        "relay.security",
        "relay.from",
        "outbox.concurrency",
        "webhook[0].url",
        "webhook[0].secret",
        "webhook[0].events[1]",
        "webhook[0].inboxes[0]",
    ] {
        assert!(errs.contains(key), "{key} missing from:\n{errs}");
    }
    let bad_admin = config(dir.path(), "", "", "").toml().replace(
        "admins = [\"alice\", \"ops@team.example\"]",
        "admins = [\"zed\"]",
    );
    let errs = inbound::config::parse(&bad_admin).unwrap_err().to_string();
    assert!(
        errs.contains("inbox[0].admins[0]") && errs.contains("unknown user"),
        "{errs}"
    );
}
