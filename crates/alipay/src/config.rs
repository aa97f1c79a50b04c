//! Alipay's configuration: its variables (`ALIPAY_*`), read and checked when the gateways
//! are built, and the connector they make (the client behind its request quota, the
//! notification verifier, the bill source).

use std::sync::Arc;

use secrecy::ExposeSecret;

use super::client::{AlipayClient, AlipayConfig};
use super::notify::AlipayNotify;
use super::vars::SELLER_ID;
use order_closer_core::config::{ConfigError, Vars, key_material};
use order_closer_gateway::registry::{CommonNames, CommonSettings, Connector, RegistryError};
use order_closer_gateway::rsa::{RsaPrivateKey, RsaPublicKey};

/// The default (sandbox-looking) application id.
pub const DEFAULT_APP_ID: &str = "2021000000000000";

/// Its variables every gateway has.
pub const COMMON: CommonNames = CommonNames {
    gateway_url: "ALIPAY_GATEWAY_URL",
    timeout: "ALIPAY_TIMEOUT",
    rate_limit: "ALIPAY_RATE_LIMIT",
    retry_steps: "ALIPAY_RETRY_STEPS",
};

/// Alipay as configured.
#[derive(Debug, Clone)]
pub struct AlipaySettings {
    /// The client's configuration (URL, app id, keys, timeout).
    pub client: AlipayConfig,
    /// The merchant's Alipay partner id (`ALIPAY_SELLER_ID`); when set, a notification
    /// must name it, and a bill must name it to be read (the client holds it too).
    pub seller_id: Option<String>,
    /// Its URL, timeout, rate limit and retry steps.
    pub common: CommonSettings,
}

impl AlipaySettings {
    /// Reads Alipay's variables; `None` when Alipay is not configured here (no app
    /// private key: the registry refuses that when other `ALIPAY_*` are set). Every
    /// variable that is set is checked either way.
    pub fn from_vars(vars: &Vars) -> Result<Option<Self>, ConfigError> {
        let common = CommonSettings::read(vars, &COMMON)?;
        let app_id = vars.string("ALIPAY_APP_ID", DEFAULT_APP_ID);
        let seller_id = vars.get(SELLER_ID).map(|v| v.trim().to_owned());
        let Some(private) = vars.secret("ALIPAY_APP_PRIVATE_KEY", "ALIPAY_APP_PRIVATE_KEY_FILE")?
        else {
            return Ok(None);
        };
        let public = vars.get("ALIPAY_PUBLIC_KEY");
        let private_text = key_material(
            "ALIPAY_APP_PRIVATE_KEY",
            Some(private.expose_secret()),
            " (the merchant's RSA private key: PEM, bare base64, or a file path)",
        )?;
        let app_private_key = RsaPrivateKey::parse(&private_text)
            .map_err(|e| ConfigError::invalid("ALIPAY_APP_PRIVATE_KEY", "<key>", e))?;
        let public_text = key_material(
            "ALIPAY_PUBLIC_KEY",
            public.as_deref(),
            " (Alipay's RSA public key: PEM, bare base64, or a file path)",
        )?;
        let alipay_public_key = RsaPublicKey::parse(&public_text)
            .map_err(|e| ConfigError::invalid("ALIPAY_PUBLIC_KEY", "<key>", e))?;
        Ok(Some(Self {
            client: AlipayConfig {
                gateway_url: common.gateway_url.clone(),
                app_id,
                app_private_key: Arc::new(app_private_key),
                alipay_public_key: Arc::new(alipay_public_key),
                timeout: common.timeout,
                seller_id: seller_id.clone(),
            },
            seller_id,
            common,
        }))
    }

    /// The connector: the client behind the request quota of the merchant's app (Alipay
    /// limits the calls of each `app_id`), the notification verifier (checking
    /// `seller_id` when set), the client again as the bill source.
    pub fn connector(self) -> Result<Connector, RegistryError> {
        let app_id = self.client.app_id.clone();
        let verifier = AlipayNotify::new(
            app_id.clone(),
            self.seller_id,
            Arc::clone(&self.client.alipay_public_key),
        );
        let client =
            AlipayClient::new(self.client).map_err(|e| RegistryError::client(super::CHANNEL, e))?;
        Ok(self.common.connector(client, Arc::new(verifier), &app_id))
    }
}

/// [`Plugin::connect`](order_closer_gateway::Plugin::connect) for Alipay.
pub fn connect(vars: &Vars) -> Result<Option<Connector>, RegistryError> {
    AlipaySettings::from_vars(vars)?
        .map(AlipaySettings::connector)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> Result<Option<AlipaySettings>, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AlipaySettings::from_vars(&Vars::from_map(map))
    }

    #[test]
    fn without_keys_alipay_is_not_configured() {
        assert!(read(&[]).unwrap().is_none());
    }

    #[test]
    fn invalid_values_name_their_variable() {
        for (var, value) in [
            ("ALIPAY_TIMEOUT", "ten"),
            ("ALIPAY_TIMEOUT", "1000000y"),
            ("ALIPAY_TIMEOUT", "1ms"),
            ("ALIPAY_RATE_LIMIT", "0"),
            ("ALIPAY_GATEWAY_URL", "ftp://x"),
            ("ALIPAY_GATEWAY_URL", "http://"),
            ("ALIPAY_RETRY_STEPS", "1s,soon"),
        ] {
            let err = read(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var), "{var}={value}: {err}");
        }
    }

    #[test]
    fn missing_and_bad_keys_name_their_variable() {
        // Without the private key Alipay is off here; the registry refuses the public key
        // alone as half-configured.
        assert!(read(&[("ALIPAY_PUBLIC_KEY", "x")]).unwrap().is_none());

        let err = read(&[("ALIPAY_APP_PRIVATE_KEY", "bm90IGEga2V5")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ALIPAY_APP_PRIVATE_KEY"), "{err}");

        let err = read(&[("ALIPAY_APP_PRIVATE_KEY", "/nonexistent/key.pem")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read key file"), "{err}");

        // A device is refused at once, never read (it would never end).
        let err = read(&[("ALIPAY_APP_PRIVATE_KEY", "/dev/zero")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_secret_never_shows() {
        let err = read(&[("ALIPAY_APP_PRIVATE_KEY", "U2VDckV0MTIz")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("U2VDckV0MTIz"), "{err}");
    }
}
