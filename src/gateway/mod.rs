//! The payment gateways behind one boundary. Each gateway is a folder here (its client,
//! signatures, notification verifier, bill reader, order rules and configuration) and
//! one under `src/sim/` (its wire protocol in the simulator); the rest of order-closer
//! knows only the port ([`Gateway`], [`notice::NotifyVerifier`], [`BillSource`]) and the
//! registry ([`registry::Gateways`]), and names no gateway.
//!
//! Adding a gateway: its folder, its [`Plugin`] in [`ALL`], its simulator in
//! `crate::sim::GATEWAYS`, and its variables in docs/operations.md.

pub mod alipay;
pub mod rules;
pub mod wechat;

#[cfg(feature = "worker")]
pub mod http;
#[cfg(feature = "worker")]
pub mod json;
#[cfg(feature = "worker")]
pub mod notice;
#[cfg(feature = "worker")]
mod port;
#[cfg(feature = "worker")]
pub mod rate_limit;
#[cfg(feature = "worker")]
pub mod registry;
#[cfg(feature = "worker")]
pub mod rsa;

#[cfg(feature = "worker")]
pub use port::*;

/// One gateway, as the rest of order-closer knows it.
#[derive(Debug)]
pub struct Plugin {
    /// Its orders' rules (always built: the shop's library checks orders with them).
    pub rules: rules::OrderRules,
    /// Builds its connector from its own variables; `None` when the gateway is not
    /// configured in this process (its keys are not set).
    #[cfg(feature = "worker")]
    pub connect:
        fn(&crate::config::Vars) -> Result<Option<registry::Connector>, registry::RegistryError>,
    /// The prefix of its variables (`ALIPAY`: `ALIPAY_RATE_LIMIT`, ...).
    #[cfg(feature = "worker")]
    pub env_prefix: &'static str,
    /// The names of its variables every gateway has (URL, timeout, rate limit, retry
    /// steps).
    #[cfg(feature = "worker")]
    pub common: registry::CommonNames,
    /// Every environment variable it reads (documented in docs/operations.md).
    #[cfg(feature = "worker")]
    pub variables: &'static [&'static str],
    /// The variables a configuration of it needs at least (named when no gateway is);
    /// the first is the merchant's signing key, which switches it on: with other of its
    /// own variables set but not this one, it is half-configured and the process stops
    /// naming it ([`registry::Gateways::from_settings`]).
    #[cfg(feature = "worker")]
    pub configured_by: &'static [&'static str],
}

/// Every gateway order-closer speaks: the one list a new gateway joins.
pub const ALL: &[&Plugin] = &[&alipay::PLUGIN, &wechat::PLUGIN];
