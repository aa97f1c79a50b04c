//! The gateways this process speaks, by channel, built from configuration: each
//! [`Plugin`](crate::Plugin) of the list it is handed reads its own variables and, when it is
//! configured, gives its [`Connector`]: the gateway client behind its merchant account's
//! request quota, its notification verifier, its bill source and its own retry steps. The
//! worker, reconcile, the notify endpoint, the demo, the benchmark and the tests all take
//! their gateways from [`Gateways::from_settings`], and the composition root then says
//! how the quotas are shared and at which priority ([`Gateways::with_quotas`]).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::notice::NotifyVerifier;
use super::quota::{QuotaPlan, Rate};
use super::rate_limit::RateLimited;
use super::{BillSource, Gateway};
use order_closer_core::config::{ConfigError, DEFAULT_GATEWAY_URL, Settings, Vars};
use order_closer_core::retry::RetryPolicy;

/// Why the gateways could not be built.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// A configuration value is missing or wrong (the error names the variable).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A gateway client could not be built from its configuration.
    #[error("cannot build the {channel} client: {message}")]
    Client {
        /// The channel.
        channel: &'static str,
        /// Why.
        message: String,
    },
    /// No gateway is configured at all: nothing could be decided.
    #[error("no payment gateway is configured; set {hints}")]
    NoneConfigured {
        /// What would configure each one.
        hints: String,
    },
    /// Some of a gateway's variables are set, but not what switches it on: left alone,
    /// the gateway would be silently off (its notifications answered 404, its orders
    /// parked as `unknown_channel`).
    #[error(
        "the {channel} gateway is half-configured: {set} set, but not {missing}; set \
         {missing} to serve {channel}, or unset the others to leave it off"
    )]
    HalfConfigured {
        /// The channel.
        channel: &'static str,
        /// Its variables that are set.
        set: String,
        /// What would switch it on.
        missing: String,
    },
}

impl RegistryError {
    /// A client that could not be built.
    pub fn client(channel: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Client {
            channel,
            message: e.to_string(),
        }
    }
}

/// One channel's gateway, its notification verifier, its bill source and its retry
/// steps (when it needs others than `ORDER_CLOSER_RETRY_STEPS`).
#[derive(Clone)]
pub struct Connector {
    gateway: Arc<dyn Gateway>,
    verifier: Option<Arc<dyn NotifyVerifier>>,
    bills: Option<Arc<dyn BillSource>>,
    retry: Option<RetryPolicy>,
    metered: Option<Metered>,
}

/// A gateway client with a request quota: the client itself, the merchant account the
/// quota belongs to, and its rate.
#[derive(Clone)]
struct Metered {
    client: Arc<dyn Gateway>,
    account: String,
    rate: Rate,
}

impl Connector {
    /// A gateway alone: no notifications, no bill, the common retry steps, no quota.
    pub fn new(gateway: Arc<dyn Gateway>) -> Self {
        Self {
            gateway,
            verifier: None,
            bills: None,
            retry: None,
            metered: None,
        }
    }

    /// `client` behind the request quota of the merchant `account` (what identifies it
    /// at its gateway, as the gateway's crate says: Alipay's app id, WeChat Pay's
    /// merchant id) at `rate`: this process's own until
    /// [`Gateways::with_quotas`] says how it is shared.
    pub fn metered(client: Arc<dyn Gateway>, account: impl Into<String>, rate: Rate) -> Self {
        let gateway = Arc::new(RateLimited::with_burst(
            Arc::clone(&client),
            rate.per_second,
            rate.burst,
        ));
        Self {
            metered: Some(Metered {
                client,
                account: account.into(),
                rate,
            }),
            ..Self::new(gateway)
        }
    }

    /// With the verifier of the gateway's payment notifications.
    pub fn with_verifier(mut self, verifier: Arc<dyn NotifyVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// With the source of the gateway's daily bill.
    pub fn with_bills(mut self, bills: Arc<dyn BillSource>) -> Self {
        self.bills = Some(bills);
        self
    }

    /// With retry steps of its own.
    pub fn with_retry(mut self, retry: Option<RetryPolicy>) -> Self {
        self.retry = retry;
        self
    }
}

/// The names of the variables every gateway has, under its own prefix.
#[derive(Debug, Clone, Copy)]
pub struct CommonNames {
    /// Its base URL (`<P>_GATEWAY_URL`).
    pub gateway_url: &'static str,
    /// The request timeout (`<P>_TIMEOUT`).
    pub timeout: &'static str,
    /// Most requests per second to the merchant account, all processes together
    /// (`<P>_RATE_LIMIT`).
    pub rate_limit: &'static str,
    /// Its own retry steps (`<P>_RETRY_STEPS`).
    pub retry_steps: &'static str,
}

impl CommonNames {
    /// All four names.
    pub fn all(&self) -> [&'static str; 4] {
        [
            self.gateway_url,
            self.timeout,
            self.rate_limit,
            self.retry_steps,
        ]
    }
}

/// What every gateway's configuration has, read from its [`CommonNames`].
#[derive(Debug, Clone)]
pub struct CommonSettings {
    /// Its base URL.
    pub gateway_url: String,
    /// The request timeout: 10 s unless set, from 100 ms to 300 s.
    pub timeout: Duration,
    /// Most requests per second: 200 unless set, from 1 to 100,000.
    pub rate_limit: NonZeroU32,
    /// Its own retry steps; the common ones when unset.
    pub retry: Option<RetryPolicy>,
}

impl CommonSettings {
    /// Reads and checks the common variables (each error names its variable).
    pub fn read(vars: &Vars, names: &CommonNames) -> Result<Self, ConfigError> {
        let gateway_url = vars.http_url(names.gateway_url, DEFAULT_GATEWAY_URL)?;
        let timeout = vars.duration(
            names.timeout,
            Duration::from_secs(10),
            Duration::from_millis(100)..=Duration::from_secs(300),
        )?;
        let rate_limit = NonZeroU32::new(vars.number(names.rate_limit, 200, 1, 100_000)? as u32)
            .unwrap_or(NonZeroU32::MIN);
        let retry = vars.retry_steps(names.retry_steps)?;
        Ok(Self {
            gateway_url,
            timeout,
            rate_limit,
            retry,
        })
    }

    /// The connector of a gateway whose client also serves its bill: the client behind
    /// the request quota of the merchant `account` (what identifies the account at the
    /// gateway), the notification verifier, the client again as the bill source, the
    /// gateway's own retry steps.
    pub fn connector<C>(
        &self,
        client: C,
        verifier: Arc<dyn NotifyVerifier>,
        account: &str,
    ) -> Connector
    where
        C: Gateway + BillSource + 'static,
    {
        let client = Arc::new(client);
        let rate = Rate::new(
            self.rate_limit,
            RateLimited::<()>::default_burst(self.rate_limit),
        );
        Connector::metered(Arc::clone(&client) as Arc<dyn Gateway>, account, rate)
            .with_verifier(verifier)
            .with_bills(client)
            .with_retry(self.retry.clone())
    }
}

/// Refuses a gateway that is off although some of its own variables are set, naming its
/// signing key, the variable that switches it on (the first of
/// [`Plugin::configured_by`](crate::Plugin::configured_by)). Its common variables (URL,
/// timeout, rate limit, retry steps) do not count: they have defaults and say nothing
/// about a merchant, so a deployment may tune a gateway it does not use.
fn half_configured(plugin: &crate::Plugin, vars: &Vars) -> Result<(), RegistryError> {
    let common = plugin.common.all();
    let set: Vec<&str> = plugin
        .variables
        .iter()
        .copied()
        .filter(|v| !common.contains(v) && vars.get(v).is_some())
        .collect();
    let Some(key) = plugin.configured_by.first().filter(|_| !set.is_empty()) else {
        return Ok(());
    };
    let file = format!("{key}_FILE");
    let missing = if plugin.variables.contains(&file.as_str()) {
        format!("{key} (or {file})")
    } else {
        (*key).to_owned()
    };
    Err(RegistryError::HalfConfigured {
        channel: plugin.rules.channel,
        set: set.join(", "),
        missing,
    })
}

/// The gateways by channel name.
#[derive(Clone, Default)]
pub struct Gateways {
    by_channel: BTreeMap<String, Connector>,
}

impl Gateways {
    /// Every gateway of `plugins` (the binary's one list of gateways) the settings
    /// configure, logged; an error when none is, or when one is half-configured
    /// (`half_configured`).
    pub fn from_settings(
        settings: &Settings,
        plugins: &[&crate::Plugin],
    ) -> Result<Self, RegistryError> {
        let mut gateways = Self::default();
        let mut off = Vec::new();
        for plugin in plugins {
            match (plugin.connect)(&settings.vars)? {
                Some(connector) => {
                    gateways
                        .by_channel
                        .insert(plugin.rules.channel.to_owned(), connector);
                }
                None => {
                    half_configured(plugin, &settings.vars)?;
                    off.push(plugin.rules.channel);
                }
            }
        }
        tracing::info!(on = ?gateways.channels(), ?off, "payment gateways");
        if gateways.by_channel.is_empty() {
            let hints: Vec<String> = plugins
                .iter()
                .map(|p| format!("{} ({})", p.configured_by.join(" and "), p.rules.channel))
                .collect();
            return Err(RegistryError::NoneConfigured {
                hints: hints.join(", or "),
            });
        }
        Ok(gateways)
    }

    /// The same gateways, each behind its merchant account's quota as `plan` says
    /// (shared through the database or this process's own, at the process's priority).
    /// The quota's row is `<channel>:<account>`. Gateways without a quota (a test's
    /// scripted ones) are left as they are.
    pub fn with_quotas(mut self, plan: &QuotaPlan) -> Self {
        for (channel, connector) in &mut self.by_channel {
            let Some(metered) = &connector.metered else {
                continue;
            };
            let account = format!("{channel}:{}", metered.account);
            let quota = plan.quota(&account, metered.rate);
            connector.gateway = Arc::new(RateLimited::with_quota(
                Arc::clone(&metered.client),
                quota,
                metered.rate,
            ));
        }
        tracing::debug!(?plan, "gateway quotas");
        self
    }

    /// Serves a channel with `connector`, replacing whatever served it.
    pub fn with_connector(mut self, channel: &str, connector: Connector) -> Self {
        self.by_channel.insert(channel.to_owned(), connector);
        self
    }

    /// Serves a channel with `gateway` alone (no notifications, no bill), replacing
    /// whatever served it: the tests' scripted gateways.
    pub fn with(self, channel: &str, gateway: Arc<dyn Gateway>) -> Self {
        self.with_connector(channel, Connector::new(gateway))
    }

    /// Where a channel's daily bill comes from, if the gateway has one.
    pub fn bill_source(&self, channel: &str) -> Option<&Arc<dyn BillSource>> {
        self.by_channel.get(channel).and_then(|c| c.bills.as_ref())
    }

    /// The channels served, sorted.
    pub fn channels(&self) -> Vec<&str> {
        self.by_channel.keys().map(String::as_str).collect()
    }

    /// The gateway serving a channel.
    pub fn get(&self, channel: &str) -> Option<&Arc<dyn Gateway>> {
        self.by_channel.get(channel).map(|c| &c.gateway)
    }

    /// A channel's own retry steps, if it has them.
    pub fn retry(&self, channel: &str) -> Option<&RetryPolicy> {
        self.by_channel.get(channel).and_then(|c| c.retry.as_ref())
    }

    /// The notification verifiers, by channel.
    pub fn verifiers(&self) -> impl Iterator<Item = (&str, &Arc<dyn NotifyVerifier>)> {
        self.by_channel
            .iter()
            .filter_map(|(channel, c)| c.verifier.as_ref().map(|v| (channel.as_str(), v)))
    }
}
