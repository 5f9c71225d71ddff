//! A node and its PostgreSQL database when things go wrong (#13): the database stopped under
//! load and started again (`451`, never a `250` for what was not committed, `/readyz` 503 while
//! it is away, accepting again by itself), a database that stops answering without refusing
//! (`/readyz` still answers, 503; a session waiting for its commit answers `451` after
//! `store.commit_timeout`), and a node that would not fit in the server's `max_connections`. Real `inbound serve` processes, a throwaway cluster, SMTP and HTTP over
//! loopback.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::multi_node::{
    load_body, spawn_node, start_node_with, stored_as_sent, try_send, Sent, NO_DNS,
};
use crate::process::inbound;
use crate::support::dns::TestDns;
use crate::support::http::Api;
use crate::support::pg::PgCluster;

/// One message's sending: the phase when it started and when its reply came, what came back,
/// and the body sent.
struct Attempt {
    started: u8,
    ended: u8,
    sent: Sent,
    body: Vec<u8>,
}

const BEFORE: u8 = 0;
const AWAY: u8 = 1;
const BACK: u8 = 2;

/// `/readyz` until it answers `status` (a hang guard, not a timing assertion); its JSON.
async fn readyz_until(api: &Api, status: u16, what: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = api.get("/readyz").await;
        if r.status == status {
            return r.json();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {status} {what}: {}",
            r.json()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `enough` holds for the attempts (a hang guard).
async fn until(attempts: &Mutex<Vec<Attempt>>, what: &str, enough: impl Fn(&[Attempt]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !enough(&attempts.lock().unwrap()) {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn acked_in(a: &[Attempt], phase: u8) -> usize {
    a.iter()
        .filter(|a| a.started == phase && matches!(a.sent, Sent::Acked(_)))
        .count()
}

/// Issue #13: the database stopped mid-load. While it is away every message is answered 451
/// (never 250: nothing can be committed), `/readyz` answers 503 with the store not writable;
/// when it is back the same process answers 250 again and `/readyz` 200, without a restart.
/// Every message answered 250, before, around or after, is stored byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_away_mid_load_means_451_then_accepting_resumes_by_itself() {
    let dns = TestDns::start().await;
    let mut pg = PgCluster::start();
    let url = pg.database();
    inbound(&["store", "migrate", "--url", &url]).assert_ok("store migrate");
    let node = start_node_with("127.0.0.1", &url, &dns.addr().to_string(), "", "");
    let public = Api::new(node.api, None).await;
    readyz_until(&public, 200, "at start").await;

    let phase = Arc::new(AtomicU8::new(BEFORE));
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in 0..4 {
        let (phase, attempts, stop) = (phase.clone(), attempts.clone(), stop.clone());
        let addr = node.srv.addr;
        clients.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let body = load_body(&format!("away-c{id}-m{seq}"), (seq + id) % 5 == 0);
                let started = phase.load(Ordering::SeqCst);
                let sent = try_send(addr, &body).await;
                let ended = phase.load(Ordering::SeqCst);
                let refused = !matches!(sent, Sent::Acked(_));
                attempts.lock().unwrap().push(Attempt {
                    started,
                    ended,
                    sent,
                    body,
                });
                if refused {
                    // A sender waits before it retries.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    until(&attempts, "20 messages accepted before the stop", |a| {
        acked_in(a, BEFORE) >= 20
    })
    .await;

    pg.stop();
    phase.store(AWAY, Ordering::SeqCst);
    let away = readyz_until(&public, 503, "while the database is away").await;
    assert_eq!(away["store_writable"], false, "{away}");
    until(&attempts, "20 messages sent and answered while away", |a| {
        a.iter()
            .filter(|a| a.started == AWAY && a.ended == AWAY)
            .count()
            >= 20
    })
    .await;

    // Set before the start: a reply read while the phase still says away came before it.
    phase.store(BACK, Ordering::SeqCst);
    pg.start_again();
    let back = readyz_until(&public, 200, "after the database came back").await;
    assert_eq!(back["store_writable"], true, "{back}");
    until(
        &attempts,
        "20 messages accepted after the database came back",
        |a| acked_in(a, BACK) >= 20,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let while_away: Vec<&Sent> = attempts
        .iter()
        .filter(|a| a.started == AWAY && a.ended == AWAY)
        .map(|a| &a.sent)
        .collect();
    assert!(
        while_away
            .iter()
            .all(|s| matches!(s, Sent::Refused(451, e) if e.starts_with("4.3."))),
        "while the database was away, every answer is 451 4.3.x: {while_away:?}"
    );
    let acked: Vec<(&str, &[u8])> = attempts
        .iter()
        .filter_map(|a| match &a.sent {
            Sent::Acked(q) => Some((q.as_str(), a.body.as_slice())),
            _ => None,
        })
        .collect();
    for (q, body) in &acked {
        assert!(
            stored_as_sent(&node, q, body).await,
            "{q}: acknowledged but not stored as sent"
        );
    }
    eprintln!(
        "{} attempts: {} acknowledged ({} before the stop, {} after the return), {} answered 451 while away",
        attempts.len(),
        acked.len(),
        acked_in(&attempts, BEFORE),
        acked_in(&attempts, BACK),
        while_away.len()
    );
}

/// Issue #13: the pool plus the committers of one node are checked against the server's
/// `max_connections` at start. A node that could not fit even alone refuses to start, and says
/// with which figures: it would otherwise start and defer mail (451) whenever its pool grows.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_cannot_fit_in_max_connections_refuses_to_start_naming_the_figures() {
    let pg = PgCluster::start_with(&["fsync=off", "max_connections=8"]);
    let url = pg.database();
    inbound(&["store", "migrate", "--url", &url]).assert_ok("store migrate");
    let mut node = spawn_node(
        "127.0.0.1",
        &url,
        NO_DNS,
        "pool_size = 6\ncommitters = 4",
        "",
    );
    let (status, _) = node.srv.wait_exit(Duration::from_secs(30), Instant::now());
    let log = node.srv.log_text();
    assert!(!status.success(), "started anyway: {log}");
    eprintln!(
        "{}",
        log.lines()
            .find(|l| l.contains("max_connections"))
            .unwrap_or("")
    );
    for figure in [
        "needs 10 connections",
        "pool_size 6",
        "committers 4",
        "max_connections 8",
    ] {
        assert!(
            log.contains(figure),
            "the refusal should name {figure:?}:\n{log}"
        );
    }
}

/// A node that fits alone but not beside the connections already open (another node's) starts,
/// with a WARN naming the figures; the first node, alone at its start, warns of nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_crowding_max_connections_starts_with_a_warning_naming_the_figures() {
    // Each node opens up to 8 (pool_size 4 + committers 4); the server allows 12.
    let pg = PgCluster::start_with(&["fsync=off", "max_connections=12"]);
    let url = pg.database();
    inbound(&["store", "migrate", "--url", &url]).assert_ok("store migrate");
    let a = start_node_with("127.0.0.1", &url, NO_DNS, "", "");
    let b = start_node_with("127.0.0.2", &url, NO_DNS, "", "");
    let (log_a, log_b) = (a.srv.log_text(), b.srv.log_text());
    assert!(
        !log_a.contains("max_connections"),
        "the first node fits:\n{log_a}"
    );
    let warning = log_b
        .lines()
        .find(|l| l.contains("max_connections"))
        .unwrap_or_else(|| panic!("the second node should warn:\n{log_b}"));
    eprintln!("{warning}");
    assert!(warning.contains("WARN"), "{warning}");
    for figure in ["node_connections=8", "max_connections=12"] {
        assert!(
            warning.contains(figure),
            "the warning should name {figure}: {warning}"
        );
    }
    // A warning, not a refusal: both nodes take mail.
    for node in [&a, &b] {
        let sent = try_send(
            node.srv.addr,
            &load_body(&format!("fit-{}", node.api), false),
        )
        .await;
        assert!(matches!(sent, Sent::Acked(_)), "{sent:?}");
    }
}

/// A database that stops answering without refusing (its processes stopped, as a host that
/// vanished behind a partition): `/readyz` must still answer, 503, rather than wait with it.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_answers_503_while_the_database_does_not_answer() {
    let dns = TestDns::start().await;
    let pg = PgCluster::start();
    let url = pg.database();
    inbound(&["store", "migrate", "--url", &url]).assert_ok("store migrate");
    let node = start_node_with("127.0.0.1", &url, &dns.addr().to_string(), "", "");
    let public = Api::new(node.api, None).await;
    readyz_until(&public, 200, "at start").await;
    pg.signal_all(libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers = Vec::new();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(30), public.get("/readyz")).await;
        let Ok(r) = r else {
            pg.signal_all(libc::SIGCONT);
            panic!("/readyz did not answer within 30 s while the database was frozen: {answers:?}");
        };
        answers.push(r.status);
        if r.status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "{answers:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pg.signal_all(libc::SIGCONT);
    readyz_until(&public, 200, "after the database answered again").await;
}

/// A database that stops answering while a session waits for its message's commit: the
/// session answers `451 4.3.0` once `store.commit_timeout` has passed, instead of holding the
/// sender (before: no answer at all until the database came back or the client gave up).
/// When the database answers again, the sender's retry is accepted: stored, or recorded as a
/// duplicate of the first copy if that one landed late.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_the_database_does_not_confirm_is_451_after_the_commit_timeout() {
    let dns = TestDns::start().await;
    let pg = PgCluster::start();
    let url = pg.database();
    inbound(&["store", "migrate", "--url", &url]).assert_ok("store migrate");
    let node = start_node_with(
        "127.0.0.1",
        &url,
        &dns.addr().to_string(),
        "commit_timeout = \"2s\"",
        "",
    );
    let addr = node.srv.addr;
    let first = load_body("before-the-freeze", false);
    assert!(matches!(try_send(addr, &first).await, Sent::Acked(_)));

    let body = load_body("during-the-freeze", false);
    pg.signal_all(libc::SIGSTOP);
    // try_send's own hang guard (60 s) is what answers `Lost` when no reply ever comes.
    let frozen = try_send(addr, &body).await;
    pg.signal_all(libc::SIGCONT);
    assert_eq!(frozen, Sent::Refused(451, "4.3.0".into()));

    let public = Api::new(node.api, None).await;
    readyz_until(&public, 200, "after the database answered again").await;
    let retried = try_send(addr, &body).await;
    assert!(matches!(retried, Sent::Acked(_)), "{retried:?}");
}
