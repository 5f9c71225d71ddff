//! Transcript tests for the message size cap (RFC 1870): the SIZE keyword, `SIZE=` refused at
//! MAIL, and undeclared oversized DATA/BDAT read to the end, answered `552 5.3.4`, stored nowhere,
//! with the connection still usable. Most use a small `max_message_bytes`; two send a real 31 MB
//! body against the default 30 MB cap.
use crate::support;
use std::path::Path;

use support::*;

const HOSTED: &str = "support@demo.inbound.test";
const DEFAULT_MAX: usize = 31_457_280;

fn small_cap(bytes: u64) -> String {
    format!("[limits]\nmax_message_bytes = {bytes}\n")
}

/// Files left in the spool (temporary and published).
fn spool_files(dir: &Path) -> usize {
    ["spool/tmp", "spool/msg"]
        .iter()
        .map(|d| {
            std::fs::read_dir(dir.join(d))
                .map(|r| r.count())
                .unwrap_or(0)
        })
        .sum()
}

/// A body of exactly `len` bytes: a header, then 1000-byte CRLF lines with no leading dots (so
/// DATA needs no stuffing), padded with `x` to the exact length.
fn body_of(len: usize) -> Vec<u8> {
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    let line: Vec<u8> = [vec![b'y'; 998], b"\r\n".to_vec()].concat();
    while body.len() + line.len() + 2 <= len {
        body.extend_from_slice(&line);
    }
    body.resize(len - 2, b'x');
    body.extend_from_slice(b"\r\n");
    assert_eq!(body.len(), len);
    body
}

/// DATA with `body` (already free of leading dots) and the terminator, in one write.
async fn data(c: &mut Client<tokio::net::TcpStream>, body: &[u8]) -> Reply {
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
    let mut w = Vec::with_capacity(body.len() + 3);
    w.extend_from_slice(body);
    w.extend_from_slice(b".\r\n");
    c.send_raw(&w).await;
    c.read_reply().await.expect("reply to end of data")
}

async fn a_normal_message_is_still_accepted(
    srv: &TestServer,
    c: &mut Client<tokio::net::TcpStream>,
) {
    let body = message("after-refusal");
    let r = c.send_message("a@example.com", &[HOSTED], &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().expect("stored");
    assert_eq!(srv.ctx.store.body(&rec).unwrap(), body);
}

#[tokio::test(flavor = "multi_thread")]
async fn size_keyword_follows_the_configured_cap_and_size_param_is_checked_at_mail() {
    let srv = TestServer::start_with(&small_cap(10_000)).await;
    let mut c = srv.connect().await;
    let ehlo = c.hello().await;
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 10000"), "{ehlo:?}");
    c.cmd("MAIL FROM:<a@example.com> SIZE=10001", "552 5.3.4")
        .await;
    // Refused at once: no transaction was opened.
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "503 5.5.1").await;
    c.cmd("MAIL FROM:<a@example.com> SIZE=10000", "250").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn default_cap_is_30_mib_and_size_over_it_is_552_at_once() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    let ehlo = c.hello().await;
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 31457280"), "{ehlo:?}");
    c.cmd("MAIL FROM:<a@b> SIZE=31457281", "552 5.3.4").await;
    c.cmd("MAIL FROM:<a@b> SIZE=99999999999", "552 5.3.4").await;
    c.cmd("MAIL FROM:<a@b> SIZE=31457280", "250 2.1.0").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_of_exactly_the_cap_is_accepted_and_one_byte_more_is_not() {
    let srv = TestServer::start_with(&small_cap(100_000)).await;
    let mut c = srv.connect().await;
    c.hello().await;
    let exact = body_of(100_000);
    let r = data(&mut c, &exact).await;
    assert_eq!(r.code, 250, "{r:?}");
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().expect("stored");
    assert_eq!(rec.size, 100_000);
    assert_eq!(rec.sha256, sha256(&exact));

    let r = data(&mut c, &body_of(100_001)).await;
    assert_eq!(
        (r.code, r.lines[0].as_str()),
        (552, "5.3.4 Message size exceeds fixed maximum message size")
    );
    assert_eq!(srv.messages().len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn undeclared_oversized_data_is_read_to_its_end_then_552() {
    let srv = TestServer::start_with(&small_cap(50_000)).await;
    let mut c = srv.connect().await;
    c.hello().await;
    // Several times the cap, with lines that look like commands inside: they must be swallowed.
    let mut body = body_of(200_000);
    body.extend_from_slice(b"QUIT\r\nMAIL FROM:<x@y>\r\n");
    let r = data(&mut c, &body).await;
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text().starts_with("5.3.4"), "{r:?}");
    assert!(srv.messages().is_empty());
    assert_eq!(spool_files(srv.dir.path()), 0, "no spool file left behind");
    // The same connection goes on: a new MAIL is not nested.
    a_normal_message_is_still_accepted(&srv, &mut c).await;
    assert_eq!(srv.messages().len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bdat_is_552_and_the_connection_stays_usable() {
    let srv = TestServer::start_with(&small_cap(50_000)).await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    let chunk = body_of(120_000);
    let mut w = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
    w.extend_from_slice(&chunk);
    c.send_raw(&w).await;
    c.expect("552 5.3.4").await;
    assert!(srv.messages().is_empty());
    assert_eq!(spool_files(srv.dir.path()), 0);
    a_normal_message_is_still_accepted(&srv, &mut c).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bdat_in_many_pipelined_chunks_does_not_count_as_client_errors() {
    // The cap is our limit, not a protocol mistake: answering every chunk past it with 552 must
    // not trip `max_bad_commands` and drop the connection.
    let srv = TestServer::start_with(&small_cap(10_000)).await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    let chunk = [b'z'; 1000];
    let mut w = Vec::new();
    for i in 0..30 {
        let last = if i == 29 { " LAST" } else { "" };
        w.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        w.extend_from_slice(&chunk);
    }
    c.send_raw(&w).await;
    for i in 1..=30 {
        let r = c
            .read_reply()
            .await
            .unwrap_or_else(|| panic!("reply {i}: EOF"));
        let want = if i <= 10 { 250 } else { 552 };
        assert_eq!(r.code, want, "chunk {i}: {r:?}");
    }
    assert!(srv.messages().is_empty());
    a_normal_message_is_still_accepted(&srv, &mut c).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn real_31_mib_data_is_refused_after_being_read_and_the_session_continues() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.timeout = std::time::Duration::from_secs(60);
    c.hello().await;
    let body = body_of(31 * 1024 * 1024);
    assert!(body.len() > DEFAULT_MAX);
    let r = data(&mut c, &body).await;
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text().starts_with("5.3.4"), "{r:?}");
    assert!(srv.messages().is_empty());
    assert_eq!(spool_files(srv.dir.path()), 0);
    a_normal_message_is_still_accepted(&srv, &mut c).await;

    // Same through BDAT, in 1 MiB chunks.
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    let chunks: Vec<&[u8]> = body.chunks(1024 * 1024).collect();
    let mut refused = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        let mut w = format!("BDAT {}{last}\r\n", chunk.len()).into_bytes();
        w.extend_from_slice(chunk);
        c.send_raw(&w).await;
        let r = c.read_reply().await.expect("reply to a chunk");
        match r.code {
            250 => assert_eq!(refused, 0, "250 after a 552: {r:?}"),
            552 => refused += 1,
            _ => panic!("chunk {i}: {r:?}"),
        }
    }
    assert_eq!(
        refused, 1,
        "only the chunk crossing the cap (the LAST one) is refused"
    );
    assert_eq!(srv.messages().len(), 1);
    a_normal_message_is_still_accepted(&srv, &mut c).await;
    assert_eq!(srv.messages().len(), 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_of_exactly_30_mib_is_accepted() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.timeout = std::time::Duration::from_secs(60);
    c.hello().await;
    let body = body_of(DEFAULT_MAX);
    let r = data(&mut c, &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().expect("stored");
    assert_eq!(rec.size, DEFAULT_MAX as u64);
    assert_eq!(rec.body_location, "spool");
    assert_eq!(rec.sha256, sha256(&body));
    srv.stop().await;
}

/// Issue #11: the header section has a cap of its own, checked while it streams in (DATA and
/// BDAT alike); past it the message is refused 552 5.3.4 and the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_header_section_over_its_cap_is_552_in_data_and_bdat() {
    let srv = TestServer::start_with("[limits]\nmax_header_bytes = 4096\n").await;
    let mut c = srv.connect().await;
    c.hello().await;
    let mut big = b"From: a@example.com\r\nReferences:".to_vec();
    for i in 0..400 {
        big.extend_from_slice(format!(" <{i}@x.example>\r\n").as_bytes());
    }
    big.extend_from_slice(b"Subject: big\r\n\r\nshort body\r\n");
    let r = c.send_message("a@example.com", &[HOSTED], &big).await;
    assert_eq!(
        (r.code, r.lines[0].starts_with("5.3.4")),
        (552, true),
        "{r:?}"
    );
    assert!(r.text().contains("header"), "{r:?}");
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    let mut w = format!("BDAT {} LAST\r\n", big.len()).into_bytes();
    w.extend_from_slice(&big);
    c.send_raw(&w).await;
    c.expect("552 5.3.4").await;
    // A big body under a small header is fine.
    let mut ok = b"From: a@example.com\r\nSubject: long body\r\n\r\n".to_vec();
    ok.extend_from_slice(&b"body line\r\n".repeat(2000));
    let r = c.send_message("a@example.com", &[HOSTED], &ok).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(srv.messages().len(), 1);
    assert_eq!(spool_files(srv.dir.path()), 0);
    srv.stop().await;
}
