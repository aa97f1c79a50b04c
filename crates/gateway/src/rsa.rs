//! RSA keys as the gateways use them (Alipay's RSA2, WeChat Pay's SHA256withRSA: both
//! RSASSA-PKCS1-v1_5 with SHA-256): parsing (PEM or bare base64, PKCS#1 or PKCS#8/SPKI),
//! signing with the merchant's private key and verifying with the gateway's public key,
//! on `aws-lc-rs`.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{self, KeySize};
use aws_lc_rs::signature::{
    KeyPair as _, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

/// Smallest accepted RSA modulus, in bytes (2048 bits), as the verifier requires.
const MIN_MODULUS_BYTES: usize = 256;

/// Why a key could not be read or used. Never carries key material.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is empty or only whitespace.
    #[error("key text is empty")]
    Empty,
    /// The text has a `-----BEGIN` line but the PEM armour around it is broken.
    #[error("malformed PEM: {0}")]
    MalformedPem(&'static str),
    /// The PEM label names another kind of object than the one expected.
    #[error("PEM label {found:?} is not accepted here; expected {expected}")]
    WrongLabel {
        /// The label found (truncated to 40 characters).
        found: String,
        /// The labels accepted here.
        expected: &'static str,
    },
    /// The key is encrypted with a passphrase; we only read unencrypted keys.
    #[error("the key is passphrase-encrypted; decrypt it first (openssl pkey -in key.pem)")]
    Encrypted,
    /// The text is neither PEM nor valid base64.
    #[error("key text is neither PEM nor valid base64")]
    NotBase64,
    /// The bytes decode but are not an RSA private key in PKCS#8 or PKCS#1 form.
    #[error("not an RSA private key (tried PKCS#8 and PKCS#1): {0}")]
    NotRsaPrivateKey(&'static str),
    /// The bytes decode but are not an RSA public key in SPKI or PKCS#1 form.
    #[error("not an RSA public key (tried SPKI and PKCS#1): {0}")]
    NotRsaPublicKey(&'static str),
    /// The RSA key is shorter than 2048 bits.
    #[error("RSA key is {bits} bits; at least 2048 are required")]
    TooShort {
        /// The key's modulus length in bits.
        bits: usize,
    },
    /// Generating a key pair failed.
    #[error("RSA key generation failed")]
    Generate,
    /// Encoding a key failed.
    #[error("key encoding failed")]
    Encode,
    /// The signing operation failed.
    #[error("RSA signing failed")]
    Sign,
}

/// How the key text was armoured.
enum Armour {
    /// PEM with this label.
    Pem(String),
    /// Bare base64, no label.
    Bare,
}

/// Decodes PEM (first block only) or bare base64 into DER. Whitespace is tolerated anywhere
/// in the base64 part, and literal `\n` escapes (keys pasted from JSON or env files) too.
fn decode_key_text(text: &str) -> Result<(Armour, Vec<u8>), KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    let text_owned;
    let text = if text.contains("\\n") {
        text_owned = text.replace("\\n", "\n");
        text_owned.as_str()
    } else {
        text
    };
    if let Some(begin) = text.find("-----BEGIN ") {
        let after_begin = &text[begin + "-----BEGIN ".len()..];
        let label_end = after_begin
            .find("-----")
            .ok_or(KeyError::MalformedPem("unterminated BEGIN line"))?;
        let label = &after_begin[..label_end];
        if label.contains('\n') || label.is_empty() {
            return Err(KeyError::MalformedPem("bad BEGIN line"));
        }
        let body_and_rest = &after_begin[label_end + "-----".len()..];
        let end_line = format!("-----END {label}-----");
        let end = body_and_rest
            .find(&end_line)
            .ok_or(KeyError::MalformedPem("missing matching END line"))?;
        let body = &body_and_rest[..end];
        if label.contains("ENCRYPTED") || body.contains("Proc-Type:") || body.contains("DEK-Info:")
        {
            return Err(KeyError::Encrypted);
        }
        let der = decode_base64_lenient(body)?;
        Ok((Armour::Pem(label.to_owned()), der))
    } else if text.contains("-----") {
        Err(KeyError::MalformedPem("END line without BEGIN line"))
    } else {
        Ok((Armour::Bare, decode_base64_lenient(text)?))
    }
}

/// Decodes standard base64 ignoring all ASCII whitespace.
fn decode_base64_lenient(body: &str) -> Result<Vec<u8>, KeyError> {
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(KeyError::Empty);
    }
    STANDARD.decode(compact).map_err(|_| KeyError::NotBase64)
}

/// Truncates a PEM label for an error message.
fn short_label(label: &str) -> String {
    label.chars().take(40).collect()
}

/// Wraps DER bytes as PEM with 64-character lines.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let bytes = b64.as_bytes();
    for line in bytes.chunks(64) {
        // base64 output is ASCII, so every chunk boundary is a char boundary.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// The merchant application's RSA private key, used to sign requests (RSA2).
pub struct RsaPrivateKey {
    pair: rsa::KeyPair,
    /// PKCS#8 DER, encoded once at construction so that export cannot fail later.
    pkcs8_der: Vec<u8>,
    public: RsaPublicKey,
}

impl Drop for RsaPrivateKey {
    fn drop(&mut self) {
        // Best effort: do not leave the exported key bytes lying in freed memory.
        self.pkcs8_der.fill(0);
        std::hint::black_box(&self.pkcs8_der);
    }
}

impl fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivateKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl RsaPrivateKey {
    /// Reads a private key from PEM (`PRIVATE KEY` = PKCS#8, `RSA PRIVATE KEY` = PKCS#1) or
    /// from bare base64 DER (PKCS#8 is tried first, then PKCS#1).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (armour, der) = decode_key_text(text)?;
        let pair = match armour {
            Armour::Pem(label) => match label.as_str() {
                "PRIVATE KEY" => rsa::KeyPair::from_pkcs8(&der)
                    .map_err(|e| KeyError::NotRsaPrivateKey(e.description_()))?,
                "RSA PRIVATE KEY" => rsa::KeyPair::from_der(&der)
                    .map_err(|e| KeyError::NotRsaPrivateKey(e.description_()))?,
                _ => {
                    return Err(KeyError::WrongLabel {
                        found: short_label(&label),
                        expected: "PRIVATE KEY or RSA PRIVATE KEY",
                    });
                }
            },
            Armour::Bare => match rsa::KeyPair::from_pkcs8(&der) {
                Ok(pair) => pair,
                Err(_) => rsa::KeyPair::from_der(&der)
                    .map_err(|e| KeyError::NotRsaPrivateKey(e.description_()))?,
            },
        };
        Self::from_pair(pair)
    }

    /// Generates a fresh RSA-2048 key pair (for the simulator, tests and the demo).
    pub fn generate() -> Result<Self, KeyError> {
        let pair = rsa::KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        Self::from_pair(pair)
    }

    fn from_pair(pair: rsa::KeyPair) -> Result<Self, KeyError> {
        let bits = pair.public_modulus_len() * 8;
        if pair.public_modulus_len() < MIN_MODULUS_BYTES {
            return Err(KeyError::TooShort { bits });
        }
        let spki = pair.public_key().as_der().map_err(|_| KeyError::Encode)?;
        let public = RsaPublicKey::from_der(spki.as_ref())?;
        let pkcs8_der = pair
            .as_der()
            .map_err(|_| KeyError::Encode)?
            .as_ref()
            .to_vec();
        Ok(Self {
            pair,
            pkcs8_der,
            public,
        })
    }

    /// Signs `message` with RSASSA-PKCS1-v1_5 / SHA-256 and returns standard base64.
    ///
    /// Costs about 1 ms of CPU for a 2048-bit key.
    pub fn sign_base64(&self, message: &[u8]) -> Result<String, KeyError> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig)
            .map_err(|_| KeyError::Sign)?;
        Ok(STANDARD.encode(sig))
    }

    /// The matching public key (what the gateway must be told to trust).
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// Exports the private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pkcs8_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8_der)
    }
}

/// An RSA public key (Alipay's, or an app's as the simulator sees it), parsed once and
/// kept ready for verification.
#[derive(Clone)]
pub struct RsaPublicKey {
    parsed: ParsedPublicKey,
    spki_der: Vec<u8>,
}

impl PartialEq for RsaPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki_der == other.spki_der
    }
}

impl Eq for RsaPublicKey {}

impl fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RsaPublicKey(sha256:{})", self.fingerprint())
    }
}

impl RsaPublicKey {
    /// Reads a public key from PEM (`PUBLIC KEY` = SPKI, `RSA PUBLIC KEY` = PKCS#1) or from
    /// bare base64 DER (either form).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (armour, der) = decode_key_text(text)?;
        if let Armour::Pem(label) = armour
            && label != "PUBLIC KEY"
            && label != "RSA PUBLIC KEY"
        {
            return Err(KeyError::WrongLabel {
                found: short_label(&label),
                expected: "PUBLIC KEY or RSA PUBLIC KEY",
            });
        }
        Self::from_der(&der)
    }

    /// Reads a public key from DER, SPKI or PKCS#1.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let plain = rsa::PublicKey::from_der(der)
            .map_err(|e| KeyError::NotRsaPublicKey(e.description_()))?;
        if plain.modulus_len() < MIN_MODULUS_BYTES {
            return Err(KeyError::TooShort {
                bits: plain.modulus_len() * 8,
            });
        }
        let spki = plain.as_der().map_err(|_| KeyError::Encode)?;
        let spki_der = spki.as_ref().to_vec();
        let parsed = ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &spki_der)
            .map_err(|e| KeyError::NotRsaPublicKey(e.description_()))?;
        Ok(Self { parsed, spki_der })
    }

    /// Checks an RSA2 (PKCS#1 v1.5 / SHA-256) signature given in standard base64.
    /// Any malformed input simply fails verification.
    pub fn verify_base64(&self, message: &[u8], signature_b64: &str) -> bool {
        let compact: String = signature_b64
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        match STANDARD.decode(compact) {
            Ok(sig) => self.parsed.verify_sig(message, &sig).is_ok(),
            Err(_) => false,
        }
    }

    /// The key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn to_spki_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki_der)
    }

    /// The key as bare base64 SPKI DER, the form Alipay's console shows.
    pub fn to_spki_base64(&self) -> String {
        STANDARD.encode(&self.spki_der)
    }

    /// A short hex SHA-256 fingerprint of the SPKI DER (first 16 bytes), for logs.
    pub fn fingerprint(&self) -> String {
        let d = digest::digest(&digest::SHA256, &self.spki_der);
        d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature;
    use std::sync::OnceLock;

    fn shared_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::generate().unwrap())
    }

    fn pkcs1_der(key: &RsaPrivateKey) -> Vec<u8> {
        // PKCS#8 wraps the PKCS#1 RSAPrivateKey in an OCTET STRING: re-parse to extract it.
        let pem = key.to_pkcs8_pem();
        let (_, der) = decode_key_text(&pem).unwrap();
        extract_pkcs1_from_pkcs8(&der)
    }

    /// Minimal DER walk for tests: PrivateKeyInfo ::= SEQUENCE { version, algId, OCTET STRING }.
    fn extract_pkcs1_from_pkcs8(der: &[u8]) -> Vec<u8> {
        fn read_len(b: &[u8], i: &mut usize) -> usize {
            let first = b[*i];
            *i += 1;
            if first < 0x80 {
                return first as usize;
            }
            let n = (first & 0x7f) as usize;
            let mut len = 0usize;
            for _ in 0..n {
                len = (len << 8) | b[*i] as usize;
                *i += 1;
            }
            len
        }
        let mut i = 0;
        assert_eq!(der[i], 0x30);
        i += 1;
        read_len(der, &mut i);
        // version INTEGER
        assert_eq!(der[i], 0x02);
        i += 1;
        let l = read_len(der, &mut i);
        i += l;
        // AlgorithmIdentifier SEQUENCE
        assert_eq!(der[i], 0x30);
        i += 1;
        let l = read_len(der, &mut i);
        i += l;
        // OCTET STRING
        assert_eq!(der[i], 0x04);
        i += 1;
        let l = read_len(der, &mut i);
        der[i..i + l].to_vec()
    }

    #[test]
    fn pkcs8_pem_parses_and_round_trips() {
        let key = shared_key();
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = RsaPrivateKey::parse(&pem).unwrap();
        assert_eq!(again.public_key(), key.public_key());
    }

    #[test]
    fn pkcs1_pem_and_bare_base64_parse() {
        let key = shared_key();
        let pkcs1 = pkcs1_der(key);
        let pkcs1_pem = pem("RSA PRIVATE KEY", &pkcs1);
        let from_pkcs1 = RsaPrivateKey::parse(&pkcs1_pem).unwrap();
        assert_eq!(from_pkcs1.public_key(), key.public_key());

        // Bare base64, PKCS#1 and PKCS#8, with stray whitespace and line breaks.
        let bare1 = STANDARD.encode(&pkcs1);
        let messy = format!("  {}\n {} \r\n", &bare1[..100], &bare1[100..]);
        assert_eq!(
            RsaPrivateKey::parse(&messy).unwrap().public_key(),
            key.public_key()
        );
        let (_, pkcs8) = decode_key_text(&key.to_pkcs8_pem()).unwrap();
        let bare8 = STANDARD.encode(&pkcs8);
        assert_eq!(
            RsaPrivateKey::parse(&bare8).unwrap().public_key(),
            key.public_key()
        );
        // Literal "\n" escapes, as pasted from an env file.
        let escaped = key.to_pkcs8_pem().replace('\n', "\\n");
        assert!(RsaPrivateKey::parse(&escaped).is_ok());
    }

    #[test]
    fn public_key_forms_parse() {
        let key = shared_key();
        let public = key.public_key();
        let spki_pem = public.to_spki_pem();
        assert!(spki_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(&RsaPublicKey::parse(&spki_pem).unwrap(), public);
        assert_eq!(
            &RsaPublicKey::parse(&public.to_spki_base64()).unwrap(),
            public
        );
        let pkcs1 = rsa::PublicKey::from_der(&public.spki_der).unwrap();
        let pkcs1_pem = pem("RSA PUBLIC KEY", pkcs1.as_ref());
        assert_eq!(&RsaPublicKey::parse(&pkcs1_pem).unwrap(), public);
        assert_eq!(
            &RsaPublicKey::parse(&STANDARD.encode(pkcs1.as_ref())).unwrap(),
            public
        );
    }

    #[test]
    fn garbage_is_rejected_with_a_key_error() {
        assert_eq!(RsaPrivateKey::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(RsaPrivateKey::parse("   \n ").unwrap_err(), KeyError::Empty);
        assert_eq!(
            RsaPrivateKey::parse("not a key!").unwrap_err(),
            KeyError::NotBase64
        );
        assert!(matches!(
            RsaPrivateKey::parse("aGVsbG8gd29ybGQ=").unwrap_err(),
            KeyError::NotRsaPrivateKey(_)
        ));
        assert!(matches!(
            RsaPublicKey::parse("aGVsbG8gd29ybGQ=").unwrap_err(),
            KeyError::NotRsaPublicKey(_)
        ));
        assert!(matches!(
            RsaPrivateKey::parse("-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap_err(),
            KeyError::MalformedPem(_)
        ));
        assert!(matches!(
            RsaPrivateKey::parse(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----"
            )
            .unwrap_err(),
            KeyError::Encrypted
        ));
        // A public key where a private key is expected, and the other way round.
        let public_pem = shared_key().public_key().to_spki_pem();
        assert!(matches!(
            RsaPrivateKey::parse(&public_pem).unwrap_err(),
            KeyError::WrongLabel { .. }
        ));
        let private_pem = shared_key().to_pkcs8_pem();
        assert!(matches!(
            RsaPublicKey::parse(&private_pem).unwrap_err(),
            KeyError::WrongLabel { .. }
        ));
        // A private key's bare base64 is not a public key.
        let (_, pkcs8) = decode_key_text(&private_pem).unwrap();
        assert!(RsaPublicKey::parse(&STANDARD.encode(pkcs8)).is_err());
    }

    #[test]
    fn non_rsa_keys_are_rejected() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let ec_pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let err = RsaPrivateKey::parse(&pem("PRIVATE KEY", ec_pkcs8.as_ref())).unwrap_err();
        assert!(matches!(err, KeyError::NotRsaPrivateKey(_)), "{err:?}");
        let ec = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            ec_pkcs8.as_ref(),
        )
        .unwrap();
        let ec_spki = ec.public_key().as_der().unwrap();
        let err = RsaPublicKey::parse(&pem("PUBLIC KEY", ec_spki.as_ref())).unwrap_err();
        assert!(matches!(err, KeyError::NotRsaPublicKey(_)), "{err:?}");
    }

    #[test]
    fn errors_and_debug_never_show_key_material() {
        let key = shared_key();
        let pem = key.to_pkcs8_pem();
        let body_line = pem.lines().nth(1).unwrap();
        let debug = format!("{key:?}");
        assert!(!debug.contains(body_line));
        assert!(debug.starts_with("RsaPrivateKey"));
        let broken = pem.replace("-----END PRIVATE KEY-----", "");
        let msg = RsaPrivateKey::parse(&broken).unwrap_err().to_string();
        assert!(!msg.contains(body_line), "{msg}");
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = shared_key();
        let msg = "app_id=2021&biz_content={\"out_trade_no\":\"A1\"}&charset=utf-8".as_bytes();
        let sig = key.sign_base64(msg).unwrap();
        assert_eq!(STANDARD.decode(&sig).unwrap().len(), 256);
        assert!(key.public_key().verify_base64(msg, &sig));
        // Tampered message fails.
        assert!(!key.public_key().verify_base64(b"app_id=2022", &sig));
        // Another key fails.
        let other = RsaPrivateKey::generate().unwrap();
        assert!(!other.public_key().verify_base64(msg, &sig));
        // Garbage signatures fail without panicking.
        assert!(!key.public_key().verify_base64(msg, ""));
        assert!(!key.public_key().verify_base64(msg, "!!!"));
        assert!(!key.public_key().verify_base64(msg, "AAAA"));
    }
}
