//! # order-closer-gateway
//!
//! The payment-gateway port: everything the rest of order-closer knows of a gateway, and
//! everything a gateway's crate builds on. A gateway is a crate of its own
//! (`order-closer-alipay`, `order-closer-wechat`) that implements these traits and
//! declares itself as a [`Plugin`]; the engine depends on this crate and on no gateway's,
//! so the compiler keeps "nothing else names a gateway".
//!
//! - [`Gateway`] (`port.rs`): query, close and refund a trade by a neutral [`TradeRef`],
//!   the classified answers ([`TradeState`], [`CloseAnswer`], [`RefundAnswer`]) and errors
//!   ([`GatewayError`]), and where a daily bill comes from ([`BillSource`]);
//! - [`notice::NotifyVerifier`]: reading a payment notification into a
//!   [`notice::Notice`];
//! - [`bill`]: the gateway-neutral daily bill and the CSV reading both gateways' share;
//! - [`registry`]: the configured gateways by channel ([`registry::Gateways`]), built from
//!   a list of plugins;
//! - shared helpers: [`http`] (the HTTP client and its failures), [`rsa`], [`json`]
//!   (strict JSON), [`rate_limit`].

pub mod bill;
pub mod http;
pub mod json;
pub mod notice;
mod plugin;
mod port;
pub mod quota;
pub mod rate_limit;
pub mod registry;
pub mod rsa;

pub use plugin::Plugin;
pub use port::*;
