//! Webhooks against a real HTTP receiver on loopback (`support::sink::HttpSink`): events written
//! with the message, signed with HMAC-SHA256 over timestamp and body, retried on 500 and on a
//! dead receiver, delivered after a restart, and never accepted twice under one idempotency key.
use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use support::sink::{dead_port, HttpRequest, HttpSink};
use support::*;

const SECRET: &str = "whsec-test-0123456789abcdef";
const ADDRESS: &str = "support@acme.inbound.test";

fn config(data: &std::path::Path, port: u16, webhook_extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "mx.test.example"
data_dir = "{data}"
shutdown_timeout = "5s"

[[listener]]
addr = "127.0.0.1:0"

[auth]
trusted_networks = ["127.0.0.0/8"]

[outbox]
retry_initial = "100ms"
retry_max = "300ms"
poll_interval = "50ms"

[[webhook]]
id = "app"
url = "http://127.0.0.1:{port}/hooks/inbound?src=mx"
secret = "{SECRET}"
timeout = "2s"
{webhook_extra}

[[user]]
id = "alice"

[[inbox]]
id = "acme"
address = "{ADDRESS}"
tickets = {{ enabled = true, pipeline = "support", stage = "new", priority = "normal" }}

[[inbox.rule]]
name = "to alice"
assign = {{ users = ["alice"] }}

[[inbox]]
id = "other"
address = "help@other.inbound.test"
"#,
        data = data.display()
    )
}

async fn start(dir: TempDir, text: &str) -> TestServer {
    let cfg = inbound::config::parse(text).unwrap_or_else(|e| panic!("config: {e}"));
    TestServer::start_config(dir, cfg).await
}

async fn send(srv: &TestServer, rcpt: &str, subject: &str) -> String {
    let mut c = srv.connect().await;
    c.hello().await;
    let body = format!(
        "From: Carol <carol@customer.example>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\
         Message-ID: <{}@customer.example>\r\n\r\nHello.\r\n",
        subject.replace(' ', "-")
    );
    let r = c
        .send_message("carol@customer.example", &[rcpt], body.as_bytes())
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    r.last_word()
}

fn json(r: &HttpRequest) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// What a receiver does: recompute the HMAC over "<t>.<body>" and check freshness.
fn verify(r: &HttpRequest) {
    let sig = r.header("inbound-signature").expect("signature header");
    let (t, v1) = sig
        .split_once(',')
        .map(|(t, v)| (t.trim_start_matches("t="), v.trim_start_matches("v1=")))
        .expect("t=..,v1=..");
    assert_eq!(Some(t), r.header("inbound-timestamp"));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let expected: Vec<u8> = (0..v1.len() / 2)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    ring::hmac::verify(&key, &signed, &expected).expect("signature verifies");
    // A tampered body does not verify.
    let mut tampered = signed.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(ring::hmac::verify(&key, &tampered, &expected).is_err());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t: u64 = t.parse().unwrap();
    assert!(now.abs_diff(t) < 300, "fresh timestamp");
    assert_eq!(r.header("idempotency-key"), json(r)["id"].as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_for_a_new_message_are_signed_and_complete() {
    let sink = HttpSink::start_on(0, &[]).await;
    let dir = TempDir::new("wh-events");
    let text = config(dir.path(), sink.addr.port(), "");
    let srv = start(dir, &text).await;
    let queue_id = send(&srv, ADDRESS, "Broken login").await;
    let got = sink.wait_accepted(4, Duration::from_secs(10)).await;
    let mut by_type: HashMap<String, serde_json::Value> = HashMap::new();
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/hooks/inbound?src=mx");
        assert_eq!(r.header("content-type"), Some("application/json"));
        verify(r);
        let body = json(r);
        assert_eq!(r.header("inbound-event"), body["type"].as_str());
        assert_eq!(body["inbox"], "acme");
        by_type.insert(body["type"].as_str().unwrap().to_string(), body);
    }
    // The API's shapes: the message summary of GET /v1/messages and this inbox's routing.
    let received = &by_type["message.received"]["data"];
    assert_eq!(received["message"]["id"], queue_id.as_str());
    assert_eq!(
        received["message"]["attribution"]["email"],
        "carol@customer.example"
    );
    assert_eq!(received["message"]["subject"], "Broken login");
    assert_eq!(received["routing"]["assignee"], "alice");
    assert_eq!(
        received["detail_url"],
        format!("/v1/messages/{queue_id}").as_str()
    );
    assert_eq!(
        (&received["detail"], &received["detail_omitted"]),
        (
            &serde_json::Value::Null,
            &serde_json::json!("not_requested")
        ),
        "include_message is opt-in"
    );
    let conv = received["routing"]["conversation"].as_str().unwrap();
    assert_eq!(
        by_type["conversation.created"]["data"]["conversation"],
        conv
    );
    assert_eq!(
        by_type["conversation.assigned"]["data"]["assignee"],
        "alice"
    );
    assert_eq!(by_type["conversation.assigned"]["data"]["rule"], "to alice");
    assert_eq!(by_type["ticket.created"]["data"]["conversation"], conv);
    assert_eq!(by_type["ticket.created"]["data"]["pipeline"], "support");
    // Mail to another inbox is announced too (the endpoint takes every inbox by default), but
    // it has no rule: no conversation.assigned (tickets are on by default).
    send(&srv, "help@other.inbound.test", "Other").await;
    let got = sink.wait_accepted(7, Duration::from_secs(10)).await;
    let other: Vec<_> = got
        .iter()
        .map(json)
        .filter(|b| b["inbox"] == "other")
        .map(|b| b["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(other.len(), 3, "{other:?}");
    assert!(!other.contains(&"conversation.assigned".to_string()));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_get_only_the_events_and_inboxes_they_asked_for() {
    let sink = HttpSink::start_on(0, &[]).await;
    let dir = TempDir::new("wh-filter");
    let text = config(
        dir.path(),
        sink.addr.port(),
        "events = [\"conversation.created\"]\ninboxes = [\"other\"]",
    );
    let srv = start(dir, &text).await;
    send(&srv, ADDRESS, "Not for this endpoint").await;
    send(&srv, "help@other.inbound.test", "For it").await;
    let got = sink.wait_accepted(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.requests().len(), 1);
    let body = json(&got[0]);
    assert_eq!(body["type"], "conversation.created");
    assert_eq!(body["inbox"], "other");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_500_is_retried_with_the_same_idempotency_key() {
    let sink = HttpSink::start_on(0, &[500, 503]).await;
    let dir = TempDir::new("wh-retry");
    let text = config(
        dir.path(),
        sink.addr.port(),
        "events = [\"message.received\"]",
    );
    let srv = start(dir, &text).await;
    send(&srv, ADDRESS, "Retry me").await;
    sink.wait_accepted(1, Duration::from_secs(10)).await;
    let all = sink.requests();
    assert_eq!(all.len(), 3, "two failures then a success");
    let keys: Vec<_> = all
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert!(keys.iter().all(|k| k == &keys[0]), "{keys:?}");
    let bodies: Vec<_> = all.iter().map(|r| r.body.clone()).collect();
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "the same event each time"
    );
    for r in &all {
        verify(r);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sink.requests().len(), 3, "nothing after the success");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_receiver_gets_everything_after_a_restart_without_duplicates() {
    let port = dead_port().await;
    let dir = TempDir::new("wh-dead");
    let text = config(dir.path(), port, "");
    let srv = start(dir, &text).await;
    send(&srv, ADDRESS, "First").await;
    send(&srv, ADDRESS, "Second").await;
    // 2 messages x (received, created, assigned, ticket) = 8 deliveries, all failing.
    for _ in 0..200 {
        let items: Vec<inbound::notify::OutboxItem> = srv.ctx.store.outbox_items().unwrap();
        if items.len() == 8 && items.iter().all(|i| i.attempts >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let items: Vec<inbound::notify::OutboxItem> = srv.ctx.store.outbox_items().unwrap();
    assert_eq!(items.len(), 8);
    assert!(items.iter().all(|i| i.attempts >= 1));
    let dir = srv.stop().await;

    let sink = HttpSink::start_on(port, &[]).await;
    let srv = start(dir, &text).await;
    let got = sink.wait_accepted(8, Duration::from_secs(10)).await;
    let mut keys: Vec<_> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 8, "eight distinct events");
    let dir = srv.stop().await;
    let srv = start(dir, &text).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.accepted().len(), 8, "none again after another restart");
    let items: Vec<inbound::notify::OutboxItem> = srv.ctx.store.outbox_items().unwrap();
    assert!(items.is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quarantine_is_announced_and_release_routes_the_message() {
    // No trusted networks: mail from loopback is checked, and unauthenticated mail is
    // quarantined by the default policy.
    let dns = support::dns::TestDns::start().await;
    // SPF softfail, no DKIM, no DMARC: unauthenticated.
    dns.add_txt("customer.example", "v=spf1 ~all");
    let sink = HttpSink::start_on(0, &[]).await;
    let dir = TempDir::new("wh-quar");
    let text = config(dir.path(), sink.addr.port(), "").replace(
        "[auth]\ntrusted_networks = [\"127.0.0.0/8\"]",
        &format!(
            "[auth]\ntrusted_networks = []\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"1500ms\"\nattempts = 1",
            dns.addr()
        ),
    );
    let srv = start(dir, &text).await;
    let queue_id = send(&srv, ADDRESS, "Suspicious").await;
    let rec = srv.ctx.store.get(&queue_id).unwrap().unwrap();
    assert!(rec.quarantined, "{:?}", rec.auth);
    assert!(
        rec.routing.is_empty(),
        "a quarantined message joins no conversation"
    );
    assert!(srv
        .ctx
        .store
        .conversations(None, None, 10)
        .unwrap()
        .is_empty());
    let got = sink.wait_accepted(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.requests().len(), 1, "only message.quarantined");
    let body = json(&got[0]);
    assert_eq!(body["type"], "message.quarantined");
    assert_eq!(body["data"]["message"]["id"], queue_id.as_str());
    assert!(!body["data"]["reason"].as_str().unwrap().is_empty());

    // An operator releases it: routed now, with the events of a new message.
    let config = srv.ctx.config();
    let released = inbound::pipeline::release(&config, &srv.ctx.store, &queue_id).unwrap();
    assert!(!released.quarantined);
    assert_eq!(released.routing.len(), 1);
    assert_eq!(released.routing[0].assignee.as_deref(), Some("alice"));
    srv.ctx.outbox_wake.notify_one();
    let got = sink.wait_accepted(5, Duration::from_secs(10)).await;
    let types: Vec<_> = got
        .iter()
        .map(|r| json(r)["type"].as_str().unwrap().to_string())
        .collect();
    for t in [
        "message.received",
        "conversation.created",
        "conversation.assigned",
        "ticket.created",
    ] {
        assert!(types.contains(&t.to_string()), "{t} in {types:?}");
    }
    assert!(matches!(
        inbound::pipeline::release(&config, &srv.ctx.store, &queue_id),
        Err(inbound::pipeline::ReleaseError::NotQuarantined(_))
    ));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_confirmation_is_a_verification_event_with_its_code() {
    let sink = HttpSink::start_on(0, &[]).await;
    let dir = TempDir::new("wh-verif");
    let text = config(
        dir.path(),
        sink.addr.port(),
        "events = [\"verification.received\"]",
    );
    let srv = start(dir, &text).await;
    let body = std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/verification/gmail_forwarding_confirmation_en.eml"),
    )
    .unwrap();
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c
        .send_message("forwarding-noreply@google.com", &[ADDRESS], &body)
        .await;
    assert_eq!(r.code, 250);
    let got = sink.wait_accepted(1, Duration::from_secs(10)).await;
    verify(&got[0]);
    let data = &json(&got[0])["data"];
    assert_eq!(data["provider"], "gmail");
    assert_eq!(data["code"], "418297350");
    assert_eq!(data["address"], "jane.doe@gmail.com");
    assert_eq!(data["message"], r.last_word().as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink.requests().len(),
        1,
        "no conversation/ticket events for a confirmation"
    );
    srv.stop().await;
}

/// Issue #15's conversation lifecycle: an operator's close, unassign and reopen, and a customer
/// writing into a closed conversation (which reopens it, back with its assignee, or assigned
/// anew by the rules when that user is gone), each announced as a signed event.
#[tokio::test(flavor = "multi_thread")]
async fn closing_reopening_and_unassigning_are_announced_and_a_customer_reopens() {
    let sink = HttpSink::start_on(0, &[]).await;
    let dir = TempDir::new("wh-life");
    let text = config(
        dir.path(),
        sink.addr.port(),
        "events = [\"conversation.closed\", \"conversation.reopened\", \"conversation.unassigned\"]",
    )
    .replace(
        "[auth]\n",
        &format!("[api]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{API_TOKEN}\"]\n\n[auth]\n"),
    );
    let srv = start(dir, &text).await;
    let api = srv.api().await;
    let first = send(&srv, ADDRESS, "Lifecycle").await;
    let conv = srv.ctx.store.get(&first).unwrap().unwrap().routing[0]
        .conversation
        .clone();
    let open_count = |srv: &TestServer| srv.ctx.store.view(|tx| tx.open_count("alice")).unwrap();
    let before = open_count(&srv);

    let r = api
        .post(&format!("/v1/conversations/{conv}/close"), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "closed");
    assert_eq!(open_count(&srv), before - 1);

    // The customer writes again, in the same thread: the conversation opens, still alice's.
    let mut c = srv.connect().await;
    c.hello().await;
    let reply = format!(
        "From: Carol <carol@customer.example>\r\nTo: {ADDRESS}\r\nSubject: Re: Lifecycle\r\n\
         Message-ID: <lifecycle-2@customer.example>\r\nIn-Reply-To: <Lifecycle@customer.example>\r\n\r\nStill broken.\r\n"
    );
    let r = c
        .send_message("carol@customer.example", &[ADDRESS], reply.as_bytes())
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().unwrap();
    assert_eq!(rec.routing[0].conversation, conv);
    assert!(rec.routing[0].reopened);
    let now = srv.ctx.store.conversation(&conv).unwrap().unwrap();
    assert_eq!(now.status.as_str(), "open");
    assert_eq!(now.assignee.as_deref(), Some("alice"));
    assert_eq!(open_count(&srv), before);

    let r = api
        .post(&format!("/v1/conversations/{conv}/unassign"), None)
        .await;
    assert_eq!(r.status, 200);
    api.post(&format!("/v1/conversations/{conv}/close"), None)
        .await;
    let r = api
        .post(&format!("/v1/conversations/{conv}/reopen"), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "open");
    // Reopening an open conversation changes nothing and announces nothing.
    api.post(&format!("/v1/conversations/{conv}/reopen"), None)
        .await;
    assert_eq!(
        api.post("/v1/conversations/nope/reopen", None).await.status,
        404
    );

    let got = sink.wait_accepted(5, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<(String, String)> = sink
        .accepted()
        .iter()
        .map(|r| {
            verify(r);
            let b = json(r);
            assert_eq!(b["data"]["conversation"], conv.as_str());
            (
                b["type"].as_str().unwrap().to_string(),
                b["data"]["by"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), 5);
    let want = [
        ("conversation.closed", "operator"),
        ("conversation.reopened", "customer"),
        ("conversation.unassigned", "operator"),
        ("conversation.closed", "operator"),
        ("conversation.reopened", "operator"),
    ];
    let mut sorted = events.clone();
    sorted.sort();
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    want.sort();
    assert_eq!(sorted, want, "{events:?}");

    // An assignee who is no longer configured: the customer's message reassigns by the rules.
    srv.ctx
        .store
        .update(|tx| {
            let mut c = tx.conversation(&conv)?.unwrap();
            c.assignee = Some("ghost".into());
            c.status = inbound::store::model::ConversationStatus::Closed;
            tx.put_conversation(&c)
        })
        .unwrap();
    let again = reply.replace("lifecycle-2@", "lifecycle-3@");
    let r = c
        .send_message("carol@customer.example", &[ADDRESS], again.as_bytes())
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().unwrap();
    assert!(rec.routing[0].reopened);
    assert_eq!(rec.routing[0].assignee.as_deref(), Some("alice"));
    assert_eq!(rec.routing[0].rule.as_deref(), Some("to alice"));
    srv.stop().await;
}

/// Issue #15: a webhook may carry the parsed message, as hosted mail APIs' inbound JSON does:
/// opt-in per endpoint (`include_message`), the API's own message detail, and past the endpoint's
/// `message_max_bytes` only the link to it with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn message_events_carry_the_parsed_message_when_asked_and_under_the_cap() {
    let sink = HttpSink::start_on(0, &[]).await;
    let dir = TempDir::new("wh-detail");
    let port = sink.addr.port();
    let extra = format!(
        r#"include_message = true
events = ["message.received"]

[[webhook]]
id = "small"
url = "http://127.0.0.1:{port}/hooks/small"
secret = "{SECRET}"
include_message = true
message_max_bytes = 2048
events = ["message.received"]

[api]
tokens = ["{API_TOKEN}"]
"#
    );
    let text = config(dir.path(), port, &extra);
    let srv = start(dir, &text).await;
    let api = srv.api().await;
    let mut c = srv.connect().await;
    c.hello().await;
    let long = "Please refund one payment.\r\n".repeat(200);
    let body = format!(
        "From: Carol <carol@customer.example>\r\nTo: {ADDRESS}\r\nCc: Dan <dan@customer.example>\r\n\
         Subject: Refund\r\nDate: Sun, 22 Nov 2026 11:00:00 +0100\r\n\
         Message-ID: <refund@customer.example>\r\n\r\n{long}\r\n\
         On Sat, 21 Nov 2026 at 09:00, Support <{ADDRESS}> wrote:\r\n> Which invoice?\r\n"
    );
    let r = c
        .send_message("carol@customer.example", &[ADDRESS], body.as_bytes())
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let id = r.last_word();
    let got = sink.wait_accepted(2, Duration::from_secs(10)).await;
    let by_path: HashMap<String, serde_json::Value> = got
        .iter()
        .map(|r| {
            verify(r);
            (r.target.clone(), json(r))
        })
        .collect();
    let full = &by_path["/hooks/inbound?src=mx"]["data"];
    let small = &by_path["/hooks/small"]["data"];
    let url = format!("/v1/messages/{id}");
    // Both carry the same keys; the small endpoint's cap leaves the detail out.
    assert_eq!(full["detail_url"], url.as_str());
    assert!(full["detail_omitted"].is_null(), "{full}");
    assert_eq!(
        (
            &small["detail"],
            &small["detail_omitted"],
            &small["detail_url"]
        ),
        (
            &serde_json::Value::Null,
            &serde_json::json!("too_large"),
            &serde_json::json!(url)
        )
    );
    assert_eq!(full["message"], small["message"]);
    // The detail is what the API answers for the message (one inbox: the same routing).
    let detail = api.ok(&url).await;
    assert_eq!(full["detail"], detail);
    assert_eq!(
        detail["stripped_text"].as_str().unwrap().trim_end(),
        long.trim_end()
    );
    assert_eq!(detail["cc"][0]["email"], "dan@customer.example");
    srv.stop().await;

    // The options are checked like the rest of the config, each error with its key.
    for (extra, key) in [
        ("message_max_bytes = 4096", "message_max_bytes"),
        (
            "include_message = true\nmessage_max_bytes = 10",
            "message_max_bytes",
        ),
        ("include_message = \"yes\"", "include_message"),
    ] {
        let text = config(std::path::Path::new("/tmp/unused"), 1, extra);
        let err = inbound::config::parse(&text)
            .err()
            .unwrap_or_else(|| panic!("{extra:?} accepted"))
            .to_string();
        assert!(err.contains(key), "{extra:?}: {err}");
    }
}
