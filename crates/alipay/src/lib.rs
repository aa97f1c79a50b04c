//! Alipay, classic OpenAPI (the reference gateway): its order rules (always built), and
//! behind the `client` feature the rest, one file a job:
//! - `request`: the methods called, the signed form, the endpoint;
//! - `transport`: sending a call and reading its answer back, or downloading a bill;
//! - `envelope`: cutting the signed answer out of a body, and checking its signature;
//! - `answer`: the answers as typed structs, with their vocabularies;
//! - `classify`: what an answer means for an order;
//! - `client`: the configuration and the [`Gateway`](order_closer_gateway::Gateway)
//!   implemented with the above;
//! - `sign`, `notify`, `bill`, `config`: the signing content, the notification verifier,
//!   the daily bill and the settings.

#[cfg(feature = "client")]
pub mod answer;
#[cfg(feature = "client")]
pub mod bill;
#[cfg(feature = "client")]
pub mod classify;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod config;
#[cfg(feature = "client")]
pub mod envelope;
#[cfg(feature = "client")]
pub mod notify;
#[cfg(feature = "client")]
pub mod request;
#[cfg(feature = "client")]
pub mod sign;
#[cfg(feature = "client")]
mod transport;
pub mod vars;

use order_closer_core::rules::OrderRules;
#[cfg(feature = "client")]
use order_closer_gateway::Plugin;

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

/// Alipay in the binary's list of gateways (its plugin).
#[cfg(feature = "client")]
pub const PLUGIN: Plugin = Plugin {
    rules: RULES,
    connect: config::connect,
    env_prefix: "ALIPAY",
    common: config::COMMON,
    variables: vars::VARIABLES,
    configured_by: &["ALIPAY_APP_PRIVATE_KEY", "ALIPAY_PUBLIC_KEY"],
};

#[cfg(feature = "client")]
pub use answer::{
    Answer, BillUrlResponse, Code, Status, SubCode, TradeCloseResponse, TradeQueryResponse,
    TradeRefundResponse, TradeStatus, VerifiedAnswer,
};
#[cfg(feature = "client")]
pub use classify::{
    classify_bill_url, classify_close, classify_query, classify_refund, common_failure,
};
#[cfg(feature = "client")]
pub use client::{AlipayClient, AlipayConfig, ConfigError, DEFAULT_TIMEOUT, MAX_BODY_BYTES};
#[cfg(feature = "client")]
pub use config::AlipaySettings;
#[cfg(feature = "client")]
pub use envelope::{Envelope, extract_sign, extract_signed_object};
#[cfg(feature = "client")]
pub use notify::AlipayNotify;
#[cfg(feature = "client")]
pub use order_closer_core::time::{format_china_time, parse_china_time};
#[cfg(feature = "client")]
pub use request::{ERROR_RESPONSE, Method};
#[cfg(feature = "client")]
pub use sign::{
    Param, notify_signing_content, sign_params, signing_content, verify_notify_params,
    verify_params,
};
