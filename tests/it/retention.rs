//! Retention end to end: messages arrive over real SMTP on loopback (quarantined ones through real
//! sender checks against a loopback DNS server), sweeps run at chosen clock times, and what they
//! remove is checked on disk (spool files), in the store's answers, and in the database itself
//! once the server has stopped. What must stay is compared byte for byte.
use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use inbound::config::RetentionConfig;
use inbound::store::retention::{sweep_once, SweepReport};
use inbound::store::MessageRecord;
use support::dns::TestDns;
use support::*;

const DAY: Duration = Duration::from_secs(86_400);

/// Messages to `support@demo` are checked (no trusted networks; example.com's SPF fails every
/// host and it has no DMARC policy, so they are unauthenticated and quarantined); `sales@acme` and
/// `ops@acme` skip the checks and are accepted.
async fn server(dns: &TestDns, retention: &str) -> TestServer {
    server_in(dns, TempDir::new("ret"), retention).await
}

async fn server_in(dns: &TestDns, dir: TempDir, retention: &str) -> TestServer {
    dns.add_txt("example.com", "v=spf1 -all");
    let cfg = ConfigBuilder::new(dir.path())
        .listener("127.0.0.1:0")
        .resolver(dns.addr())
        .inbox("demo", "support@demo.inbound.test")
        .inbox_toml(
            "[[inbox]]\nid = \"sales\"\naddress = \"sales@acme.inbound.test\"\nauth = { enabled = false }",
        )
        .inbox_toml(
            "[[inbox]]\nid = \"ops\"\naddress = \"ops@acme.inbound.test\"\nauth = { enabled = false }",
        )
        .extra(&format!("[retention]\n{retention}"))
        .parse();
    TestServer::start_config(dir, cfg).await
}

fn keep_all() -> RetentionConfig {
    RetentionConfig {
        bodies: None,
        quarantine: None,
        session_metadata: None,
        conversations: None,
        sweep_interval: Duration::from_secs(3600),
    }
}

/// A body larger than the inline threshold (64 KiB), so it is stored as a spool file.
fn large(subject: &str) -> Vec<u8> {
    let mut m = message(subject);
    while m.len() < 100 * 1024 {
        m.extend_from_slice(b"a line that makes this body large enough for the spool\r\n");
    }
    m
}

/// Deliver one message on a new connection; returns its record.
async fn deliver(srv: &TestServer, to: &[&str], body: &[u8]) -> MessageRecord {
    let mut c = srv.connect().await;
    c.timeout = Duration::from_secs(30);
    c.hello().await;
    let r = c.send_message("alice@example.com", to, body).await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", "221").await;
    srv.ctx
        .store
        .get(&r.last_word())
        .unwrap()
        .expect("the accepted message is stored")
}

fn spool_file(srv: &TestServer, id: &str) -> PathBuf {
    srv.dir.path().join("spool/msg").join(format!("{id}.eml"))
}

fn now_ms() -> u64 {
    inbound::store::keys::now_ms()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What must not change: the stored message, byte for byte, and its record's routing.
struct Kept {
    id: String,
    raw: Vec<u8>,
    routing: Vec<inbound::store::model::RoutingRecord>,
}

fn kept(srv: &TestServer, id: &str) -> Kept {
    let r = srv.ctx.store.get(id).unwrap().expect("record");
    Kept {
        id: id.to_string(),
        raw: srv.ctx.store.raw_message(&r).unwrap(),
        routing: r.routing,
    }
}

fn assert_intact(srv: &TestServer, k: &Kept) {
    let r = srv
        .ctx
        .store
        .get(&k.id)
        .unwrap()
        .unwrap_or_else(|| panic!("{} should still be stored", k.id));
    assert_eq!(r.routing, k.routing, "{}: routing", k.id);
    let raw = srv.ctx.store.raw_message(&r).unwrap();
    assert!(raw == k.raw, "{}: stored message changed", k.id);
}

/// The database trees, opened directly once the server has stopped.
fn db_keys(dir: &Path, tree: &str) -> Vec<String> {
    let db = sled::open(dir.join("db")).expect("open the stopped server's database");
    db.open_tree(tree)
        .unwrap()
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.unwrap().0).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn quarantined_mail_past_its_lifetime_is_deleted_and_bodies_expire() {
    let dns = TestDns::start().await;
    let srv = server(&dns, "").await;
    let demo = ["support@demo.inbound.test"];
    let sales = ["sales@acme.inbound.test"];

    let q_small = deliver(&srv, &demo, &message("q-small")).await;
    let q_large = deliver(&srv, &demo, &large("q-large")).await;
    assert!(q_small.quarantined && q_large.quarantined, "{q_small:?}");
    assert_eq!(q_large.body_location, "spool");
    assert!(spool_file(&srv, &q_large.queue_id).exists());
    let small = deliver(&srv, &sales, &message("small")).await;
    let big = deliver(&srv, &sales, &large("big")).await;
    assert!(!small.quarantined && !big.quarantined);
    assert_eq!(
        (small.body_location.as_str(), big.body_location.as_str()),
        ("inline", "spool")
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = deliver(&srv, &sales, &large("later")).await;
    let (k_small, k_big, k_later) = (
        kept(&srv, &small.queue_id),
        kept(&srv, &big.queue_id),
        kept(&srv, &later.queue_id),
    );
    let store = &srv.ctx.store;

    // Within every lifetime: nothing happens.
    let defaults = RetentionConfig {
        bodies: Some(30 * DAY),
        ..RetentionConfig::default()
    };
    let r = sweep_once(store, &defaults, now_ms() + ms(DAY));
    assert_eq!(r.error, None);
    assert!(!r.removed_anything(), "{r:?}");
    assert_eq!(srv.messages().len(), 5);

    // Quarantine (7 days by default): both quarantined messages go entirely, spool file
    // included; the accepted ones stay byte for byte.
    let quarantine = RetentionConfig {
        quarantine: Some(7 * DAY),
        ..keep_all()
    };
    let r = sweep_once(store, &quarantine, between + ms(7 * DAY));
    assert_eq!(
        r,
        SweepReport {
            quarantined_deleted: 2,
            duration_ms: r.duration_ms,
            ..Default::default()
        }
    );
    for q in [&q_small, &q_large] {
        assert!(
            store.get(&q.queue_id).unwrap().is_none(),
            "{} kept",
            q.queue_id
        );
    }
    assert!(
        !spool_file(&srv, &q_large.queue_id).exists(),
        "quarantined spool file kept"
    );
    for k in [&k_small, &k_big, &k_later] {
        assert_intact(&srv, k);
    }
    // Done is done: the same sweep again finds nothing.
    assert!(!sweep_once(store, &quarantine, between + ms(7 * DAY)).removed_anything());

    // Bodies (30 days here): the two received before `between` lose their bodies, from the spool
    // and from the database; their records stay, marked expired. The later one is untouched.
    let bodies = RetentionConfig {
        bodies: Some(30 * DAY),
        ..keep_all()
    };
    let r = sweep_once(store, &bodies, between + ms(30 * DAY));
    assert_eq!((r.bodies_expired, r.error.as_deref()), (2, None), "{r:?}");
    for m in [&small, &big] {
        let rec = store.get(&m.queue_id).unwrap().expect("the record stays");
        assert_eq!(rec.body_location, inbound::store::BODY_EXPIRED);
        assert_eq!(rec.sha256, m.sha256, "what the body was is still known");
        assert_eq!(rec.routing, m.routing);
        let err = store.body(&rec).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }
    assert!(
        !spool_file(&srv, &big.queue_id).exists(),
        "expired spool file kept"
    );
    assert!(spool_file(&srv, &later.queue_id).exists());
    assert_intact(&srv, &k_later);
    assert_eq!(
        sweep_once(store, &bodies, between + ms(30 * DAY)).bodies_expired,
        0
    );

    // And in the database itself: no body, record or index entry left for what was removed.
    let (small_id, later_id) = (small.queue_id.clone(), later.queue_id.clone());
    let gone = [q_small.queue_id.clone(), q_large.queue_id.clone()];
    let dir = srv.stop().await;
    let bodies_tree = db_keys(dir.path(), "bodies");
    assert!(
        !bodies_tree.contains(&small_id),
        "expired inline body still in the database"
    );
    let messages_tree = db_keys(dir.path(), "messages");
    for id in &gone {
        assert!(
            !messages_tree.contains(id) && !bodies_tree.contains(id),
            "{id} left behind"
        );
    }
    assert!(messages_tree.contains(&small_id) && messages_tree.contains(&later_id));
    let files: Vec<String> = std::fs::read_dir(dir.path().join("spool/msg"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, [format!("{later_id}.eml")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn session_metadata_is_cleared_once_and_the_message_stays() {
    let dns = TestDns::start().await;
    let srv = server(&dns, "").await;
    let sales = ["sales@acme.inbound.test"];
    let old = deliver(&srv, &sales, &message("old-meta")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new = deliver(&srv, &sales, &message("new-meta")).await;
    assert_eq!(old.client_ip, "127.0.0.1");
    assert!(old
        .trace_headers
        .starts_with("Received: from client.example"));
    let body_before = srv.ctx.store.body(&old).unwrap();
    let k_new = kept(&srv, &new.queue_id);

    let cfg = RetentionConfig {
        session_metadata: Some(60 * DAY),
        ..keep_all()
    };
    let store = &srv.ctx.store;
    let r = sweep_once(store, &cfg, between + ms(60 * DAY));
    assert_eq!(
        (r.session_metadata_cleared, r.error.as_deref()),
        (1, None),
        "{r:?}"
    );
    let rec = store.get(&old.queue_id).unwrap().unwrap();
    assert!(rec.session_metadata_cleared);
    assert_eq!(
        (rec.client_ip.as_str(), rec.client_port, rec.helo.as_str()),
        ("", 0, "")
    );
    assert_eq!((rec.mail_from.as_str(), rec.tls.as_deref()), ("", None));
    assert!(rec.trace_headers.is_empty());
    assert_eq!(rec.auth.as_ref().map(|a| a.spf_domain.as_str()), Some(""));
    // The message itself, its recipients and its conversation stay.
    assert_eq!(rec.rcpt, old.rcpt);
    assert_eq!(rec.routing, old.routing);
    assert!(store.body(&rec).unwrap() == body_before);
    let conv = store
        .conversation(&old.routing[0].conversation)
        .unwrap()
        .expect("conversation");
    assert!(store
        .all_conversation_messages(&conv.id)
        .unwrap()
        .contains(&old.queue_id));
    assert_intact(&srv, &k_new);
    // Marked, so not redone; the newer message's turn comes when it is old enough.
    assert_eq!(
        sweep_once(store, &cfg, between + ms(60 * DAY)).session_metadata_cleared,
        0
    );
    assert_eq!(
        sweep_once(store, &cfg, now_ms() + ms(60 * DAY)).session_metadata_cleared,
        1
    );
    assert!(
        store
            .get(&new.queue_id)
            .unwrap()
            .unwrap()
            .session_metadata_cleared
    );
}

fn close(srv: &TestServer, conversation: &str) {
    srv.ctx
        .store
        .update(|tx| {
            let mut c = tx.conversation(conversation)?.expect("conversation exists");
            c.status = inbound::store::model::ConversationStatus::Closed;
            tx.put_conversation(&c)
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_conversations_past_their_lifetime_go_with_their_messages() {
    let dns = TestDns::start().await;
    let srv = server(&dns, "").await;
    let store = &srv.ctx.store;
    // One large message to two inboxes: a conversation in each.
    let both = deliver(
        &srv,
        &["sales@acme.inbound.test", "ops@acme.inbound.test"],
        &large("both-inboxes"),
    )
    .await;
    assert_eq!(both.routing.len(), 2);
    let (sales_conv, ops_conv) = (
        both.routing[0].conversation.clone(),
        both.routing[1].conversation.clone(),
    );
    let open = deliver(&srv, &["sales@acme.inbound.test"], &message("stays-open")).await;
    let k_open = kept(&srv, &open.queue_id);
    let ticket = store
        .conversation(&sales_conv)
        .unwrap()
        .unwrap()
        .ticket
        .expect("a ticket for the new conversation");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = now_ms();
    let cfg = RetentionConfig {
        conversations: Some(365 * DAY),
        ..keep_all()
    };

    // Open conversations stay however old they are.
    assert!(!sweep_once(store, &cfg, now + ms(400 * DAY)).removed_anything());

    // Closed in sales only: the conversation, its ticket and its contact link go; the message
    // stays for ops, routed there only.
    close(&srv, &sales_conv);
    assert!(
        !sweep_once(store, &cfg, now + ms(300 * DAY)).removed_anything(),
        "not old enough yet"
    );
    let r = sweep_once(store, &cfg, now + ms(366 * DAY));
    assert_eq!(
        (
            r.conversations_deleted,
            r.conversation_messages_deleted,
            r.error.as_deref()
        ),
        (1, 0, None),
        "{r:?}"
    );
    assert!(store.conversation(&sales_conv).unwrap().is_none());
    assert!(store.ticket(&ticket).unwrap().is_none());
    assert!(!store
        .contact_conversations("alice@example.com")
        .unwrap()
        .contains(&sales_conv));
    let rec = store.get(&both.queue_id).unwrap().expect("still in ops");
    assert_eq!(rec.routing.len(), 1);
    assert_eq!(rec.routing[0].conversation, ops_conv);
    assert!(spool_file(&srv, &both.queue_id).exists());

    // Closed in ops too: now the message goes with it, spool file included.
    close(&srv, &ops_conv);
    let r = sweep_once(store, &cfg, now + ms(366 * DAY));
    assert_eq!(
        (r.conversations_deleted, r.conversation_messages_deleted),
        (1, 1),
        "{r:?}"
    );
    assert!(store.get(&both.queue_id).unwrap().is_none());
    assert!(!spool_file(&srv, &both.queue_id).exists());
    assert_intact(&srv, &k_open);

    // A re-delivery of the deleted message is a new conversation, not a "duplicate" of a
    // message that is gone (its Message-ID entries went with it).
    let again = deliver(&srv, &["ops@acme.inbound.test"], &large("both-inboxes")).await;
    assert_eq!(
        again.routing[0].thread.as_str(),
        "new",
        "{:?}",
        again.routing
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_message_without_message_id_frees_its_thread_entry() {
    let dns = TestDns::start().await;
    let srv = server(&dns, "").await;
    let body = b"From: Bob <bob@example.com>\r\nSubject: no id\r\n\r\nHello.\r\n";
    let first = deliver(&srv, &["sales@acme.inbound.test"], body).await;
    let dup = deliver(&srv, &["sales@acme.inbound.test"], body).await;
    assert_eq!(
        dup.routing[0].thread.as_str(),
        "duplicate",
        "a re-delivery is recognised"
    );
    srv.ctx.store.delete_message(&dup.queue_id).unwrap();
    srv.ctx.store.delete_message(&first.queue_id).unwrap();
    let again = deliver(&srv, &["sales@acme.inbound.test"], body).await;
    assert_eq!(
        again.routing[0].thread.as_str(),
        "new",
        "{:?}",
        again.routing
    );
}

/// The body's record is marked expired and flushed before its spool file is unlinked; a crash in
/// between (or an unlink the file system lost) leaves the file. Recovery removes it.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_body_left_on_disk_by_a_crash_is_removed_at_start() {
    let dns = TestDns::start().await;
    let srv = server(&dns, "").await;
    let m = deliver(&srv, &["sales@acme.inbound.test"], &large("resurrected")).await;
    let path = spool_file(&srv, &m.queue_id);
    let bytes = std::fs::read(&path).unwrap();
    assert!(srv.ctx.store.expire_body(&m.queue_id).unwrap());
    assert!(!path.exists());
    std::fs::write(&path, &bytes).unwrap();
    let dir = srv.stop().await;
    let srv = server_in(&dns, dir, "").await;
    assert!(
        !path.exists(),
        "recovery should remove the spool file of an expired body"
    );
    let rec = srv
        .ctx
        .store
        .get(&m.queue_id)
        .unwrap()
        .expect("record kept");
    assert_eq!(rec.body_location, inbound::store::BODY_EXPIRED);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweeper_runs_in_a_started_server() {
    let dns = TestDns::start().await;
    let srv = server(&dns, "quarantine = \"1s\"\nsweep_interval = \"200ms\"").await;
    let q = deliver(&srv, &["support@demo.inbound.test"], &large("swept")).await;
    assert!(q.quarantined);
    let k = deliver(&srv, &["sales@acme.inbound.test"], &message("kept")).await;
    let k = kept(&srv, &k.queue_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while srv.ctx.store.get(&q.queue_id).unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper did not remove the quarantined message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!spool_file(&srv, &q.queue_id).exists());
    assert_intact(&srv, &k);
    // The sweeper counts a removal after its transaction: the count follows the removal.
    let counted = "inbound_retention_removed_total{kind=\"quarantined_message\"} 1\n";
    loop {
        let text = inbound::api::metrics_text(&srv.ctx);
        if text.contains(counted) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Shutdown stops the sweeper with the rest.
    srv.stop().await;
}
