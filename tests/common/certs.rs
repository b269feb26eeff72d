//! Self-signed certificates for the TLS tests (ringcast's own listener, Redis over TLS).

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use super::now_secs;

/// A self-signed certificate and its key, written as PEM files.
pub struct Cert {
    pub der: CertificateDer<'static>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A fresh directory for one test's files.
pub fn temp_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringcast-tls-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        now_secs()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Generates a certificate for 127.0.0.1 and localhost with this serial number and common
/// name and writes it to `dir/cert.pem` and `dir/key.pem` (replacing what is there).
pub fn write_cert(dir: &Path, serial: u64, name: &str) -> Cert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params.serial_number = Some(serial.into());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Cert {
        der: cert.der().clone(),
        cert_path,
        key_path,
    }
}
