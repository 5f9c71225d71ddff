//! Issue #15's one vocabulary: the same object read through the HTTP API, the CLI's `--json`
//! (the real binary, on the store the server left) and a webhook has the same field names (and
//! here the same values), times as RFC 3339 with an `_ms` twin, `null` for no value.
use crate::process::inbound;
use crate::support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;
use support::sink::HttpSink;
use support::*;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn cli(args: &[&str]) -> Value {
    let out = inbound(args);
    out.assert_ok(&args.join(" "));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_object_has_one_shape_in_the_api_the_cli_and_webhooks() {
    let sink = HttpSink::start_on(0, &[]).await;
    let extra = format!(
        r#"
[[inbox.rule]]
name = "to alice"
assign = {{ users = ["alice"] }}

[[user]]
id = "alice"

[[webhook]]
id = "app"
url = "http://127.0.0.1:{}/hook"
secret = "whsec-vocabulary-0123456789"
include_message = true
"#,
        sink.addr.port()
    );
    let srv = TestServer::start_with(&extra).await;
    let api = srv.api().await;
    let mut c = srv.connect().await;
    c.hello().await;
    let body = b"From: Carol <carol@customer.example>\r\nTo: sales@acme.inbound.test\r\n\
        Subject: Quote\r\nMessage-ID: <quote@customer.example>\r\n\
        Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nA quote, please.\r\n";
    let r = c
        .send_message("carol@customer.example", &["sales@acme.inbound.test"], body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let id = r.last_word();
    // message.received, conversation.created, conversation.assigned, ticket.created.
    let got = sink.wait_accepted(4, Duration::from_secs(10)).await;
    let events: HashMap<String, Value> = got
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            (v["type"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let api_summary = api.ok("/v1/messages").await["items"][0].clone();
    let api_detail = api.ok(&format!("/v1/messages/{id}")).await;
    let api_conversation = api.ok("/v1/conversations").await["items"][0].clone();
    let conversation_id = api_conversation["id"].as_str().unwrap().to_string();
    let api_conv_detail = api
        .ok(&format!("/v1/conversations/{conversation_id}"))
        .await;
    let dir = srv.stop().await;
    let data = dir.path().to_string_lossy().into_owned();

    // The CLI on the store the server left.
    let cli_summary = cli(&["messages", "list", "--data-dir", &data, "--json"])[0].clone();
    let cli_detail = cli(&["messages", "show", &id, "--data-dir", &data, "--json"]);
    let cli_conversation =
        cli(&["conversations", "list", "--data-dir", &data, "--json"])[0].clone();
    let cli_conv_detail = cli(&[
        "conversations",
        "show",
        &conversation_id,
        "--data-dir",
        &data,
        "--json",
    ]);

    let received = &events["message.received"]["data"];
    // A message: the same summary everywhere, field for field.
    assert_eq!(api_summary, cli_summary, "API and CLI message summary");
    assert_eq!(
        api_summary, received["message"],
        "API and webhook message summary"
    );
    // Its detail: the same fields and values in the API, the CLI and the webhook.
    assert_eq!(api_detail, cli_detail, "API and CLI message detail");
    assert_eq!(
        api_detail, received["detail"],
        "API and webhook message detail"
    );
    assert_eq!(keys(&received["routing"]), keys(&api_detail["routing"][0]));
    assert_eq!(received["routing"], api_detail["routing"][0]);
    // A conversation and its detail.
    assert_eq!(api_conversation, cli_conversation, "conversation summary");
    assert_eq!(keys(&api_conv_detail), keys(&cli_conv_detail));
    assert_eq!(
        api_conv_detail["conversation"],
        cli_conv_detail["conversation"]
    );
    assert_eq!(api_conv_detail["ticket"], cli_conv_detail["ticket"]);
    assert_eq!(api_conv_detail["contact"], cli_conv_detail["contact"]);
    assert_eq!(api_conv_detail["messages"], cli_conv_detail["messages"]);
    // A ticket: the webhook's is the API's.
    assert_eq!(events["ticket.created"]["data"], api_conv_detail["ticket"]);

    // Times: RFC 3339 with the _ms twin, in every envelope and object.
    for v in [
        &api_summary,
        &api_conversation,
        &api_conv_detail["ticket"],
        &api_conv_detail["contact"],
        &events["message.received"],
    ] {
        for k in keys(v) {
            if let Some(base) = k.strip_suffix("_ms") {
                let (t, ms) = (&v[base], v[&k].as_u64().unwrap());
                assert_eq!(
                    t.as_str().unwrap(),
                    inbound::util::rfc3339(ms),
                    "{base} and {k} are one time"
                );
            }
        }
    }
    // No value is null, never a missing key: the detail lists every content field.
    for k in [
        "text",
        "html",
        "stripped_text",
        "date",
        "to",
        "cc",
        "reply_to",
    ] {
        assert!(api_detail.get(k).is_some(), "{k}");
    }
    assert!(api_detail["html"].is_null());
    assert_eq!(api_detail["stripped_text"], "A quote, please.");
}
