//! What the lead's HTTP endpoints will serve, called as functions on a real server: the
//! Prometheus text after real SMTP traffic (`api::metrics_text`) and readiness
//! (`health::readiness`) with its store, listener and DNS checks, DNS on a loopback server that
//! answers, or that has gone silent.
use crate::support;

use std::time::Duration;

use inbound::api::metrics_text as render;
use inbound::context::health::readiness;
use support::dns::{Mode, TestDns};
use support::*;

/// The value of one sample line (`name` includes its labels) in rendered metrics.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_messages_rejections_and_latencies() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    let mut bytes = 0;
    for i in 0..3 {
        let body = message(&format!("metrics-{i}"));
        bytes += body.len();
        let r = c
            .send_message("alice@example.com", &["support@demo.inbound.test"], &body)
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.cmd("MAIL FROM:<alice@example.com>", "250").await;
    c.cmd("RCPT TO:<nobody@demo.inbound.test>", "550 5.1.1")
        .await;
    c.cmd("RCPT TO:<someone@elsewhere.example>", "550 5.7.1")
        .await;
    c.cmd("RSET", "250").await;
    c.cmd("MAIL FROM:<alice@example.com> SIZE=999999999", "552")
        .await;

    let text = render(&srv.ctx);
    assert_eq!(sample(&text, "inbound_messages_accepted_total"), 3.0);
    assert_eq!(
        sample(&text, "inbound_accepted_message_bytes_total"),
        bytes as f64
    );
    for (reason, n) in [
        ("unknown_recipient", 1.0),
        ("relay_denied", 1.0),
        ("size", 1.0),
        ("policy", 0.0),
        ("local_error", 0.0),
    ] {
        assert_eq!(
            sample(
                &text,
                &format!("inbound_messages_rejected_total{{reason=\"{reason}\"}}")
            ),
            n,
            "{reason}"
        );
    }
    // Loopback is a trusted network in the test config: checks skipped, three times.
    assert_eq!(
        sample(&text, "inbound_auth_verdicts_total{verdict=\"skipped\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "inbound_auth_verdicts_total{verdict=\"accept\"}"),
        0.0
    );
    assert_eq!(sample(&text, "inbound_connections_accepted_total"), 1.0);
    assert_eq!(sample(&text, "inbound_sessions_open"), 1.0);
    assert!(sample(&text, "inbound_received_bytes_total") > bytes as f64);
    for h in [
        "inbound_store_commit_duration_seconds",
        "inbound_end_of_data_reply_duration_seconds",
    ] {
        assert_eq!(sample(&text, &format!("{h}_count")), 3.0, "{h}");
        assert_eq!(
            sample(&text, &format!("{h}_bucket{{le=\"+Inf\"}}")),
            3.0,
            "{h}"
        );
        assert!(sample(&text, &format!("{h}_sum")) > 0.0, "{h}");
    }
    assert_eq!(sample(&text, "inbound_store_commit_queue_depth"), 0.0);
    srv.ctx.metrics.set_outbox_depth(4);
    assert_eq!(sample(&render(&srv.ctx), "inbound_outbox_depth"), 4.0);

    c.cmd("QUIT", "221").await;
    c.expect_closed().await;
    // The session ends just after its last reply.
    let mut open = 1.0;
    for _ in 0..100 {
        open = sample(&render(&srv.ctx), "inbound_sessions_open");
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_per_ip_cap_are_counted_by_reason() {
    let srv = TestServer::start_with("[limits]\nmax_connections_per_ip = 1\n").await;
    let mut first = srv.connect().await;
    first.hello().await;
    let mut second = srv.connect().await;
    second.expect("421 4.7.0").await;
    let text = render(&srv.ctx);
    assert_eq!(
        sample(
            &text,
            "inbound_connections_refused_total{reason=\"per_ip\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "inbound_connections_accepted_total"), 1.0);
}

/// A test server that resolves through `dns` only, giving up on a query after 300 ms.
async fn with_dns(dns: &TestDns) -> TestServer {
    let dir = TempDir::new("srv");
    let cfg = ConfigBuilder::test(dir.path())
        .resolver(dns.addr())
        .set("dns", "timeout = \"300ms\"")
        .parse();
    TestServer::start_config(dir, cfg).await
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_when_store_listeners_and_dns_answer_and_dns_is_probed_once_per_interval() {
    let dns = TestDns::start().await;
    let mut srv = with_dns(&dns).await;
    // `run` starts the accept loops on its task; wait until it has.
    let mut r = readiness(&srv.ctx).await;
    for _ in 0..100 {
        if r.listeners_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        r = readiness(&srv.ctx).await;
    }
    assert!(
        r.ready && r.store_writable && r.listeners_up && r.dns_reachable,
        "{r:?}"
    );
    assert!(r.problems.is_empty(), "{r:?}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["ready"], true);
    assert_eq!(json["dns_reachable"], true);

    // The DNS answer (NXDOMAIN for the root here: any answer will do) is reused for a while.
    let queries = dns.queries();
    assert!(queries >= 1, "the probe should have asked the nameserver");
    for _ in 0..5 {
        assert!(readiness(&srv.ctx).await.ready);
    }
    assert_eq!(dns.queries(), queries, "probes within 10s share one query");

    // At shutdown the accept loops stop: no longer ready.
    srv.trigger_shutdown();
    srv.wait_stopped().await;
    let r = readiness(&srv.ctx).await;
    assert!(!r.listeners_up && !r.ready, "{r:?}");
    assert!(r.store_writable && r.dns_reachable, "{r:?}");
    assert!(
        r.problems.iter().any(|p| p.starts_with("listeners")),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_when_the_nameserver_does_not_answer() {
    let dns = TestDns::start().await;
    dns.set_mode(Mode::Down);
    let srv = with_dns(&dns).await;
    // The probe gives up on a silent nameserver (its own timeout, 300 ms here) instead of waiting
    // for it: a hang guard far above that, not a measure of speed.
    let r = tokio::time::timeout(Duration::from_secs(60), readiness(&srv.ctx))
        .await
        .expect("the readiness probe gave up on a silent nameserver");
    assert!(!r.dns_reachable && !r.ready, "{r:?}");
    assert!(r.store_writable, "{r:?}");
    assert!(r.problems.iter().any(|p| p.starts_with("dns")), "{r:?}");
    assert!(dns.queries() >= 1);
}

/// Issue #16's metrics after real traffic: per-inbox accepted/rejected, webhook outcomes from the
/// outbox worker, the oldest outbox item's age, and which build answers.
#[tokio::test(flavor = "multi_thread")]
async fn per_inbox_counts_webhook_outcomes_outbox_age_and_build_info() {
    let srv = TestServer::start_with(
        "[limits]\nmax_message_bytes = 4000\n\n[[webhook]]\nid = \"app\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"metrics-webhook-secret-0123\"\ntimeout = \"1s\"\n",
    )
    .await;
    let text = render(&srv.ctx);
    // Every configured inbox has its series before its first message.
    assert_eq!(
        sample(
            &text,
            "inbound_inbox_messages_total{inbox=\"sales\",outcome=\"accepted\"}"
        ),
        0.0
    );
    let mut c = srv.connect().await;
    c.hello().await;
    for (to, n) in [
        ("support@demo.inbound.test", 2),
        ("sales@acme.inbound.test", 1),
    ] {
        for i in 0..n {
            let r = c
                .send_message("alice@example.com", &[to], &message(&format!("inbox-{i}")))
                .await;
            assert_eq!(r.code, 250, "{r:?}");
        }
    }
    // Two recipients of one inbox: one message for it.
    let r = c
        .send_message(
            "alice@example.com",
            &["support@demo.inbound.test", "help@demo.inbound.test"],
            &message("twice"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // Over the size cap at the end of data: rejected, counted for its inbox.
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(6000));
    let r = c
        .send_message(
            "alice@example.com",
            &["sales@acme.inbound.test"],
            big.as_bytes(),
        )
        .await;
    assert_eq!(r.code, 552, "{r:?}");
    c.cmd("QUIT", "221").await;

    let text = render(&srv.ctx);
    for (inbox, outcome, n) in [
        ("demo", "accepted", 3.0),
        ("demo", "rejected", 0.0),
        ("sales", "accepted", 1.0),
        ("sales", "rejected", 1.0),
    ] {
        assert_eq!(
            sample(
                &text,
                &format!("inbound_inbox_messages_total{{inbox=\"{inbox}\",outcome=\"{outcome}\"}}")
            ),
            n,
            "{inbox} {outcome}"
        );
    }
    assert!(
        text.contains("inbound_build_info{version=\"0.1.0\",commit=\""),
        "{text}"
    );

    // The webhook endpoint is a closed port: the worker's first attempts fail and are retried,
    // and the waiting items age.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = render(&srv.ctx);
        let retried = sample(&text, "inbound_webhook_deliveries_total{outcome=\"retry\"}");
        let age = sample(&text, "inbound_outbox_oldest_item_age_seconds");
        if retried >= 1.0 && age >= 1.0 {
            assert_eq!(
                sample(
                    &text,
                    "inbound_webhook_deliveries_total{outcome=\"delivered\"}"
                ),
                0.0
            );
            assert_eq!(
                sample(&text, "inbound_relay_deliveries_total{outcome=\"retry\"}"),
                0.0
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retry counted or no age after 15s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `api.metrics_listen`: Prometheus scrapes /metrics there without a token (the API's own
/// /metrics still wants one), and the values follow real traffic.
#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_listener_serves_metrics_without_a_token() {
    use crate::process::{free_port, ServerProcess};
    let root = TempDir::new("metricsl");
    let port = free_port();
    let config = root.path().join("inbound.toml");
    ConfigBuilder::child_process(&root.path().join("data"), "127.0.0.1:0")
        .set("api", &format!("metrics_listen = \"127.0.0.1:{port}\""))
        .write(&config);
    let mut srv = ServerProcess::start(&config, free_port(), &root.path().join("server.log"));
    let mut c = Client::connect(srv.addr).await;
    c.hello().await;
    let r = c
        .send_message(
            "alice@example.com",
            &["sales@acme.inbound.test"],
            &message("scraped"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", "221").await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = support::http::request(addr, "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert_eq!(sample(&text, "inbound_messages_accepted_total"), 1.0);
    assert_eq!(
        sample(
            &text,
            "inbound_inbox_messages_total{inbox=\"sales\",outcome=\"accepted\"}"
        ),
        1.0
    );
    // Only /metrics there.
    let r = support::http::request(addr, "GET", "/v1/messages", &[], None).await;
    assert_eq!(r.status, 404);
    let (status, _) = srv.terminate(Duration::from_secs(15));
    assert!(status.success(), "{}", srv.log_text());
}

/// Issue #16: the configured certificate's expiry is a metric (for an alert before it lapses);
/// a generated self-signed certificate reports 0.
#[tokio::test(flavor = "multi_thread")]
async fn the_configured_certificates_expiry_is_a_metric() {
    let dir = TempDir::new("certexp");
    let mut params = rcgen::CertificateParams::new(vec!["mx.test.example".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 7, 14);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let cfg = ConfigBuilder::test(dir.path())
        .tls_files(&cert_path, &key_path)
        .parse();
    let srv = TestServer::start_config(dir, cfg).await;
    // 2031-07-14T00:00:00Z.
    assert_eq!(
        sample(
            &render(&srv.ctx),
            "inbound_tls_certificate_not_after_seconds"
        ),
        1_941_753_600.0
    );
    srv.stop().await;

    let srv = TestServer::start().await;
    assert_eq!(
        sample(
            &render(&srv.ctx),
            "inbound_tls_certificate_not_after_seconds"
        ),
        0.0
    );
    srv.stop().await;
}
