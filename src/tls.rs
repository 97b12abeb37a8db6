//! TLS for the client listener: the rustls server configuration built from `[tls]`.
//!
//! Certificates and keys are read from PEM files when the node starts (and again on a
//! reload); every failure names the config key and the file, so a wrong path or a
//! key that does not belong to the certificate is a clear error at start, not a
//! handshake that fails later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why the TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
#[error("key `{key}`: {path}: {reason}")]
pub struct TlsError {
    pub key: String,
    pub path: PathBuf,
    pub reason: String,
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        key: key.to_string(),
        path: path.to_owned(),
        reason: format!("cannot read: {e}"),
    })
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let err = |reason: String| TlsError {
        key: key.to_string(),
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Builds the server side of a TLS section (`[tls]`, or the certificate settings of
/// another listener: `section` names it in errors).
pub fn server_config(
    config: &TlsConfig,
    section: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let key = |name: &str| format!("{section}.{name}");
    let (Some(cert_path), Some(key_path)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsError {
            key: key("cert_file"),
            path: PathBuf::new(),
            reason: "TLS needs a certificate and a key".into(),
        });
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&key("cert_file"), cert_path)?;
    let key_pem = read(&key("key_file"), key_path)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError {
        key: key("key_file"),
        path: key_path.clone(),
        reason: format!("no private key in the file: {e}"),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: section.to_string(),
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    let builder = match (&config.ca_file, config.verify) {
        (Some(ca_path), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(&key("ca_file"), ca_path)? {
                roots.add(cert).map_err(|e| TlsError {
                    key: key("ca_file"),
                    path: ca_path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError {
                key: key("ca_file"),
                path: ca_path.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(chain, private_key)
        .map_err(|e| TlsError {
            key: key("key_file"),
            path: key_path.clone(),
            reason: format!(
                "does not fit the certificate in {}: {e}",
                cert_path.display()
            ),
        })?;
    Ok(Arc::new(server))
}
