//! Transcript tests for STARTTLS (RFC 3207) with a real rustls handshake: the upgrade, what the
//! session forgets across it, pipelined plaintext after STARTTLS being discarded (CVE-2011-0411),
//! the TLS version on the stored record, and certificates from configured PEM files.
use crate::support;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const HOSTED: &str = "support@demo.inbound.test";

/// Accepts any certificate (MTAs encrypt opportunistically without verifying MX certificates) but
/// checks the handshake signatures, and remembers the certificate the server presented.
#[derive(Debug)]
struct AnyCert {
    provider: Arc<CryptoProvider>,
    presented: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.presented.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn verifier() -> Arc<AnyCert> {
    Arc::new(AnyCert {
        provider: Arc::new(rustls::crypto::ring::default_provider()),
        presented: Mutex::new(None),
    })
}

/// Hand the connection to a TLS client after the server's 220 to STARTTLS.
async fn handshake(
    c: Client<TcpStream>,
    verifier: Arc<AnyCert>,
) -> Result<Client<TlsStream<TcpStream>>, std::io::Error> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    let name = ServerName::try_from("mx.test.example").expect("server name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, c.into_inner())
        .await?;
    Ok(Client::new(tls))
}

/// Greeting, EHLO, STARTTLS, handshake.
async fn connect_tls(srv: &TestServer, v: Arc<AnyCert>) -> Client<TlsStream<TcpStream>> {
    let mut c = srv.connect().await;
    let ehlo = c.hello().await;
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    c.cmd("STARTTLS", "220 2.0.0").await;
    handshake(c, v).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_upgrade_then_a_message_is_stored_with_its_tls_version() {
    let srv = TestServer::start().await;
    let mut c = connect_tls(&srv, verifier()).await;
    let ehlo = c.cmd("EHLO client.example", "250").await;
    assert!(
        !ehlo.text().contains("STARTTLS"),
        "STARTTLS offered again: {ehlo:?}"
    );
    assert!(ehlo.lines.iter().any(|l| l == "PIPELINING"), "{ehlo:?}");
    c.cmd("STARTTLS", "503 5.5.1").await;
    let body = message("over-tls");
    let r = c.send_message("a@example.com", &[HOSTED], &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().expect("stored");
    assert_eq!(rec.tls.as_deref(), Some("TLSv1.3"));
    assert_eq!(srv.ctx.store.body(&rec).unwrap(), body);
    assert!(
        rec.trace_headers.contains("(using TLSv1.3)") && rec.trace_headers.contains("with ESMTPS"),
        "{}",
        rec.trace_headers
    );
    c.cmd("QUIT", "221").await;

    // Without STARTTLS, the record has no TLS.
    let mut p = srv.connect().await;
    p.hello().await;
    let r = p
        .send_message("a@example.com", &[HOSTED], &message("plain"))
        .await;
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().expect("stored");
    assert_eq!(rec.tls, None);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_state_from_before_starttls_is_forgotten() {
    // RFC 3207 §4.2: the client must start again with EHLO; nothing it said before counts.
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("MAIL FROM:<before@example.com>", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "250").await;
    c.cmd("STARTTLS", "220").await;
    let mut c = handshake(c, verifier()).await.expect("handshake");
    c.cmd("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "503 5.5.1").await;
    c.cmd("DATA", "503 5.5.1").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_pipelined_after_starttls_are_discarded() {
    // CVE-2011-0411: plaintext injected behind STARTTLS must not run inside the TLS session.
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.send_raw(b"STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<injected@evil.example>\r\n")
        .await;
    c.expect("220").await;
    let mut c = handshake(c, verifier()).await.expect("handshake");
    // The first reply inside TLS answers our NOOP, not the injected EHLO or MAIL.
    c.cmd("NOOP", "250 2.0.0 OK").await;
    c.cmd("RCPT TO:<support@demo.inbound.test>", "503 5.5.1")
        .await;
    c.cmd("EHLO client.example", "250").await;
    c.cmd(&format!("RCPT TO:<{HOSTED}>"), "503 5.5.1").await;
    let r = c
        .send_message("a@example.com", &[HOSTED], &message("after-injection"))
        .await;
    let rec = srv.ctx.store.get(&r.last_word()).unwrap().expect("stored");
    assert_eq!(rec.helo, "client.example");
    assert_eq!(rec.mail_from, "a@example.com");
    assert_eq!(srv.messages().len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_certificate_files_are_presented() {
    let dir = TempDir::new("tls");
    let ck = rcgen::generate_simple_self_signed(vec!["mx.test.example".to_string()])
        .expect("generate certificate");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let cfg = ConfigBuilder::test(dir.path())
        .tls_files(&cert_path, &key_path)
        .parse();
    let srv = TestServer::start_config(dir, cfg).await;
    let v = verifier();
    let mut c = connect_tls(&srv, v.clone()).await;
    assert_eq!(
        v.presented.lock().unwrap().as_deref(),
        Some(ck.cert.der().as_ref()),
        "the server presented a certificate other than the configured one"
    );
    c.cmd("EHLO client.example", "250").await;
    let r = c
        .send_message("a@example.com", &[HOSTED], &message("own-cert"))
        .await;
    assert_eq!(r.code, 250, "{r:?}");

    // Without configured files the server makes up its own certificate, not this one.
    let other = TestServer::start().await;
    let v2 = verifier();
    connect_tls(&other, v2.clone()).await;
    let presented = v2.presented.lock().unwrap().clone().expect("a certificate");
    assert_ne!(presented, ck.cert.der().to_vec());
    other.stop().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_disabled_means_no_starttls() {
    let srv = TestServer::start_with("[tls]\nenabled = false\n").await;
    let mut c = srv.connect().await;
    let ehlo = c.hello().await;
    assert!(!ehlo.text().contains("STARTTLS"), "{ehlo:?}");
    c.cmd("STARTTLS", "454 4.7.0").await;
    // Still a plaintext session that works.
    let r = c
        .send_message("a@example.com", &[HOSTED], &message("no-tls"))
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_handshake_ends_only_that_session() {
    let srv = TestServer::start().await;
    let mut c = srv.connect().await;
    c.hello().await;
    c.cmd("STARTTLS", "220").await;
    // Plaintext where a ClientHello should be.
    c.send_raw(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<support@demo.inbound.test>\r\n")
        .await;
    // The server may answer with a TLS alert; then it closes, and nothing was executed.
    let mut rest = Vec::new();
    let mut stream = c.into_inner();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
    )
    .await
    .expect("the server closes the connection")
    .expect("read");
    assert!(!rest.starts_with(b"250"), "{rest:?}");
    assert!(srv.messages().is_empty());
    let mut d = connect_tls(&srv, verifier()).await;
    d.cmd("EHLO client.example", "250").await;
    srv.stop().await;
}
