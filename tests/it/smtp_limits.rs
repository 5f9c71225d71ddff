//! Transcript tests for the abuse limits: global and per-IP connection caps, per-IP connection and
//! message rates, command and data timeouts, the bad-command budget, and over-long command lines
//! (RFC 5321 §4.5.3.1.4: 500 5.5.2, then the session goes on).
use crate::support;
use std::time::{Duration, Instant};

use support::*;

const HOSTED: &str = "support@demo.inbound.test";

fn limits(body: &str) -> String {
    format!("[limits]\n{body}\n")
}

/// Wait until the server has released the sessions that ended (the per-IP slot and the global
/// permit are freed just after the client sees the close).
async fn wait_open_sessions(srv: &TestServer, at_most: usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while srv.ctx.limits.open_sessions() > at_most {
        assert!(Instant::now() < deadline, "sessions did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn third_connection_from_one_ip_gets_421_while_two_are_open() {
    let srv = TestServer::start_with(&limits("max_connections_per_ip = 2")).await;
    let mut a = srv.connect().await;
    a.hello().await;
    let mut b = srv.connect().await;
    b.hello().await;
    let mut third = srv.connect().await;
    third.expect("421 4.7.0").await;
    third.expect_closed().await;
    // The open sessions are unaffected.
    a.cmd("NOOP", "250").await;
    b.cmd("NOOP", "250").await;
    // When one ends, its slot is free again.
    a.cmd("QUIT", "221").await;
    a.expect_closed().await;
    wait_open_sessions(&srv, 1).await;
    let mut d = srv.connect().await;
    d.hello().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_rate_per_ip_is_enforced() {
    let srv = TestServer::start_with(&limits("connections_per_ip_per_minute = 2")).await;
    for _ in 0..2 {
        let mut c = srv.connect().await;
        c.hello().await;
        c.cmd("QUIT", "221").await;
    }
    // Sequential, not concurrent: the rate and not the concurrency cap refuses this one.
    wait_open_sessions(&srv, 0).await;
    let mut c = srv.connect().await;
    let r = c.expect("421 4.7.0").await;
    assert!(r.text().contains("slow down"), "{r:?}");
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn message_rate_per_ip_refuses_the_third_mail_with_451() {
    let srv = TestServer::start_with(&limits("messages_per_ip_per_minute = 2")).await;
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c
        .send_message("a@example.com", &[HOSTED], &message("one"))
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<a@example.com>", "451 4.7.1").await;
    // Per address, not per connection: a new connection from the same address is limited too.
    let mut d = srv.connect().await;
    d.hello().await;
    d.cmd("MAIL FROM:<a@example.com>", "451 4.7.1").await;
    // A temporary refusal does not end the session.
    d.cmd("NOOP", "250").await;
    assert_eq!(srv.messages().len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn global_connection_cap_refuses_with_421_and_recovers() {
    let srv = TestServer::start_with(&limits("max_connections = 2")).await;
    let mut a = srv.connect().await;
    a.hello().await;
    let mut b = srv.connect().await;
    b.hello().await;
    let mut third = srv.connect().await;
    let r = third.expect("421 4.7.0").await;
    assert!(r.text().contains("Too many connections"), "{r:?}");
    third.expect_closed().await;
    a.cmd("NOOP", "250").await;
    // Once a session ends, the next connection is served.
    a.cmd("QUIT", "221").await;
    a.expect_closed().await;
    wait_open_sessions(&srv, 1).await;
    let mut d = srv.connect().await;
    d.hello().await;
    let r = d
        .send_message("a@example.com", &[HOSTED], &message("cap"))
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    b.cmd("NOOP", "250").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_client_gets_421_4_4_2_after_the_command_timeout() {
    let srv = TestServer::start_with(&limits("command_timeout = \"1s\"")).await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    let started = Instant::now();
    c.expect("421 4.4.2").await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    c.expect_closed().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_data_gets_421_4_4_2_after_the_data_timeout_and_nothing_is_stored() {
    let srv = TestServer::start_with(&limits("data_timeout = \"1s\"")).await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: stalled\r\n\r\nhalf a mess").await;
    let r = c.expect("421 4.4.2").await;
    assert!(r.text().contains("data"), "{r:?}");
    c.expect_closed().await;
    assert!(srv.messages().is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_bad_commands_end_the_session() {
    let srv = TestServer::start_with(&limits("max_bad_commands = 3")).await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("FOO", "500 5.5.2").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "503 5.5.1").await;
    // Good commands in between do not reset the count.
    c.cmd("NOOP", "250").await;
    c.cmd("BAR", "500 5.5.2").await;
    c.expect("421 4.7.0").await;
    c.expect_closed().await;
    // Another client is not affected.
    let mut d = srv.connect().await;
    d.hello().await;
    d.cmd("FOO", "500").await;
    d.cmd("NOOP", "250").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn command_line_over_4096_bytes_is_500_and_the_session_continues() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    // In one write, well past the limit (but under one read).
    let long = format!("NOOP {}", "x".repeat(5000));
    c.cmd(&long, "500 5.5.2").await;
    c.cmd("NOOP", "250").await;
    // A long MAIL must not open a transaction.
    let long_mail = format!("MAIL FROM:<{}@example.com>", "a".repeat(5000));
    c.cmd(&long_mail, "500 5.5.2").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "503 5.5.1").await;
    // Larger than one server read (16 KiB), sent in pieces.
    c.send_raw(b"RCPT TO:<").await;
    for _ in 0..5 {
        c.send_raw(&[b'b'; 8000]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.send_raw(b"@demo.inbound.test>\r\nNOOP\r\n").await;
    c.expect("500 5.5.2").await;
    c.expect("250").await;
    // A full transaction still works on this connection.
    let body = message("after-long-lines");
    let r = c.send_message("a@example.com", &[HOSTED], &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn command_line_of_exactly_4096_bytes_is_accepted_and_4097_is_not() {
    // 4096 bytes, CRLF included, is the longest command line taken (RFC 5321 asks for 512 at
    // least), whether it arrives in one read or in several.
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    let line = |len: usize| format!("NOOP {}\r\n", "y".repeat(len - 7)).into_bytes();
    for (len, want) in [(4096, "250"), (4097, "500 5.5.2")] {
        c.send_raw(&line(len)).await;
        c.expect(want).await;
        let l = line(len);
        c.send_raw(&l[..100]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        c.send_raw(&l[100..]).await;
        c.expect(want).await;
    }
    c.cmd("NOOP", "250").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_per_connection_are_capped() {
    let srv = TestServer::start_with(&limits("max_transactions_per_connection = 2")).await;
    let mut c = srv.connect().await;
    c.hello().await;
    for i in 0..2 {
        let r = c
            .send_message("a@example.com", &[HOSTED], &message(&format!("t{i}")))
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.cmd("MAIL FROM:<a@example.com>", "421 4.7.0").await;
    c.expect_closed().await;
    srv.stop().await;
}
