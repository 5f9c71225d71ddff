//! Users and teams as API resources over real HTTP and SMTP on loopback (#15): a team is made
//! through the API and mail is routed to it, they stay across a restart and a reload, the
//! config file's are read-only and clashes with the file are named (reload, check-config),
//! what an inbox or team still names cannot be deleted, bad input is refused naming the field
//! with nothing written, and every change reaches a real webhook receiver, signed.
use crate::inbox_api::{rcpt, send, text, verify_signed, SECRET};
use crate::support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::sink::HttpSink;
use support::*;

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
events = ["user.created", "user.updated", "user.deleted", "team.created", "team.updated", "team.deleted"]
inboxes = ["demo"]

[[user]]
id = "alice"
email = "alice@acme.example"

[[team]]
id = "desk"
members = ["alice"]

[[inbox]]
id = "demo"
address = "support@demo.inbound.test"
auto_assign = {{ teams = ["desk"] }}
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

const ADDRESS: &str = "acme@acme.inbound.test";

fn ids(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn users_and_teams_made_through_the_api_take_mail_across_a_restart_and_a_reload() {
    let sink = HttpSink::start_on(0, &[]).await;
    let port = sink.addr.port();
    let srv = start(TempDir::new("people-api"), port, "").await;
    let api = srv.api().await;

    // 1. A user, a team of them, and an inbox that auto-assigns to the team.
    let r = api
        .call(
            "POST",
            "/v1/users",
            Some(&json!({ "id": "bob", "name": "Bob", "email": "bob@acme.example" })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let v = r.json();
    assert_eq!(
        (v["source"].as_str(), v["available"].as_bool()),
        (Some("api"), Some(true)),
        "{v}"
    );
    let r = api
        .call(
            "POST",
            "/v1/teams",
            Some(&json!({ "id": "night", "name": "Night shift", "members": ["bob"] })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(
        r.json(),
        json!({ "id": "night", "name": "Night shift", "members": ["bob"], "source": "api" })
    );
    let r = api
        .call(
            "POST",
            "/v1/inboxes",
            Some(&json!({ "id": "acme", "tenant": "acme", "auto_assign": { "teams": ["night"] }, "admins": ["bob"] })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));

    // 2. Mail over SMTP is assigned to the API's user, through the API's team.
    let qid = send(
        &srv,
        "carol@customer.example",
        ADDRESS,
        b"From: Carol <carol@customer.example>\r\nTo: acme@acme.inbound.test\r\n\
          Subject: hello\r\nMessage-ID: <p1@customer.example>\r\n\r\nHello\r\n",
    )
    .await;
    let m = api.ok(&format!("/v1/messages/{qid}")).await;
    assert_eq!(
        (
            m["routing"][0]["assignee"].as_str(),
            m["routing"][0]["team"].as_str()
        ),
        (Some("bob"), Some("night")),
        "{m}"
    );
    assert_eq!(api.ok("/v1/users/bob").await["open_conversations"], 1);

    // 3. Changes.
    let r = api
        .call("PATCH", "/v1/users/bob", Some(&json!({ "name": "Robert" })))
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["name"], "Robert");
    let r = api
        .call(
            "PATCH",
            "/v1/teams/night",
            Some(&json!({ "members": ["bob", "alice"] })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json()["members"], json!(["bob", "alice"]));

    // 4. A restart keeps them, in force.
    let dir = srv.stop().await;
    let srv = start(dir, port, "").await;
    let api = srv.api().await;
    assert_eq!(api.ok("/v1/users/bob").await["name"], "Robert");
    assert_eq!(ids(&api.ok("/v1/users").await), ["alice", "bob"]);
    assert_eq!(ids(&api.ok("/v1/teams").await), ["desk", "night"]);
    assert_eq!(
        api.ok("/v1/teams/night").await["members"],
        json!(["bob", "alice"])
    );
    assert_eq!(rcpt(&srv, ADDRESS).await, 250);

    // 5. A reload keeps them; a file that clashes is refused by reload and check-config,
    //    naming the file's key and the API's.
    srv.ctx.reload().expect("reload");
    assert_eq!(api.ok("/v1/teams/night").await["source"], "api");
    let file = srv.dir.path().join("inbound.toml");
    let clash = "[[user]]\nid = \"bob\"\n";
    std::fs::write(&file, config(srv.dir.path(), port, clash)).unwrap();
    let err = srv.ctx.reload().expect_err("clash refused").to_string();
    assert!(
        err.contains("user[1].id") && err.contains("/v1/users/bob"),
        "{err}"
    );
    let out = std::process::Command::new(crate::process::bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("user[1].id") && stderr.contains("/v1/users/bob"),
        "{stderr}"
    );
    std::fs::write(&file, config(srv.dir.path(), port, "")).unwrap();
    srv.ctx.reload().expect("reload");
    assert_eq!(api.ok("/v1/users/bob").await["source"], "api");

    // 6. What an inbox or a team still names cannot go, and nothing changes.
    let r = api.call("DELETE", "/v1/teams/night", None).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(
        r.error_message()
            .contains("/v1/inboxes/acme.auto_assign.teams[0]"),
        "{}",
        r.error_message()
    );
    let r = api.call("DELETE", "/v1/users/bob", None).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    let msg = r.error_message();
    assert!(
        msg.contains("/v1/teams/night.members[0]") && msg.contains("/v1/inboxes/acme.admins[0]"),
        "{msg}"
    );
    assert_eq!(rcpt(&srv, ADDRESS).await, 250);

    // 7. Once nothing names them they go.
    let r = api.call("DELETE", "/v1/inboxes/acme", None).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = api.call("DELETE", "/v1/teams/night", None).await;
    assert_eq!(r.status, 204, "{}", text(&r));
    let r = api.call("DELETE", "/v1/users/bob", None).await;
    assert_eq!(r.status, 204, "{}", text(&r));
    assert_eq!(api.get("/v1/users/bob").await.status, 404);
    assert_eq!(api.get("/v1/teams/night").await.status, 404);
    assert_eq!(ids(&api.ok("/v1/users").await), ["alice"]);

    // 8. Every change was announced, signed, to an endpoint limited to another inbox (people
    //    serve every inbox): created, created, updated, updated, deleted, deleted.
    let got = sink.wait_accepted(6, Duration::from_secs(30)).await;
    let events: Vec<Value> = got.iter().map(verify_signed).collect();
    let mut types: Vec<&str> = events.iter().map(|v| v["type"].as_str().unwrap()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "team.created",
            "team.deleted",
            "team.updated",
            "user.created",
            "user.deleted",
            "user.updated"
        ]
    );
    let renamed = events.iter().find(|v| v["type"] == "user.updated").unwrap();
    assert_eq!(renamed["inbox"], Value::Null, "{renamed}");
    assert_eq!(renamed["data"]["user"]["name"], "Robert", "{renamed}");
    assert_eq!(renamed["data"]["changes"], json!(["name"]), "{renamed}");
    let members = events.iter().find(|v| v["type"] == "team.updated").unwrap();
    assert_eq!(
        members["data"]["team"]["members"],
        json!(["bob", "alice"]),
        "{members}"
    );
    srv.stop().await;
    sink.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_people_input_is_refused_naming_the_field_and_nothing_is_written() {
    let sink = HttpSink::start_on(0, &[]).await;
    let srv = start(TempDir::new("people-api-bad"), sink.addr.port(), "").await;
    let api = srv.api().await;
    for (target, body, status, needle) in [
        (
            "/v1/users",
            json!({ "id": "x", "colour": "blue" }),
            400,
            "colour",
        ),
        ("/v1/users", json!({ "id": 5 }), 400, "id"),
        (
            "/v1/users",
            json!({ "id": "x", "available": "yes" }),
            400,
            "available",
        ),
        (
            "/v1/users",
            json!({ "id": "bad id" }),
            400,
            "id: invalid user id",
        ),
        (
            "/v1/users",
            json!({ "id": "x", "email": "not an address" }),
            400,
            "email: invalid address",
        ),
        (
            "/v1/users",
            json!({ "id": "alice" }),
            409,
            "config file (user[0])",
        ),
        (
            "/v1/teams",
            json!({ "id": "t", "members": [] }),
            400,
            "members",
        ),
        (
            "/v1/teams",
            json!({ "id": "t", "members": ["ghost"] }),
            400,
            "members[0]: unknown user",
        ),
        (
            "/v1/teams",
            json!({ "id": "t", "members": "alice" }),
            400,
            "members",
        ),
        (
            "/v1/teams",
            json!({ "id": "desk", "members": ["alice"] }),
            409,
            "config file (team[0])",
        ),
    ] {
        let r = api.call("POST", target, Some(&body)).await;
        assert_eq!(r.status, status, "{target} {body}: {}", text(&r));
        assert!(
            r.error_message().contains(needle),
            "{target} {body}: {}",
            r.error_message()
        );
    }
    for target in ["/v1/users", "/v1/teams"] {
        let huge = format!("{{\"id\":\"x\",\"name\":\"{}\"}}", "a".repeat(1 << 20));
        let r = api.call_raw("POST", target, Some(huge.as_bytes())).await;
        assert_eq!(r.status, 413, "{target}");
    }

    // The config file's users and teams are read-only.
    let body = json!({ "name": "x" });
    for (method, target, key) in [
        ("PATCH", "/v1/users/alice", "user[0]"),
        ("DELETE", "/v1/users/alice", "user[0]"),
        ("PATCH", "/v1/teams/desk", "team[0]"),
        ("DELETE", "/v1/teams/desk", "team[0]"),
    ] {
        let r = api
            .call(method, target, (method == "PATCH").then_some(&body))
            .await;
        assert_eq!(r.status, 409, "{method} {target}: {}", text(&r));
        assert!(
            r.error_message().contains(key) && r.error_message().contains("read-only"),
            "{}",
            r.error_message()
        );
    }

    // An API user: a duplicate is refused, and so is a bad change, whole.
    let bob = json!({ "id": "bob", "email": "bob@acme.example" });
    let r = api.call("POST", "/v1/users", Some(&bob)).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let r = api.call("POST", "/v1/users", Some(&bob)).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    assert!(
        r.error_message().contains("duplicate user id"),
        "{}",
        r.error_message()
    );
    let r = api
        .call(
            "POST",
            "/v1/inboxes",
            Some(&json!({ "id": "acme", "tenant": "acme", "admins": ["bob"] })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let before = api.ok("/v1/users/bob").await;
    for (body, status, needle) in [
        (json!({ "name": "n", "colour": 1 }), 400, "colour"),
        (json!({ "id": "other" }), 400, "id"),
        (json!({ "name": "n", "available": "no" }), 400, "available"),
        (json!({ "name": "n", "email": "bad" }), 400, "email"),
        // The inbox's admin needs an email to be told about its setup.
        (
            json!({ "name": "n", "email": null }),
            409,
            "/v1/inboxes/acme.admins[0]",
        ),
    ] {
        let r = api.call("PATCH", "/v1/users/bob", Some(&body)).await;
        assert_eq!(r.status, status, "{body}: {}", text(&r));
        assert!(
            r.error_message().contains(needle),
            "{body}: {}",
            r.error_message()
        );
    }
    assert_eq!(
        api.ok("/v1/users/bob").await,
        before,
        "nothing half-written"
    );
    let r = api
        .call("PATCH", "/v1/teams/nope", Some(&json!({ "name": "x" })))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(api.call("DELETE", "/v1/users/nope", None).await.status, 404);
    assert_eq!(api.get("/v1/users/nope").await.status, 404);
    assert_eq!(ids(&api.ok("/v1/users").await), ["alice", "bob"]);
    assert_eq!(ids(&api.ok("/v1/teams").await), ["desk"]);

    // A restart reads back exactly what was written: bob, and no team.
    let dir = srv.stop().await;
    let srv = start(dir, sink.addr.port(), "").await;
    let api = srv.api().await;
    assert_eq!(api.ok("/v1/users/bob").await, before);
    assert_eq!(ids(&api.ok("/v1/teams").await), ["desk"]);
    srv.stop().await;
    sink.stop();
}
