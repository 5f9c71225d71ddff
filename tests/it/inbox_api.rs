//! Self-service inboxes over real HTTP and SMTP on loopback (#15): a team creates its inbox
//! through the API, customises the address, sees Gmail's confirmation code, connects by
//! forwarding, finishes, and the address stays locked across a restart and a reload; the
//! config file's inboxes are read-only and clashes are named; bad input is refused naming the
//! field with nothing written; every inbox event reaches a real webhook receiver, signed.
use crate::support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::sink::{HttpRequest, HttpSink};
use support::*;

const SECRET: &str = "whsec-test-0123456789abcdef";

fn config(data: &Path, webhook_port: u16, extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "mx.test.example"
data_dir = "{data}"
shutdown_timeout = "5s"
hosted_domain = "inbound.test"

[[listener]]
addr = "127.0.0.1:0"

[api]
listen = "127.0.0.1:0"
tokens = ["{token}"]

[auth]
trusted_networks = ["127.0.0.0/8"]

[outbox]
retry_initial = "100ms"
retry_max = "300ms"
poll_interval = "50ms"

[[webhook]]
id = "app"
url = "http://127.0.0.1:{webhook_port}/hooks"
secret = "{SECRET}"
events = ["inbox.created", "inbox.updated", "inbox.connected", "inbox.retired", "conversation.created"]

[[user]]
id = "alice"
email = "alice@acme.example"

[[inbox]]
id = "demo"
address = "support@demo.inbound.test"
from_name = "Demo Support"
{extra}
"#,
        data = data.display(),
        token = API_TOKEN,
    )
}

async fn start(dir: TempDir, port: u16, extra: &str) -> TestServer {
    let file = dir.path().join("inbound.toml");
    std::fs::write(&file, config(dir.path(), port, extra)).unwrap();
    TestServer::start_file(dir, &file).await
}

async fn rcpt(srv: &TestServer, to: &str) -> u16 {
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<carol@customer.example>", "250").await;
    c.send(&format!("RCPT TO:<{to}>")).await;
    c.read_reply().await.expect("a reply").code
}

async fn send(srv: &TestServer, from: &str, to: &str, body: &[u8]) -> String {
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c.send_message(from, &[to], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    r.last_word()
}

fn verify_signed(r: &HttpRequest) -> Value {
    let sig = r.header("inbound-signature").expect("signature header");
    let (t, v1) = sig
        .split_once(',')
        .map(|(t, v)| (t.trim_start_matches("t="), v.trim_start_matches("v1=")))
        .expect("t=..,v1=..");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let expected: Vec<u8> = (0..v1.len() / 2)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    ring::hmac::verify(&key, &signed, &expected).expect("signature verifies");
    serde_json::from_slice(&r.body).unwrap()
}

const ADDRESS: &str = "support@acme.inbound.test";

fn text(r: &support::http::HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_onboards_through_the_api_across_a_restart_and_a_reload() {
    let sink = HttpSink::start_on(0, &[]).await;
    let port = sink.addr.port();
    let srv = start(TempDir::new("inbox-api"), port, "").await;
    let api = srv.api().await;
    assert_eq!(rcpt(&srv, ADDRESS).await, 550, "no such inbox yet");

    // 1. Create: the address comes from the tenant and local part.
    let r = api
        .call(
            "POST",
            "/v1/inboxes",
            Some(&json!({
                "id": "acme", "tenant": "acme", "local": "help",
                "connected_address": "jane.doe@gmail.com",
                "from_name": "ACME Support", "from_name_mode": "agent_and_company",
                "signature": "{first_name} from ACME",
                "auto_assign": { "users": ["alice"] },
                "tickets": { "enabled": true, "pipeline": "support", "priority": "high" },
                "admins": ["alice"],
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let v = r.json();
    assert_eq!(v["address"], "help@acme.inbound.test");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["source"], "api");
    assert_eq!(v["locked"], false);
    assert_eq!(v["tickets"]["priority"], "high");
    assert_eq!(v["auto_assign"]["users"], json!(["alice"]));
    assert_eq!(
        rcpt(&srv, "help@acme.inbound.test").await,
        250,
        "the running server takes mail for it at once"
    );

    // 2. While pending the address may change.
    let r = api
        .call(
            "PATCH",
            "/v1/inboxes/acme",
            Some(&json!({ "local": "support" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["address"], ADDRESS);
    assert_eq!(rcpt(&srv, ADDRESS).await, 250);
    assert_eq!(rcpt(&srv, "help@acme.inbound.test").await, 550);

    // 3. Gmail's confirmation arrives over SMTP: its code shows on the inbox, and it is setup
    //    mail, not a customer: no conversation, no contact.
    let confirmation = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/verification/gmail_forwarding_confirmation_en.eml"),
    )
    .unwrap();
    send(
        &srv,
        "forwarding-noreply@google.com",
        ADDRESS,
        &confirmation,
    )
    .await;
    let v = api.ok("/v1/inboxes/acme").await;
    assert_eq!(v["latest_verification"]["code"], "418297350");
    assert_eq!(v["state"], "pending");
    assert_eq!(
        api.get("/v1/contacts/forwarding-noreply@google.com")
            .await
            .status,
        404
    );
    let convs = api.ok("/v1/conversations?inbox=acme").await;
    assert_eq!(convs["items"].as_array().unwrap().len(), 0, "{convs}");

    // 4. The team's first forwarded message connects it, and is assigned by auto_assign.
    let forwarded = format!(
        "X-Forwarded-For: jane.doe@gmail.com {ADDRESS}\r\nX-Forwarded-To: {ADDRESS}\r\n\
         From: Carol <carol@customer.example>\r\nTo: jane.doe@gmail.com\r\n\
         Subject: where is my order\r\nMessage-ID: <f1@customer.example>\r\n\r\nHello\r\n"
    );
    let qid = send(
        &srv,
        "jane.doe+caf_=support=acme.inbound.test@gmail.com",
        ADDRESS,
        forwarded.as_bytes(),
    )
    .await;
    let v = api.ok("/v1/inboxes/acme").await;
    assert_eq!(v["state"], "connected", "{v}");
    assert_eq!(v["locked"], true);
    let m = api.ok(&format!("/v1/messages/{qid}")).await;
    assert_eq!(m["routing"][0]["assignee"], "alice", "{m}");

    // 5. Connect & finish; a change of address is refused with the config lock's explanation.
    let r = api.post("/v1/inboxes/acme/finish", None).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = r.json();
    assert!(v["finished_at_ms"].is_u64(), "{v}");
    let r = api
        .call(
            "PATCH",
            "/v1/inboxes/acme",
            Some(&json!({ "local": "other" })),
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(
        r.error_message().contains("which is connected")
            && r.error_message().contains("To migrate"),
        "{}",
        r.error_message()
    );
    // Other settings still change.
    let r = api
        .call(
            "PATCH",
            "/v1/inboxes/acme",
            Some(&json!({ "name": "ACME" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));

    // 6. A restart keeps it, with its state, in force.
    let dir = srv.stop().await;
    let srv = start(dir, port, "").await;
    let api = srv.api().await;
    let v = api.ok("/v1/inboxes/acme").await;
    assert_eq!(
        (v["state"].as_str(), v["name"].as_str()),
        (Some("connected"), Some("ACME"))
    );
    assert_eq!(rcpt(&srv, ADDRESS).await, 250);

    // 7. A reload keeps it; a file that clashes with it is refused, naming the file's key.
    srv.ctx.reload().expect("reload");
    assert_eq!(rcpt(&srv, ADDRESS).await, 250);
    let file = srv.dir.path().join("inbound.toml");
    std::fs::write(
        &file,
        config(
            srv.dir.path(),
            port,
            &format!("[[inbox]]\nid = \"acme-file\"\naddress = \"{ADDRESS}\"\n"),
        ),
    )
    .unwrap();
    let err = srv.ctx.reload().expect_err("clash refused").to_string();
    assert!(
        err.contains("inbox[1].address") && err.contains("/v1/inboxes/acme"),
        "{err}"
    );
    std::fs::write(&file, config(srv.dir.path(), port, "")).unwrap();

    // 8. Retire: mail is refused, and the address is never handed to another inbox.
    let r = api.call("DELETE", "/v1/inboxes/acme", None).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["state"], "retired");
    assert_eq!(rcpt(&srv, ADDRESS).await, 550);
    let r = api
        .call(
            "POST",
            "/v1/inboxes",
            Some(&json!({ "id": "acme2", "address": ADDRESS })),
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(
        r.error_message().contains("acme") && r.error_message().contains("retired"),
        "{}",
        r.error_message()
    );
    let list = api.ok("/v1/inboxes").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["demo", "acme"]);

    // 9. Every change was announced, signed: created, updated (address), connected, updated
    //    (finished), updated (name), retired; and no conversation.created for the confirmation.
    let got = sink.wait_accepted(6, Duration::from_secs(30)).await;
    let events: Vec<(String, Value)> = got
        .iter()
        .map(|r| {
            let v = verify_signed(r);
            (v["type"].as_str().unwrap().to_string(), v["data"].clone())
        })
        .collect();
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    for want in [
        "inbox.created",
        "inbox.updated",
        "inbox.connected",
        "inbox.retired",
    ] {
        assert!(types.contains(&want), "{want} missing from {types:?}");
    }
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "conversation.created")
            .count(),
        1,
        "only the customer's message opened one: {types:?}"
    );
    let finished = events
        .iter()
        .any(|(t, d)| t == "inbox.updated" && d["changes"] == json!(["finished"]));
    assert!(finished, "{events:?}");
    sink.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inbox_input_is_refused_naming_the_field_and_nothing_is_written() {
    let sink = HttpSink::start_on(0, &[]).await;
    let srv = start(TempDir::new("inbox-api-bad"), sink.addr.port(), "").await;
    let api = srv.api().await;
    let post = |body: Value| {
        let api = &api;
        async move { api.call("POST", "/v1/inboxes", Some(&body)).await }
    };
    for (body, status, needle) in [
        (
            json!({ "id": "x", "tenant": "x", "colour": "blue" }),
            400,
            "colour",
        ),
        (
            json!({ "id": "x", "tenant": "x", "tickets": 5 }),
            400,
            "tickets",
        ),
        (json!({ "id": 5, "tenant": "x" }), 400, "id"),
        (json!({ "id": "x" }), 400, "address"),
        (json!({ "id": "bad id", "tenant": "x" }), 400, "id"),
        (
            json!({ "id": "x", "address": "support@demo.inbound.test" }),
            409,
            "address",
        ),
        (json!({ "id": "demo", "tenant": "x" }), 409, "config file"),
        (
            json!({ "id": "x", "tenant": "x", "from_name": "demo support" }),
            409,
            "from_name",
        ),
        (
            json!({ "id": "x", "address": "help@elsewhere.example" }),
            400,
            "not a domain hosted here",
        ),
        (
            json!({ "id": "x", "tenant": "x", "rule": [{ "assign": { "users": ["nobody"] } }] }),
            400,
            "rule[0].assign.users[0]",
        ),
        (
            json!({ "id": "x", "tenant": "x", "signature": "{firstname}" }),
            400,
            "signature",
        ),
        (
            json!({ "id": "x", "tenant": "x", "from_name_mode": "agent" }),
            400,
            "from_name_mode",
        ),
    ] {
        let r = post(body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", text(&r));
        assert!(
            r.error_message().contains(needle),
            "{body}: {}",
            r.error_message()
        );
    }
    let huge = format!(
        "{{\"id\":\"x\",\"tenant\":\"x\",\"name\":\"{}\"}}",
        "a".repeat(1 << 20)
    );
    let r = api
        .call_raw("POST", "/v1/inboxes", Some(huge.as_bytes()))
        .await;
    assert_eq!(r.status, 413);

    // The config file's inboxes are read-only.
    for (method, target) in [
        ("PATCH", "/v1/inboxes/demo"),
        ("DELETE", "/v1/inboxes/demo"),
        ("POST", "/v1/inboxes/demo/finish"),
    ] {
        let body = json!({ "name": "x" });
        let r = api
            .call(method, target, (method == "PATCH").then_some(&body))
            .await;
        assert_eq!(r.status, 409, "{method} {target}: {}", text(&r));
        assert!(
            r.error_message().contains("inbox[0]") && r.error_message().contains("read-only"),
            "{}",
            r.error_message()
        );
    }

    // An API inbox: a bad change is refused whole.
    let r = post(json!({ "id": "acme", "tenant": "acme" })).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let before = api.ok("/v1/inboxes/acme").await;
    for (body, status, needle) in [
        (
            json!({ "name": "n", "tickets": { "colour": 1 } }),
            400,
            "colour",
        ),
        (json!({ "id": "other" }), 400, "id"),
        (
            json!({ "name": "n", "address": "support@demo.inbound.test" }),
            409,
            "address",
        ),
        (
            json!({ "name": "n", "from_name": "Demo Support" }),
            409,
            "from_name",
        ),
    ] {
        let r = api.call("PATCH", "/v1/inboxes/acme", Some(&body)).await;
        assert_eq!(r.status, status, "{body}: {}", text(&r));
        assert!(
            r.error_message().contains(needle),
            "{body}: {}",
            r.error_message()
        );
    }
    assert_eq!(
        api.ok("/v1/inboxes/acme").await,
        before,
        "nothing half-written"
    );
    assert_eq!(api.get("/v1/inboxes/nope").await.status, 404);
    let defs = srv.ctx.store.inbox_definitions().unwrap();
    assert_eq!(defs.len(), 1, "only acme was ever stored");
    sink.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_names_a_clash_between_the_file_and_an_api_inbox() {
    let sink = HttpSink::start_on(0, &[]).await;
    let port = sink.addr.port();
    let srv = start(TempDir::new("inbox-api-check"), port, "").await;
    let api = srv.api().await;
    let r = api
        .call(
            "POST",
            "/v1/inboxes",
            Some(&json!({ "id": "acme", "tenant": "acme", "local": "support" })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let check = |extra: &str| {
        let file = srv.dir.path().join("candidate.toml");
        std::fs::write(&file, config(srv.dir.path(), port, extra)).unwrap();
        std::process::Command::new(crate::process::bin())
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap()
    };
    for (extra, key) in [
        (
            "[[inbox]]\nid = \"acme\"\naddress = \"x@acme.inbound.test\"\n".to_string(),
            "inbox[1].id",
        ),
        (
            format!("[[inbox]]\nid = \"file\"\naddress = \"{ADDRESS}\"\n"),
            "inbox[1].address",
        ),
    ] {
        let out = check(&extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(key) && err.contains("/v1/inboxes/acme"),
            "{err}"
        );
    }
    // Without a clash the file is fine, API inbox and all.
    let out = check("");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 inboxes"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    srv.stop().await;
    sink.stop();
}
