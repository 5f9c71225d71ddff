//! Two `inbound serve` processes, one on 127.0.0.1 and one on 127.0.0.2 (own ports, own data
//! directories), sharing one PostgreSQL database started by the test: threading, dedup, round
//! robin and the API are one truth across nodes.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::process::{free_port, inbound, ServerProcess};
use crate::support::http::Api;
use crate::support::pg::PgCluster;
use crate::support::{Client, TempDir};

const TOKEN: &str = "multi-node-token-0123456789";

/// A node's config: the shared database, loopback only, no sender authentication for loopback
/// clients, an inbox whose new conversations go round robin to three people.
fn node_config(dir: &Path, url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
hostname = "mx.multi.test"
data_dir = "{data}"
shutdown_timeout = "5s"

[[listener]]
addr = "127.0.0.1:0"

[store]
backend = "postgres"
url = "{url}"

[limits]
messages_per_ip_per_minute = 1000000
connections_per_ip_per_minute = 100000

[dns]
nameservers = ["127.0.0.1:9"]
timeout = "200ms"
attempts = 1

[auth]
trusted_networks = ["127.0.0.0/8"]

[api]
listen = "127.0.0.1:0"
tokens = ["{token}"]

[[user]]
id = "ann"
[[user]]
id = "bob"
[[user]]
id = "cyd"

[[inbox]]
id = "sales"
address = "sales@acme.inbound.test"

[[inbox.rule]]
name = "everyone"
assign = {{ users = ["ann", "bob", "cyd"], strategy = "round_robin" }}

{extra}
"#,
        data = dir.display(),
        token = TOKEN,
    )
}

struct Node {
    srv: ServerProcess,
    api: SocketAddr,
    _dir: TempDir,
}

fn start_node(ip: &str, url: &str, extra: &str) -> Node {
    let dir = TempDir::new("node");
    let config = dir.path().join("inbound.toml");
    std::fs::write(&config, node_config(&dir.path().join("data"), url, extra)).unwrap();
    let listen: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut srv = ServerProcess::spawn(
        &[
            "--config",
            &config.to_string_lossy(),
            "--listen",
            &listen.to_string(),
            "--api-listen",
            &api.to_string(),
        ],
        listen,
        &dir.path().join("server.log"),
    );
    srv.wait_ready();
    Node {
        srv,
        api,
        _dir: dir,
    }
}

/// A database with the schema, and two nodes on it.
fn cluster() -> (PgCluster, String, Node, Node) {
    cluster_with("")
}

fn cluster_with(extra: &str) -> (PgCluster, String, Node, Node) {
    let pg = PgCluster::start();
    let url = pg.database();
    inbound(&["store", "migrate", "--url", &url]).assert_ok("store migrate");
    let a = start_node("127.0.0.1", &url, extra);
    let b = start_node("127.0.0.2", &url, extra);
    (pg, url, a, b)
}

fn mail(from: &str, subject: &str, id: &str, reply_to: Option<&str>) -> Vec<u8> {
    let irt = reply_to
        .map(|r| format!("In-Reply-To: <{r}>\r\nReferences: <{r}>\r\n"))
        .unwrap_or_default();
    format!("From: <{from}>\r\nTo: sales@acme.inbound.test\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\n{irt}\r\nHello.\r\n")
        .into_bytes()
}

/// Send one message to `node`; the queue id its 250 names.
async fn send(node: &Node, from: &str, body: &[u8]) -> String {
    let mut c = Client::connect(node.srv.addr).await;
    c.hello().await;
    let r = c
        .send_message(from, &["sales@acme.inbound.test"], body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    r.last_word()
}

async fn message(node: &Node, queue_id: &str) -> Value {
    let api = Api::new(node.api, Some(TOKEN)).await;
    let r = api.get(&format!("/v1/messages/{queue_id}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn routing(m: &Value) -> &Value {
    &m["routing"][0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thread_alternating_between_nodes_is_one_conversation() {
    let (_pg, _url, a, b) = cluster();
    let mut ids = Vec::new();
    let mut previous: Option<String> = None;
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        let id = format!("alt-{i}@client.example");
        let q = send(
            node,
            "pat@client.example",
            &mail("pat@client.example", "Order", &id, previous.as_deref()),
        )
        .await;
        ids.push(q);
        previous = Some(id);
    }
    let first = message(&a, &ids[0]).await;
    let conv = routing(&first)["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    for (i, q) in ids.iter().enumerate() {
        // Read each message from the node that did not receive it.
        let other = if i % 2 == 0 { &b } else { &a };
        let m = message(other, q).await;
        assert_eq!(routing(&m)["conversation"], conv.as_str(), "message {i}");
    }
    for node in [&a, &b] {
        let api = Api::new(node.api, Some(TOKEN)).await;
        let c = api.get(&format!("/v1/conversations/{conv}")).await;
        assert_eq!(c.status, 200);
        assert_eq!(
            c.json()["conversation"]["message_count"],
            6,
            "{}",
            String::from_utf8_lossy(&c.body)
        );
        // The raw message is served by either node (bodies live in the database).
        let raw = api.get(&format!("/v1/messages/{}/raw", ids[1])).await;
        assert_eq!(raw.status, 200);
        assert!(String::from_utf8_lossy(&raw.body).contains("Message-ID: <alt-1@client.example>"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_message_id_on_both_nodes_at_once_is_one_entry_and_one_duplicate() {
    let (_pg, _url, a, b) = cluster();
    for round in 0..4 {
        let body = mail(
            "dup@client.example",
            "Same",
            &format!("same-{round}@client.example"),
            None,
        );
        let (qa, qb) = tokio::join!(
            send(&a, "dup@client.example", &body),
            send(&b, "dup@client.example", &body)
        );
        let (ma, mb) = (message(&a, &qa).await, message(&b, &qb).await);
        assert_eq!(
            routing(&ma)["conversation"],
            routing(&mb)["conversation"],
            "round {round}"
        );
        let dups: Vec<&Value> = [&ma, &mb]
            .into_iter()
            .filter(|m| !routing(m)["duplicate_of"].is_null())
            .collect();
        assert_eq!(dups.len(), 1, "round {round}: {ma} {mb}");
        let original = if routing(&ma)["duplicate_of"].is_null() {
            &qa
        } else {
            &qb
        };
        assert_eq!(routing(dups[0])["duplicate_of"], original.as_str());
    }
    // Four conversations, no more.
    let api = Api::new(a.api, Some(TOKEN)).await;
    let list = api.get("/v1/conversations?limit=100").await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 4, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_is_fair_across_nodes() {
    let (_pg, _url, a, b) = cluster();
    let mut convs = Vec::new();
    for i in 0..9 {
        let node = if i % 2 == 0 { &a } else { &b };
        let from = format!("rr{i}@client.example");
        let q = send(
            node,
            &from,
            &mail(&from, "New", &format!("rr-{i}@client.example"), None),
        )
        .await;
        convs.push(q);
    }
    let mut counts = std::collections::BTreeMap::new();
    for q in &convs {
        let m = message(&a, q).await;
        *counts
            .entry(routing(&m)["assignee"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<String, i32> =
        [("ann".into(), 3), ("bob".into(), 3), ("cyd".into(), 3)].into();
    assert_eq!(counts, want);
}

/// Both nodes drain the one outbox: every webhook event is delivered exactly once in a run
/// without crashes (each item claimed under a lease by one node), whichever node took the mail.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_events_are_delivered_once_by_two_nodes() {
    let port = free_port();
    let sink = crate::support::sink::HttpSink::start_on(port, &[]).await;
    let hook = format!(
        "[[webhook]]\nid = \"app\"\nurl = \"http://127.0.0.1:{port}/hooks\"\nsecret = \"whsec-multi-0123456789abcdef\"\nevents = [\"message.received\"]\n"
    );
    let (_pg, url, a, b) = cluster_with(&hook);
    for i in 0..20 {
        let node = if i % 2 == 0 { &a } else { &b };
        let from = format!("wh{i}@client.example");
        send(
            node,
            &from,
            &mail(&from, "Hook", &format!("wh-{i}@client.example"), None),
        )
        .await;
    }
    sink.wait_accepted(20, std::time::Duration::from_secs(60))
        .await;
    // Until every item is settled, a late second delivery could still come.
    let depth = move || {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.query_one("SELECT count(*) FROM outbox", &[])
                .unwrap()
                .get::<_, i64>(0)
        })
        .join()
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while depth() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox did not drain"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let requests = sink.requests();
    let keys: std::collections::BTreeSet<String> = requests
        .iter()
        .map(|r| {
            r.header("idempotency-key")
                .expect("Idempotency-Key")
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), 20, "one event per message");
    assert_eq!(requests.len(), 20, "each delivered once");
}

/// The code of the reply that settles one message sent to `rcpt` through `node`: the RCPT
/// refusal, or the reply to its data.
async fn deliver_to(node: &Node, rcpt: &str, id: &str) -> u16 {
    let mut c = Client::connect(node.srv.addr).await;
    c.hello().await;
    c.cmd("MAIL FROM:<pat@client.example>", "250").await;
    c.send(&format!("RCPT TO:<{rcpt}>")).await;
    let r = c.read_reply().await.expect("reply to RCPT");
    if r.code != 250 {
        return r.code;
    }
    let body = format!(
        "From: <pat@client.example>\r\nTo: {rcpt}\r\nSubject: Hi\r\nMessage-ID: <{id}>\r\n\r\nHello.\r\n"
    );
    c.cmd("DATA", "354").await;
    c.send_raw(body.as_bytes()).await;
    c.send_raw(b".\r\n").await;
    c.read_reply().await.expect("reply to end of data").code
}

/// Inboxes, users and teams created through one node's API are the other node's too: mail to
/// a new inbox is taken by either node at once (a `550` for it would bounce the provider's
/// confirmation), and a change made on one node is in force on the other without a reload.
#[tokio::test(flavor = "multi_thread")]
async fn definitions_made_through_one_node_are_in_force_on_the_other() {
    let (_pg, _url, a, b) = cluster();
    let (api_a, api_b) = (
        Api::new(a.api, Some(TOKEN)).await,
        Api::new(b.api, Some(TOKEN)).await,
    );
    let r = api_a
        .call(
            "POST",
            "/v1/inboxes",
            Some(&serde_json::json!({
                "id": "support",
                "address": "support@acme.inbound.test",
                "connected_address": "jane.doe@gmail.com",
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // At once, with no poll to wait for: the recipient is looked up again before a 550.
    assert_eq!(
        deliver_to(&b, "support@acme.inbound.test", "new-1@client.example").await,
        250
    );
    let v = api_b.ok("/v1/inboxes/support").await;
    assert_eq!(
        (v["source"].as_str(), v["state"].as_str()),
        (Some("api"), Some("pending")),
        "{v}"
    );

    // The team's first forwarded message, taken by B, connects it for A: A refuses to move
    // the address the team's provider now forwards to.
    let forwarded = "X-Forwarded-For: jane.doe@gmail.com support@acme.inbound.test\r\n\
        X-Forwarded-To: support@acme.inbound.test\r\n\
        From: Carol <carol@customer.example>\r\nTo: jane.doe@gmail.com\r\n\
        Subject: where is my order\r\nMessage-ID: <f1@customer.example>\r\n\r\nHello\r\n";
    let mut c = Client::connect(b.srv.addr).await;
    c.hello().await;
    let r = c
        .send_message(
            "jane.doe+caf_=support=acme.inbound.test@gmail.com",
            &["support@acme.inbound.test"],
            forwarded.as_bytes(),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let v = api_a.ok("/v1/inboxes/support").await;
    assert_eq!(
        (v["state"].as_str(), v["locked"].as_bool()),
        (Some("connected"), Some(true)),
        "{v}"
    );
    let r = api_a
        .call(
            "PATCH",
            "/v1/inboxes/support",
            Some(&serde_json::json!({ "address": "helpdesk@acme.inbound.test" })),
        )
        .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));

    // A user made on B, then an inbox on A whose rule assigns to that user: A has B's user.
    let r = api_b
        .call(
            "POST",
            "/v1/users",
            Some(&serde_json::json!({ "id": "dee" })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = api_a
        .call(
            "PATCH",
            "/v1/inboxes/support",
            Some(&serde_json::json!({ "auto_assign": { "users": ["dee"] } })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Retired on A: B refuses its mail once it has followed (a poll of a second or two).
    let r = api_a.call("DELETE", "/v1/inboxes/support", None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let code = deliver_to(
            &b,
            "support@acme.inbound.test",
            &format!("late-{n}@client.example"),
        )
        .await;
        if code == 550 {
            break;
        }
        assert_eq!(code, 250);
        assert!(
            std::time::Instant::now() < deadline,
            "B still takes mail for a retired inbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(api_b.ok("/v1/inboxes/support").await["state"], "retired");
}

/// A message at the 30 MiB limit taken by one node lives whole in the database: the other
/// node serves its raw bytes, identical.
#[tokio::test(flavor = "multi_thread")]
async fn a_30_mib_message_taken_by_one_node_is_served_whole_by_the_other() {
    let (_pg, _url, a, b) = cluster();
    const LIMIT: usize = 30 * 1024 * 1024;
    let mut body =
        b"From: <big@client.example>\r\nSubject: big\r\nMessage-ID: <big@client.example>\r\n\r\n"
            .to_vec();
    let line: Vec<u8> = [vec![b'y'; 998], b"\r\n".to_vec()].concat();
    while body.len() + line.len() <= LIMIT {
        body.extend_from_slice(&line);
    }
    body.resize(LIMIT - 2, b'x');
    body.extend_from_slice(b"\r\n");
    let mut c = Client::connect(a.srv.addr).await;
    c.timeout = std::time::Duration::from_secs(120);
    c.hello().await;
    let r = c
        .send_message("big@client.example", &["sales@acme.inbound.test"], &body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let queue_id = r.last_word();
    let api = Api::new(b.api, Some(TOKEN)).await;
    let raw = api.get(&format!("/v1/messages/{queue_id}/raw")).await;
    assert_eq!(raw.status, 200);
    // Our trace header fields, then the message byte for byte.
    let (trace, received) = raw.body.split_at(raw.body.len() - LIMIT);
    assert!(String::from_utf8_lossy(trace).starts_with("Received: "));
    assert_eq!(
        crate::support::sha256(received),
        crate::support::sha256(&body)
    );
}
