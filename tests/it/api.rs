//! The HTTP API end to end: real HTTP over loopback to a real server, mail sent to it over SMTP.
//! Every answer is also checked against the server's own /openapi.json (support::http::Api), so
//! each test here tests the document too.
use crate::support;

use std::time::Duration;

use serde_json::{json, Value};
use support::dns::TestDns;
use support::http::{request, Api};
use support::*;

const DEMO: &str = "support@demo.inbound.test";
const SALES: &str = "sales@acme.inbound.test";

/// Users and a team; a round-robin rule on the `sales` inbox (the last [[inbox]] of the base
/// config, so the `[[inbox.rule]]` here belongs to it).
const PEOPLE: &str = r#"
[[inbox.rule]]
name = "rr"
assign = { users = ["alice", "bob"] }

[[user]]
id = "alice"
name = "Alice Agent"
email = "alice@acme.example"
[[user]]
id = "bob"
[[user]]
id = "carol"
available = false

[[team]]
id = "tier1"
members = ["alice", "bob"]
"#;

fn msg(from: &str, subject: &str, id: &str) -> Vec<u8> {
    format!(
        "From: Someone <{from}>\r\nTo: {DEMO}\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

/// Send over SMTP; the queue id.
async fn send(srv: &TestServer, to: &str, from: &str, body: &[u8]) -> String {
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c.send_message(from, &[to], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    r.last_word()
}

/// The routing of a message in its first inbox, from the API.
async fn routing(api: &Api, id: &str) -> Value {
    api.ok(&format!("/v1/messages/{id}")).await["routing"][0].clone()
}

/// Walk a list with `limit` per page; the ids of every item and the size of every page.
async fn walk(api: &Api, base: &str, key: &str, limit: usize) -> (Vec<String>, Vec<usize>) {
    let sep = if base.contains('?') { '&' } else { '?' };
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let target = match &cursor {
            Some(c) => format!("{base}{sep}limit={limit}&cursor={c}"),
            None => format!("{base}{sep}limit={limit}"),
        };
        let page = api.ok(&target).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit, "{target}: page larger than the limit");
        sizes.push(items.len());
        ids.extend(items.iter().map(|i| i[key].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (ids, sizes),
        }
    }
    panic!("{base}: no end after 100 pages");
}

async fn users(api: &Api) -> Value {
    let list = api.ok("/v1/users").await;
    let mut by_id = serde_json::Map::new();
    for u in list["items"].as_array().unwrap() {
        by_id.insert(u["id"].as_str().unwrap().to_string(), u.clone());
    }
    Value::Object(by_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_protected_route_needs_a_valid_token() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let anonymous = api.with_token(None);
    let r = anonymous.get("/healthz").await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));

    let spec = api.spec.clone();
    let mut protected = 0;
    for (template, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let public = op.get("security") == Some(&json!([]));
            let path = template
                .replace("{id}", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
                .replace("{index}", "0")
                .replace("{email}", "nobody@example.com");
            let body = op.get("requestBody").map(|_| json!({}));
            for token in [None, Some("wrong-token-0123456789abcdef"), Some("")] {
                let r = api
                    .with_token(token)
                    .call(&method, &path, body.as_ref())
                    .await;
                if public {
                    // /readyz answers 503 when a check fails (the test machine may have no
                    // reachable nameserver), the MTA-STS policy 404 when none is configured;
                    // never 401.
                    let ready_or_not = path == "/readyz" && r.status == 503;
                    let no_policy = path == "/.well-known/mta-sts.txt" && r.status == 404;
                    assert!(
                        r.status == 200 || ready_or_not || no_policy,
                        "{method} {path} is public: {}",
                        r.status
                    );
                    continue;
                }
                assert_eq!(r.status, 401, "{method} {path} with token {token:?}");
                assert_eq!(r.error_code(), "unauthorized");
                let challenge = r.header("www-authenticate").unwrap_or_default();
                assert!(
                    challenge.starts_with("Bearer"),
                    "{method} {path}: {challenge:?}"
                );
            }
            if !public {
                protected += 1;
                // With the token the route answers for itself: it exists (not the fallback).
                let r = api.call(&method, &path, body.as_ref()).await;
                assert_ne!(r.status, 401, "{method} {path} with the right token");
                if r.status == 404 {
                    assert!(
                        !r.error_message().contains("endpoint"),
                        "{method} {path} is documented but not routed"
                    );
                }
            }
        }
    }
    assert_eq!(protected, 28, "protected operations in the document");

    // Other schemes and a token in the query do not count.
    let addr = srv.api_addr.unwrap();
    let basic = request(
        addr,
        "GET",
        "/v1/inboxes",
        &[("Authorization", "Basic dGVzdDp0ZXN0")],
        None,
    )
    .await;
    assert_eq!(basic.status, 401);
    let query = request(
        addr,
        "GET",
        &format!("/v1/inboxes?access_token={API_TOKEN}"),
        &[],
        None,
    )
    .await;
    assert_eq!(query.status, 401);
    let lower = request(
        addr,
        "GET",
        "/v1/inboxes",
        &[("Authorization", &format!("bearer {API_TOKEN}"))],
        None,
    )
    .await;
    assert_eq!(lower.status, 200, "the scheme name is case-insensitive");

    // Unknown paths and methods answer in the error shape.
    let r = api.get("/v2/nothing").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = api.call("DELETE", "/v1/messages", None).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (405, "method_not_allowed")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_configured_tokens_only_the_public_endpoints_answer() {
    let dir = TempDir::new("notok");
    let text =
        config_text(dir.path(), "").replace(&format!("tokens = [\"{API_TOKEN}\"]"), "tokens = []");
    assert!(text.contains("tokens = []"), "base config changed");
    let srv = TestServer::start_config(dir, inbound::config::parse(&text).unwrap()).await;
    let api = srv.api().await;
    let r = api.get("/v1/inboxes").await;
    assert_eq!(r.status, 401);
    assert!(
        r.error_message().contains("no tokens"),
        "{}",
        r.error_message()
    );
    assert_eq!(api.with_token(None).get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_cover_every_item_once() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let mut sent = Vec::new();
    for i in 0..7 {
        let from = format!("sender{i}@example.com");
        sent.push(
            send(
                &srv,
                DEMO,
                &from,
                &msg(&from, &format!("page {i}"), &format!("p{i}@x")),
            )
            .await,
        );
    }
    let (ids, sizes) = walk(&api, "/v1/messages", "id", 3).await;
    assert_eq!(ids, sent, "oldest first, no gap, no duplicate");
    assert_eq!(sizes, [3, 3, 1]);
    // An exact multiple ends with next_cursor null on the last full page.
    let (ids, sizes) = walk(&api, "/v1/messages", "id", 7).await;
    assert_eq!((ids.len(), sizes), (7, vec![7]));
    let all = api.ok("/v1/messages").await;
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        7,
        "default limit 50"
    );
    assert!(all["next_cursor"].is_null());

    let (convs, sizes) = walk(&api, "/v1/conversations", "id", 2).await;
    assert_eq!(sizes, [2, 2, 2, 1]);
    let mut unique = convs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 7);

    let (contacts, sizes) = walk(&api, "/v1/contacts", "email", 5).await;
    assert_eq!(sizes, [5, 2]);
    let want: Vec<String> = (0..7).map(|i| format!("sender{i}@example.com")).collect();
    assert_eq!(contacts, want, "by address");

    // A cursor belongs to its list.
    let page = api.ok("/v1/messages?limit=1").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let r = api.get(&format!("/v1/conversations?cursor={cursor}")).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().starts_with("cursor:"),
        "{}",
        r.error_message()
    );

    // One contact, any case, with its conversation.
    let c = api.ok("/v1/contacts/Sender3@Example.COM").await;
    assert_eq!(c["email"], "sender3@example.com");
    assert_eq!(c["conversation_count"], 1);
    assert_eq!(c["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(api.get("/v1/contacts/nobody@example.com").await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_select_by_inbox_status_and_assignee() {
    let srv = TestServer::start_with(PEOPLE).await;
    let api = srv.api().await;
    let mut demo = Vec::new();
    for i in 0..3 {
        demo.push(
            send(
                &srv,
                DEMO,
                "d@example.com",
                &msg("d@example.com", "demo", &format!("d{i}@x")),
            )
            .await,
        );
    }
    for i in 0..2 {
        send(
            &srv,
            SALES,
            "s@example.com",
            &msg("s@example.com", "sales", &format!("s{i}@x")),
        )
        .await;
    }
    let demo_msgs = api.ok("/v1/messages?inbox=demo").await;
    let ids: Vec<&str> = demo_msgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, demo);
    let sales = api.ok("/v1/conversations?inbox=sales").await;
    let sales = sales["items"].as_array().unwrap();
    assert_eq!(sales.len(), 2);
    assert!(sales.iter().all(|c| c["inbox"] == "sales"));
    // Sales conversations are assigned by the rule: alice, then bob.
    let by_alice = api.ok("/v1/conversations?assignee=alice").await;
    assert_eq!(by_alice["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_alice["items"][0]["assignee"], "alice");

    let first = routing(&api, &demo[0]).await["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api
        .post(&format!("/v1/conversations/{first}/close"), None)
        .await;
    assert_eq!(r.status, 200);
    let closed = api.ok("/v1/conversations?status=closed").await;
    assert_eq!(closed["items"].as_array().unwrap().len(), 1);
    assert_eq!(closed["items"][0]["id"], first.as_str());
    let open_demo = api.ok("/v1/conversations?status=open&inbox=demo").await;
    assert_eq!(open_demo["items"].as_array().unwrap().len(), 2);
    assert!(api.ok("/v1/conversations?assignee=carol").await["items"]
        .as_array()
        .unwrap()
        .is_empty());

    // The detail: messages, ticket (on by default) and contact.
    let detail = api.ok(&format!("/v1/conversations/{first}")).await;
    assert_eq!(detail["conversation"]["status"], "closed");
    assert_eq!(detail["messages"][0]["id"], demo[0].as_str());
    assert_eq!(
        detail["messages"][0]["attribution"]["email"],
        "d@example.com"
    );
    assert_eq!(detail["contact"]["email"], "d@example.com");
    assert!(detail["ticket"]["id"].as_str().unwrap().starts_with("T-"));
    assert_eq!(
        api.get("/v1/conversations/01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_400_that_names_the_field() {
    let srv = TestServer::start_with(PEOPLE).await;
    let api = srv.api().await;
    let id = send(
        &srv,
        DEMO,
        "a@example.com",
        &msg("a@example.com", "x", "bad@x"),
    )
    .await;
    let conv = routing(&api, &id).await["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    for (target, field) in [
        ("/v1/messages?limit=0", "limit"),
        ("/v1/messages?limit=501", "limit"),
        ("/v1/messages?limit=ten", "limit"),
        ("/v1/messages?cursor=zz", "cursor"),
        ("/v1/messages?quarantined=maybe", "quarantined"),
        ("/v1/messages?inbox=nope", "inbox"),
        ("/v1/messages?colour=blue", "colour"),
        ("/v1/messages?limit=1&limit=2", "limit"),
        ("/v1/conversations?status=pending", "status"),
        ("/v1/conversations?assignee=ghost", "assignee"),
        ("/v1/contacts?limit=-1", "limit"),
        ("/v1/quarantine?cursor=0", "cursor"),
        ("/v1/messages?since=yesterday", "since"),
        ("/v1/messages?until=2026-13-01T00:00:00Z", "until"),
        (
            "/v1/messages?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "until",
        ),
        ("/v1/messages?order=sideways", "order"),
        ("/v1/conversations?since=-5", "since"),
        ("/v1/conversations?order=newest-first", "order"),
    ] {
        let r = api.get(target).await;
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.error_code(), "invalid_parameter", "{target}");
        assert!(
            r.error_message().starts_with(&format!("{field}:")),
            "{target}: {}",
            r.error_message()
        );
    }
    let r = api
        .get(&format!("/v1/messages/{id}/attachments/first"))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().starts_with("index:"),
        "{}",
        r.error_message()
    );

    let assign = format!("/v1/conversations/{conv}/assign");
    for (body, field) in [
        (json!({}), "user"),
        (json!({"user": "ghost"}), "user"),
        (json!({"team": "nope"}), "team"),
        (json!({"user": 7}), "user"),
        (json!({"user": "carol", "team": "tier1"}), "user"),
        (json!({"user": "alice", "colour": "blue"}), "colour"),
    ] {
        let r = api.post(&assign, Some(&body)).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.error_code(), "invalid_body", "{body}");
        assert!(
            r.error_message().contains(field),
            "{body}: {}",
            r.error_message()
        );
    }
    let r = api.call_raw("POST", &assign, Some(b"{\"user\": ")).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_body"));
    let r = api.call_raw("POST", &assign, None).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_body"));
    let r = api
        .call(
            "PUT",
            "/v1/users/alice/availability",
            Some(&json!({"available": "yes"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("available"),
        "{}",
        r.error_message()
    );
    let r = api
        .call("PUT", "/v1/users/alice/availability", Some(&json!({})))
        .await;
    assert!(
        r.error_message().contains("available"),
        "{}",
        r.error_message()
    );
    let big = vec![b' '; 100 * 1024];
    let r = api
        .call_raw("PUT", "/v1/users/alice/availability", Some(&big))
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (413, "payload_too_large")
    );
    // Nothing changed.
    assert!(
        api.ok(&format!("/v1/conversations/{conv}")).await["conversation"]["assignee"].is_null()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_is_the_stored_message_byte_for_byte() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let small = b"From: A <a@example.com>\r\nSubject: raw\r\nMessage-ID: <raw@x>\r\n\r\n.leading dot\r\n..two dots\r\ntrailing space \r\n\tand a tab\r\n".to_vec();
    // Larger than store.inline_body_max_bytes (64 KiB): kept in a spool file.
    let mut large =
        b"From: A <a@example.com>\r\nSubject: big\r\nMessage-ID: <big@x>\r\n\r\n".to_vec();
    for i in 0..3000 {
        large.extend_from_slice(
            format!("line {i:05} of a large message, padded to length\r\n").as_bytes(),
        );
    }
    assert!(large.len() > 100 * 1024);
    for body in [small, large] {
        let id = send(&srv, DEMO, "a@example.com", &body).await;
        let r = api.get(&format!("/v1/messages/{id}/raw")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("message/rfc822"));
        let record = srv.ctx.store.get(&id).unwrap().unwrap();
        assert_eq!(r.body, srv.ctx.store.raw_message(&record).unwrap());
        assert_eq!(
            r.body,
            [record.trace_headers.as_bytes(), &body].concat(),
            "trace fields + the body as sent"
        );
        let detail = api.ok(&format!("/v1/messages/{id}")).await;
        assert_eq!(detail["sha256"], sha256(&body));
        assert_eq!(detail["size_bytes"], body.len());
        assert_eq!(detail["body"], "available");
    }
    assert_eq!(
        api.get("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV/raw")
            .await
            .status,
        404
    );
}

/// Base64 lines of 76 characters.
fn b64_lines(bytes: &[u8]) -> String {
    let text = inbound::util::base64(bytes);
    text.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn attachments_download_as_attached_and_expired_bodies_are_gone() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let pdf: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let text = "Grüße, 1 € — ünïcödé\r\n".repeat(20).into_bytes();
    let evil = b"x".to_vec();
    let body = format!(
        "From: A <a@example.com>\r\nTo: {DEMO}\r\nSubject: files\r\nMessage-ID: <files@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
--b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: attachment; filename=\"=?utf-8?q?Rechnung_M=C3=A4rz_=22Q1=22.txt?=\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
--b1\r\nContent-Type: text/html\r\nContent-Disposition: attachment; filename=\"=?utf-8?q?a=0D=0ASet-Cookie:_x=3D1.html?=\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
--b1--\r\n",
        b64_lines(&pdf),
        b64_lines(&text),
        b64_lines(&evil),
    );
    let id = send(&srv, DEMO, "a@example.com", body.as_bytes()).await;
    let detail = api.ok(&format!("/v1/messages/{id}")).await;
    let listed = detail["attachments"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{detail}");
    for (i, (a, bytes)) in listed.iter().zip([&pdf, &text, &evil]).enumerate() {
        assert_eq!(a["index"], i);
        let r = api.get(&format!("/v1/messages/{id}/attachments/{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.body, bytes, "attachment {i} as attached");
        assert_eq!(a["sha256"], sha256(bytes));
        assert_eq!(a["size_bytes"], bytes.len());
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(r
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\""));
    }
    let r = api.get(&format!("/v1/messages/{id}/attachments/0")).await;
    assert_eq!(r.header("content-type"), Some("application/pdf"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"report.pdf\"")
    );
    let r = api.get(&format!("/v1/messages/{id}/attachments/1")).await;
    assert_eq!(listed[1]["name"], "Rechnung März \"Q1\".txt");
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"Rechnung M_rz _Q1_.txt\"; filename*=UTF-8''Rechnung%20M%C3%A4rz%20%22Q1%22.txt")
    );
    // A file name with CR LF in it adds no header field.
    let r = api.get(&format!("/v1/messages/{id}/attachments/2")).await;
    assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);
    assert!(r
        .header("content-disposition")
        .unwrap()
        .contains("filename*=UTF-8''a%0D%0ASet-Cookie"));
    let r = api.get(&format!("/v1/messages/{id}/attachments/3")).await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));

    // Retention removes the body: the record stays, the bytes are gone.
    assert!(srv.ctx.store.expire_body(&id).unwrap());
    assert_eq!(
        api.ok(&format!("/v1/messages/{id}")).await["body"],
        "expired"
    );
    for target in [
        format!("/v1/messages/{id}/raw"),
        format!("/v1/messages/{id}/attachments/0"),
    ] {
        let r = api.get(&target).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (410, "body_expired"),
            "{target}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn assign_unassign_close_keep_open_counts_right() {
    let srv = TestServer::start_with(PEOPLE).await;
    let api = srv.api().await;
    let id = send(
        &srv,
        DEMO,
        "c@example.com",
        &msg("c@example.com", "help", "c1@x"),
    )
    .await;
    let conv = routing(&api, &id).await["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    let open = |u: &Value, who: &str| u[who]["open_conversations"].as_i64().unwrap();
    let u = users(&api).await;
    assert_eq!((open(&u, "alice"), open(&u, "bob")), (0, 0));
    assert_eq!(u["alice"]["name"], "Alice Agent");

    let assign = format!("/v1/conversations/{conv}/assign");
    let c = api
        .post(&assign, Some(&json!({"user": "alice"})))
        .await
        .json();
    assert_eq!(
        (c["assignee"].as_str(), c["team"].as_str()),
        (Some("alice"), None)
    );
    assert_eq!(open(&users(&api).await, "alice"), 1);

    let c = api
        .post(&assign, Some(&json!({"user": "bob", "team": "tier1"})))
        .await
        .json();
    assert_eq!(
        (c["assignee"].as_str(), c["team"].as_str()),
        (Some("bob"), Some("tier1"))
    );
    let u = users(&api).await;
    assert_eq!((open(&u, "alice"), open(&u, "bob")), (0, 1));

    let c = api
        .post(&assign, Some(&json!({"team": "tier1"})))
        .await
        .json();
    assert_eq!(
        (c["assignee"].as_str(), c["team"].as_str()),
        (None, Some("tier1"))
    );
    assert_eq!(open(&users(&api).await, "bob"), 0);

    api.post(&assign, Some(&json!({"user": "alice"}))).await;
    let c = api
        .post(&format!("/v1/conversations/{conv}/close"), None)
        .await
        .json();
    assert_eq!(
        (c["status"].as_str(), c["assignee"].as_str()),
        (Some("closed"), Some("alice"))
    );
    assert_eq!(open(&users(&api).await, "alice"), 0);
    // Closing twice changes nothing (the count does not go below zero either).
    let again = api
        .post(&format!("/v1/conversations/{conv}/close"), None)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(open(&users(&api).await, "alice"), 0);
    // A closed conversation can change hands without counting as open.
    api.post(&assign, Some(&json!({"user": "bob"}))).await;
    assert_eq!(open(&users(&api).await, "bob"), 0);
    let c = api
        .post(&format!("/v1/conversations/{conv}/unassign"), None)
        .await
        .json();
    assert!(c["assignee"].is_null() && c["team"].is_null());
    let stored = srv.ctx.store.conversation(&conv).unwrap().unwrap();
    assert_eq!((stored.assignee, stored.status.as_str()), (None, "closed"));

    // An open one assigned, then unassigned.
    let id2 = send(
        &srv,
        DEMO,
        "c@example.com",
        &msg("c@example.com", "more", "c2@x"),
    )
    .await;
    let conv2 = routing(&api, &id2).await["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    api.post(
        &format!("/v1/conversations/{conv2}/assign"),
        Some(&json!({"user": "bob"})),
    )
    .await;
    assert_eq!(open(&users(&api).await, "bob"), 1);
    api.post(&format!("/v1/conversations/{conv2}/unassign"), None)
        .await;
    assert_eq!(open(&users(&api).await, "bob"), 0);

    let missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for action in ["assign", "unassign", "close"] {
        let r = api
            .post(
                &format!("/v1/conversations/{missing}/{action}"),
                Some(&json!({"user": "bob"})),
            )
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "not_found"),
            "{action}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn availability_set_through_the_api_steers_routing() {
    let srv = TestServer::start_with(PEOPLE).await;
    let api = srv.api().await;
    let u = users(&api).await;
    assert_eq!(u["carol"]["available"], false);
    assert!(u["carol"]["available_override"].is_null());

    let r = api
        .call(
            "PUT",
            "/v1/users/alice/availability",
            Some(&json!({"available": false})),
        )
        .await;
    assert_eq!(r.status, 200);
    let alice = r.json();
    assert_eq!(
        (
            &alice["available"],
            &alice["available_configured"],
            &alice["available_override"]
        ),
        (&json!(false), &json!(true), &json!(false))
    );
    // Stored where routing reads it.
    let stored = srv.ctx.store.view(|tx| tx.user_state("alice"));
    assert_eq!(stored.unwrap().and_then(|st| st.available), Some(false));

    // The sales rule is round robin over alice and bob: with alice away, bob gets both.
    for i in 0..2 {
        let id = send(
            &srv,
            SALES,
            "s@example.com",
            &msg("s@example.com", "q", &format!("av{i}@x")),
        )
        .await;
        assert_eq!(routing(&api, &id).await["assignee"], "bob", "message {i}");
    }
    assert_eq!(users(&api).await["bob"]["open_conversations"], 2);
    api.call(
        "PUT",
        "/v1/users/alice/availability",
        Some(&json!({"available": true})),
    )
    .await;
    let id = send(
        &srv,
        SALES,
        "s@example.com",
        &msg("s@example.com", "q", "av2@x"),
    )
    .await;
    assert_eq!(routing(&api, &id).await["assignee"], "alice");

    let r = api
        .call(
            "PUT",
            "/v1/users/nobody/availability",
            Some(&json!({"available": true})),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn inbox_state_and_confirm_shared_with_the_admin_socket() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let list = api.ok("/v1/inboxes").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["demo", "sales"]);
    assert_eq!(
        list["items"][0]["aliases"],
        json!(["help@demo.inbound.test"])
    );
    send(
        &srv,
        DEMO,
        "a@example.com",
        &msg("a@example.com", "hi", "in1@x"),
    )
    .await;
    let demo = api.ok("/v1/inboxes/demo").await;
    assert_eq!(demo["state"], "pending");
    assert_eq!(demo["message_count"], 1);
    assert_eq!(demo["forwarding_address"], DEMO);

    let r = api.post("/v1/inboxes/demo/confirm", None).await;
    assert_eq!(r.status, 200);
    let confirmed = r.json();
    assert_eq!(confirmed["state"], "connected");
    assert_eq!(confirmed["evidence"], "confirmed by an operator");
    let at = confirmed["connected_at_ms"].as_u64().unwrap();
    let again = api.post("/v1/inboxes/demo/confirm", None).await.json();
    assert_eq!(
        again["connected_at_ms"].as_u64(),
        Some(at),
        "confirming twice changes nothing"
    );
    assert_eq!(api.ok("/v1/inboxes/demo").await["state"], "connected");
    assert_eq!(
        srv.ctx
            .store
            .inbox_state("demo")
            .unwrap()
            .unwrap()
            .state
            .as_str(),
        "connected"
    );

    // The admin socket (what `inbound inboxes confirm` uses) runs the same action.
    let req = inbound::server::admin::Request::InboxConfirm {
        id: "sales".into(),
        address: SALES.into(),
    };
    let (resp, _) = inbound::server::admin::execute(&srv.ctx.store, &srv.ctx.config(), &req);
    assert!(resp.ok, "{resp:?}");
    let sales = api.ok("/v1/inboxes/sales").await;
    assert_eq!(
        (sales["state"].as_str(), sales["evidence"].as_str()),
        (Some("connected"), Some("confirmed by an operator"))
    );

    assert_eq!(api.get("/v1/inboxes/nope").await.status, 404);
    assert_eq!(api.post("/v1/inboxes/nope/confirm", None).await.status, 404);
}

/// Deliver through the PROXY listener as `ip` (the address every check sees).
async fn deliver_as(srv: &TestServer, ip: &str, mail_from: &str, body: &[u8]) -> String {
    let mut c = srv.connect().await;
    c.timeout = Duration::from_secs(30);
    c.send_raw(format!("PROXY TCP4 {ip} 127.0.0.1 40000 25\r\n").as_bytes())
        .await;
    c.hello().await;
    let r = c.send_message(mail_from, &[DEMO], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    r.last_word()
}

#[tokio::test(flavor = "multi_thread")]
async fn quarantine_lists_releases_and_deletes() {
    let dns = TestDns::start().await;
    dns.add_txt("good.example", "v=spf1 ip4:192.0.2.10 -all");
    dns.add_txt("plain.example", "v=spf1 -all");
    let dir = TempDir::new("apiq");
    // Every client is checked. plain.example authorises no host and has no DMARC policy: its mail
    // fails SPF without DKIM, is unauthenticated, and is quarantined (the default of
    // auth.on_unauthenticated).
    let text = format!(
        r#"
[server]
hostname = "mx.inbound.test"
data_dir = "{data}"
shutdown_timeout = "5s"

[[listener]]
addr = "127.0.0.1:0"
proxy_protocol = true
trusted_proxies = ["127.0.0.1"]

[dns]
nameservers = ["{dns}"]
timeout = "1500ms"
attempts = 1

[api]
tokens = ["{API_TOKEN}"]

[[inbox]]
id = "demo"
address = "{DEMO}"
"#,
        data = dir.path().display(),
        dns = dns.addr(),
    );
    let srv = TestServer::start_config(dir, inbound::config::parse(&text).unwrap()).await;
    let api = srv.api().await;
    let good = deliver_as(
        &srv,
        "192.0.2.10",
        "x@good.example",
        &msg("x@good.example", "fine", "ok@x"),
    )
    .await;
    let mut held = Vec::new();
    for i in 0..3 {
        let from = "bob@plain.example";
        held.push(
            deliver_as(
                &srv,
                "203.0.113.9",
                from,
                &msg(from, "held", &format!("q{i}@x")),
            )
            .await,
        );
    }
    let listed = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        listed(&api.ok("/v1/messages").await),
        vec![good.clone()],
        "quarantined mail is left out"
    );
    assert_eq!(
        listed(&api.ok("/v1/messages?quarantined=true").await).len(),
        4
    );
    let (ids, sizes) = walk(&api, "/v1/quarantine", "id", 2).await;
    assert_eq!((ids, sizes), (held.clone(), vec![2, 1]));
    let q = api.ok(&format!("/v1/messages/{}", held[0])).await;
    assert_eq!(q["quarantined"], true);
    assert_eq!(q["auth"]["verdict"], "quarantine");
    assert!(q["routing"].as_array().unwrap().is_empty());
    assert_eq!(
        api.ok("/v1/conversations").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Release: routed as if it had just arrived.
    let r = api
        .post(&format!("/v1/quarantine/{}/release", held[0]), None)
        .await;
    assert_eq!(r.status, 200);
    let released = r.json();
    assert_eq!(released["quarantined"], false);
    assert_eq!(released["routing"][0]["inbox"], "demo");
    assert_eq!(
        api.ok("/v1/conversations").await["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for id in [&held[0], &good] {
        let r = api
            .post(&format!("/v1/quarantine/{id}/release"), None)
            .await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (409, "conflict"),
            "{id}"
        );
    }

    // Delete: only what is quarantined.
    let r = api
        .call("DELETE", &format!("/v1/quarantine/{}", held[1]), None)
        .await;
    assert_eq!(r.status, 204);
    assert!(srv.ctx.store.get(&held[1]).unwrap().is_none());
    assert_eq!(
        api.get(&format!("/v1/messages/{}", held[1])).await.status,
        404
    );
    let r = api
        .call("DELETE", &format!("/v1/quarantine/{}", held[1]), None)
        .await;
    assert_eq!(r.status, 404);
    for id in [&good, &held[0]] {
        let r = api
            .call("DELETE", &format!("/v1/quarantine/{id}"), None)
            .await;
        assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));
        assert!(srv.ctx.store.get(id).unwrap().is_some(), "not deleted");
    }

    // A quarantined message whose body expired cannot be released.
    assert!(srv.ctx.store.expire_body(&held[2]).unwrap());
    let r = api
        .post(&format!("/v1/quarantine/{}/release", held[2]), None)
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (410, "body_expired"));
    assert_eq!(
        listed(&api.ok("/v1/quarantine").await),
        vec![held[2].clone()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_complete_and_the_validator_rejects_wrong_answers() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let doc = &api.spec;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    assert!(all.len() > 50);
    for r in &all {
        schema::resolve(doc, r).unwrap_or_else(|e| panic!("{e}"));
    }
    // Every operation: a success, 401 unless public, its path parameters declared.
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{method} {template}"
            );
            if op.get("security") != Some(&json!([])) {
                assert!(responses.contains_key("401"), "{method} {template}");
            }
            let params: Vec<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let p = match p.get("$ref") {
                                Some(r) => schema::resolve(doc, r.as_str().unwrap()).unwrap(),
                                None => p,
                            };
                            p["name"].as_str().unwrap().to_string()
                        })
                        .collect()
                })
                .unwrap_or_default();
            for seg in template.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(['{', '}']);
                assert!(
                    params.iter().any(|p| p == name),
                    "{method} {template}: {name} undeclared"
                );
            }
        }
    }

    // The validator fails on answers that do not match.
    let s = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let check = |name: &str, v: Value| schema::validate(doc, &s(name), &v, "$");
    assert!(check("Health", json!({"status": "ok"})).is_ok());
    assert!(check("Health", json!({"status": "fine"})).is_err(), "enum");
    assert!(
        check("Health", json!({"status": "ok", "extra": 1})).is_err(),
        "undocumented property"
    );
    assert!(
        check("Error", json!({"error": {"code": "x"}})).is_err(),
        "required"
    );
    assert!(
        check("MessagePage", json!({"items": [], "next_cursor": 5})).is_err(),
        "type"
    );
    assert!(
        check("MessagePage", json!({"items": [], "next_cursor": null})).is_ok(),
        "nullable"
    );
    assert!(
        check(
            "MessagePage",
            json!({"items": [{"id": "x"}], "next_cursor": null})
        )
        .is_err(),
        "items"
    );
    assert!(
        check("UserList", json!({"items": null})).is_err(),
        "not nullable"
    );

    // A real answer passes, and the same answer with one field of the wrong type does not.
    let id = send(
        &srv,
        DEMO,
        "a@example.com",
        &msg("a@example.com", "schema", "sc@x"),
    )
    .await;
    let mut detail = api.ok(&format!("/v1/messages/{id}")).await;
    assert!(check("MessageDetail", detail.clone()).is_ok());
    detail["routing"][0]["thread"] = json!("sideways");
    assert!(check("MessageDetail", detail.clone()).is_err());
    detail["routing"][0]["thread"] = json!("new");
    detail["attribution"]["method"] = json!(null);
    assert!(check("MessageDetail", detail).is_err());
    // And every list endpoint once more, with content.
    for target in [
        "/v1/messages",
        "/v1/conversations",
        "/v1/contacts",
        "/v1/quarantine",
        "/v1/inboxes",
        "/v1/users",
    ] {
        api.ok(target).await;
    }
    let conv = routing(&api, &id).await["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok(&format!("/v1/conversations/{conv}")).await;
    api.ok("/v1/contacts/a@example.com").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_stops_with_the_server() {
    let srv = TestServer::start().await;
    let addr = srv.api_addr.unwrap();
    // An idle keep-alive connection must not hold up shutdown.
    let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let _dir = srv.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "stop took {:?}",
        started.elapsed()
    );
    drop(idle);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the API port is closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_replaces_the_tokens_at_once() {
    let dir = TempDir::new("apirl");
    let file = dir.path().join("inbound.toml");
    std::fs::write(&file, config_text(dir.path(), "")).unwrap();
    let srv = TestServer::start_file(dir, &file).await;
    let api = srv.api().await;
    assert_eq!(api.get("/v1/inboxes").await.status, 200);
    let new_token = "rotated-token-0123456789abcdef";
    let text = config_text(srv.dir.path(), "").replace(API_TOKEN, new_token);
    std::fs::write(&file, text).unwrap();
    let ctx = srv.ctx.clone();
    let summary = tokio::task::spawn_blocking(move || ctx.reload())
        .await
        .unwrap()
        .expect("reload");
    assert!(
        summary.changed.iter().any(|c| c == "api.tokens"),
        "{summary:?}"
    );
    assert_eq!(api.get("/v1/inboxes").await.status, 401, "the old token");
    let rotated = api.with_token(Some(new_token));
    assert_eq!(
        rotated.get("/v1/inboxes").await.status,
        200,
        "the new token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_metrics_and_reload_over_http() {
    // A loopback DNS server, so the readiness check has a nameserver that answers.
    let dns = support::dns::TestDns::start().await;
    let dir = TempDir::new("apiops");
    let file = dir.path().join("inbound.toml");
    let dns_block = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\nattempts = 1\n",
        dns.addr()
    );
    std::fs::write(&file, config_text(dir.path(), &dns_block)).unwrap();
    let srv = TestServer::start_file(dir, &file).await;
    let api = srv.api().await;

    let r = api.with_token(None).get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.json());
    let j = r.json();
    assert_eq!(j["ready"], true);
    assert_eq!(j["store_writable"], true);
    assert_eq!(j["listeners_up"], true);
    assert_eq!(j["dns_reachable"], true);

    // Traffic shows in the metrics.
    let mut c = srv.connect().await;
    c.hello().await;
    let rep = c
        .send_message(
            "a@customer.example",
            &["support@demo.inbound.test"],
            &message("m"),
        )
        .await;
    assert_eq!(rep.code, 250);
    assert_eq!(api.with_token(None).get("/metrics").await.status, 401);
    let m = api.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(m.body.clone()).unwrap();
    let accepted = text
        .lines()
        .find(|l| l.starts_with("inbound_messages_accepted_total"))
        .unwrap_or_else(|| panic!("no accepted counter in:\n{text}"));
    assert!(accepted.ends_with(" 1"), "{accepted}");
    assert!(text.contains("inbound_outbox_depth"), "{text}");

    // Reload: an invalid file is refused (422) and the old config keeps serving; a valid one
    // with a new inbox applies.
    std::fs::write(&file, "[[listener]]\naddr = 7\n").unwrap();
    let r = api.post("/admin/reload", None).await;
    assert_eq!(r.status, 422, "{}", r.json());
    assert_eq!(r.error_code(), "config_invalid");
    assert!(
        r.error_message().contains("listener[0]"),
        "{}",
        r.error_message()
    );
    let extra =
        format!("{dns_block}\n[[inbox]]\nid = \"late\"\naddress = \"late@demo.inbound.test\"\n");
    std::fs::write(&file, config_text(srv.dir.path(), &extra)).unwrap();
    let r = api.post("/admin/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["inboxes_added"], json!(["late"]));
    let rep = c
        .send_message(
            "a@customer.example",
            &["late@demo.inbound.test"],
            &message("late"),
        )
        .await;
    assert_eq!(rep.code, 250, "the new inbox takes mail");
    srv.stop().await;
}

/// Issue #11: a request header that never completes is closed after `api.header_read_timeout`,
/// an idle keep-alive connection too, and connections past `api.max_connections` at once.
#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_and_idle_connections_are_closed_and_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("apifd");
    let text = config_text(dir.path(), "").replace(
        "[api]\n",
        "[api]\nheader_read_timeout = \"1s\"\nmax_connections = 4\n",
    );
    let srv = TestServer::start_config(dir, inbound::config::parse(&text).unwrap()).await;
    let addr = srv.api_addr.unwrap();
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), half.read_to_end(&mut buf))
        .await
        .expect("a half-sent request is closed by the header read timeout");
    assert!(n.is_ok());
    // Cap: four held connections, the fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut b = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), fifth.read_to_end(&mut b))
        .await
        .expect("the connection past the cap is closed at once");
    assert!(
        r.is_err() || b.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&b)
    );
    // The idle keep-alive connections are closed by the header read timeout as well, and then
    // the API serves again.
    for mut s in held {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("an idle keep-alive connection is closed")
            .ok();
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 12];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"HTTP/1.1 200");
    srv.stop().await;
}

/// Issue #16: the MTA-STS policy for the hosted domains, over real HTTP and without a token,
/// with the configured mode and the server's hostname as the MX; 404 when not configured.
#[tokio::test(flavor = "multi_thread")]
async fn mta_sts_policy_is_served_with_the_configured_mode() {
    let dir = TempDir::new("mtasts");
    let text = config_text(dir.path(), "").replace("[api]\n", "[api]\nmta_sts = \"enforce\"\n");
    assert!(text.contains("mta_sts = \"enforce\""));
    let srv = TestServer::start_config(dir, inbound::config::parse(&text).unwrap()).await;
    let api = srv.api().await.with_token(None);
    let r = api.get("/.well-known/mta-sts.txt").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(
        String::from_utf8(r.body.clone()).unwrap(),
        "version: STSv1\r\nmode: enforce\r\nmx: mx.test.example\r\nmax_age: 604800\r\n"
    );
    srv.stop().await;

    let srv = TestServer::start().await;
    let r = srv
        .api()
        .await
        .with_token(None)
        .get("/.well-known/mta-sts.txt")
        .await;
    assert_eq!(r.status, 404);
    srv.stop().await;
    let e = inbound::config::parse(
        &config_text(std::path::Path::new("/tmp/x"), "")
            .replace("[api]\n", "[api]\nmta_sts = \"strict\"\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("api.mta_sts"), "{e}");
}

/// Issue #15: lists newest first on request, and bounded in time by `since` and `until` (RFC 3339
/// or Unix milliseconds, the two forms the answers give), paging without gap or duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn lists_go_newest_first_and_filter_by_time() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let from = format!("t{i}@example.com");
        sent.push(
            send(
                &srv,
                DEMO,
                &from,
                &msg(&from, &format!("time {i}"), &format!("t{i}@x")),
            )
            .await,
        );
    }
    let newest: Vec<String> = sent.iter().rev().cloned().collect();
    let (ids, sizes) = walk(&api, "/v1/messages?order=newest", "id", 2).await;
    assert_eq!((ids, sizes), (newest.clone(), vec![2, 2, 1]));
    let (ids, _) = walk(&api, "/v1/messages?order=oldest", "id", 2).await;
    assert_eq!(ids, sent);

    let at = |m: &Value| m["received_at_ms"].as_u64().unwrap();
    let all = api.ok("/v1/messages").await["items"]
        .as_array()
        .unwrap()
        .clone();
    let (t1, t3) = (at(&all[1]), at(&all[3]));
    // Both bounds are inclusive; distinct messages may share a millisecond, so compare with
    // what the records say rather than with positions.
    let want = |f: &dyn Fn(u64) -> bool, rev: bool| -> Vec<String> {
        let mut v: Vec<String> = all
            .iter()
            .filter(|m| f(at(m)))
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        if rev {
            v.reverse();
        }
        v
    };
    for order in ["oldest", "newest"] {
        let rev = order == "newest";
        let base = format!("/v1/messages?order={order}&since={t1}&until={t3}");
        let (ids, _) = walk(&api, &base, "id", 1).await;
        assert_eq!(ids, want(&|t| (t1..=t3).contains(&t), rev), "{base}");
        let base = format!("/v1/messages?order={order}&since={t3}");
        assert_eq!(walk(&api, &base, "id", 2).await.0, want(&|t| t >= t3, rev));
        let base = format!("/v1/messages?order={order}&until={t1}");
        assert_eq!(walk(&api, &base, "id", 2).await.0, want(&|t| t <= t1, rev));
    }
    // RFC 3339, any offset.
    let r = api.ok("/v1/messages?since=2000-01-01T00:00:00Z").await;
    assert_eq!(r["items"].as_array().unwrap().len(), 5);
    let r = api
        .ok("/v1/messages?until=2000-01-01T01:00:00%2B01:00")
        .await;
    assert!(r["items"].as_array().unwrap().is_empty());
    assert!(r["next_cursor"].is_null());
    let first = &all[0]["received_at"];
    assert_eq!(first.as_str().unwrap().len(), 20, "{first}");

    // Conversations: by creation, newest first on request.
    let (convs, _) = walk(&api, "/v1/conversations?order=newest", "id", 2).await;
    let (oldest, _) = walk(&api, "/v1/conversations", "id", 2).await;
    assert_eq!(convs.len(), 5);
    assert_eq!(convs, oldest.iter().rev().cloned().collect::<Vec<_>>());
    let c = api.ok("/v1/conversations?order=newest&limit=1").await["items"][0].clone();
    let since = c["created_at_ms"].as_u64().unwrap();
    let (recent, _) = walk(&api, &format!("/v1/conversations?since={since}"), "id", 2).await;
    assert!(recent.contains(&c["id"].as_str().unwrap().to_string()));
    assert!(recent.len() < 5 || at(&all[0]) == since, "{recent:?}");
    srv.stop().await;
}

/// Issue #15: the served document is valid OpenAPI 3.0 by a validator we did not write
/// (openapi-spec-validator; tests/run.sh installs it), and strict: every answer schema closes its
/// objects and lists each property as required (absent values are `null`, never missing keys).
#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_passes_openapi_spec_validator_and_is_strict() {
    let srv = TestServer::start().await;
    let api = srv.api().await;
    let served = api.with_token(None).get("/openapi.json").await;
    assert_eq!(served.status, 200);
    let body = served.body.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import json, sys\n\
                 from openapi_spec_validator import validate\n\
                 validate(json.load(sys.stdin))\n\
                 print('valid')",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (tests/run.sh installs it)");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&body).unwrap();
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success() && out.stdout.starts_with(b"valid"),
        "openapi-spec-validator (pip install openapi-spec-validator; tests/run.sh does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let spec = &api.spec;
    for (name, schema) in spec["components"]["schemas"].as_object().unwrap() {
        let Some(props) = schema["properties"].as_object() else {
            continue;
        };
        if name.ends_with("Request") {
            continue; // request bodies: optional fields are allowed there
        }
        assert_eq!(
            schema["additionalProperties"],
            json!(false),
            "{name}: objects are closed"
        );
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        for p in props.keys() {
            assert!(
                required.contains(&p.as_str()),
                "{name}.{p}: not required (absent values are null, not missing keys)"
            );
        }
        // The time vocabulary: an `_ms` time has its RFC 3339 twin, and the other way round.
        for p in props.keys() {
            if let Some(base) = p.strip_suffix("_ms") {
                assert!(props.contains_key(base), "{name}.{p} without {base}");
            }
            if props[p]["format"] == "date-time" && p != "date" {
                assert!(
                    props.contains_key(&format!("{p}_ms")),
                    "{name}.{p} without _ms"
                );
            }
        }
    }
    srv.stop().await;
}
