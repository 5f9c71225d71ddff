//! The test harness's own tests: the loopback DNS server (tests/it/support/dns.rs) answers as an
//! authoritative server would, through mail-auth and through hickory-resolver directly, and the
//! fixture signers (tests/it/support/sign.rs) produce DKIM signatures and ARC sets that mail-auth
//! verifies against it.

use crate::support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::hickory_resolver::{net::runtime::TokioRuntimeProvider, TokioResolver};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DnsError, Error, MessageAuthenticator, SpfResult,
};
use support::dns::{Mode, TestDns, RESOLVER_TIMEOUT};
use support::sign::{self, Forwarder, TestKey};

fn resolver(dns: &TestDns) -> TokioResolver {
    TokioResolver::builder_with_config(dns.resolver_config(), TokioRuntimeProvider::default())
        .with_options(TestDns::resolver_opts())
        .build()
        .expect("build resolver")
}

/// The response code of a "no records" answer, or `None` for any other error.
fn no_records_code(err: &NetError) -> Option<ResponseCode> {
    match err {
        NetError::Dns(HickoryDnsError::NoRecordsFound(nr)) => Some(nr.response_code),
        _ => None,
    }
}

async fn spf(auth: &MessageAuthenticator, ip: &str, mail_from: &str) -> SpfResult {
    let ip: IpAddr = ip.parse().expect("ip literal");
    auth.verify_spf(SpfParameters::verify_mail_from(
        ip,
        "client.example",
        "mx.test.example",
        mail_from,
    ))
    .await
    .result()
}

#[tokio::test]
async fn txt_record_is_served_to_mail_auth_and_hickory() {
    let dns = TestDns::start().await;
    dns.add_txt("example.com", "v=spf1 ip4:192.0.2.1 -all");
    dns.add_txt("example.com", "google-site-verification=abc");

    let raw = dns
        .authenticator()
        .txt_raw_lookup("example.com")
        .await
        .expect("mail-auth TXT lookup");
    let raw = String::from_utf8(raw).expect("utf-8");
    assert!(raw.contains("v=spf1 ip4:192.0.2.1 -all"), "{raw:?}");
    assert!(raw.contains("google-site-verification=abc"), "{raw:?}");

    let lookup = resolver(&dns)
        .txt_lookup("example.com.")
        .await
        .expect("hickory TXT lookup");
    let mut texts: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        ["google-site-verification=abc", "v=spf1 ip4:192.0.2.1 -all"]
    );
    assert_eq!(dns.queries_for("example.com"), 2, "{:?}", dns.query_log());
}

#[tokio::test]
async fn spf_verdicts_come_from_the_served_record() {
    let dns = TestDns::start().await;
    dns.add_txt("example.com", "v=spf1 ip4:192.0.2.1 mx -all");
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_a("mx1.example.com", "198.51.100.7");
    let auth = dns.authenticator();
    assert_eq!(
        spf(&auth, "192.0.2.1", "a@example.com").await,
        SpfResult::Pass
    );
    assert_eq!(
        spf(&auth, "198.51.100.7", "a@example.com").await,
        SpfResult::Pass
    );
    assert_eq!(
        spf(&auth, "192.0.2.99", "a@example.com").await,
        SpfResult::Fail
    );
    assert_eq!(
        spf(&auth, "192.0.2.1", "a@nowhere.test").await,
        SpfResult::None
    );
}

#[tokio::test]
async fn unknown_name_is_nxdomain_and_other_type_is_nodata() {
    let dns = TestDns::start().await;
    dns.add_a("host.example.com", "192.0.2.10");
    dns.add_txt("_dmarc.deep.sub.example.net", "v=DMARC1; p=none");
    let r = resolver(&dns);

    let err = r.txt_lookup("nowhere.example.com.").await.unwrap_err();
    assert_eq!(
        no_records_code(&err),
        Some(ResponseCode::NXDomain),
        "{err:?}"
    );
    let err = r.txt_lookup("host.example.com.").await.unwrap_err();
    assert_eq!(
        no_records_code(&err),
        Some(ResponseCode::NoError),
        "{err:?}"
    );
    // An empty non-terminal exists (RFC 8020): NODATA, not NXDOMAIN.
    let err = r.txt_lookup("sub.example.net.").await.unwrap_err();
    assert_eq!(
        no_records_code(&err),
        Some(ResponseCode::NoError),
        "{err:?}"
    );

    let auth = dns.authenticator();
    assert_eq!(
        auth.txt_raw_lookup("nowhere.example.com").await,
        Err(Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain)))
    );
    assert_eq!(
        auth.txt_raw_lookup("host.example.com").await,
        Err(Error::Dns(DnsError::RecordNotFound(ResponseCode::NoError)))
    );
}

#[tokio::test]
async fn a_aaaa_mx_ptr_and_cname_are_served() {
    let dns = TestDns::start().await;
    dns.add_a("mail.example.com", "192.0.2.10");
    dns.add_aaaa("mail.example.com", "2001:db8::10");
    dns.add_mx("example.com", 10, "mail.example.com");
    dns.add_ptr("192.0.2.10", "mail.example.com");
    dns.add_ptr("2001:db8::10", "mail.example.com");
    dns.add_cname("alias.example.com", "mail.example.com");
    let r = resolver(&dns);

    let a = r.ipv4_lookup("mail.example.com.").await.expect("A");
    assert_eq!(a.answers().len(), 1);
    assert!(matches!(&a.answers()[0].data, RData::A(ip) if ip.0.to_string() == "192.0.2.10"));
    let aaaa = r.ipv6_lookup("mail.example.com.").await.expect("AAAA");
    assert!(
        matches!(&aaaa.answers()[0].data, RData::AAAA(ip) if ip.0.to_string() == "2001:db8::10")
    );
    let mx = r.mx_lookup("example.com.").await.expect("MX");
    assert!(
        matches!(&mx.answers()[0].data, RData::MX(m) if m.preference == 10 && m.exchange.to_string() == "mail.example.com.")
    );
    for ip in ["192.0.2.10", "2001:db8::10"] {
        let ip: IpAddr = ip.parse().unwrap();
        let ptr = r.reverse_lookup(ip).await.expect("PTR");
        assert!(
            matches!(&ptr.answers()[0].data, RData::PTR(p) if p.0.to_string() == "mail.example.com."),
            "{ptr:?}"
        );
    }
    // The alias resolves through the CNAME to the target's address.
    let via = r
        .ipv4_lookup("alias.example.com.")
        .await
        .expect("A via CNAME");
    assert!(
        via.answers()
            .iter()
            .any(|rec| matches!(&rec.data, RData::A(ip) if ip.0.to_string() == "192.0.2.10")),
        "{via:?}"
    );
}

#[tokio::test]
async fn long_txt_is_split_into_255_byte_strings_and_joined_by_clients() {
    let dns = TestDns::start().await;
    let long: String = (0..600).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    dns.add_txt("long.example.com", &long);

    let lookup = resolver(&dns)
        .txt_lookup("long.example.com.")
        .await
        .expect("TXT");
    let RData::TXT(txt) = &lookup.answers()[0].data else {
        panic!("not TXT: {lookup:?}")
    };
    let lens: Vec<usize> = txt.txt_data.iter().map(|s| s.len()).collect();
    assert_eq!(lens, [255, 255, 90]);

    let joined = dns
        .authenticator()
        .txt_raw_lookup("long.example.com")
        .await
        .expect("mail-auth TXT");
    assert_eq!(joined, long.as_bytes());
}

#[tokio::test]
async fn answer_too_big_for_udp_is_truncated_and_retried_over_tcp() {
    let dns = TestDns::start().await;
    for i in 0..4 {
        dns.add_txt("big.example.com", &format!("{i}{}", "x".repeat(250)));
    }
    // Without EDNS the client's UDP limit is 512 bytes; four 250-byte records do not fit.
    let mut opts = TestDns::resolver_opts();
    opts.edns0 = false;
    let r =
        TokioResolver::builder_with_config(dns.resolver_config(), TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .expect("resolver");
    let lookup = r
        .txt_lookup("big.example.com.")
        .await
        .expect("TXT over TCP");
    assert_eq!(lookup.answers().len(), 4);
    let log = dns.query_log();
    assert!(log.iter().any(|q| !q.tcp), "no UDP try: {log:?}");
    assert!(log.iter().any(|q| q.tcp), "no TCP retry: {log:?}");
}

#[tokio::test]
async fn records_added_while_running_are_served() {
    let dns = TestDns::start().await;
    let before = resolver(&dns).txt_lookup("late.example.com.").await;
    assert!(before.is_err());
    dns.add_txt("late.example.com", "v=spf1 -all");
    // A fresh resolver: the first one may cache the negative answer, as it should.
    let after = resolver(&dns)
        .txt_lookup("late.example.com.")
        .await
        .expect("TXT added after start");
    assert_eq!(after.answers().len(), 1);
    dns.remove("late.example.com");
    let err = resolver(&dns)
        .txt_lookup("late.example.com.")
        .await
        .unwrap_err();
    assert_eq!(no_records_code(&err), Some(ResponseCode::NXDomain));
}

#[tokio::test]
async fn queries_are_counted_and_a_cached_answer_is_not_asked_again() {
    let dns = TestDns::start().await;
    dns.add_txt("example.com", "v=spf1 -all");
    let r = resolver(&dns);
    assert_eq!(dns.queries(), 0);
    r.txt_lookup("example.com.").await.expect("first");
    assert_eq!(dns.queries(), 1);
    r.txt_lookup("example.com.")
        .await
        .expect("second, from cache");
    assert_eq!(
        dns.queries(),
        1,
        "hickory's cache should answer: {:?}",
        dns.query_log()
    );
    resolver(&dns)
        .txt_lookup("example.com.")
        .await
        .expect("third");
    assert_eq!(dns.queries(), 2);
    dns.reset_queries();
    assert_eq!(dns.queries(), 0);
    assert!(dns.query_log().is_empty());
}

#[tokio::test]
async fn down_mode_makes_the_client_time_out() {
    let dns = TestDns::start().await;
    dns.add_txt("example.com", "v=spf1 -all");
    dns.set_mode(Mode::Down);

    let started = Instant::now();
    let err = resolver(&dns).txt_lookup("example.com.").await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, NetError::Timeout), "{err:?}");
    assert!(took >= RESOLVER_TIMEOUT, "gave up after {took:?}");
    assert!(dns.queries() >= 1, "dropped queries are still counted");

    // Through mail-auth a timeout is a resolver error (temporary), not "no record".
    let auth = dns.authenticator();
    let err = auth.txt_raw_lookup("example.com").await.unwrap_err();
    assert!(
        matches!(&err, Error::Dns(DnsError::Resolver(msg)) if msg.contains("timed out")),
        "{err:?}"
    );
    assert_eq!(
        spf(&auth, "192.0.2.1", "a@example.com").await,
        SpfResult::TempError
    );

    dns.set_mode(Mode::Normal);
    let raw = dns
        .authenticator()
        .txt_raw_lookup("example.com")
        .await
        .expect("answers again");
    assert_eq!(raw, b"v=spf1 -all");
}

#[tokio::test]
async fn servfail_mode_is_an_error_not_an_empty_answer() {
    let dns = TestDns::start().await;
    dns.add_txt("example.com", "v=spf1 -all");
    dns.set_mode(Mode::ServFail);

    let started = Instant::now();
    let err = resolver(&dns).txt_lookup("example.com.").await.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Dns(HickoryDnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < RESOLVER_TIMEOUT,
        "SERVFAIL must answer, not time out"
    );
    let auth = dns.authenticator();
    assert!(matches!(
        auth.txt_raw_lookup("example.com").await,
        Err(Error::Dns(DnsError::Resolver(_)))
    ));
    assert_eq!(
        spf(&auth, "192.0.2.1", "a@example.com").await,
        SpfResult::TempError
    );
}

#[tokio::test]
async fn slow_mode_delays_the_answer() {
    let dns = TestDns::start().await;
    dns.add_txt("example.com", "v=spf1 -all");
    dns.set_mode(Mode::Slow(Duration::from_millis(400)));
    let started = Instant::now();
    resolver(&dns)
        .txt_lookup("example.com.")
        .await
        .expect("slow but answered");
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn timeout_mark_drops_only_types_the_name_lacks() {
    let dns = TestDns::start().await;
    dns.add_txt("flaky.example.com", "v=spf1 -all");
    dns.add_timeout("flaky.example.com");
    dns.add_timeout("dead.example.com");
    let r = resolver(&dns);
    r.txt_lookup("flaky.example.com.")
        .await
        .expect("TXT still answers");
    let err = r.ipv4_lookup("flaky.example.com.").await.unwrap_err();
    assert!(matches!(err, NetError::Timeout), "{err:?}");
    let err = r.txt_lookup("dead.example.com.").await.unwrap_err();
    assert!(matches!(err, NetError::Timeout), "{err:?}");
    let err = r.txt_lookup("other.example.com.").await.unwrap_err();
    assert_eq!(no_records_code(&err), Some(ResponseCode::NXDomain));
}

// ---- fixture signing ----

fn original_message() -> Vec<u8> {
    b"From: Alice <alice@example.com>\r\n\
To: team@gmail.example\r\n\
Subject: Quarterly numbers\r\n\
Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <q3@example.com>\r\n\
\r\n\
Hello,\r\n\
the numbers are attached.\r\n"
        .to_vec()
}

/// mail-auth reports a changed body as `neutral` with this error (RFC 6376 §6.3 leaves it open).
fn body_hash_mismatch(result: &DkimResult) -> bool {
    matches!(result, DkimResult::Neutral(e) if format!("{e:?}").contains("FailedBodyHashMatch"))
}

async fn dkim_results(auth: &MessageAuthenticator, message: &[u8]) -> Vec<(DkimResult, String)> {
    let parsed = AuthenticatedMessage::parse(message).expect("parse");
    auth.verify_dkim(&parsed)
        .await
        .iter()
        .map(|o| {
            (
                o.result().clone(),
                o.signature().map(|s| s.d.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn dkim_rsa_signature_verifies_against_the_published_key() {
    let dns = TestDns::start().await;
    let key = TestKey::rsa();
    assert!(key
        .dns_txt()
        .starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
    assert!(
        key.dns_txt().len() > 255,
        "an RSA-2048 record needs several strings"
    );
    key.publish(&dns, "s2026", "example.com");
    let signed = sign::dkim_sign(&original_message(), "example.com", "s2026", &key);
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256;"));

    let auth = dns.authenticator();
    let results = dkim_results(&auth, &signed).await;
    assert_eq!(results, [(DkimResult::Pass, "example.com".to_string())]);

    let altered = sign::alter_body(&signed);
    let results = dkim_results(&auth, &altered).await;
    assert!(body_hash_mismatch(&results[0].0), "{results:?}");
}

#[tokio::test]
async fn dkim_ed25519_signature_verifies_and_a_wrong_key_fails() {
    let dns = TestDns::start().await;
    let key = TestKey::ed25519();
    assert!(key.dns_txt().starts_with("v=DKIM1; k=ed25519; p="));
    key.publish(&dns, "ed", "example.com");
    TestKey::ed25519().publish(&dns, "other", "example.com");
    let auth = dns.authenticator();

    let signed = sign::dkim_sign(&original_message(), "example.com", "ed", &key);
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256;"));
    assert_eq!(
        dkim_results(&auth, &signed).await,
        [(DkimResult::Pass, "example.com".to_string())]
    );

    // Signed with this key but pointing at another selector's key.
    let wrong = sign::dkim_sign(&original_message(), "example.com", "other", &key);
    let results = dkim_results(&auth, &wrong).await;
    assert!(matches!(results[0].0, DkimResult::Fail(_)), "{results:?}");

    // No key record at all.
    let unpublished = sign::dkim_sign(&original_message(), "example.com", "gone", &key);
    let results = dkim_results(&auth, &unpublished).await;
    assert!(
        matches!(
            results[0].0,
            DkimResult::PermError(_) | DkimResult::TempError(_)
        ),
        "{results:?}"
    );
    assert_ne!(results[0].0, DkimResult::Pass);
}

#[tokio::test]
async fn arc_forwarder_keeps_dkim_pass_when_it_breaks_the_signature() {
    let dns = TestDns::start().await;
    let author_key = TestKey::rsa();
    author_key.publish(&dns, "s2026", "example.com");
    let google_key = TestKey::rsa();
    let google = Forwarder::google(&google_key);
    google_key.publish(&dns, google.selector, google.domain);
    let auth = dns.authenticator();

    let signed = sign::dkim_sign(&original_message(), "example.com", "s2026", &author_key);
    let forwarded = sign::arc_forward(&auth, &signed, &google, sign::add_footer).await;
    let text = String::from_utf8_lossy(&forwarded);
    assert!(text.contains("ARC-Seal: i=1; a=rsa-sha256"), "{text}");
    assert!(text.contains("cv=none"), "{text}");
    assert!(
        text.contains("ARC-Authentication-Results: i=1; mx.google.com;"),
        "{text}"
    );
    assert!(text.contains("dkim=pass header.d=example.com"), "{text}");

    // At the next hop: the author's signature broke on the footer, the ARC chain holds.
    let parsed = AuthenticatedMessage::parse(&forwarded).expect("parse");
    let dkim = auth.verify_dkim(&parsed).await;
    assert!(body_hash_mismatch(dkim[0].result()), "{dkim:?}");
    let arc = auth.verify_arc(&parsed).await;
    assert_eq!(arc.result(), &DkimResult::Pass);
    assert_eq!(arc.sets().len(), 1);

    // Tampering after the seal breaks the chain.
    let tampered = sign::alter_body(&forwarded);
    let parsed = AuthenticatedMessage::parse(&tampered).expect("parse");
    let arc = auth.verify_arc(&parsed).await;
    assert!(
        matches!(arc.result(), DkimResult::Neutral(e) if format!("{e:?}").contains("FailedBodyHashMatch")),
        "{:?}",
        arc.result()
    );
}

#[tokio::test]
async fn arc_second_hop_extends_the_chain() {
    let dns = TestDns::start().await;
    let author_key = TestKey::ed25519();
    author_key.publish(&dns, "ed", "example.com");
    let google_key = TestKey::ed25519();
    let google = Forwarder::google(&google_key);
    google_key.publish(&dns, google.selector, google.domain);
    let list_key = TestKey::rsa();
    let list = Forwarder {
        authserv_id: "lists.example.org",
        domain: "example.org",
        selector: "list",
        key: &list_key,
        remote_ip: "198.51.100.20".parse().unwrap(),
    };
    list_key.publish(&dns, "list", "example.org");
    let auth = dns.authenticator();

    let signed = sign::dkim_sign(&original_message(), "example.com", "ed", &author_key);
    let hop1 = sign::arc_seal(&auth, &signed, &google).await;
    let hop2 = sign::arc_forward(&auth, &hop1, &list, sign::add_footer).await;
    let text = String::from_utf8_lossy(&hop2);
    assert!(text.contains("ARC-Seal: i=2;"), "{text}");
    assert!(text.contains("cv=pass"), "{text}");
    assert!(text.contains("arc=pass"), "{text}");

    let parsed = AuthenticatedMessage::parse(&hop2).expect("parse");
    let arc = auth.verify_arc(&parsed).await;
    assert_eq!(arc.result(), &DkimResult::Pass);
    assert_eq!(arc.sets().len(), 2);
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, output) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(sign::base64(input.as_bytes()), output);
    }
}
