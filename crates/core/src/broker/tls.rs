//! TLS for `amqps://`: the authorities trusted besides the system's (a private CA) and an
//! optional client certificate, read once at start-up so a wrong file fails naming its
//! variable. lapin verifies the server's chain and host name with rustls.

use std::path::Path;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};

use crate::files;
use crate::tls;

/// Largest client certificate or key file.
const MAX_IDENTITY_BYTES: u64 = 64 * 1024;

/// TLS settings of the broker connection (all optional: an `amqps://` URL alone trusts
/// the system's authorities).
#[derive(Debug, Clone, Default)]
pub struct AmqpTls {
    /// PEM certificates of extra trusted authorities (`ORDER_CLOSER_AMQP_TLS_CA`).
    pub ca_pem: Option<String>,
    /// The client certificate and key (`ORDER_CLOSER_AMQP_TLS_CERT`, `..._KEY`).
    pub identity: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The certificate chain.
    pub cert_pem: String,
    /// The PKCS#8 private key (never printed).
    pub key_pem: SecretString,
}

impl AmqpTls {
    /// Whether anything is configured.
    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }

    /// Reads the CA file and the client certificate and key files.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, AmqpTlsError> {
        let ca_pem = ca
            .map(tls::read_ca_pem)
            .transpose()
            .map_err(|e| AmqpTlsError::Ca(e.to_string()))?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let cert_pem =
                    tls::read_ca_pem(cert).map_err(|e| AmqpTlsError::Cert(e.to_string()))?;
                let key_pem = files::read_capped_text(key, MAX_IDENTITY_BYTES)
                    .map_err(|e| AmqpTlsError::Key(e.to_string()))?;
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
                    AmqpTlsError::Key(format!("{} holds no PEM private key", key.display()))
                })?;
                Some(ClientIdentity {
                    cert_pem,
                    key_pem: key_pem.into(),
                })
            }
            _ => return Err(AmqpTlsError::HalfIdentity),
        };
        Ok(Self { ca_pem, identity })
    }

    /// lapin's form.
    pub(crate) fn to_lapin(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            cert_chain: self.ca_pem.clone(),
            identity: self.identity.as_ref().map(|id| OwnedIdentity::PKCS8 {
                pem: id.cert_pem.clone().into_bytes(),
                key: id.key_pem.expose_secret().as_bytes().to_vec(),
            }),
        }
    }
}

/// A broker TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AmqpTlsError {
    /// `ORDER_CLOSER_AMQP_TLS_CA`.
    #[error("ORDER_CLOSER_AMQP_TLS_CA: {0}")]
    Ca(String),
    /// `ORDER_CLOSER_AMQP_TLS_CERT`.
    #[error("ORDER_CLOSER_AMQP_TLS_CERT: {0}")]
    Cert(String),
    /// `ORDER_CLOSER_AMQP_TLS_KEY`.
    #[error("ORDER_CLOSER_AMQP_TLS_KEY: {0}")]
    Key(String),
    /// Only one of the two client-certificate variables.
    #[error("set both ORDER_CLOSER_AMQP_TLS_CERT and ORDER_CLOSER_AMQP_TLS_KEY, or neither")]
    HalfIdentity,
}
