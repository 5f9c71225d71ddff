//! Two `inbound serve` processes, one on 127.0.0.1 and one on 127.0.0.2 (own ports, own data
//! directories), sharing one PostgreSQL database started by the test: threading, dedup, round
//! robin and the API are one truth across nodes; a node SIGKILLed under load or in the middle of
//! webhook deliveries loses nothing acknowledged and leaves its claimed items to the other.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::process::{free_port, inbound, ServerProcess};
use crate::support::http::Api;
use crate::support::pg::PgCluster;
use crate::support::{Client, TempDir};

pub(crate) const TOKEN: &str = "multi-node-token-0123456789";

/// A nameserver that never answers: nothing in these tests needs DNS, and `/readyz` says so.
pub(crate) const NO_DNS: &str = "127.0.0.1:9";

/// A node's config: the shared database, loopback only, no sender authentication for loopback
/// clients, an inbox whose new conversations go round robin to three people, DNS from
/// `nameserver`; `store` adds lines to `[store]`, `extra` tables at the end.
fn node_config(dir: &Path, url: &str, nameserver: &str, store: &str, extra: &str) -> String {
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
{store}

[limits]
messages_per_ip_per_minute = 1000000
connections_per_ip_per_minute = 100000

[dns]
nameservers = ["{nameserver}"]
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

pub(crate) struct Node {
    pub(crate) srv: ServerProcess,
    pub(crate) api: SocketAddr,
    _dir: TempDir,
}

fn start_node(ip: &str, url: &str, extra: &str) -> Node {
    start_node_with(ip, url, NO_DNS, "", extra)
}

/// `inbound serve` on `ip` with `node_config`, waiting for its greeting.
pub(crate) fn start_node_with(
    ip: &str,
    url: &str,
    nameserver: &str,
    store: &str,
    extra: &str,
) -> Node {
    let mut node = spawn_node(ip, url, nameserver, store, extra);
    node.srv.wait_ready();
    node
}

/// `inbound serve` on `ip` with `node_config`, not waiting for anything.
pub(crate) fn spawn_node(ip: &str, url: &str, nameserver: &str, store: &str, extra: &str) -> Node {
    let dir = TempDir::new("node");
    let config = dir.path().join("inbound.toml");
    let text = node_config(&dir.path().join("data"), url, nameserver, store, extra);
    std::fs::write(&config, text).unwrap();
    let listen: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = ServerProcess::spawn(
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

/// What one message's sending came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    /// `250` at the end of the data: the queue id it named.
    Acked(String),
    /// Any other reply, at any step: the code and the enhanced status code (`4.3.0`; empty
    /// when the reply has none).
    Refused(u16, String),
    /// The connection failed or closed before a reply to the end of the data.
    Lost,
}

/// The enhanced status code a reply starts with (RFC 3463), or "".
fn enhanced(r: &crate::support::Reply) -> String {
    let first = r.lines.first().and_then(|l| l.split_whitespace().next());
    first
        .filter(|w| w.split('.').count() == 3 && w.split('.').all(|p| p.parse::<u16>().is_ok()))
        .unwrap_or_default()
        .to_string()
}

/// Send one message on a new connection, answering with whatever the server said instead of
/// panicking: the load tests count refusals and lost connections.
pub(crate) async fn try_send(addr: SocketAddr, body: &[u8]) -> Sent {
    let Ok(mut c) = Client::try_connect(addr).await else {
        return Sent::Lost;
    };
    // A hang guard, not a timing assertion: a reply never comes only if the server is gone.
    c.timeout = std::time::Duration::from_secs(60);
    match c.try_read_reply().await {
        Ok(r) if r.code == 220 => {}
        Ok(r) => return Sent::Refused(r.code, enhanced(&r)),
        Err(_) => return Sent::Lost,
    }
    for (line, want) in [
        ("EHLO load.client.example", 250),
        ("MAIL FROM:<load@client.example>", 250),
        ("RCPT TO:<sales@acme.inbound.test>", 250),
        ("DATA", 354),
    ] {
        if c.write(format!("{line}\r\n").as_bytes()).await.is_err() {
            return Sent::Lost;
        }
        match c.try_read_reply().await {
            Ok(r) if r.code == want => {}
            Ok(r) => return Sent::Refused(r.code, enhanced(&r)),
            Err(_) => return Sent::Lost,
        }
    }
    let mut wire = crate::support::dot_stuff(body);
    wire.extend_from_slice(b".\r\n");
    if c.write(&wire).await.is_err() {
        return Sent::Lost;
    }
    match c.try_read_reply().await {
        Ok(r) if r.code == 250 => Sent::Acked(r.last_word()),
        Ok(r) => Sent::Refused(r.code, enhanced(&r)),
        Err(_) => Sent::Lost,
    }
}

/// A body unique to `tag`: headers, dot-stuffed lines, and for `large` more than the store's
/// inline threshold (64 KiB), so spooled bodies are in the load as well as inline ones.
pub(crate) fn load_body(tag: &str, large: bool) -> Vec<u8> {
    let mut b = format!(
        "From: <load@client.example>\r\nTo: sales@acme.inbound.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@client.example>\r\n\r\n"
    )
    .into_bytes();
    let target = if large { 80 * 1024 } else { 600 };
    let mut n = 0;
    while b.len() < target {
        n += 1;
        let line = match n % 3 {
            0 => format!(".a leading dot {tag} {n}\r\n"),
            1 => format!("{tag} line {n} {}\r\n", "x".repeat(n % 71)),
            _ => "..two dots\r\n".to_string(),
        };
        b.extend_from_slice(line.as_bytes());
    }
    b
}

/// Whether `node` serves message `queue_id` with exactly `body` as sent: `/raw` is the trace
/// headers this server added (`Received:`, `Authentication-Results:`), then the stored body.
pub(crate) async fn stored_as_sent(node: &Node, queue_id: &str, body: &[u8]) -> bool {
    let api = Api::new(node.api, Some(TOKEN)).await;
    let r = api.get(&format!("/v1/messages/{queue_id}/raw")).await;
    if r.status != 200 || !r.body.ends_with(body) {
        return false;
    }
    let trace = &r.body[..r.body.len() - body.len()];
    // Whole header lines, no blank line: nothing but headers was put before the body.
    (trace.is_empty() || trace.ends_with(b"\r\n"))
        && !trace.windows(4).any(|w| w == b"\r\n\r\n")
        && !trace.starts_with(b"\r\n")
}

/// Issue #13: SIGKILL of one node while clients send to both. Every message either node
/// answered `250` is served by the surviving node, byte for byte as sent; clients of the killed
/// node lose their connections (they would retry), nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_message_survives_a_node_sigkilled_under_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let (_pg, _url, mut a, b) = cluster();
    /// Queue id and body of every message answered 250.
    type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let acked = Acked::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..6 {
        let addr = if id % 2 == 0 { a.srv.addr } else { b.srv.addr };
        let (acked, stop) = (acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let data = load_body(&format!("kill-c{id}-m{seq}"), (seq + id) % 4 == 0);
                match try_send(addr, &data).await {
                    Sent::Acked(q) => acked.lock().unwrap().push((q, data)),
                    Sent::Refused(..) => {}
                    // The killed node: its clients stop (a real sender would try the other MX).
                    Sent::Lost => return,
                }
            }
        }));
    }
    let acked_len = || acked.lock().unwrap().len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while acked_len() < 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load did not get going: {} acked",
            acked_len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    a.srv.kill();
    // The survivor keeps taking mail after the kill.
    let at_kill = acked_len();
    while acked_len() < at_kill + 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "node b stopped taking mail after a's kill"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let mut missing = Vec::new();
    for (q, body) in &acked {
        if !stored_as_sent(&b, q, body).await {
            missing.push(q.clone());
        }
    }
    eprintln!(
        "{} messages acknowledged, {at_kill} before the kill",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not stored as sent: {missing:?}"
    );
}

/// A webhook endpoint for `webhook_events_of_a_node_killed_mid_delivery_...`: it never answers
/// a request to `/a` (it holds the connection until the caller goes away), and answers every
/// other with 200. Node a's config posts to `/a`, node b's to `/b`: a's deliveries stall.
struct StallingReceiver {
    port: u16,
    /// (path, Idempotency-Key) of every request read in full, in arrival order.
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingReceiver {
    async fn start() -> StallingReceiver {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut io = BufReader::new(stream);
                    let mut line = String::new();
                    if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    let (mut key, mut len) = (String::new(), 0usize);
                    loop {
                        let mut h = String::new();
                        if io.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let Some((name, value)) = h.trim_end().split_once(':') else {
                            break;
                        };
                        match name.trim().to_ascii_lowercase().as_str() {
                            "idempotency-key" => key = value.trim().to_string(),
                            "content-length" => len = value.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; len];
                    if io.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    log.lock().unwrap().push((path.clone(), key));
                    if path == "/a" {
                        // Until the caller goes away.
                        let _ = io.read_to_end(&mut Vec::new()).await;
                        return;
                    }
                    let _ = io
                        .get_mut()
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        StallingReceiver { port, seen, task }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// The `[[webhook]]` table of a node posting to `path`, with a request timeout shorter than
    /// the lease (a config rule).
    fn hook(&self, path: &str) -> String {
        format!(
            "[[webhook]]\nid = \"app\"\nurl = \"http://127.0.0.1:{}{path}\"\nsecret = \"whsec-multi-0123456789abcdef\"\nevents = [\"message.received\"]\ntimeout = \"5s\"\n\n[outbox]\npoll_interval = \"200ms\"\nretry_initial = \"1s\"\n",
            self.port
        )
    }
}

impl Drop for StallingReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A count from the shared database (test-side connection, off the async runtime).
fn count(url: &str, sql: &'static str) -> i64 {
    let url = url.to_string();
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query_one(sql, &[]).unwrap().get::<_, i64>(0)
    })
    .join()
    .unwrap()
}

/// Issue #13: "a node killed mid-delivery leaves its items to another node after the lease".
/// Node a claims webhook items and is SIGKILLed while its requests hang; with a short
/// `[store] outbox_lease`, node b delivers them once the lease runs out: the receiver sees every
/// event's Idempotency-Key answered 200, the ones a had in flight among them (at least once).
#[tokio::test(flavor = "multi_thread")]
async fn webhook_events_of_a_node_killed_mid_delivery_are_delivered_by_the_other_after_the_lease() {
    const EVENTS: usize = 6;
    let receiver = StallingReceiver::start().await;
    let pg = PgCluster::start();
    let url = pg.database();
    inbound(&["store", "migrate", "--url", &url]).assert_ok("store migrate");
    let lease = "outbox_lease = \"6s\"";
    let mut a = start_node_with("127.0.0.1", &url, NO_DNS, lease, &receiver.hook("/a"));
    for i in 0..EVENTS {
        let from = format!("lease{i}@client.example");
        send(
            &a,
            &from,
            &mail(&from, "Lease", &format!("lease-{i}@client.example"), None),
        )
        .await;
    }
    // a delivers at most `per_endpoint_concurrency` (2) at once: wait for its stalled requests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while receiver.seen().iter().filter(|(p, _)| p == "/a").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "node a sent no webhook: {:?}",
            receiver.seen()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pid = a.srv.pid();
    a.srv.kill();
    let in_flight: std::collections::BTreeSet<String> = receiver
        .seen()
        .into_iter()
        .filter(|(p, _)| p == "/a")
        .map(|(_, k)| k)
        .collect();
    // a died holding leases: the items it was delivering are still claimed by it.
    let held = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.query_one(
                "SELECT count(*) FROM outbox WHERE lease_owner LIKE '%:' || $1 || ':%'",
                &[&pid.to_string()],
            )
            .unwrap()
            .get::<_, i64>(0)
        })
        .join()
        .unwrap()
    };
    assert!(
        held >= in_flight.len() as i64,
        "a held {held} leases, had {in_flight:?} in flight"
    );
    assert_eq!(count(&url, "SELECT count(*) FROM outbox"), EVENTS as i64);

    let _b = start_node_with("127.0.0.2", &url, NO_DNS, lease, &receiver.hook("/b"));
    let delivered = || -> std::collections::BTreeSet<String> {
        receiver
            .seen()
            .into_iter()
            .filter(|(p, _)| p == "/b")
            .map(|(_, k)| k)
            .collect()
    };
    // A hang guard: ten leases.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(&url, "SELECT count(*) FROM outbox") > 0 || delivered().len() < EVENTS {
        assert!(
            std::time::Instant::now() < deadline,
            "node b did not deliver every event: {:?}",
            receiver.seen()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let delivered = delivered();
    assert_eq!(delivered.len(), EVENTS, "{:?}", receiver.seen());
    assert!(
        in_flight.is_subset(&delivered),
        "a's stalled deliveries {in_flight:?} were not delivered by b: {delivered:?}"
    );
    eprintln!(
        "{} requests for {EVENTS} events: {} stalled at a, {} answered at b",
        receiver.seen().len(),
        in_flight.len(),
        receiver.seen().iter().filter(|(p, _)| p == "/b").count()
    );
}
