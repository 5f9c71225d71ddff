//! TLS config -> rustls acceptor for STARTTLS (RFC 3207). Certificate and key come from PEM files;
//! without them a self-signed certificate for our hostname is generated at start (and logged), so
//! STARTTLS works out of the box: sending MTAs encrypt opportunistically and do not verify MX
//! certificates unless DANE or MTA-STS asks them to.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate {path}: {detail}")]
    Cert { path: String, detail: String },
    #[error("cannot read private key {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Build the acceptor; `Ok(None)` when TLS is disabled in config.
pub fn acceptor(cfg: &TlsConfig, hostname: &str) -> Result<Option<TlsAcceptor>, TlsError> {
    if !cfg.enabled {
        return Ok(None);
    }
    let (certs, key) = match &cfg.cert_and_key {
        Some((cert, key)) => load(cert, key)?,
        None => {
            let (certs, key) = self_signed(hostname)?;
            tracing::warn!(
                hostname,
                "no TLS certificate configured; generated a self-signed one for STARTTLS"
            );
            (certs, key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn load(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_err = |detail: String| TlsError::Cert {
        path: cert.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        detail: e.to_string(),
    })?;
    Ok((certs, key))
}

/// A fresh self-signed certificate for `hostname` (and `localhost`).
pub fn self_signed(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let ck =
        rcgen::generate_simple_self_signed(vec![hostname.to_string(), "localhost".to_string()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    Ok((vec![ck.cert.der().clone()], key))
}

/// When the configured certificate (the first of its file) stops being valid, as Unix seconds;
/// `None` for a generated self-signed certificate or one that cannot be read. Read right after
/// `acceptor` loaded the same file, for `inbound_tls_certificate_not_after_seconds`.
pub fn configured_not_after(cfg: &TlsConfig) -> Option<i64> {
    let (cert, _) = cfg.cert_and_key.as_ref()?;
    let first = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    not_after(first.as_ref())
}

/// `notAfter` of an X.509 certificate (RFC 5280 §4.1.2.5) as Unix seconds, read with the few
/// DER rules the path to it needs: Certificate → tbsCertificate → (version) serialNumber
/// signature issuer validity → notAfter, a UTCTime or GeneralizedTime. `None` for anything else.
pub fn not_after(der: &[u8]) -> Option<i64> {
    /// One TLV: (tag, contents, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, b) = b.split_first()?;
        let (len, b) = if first < 0x80 {
            (first as usize, b)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n]
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | x as usize);
            (len, &b[n..])
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // [0] version
    }
    for _ in 0..3 {
        rest = tlv(rest)?.2; // serialNumber, signature, issuer
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, after_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_before)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit()).then_some(());
    digits(text)?;
    let (year, rest) = match (tag, text.len()) {
        // RFC 5280 §4.1.2.5.1: two-digit years 50-99 are 19xx, 00-49 are 20xx.
        (0x17, 12) => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(
        crate::util::days_from_civil(year, month as u32, day as u32) * 86_400
            + hour * 3600
            + minute * 60
            + second,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rcgen writes the validity we ask for; the reader must find it, in both time encodings
    /// (RFC 5280 uses UTCTime up to 2049 and GeneralizedTime from 2050).
    #[test]
    fn not_after_is_read_from_real_certificates() {
        for (y, m, d, expect) in [
            (2031, 7, 14, 1_941_753_600i64),
            (2055, 1, 2, 2_682_460_800),
            (1999, 12, 31, 946_598_400),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["mx.example".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()), Some(expect), "{y}-{m}-{d}");
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }
}
