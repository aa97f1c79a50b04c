//! TLS client set-up shared by the Postgres and RabbitMQ connections: which certificate
//! authorities are trusted (a PEM file, or the system's store) and how much of the
//! server's certificate is checked, in libpq's terms (nothing, the chain, or the chain and
//! the host name).
//!
//! One rustls crypto provider (aws-lc-rs, which the signing code already uses) is named
//! explicitly, so the process never depends on which provider another crate installed.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use thiserror::Error;

/// Largest CA bundle read (the whole Mozilla store is about 220 KiB).
pub const MAX_CA_BYTES: u64 = 1024 * 1024;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, but accept any certificate (libpq's `prefer` and `require` without a CA).
    Nothing,
    /// The chain must lead to a trusted authority; the name is not checked (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`, and always for `amqps://`).
    ChainAndName,
}

/// A TLS set-up that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The CA file cannot be read.
    #[error("CA file: {0}")]
    CaFile(#[from] crate::files::FileError),
    /// The CA file holds no certificate.
    #[error("CA file {path} holds no PEM certificate")]
    NoCertificate {
        /// The path as given.
        path: String,
    },
    /// The system store has no usable certificate.
    #[error("the system certificate store is empty or unreadable: {0}")]
    SystemStore(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider every TLS connection of the process uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The PEM certificates of a CA file (read with a size cap), as text.
pub fn read_ca_pem(path: &Path) -> Result<String, TlsError> {
    let text = crate::files::read_capped_text(path, MAX_CA_BYTES)?;
    if parse_pem(&text).is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(text)
}

fn parse_pem(text: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(text.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// The trusted authorities: the certificates of `ca_pem` when given, else the system's.
pub fn roots(ca_pem: Option<&str>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca_pem {
        Some(text) => {
            let (added, _) = store.add_parsable_certificates(parse_pem(text));
            if added == 0 {
                return Err(TlsError::Config("no usable CA certificate".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "no certificate found".to_owned(), ToString::to_string);
                return Err(TlsError::SystemStore(why));
            }
        }
    }
    Ok(store)
}

/// A client configuration checking `verify` of the server's certificate against the
/// authorities of `ca_pem` (the system's when `None`; unused for [`Verify::Nothing`]).
pub fn client_config(verify: Verify, ca_pem: Option<&str>) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let chain = match verify {
        Verify::Nothing => None,
        Verify::Chain | Verify::ChainAndName => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
        ),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (verify, chain) {
        (Verify::ChainAndName, Some(full)) => full,
        (_, chain) => Arc::new(Relaxed { chain, provider }),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Less than the full check, but always that the server holds the key of the
/// certificate it shows (the handshake signatures). With `chain`, the chain must lead to
/// a trusted authority, but a certificate valid for another name is accepted (libpq's
/// `verify-ca`: webpki checks the chain before the name, so a name error means the chain
/// passed); without, any certificate is accepted (libpq's `prefer` and `require`:
/// encryption against passive listeners, no authentication of the server).
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
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
