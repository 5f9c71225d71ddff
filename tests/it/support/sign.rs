//! Fixture signing -> DKIM-signed and ARC-sealed messages plus the DNS records that verify them.
//! RFC 6376 (DKIM), RFC 8463 (Ed25519 keys), RFC 8617 (ARC).
//!
//! Built on mail-auth's own signers with its `ring` backend, so no extra crypto feature is needed:
//! `DkimSigner`, `RsaKey<Sha256>` and `Ed25519Key` come with `ring`; `ArcSealer` (and ARC
//! verification) needs mail-auth's `arc` feature. Keys: one committed RSA-2048 key
//! (tests/fixtures/keys/dkim-rsa2048.pem, made once with `openssl genrsa 2048`; a test key, never
//! used anywhere else) because ring cannot generate RSA keys, and Ed25519 keys generated per call
//! with ring.
//!
//! A typical test: `let key = TestKey::rsa(); key.publish(&dns, "sel", "example.com");
//! let signed = dkim_sign(&msg, "example.com", "sel", &key);` and, for a forwarded message,
//! `arc_forward(&dns.authenticator(), &signed, &Forwarder::google(&fwd_key), add_footer)`.

use std::net::IpAddr;
use std::path::PathBuf;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::dns::TestDns;

/// Headers a DKIM signature covers when the test does not say (absent ones are skipped).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ed25519,
}

/// A private key kept as PKCS#8 DER (mail-auth's key types are not `Clone`, so a signer is built
/// per signature) and the public key as it goes in the DNS record's `p=`.
#[derive(Clone)]
pub struct TestKey {
    pub kind: KeyKind,
    pkcs8_der: Vec<u8>,
    public_key: Vec<u8>,
}

impl TestKey {
    /// The committed RSA-2048 test key.
    pub fn rsa() -> TestKey {
        let path = fixture_path("keys/dkim-rsa2048.pem");
        let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let der = match PrivateKeyDer::from_pem_slice(&pem).expect("RSA key PEM") {
            PrivateKeyDer::Pkcs8(der) => der.secret_pkcs8_der().to_vec(),
            _ => panic!("{} must be PKCS#8 (BEGIN PRIVATE KEY)", path.display()),
        };
        let key = rsa_key(&der);
        // ring gives the RSAPublicKey (PKCS#1); DKIM records carry SubjectPublicKeyInfo.
        let public_key = rsa_spki(&key.public_key());
        TestKey {
            kind: KeyKind::Rsa,
            pkcs8_der: der,
            public_key,
        }
    }

    /// A new Ed25519 key (RFC 8463): `p=` is the raw 32-byte public key.
    pub fn ed25519() -> TestKey {
        let der = Ed25519Key::generate_pkcs8().expect("generate Ed25519 key");
        let public_key = Ed25519Key::from_pkcs8_der(&der)
            .expect("load generated Ed25519 key")
            .public_key();
        TestKey {
            kind: KeyKind::Ed25519,
            pkcs8_der: der,
            public_key,
        }
    }

    /// The DKIM key record text, e.g. `v=DKIM1; k=rsa; p=MIIBIjAN...`.
    pub fn dns_txt(&self) -> String {
        let k = match self.kind {
            KeyKind::Rsa => "rsa",
            KeyKind::Ed25519 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", base64(&self.public_key))
    }

    /// Put the key record at `selector._domainkey.domain` (split into 255-byte strings by TestDns).
    pub fn publish(&self, dns: &TestDns, selector: &str, domain: &str) {
        dns.add_txt(&dkim_record_name(selector, domain), &self.dns_txt());
    }
}

/// `selector._domainkey.domain` (RFC 6376 §3.6.2.1).
pub fn dkim_record_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// Sign `message` (CRLF, headers and body) with `d=domain; s=selector`, covering
/// `SIGNED_HEADERS`; returns the message with the DKIM-Signature header prepended.
pub fn dkim_sign(message: &[u8], domain: &str, selector: &str, key: &TestKey) -> Vec<u8> {
    dkim_sign_headers(message, domain, selector, key, SIGNED_HEADERS)
}

/// `dkim_sign` covering exactly `headers`.
pub fn dkim_sign_headers(
    message: &[u8],
    domain: &str,
    selector: &str,
    key: &TestKey,
    headers: &[&str],
) -> Vec<u8> {
    let header = match key.kind {
        KeyKind::Rsa => DkimSigner::from_key(rsa_key(&key.pkcs8_der))
            .domain(domain)
            .selector(selector)
            .headers(headers.iter().copied())
            .sign(message)
            .expect("DKIM sign (RSA)")
            .to_header(),
        KeyKind::Ed25519 => DkimSigner::from_key(ed25519_key(&key.pkcs8_der))
            .domain(domain)
            .selector(selector)
            .headers(headers.iter().copied())
            .sign(message)
            .expect("DKIM sign (Ed25519)")
            .to_header(),
    };
    prepend(header, message)
}

/// An intermediary that verifies what it receives, records the verdicts in its
/// ARC-Authentication-Results, and seals (e.g. Gmail forwarding, a mailing list).
pub struct Forwarder<'a> {
    /// authserv-id of its Authentication-Results, e.g. `mx.google.com`.
    pub authserv_id: &'a str,
    /// `d=` of its ARC-Message-Signature and ARC-Seal.
    pub domain: &'a str,
    pub selector: &'a str,
    pub key: &'a TestKey,
    /// The address it received the message from (`smtp.remote-ip` in the AAR).
    pub remote_ip: IpAddr,
}

impl<'a> Forwarder<'a> {
    /// Gmail-like: `mx.google.com` / `d=google.com; s=arc-20240605`. Publish `key` under that
    /// selector and domain for the seal to verify.
    pub fn google(key: &'a TestKey) -> Forwarder<'a> {
        Forwarder {
            authserv_id: "mx.google.com",
            domain: "google.com",
            selector: "arc-20240605",
            key,
            remote_ip: "192.0.2.25".parse().expect("literal IP"),
        }
    }
}

/// Forward `message` unchanged through `forwarder`: verify its DKIM and ARC with `auth` (so
/// publish the keys in the TestDns first), then prepend one ARC set whose AAR records those
/// results (`dkim=pass header.d=...` when the original verified).
pub async fn arc_seal(
    auth: &MessageAuthenticator,
    message: &[u8],
    forwarder: &Forwarder<'_>,
) -> Vec<u8> {
    arc_forward(auth, message, forwarder, |m| m.to_vec()).await
}

/// Like `arc_seal`, but the forwarder rewrites the message after verifying it and before sealing
/// (a list footer, a subject tag): the original DKIM signature then fails at the next hop while
/// the ARC chain, and the dkim=pass recorded in it, still verify.
pub async fn arc_forward(
    auth: &MessageAuthenticator,
    message: &[u8],
    forwarder: &Forwarder<'_>,
    rewrite: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let received = AuthenticatedMessage::parse(message).expect("parse message to forward");
    let dkim = auth.verify_dkim(&received).await;
    let arc = auth.verify_arc(&received).await;
    assert!(
        arc.can_be_sealed(),
        "the incoming ARC chain has cv=fail: a forwarder would not seal it"
    );
    let from = received.from.first().cloned().unwrap_or_default();
    let results = AuthenticationResults::new(forwarder.authserv_id)
        .with_dkim_results(&dkim, &from)
        .with_arc_result(&arc, forwarder.remote_ip);

    let rewritten = rewrite(message);
    let forwarded = AuthenticatedMessage::parse(&rewritten).expect("parse rewritten message");
    let mut headers: Vec<&str> = SIGNED_HEADERS.to_vec();
    headers.push("DKIM-Signature");
    let set = match forwarder.key.kind {
        KeyKind::Rsa => ArcSealer::from_key(rsa_key(&forwarder.key.pkcs8_der))
            .domain(forwarder.domain)
            .selector(forwarder.selector)
            .headers(headers.iter().copied())
            .seal(&forwarded, &results, &arc)
            .expect("ARC seal (RSA)")
            .to_header(),
        KeyKind::Ed25519 => ArcSealer::from_key(ed25519_key(&forwarder.key.pkcs8_der))
            .domain(forwarder.domain)
            .selector(forwarder.selector)
            .headers(headers.iter().copied())
            .seal(&forwarded, &results, &arc)
            .expect("ARC seal (Ed25519)")
            .to_header(),
    };
    prepend(set, &rewritten)
}

/// A mailing-list footer appended to the body: breaks body hashes (`bh=`).
pub fn add_footer(message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"-- \r\nYou received this message because you are subscribed.\r\n");
    out
}

/// Change one byte of the body (after the blank line): the signature no longer verifies.
pub fn alter_body(message: &[u8]) -> Vec<u8> {
    let mut out = message.to_vec();
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .expect("message has a body");
    let at = (body..out.len())
        .find(|&i| out[i].is_ascii_alphabetic())
        .expect("body has a letter");
    out[at] ^= 0x20; // flip the case
    out
}

pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn rsa_key(pkcs8_der: &[u8]) -> RsaKey<Sha256> {
    RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        pkcs8_der.to_vec(),
    )))
    .expect("load RSA key")
}

fn ed25519_key(pkcs8_der: &[u8]) -> Ed25519Key {
    Ed25519Key::from_pkcs8_der(pkcs8_der).expect("load Ed25519 key")
}

fn prepend(header: String, message: &[u8]) -> Vec<u8> {
    let mut out = header.into_bytes();
    out.extend_from_slice(message);
    out
}

/// SubjectPublicKeyInfo { AlgorithmIdentifier { rsaEncryption, NULL }, BIT STRING { RSAPublicKey } }.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const RSA_ALGORITHM_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x00]; // no unused bits
    bit_string.extend_from_slice(pkcs1);
    let mut body = RSA_ALGORITHM_ID.to_vec();
    body.extend(der(0x03, &bit_string));
    der(0x30, &body)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

pub use inbound::util::base64;
