//! Issue #11, slowloris: clients that trickle, stall or never read must not hold a session. A
//! command line has one deadline from the moment the server waits for it (bytes do not restart
//! it), message data must keep a minimum average rate, and replies left unread for the write
//! timeout drop the connection. Short configured timeouts, generous upper bounds.
use crate::support;
use std::time::{Duration, Instant};

use support::*;

const HOSTED: &str = "support@demo.inbound.test";

async fn wait_no_sessions(srv: &TestServer, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while srv.ctx.limits.open_sessions() > 0 {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_trickled_one_byte_at_a_time_is_cut_at_the_command_deadline() {
    let srv = TestServer::start_with("[limits]\ncommand_timeout = \"1s\"\n").await;
    let mut c = srv.connect().await;
    c.hello().await;
    let started = Instant::now();
    // One byte every 100 ms: each gap is far inside the timeout, the line never ends. Keep
    // going until the server cuts us (or for 8 s: a restarted timer would never cut).
    let line = b"MAIL FROM:<a-very-patient-sender-who-types-slowly@example.com>";
    for b in line.iter().cycle() {
        if srv.ctx.limits.open_sessions() == 0 || started.elapsed() > Duration::from_secs(8) {
            break;
        }
        if !c.try_send_raw(&[*b]).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.expect("421 4.4.2").await;
    c.expect_closed().await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the deadline held for {:?}",
        started.elapsed()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_trickled_below_the_minimum_rate_is_cut_and_nothing_is_stored() {
    let srv = TestServer::start_with(
        "[limits]\ndata_timeout = \"1s\"\nmin_data_rate_bytes_per_second = 1000\n",
    )
    .await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: trickle\r\n\r\n").await;
    // 10 bytes every 100 ms = 100 bytes/s: never silent for the data timeout, far below the rate.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if !c.try_send_raw(b"xxxxxxxxx\n").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if srv.ctx.limits.open_sessions() == 0 {
            break;
        }
    }
    let r = c.expect("421 4.4.2").await;
    assert!(r.text().contains("too slowly"), "{r:?}");
    assert!(wait_no_sessions(&srv, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "cut after {:?}",
        started.elapsed()
    );
    assert!(srv.messages().is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_at_a_decent_rate_is_not_cut_by_the_rate_limit() {
    let srv = TestServer::start_with(
        "[limits]\ndata_timeout = \"1s\"\nmin_data_rate_bytes_per_second = 1000\n",
    )
    .await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: steady\r\n\r\n").await;
    // 1 KiB every 200 ms = 5 KiB/s for 2.5 s: longer than the grace, above the rate.
    for _ in 0..12 {
        c.send_raw(&[b"y".repeat(1022), b"\r\n".to_vec()].concat())
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.send_raw(b".\r\n").await;
    c.expect("250").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_replies_is_dropped_by_the_write_timeout() {
    let srv = TestServer::start_with("[limits]\nwrite_timeout = \"1s\"\n").await;
    let c = srv.connect().await;
    let mut stream = c.into_inner();
    // Pipelined NOOPs, never a read: the replies fill the server's send buffer and ours.
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let chunk = b"NOOP\r\n".repeat(10_000);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            match tokio::time::timeout(Duration::from_secs(5), stream.write_all(&chunk)).await {
                Ok(Ok(())) => {}
                // Reset by the server, or our send buffer is full for good.
                _ => break,
            }
        }
        stream
    });
    assert!(
        wait_no_sessions(&srv, Duration::from_secs(45)).await,
        "the session that reads nothing is still open"
    );
    let stream = writer.await.unwrap();
    drop(stream);
    srv.stop().await;
}
