//! WeChat Pay API v3 signatures, both ways (SHA256withRSA: RSASSA-PKCS1-v1_5 over
//! SHA-256, base64).
//!
//! - A request is signed over `METHOD\nPATH?QUERY\nTIMESTAMP\nNONCE\nBODY\n` (an empty body
//!   for a GET) with the merchant's key, and carries
//!   `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",timestamp="..",serial_no="..",signature=".."`
//!   (the fields may come in any order: the official SDKs disagree).
//! - An answer or a notification is checked over `TIMESTAMP\nNONCE\nBODY\n` from its
//!   `Wechatpay-Timestamp`, `Wechatpay-Nonce` and `Wechatpay-Signature` headers, with the
//!   WeChat Pay key `Wechatpay-Serial` names: the WeChat Pay public key when the serial is
//!   its id (`PUB_KEY_ID_...`, the mode of new merchants), or else the platform
//!   certificate of that serial (older merchants; both are accepted during a migration).
//!   A timestamp 300 s or more away from now is refused (the Go and Java SDKs' reading
//!   of the rule), and so is a signature starting `WECHATPAY/SIGNTEST/`: WeChat Pay's
//!   probe of whether signatures are checked at all.
//! - `Wechatpay-Signature-Type` names the scheme. WeChat sends
//!   `WECHATPAY2-SHA256-RSA2048`; any other value is refused (we hold RSA keys only).
//!   An absent header is read as that default, as the official Go and Java SDKs do (the
//!   header came later than the others); the Python SDK `wechatpayv3` requires it, so
//!   the simulator always sends it.
//! - A platform certificate verifies only between its `notBefore` and `notAfter`: one
//!   that expires while the process runs stops verifying, and the error says so.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use rand::Rng as _;
use thiserror::Error;

use order_closer_gateway::rsa::{KeyError, RsaPrivateKey, RsaPublicKey};

/// The signature scheme of the `Authorization` header.
pub const SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";

/// How far an answer's timestamp may be from now (exclusive).
pub const MAX_SKEW_SECS: i64 = 300;

/// The prefix of WeChat Pay's deliberately wrong probe signatures.
pub const PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// The answer's signature headers.
pub const HEADER_TIMESTAMP: &str = "Wechatpay-Timestamp";
/// The answer's nonce header.
pub const HEADER_NONCE: &str = "Wechatpay-Nonce";
/// The answer's signature header.
pub const HEADER_SIGNATURE: &str = "Wechatpay-Signature";
/// Which WeChat Pay key signed (a request names the one it can verify).
pub const HEADER_SERIAL: &str = "Wechatpay-Serial";
/// The signature's scheme ([`SCHEME`]).
pub const HEADER_SIGNATURE_TYPE: &str = "Wechatpay-Signature-Type";

/// The string a request is signed over.
pub fn request_message(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &str,
) -> String {
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n")
}

/// The string an answer or a notification is signed over.
pub fn answer_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(body.len() + 64);
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(nonce.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(body);
    message.push(b'\n');
    message
}

/// A random 32-character nonce from `[0-9A-Za-z]`, as the SDKs make them.
pub fn nonce() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The `Authorization` header of a request.
pub fn authorization(
    key: &RsaPrivateKey,
    mchid: &str,
    serial_no: &str,
    method: &str,
    path_and_query: &str,
    body: &str,
    now: DateTime<Utc>,
) -> Result<String, KeyError> {
    let timestamp = now.timestamp();
    let nonce = nonce();
    let signature = key
        .sign_base64(request_message(method, path_and_query, timestamp, &nonce, body).as_bytes())?;
    Ok(format!(
        "{SCHEME} mchid=\"{mchid}\",nonce_str=\"{nonce}\",timestamp=\"{timestamp}\",serial_no=\"{serial_no}\",signature=\"{signature}\""
    ))
}

/// An `Authorization` header, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// `mchid`.
    pub mchid: String,
    /// `nonce_str`.
    pub nonce: String,
    /// `timestamp` (Unix seconds).
    pub timestamp: i64,
    /// `serial_no`: the merchant certificate's serial.
    pub serial_no: String,
    /// `signature` (base64).
    pub signature: String,
}

/// Reads an `Authorization` header: the scheme, one space, then the five `k="v"` pairs in
/// any order, comma-separated; the error says what is wrong.
pub fn parse_authorization(header: &str) -> Result<Authorization, String> {
    let rest = header
        .strip_prefix(SCHEME)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| format!("the scheme must be {SCHEME} followed by one space"))?;
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for pair in rest.split(',') {
        let (name, value) = pair
            .split_once('=')
            .filter(|(n, _)| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .ok_or_else(|| format!("{pair:?} is not name=\"value\" (no spaces)"))?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("the value of {name} must be in double quotes"))?;
        if fields.insert(name, value).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    let field = |name: &str| {
        fields
            .get(name)
            .map(|v| (*v).to_owned())
            .ok_or_else(|| format!("{name} is missing"))
    };
    Ok(Authorization {
        mchid: field("mchid")?,
        nonce: field("nonce_str")?,
        timestamp: field("timestamp")?
            .parse()
            .map_err(|_| "timestamp is not a number".to_owned())?,
        serial_no: field("serial_no")?,
        signature: field("signature")?,
    })
}

/// A platform certificate serial as compared: upper case, without leading zeros (the
/// Java SDK drops them, the Go SDK keeps them).
pub fn normalize_serial(serial: &str) -> String {
    let upper = serial.trim().to_ascii_uppercase();
    let trimmed = upper.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// A WeChat Pay platform certificate, as far as verifying needs it.
#[derive(Debug, Clone)]
pub struct PlatformCert {
    /// Its serial (upper-case hex; compared normalized).
    pub serial: String,
    /// Its public key.
    pub key: RsaPublicKey,
    /// Its `notBefore`.
    pub not_before: DateTime<Utc>,
    /// Its `notAfter` (the last valid instant).
    pub not_after: DateTime<Utc>,
}

impl PlatformCert {
    /// Whether it is valid at `now`: the error says which bound is passed, with both
    /// dates. The one check of the start-up and of every verification.
    pub fn valid_at(&self, now: DateTime<Utc>) -> Result<(), VerifyError> {
        let serial = self.serial.clone();
        let (not_before, not_after) = (self.not_before, self.not_after);
        if now < not_before {
            Err(VerifyError::CertificateNotYetValid {
                serial,
                not_before,
                not_after,
            })
        } else if now > not_after {
            Err(VerifyError::CertificateExpired {
                serial,
                not_before,
                not_after,
            })
        } else {
            Ok(())
        }
    }
}

/// The WeChat Pay keys an answer may be signed with.
#[derive(Debug, Clone, Default)]
pub struct WechatKeys {
    /// The WeChat Pay public key and its id (`PUB_KEY_ID_...`).
    pub public_key: Option<(String, RsaPublicKey)>,
    /// Platform certificates (found by their serial, compared normalized).
    pub platform: Vec<PlatformCert>,
}

impl WechatKeys {
    /// The key `serial` names, if it may verify at `now`: the public key by its id, or a
    /// platform certificate within its validity.
    pub fn find(&self, serial: &str, now: DateTime<Utc>) -> Result<&RsaPublicKey, VerifyError> {
        if let Some((id, key)) = &self.public_key
            && id == serial
        {
            return Ok(key);
        }
        let wanted = normalize_serial(serial);
        let cert = self
            .platform
            .iter()
            .find(|c| normalize_serial(&c.serial) == wanted)
            .ok_or_else(|| VerifyError::UnknownSerial(serial.chars().take(64).collect()))?;
        cert.valid_at(now)?;
        Ok(&cert.key)
    }

    /// The serial a request names as the one it can verify (`Wechatpay-Serial`): the
    /// public key's id, or else the platform certificate valid the longest (as the
    /// Python SDK picks it).
    pub fn accept_serial(&self) -> Option<&str> {
        self.public_key
            .as_ref()
            .map(|(id, _)| id.as_str())
            .or_else(|| {
                self.platform
                    .iter()
                    .max_by_key(|c| c.not_after)
                    .map(|c| c.serial.as_str())
            })
    }

    /// Whether any key is known.
    pub fn is_empty(&self) -> bool {
        self.public_key.is_none() && self.platform.is_empty()
    }
}

/// Why an answer's or a notification's signature is not believed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A signature header is missing.
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// The timestamp is not a number.
    #[error("Wechatpay-Timestamp {0:?} is not a number")]
    BadTimestamp(String),
    /// The timestamp is too far from now.
    #[error(
        "Wechatpay-Timestamp is {skew} s away from now (at most {MAX_SKEW_SECS} s is believed)"
    )]
    Stale {
        /// Seconds from now.
        skew: i64,
    },
    /// No key of ours has this serial.
    #[error("Wechatpay-Serial {0:?} names no WeChat Pay key configured here")]
    UnknownSerial(String),
    /// The platform certificate the serial names has expired.
    #[error(
        "the WeChat Pay platform certificate {serial} expired at {not_after} (valid from {not_before} to {not_after}); install its successor in WECHAT_PLATFORM_CERTS"
    )]
    CertificateExpired {
        /// Its serial.
        serial: String,
        /// Its `notBefore`.
        not_before: DateTime<Utc>,
        /// Its `notAfter`.
        not_after: DateTime<Utc>,
    },
    /// The platform certificate the serial names is not valid yet.
    #[error(
        "the WeChat Pay platform certificate {serial} is not valid before {not_before} (valid from {not_before} to {not_after})"
    )]
    CertificateNotYetValid {
        /// Its serial.
        serial: String,
        /// Its `notBefore`.
        not_before: DateTime<Utc>,
        /// Its `notAfter`.
        not_after: DateTime<Utc>,
    },
    /// `Wechatpay-Signature-Type` names a scheme other than [`SCHEME`].
    #[error("Wechatpay-Signature-Type {0:?} is not {SCHEME}, the only scheme verified here")]
    SignatureType(String),
    /// WeChat Pay's probe signature.
    #[error("a signature probe (WECHATPAY/SIGNTEST/)")]
    Probe,
    /// The signature does not verify.
    #[error("the signature does not verify with the WeChat Pay key {0:?}")]
    BadSignature(String),
}

/// An answer's or a notification's signature headers.
#[derive(Debug, Clone, Copy)]
pub struct SignedBy<'a> {
    /// `Wechatpay-Timestamp`.
    pub timestamp: Option<&'a str>,
    /// `Wechatpay-Nonce`.
    pub nonce: Option<&'a str>,
    /// `Wechatpay-Signature`.
    pub signature: Option<&'a str>,
    /// `Wechatpay-Serial`.
    pub serial: Option<&'a str>,
    /// `Wechatpay-Signature-Type` (absent: [`SCHEME`]).
    pub signature_type: Option<&'a str>,
}

impl<'a> SignedBy<'a> {
    /// The signature headers of an answer or a notification (absent or not text: `None`).
    pub fn from_headers(headers: &'a reqwest::header::HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            timestamp: header(HEADER_TIMESTAMP),
            nonce: header(HEADER_NONCE),
            signature: header(HEADER_SIGNATURE),
            serial: header(HEADER_SERIAL),
            signature_type: header(HEADER_SIGNATURE_TYPE),
        }
    }
}

/// Checks an answer or a notification: the headers and the scheme, the timestamp's
/// distance from `now`, the key by serial (a platform certificate valid at `now`), the
/// signature over the exact body bytes.
pub fn verify(
    keys: &WechatKeys,
    signed: SignedBy<'_>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    let timestamp = signed
        .timestamp
        .ok_or(VerifyError::MissingHeader(HEADER_TIMESTAMP))?;
    let nonce = signed
        .nonce
        .ok_or(VerifyError::MissingHeader(HEADER_NONCE))?;
    let signature = signed
        .signature
        .ok_or(VerifyError::MissingHeader(HEADER_SIGNATURE))?;
    let serial = signed
        .serial
        .ok_or(VerifyError::MissingHeader(HEADER_SERIAL))?;
    if signature.starts_with(PROBE_PREFIX) {
        return Err(VerifyError::Probe);
    }
    if let Some(scheme) = signed.signature_type
        && scheme.trim() != SCHEME
    {
        return Err(VerifyError::SignatureType(
            order_closer_gateway::notice::echo(scheme),
        ));
    }
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp(timestamp.chars().take(20).collect()))?;
    let skew = (now.timestamp() - at).saturating_abs();
    if skew >= MAX_SKEW_SECS {
        return Err(VerifyError::Stale { skew });
    }
    let key = keys.find(serial, now)?;
    if key.verify_base64(&answer_message(timestamp, nonce, body), signature) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature(serial.chars().take(64).collect()))
    }
}

/// The signature headers of an answer or a notification signed now with `key` under
/// `serial`, its scheme named as WeChat Pay names it (the simulator's side).
pub fn signature_headers(
    key: &RsaPrivateKey,
    serial: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Vec<(&'static str, String)>, KeyError> {
    let timestamp = now.timestamp().to_string();
    let nonce = nonce();
    let signature = key.sign_base64(&answer_message(&timestamp, &nonce, body))?;
    Ok(vec![
        (HEADER_TIMESTAMP, timestamp),
        (HEADER_NONCE, nonce),
        (HEADER_SIGNATURE, signature),
        (HEADER_SERIAL, serial.to_owned()),
        (HEADER_SIGNATURE_TYPE, SCHEME.to_owned()),
    ])
}

/// A probe signature as WeChat Pay sends one: the prefix, then noise.
pub fn probe_signature() -> String {
    let noise: [u8; 32] = rand::rng().random();
    format!("{PROBE_PREFIX}{}", STANDARD.encode(noise))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::generate().unwrap())
    }

    const PUB_ID: &str = "PUB_KEY_ID_01142321349124100000000000000001";

    fn keys() -> WechatKeys {
        WechatKeys {
            public_key: Some((PUB_ID.into(), key().public_key().clone())),
            platform: Vec::new(),
        }
    }

    fn signed<'a>(h: &'a [(&'static str, String)]) -> SignedBy<'a> {
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        SignedBy {
            timestamp: get(HEADER_TIMESTAMP),
            nonce: get(HEADER_NONCE),
            signature: get(HEADER_SIGNATURE),
            serial: get(HEADER_SERIAL),
            signature_type: get(HEADER_SIGNATURE_TYPE),
        }
    }

    #[test]
    fn an_authorization_header_round_trips_in_any_field_order() {
        let now = Utc::now();
        let header = authorization(
            key(),
            "1900000001",
            "ABC123",
            "GET",
            "/v3/x?mchid=1",
            "",
            now,
        )
        .unwrap();
        let read = parse_authorization(&header).unwrap();
        assert_eq!(
            (read.mchid.as_str(), read.serial_no.as_str()),
            ("1900000001", "ABC123")
        );
        assert_eq!(read.timestamp, now.timestamp());
        let message = request_message("GET", "/v3/x?mchid=1", read.timestamp, &read.nonce, "");
        assert!(
            key()
                .public_key()
                .verify_base64(message.as_bytes(), &read.signature)
        );
        // The PHP SDK's order.
        let php = format!(
            "{SCHEME} mchid=\"1\",serial_no=\"S\",timestamp=\"7\",nonce_str=\"N\",signature=\"X\""
        );
        assert_eq!(parse_authorization(&php).unwrap().serial_no, "S");
        for (bad, word) in [
            ("WECHATPAY2-SHA256-RSA mchid=\"1\"", "scheme"),
            (&format!("{SCHEME} mchid='1'") as &str, "double quotes"),
            (&format!("{SCHEME} mchid=\"1\",mchid=\"2\""), "twice"),
            (&format!("{SCHEME} mchid=\"1\""), "missing"),
            (&format!("{SCHEME}  mchid=\"1\""), "not name"),
        ] {
            let err = parse_authorization(bad).unwrap_err();
            assert!(err.contains(word), "{bad}: {err}");
        }
    }

    #[test]
    fn answers_are_checked_header_timestamp_serial_and_signature() {
        let now = Utc::now();
        let body = br#"{"trade_state":"SUCCESS"}"#;
        let h = signature_headers(key(), PUB_ID, body, now).unwrap();
        assert_eq!(verify(&keys(), signed(&h), body, now), Ok(()));
        // An empty body (a 204) is signed over an empty last line.
        let empty = signature_headers(key(), PUB_ID, b"", now).unwrap();
        assert_eq!(verify(&keys(), signed(&empty), b"", now), Ok(()));
        // Tampered body, another serial, missing header, stale, probe.
        assert!(matches!(
            verify(&keys(), signed(&h), b"{}", now),
            Err(VerifyError::BadSignature(_))
        ));
        let mut other = h.clone();
        other[3].1 = "PUB_KEY_ID_0000".into();
        assert!(matches!(
            verify(&keys(), signed(&other), body, now),
            Err(VerifyError::UnknownSerial(_))
        ));
        assert_eq!(
            verify(&keys(), signed(&h[1..]), body, now),
            Err(VerifyError::MissingHeader(HEADER_TIMESTAMP))
        );
        for skew in [300, -300, 10_000] {
            assert_eq!(
                verify(
                    &keys(),
                    signed(&h),
                    body,
                    now + chrono::Duration::seconds(skew)
                ),
                Err(VerifyError::Stale { skew: skew.abs() })
            );
        }
        assert_eq!(
            verify(
                &keys(),
                signed(&h),
                body,
                now + chrono::Duration::seconds(299)
            ),
            Ok(())
        );
        let mut probe = h.clone();
        probe[2].1 = probe_signature();
        assert_eq!(
            verify(&keys(), signed(&probe), body, now),
            Err(VerifyError::Probe)
        );
    }

    fn cert(serial: &str, not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> PlatformCert {
        PlatformCert {
            serial: serial.into(),
            key: key().public_key().clone(),
            not_before,
            not_after,
        }
    }

    #[test]
    fn a_platform_certificate_is_found_by_its_serial_in_any_spelling() {
        let now = Utc::now();
        let year = chrono::Duration::days(365);
        let keys = WechatKeys {
            public_key: None,
            platform: vec![
                cert("0ABCDEF12", now - year, now + year),
                cert("0ABCDEF11", now - year, now + year / 2),
            ],
        };
        assert!(keys.find("abcdef12", now).is_ok());
        assert!(keys.find("000ABCDEF12", now).is_ok());
        assert!(matches!(
            keys.find("ABCDEF13", now),
            Err(VerifyError::UnknownSerial(_))
        ));
        // The one valid the longest.
        assert_eq!(keys.accept_serial(), Some("0ABCDEF12"));
    }

    #[test]
    fn the_signature_type_is_sent_and_any_other_scheme_is_refused() {
        let now = Utc::now();
        let body = b"{}";
        let h = signature_headers(key(), PUB_ID, body, now).unwrap();
        assert!(h.contains(&(HEADER_SIGNATURE_TYPE, SCHEME.to_owned())));
        assert_eq!(verify(&keys(), signed(&h), body, now), Ok(()));
        // Absent: the default scheme, as the Go and Java SDKs read it.
        let without: Vec<_> = h
            .iter()
            .filter(|(k, _)| *k != HEADER_SIGNATURE_TYPE)
            .cloned()
            .collect();
        assert_eq!(verify(&keys(), signed(&without), body, now), Ok(()));
        let mut sm2 = h.clone();
        for (k, v) in &mut sm2 {
            if *k == HEADER_SIGNATURE_TYPE {
                *v = "WECHATPAY2-SM2-WITH-SM3".into();
            }
        }
        let err = verify(&keys(), signed(&sm2), body, now).unwrap_err();
        assert_eq!(
            err,
            VerifyError::SignatureType("WECHATPAY2-SM2-WITH-SM3".into())
        );
        assert!(err.to_string().contains(SCHEME), "{err}");
    }

    #[test]
    fn a_platform_certificate_verifies_only_within_its_validity() {
        const SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let body = br#"{"trade_state":"SUCCESS"}"#;
        let h = signature_headers(key(), SERIAL, body, now).unwrap();
        let with = |c: PlatformCert| WechatKeys {
            public_key: None,
            platform: vec![c],
        };
        // Valid, also at both bounds.
        for (from, to) in [(now - day, now + day), (now, now + day), (now - day, now)] {
            assert_eq!(
                verify(&with(cert(SERIAL, from, to)), signed(&h), body, now),
                Ok(())
            );
        }
        // Expired while the process ran: it stops verifying, and says why.
        let expired = verify(
            &with(cert(SERIAL, now - day * 2, now - day)),
            signed(&h),
            body,
            now,
        )
        .unwrap_err();
        assert!(
            matches!(expired, VerifyError::CertificateExpired { .. }),
            "{expired:?}"
        );
        let text = expired.to_string();
        assert!(text.contains("expired") && text.contains(SERIAL), "{text}");
        assert!(
            text.contains(&(now - day).format("%Y-%m-%d %H:%M:%S").to_string()),
            "{text}"
        );
        let early = verify(
            &with(cert(SERIAL, now + day, now + day * 2)),
            signed(&h),
            body,
            now,
        )
        .unwrap_err();
        assert!(
            matches!(early, VerifyError::CertificateNotYetValid { .. }),
            "{early:?}"
        );
        assert!(early.to_string().contains("not valid before"), "{early}");
    }
}
