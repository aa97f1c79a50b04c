//! Alipay, classic OpenAPI (the reference gateway): its order rules (always built), and
//! behind the `worker` feature its keys, request signing, answer extraction and
//! classification, notification verifier, configuration and the HTTP client
//! implementing [`Gateway`](crate::gateway::Gateway).

#[cfg(feature = "worker")]
pub mod bill;
#[cfg(feature = "worker")]
pub mod client;
#[cfg(feature = "worker")]
pub mod config;
#[cfg(feature = "worker")]
pub mod notify;
#[cfg(feature = "worker")]
pub mod response;
#[cfg(feature = "worker")]
pub mod sign;
pub mod vars;

use super::Plugin;
use super::rules::OrderRules;

/// The channel name of Alipay orders (`orders.channel`, `POST /notify/alipay`).
pub const CHANNEL: &str = "alipay";

/// Alipay's orders: `out_trade_no` up to 64 characters of letters, digits and `_`, `.`,
/// `-`; CNY; at most 100,000,000.00 CNY in one payment.
pub const RULES: OrderRules = OrderRules {
    channel: CHANNEL,
    currencies: &["CNY"],
    min_out_trade_no: 1,
    max_out_trade_no: 64,
    out_trade_no_extra_chars: "_.-",
    max_amount_minor: 10_000_000_000,
};

/// Alipay in the registry ([`crate::gateway::ALL`]).
pub const PLUGIN: Plugin = Plugin {
    rules: RULES,
    #[cfg(feature = "worker")]
    connect: config::connect,
    #[cfg(feature = "worker")]
    env_prefix: "ALIPAY",
    #[cfg(feature = "worker")]
    common: config::COMMON,
    #[cfg(feature = "worker")]
    variables: vars::VARIABLES,
    #[cfg(feature = "worker")]
    configured_by: &["ALIPAY_APP_PRIVATE_KEY", "ALIPAY_PUBLIC_KEY"],
};

#[cfg(feature = "worker")]
pub use client::{
    AlipayClient, AlipayConfig, ConfigError, DEFAULT_TIMEOUT, MAX_BODY_BYTES, VerifiedAnswer,
};
#[cfg(feature = "worker")]
pub use config::AlipaySettings;
#[cfg(feature = "worker")]
pub use notify::AlipayNotify;
#[cfg(feature = "worker")]
pub use response::{
    SplitResponse, classify_close, classify_query, classify_refund, extract_sign,
    extract_signed_object, format_china_time, parse_china_time, split_response,
};
#[cfg(feature = "worker")]
pub use sign::{
    Param, notify_signing_content, sign_params, signing_content, verify_notify_params,
    verify_params,
};
