//! Inbox setup over SMTP: a provider's confirmation mail shows up with its code on the inbox, the
//! team's first forwarded message flips the inbox to connected, and a connected inbox's address
//! is locked against config changes (at start and in check-config).
use crate::support;

use std::process::Command;

use support::*;

/// The `acme` inbox, its address generated from tenant + hosted domain; the team's mailbox is
/// jane.doe@gmail.com (the address the Gmail confirmation fixture confirms).
fn config(data: &std::path::Path, address_line: &str) -> String {
    ConfigBuilder::new(data)
        .set("server", "hosted_domain = \"inbound.test\"")
        .listener("127.0.0.1:0")
        // `start` binds this config itself (not only through TestServer): no fixed API port.
        .set("api", "listen = \"127.0.0.1:0\"")
        .set("auth", "trusted_networks = [\"127.0.0.0/8\"]")
        .inbox_toml(&format!(
            "[[inbox]]\nid = \"acme\"\ntenant = \"acme\"\nlocal = \"support\"\n{address_line}\n\
             connected_address = \"jane.doe@gmail.com\""
        ))
        .toml()
}

const ADDRESS: &str = "support@acme.inbound.test";

async fn start(dir: TempDir, address_line: &str) -> Result<TestServer, String> {
    let cfg =
        inbound::config::parse(&config(dir.path(), address_line)).map_err(|e| e.to_string())?;
    match inbound::server::bind(cfg.clone()).await {
        Ok(bound) => {
            drop(bound);
            // `bind` succeeded: let the harness bind again and run it.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Ok(TestServer::start_config(dir, cfg).await)
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn send(srv: &TestServer, from: &str, body: &[u8]) -> inbound::store::MessageRecord {
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c.send_message(from, &[ADDRESS], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    srv.ctx.store.get(&r.last_word()).unwrap().expect("record")
}

#[tokio::test(flavor = "multi_thread")]
async fn confirmation_code_then_first_forward_connects_then_the_address_is_locked() {
    let srv = start(TempDir::new("setup"), "").await.expect("starts");
    assert_eq!(
        srv.ctx.config().inboxes.list[0].address,
        ADDRESS,
        "generated address"
    );

    // 1. Gmail's forwarding confirmation arrives: recognised, not customer mail.
    let confirmation = std::fs::read(sign_fixture(
        "verification/gmail_forwarding_confirmation_en.eml",
    ))
    .unwrap();
    let rec = send(&srv, "forwarding-noreply@google.com", &confirmation).await;
    let v = rec
        .verification
        .clone()
        .expect("recognised as a provider confirmation");
    assert_eq!(v.provider, "gmail");
    assert_eq!(v.code.as_deref(), Some("418297350"));
    assert!(v
        .link
        .as_deref()
        .unwrap()
        .starts_with("https://mail-settings.google.com/"));
    assert_eq!(rec.routing[0].assignment, "verification");
    assert_eq!(
        rec.routing[0].ticket, None,
        "a confirmation never opens a ticket"
    );
    let st = srv.ctx.store.inbox_state("acme").unwrap().unwrap();
    assert_eq!(
        st.state.as_str(),
        "pending",
        "the provider's own mail does not prove forwarding works"
    );
    assert_eq!(
        st.latest_verification.as_ref().unwrap().code.as_deref(),
        Some("418297350")
    );

    // 2. A customer mail that merely mentions a confirmation code stays customer mail, and
    //    mail not forwarded by the team does not connect the inbox.
    let customer = b"From: Bob <bob@buyer.example>\r\nSubject: my confirmation code\r\nMessage-ID: <c1@buyer.example>\r\n\r\nI never received my confirmation code 123456 for order 42.\r\n";
    let rec = send(&srv, "bob@buyer.example", customer).await;
    assert!(rec.verification.is_none());
    assert!(rec.routing[0].ticket.is_some());
    assert_eq!(
        srv.ctx
            .store
            .inbox_state("acme")
            .unwrap()
            .unwrap()
            .state
            .as_str(),
        "pending"
    );

    // 3. The team's first auto-forwarded message (Gmail adds X-Forwarded-For) connects it.
    let forwarded = b"X-Forwarded-For: jane.doe@gmail.com support@acme.inbound.test\r\nX-Forwarded-To: support@acme.inbound.test\r\nFrom: Carol <carol@customer.example>\r\nTo: jane.doe@gmail.com\r\nSubject: where is my order\r\nMessage-ID: <f1@customer.example>\r\n\r\nHello\r\n";
    let rec = send(
        &srv,
        "jane.doe+caf_=support=acme.inbound.test@gmail.com",
        forwarded,
    )
    .await;
    assert_eq!(
        rec.attribution.as_ref().unwrap().email,
        "carol@customer.example"
    );
    let st = srv.ctx.store.inbox_state("acme").unwrap().unwrap();
    assert_eq!(st.state.as_str(), "connected", "{st:?}");
    assert!(
        st.evidence.as_deref().unwrap().contains(&rec.queue_id),
        "{st:?}"
    );
    assert_eq!(st.address, ADDRESS);
    assert_eq!(st.messages, 3);
    let dir = srv.stop().await;

    // 4. A config that changes the connected address is refused at start, saying how to migrate.
    let err = start(dir, "address = \"help@acme.inbound.test\"")
        .await
        .err()
        .expect("refused");
    assert!(err.contains("connected"), "{err}");
    assert!(err.contains(ADDRESS), "{err}");
    assert!(err.contains("alias"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_refuses_a_changed_address_and_keeping_it_as_alias_is_fine() {
    let dir = TempDir::new("lock");
    let srv = start(dir, "").await.expect("starts");
    // An operator confirms by hand (the API/CLI path), through the admin socket.
    let cfg_path = srv.dir.path().join("inbound.toml");
    std::fs::write(&cfg_path, config(srv.dir.path(), "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inbound"))
        .args(["inboxes", "confirm", "acme", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("connected"));
    let out = Command::new(env!("CARGO_BIN_EXE_inbound"))
        .args(["inboxes", "show", "acme", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state:        connected"), "{text}");
    assert!(text.contains("confirmed by an operator"), "{text}");

    // check-config on a changed address (server still running: through the socket).
    let changed = srv.dir.path().join("changed.toml");
    std::fs::write(
        &changed,
        config(srv.dir.path(), "address = \"new@acme.inbound.test\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inbound"))
        .arg("check-config")
        .arg(&changed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("inbox[0].address") && err.contains("migrate"),
        "{err}"
    );
    // Keeping the old address as an alias is a valid migration.
    let kept = srv.dir.path().join("kept.toml");
    std::fs::write(
        &kept,
        config(
            srv.dir.path(),
            &format!("address = \"new@acme.inbound.test\"\naliases = [\"{ADDRESS}\"]"),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inbound"))
        .arg("check-config")
        .arg(&kept)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.stop().await;
}

fn sign_fixture(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}
