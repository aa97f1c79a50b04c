//! WeChat Pay's configuration: its variables (`WECHAT_*`), read and checked when the
//! gateways are built, and the connector they make (the client behind its rate limit, the
//! notification verifier, the bill source).
//!
//! WeChat Pay's answers are verified with the **WeChat Pay public key**
//! (`WECHAT_PUBLIC_KEY` with its id `WECHAT_PUBLIC_KEY_ID`, `PUB_KEY_ID_` and 32 digits:
//! new merchants) or with **platform certificates** (`WECHAT_PLATFORM_CERTS`, files:
//! older merchants), or both during a migration: `Wechatpay-Serial` picks the key.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use super::aead::ApiV3Key;
use super::client::{WechatClient, WechatConfig};
use super::notify::WechatNotify;
use super::sign::{PlatformCert, WechatKeys};
use super::vars::MCH_ID;
use order_closer_core::config::{ConfigError, Vars, key_material};
use order_closer_gateway::registry::{CommonNames, CommonSettings, Connector, RegistryError};
use order_closer_gateway::rsa::{RsaPrivateKey, RsaPublicKey};

/// The default merchant id (the documentation's example).
pub const DEFAULT_MCH_ID: &str = "1900000109";

/// Its variables every gateway has.
pub const COMMON: CommonNames = CommonNames {
    gateway_url: "WECHAT_GATEWAY_URL",
    timeout: "WECHAT_TIMEOUT",
    rate_limit: "WECHAT_RATE_LIMIT",
    retry_steps: "WECHAT_RETRY_STEPS",
};

/// WeChat Pay as configured.
#[derive(Debug, Clone)]
pub struct WechatSettings {
    /// The client's configuration.
    pub client: WechatConfig,
    /// The APIv3 key, which opens the notifications (`WECHAT_API_V3_KEY`).
    pub api_v3_key: ApiV3Key,
    /// Its URL, timeout, rate limit and retry steps.
    pub common: CommonSettings,
}

impl WechatSettings {
    /// Reads WeChat Pay's variables; `None` when it is not configured here (no merchant
    /// private key). Every variable that is set is checked either way.
    pub fn from_vars(vars: &Vars) -> Result<Option<Self>, ConfigError> {
        let common = CommonSettings::read(vars, &COMMON)?;
        let mchid = vars.string(MCH_ID, DEFAULT_MCH_ID);
        if mchid.is_empty() || !mchid.chars().all(|c| c.is_ascii_digit()) {
            return Err(ConfigError::invalid(MCH_ID, &mchid, "expected digits"));
        }
        let Some(private) = vars.secret("WECHAT_MCH_PRIVATE_KEY", "WECHAT_MCH_PRIVATE_KEY_FILE")?
        else {
            return Ok(None);
        };
        let private_text = key_material(
            "WECHAT_MCH_PRIVATE_KEY",
            Some(private.expose_secret()),
            " (the merchant's API certificate private key: PEM, bare base64, or a file path)",
        )?;
        let merchant_key = RsaPrivateKey::parse(&private_text)
            .map_err(|e| ConfigError::invalid("WECHAT_MCH_PRIVATE_KEY", "<key>", e))?;
        let merchant_serial = vars.get("WECHAT_MCH_SERIAL").ok_or(ConfigError::Missing {
            var: "WECHAT_MCH_SERIAL",
            hint: " (the serial of the merchant's API certificate)",
        })?;
        let keys = wechat_keys(vars)?;
        let api_v3_key = match vars.secret("WECHAT_API_V3_KEY", "WECHAT_API_V3_KEY_FILE")? {
            Some(key) => ApiV3Key::new(key.expose_secret())
                .map_err(|e| ConfigError::invalid("WECHAT_API_V3_KEY", "<key>", e))?,
            None => {
                return Err(ConfigError::Missing {
                    var: "WECHAT_API_V3_KEY",
                    hint: " (the 32-character APIv3 key: it opens the payment notifications)",
                });
            }
        };
        Ok(Some(Self {
            client: WechatConfig {
                gateway_url: common.gateway_url.clone(),
                mchid,
                merchant_serial: merchant_serial.trim().to_owned(),
                merchant_key: Arc::new(merchant_key),
                keys: Arc::new(keys),
                timeout: common.timeout,
            },
            api_v3_key,
            common,
        }))
    }

    /// The connector: the client behind the request quota of the merchant (WeChat Pay
    /// limits request frequency per merchant id, `mchid`), the notification verifier,
    /// the client again as the bill source.
    pub fn connector(self) -> Result<Connector, RegistryError> {
        let mchid = self.client.mchid.clone();
        let verifier = WechatNotify::new(
            mchid.clone(),
            Arc::clone(&self.client.keys),
            self.api_v3_key,
        );
        let client =
            WechatClient::new(self.client).map_err(|e| RegistryError::client(super::CHANNEL, e))?;
        Ok(self.common.connector(client, Arc::new(verifier), &mchid))
    }
}

/// The WeChat Pay keys answers are checked with: the public key and its id, the
/// platform certificates; at least one.
fn wechat_keys(vars: &Vars) -> Result<WechatKeys, ConfigError> {
    let mut keys = WechatKeys::default();
    match (
        vars.get("WECHAT_PUBLIC_KEY"),
        vars.get("WECHAT_PUBLIC_KEY_ID"),
    ) {
        (Some(key), Some(id)) => {
            let id = id.trim().to_owned();
            let digits = id.strip_prefix("PUB_KEY_ID_").unwrap_or("");
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(ConfigError::invalid(
                    "WECHAT_PUBLIC_KEY_ID",
                    &id,
                    "expected PUB_KEY_ID_ followed by digits",
                ));
            }
            let text = key_material("WECHAT_PUBLIC_KEY", Some(&key), "")?;
            let key = RsaPublicKey::parse(&text)
                .map_err(|e| ConfigError::invalid("WECHAT_PUBLIC_KEY", "<key>", e))?;
            keys.public_key = Some((id, key));
        }
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                var: "WECHAT_PUBLIC_KEY_ID",
                hint: " (the WeChat Pay public key's id, PUB_KEY_ID_...)",
            });
        }
        (None, Some(id)) => {
            return Err(ConfigError::invalid(
                "WECHAT_PUBLIC_KEY_ID",
                &id,
                "WECHAT_PUBLIC_KEY is not set",
            ));
        }
        (None, None) => {}
    }
    if let Some(paths) = vars.get("WECHAT_PLATFORM_CERTS") {
        for path in paths.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // An expired or not yet valid certificate stops the start, naming the file
            // and its dates (one that expires later stops verifying then).
            let refused = |why: String| ConfigError::invalid("WECHAT_PLATFORM_CERTS", path, why);
            let cert = platform_certificate(Path::new(path)).map_err(refused)?;
            cert.valid_at(Utc::now())
                .map_err(|e| refused(e.to_string()))?;
            keys.platform.push(cert);
        }
    }
    if keys.is_empty() {
        return Err(ConfigError::Missing {
            var: "WECHAT_PUBLIC_KEY",
            hint: " (with WECHAT_PUBLIC_KEY_ID), or WECHAT_PLATFORM_CERTS: the key WeChat Pay signs its answers with",
        });
    }
    Ok(keys)
}

/// A platform certificate: its serial (upper-case hex), public key and validity.
pub fn platform_certificate(path: &Path) -> Result<PlatformCert, String> {
    let text =
        order_closer_core::files::read_capped_text(path, order_closer_core::files::MAX_KEY_BYTES)
            .map_err(|e| format!("cannot read the certificate: {e}"))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let serial: String = cert
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02X}"))
        .collect();
    let key = RsaPublicKey::from_der(cert.public_key().raw).map_err(|e| e.to_string())?;
    let instant = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| format!("validity date {t} is out of range"))
    };
    Ok(PlatformCert {
        serial,
        key,
        not_before: instant(cert.validity().not_before)?,
        not_after: instant(cert.validity().not_after)?,
    })
}

/// [`Plugin::connect`](order_closer_gateway::Plugin::connect) for WeChat Pay.
pub fn connect(vars: &Vars) -> Result<Option<Connector>, RegistryError> {
    WechatSettings::from_vars(vars)?
        .map(WechatSettings::connector)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::OnceLock;

    fn pem() -> &'static (String, String) {
        static KEYS: OnceLock<(String, String)> = OnceLock::new();
        KEYS.get_or_init(|| {
            let key = RsaPrivateKey::generate().unwrap();
            (key.to_pkcs8_pem(), key.public_key().to_spki_pem())
        })
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Option<WechatSettings>, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WechatSettings::from_vars(&Vars::from_map(map))
    }

    fn complete() -> Vec<(&'static str, String)> {
        vec![
            ("WECHAT_MCH_PRIVATE_KEY", pem().0.clone()),
            (
                "WECHAT_MCH_SERIAL",
                "5157F09EFDC096DE15EBE81A47057A7232F1B8E1".into(),
            ),
            ("WECHAT_PUBLIC_KEY", pem().1.clone()),
            (
                "WECHAT_PUBLIC_KEY_ID",
                "PUB_KEY_ID_0114232134912410000000000000".into(),
            ),
            (
                "WECHAT_API_V3_KEY",
                "0123456789abcdefghijklmnopqrstuv".into(),
            ),
        ]
    }

    fn read_with(
        change: &[(&'static str, &'static str)],
        drop: &[&str],
    ) -> Result<Option<WechatSettings>, ConfigError> {
        let mut all = complete();
        all.retain(|(k, _)| !drop.contains(k) && !change.iter().any(|(c, _)| c == k));
        all.extend(change.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        read(&pairs)
    }

    #[test]
    fn without_a_merchant_key_wechat_is_not_configured() {
        assert!(read(&[]).unwrap().is_none());
        let s = read_with(&[], &[]).unwrap().unwrap();
        assert_eq!(s.client.mchid, DEFAULT_MCH_ID);
        assert!(s.client.keys.public_key.is_some());
    }

    #[test]
    fn missing_and_bad_values_name_their_variable() {
        for (change, drop, var) in [
            (vec![], vec!["WECHAT_MCH_SERIAL"], "WECHAT_MCH_SERIAL"),
            (vec![], vec!["WECHAT_API_V3_KEY"], "WECHAT_API_V3_KEY"),
            (
                vec![("WECHAT_API_V3_KEY", "short")],
                vec![],
                "WECHAT_API_V3_KEY",
            ),
            (
                vec![],
                vec!["WECHAT_PUBLIC_KEY", "WECHAT_PUBLIC_KEY_ID"],
                "WECHAT_PUBLIC_KEY",
            ),
            (vec![], vec!["WECHAT_PUBLIC_KEY_ID"], "WECHAT_PUBLIC_KEY_ID"),
            (
                vec![("WECHAT_PUBLIC_KEY_ID", "KEY_1")],
                vec![],
                "WECHAT_PUBLIC_KEY_ID",
            ),
            (vec![("WECHAT_MCH_ID", "abc")], vec![], "WECHAT_MCH_ID"),
            (
                vec![("WECHAT_MCH_PRIVATE_KEY", "bm90IGEga2V5")],
                vec![],
                "WECHAT_MCH_PRIVATE_KEY",
            ),
            (
                vec![("WECHAT_PLATFORM_CERTS", "/no/such/cert.pem")],
                vec![],
                "WECHAT_PLATFORM_CERTS",
            ),
            (
                vec![("WECHAT_PLATFORM_CERTS", "/etc/hostname")],
                vec![],
                "WECHAT_PLATFORM_CERTS",
            ),
            (vec![("WECHAT_TIMEOUT", "ten")], vec![], "WECHAT_TIMEOUT"),
            (
                vec![("WECHAT_RATE_LIMIT", "0")],
                vec![],
                "WECHAT_RATE_LIMIT",
            ),
            (
                vec![("WECHAT_GATEWAY_URL", "ftp://x")],
                vec![],
                "WECHAT_GATEWAY_URL",
            ),
            (
                vec![("WECHAT_RETRY_STEPS", "soon")],
                vec![],
                "WECHAT_RETRY_STEPS",
            ),
        ] {
            let err = read_with(&change, &drop).unwrap_err().to_string();
            assert!(err.contains(var), "{var}: {err}");
            assert!(!err.contains("0123456789abcdefghij"), "{err}");
            assert!(!err.contains("PRIVATE KEY-----"), "{err}");
        }
    }

    /// A platform certificate file for the test key, valid `from` to `to` (dates), of
    /// serial `5157F09E`.
    fn certificate_file(name: &str, from: chrono::NaiveDate, to: chrono::NaiveDate) -> String {
        use chrono::Datelike as _;
        let day =
            |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
        let key =
            rcgen::KeyPair::from_pem_and_sign_algo(&pem().0, &rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.not_before = day(from);
        params.not_after = day(to);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x51, 0x57, 0xF0, 0x9E]));
        let cert = params.self_signed(&key).unwrap();
        let dir = std::env::temp_dir().join(format!("oc-wechat-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, cert.pem()).unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_platform_certificate_outside_its_validity_stops_the_start_naming_file_and_dates() {
        let date = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let today = Utc::now().date_naive();
        let current = certificate_file(
            "current.pem",
            today - chrono::Days::new(1),
            today + chrono::Days::new(365),
        );
        let expired = certificate_file("expired.pem", date(2020, 1, 1), date(2021, 1, 1));
        let early = certificate_file("early.pem", date(2099, 1, 1), date(2100, 1, 1));

        let with_certs = |paths: &str| {
            let mut all = complete();
            all.retain(|(k, _)| !k.starts_with("WECHAT_PUBLIC_KEY"));
            all.push(("WECHAT_PLATFORM_CERTS", paths.to_owned()));
            let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
            read(&pairs)
        };
        let s = with_certs(&current).unwrap().unwrap();
        assert_eq!(s.client.keys.platform.len(), 1);
        assert_eq!(s.client.keys.platform[0].serial, "5157F09E");
        assert_eq!(s.client.keys.accept_serial(), Some("5157F09E"));

        let err = with_certs(&format!("{current},{expired}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("WECHAT_PLATFORM_CERTS"), "{err}");
        assert!(err.contains(&expired), "names the file: {err}");
        assert!(err.contains("expired at 2021-01-01 00:00:00 UTC"), "{err}");
        assert!(err.contains("valid from 2020-01-01 00:00:00 UTC"), "{err}");

        let err = with_certs(&early).unwrap_err().to_string();
        assert!(err.contains(&early), "names the file: {err}");
        assert!(
            err.contains("not valid before 2099-01-01 00:00:00 UTC"),
            "{err}"
        );
        assert!(err.contains("2100-01-01 00:00:00 UTC"), "{err}");
        let _ = std::fs::remove_dir_all(Path::new(&current).parent().unwrap());
    }
}
