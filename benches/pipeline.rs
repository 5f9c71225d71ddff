//! Criterion benchmark of the per-message work after SMTP: parse + attribute + thread + route
//! (the commit plan run in a transaction on an in-memory store, without the flush), at 4 KiB,
//! 100 KiB and 1 MiB; and two stages alone: attribution of a 4 KiB manual forward, and
//! verification over its fixture corpus; and a message's API detail read from a stored 100 KiB
//! reply (issue #15: under 5 ms). Run: `cargo bench --bench pipeline`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inbound::config;
use inbound::pipeline::{self, attribution, auth::Assessment, verification, Envelope};
use inbound::store::{RcptRecord, Store};
use inbound::views::MessageDetail;
use mail_parser::MessageParser;

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
[[inbox]]
id = "sales"
address = "sales@acme.inbound.test"
[[inbox.rule]]
name = "invoices"
match.subject = ["invoice"]
assign = { users = ["alice"] }
[[inbox.rule]]
name = "everyone"
assign = { teams = ["t"] }
"#;

/// A manually forwarded message (the attribution has to read the body) of about `size` bytes.
fn message(size: usize, n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Team Member <member@acme.example>\r\nTo: sales@acme.inbound.test\r\nSubject: Fwd: question {n}\r\nMessage-ID: <bench-{n}@acme.example>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nFYI\r\n\r\n---------- Forwarded message ---------\r\nFrom: Carol Customer <carol@customer.example>\r\nDate: Sat, 21 Nov 2026 at 09:00\r\nSubject: question\r\nTo: <member@acme.example>\r\n\r\n"
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

fn bench(c: &mut Criterion) {
    let cfg = Arc::new(config::parse(CONFIG).expect("bench config"));
    let store = Store::open_temporary(&cfg.store).expect("temporary store");
    let env = Envelope {
        client_ip: "192.0.2.1".parse().unwrap(),
        client_port: 25,
        helo: "mail.acme.example".into(),
        esmtp: true,
        tls: None,
        mail_from: "member@acme.example".into(),
        rcpt: vec![RcptRecord {
            address: "sales@acme.inbound.test".into(),
            inbox: "sales".into(),
            tag: None,
        }],
        body_type: "8BITMIME",
        smtputf8: false,
    };
    let assessment = Assessment::skipped("bench");
    let mut group = c.benchmark_group("parse_attribute_thread_route");
    for (label, size) in [
        ("4KiB", 4 * 1024),
        ("100KiB", 100 * 1024),
        ("1MiB", 1024 * 1024),
    ] {
        group.throughput(Throughput::Bytes(size as u64));
        let mut n = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(label), &size, |b, &size| {
            b.iter_batched(
                || {
                    n += 1;
                    message(size, n)
                },
                |raw| {
                    pipeline::route_volatile(&cfg, &store, &env, &raw, &assessment)
                        .expect("plan applies")
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// A reply as a mail client writes it, about `size` bytes: multipart/alternative (the new text
/// over a long `>`-quoted history, and the same as HTML in a blockquote) and a PDF attachment.
fn reply(size: usize) -> Vec<u8> {
    let half = size.saturating_sub(12 * 1024) / 2;
    let mut text = String::from("Thanks, that fixed it.\r\n\r\n-- \r\nCarol\r\n\r\nOn Mon, Jan 8, 2024 at 10:15 AM Support <sales@acme.inbound.test> wrote:\r\n");
    let mut html = String::from("<div>Thanks, that fixed it.</div><div class=\"gmail_quote\">On Mon, Jan 8, 2024 at 10:15 AM Support &lt;sales@acme.inbound.test&gt; wrote:<blockquote>");
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem";
    while text.len() < half {
        text.push_str("> ");
        text.push_str(line);
        text.push_str("\r\n");
        html.push_str("<p>");
        html.push_str(line);
        html.push_str("</p>\r\n");
    }
    html.push_str("</blockquote></div>");
    let pdf = "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K".repeat(120);
    format!(
        "From: Carol Customer <carol@customer.example>\r\nTo: Sales <sales@acme.inbound.test>\r\n\
         Cc: Dan <dan@customer.example>\r\nReply-To: carol@customer.example\r\n\
         Subject: =?utf-8?q?Re=3A_Angebot_f=C3=BCr_M=C3=A4rz?=\r\nMessage-ID: <reply@customer.example>\r\n\
         In-Reply-To: <quote@acme.example>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0100\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=mix\r\n\r\n\
         --mix\r\nContent-Type: multipart/alternative; boundary=alt\r\n\r\n\
         --alt\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n\
         --alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n\
         --alt--\r\n--mix\r\nContent-Type: application/pdf; name=offer.pdf\r\n\
         Content-Disposition: attachment; filename=offer.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{pdf}\r\n--mix--\r\n"
    )
    .into_bytes()
}

/// `GET /v1/messages/{id}`'s work after the store read: parse the stored body, read its content
/// (text, HTML, stripped text, headers, addresses, parts), shape the detail and serialize it.
fn message_detail_100kib(c: &mut Criterion) {
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
    let raw = reply(100 * 1024);
    assert!(
        raw.len() >= 100 * 1024 - 2048 && raw.len() <= 100 * 1024 + 2048,
        "{}",
        raw.len()
    );
    let (record, _) =
        pipeline::route_volatile(&cfg, &store, &env, &raw, &Assessment::skipped("bench"))
            .expect("plan applies");
    let check = MessageDetail::new(record.clone(), pipeline::body::read(&raw));
    assert_eq!(
        check.stripped_text.as_deref(),
        Some("Thanks, that fixed it.")
    );
    assert_eq!(check.attachments.len(), 1);
    let mut group = c.benchmark_group("message_detail");
    group.throughput(Throughput::Bytes(raw.len() as u64));
    group.bench_function("100KiB", |b| {
        b.iter(|| {
            let content = pipeline::body::read(std::hint::black_box(&raw));
            let detail = MessageDetail::new(record.clone(), content);
            serde_json::to_vec(&detail).expect("serializes")
        })
    });
    group.finish();
}

/// Attribution alone on a parsed 4 KiB manual forward (the issue #14 budget is 100 µs).
fn attribute_4kib(c: &mut Criterion) {
    let raw = message(4 * 1024, 0);
    let msg = MessageParser::new().parse(&raw).expect("parses");
    c.bench_function("attribute/manual_forward_4KiB", |b| {
        b.iter(|| {
            attribution::attribute(
                std::hint::black_box(&msg),
                "member@acme.example",
                "sales@acme.inbound.test",
            )
        })
    });
}

/// Verification over every fixture of its corpus, parsed beforehand: the cost per corpus pass.
fn verification_corpus(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verification");
    let mut raws = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixture dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "eml") {
            raws.push(std::fs::read(&path).expect("read fixture"));
        }
    }
    let parsed: Vec<_> = raws
        .iter()
        .filter_map(|r| MessageParser::new().parse(r.as_slice()))
        .collect();
    c.bench_function("verification/recognise_corpus", |b| {
        b.iter(|| {
            for m in &parsed {
                std::hint::black_box(verification::recognise(m, "", None));
            }
        })
    });
}

criterion_group!(
    benches,
    bench,
    attribute_4kib,
    verification_corpus,
    message_detail_100kib
);
criterion_main!(benches);
