//! Arbitrary bytes -> every message stage that reads content: the header/auth parse (mail-auth's
//! `AuthenticatedMessage`, our reading of ARC-Authentication-Results), the full parse,
//! attribution, rule matching and the threading plan on an in-memory store. Used by the cargo-fuzz
//! target `message` and by a plain test that replays its corpus on stable Rust. Must never panic.

use std::sync::{Arc, OnceLock};

use crate::config::{self, Config};
use crate::pipeline::{self, auth, Envelope};
use crate::store::{RcptRecord, Store};

const CONFIG: &str = r#"
[[listener]]
addr = "127.0.0.1:0"
[[user]]
id = "alice"
[[user]]
id = "bob"
[[team]]
id = "t"
members = ["alice", "bob"]
[[contact]]
domain = "example.com"
owner = "bob"
[[inbox]]
id = "fuzz"
address = "support@fuzz.inbound.test"
[[inbox.rule]]
name = "attachments"
match.has_attachment = true
match.header = [{ name = "x-priority", contains = "1" }]
assign = { owner = true, fallback_teams = ["t"] }
[[inbox.rule]]
name = "everyone"
assign = { users = ["alice", "bob"], strategy = "least_open" }
"#;

struct State {
    config: Arc<Config>,
    store: Store,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        // Both are fixed inputs checked by `message_stage_handles_the_corpus` on every test run.
        let config = Arc::new(config::parse(CONFIG).expect("fuzz config is valid"));
        let store = Store::open_temporary(&config.store).expect("in-memory store");
        State { config, store }
    })
}

/// Run every content stage on `data` as a message for the fuzz inbox. Returns the number of
/// routing records written (1 unless the store refused the plan).
pub fn message(data: &[u8]) -> usize {
    let st = state();
    // The header/auth stage's own parsing: DKIM/ARC header parsing and our AAR reading.
    if let Some(msg) = mail_auth::AuthenticatedMessage::parse(data) {
        let from = msg.from.first().map(|f| f.as_str()).unwrap_or("");
        let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        for h in &msg.aar_headers {
            let _ = auth::recorded_pass(&String::from_utf8_lossy(h.value), domain);
        }
    }
    let env = Envelope {
        client_ip: "192.0.2.1".parse().expect("literal"),
        client_port: 25,
        helo: "fuzz.example".into(),
        esmtp: true,
        tls: None,
        mail_from: "sender@example.com".into(),
        rcpt: vec![RcptRecord {
            address: "support+tag@fuzz.inbound.test".into(),
            inbox: "fuzz".into(),
            tag: Some("tag".into()),
        }],
        body_type: "8BITMIME",
        smtputf8: true,
    };
    let assessment = auth::Assessment::skipped("fuzz");
    pipeline::route_volatile(&st.config, &st.store, &env, data, &assessment)
        .map(|(r, _)| r.routing.len())
        .unwrap_or(0)
}
