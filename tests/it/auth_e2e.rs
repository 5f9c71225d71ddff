//! Sender authentication end to end: real SMTP over loopback (client addresses presented through
//! the PROXY protocol, as behind a load balancer), a real DNS server on loopback serving SPF,
//! DKIM, DMARC and ARC records, messages signed and sealed by the tests.
use crate::support;

use std::time::Duration;

use support::dns::{Mode, TestDns};
use support::sign::{add_footer, alter_body, arc_forward, dkim_sign, Forwarder, TestKey};
use support::*;
use tokio::net::TcpStream;

/// An address outside the trusted networks, as a sending MTA on the internet would have.
pub(crate) const ORIGIN_IP: &str = "192.0.2.10";
/// Gmail's forwarding host in these tests.
pub(crate) const GOOGLE_IP: &str = "198.51.100.7";

pub(crate) struct Env {
    pub dns: TestDns,
    pub srv: TestServer,
    pub rsa: TestKey,
}

/// A server that checks every client (no trusted networks), with a PROXY listener trusting
/// loopback, its resolver pointed at the test DNS server. `extra` is appended.
pub(crate) async fn env_with(extra: &str) -> Env {
    let dns = TestDns::start().await;
    let dir = TempDir::new("auth");
    let cfg = ConfigBuilder::checked(dir.path(), dns.addr())
        .extra(extra)
        .parse();
    let srv = TestServer::start_config(dir, cfg).await;
    let rsa = TestKey::rsa();
    // acme.example: the customer's domain. SPF authorises ORIGIN_IP; DKIM key s1; DMARC reject.
    dns.add_txt("acme.example", &format!("v=spf1 ip4:{ORIGIN_IP} -all"));
    dns.add_txt("_dmarc.acme.example", "v=DMARC1; p=reject");
    rsa.publish(&dns, "s1", "acme.example");
    Env { dns, srv, rsa }
}

pub(crate) async fn env() -> Env {
    env_with("").await
}

/// Connect through the PROXY listener as `ip`, read the greeting and EHLO as `helo`.
pub(crate) async fn connect_as(srv: &TestServer, ip: &str, helo: &str) -> Client<TcpStream> {
    let mut c = Client::connect(srv.addr).await;
    c.send_raw(format!("PROXY TCP4 {ip} 127.0.0.1 40000 25\r\n").as_bytes())
        .await;
    c.expect("220").await;
    c.cmd(&format!("EHLO {helo}"), "250").await;
    c
}

pub(crate) fn original(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Carol Customer <{from}>\r\nTo: support@acme-team.example\r\nSubject: {subject}\r\nMessage-ID: <{subject}@acme.example>\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello team,\r\nmy order has not arrived.\r\n"
    )
    .into_bytes()
}

/// Send one message and return the reply to end of data.
pub(crate) async fn deliver(
    srv: &TestServer,
    ip: &str,
    helo: &str,
    mail_from: &str,
    msg: &[u8],
) -> Reply {
    let mut c = connect_as(srv, ip, helo).await;
    // Checks against a dead or slow DNS server take several resolver timeouts.
    c.timeout = Duration::from_secs(30);
    c.cmd(&format!("MAIL FROM:<{mail_from}>"), "250").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "250").await;
    c.cmd("DATA", "354").await;
    c.send_raw(&dot_stuff(msg)).await;
    c.send_raw(b".\r\n").await;
    let r = c.read_reply().await.expect("reply to end of data");
    let _ = c.try_send_raw(b"QUIT\r\n").await;
    r
}

pub(crate) fn record(srv: &TestServer, reply: &Reply) -> inbound::store::MessageRecord {
    assert_eq!(reply.code, 250, "{reply:?}");
    srv.ctx
        .store
        .get(&reply.last_word())
        .unwrap()
        .expect("stored record")
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_mail_with_dkim_and_spf_passes_dmarc() {
    let e = env().await;
    let msg = dkim_sign(
        &original("carol@acme.example", "direct"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "mail.acme.example",
        "carol@acme.example",
        &msg,
    )
    .await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.clone().expect("auth results");
    assert_eq!(auth.spf_mail_from, "pass");
    assert_eq!(auth.dkim.len(), 1);
    assert_eq!(auth.dkim[0].result, "pass");
    assert_eq!(auth.dkim[0].domain, "acme.example");
    assert_eq!(auth.dkim[0].selector, "s1");
    assert_eq!(auth.dmarc, "pass");
    assert_eq!(auth.dmarc_policy, "reject");
    assert_eq!(auth.verdict, "accept");
    assert!(!rec.quarantined);
    assert_eq!(
        rec.client_ip, ORIGIN_IP,
        "checks key on the proxied client address"
    );
    let raw = e.srv.ctx.store.raw_message(&rec).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("Authentication-Results: mx.inbound.test;"),
        "{text}"
    );
    assert!(text.contains("dkim=pass"), "{text}");
    assert!(text.contains("dmarc=pass"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ed25519_signature_passes() {
    let e = env().await;
    let ed = TestKey::ed25519();
    ed.publish(&e.dns, "ed1", "acme.example");
    let msg = dkim_sign(
        &original("carol@acme.example", "ed"),
        "acme.example",
        "ed1",
        &ed,
    );
    // From a host SPF does not authorise: only the Ed25519 signature can make DMARC pass.
    let r = deliver(
        &e.srv,
        "203.0.113.50",
        "other.example",
        "carol@acme.example",
        &msg,
    )
    .await;
    let auth = record(&e.srv, &r).auth.unwrap();
    assert_eq!(auth.spf_mail_from, "fail");
    assert_eq!(auth.dkim[0].result, "pass", "{auth:?}");
    assert_eq!(auth.dmarc, "pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_body_fails_dkim_and_dmarc_reject_refuses_it() {
    let e = env().await;
    let signed = dkim_sign(
        &original("carol@acme.example", "altered"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let r = deliver(
        &e.srv,
        "203.0.113.50",
        "evil.example",
        "carol@acme.example",
        &alter_body(&signed),
    )
    .await;
    assert_eq!(r.code, 550, "{r:?}");
    let text = r.text();
    assert!(text.starts_with("5.7.1"), "{text}");
    assert!(
        text.contains("acme.example"),
        "reason names the failed domain: {text}"
    );
    assert!(
        e.srv.messages().is_empty(),
        "a rejected message is not stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_signed_header_fails_dkim() {
    let e = env_with("[auth]\non_dmarc_reject = \"quarantine\"").await;
    let signed = dkim_sign(
        &original("carol@acme.example", "hdr"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("Subject: hdr", "Subject: pay this invoice");
    let r = deliver(
        &e.srv,
        "203.0.113.50",
        "evil.example",
        "carol@acme.example",
        tampered.as_bytes(),
    )
    .await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.unwrap();
    assert_eq!(auth.dkim[0].result, "fail", "{auth:?}");
    assert_eq!(auth.dmarc, "fail");
    assert!(
        rec.quarantined,
        "on_dmarc_reject = quarantine keeps it, flagged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_is_not_a_pass() {
    let e = env_with("[auth]\non_dmarc_reject = \"quarantine\"").await;
    let msg = dkim_sign(
        &original("carol@acme.example", "nokey"),
        "acme.example",
        "gone",
        &e.rsa,
    );
    let r = deliver(
        &e.srv,
        "203.0.113.50",
        "evil.example",
        "carol@acme.example",
        &msg,
    )
    .await;
    let auth = record(&e.srv, &r).auth.unwrap();
    assert_ne!(auth.dkim[0].result, "pass", "{auth:?}");
    assert!(
        matches!(
            auth.dkim[0].result.as_str(),
            "permerror" | "neutral" | "fail"
        ),
        "{auth:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spf_results_without_dmarc() {
    let e = env().await;
    e.dns
        .add_txt("plain.example", &format!("v=spf1 ip4:{ORIGIN_IP} ~all"));
    e.dns.add_txt("hard.example", "v=spf1 -all");
    let msg = original("bob@plain.example", "spf");
    // pass
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "mail.plain.example",
        "bob@plain.example",
        &msg,
    )
    .await;
    let rec = record(&e.srv, &r);
    assert_eq!(rec.auth.as_ref().unwrap().spf_mail_from, "pass");
    assert!(!rec.quarantined);
    // softfail, no DKIM, no DMARC: unauthenticated -> quarantined by default
    let r = deliver(
        &e.srv,
        "203.0.113.9",
        "x.example",
        "bob@plain.example",
        &msg,
    )
    .await;
    let rec = record(&e.srv, &r);
    assert_eq!(rec.auth.as_ref().unwrap().spf_mail_from, "softfail");
    assert!(rec.quarantined, "{:?}", rec.auth);
    // fail
    let r = deliver(
        &e.srv,
        "203.0.113.9",
        "x.example",
        "bob@hard.example",
        &original("bob@hard.example", "x"),
    )
    .await;
    let rec = record(&e.srv, &r);
    assert_eq!(rec.auth.as_ref().unwrap().spf_mail_from, "fail");
    assert!(rec.quarantined);
}

#[tokio::test(flavor = "multi_thread")]
async fn spf_temperror_is_a_451_not_an_accept() {
    let e = env().await;
    e.dns
        .add_txt("flaky.example", "v=spf1 include:_spf.flaky.example -all");
    e.dns.add_timeout("_spf.flaky.example");
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "x.example",
        "bob@flaky.example",
        &original("bob@flaky.example", "t"),
    )
    .await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text().starts_with("4.7.0"), "{r:?}");
    assert!(e.srv.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn dmarc_quarantine_and_none_policies() {
    let e = env().await;
    e.dns.add_txt("q.example", "v=spf1 -all");
    e.dns.add_txt("_dmarc.q.example", "v=DMARC1; p=quarantine");
    e.dns.add_txt("n.example", "v=spf1 -all");
    e.dns.add_txt("_dmarc.n.example", "v=DMARC1; p=none");
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "x.example",
        "a@q.example",
        &original("a@q.example", "q"),
    )
    .await;
    let rec = record(&e.srv, &r);
    assert!(rec.quarantined);
    assert_eq!(rec.auth.as_ref().unwrap().dmarc_policy, "quarantine");
    assert!(rec.auth.as_ref().unwrap().reason.contains("q.example"));
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "x.example",
        "a@n.example",
        &original("a@n.example", "n"),
    )
    .await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.clone().unwrap();
    assert_eq!(auth.dmarc, "fail");
    // p=none asks nothing of DMARC, but nothing authenticates this message either (SPF fail, no
    // DKIM): our own rule for unauthenticated mail applies (issue #10).
    assert!(rec.quarantined, "{auth:?}");
    assert!(
        auth.reason.starts_with("unauthenticated sender n.example"),
        "{auth:?}"
    );
    // With an SPF pass, p=none only monitors.
    e.dns
        .add_txt("n2.example", &format!("v=spf1 ip4:{ORIGIN_IP} -all"));
    e.dns
        .add_txt("_dmarc.n2.example", "v=DMARC1; p=none; aspf=s");
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "x.example",
        "a@n2.example",
        &original("a@n2.example", "n2"),
    )
    .await;
    let rec = record(&e.srv, &r);
    assert!(!rec.quarantined, "p=none only monitors: {:?}", rec.auth);
}

#[tokio::test(flavor = "multi_thread")]
async fn unaligned_spf_pass_does_not_satisfy_dmarc() {
    let e = env().await;
    // The envelope domain passes SPF, but the From domain (acme.example, p=reject) is not aligned.
    e.dns.add_txt(
        "bulk-sender.example",
        &format!("v=spf1 ip4:{ORIGIN_IP} -all"),
    );
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "x.example",
        "bounce@bulk-sender.example",
        &original("carol@acme.example", "u"),
    )
    .await;
    assert_eq!(r.code, 550, "{r:?}");
    // With relaxed alignment a subdomain envelope is aligned.
    e.dns.add_txt(
        "bounces.acme.example",
        &format!("v=spf1 ip4:{ORIGIN_IP} -all"),
    );
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "x.example",
        "b@bounces.acme.example",
        &original("carol@acme.example", "a"),
    )
    .await;
    let rec = record(&e.srv, &r);
    assert_eq!(rec.auth.unwrap().dmarc, "pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_through_trusted_arc_sealer_is_accepted() {
    let e = env().await;
    let google = TestKey::rsa();
    google.publish(&e.dns, "arc-20240605", "google.com");
    e.dns
        .add_txt("gmail.com", &format!("v=spf1 ip4:{GOOGLE_IP} -all"));
    let signed = dkim_sign(
        &original("carol@acme.example", "fwd"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    // Gmail verifies, then its forwarding adds a footer (breaking the original DKIM) and seals.
    let forwarded = arc_forward(
        &e.dns.authenticator(),
        &signed,
        &Forwarder::google(&google),
        add_footer,
    )
    .await;
    let r = deliver(
        &e.srv,
        GOOGLE_IP,
        "mail-sor-f41.google.com",
        "team+caf_=support=demo.inbound.test@gmail.com",
        &forwarded,
    )
    .await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.unwrap();
    assert_eq!(auth.arc, "pass", "{auth:?}");
    assert_eq!(auth.arc_sealer.as_deref(), Some("google.com"));
    assert_eq!(
        auth.dmarc, "fail",
        "the original signature broke in forwarding: {auth:?}"
    );
    assert_eq!(auth.verdict, "accept");
    assert!(
        auth.override_by
            .as_deref()
            .unwrap_or("")
            .starts_with("arc:google.com"),
        "{auth:?}"
    );
    assert!(!rec.quarantined);
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_or_broken_arc_chain_is_rejected_under_p_reject() {
    let e = env().await;
    let evil = TestKey::rsa();
    evil.publish(&e.dns, "arc", "evil-forwarder.example");
    let signed = dkim_sign(
        &original("carol@acme.example", "evil"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let f = Forwarder {
        authserv_id: "mx.evil-forwarder.example",
        domain: "evil-forwarder.example",
        selector: "arc",
        key: &evil,
        remote_ip: "192.0.2.66".parse().unwrap(),
    };
    let sealed = arc_forward(&e.dns.authenticator(), &signed, &f, add_footer).await;
    let r = deliver(
        &e.srv,
        "192.0.2.66",
        "evil-forwarder.example",
        "x@evil-forwarder.example",
        &sealed,
    )
    .await;
    assert_eq!(
        r.code, 550,
        "a valid chain from an untrusted sealer does not vouch: {r:?}"
    );

    // A trusted sealer's chain broken after sealing (body changed again) does not vouch either.
    let google = TestKey::rsa();
    google.publish(&e.dns, "arc-20240605", "google.com");
    let sealed = arc_forward(
        &e.dns.authenticator(),
        &signed,
        &Forwarder::google(&google),
        add_footer,
    )
    .await;
    let broken = String::from_utf8(sealed)
        .unwrap()
        .replace("my order has not arrived", "send gift cards");
    let r = deliver(
        &e.srv,
        GOOGLE_IP,
        "mail.google.com",
        "x@gmail.com",
        broken.as_bytes(),
    )
    .await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(e.srv.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_forwarder_with_original_dkim_is_accepted_despite_strict_alignment() {
    // acme.example demands strict DKIM alignment; its mail is signed by mail.acme.example, so
    // DMARC fails once SPF breaks in forwarding. The inbox trusts its provider's forwarding
    // range, and a DKIM signature of the original domain verifies: accepted.
    let e = env_with(&format!(
        "[inbox.auth]\ntrusted_forwarders = [\"{GOOGLE_IP}/32\"]"
    ))
    .await;
    e.dns
        .add_txt("_dmarc.acme.example", "v=DMARC1; p=reject; adkim=s; aspf=s");
    e.dns.remove("_dmarc.acme.example");
    e.dns
        .add_txt("_dmarc.acme.example", "v=DMARC1; p=reject; adkim=s; aspf=s");
    e.rsa.publish(&e.dns, "s2", "mail.acme.example");
    let msg = dkim_sign(
        &original("carol@acme.example", "strict"),
        "mail.acme.example",
        "s2",
        &e.rsa,
    );
    let r = deliver(&e.srv, GOOGLE_IP, "mail.google.com", "team@gmail.com", &msg).await;
    let auth = record(&e.srv, &r).auth.unwrap();
    assert_eq!(auth.dmarc, "fail", "{auth:?}");
    assert!(
        auth.override_by
            .as_deref()
            .unwrap_or("")
            .starts_with("trusted-forwarder"),
        "{auth:?}"
    );
    // The same message from an untrusted host is rejected.
    let r = deliver(
        &e.srv,
        "203.0.113.77",
        "mail.example",
        "team@gmail.com",
        &msg,
    )
    .await;
    assert_eq!(r.code, 550, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_down_gives_451_and_the_server_keeps_working() {
    let e = env().await;
    let msg = dkim_sign(
        &original("carol@acme.example", "down"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    e.dns.set_mode(Mode::Down);
    let started = std::time::Instant::now();
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "mail.acme.example",
        "carol@acme.example",
        &msg,
    )
    .await;
    eprintln!("451 after {:?} with the DNS server down", started.elapsed());
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text().starts_with("4.7.0"), "{r:?}");
    e.dns.set_mode(Mode::Normal);
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "mail.acme.example",
        "carol@acme.example",
        &msg,
    )
    .await;
    assert_eq!(
        r.code, 250,
        "after DNS recovers the retry is accepted: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_dns_times_out_with_451() {
    let e = env().await;
    e.dns.set_mode(Mode::Slow(Duration::from_secs(5)));
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "mail.acme.example",
        "carol@acme.example",
        &original("carol@acme.example", "slow"),
    )
    .await;
    assert_eq!(r.code, 451, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_are_cached_between_messages() {
    let e = env().await;
    let msg = dkim_sign(
        &original("carol@acme.example", "c1"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "mail.acme.example",
        "carol@acme.example",
        &msg,
    )
    .await;
    assert_eq!(r.code, 250);
    let after_first = e.dns.queries();
    for _ in 0..3 {
        let r = deliver(
            &e.srv,
            ORIGIN_IP,
            "mail.acme.example",
            "carol@acme.example",
            &msg,
        )
        .await;
        assert_eq!(r.code, 250);
    }
    assert_eq!(
        e.dns.queries(),
        after_first,
        "SPF, DKIM key and DMARC come from the cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_clients_are_checked_unless_trusted() {
    // Without the PROXY header trick: a plain listener, no trusted networks, a domain whose SPF
    // forbids everything and DMARC rejects. The check keys on 127.0.0.1 and rejects.
    let dns = TestDns::start().await;
    dns.add_txt("acme.example", "v=spf1 -all");
    dns.add_txt("_dmarc.acme.example", "v=DMARC1; p=reject");
    let dir = TempDir::new("auth-lo");
    let cfg = ConfigBuilder::checked(dir.path(), dns.addr())
        .listener("127.0.0.1:0")
        .parse();
    let srv = TestServer::start_config(dir, cfg).await;
    let mut c = srv.connect().await;
    c.hello().await;
    let r = c
        .send_message(
            "carol@acme.example",
            &["support@demo.inbound.test"],
            &original("carol@acme.example", "lo"),
        )
        .await;
    assert_eq!(r.code, 550, "{r:?}");
}
