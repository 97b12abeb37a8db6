//! TLS: the rustls server configuration of a listener (`[tls]`, the WebSocket and
//! monitoring certificates) and the mutual TLS between the nodes of a cluster.
//!
//! Certificates and keys are read from PEM files when the node starts (and again on a
//! reload); every failure names the config key and the file, so a wrong path or a
//! key that does not belong to the certificate is a clear error at start, not a
//! handshake that fails later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use serde::Deserialize;

use crate::values::Dur;

/// `[tls]`: TLS on the client listener. Set `cert_file` and `key_file` to turn it on;
/// every client must then speak TLS.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates, PEM, that client certificates must chain to (with `verify`).
    pub ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `ca_file` (mutual TLS).
    pub verify: bool,
    /// Time a client has to complete the handshake (default 2 s).
    pub timeout: Option<Dur>,
    /// Start with the TLS handshake instead of a plain-text INFO (the reference's
    /// `handshake_first`; clients must be set up for it too).
    pub handshake_first: bool,
}

/// The reference's TLS handshake timeout.
pub const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(2);

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_TLS_TIMEOUT, |d| d.0)
    }
}

/// Why the TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
#[error("key `{key}`: {path}: {reason}")]
pub struct TlsError {
    pub key: String,
    pub path: PathBuf,
    pub reason: String,
}

/// How the caller reads files (`src/` opens none itself): the whole file at `path`.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>;

fn read(key: &str, path: &Path, files: ReadFile<'_>) -> Result<Vec<u8>, TlsError> {
    files(path).map_err(|e| TlsError {
        key: key.to_string(),
        path: path.to_owned(),
        reason: format!("cannot read: {e}"),
    })
}

fn certificates(
    key: &str,
    path: &Path,
    files: ReadFile<'_>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path, files)?;
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

/// The server side for a listener configured with just a certificate and key (the
/// WebSocket and monitoring listeners); `None` without both.
pub fn listener_config(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    section: &str,
    files: ReadFile<'_>,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let tls = TlsConfig {
        cert_file: Some(cert.clone()),
        key_file: Some(key.clone()),
        ..TlsConfig::default()
    };
    server_config(&tls, section, files).map(Some)
}

/// Builds the server side of a TLS section (`[tls]`, or the certificate settings of
/// another listener: `section` names it in errors).
pub fn server_config(
    config: &TlsConfig,
    section: &str,
    files: ReadFile<'_>,
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
    let chain = certificates(&key("cert_file"), cert_path, files)?;
    let key_pem = read(&key("key_file"), key_path, files)?;
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
            for cert in certificates(&key("ca_file"), ca_path, files)? {
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
        (Some(ca_path), false) => {
            // Unused without `verify` (as by the reference), but read anyway so a
            // file that would fail once verify is turned on fails now.
            certificates(&key("ca_file"), ca_path, files)?;
            builder.with_no_client_auth()
        }
        (None, _) => builder.with_no_client_auth(),
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

/// The name a dialing node presents (SNI) and checks nothing against: route
/// certificates are checked for the cluster CA's signature, not for a name (nodes are
/// dialed by address, often a mesh address derived at run time).
pub fn route_server_name(_addr: &str) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::DnsName(
        rustls::pki_types::DnsName::try_from("route.meshbroker.invalid")
            .expect("a valid DNS name")
            .to_owned(),
    )
}

/// Accepts a route peer's certificate when it chains to the cluster CA, whatever
/// names it carries; every other check (validity, signatures, key usage) is
/// webpki's.
#[derive(Debug)]
struct ClusterCaVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Mutual TLS between nodes: the server side (client certificates from the cluster
/// CA required) and the client side (this node's certificate; the peer's must chain
/// to the same CA).
pub fn route_configs(
    cert_file: &Path,
    key_file: &Path,
    ca_file: &Path,
    files: ReadFile<'_>,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), TlsError> {
    let tls = TlsConfig {
        cert_file: Some(cert_file.to_owned()),
        key_file: Some(key_file.to_owned()),
        ca_file: Some(ca_file.to_owned()),
        verify: true,
        ..TlsConfig::default()
    };
    let server = server_config(&tls, "cluster", files)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates("cluster.ca_file", ca_file, files)? {
        roots.add(cert).map_err(|e| TlsError {
            key: "cluster.ca_file".into(),
            path: ca_file.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError {
        key: "cluster.ca_file".into(),
        path: ca_file.to_owned(),
        reason: e.to_string(),
    })?;
    let chain = certificates("cluster.cert_file", cert_file, files)?;
    let key_pem = read("cluster.key_file", key_file, files)?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError {
        key: "cluster.key_file".into(),
        path: key_file.to_owned(),
        reason: format!("no private key in the file: {e}"),
    })?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "cluster".into(),
            path: cert_file.to_owned(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCaVerifier(webpki)))
        .with_client_auth_cert(chain, private_key)
        .map_err(|e| TlsError {
            key: "cluster.key_file".into(),
            path: key_file.to_owned(),
            reason: format!(
                "does not fit the certificate in {}: {e}",
                cert_file.display()
            ),
        })?;
    Ok((server, Arc::new(client)))
}
