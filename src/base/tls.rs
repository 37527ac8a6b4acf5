//! TLS material: the server's certificate for clients, and trust anchors for an https upstream.
//!
//! One crypto provider (aws-lc-rs) is passed explicitly everywhere, so nothing depends on a
//! process-wide default having been installed first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the certificate and key do not make a usable TLS configuration: {0}")]
    Mismatch(rustls::Error),
    #[error("cannot read CA certificates from {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// A server configuration offering HTTP/2 and HTTP/1.1 by ALPN (RFC 7301).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(cert).map_err(|reason| TlsError::Cert { path: cert.into(), reason })?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.into(), reason: e.to_string() })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(TlsError::Mismatch)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Trust anchors from a PEM file, for an upstream signed by a private CA.
pub fn root_store(ca: &Path) -> Result<RootCertStore, TlsError> {
    let (_, store) = anchors(ca)?;
    Ok(store)
}

/// The certificates of a CA file, each checked to be usable as a trust anchor, for a client
/// (the SMTP one) that takes certificates rather than a [`RootCertStore`].
pub fn ca_certificates(ca: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let (certs, _) = anchors(ca)?;
    Ok(certs)
}

fn anchors(ca: &Path) -> Result<(Vec<CertificateDer<'static>>, RootCertStore), TlsError> {
    let to_err = |reason: String| TlsError::Ca { path: ca.into(), reason };
    let certs = certificates(ca).map_err(to_err)?;
    let mut store = RootCertStore::empty();
    for cert in &certs {
        store.add(cert.clone()).map_err(|e| to_err(e.to_string()))?;
    }
    Ok((certs, store))
}

/// A TLS client configuration trusting `extra` (DER certificates from an operator's CA file)
/// when given, else the system's trust anchors: for clients hyper does not build (LDAP).
pub fn client_config(extra: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if extra.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            // A system bundle may hold a certificate rustls cannot use; the others still count.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(format!("no trust anchors found on this system ({:?})", found.errors));
        }
    } else {
        for der in extra {
            roots.add(CertificateDer::from(der.clone())).map_err(|e| e.to_string())?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
