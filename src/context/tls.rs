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
