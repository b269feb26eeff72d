//! TLS termination: the certificate and key (`--tls-cert`, `--tls-key`), reloaded on
//! SIGHUP without dropping connections, and [`TlsSocket`], rustls driven over the IO seam
//! on the worker that accepted the connection.
//!
//! The certificate is read at each handshake from an [`ArcSwap`], so a reload takes effect
//! for new connections at once and never touches open ones; a reload that fails keeps the
//! certificate in use.

mod conn;
mod pin;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

pub use conn::{TlsReader, TlsSocket, TlsWriter, MAX_TLS_BUFFERED};

use crate::config::TlsFiles;

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file.
    #[error("TLS certificate {path}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file.
    #[error("TLS key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The TLS set-up every worker shares: the server configuration and the certificate in use.
pub struct Tls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    certs: Arc<CurrentCert>,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Reads the certificate and key; an error names the file and the reason.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_certified_key(files, &provider)?;
        let certs = Arc::new(CurrentCert(ArcSwap::from_pointee(key)));
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Cert {
                path: files.cert.clone(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        // Only HTTP/1.1 is spoken (WebSocket upgrades included); browsers offer it alongside h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            files: files.clone(),
            provider,
            certs,
            config: Arc::new(config),
        })
    }

    /// The files the certificate and key come from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The rustls configuration for new connections.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// SHA-256 of the certificate in use (the leaf), in hex: what `openssl x509 -fingerprint
    /// -sha256` prints, without the colons.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certs.0.load())
    }

    /// Reads the certificate and key again from the same files. New connections get the new
    /// certificate; open ones keep theirs. On error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.files, &self.provider)?;
        self.certs.0.store(Arc::new(key));
        Ok(())
    }
}

/// The certificate handed to every handshake.
#[derive(Debug)]
struct CurrentCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn fingerprint(key: &CertifiedKey) -> String {
    key.cert
        .first()
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))
}

fn load_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: files.cert.clone(),
        reason,
    };
    let key_err = |reason: String| TlsError::Key {
        path: files.key.clone(),
        reason,
    };
    let pem = read(&files.cert).map_err(cert_err)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("invalid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks, leaf first)".into(),
        ));
    }
    let pem = read(&files.key).map_err(key_err)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => key_err(
            "no private key in it (expected PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
             or \"BEGIN EC PRIVATE KEY\")"
                .into(),
        ),
        e => key_err(format!("invalid PEM: {e}")),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_err(format!(
            "does not match the certificate in {}",
            files.cert.display()
        )),
        rustls::Error::General(_) => key_err(format!("unusable key: {e}")),
        e => cert_err(format!("unusable certificate: {e}")),
    })
}
