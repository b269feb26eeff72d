//! A TLS client for this server's own listener (the console's publish form): it trusts
//! exactly the certificate the server serves at the moment of the handshake — pinned, so
//! no CA, name or clock is involved, and a reload (SIGHUP) is followed.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, SignatureScheme};

use super::CurrentCert;

#[derive(Debug)]
struct Pinned {
    current: Arc<CurrentCert>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let serving = self.current.0.load();
        match serving.cert.first() {
            Some(leaf) if leaf.as_ref() == end_entity.as_ref() => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(Error::General(
                "not the certificate this server serves".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
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
    ) -> Result<HandshakeSignatureValid, Error> {
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

impl super::Tls {
    /// A client configuration that trusts only the certificate this server serves.
    pub fn pinned_client(&self) -> Arc<ClientConfig> {
        let verifier = Arc::new(Pinned {
            current: self.certs.clone(),
            provider: self.provider.clone(),
        });
        Arc::new(
            ClientConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .expect("the provider supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth(),
        )
    }
}
