//! Criterion benchmark of issue #11's "a thread that grows forever": the commit of one reply into
//! a conversation of 10 messages and into one of 10,000, in the same store. Each conversation
//! used to keep its message list in its record, rewritten on every new message; with the index
//! the two costs should be about the same (compare the ratio, not the absolute times, which
//! depend on the machine). Run: `cargo bench --bench thread`.
//!
//! Measured per reply, both through the store's real commit path with the threading plan
//! (which finds the conversation by In-Reply-To, appends to its index, updates its counters and
//! contact, and queues the events), parsed beforehand so that only the commit is timed:
//! - `commit`: `Store::commit`, what an SMTP session waits for: the committer thread, one sled
//!   transaction, the flush (of a temporary database, so the disk's fsync does not drown the
//!   difference);
//! - `transaction`: the same plan and record in one transaction on the calling thread, without the
//!   committer or the flush: the part that could depend on the thread's length.
//!
//! After each timed reply the reply is deleted again (untimed), so every iteration meets a
//! conversation of exactly 10 or 10,000 messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use inbound::config::{self, Config};
use inbound::pipeline::{self, auth::Assessment, threading, Envelope};
use inbound::store::model::ThreadDecision;
use inbound::store::spool::Finished;
use inbound::store::{keys, Body, MessageRecord, Plan, RcptRecord, Store};

const CONFIG: &str = r#"
[[listener]]
addr = "127.0.0.1:0"
[[user]]
id = "alice"
[[inbox]]
id = "sales"
address = "sales@acme.inbound.test"
[[inbox.rule]]
name = "everyone"
assign = { users = ["alice"] }
"#;

/// The thread lengths compared.
const LENGTHS: [usize; 2] = [10, 10_000];

struct Fixture {
    cfg: Arc<Config>,
    env: Envelope,
    assessment: Assessment,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        let cfg = Arc::new(config::parse(CONFIG).expect("bench config"));
        let store = Store::open_temporary(&cfg.store).expect("temporary store");
        let env = Envelope {
            client_ip: "192.0.2.1".parse().unwrap(),
            client_port: 25,
            helo: "mail.customer.example".into(),
            esmtp: true,
            tls: None,
            mail_from: "carol@customer.example".into(),
            rcpt: vec![RcptRecord {
                address: "sales@acme.inbound.test".into(),
                inbox: "sales".into(),
                tag: None,
            }],
            body_type: "8BITMIME",
            smtputf8: false,
        };
        Fixture {
            cfg,
            env,
            assessment: Assessment::skipped("bench"),
            store,
        }
    }

    /// A message of `thread` (its first when `n` is 0, else a reply to the first), parsed and
    /// turned into the record, body and plan a session hands to the committer.
    fn prepare(&self, thread: usize, n: usize) -> (MessageRecord, Body, Plan) {
        let reply = if n == 0 {
            String::new()
        } else {
            format!("In-Reply-To: <t{thread}-0@customer.example>\r\nReferences: <t{thread}-0@customer.example>\r\n")
        };
        let raw = format!(
            "From: Carol Customer <carol@customer.example>\r\nTo: sales@acme.inbound.test\r\nSubject: Re: order {thread}\r\nMessage-ID: <t{thread}-{n}@customer.example>\r\n{reply}Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nStill waiting for my order, message {n}.\r\n"
        )
        .into_bytes();
        let analysis = pipeline::analyse(&raw, &self.env, &self.cfg);
        let now = keys::now_ms();
        let body = Finished::inline(keys::new_queue_id(), raw);
        let input = pipeline::thread_input(
            &self.cfg,
            &self.env,
            &analysis,
            &body.sha256,
            &self.assessment,
            now,
        );
        let record = pipeline::prepare(
            &self.cfg.hostname,
            &self.env,
            &body,
            now,
            &self.assessment,
            &analysis,
        );
        (record, body.body, threading::plan(input))
    }

    /// A conversation of `len` messages, committed without flushes.
    fn fill(&self, thread: usize, len: usize) -> String {
        let mut conversation = String::new();
        for n in 0..len {
            let (record, body, plan) = self.prepare(thread, n);
            let r = self
                .store
                .apply_volatile(&record, &body, Some(&plan))
                .expect("plan applies");
            conversation = r.routing[0].conversation.clone();
            assert_eq!(
                r.routing[0].thread == ThreadDecision::New,
                n == 0,
                "{:?}",
                r.routing[0]
            );
        }
        conversation
    }
}

fn commit_reply(c: &mut Criterion) {
    let f = Fixture::new();
    for (thread, &len) in LENGTHS.iter().enumerate() {
        let conversation = f.fill(thread, len);
        assert_eq!(
            f.store
                .conversation(&conversation)
                .unwrap()
                .unwrap()
                .message_count,
            len as u64
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("reply_into_thread");
    for (thread, &len) in LENGTHS.iter().enumerate() {
        group.bench_function(BenchmarkId::new("commit", len), |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for n in 0..iters {
                    let (record, body, plan) = f.prepare(thread, len + n as usize);
                    let start = Instant::now();
                    let r = rt
                        .block_on(f.store.commit(record, body, Some(plan)))
                        .expect("commit");
                    took += start.elapsed();
                    assert_eq!(r.routing[0].thread, ThreadDecision::Joined);
                    f.store.delete_message(&r.queue_id).expect("delete");
                }
                took
            })
        });
        group.bench_function(BenchmarkId::new("transaction", len), |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for n in 0..iters {
                    let (record, body, plan) = f.prepare(thread, len + n as usize);
                    let start = Instant::now();
                    let r = f
                        .store
                        .apply_volatile(&record, &body, Some(&plan))
                        .expect("plan applies");
                    took += start.elapsed();
                    f.store.delete_message(&r.queue_id).expect("delete");
                }
                took
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commit_reply);
criterion_main!(benches);
