//! Transcript tests for how sessions end: graceful shutdown (idle sessions get `421 4.3.0`, a
//! message in flight may finish and is stored, new connections are refused), and hostile or broken
//! clients, which end their own session and never the server or what it already acknowledged.
use crate::support;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOSTED: &str = "support@demo.inbound.test";

/// Connections to `addr` get no session: refused outright, or closed without a greeting.
async fn assert_refused(addr: SocketAddr) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let read = read.expect("a connection after shutdown is closed, not left hanging");
    assert!(
        read.is_err() || !buf.starts_with(b"220"),
        "served after shutdown: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_idle_sessions_and_lets_a_message_in_flight_finish() {
    let mut srv = TestServer::start().await;
    let mut earlier = srv.connect().await;
    earlier.hello().await;
    let r = earlier
        .send_message("a@example.com", &[HOSTED], &message("earlier"))
        .await;
    let earlier_id = r.last_word();

    let mut idle = srv.connect().await;
    idle.hello().await;
    let mut busy = srv.connect().await;
    busy.hello().await;
    busy.cmd("MAIL FROM:<b@example.com>", "250").await;
    busy.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    busy.cmd("DATA", "354").await;
    busy.send_raw(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .await;

    srv.trigger_shutdown();
    idle.expect("421 4.3.0").await;
    idle.expect_closed().await;
    earlier.expect("421 4.3.0").await;
    assert_refused(srv.addr).await;

    busy.send_raw(b"second half\r\n.\r\n").await;
    let r = busy.expect("250 2.0.0").await;
    // Then it is told to go too.
    busy.expect("421 4.3.0").await;
    busy.expect_closed().await;
    tokio::time::timeout(Duration::from_secs(10), srv.wait_stopped())
        .await
        .expect("server stops once its sessions are done");

    let rec = srv
        .ctx
        .store
        .get(&r.last_word())
        .unwrap()
        .expect("in-flight message stored");
    assert_eq!(
        srv.ctx.store.body(&rec).unwrap(),
        b"Subject: in flight\r\n\r\nfirst half\r\nsecond half\r\n"
    );
    assert!(srv.ctx.store.get(&earlier_id).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_does_not_wait_past_its_deadline_for_a_stalled_message() {
    let dir = TempDir::new("shut");
    let cfg = ConfigBuilder::test(dir.path())
        .set("server", "shutdown_timeout = \"300ms\"")
        .parse();
    let mut srv = TestServer::start_config(dir, cfg).await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(b"Subject: never finished\r\n").await;
    srv.trigger_shutdown();
    // The data timeout is minutes; the 300 ms shutdown deadline is what ends this.
    tokio::time::timeout(Duration::from_secs(5), srv.wait_stopped())
        .await
        .expect("server stops at its shutdown deadline");
    assert!(srv.messages().is_empty(), "nothing was acknowledged");
    assert_refused(srv.addr).await;
}

/// Deterministic noise (xorshift), so a failure can be replayed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_abrupt_clients_never_hurt_the_server() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    let body = message("before-the-garbage");
    let r = c.send_message("a@example.com", &[HOSTED], &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let kept = r.last_word();
    c.cmd("QUIT", "221").await;

    let abuse: Vec<Vec<u8>> = vec![
        noise(100_000, 1),
        noise(3_000, 2).into_iter().chain(*b"\r\n").cycle().take(40_000).collect(),
        b"\x00\x00\x00\r\n\xff\xfe\xfd\r\nMAIL FROM:<\xc3\x28@example.com>\r\n".to_vec(),
        b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<support@demo.inbound.test>\r\nDATA\r\n"
            .iter()
            .copied()
            .chain(noise(50_000, 3))
            .collect(),
        b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<support@demo.inbound.test>\r\nBDAT 18446744073709551615 LAST\r\nabc"
            .to_vec(),
        b"EHLO x\r\nBDAT 99999999999999999999999\r\n".to_vec(),
        b"MAIL FROM:<".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        Vec::new(),
    ];
    for (i, bytes) in abuse.iter().enumerate() {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        // Some of these are cut off by a 421 before they are all written; that is fine.
        let _ = s.write_all(bytes).await;
        if i % 2 == 0 {
            // Leave without reading anything.
            drop(s);
        } else {
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        }
    }

    // A good client is served, and what was acknowledged before is intact.
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c
        .send_message("a@example.com", &[HOSTED], &message("after-the-garbage"))
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let rec = srv
        .ctx
        .store
        .get(&kept)
        .unwrap()
        .expect("earlier message kept");
    assert_eq!(srv.ctx.store.body(&rec).unwrap(), body);
    assert_eq!(srv.messages().len(), 2, "nothing stored from the garbage");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_vanishes_mid_message_leaves_nothing_behind() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<a@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("DATA", "354").await;
    // Past the inline threshold, so a spool file was started.
    c.send_raw(&vec![b'q'; 300_000]).await;
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let tmp = srv.dir.path().join("spool/tmp");
    while std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "temporary spool file left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(srv.messages().is_empty());
    let mut d = srv.connect().await;
    d.hello().await;
    srv.stop().await;
}
