//! Issue #10, one test per spoofing attempt: a forger tries to get mail for a `p=reject` domain
//! accepted as genuine, over SMTP through the PROXY listener with the loopback DNS server. Each
//! asserts the SMTP reply and the stored verdict.
use crate::auth_e2e::{deliver, env, env_with, original, record, GOOGLE_IP, ORIGIN_IP};
use crate::support;

use support::dns::Mode;
use support::sign::{
    add_footer, arc_forward, arc_forward_signing, dkim_sign, dkim_tags, sign_tags, Forwarder, Hash,
    TestKey, SIGNED_HEADERS,
};

/// An address SPF authorises for no domain in these tests.
const STRANGER_IP: &str = "203.0.113.50";

/// Put `field` ("From: x@y") at the top of `msg`'s header.
fn with_header(field: &str, msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{field}\r\n").into_bytes();
    out.extend_from_slice(msg);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn dmarc_two_from_fields_is_not_trusted() {
    // Everything about the message passes for acme.example (SPF from its host, its DKIM key),
    // but a second From: names someone else: which author would the reader believe?
    let e = env().await;
    let signed = dkim_sign(
        &original("carol@acme.example", "two-from"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let msg = with_header("From: CEO <ceo@acme.example>", &signed);
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "mail.acme.example",
        "carol@acme.example",
        &msg,
    )
    .await;
    assert_eq!(
        r.code, 550,
        "under p=reject a malformed message is refused: {r:?}"
    );
    assert!(r.text().starts_with("5.7.1"), "{r:?}");
    assert!(r.text().contains("From:"), "the reply says why: {r:?}");
    assert!(e.srv.messages().is_empty());

    // Under p=quarantine it is kept, flagged, with the reason.
    e.dns
        .add_txt("q.example", &format!("v=spf1 ip4:{ORIGIN_IP} -all"));
    e.dns.add_txt("_dmarc.q.example", "v=DMARC1; p=quarantine");
    let msg = with_header("From: b@q.example", &original("a@q.example", "two-from-q"));
    let r = deliver(&e.srv, ORIGIN_IP, "mail.q.example", "a@q.example", &msg).await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.clone().unwrap();
    assert!(rec.quarantined, "{auth:?}");
    assert_eq!(auth.verdict, "quarantine");
    assert!(auth.reason.contains("2 From: fields"), "{auth:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dmarc_one_from_with_two_authors_applies_the_strictest() {
    // One From: field, two authors: the forger's own domain passes, the victim's p=reject fails.
    let e = env().await;
    let forger = TestKey::rsa();
    forger.publish(&e.dns, "k", "forger.example");
    e.dns
        .add_txt("forger.example", &format!("v=spf1 ip4:{STRANGER_IP} -all"));
    e.dns.add_txt("_dmarc.forger.example", "v=DMARC1; p=none");
    let msg = original("me@forger.example", "two-authors");
    let msg = String::from_utf8(msg).unwrap().replace(
        "From: Carol Customer <me@forger.example>",
        "From: me@forger.example, Carol Customer <carol@acme.example>",
    );
    let msg = dkim_sign(msg.as_bytes(), "forger.example", "k", &forger);
    let r = deliver(
        &e.srv,
        STRANGER_IP,
        "mx.forger.example",
        "me@forger.example",
        &msg,
    )
    .await;
    assert_eq!(r.code, 550, "acme.example's p=reject applies: {r:?}");
    assert!(r.text().contains("acme.example"), "{r:?}");
    assert!(e.srv.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarder_rescue_needs_psl_alignment_co_uk() {
    // The inbox trusts a forwarder's range; a message from it with a DKIM signature that
    // "aligns" with the author only under a last-two-labels shortcut must not be rescued.
    let e = env_with(&format!(
        "[inbox.auth]\ntrusted_forwarders = [\"{GOOGLE_IP}/32\"]"
    ))
    .await;
    e.dns.add_txt("_dmarc.victim.co.uk", "v=DMARC1; p=reject");
    let attacker = TestKey::rsa();
    attacker.publish(&e.dns, "k", "attacker.co.uk");
    let msg = dkim_sign(
        &original("ceo@victim.co.uk", "co-uk"),
        "attacker.co.uk",
        "k",
        &attacker,
    );
    let r = deliver(&e.srv, GOOGLE_IP, "mail.google.com", "x@gmail.com", &msg).await;
    assert_eq!(r.code, 550, "attacker.co.uk is not victim.co.uk: {r:?}");
    assert!(r.text().contains("victim.co.uk"), "{r:?}");

    // The genuine case still works: signed by a subdomain of the author's own domain.
    let victim = TestKey::rsa();
    victim.publish(&e.dns, "k", "mail.victim.co.uk");
    let msg = dkim_sign(
        &original("ceo@victim.co.uk", "co-uk-ok"),
        "mail.victim.co.uk",
        "k",
        &victim,
    );
    let r = deliver(&e.srv, GOOGLE_IP, "mail.google.com", "x@gmail.com", &msg).await;
    let auth = record(&e.srv, &r).auth.unwrap();
    assert_eq!(
        auth.dmarc, "pass",
        "relaxed alignment within victim.co.uk: {auth:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn arc_rescue_needs_psl_alignment_github_io() {
    // A trusted sealer (google.com) recorded dkim=pass for attacker.github.io; the author is
    // victim.github.io. Different registrable domains under the github.io public suffix.
    let e = env().await;
    let google = TestKey::rsa();
    google.publish(&e.dns, "arc-20240605", "google.com");
    e.dns
        .add_txt("_dmarc.victim.github.io", "v=DMARC1; p=reject");
    let attacker = TestKey::rsa();
    attacker.publish(&e.dns, "k", "attacker.github.io");
    let signed = dkim_sign(
        &original("owner@victim.github.io", "gh"),
        "attacker.github.io",
        "k",
        &attacker,
    );
    let sealed = arc_forward(
        &e.dns.authenticator(),
        &signed,
        &Forwarder::google(&google),
        add_footer,
    )
    .await;
    let r = deliver(&e.srv, GOOGLE_IP, "mail.google.com", "x@gmail.com", &sealed).await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text().contains("victim.github.io"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rsa_sha1_signature_does_not_satisfy_dmarc() {
    let e = env().await;
    let mut tags = dkim_tags("acme.example", "s1");
    tags[1].1 = "rsa-sha1".into();
    let msg = sign_tags(
        &original("carol@acme.example", "sha1"),
        "DKIM-Signature",
        &tags,
        &e.rsa,
        Hash::Sha1,
    );
    let r = deliver(&e.srv, STRANGER_IP, "x.example", "carol@acme.example", &msg).await;
    assert_eq!(r.code, 550, "RFC 8301: rsa-sha1 never verifies: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dkim_without_a_tag_does_not_verify() {
    let e = env().await;
    let mut tags = dkim_tags("acme.example", "s1");
    tags.remove(1);
    let msg = sign_tags(
        &original("carol@acme.example", "no-a"),
        "DKIM-Signature",
        &tags,
        &e.rsa,
        Hash::Sha256,
    );
    let r = deliver(&e.srv, STRANGER_IP, "x.example", "carol@acme.example", &msg).await;
    assert_eq!(r.code, 550, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dkim_not_covering_from_does_not_verify() {
    // Sign everything but From:, so a forger can put any author above a real signature.
    let e = env_with("[auth]\non_dmarc_reject = \"quarantine\"").await;
    let mut tags = dkim_tags("acme.example", "s1");
    tags[5].1 = "To:Subject:Date:Message-ID".into();
    let msg = sign_tags(
        &original("carol@acme.example", "no-from"),
        "DKIM-Signature",
        &tags,
        &e.rsa,
        Hash::Sha256,
    );
    let r = deliver(&e.srv, STRANGER_IP, "x.example", "carol@acme.example", &msg).await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.unwrap();
    assert_eq!(auth.dkim[0].result, "permerror", "{auth:?}");
    assert!(auth.dkim[0].error.contains("From"), "{auth:?}");
    assert_eq!(auth.dmarc, "fail");
    assert!(rec.quarantined);
}

#[tokio::test(flavor = "multi_thread")]
async fn ams_signing_arc_seal_breaks_the_chain() {
    // RFC 8617 §4.1.2: an AMS must not sign ARC-Seal. A trusted sealer's chain with such an AMS
    // does not vouch. (mail-auth's sealer signs before its own ARC-Seal exists, so this chain's
    // AMS would not verify either: the strict check itself is pinned by the unit tests of
    // pipeline::auth::tags; this test guards the end-to-end outcome.)
    let e = env().await;
    let google = TestKey::rsa();
    google.publish(&e.dns, "arc-20240605", "google.com");
    let signed = dkim_sign(
        &original("carol@acme.example", "ams-seal"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let mut headers: Vec<&str> = SIGNED_HEADERS.to_vec();
    headers.extend(["DKIM-Signature", "ARC-Seal"]);
    let sealed = arc_forward_signing(
        &e.dns.authenticator(),
        &signed,
        &Forwarder::google(&google),
        add_footer,
        &headers,
    )
    .await;
    let r = deliver(&e.srv, GOOGLE_IP, "mail.google.com", "x@gmail.com", &sealed).await;
    assert_eq!(r.code, 550, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn arc_set_without_ams_is_a_broken_chain() {
    let e = env_with("[auth]\non_dmarc_reject = \"quarantine\"").await;
    let google = TestKey::rsa();
    google.publish(&e.dns, "arc-20240605", "google.com");
    let signed = dkim_sign(
        &original("carol@acme.example", "no-ams"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let sealed = arc_forward(
        &e.dns.authenticator(),
        &signed,
        &Forwarder::google(&google),
        add_footer,
    )
    .await;
    // Drop the ARC-Message-Signature field (and its folded lines).
    let text = String::from_utf8(sealed).unwrap();
    let mut out = String::new();
    let mut dropping = false;
    for line in text.split_inclusive("\r\n") {
        if line.starts_with("ARC-Message-Signature:") {
            dropping = true;
            continue;
        }
        if dropping && line.starts_with([' ', '\t']) {
            continue;
        }
        dropping = false;
        out.push_str(line);
    }
    let r = deliver(
        &e.srv,
        GOOGLE_IP,
        "mail.google.com",
        "x@gmail.com",
        out.as_bytes(),
    )
    .await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.clone().unwrap();
    assert_eq!(auth.arc, "fail", "{auth:?}");
    assert!(rec.quarantined);
    let raw = e.srv.ctx.store.raw_message(&rec).unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("arc=fail"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_mail_from_a_domain_that_does_not_exist_is_quarantined() {
    // No SPF, no DKIM, no DMARC: nothing vouches for the sender.
    let e = env().await;
    let r = deliver(
        &e.srv,
        STRANGER_IP,
        "mx.nowhere.example",
        "boss@nowhere.example",
        &original("boss@nowhere.example", "nothing"),
    )
    .await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.unwrap();
    assert_eq!(auth.spf_mail_from, "none");
    assert_eq!(auth.dmarc, "none");
    assert_eq!(auth.verdict, "quarantine", "{auth:?}");
    assert!(auth.reason.contains("unauthenticated"), "{auth:?}");
    assert!(rec.quarantined);
}

/// A bounce-shaped message: null sender, address-literal HELO, no From:.
fn anonymous() -> Vec<u8> {
    b"To: support@demo.inbound.test\r\nSubject: hello\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nno author here\r\n".to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn null_sender_with_address_literal_and_no_from_is_checked() {
    let e = env().await;
    let r = deliver(&e.srv, STRANGER_IP, "[203.0.113.50]", "", &anonymous()).await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.unwrap();
    assert_eq!(auth.status, "checked");
    assert_eq!(auth.verdict, "quarantine", "{auth:?}");
    assert!(rec.quarantined);

    // With DNS down the same message is deferred, as every other DNS-down case is.
    e.dns.set_mode(Mode::Down);
    let r = deliver(&e.srv, "203.0.113.51", "[203.0.113.51]", "", &anonymous()).await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text().starts_with("4.7.0"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_dmarc_records_mean_no_policy() {
    // RFC 7489 §6.6.3: two records at one name, no DMARC policy applies (not the first one).
    let e = env_with("[auth]\non_unauthenticated = \"accept\"").await;
    e.dns.add_txt("twice.example", "v=spf1 -all");
    e.dns.add_txt("_dmarc.twice.example", "v=DMARC1; p=reject");
    e.dns.add_txt("_dmarc.twice.example", "v=DMARC1; p=none");
    let r = deliver(
        &e.srv,
        STRANGER_IP,
        "x.example",
        "a@twice.example",
        &original("a@twice.example", "twice"),
    )
    .await;
    let auth = record(&e.srv, &r).auth.unwrap();
    assert_eq!(auth.dmarc, "none", "{auth:?}");
    assert_eq!(auth.dmarc_policy, "none", "{auth:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn length_limited_signature_is_refused_but_named() {
    // l= is refused on purpose (content appended after the signed length would ride on the
    // signature); the record and the A-R field still say whose signature it was.
    let e = env_with("[auth]\non_dmarc_reject = \"quarantine\"").await;
    let mut tags = dkim_tags("acme.example", "s1");
    tags.insert(6, ("l".into(), "20".into()));
    let msg = sign_tags(
        &original("carol@acme.example", "l-tag"),
        "DKIM-Signature",
        &tags,
        &e.rsa,
        Hash::Sha256,
    );
    let r = deliver(&e.srv, STRANGER_IP, "x.example", "carol@acme.example", &msg).await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.clone().unwrap();
    assert_eq!(auth.dkim.len(), 1, "{auth:?}");
    assert_eq!(auth.dkim[0].result, "permerror");
    assert_eq!(auth.dkim[0].domain, "acme.example");
    assert_eq!(auth.dkim[0].selector, "s1");
    let raw = e.srv.ctx.store.raw_message(&rec).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("dkim=permerror ("), "{text}");
    assert!(text.contains("header.d=acme.example header.s=s1"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_body_is_dkim_fail_not_neutral() {
    let e = env_with("[auth]\non_dmarc_reject = \"quarantine\"").await;
    let signed = dkim_sign(
        &original("carol@acme.example", "bh"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let r = deliver(
        &e.srv,
        STRANGER_IP,
        "x.example",
        "carol@acme.example",
        &support::sign::alter_body(&signed),
    )
    .await;
    let rec = record(&e.srv, &r);
    assert_eq!(rec.auth.as_ref().unwrap().dkim[0].result, "fail");
    let raw = e.srv.ctx.store.raw_message(&rec).unwrap();
    assert!(String::from_utf8_lossy(&raw).contains("dkim=fail"));
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_in_auth_headers_is_a_clear_verdict() {
    // Noise in every auth header, a binary key record, a 64 KiB DKIM-Signature: a permanent
    // verdict (here p=reject: 550), never a 451, never a pass, and the server keeps serving.
    let e = env().await;
    e.dns.add_txt_strings(
        "noise._domainkey.acme.example",
        &["v=DKIM1; k=rsa; p=\u{1}\u{2}\u{7f}=;;=="],
    );
    let mut big = String::from("v=1; a=rsa-sha256; d=acme.example; s=s1; h=from; bh=AAAA; b=");
    while big.len() < 64 * 1024 {
        big.push_str("\r\n\tQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=");
    }
    let cases: Vec<Vec<u8>> = vec![
        with_header(&format!("DKIM-Signature: {big}"), &original("carol@acme.example", "big")),
        with_header(
            "DKIM-Signature: v=1; a=rsa-sha256; d=acme.example; s=noise; h=from; bh=AAAA; b=AAAA",
            &original("carol@acme.example", "noise-key"),
        ),
        with_header(
            "DKIM-Signature: ;;;===;\u{1}\r\nARC-Seal: i=0; cv=maybe\r\nARC-Message-Signature: ;=;\r\nARC-Authentication-Results: ???",
            &original("carol@acme.example", "noise"),
        ),
    ];
    for msg in cases {
        let r = deliver(&e.srv, STRANGER_IP, "x.example", "carol@acme.example", &msg).await;
        assert_eq!(r.code, 550, "{r:?}");
    }
    let ok = dkim_sign(
        &original("carol@acme.example", "after"),
        "acme.example",
        "s1",
        &e.rsa,
    );
    let r = deliver(
        &e.srv,
        ORIGIN_IP,
        "mail.acme.example",
        "carol@acme.example",
        &ok,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn spf_malformed_target_is_permerror_not_451() {
    // A target name that cannot be a domain name is the publisher's permanent mistake: answering
    // 451 would make every sender retry for days (RFC 7208 §4.6: syntax errors are permerror).
    let e = env().await;
    e.dns
        .add_txt("broken.example", "v=spf1 a:example.com:8080 -all");
    let r = deliver(
        &e.srv,
        STRANGER_IP,
        "x.example",
        "a@broken.example",
        &original("a@broken.example", "broken-spf"),
    )
    .await;
    let rec = record(&e.srv, &r);
    let auth = rec.auth.unwrap();
    assert_eq!(auth.spf_mail_from, "permerror", "{auth:?}");
    assert_eq!(
        auth.verdict, "quarantine",
        "nothing authenticates it: {auth:?}"
    );
}
