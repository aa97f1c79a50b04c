//! The gateways this process speaks, by channel, built from configuration: the one place
//! that knows which gateways exist. Each entry is a gateway client behind its request-rate
//! limit and, where the gateway sends payment notifications, their verifier. The worker,
//! reconcile, the notify endpoint, the demo and the tests all take their gateways from
//! here; adding a gateway is a folder beside `alipay/` and one line in
//! [`Gateways::from_settings`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use thiserror::Error;

use super::alipay::{AlipayClient, AlipayConfig, AlipayNotify, ConfigError as AlipayError};
use super::notice::NotifyVerifier;
use super::rate_limit::RateLimited;
use super::{BillSource, Gateway};
use crate::config::{ConfigError, Settings};

/// The channel name of Alipay orders (`orders.channel`, `POST /notify/alipay`).
pub const ALIPAY: &str = "alipay";

/// Why the gateways could not be built.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// A configuration value is missing or wrong (the error names the variable).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A gateway client could not be built from its configuration.
    #[error("cannot build the {channel} client: {source}")]
    Client {
        /// The channel.
        channel: &'static str,
        /// Why.
        #[source]
        source: AlipayError,
    },
}

/// One channel's gateway, its notification verifier and its bill source.
#[derive(Clone)]
struct Connector {
    gateway: Arc<dyn Gateway>,
    verifier: Option<Arc<dyn NotifyVerifier>>,
    bills: Option<Arc<dyn BillSource>>,
}

/// The gateways by channel name (`alipay`, ...).
#[derive(Clone, Default)]
pub struct Gateways {
    by_channel: HashMap<String, Connector>,
}

impl Gateways {
    /// Every gateway the settings configure, each behind its rate limit, with its
    /// notification verifier.
    pub fn from_settings(settings: &Settings) -> Result<Self, RegistryError> {
        Self::alipay(
            settings.alipay_config()?,
            settings.alipay.seller_id.clone(),
            settings.alipay.rate_limit,
        )
    }

    /// Alipay from an explicit configuration (the demo and the tests, whose keys come from
    /// the simulator): its client behind `requests_per_second`, and its notification
    /// verifier (checking `seller_id` when given).
    pub fn alipay(
        config: AlipayConfig,
        seller_id: Option<String>,
        requests_per_second: NonZeroU32,
    ) -> Result<Self, RegistryError> {
        let verifier = AlipayNotify::new(
            config.app_id.clone(),
            seller_id,
            Arc::clone(&config.alipay_public_key),
        );
        let client = AlipayClient::new(config).map_err(|source| RegistryError::Client {
            channel: ALIPAY,
            source,
        })?;
        let client = Arc::new(client);
        let mut gateways = Self::default();
        gateways.by_channel.insert(
            ALIPAY.to_owned(),
            Connector {
                gateway: Arc::new(RateLimited::new(Arc::clone(&client), requests_per_second)),
                verifier: Some(Arc::new(verifier)),
                bills: Some(client),
            },
        );
        Ok(gateways)
    }

    /// Serves a channel with `gateway` alone (no notifications, no bill), replacing
    /// whatever served it: the tests' scripted gateways.
    pub fn with(mut self, channel: &str, gateway: Arc<dyn Gateway>) -> Self {
        self.by_channel.insert(
            channel.to_owned(),
            Connector {
                gateway,
                verifier: None,
                bills: None,
            },
        );
        self
    }

    /// Where a channel's daily bill comes from, if the gateway has one.
    pub fn bill_source(&self, channel: &str) -> Option<&Arc<dyn BillSource>> {
        self.by_channel.get(channel).and_then(|c| c.bills.as_ref())
    }

    /// The channels served, sorted.
    pub fn channels(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_channel.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The gateway serving a channel.
    pub fn get(&self, channel: &str) -> Option<&Arc<dyn Gateway>> {
        self.by_channel.get(channel).map(|c| &c.gateway)
    }

    /// The notification verifiers, by channel.
    pub fn verifiers(&self) -> impl Iterator<Item = (&str, &Arc<dyn NotifyVerifier>)> {
        self.by_channel
            .iter()
            .filter_map(|(channel, c)| c.verifier.as_ref().map(|v| (channel.as_str(), v)))
    }
}
