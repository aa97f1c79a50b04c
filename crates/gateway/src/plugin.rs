//! One gateway as the rest of order-closer knows it: its order rules, how it is configured
//! and connected, and which variables it reads. Each gateway's crate declares one; the
//! binary lists them (the one list of gateways).

use order_closer_core::config::Vars;
use order_closer_core::rules::OrderRules;

/// One gateway, as the rest of order-closer knows it.
#[derive(Debug)]
pub struct Plugin {
    /// Its orders' rules (always built: the shop's library checks orders with them).
    pub rules: OrderRules,
    /// Builds its connector from its own variables; `None` when the gateway is not
    /// configured in this process (its keys are not set).
    pub connect:
        fn(&Vars) -> Result<Option<crate::registry::Connector>, crate::registry::RegistryError>,
    /// The prefix of its variables (`ALIPAY`: `ALIPAY_RATE_LIMIT`, ...).
    pub env_prefix: &'static str,
    /// The names of its variables every gateway has (URL, timeout, rate limit, retry
    /// steps).
    pub common: crate::registry::CommonNames,
    /// Every environment variable it reads (documented in docs/operations.md).
    pub variables: &'static [&'static str],
    /// The variables a configuration of it needs at least (named when no gateway is);
    /// the first is the merchant's signing key, which switches it on: with other of its
    /// own variables set but not this one, it is half-configured and the process stops
    /// naming it ([`crate::registry::Gateways::from_settings`]).
    pub configured_by: &'static [&'static str],
}
