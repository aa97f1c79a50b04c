//! A throwaway certificate authority for TLS tests: a CA, a server certificate for the
//! names given, a client certificate, and a second, unrelated CA (the "wrong" one), all
//! written as PEM files into a directory.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The PEM files of a test PKI.
pub struct Pki {
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
    /// The server certificate, signed by the CA.
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// A client certificate, signed by the CA.
    pub client_cert: PathBuf,
    /// The client's key.
    pub client_key: PathBuf,
    /// Another CA, which signed none of these.
    pub other_ca: PathBuf,
    /// The server certificate as PEM text.
    pub server_cert_pem: String,
    /// The server key as PEM text.
    pub server_key_pem: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

impl Pki {
    /// Generates the PKI into `dir`; the server certificate is valid for `server_names`.
    pub fn generate(dir: &Path, server_names: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("PKI directory");
        let authority = ca("order-closer test CA");
        let other = ca("an unrelated CA");

        let server_key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(
            server_names
                .iter()
                .map(|n| (*n).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, server_names[0]);
        let server = params
            .signed_by(&server_key, &authority)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(DnType::CommonName, "order-closer");
        let client = params
            .signed_by(&client_key, &authority)
            .expect("client cert");

        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("PEM file");
            path
        };
        Self {
            ca: write("ca.pem", &authority.pem()),
            server_cert: write("server.pem", &server.pem()),
            server_key: write("server.key", &server_key.serialize_pem()),
            client_cert: write("client.pem", &client.pem()),
            client_key: write("client.key", &client_key.serialize_pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }
}
