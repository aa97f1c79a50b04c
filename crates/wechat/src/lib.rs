//! WeChat Pay API v3: its order rules (always built), and behind the `client` feature (on by default) its
//! signatures both ways (`sign.rs`), the notification resource's encryption (`aead.rs`),
//! answer classification (`response.rs`), the client (`client.rs`), the notification
//! verifier (`notify.rs`), the trade bill (`bill.rs`) and its configuration
//! (`config.rs`). Facts marked unverified in `../shared/GATEWAYS.md` are said where they
//! are assumed.

#[cfg(feature = "client")]
pub mod aead;
#[cfg(feature = "client")]
pub mod bill;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod config;
#[cfg(feature = "client")]
pub mod notify;
#[cfg(feature = "client")]
pub mod response;
#[cfg(feature = "client")]
pub mod sign;
pub mod vars;

use order_closer_core::rules::OrderRules;
#[cfg(feature = "client")]
use order_closer_gateway::Plugin;

/// The channel name of WeChat Pay orders (`orders.channel`, `POST /notify/wechat`).
pub const CHANNEL: &str = "wechat";

/// WeChat Pay's orders: `out_trade_no` 6 to 32 characters of letters, digits and `_`,
/// `-`, `|`, `*`; CNY; `amount.total` is a 32-bit integer of fen (no smaller
/// single-payment limit is documented for API v3: assumed).
pub const RULES: OrderRules = OrderRules {
    channel: CHANNEL,
    currencies: &["CNY"],
    min_out_trade_no: 6,
    max_out_trade_no: 32,
    out_trade_no_extra_chars: "_-|*",
    max_amount_minor: i32::MAX as i64,
};

/// A time as WeChat Pay writes one (`success_time`, `create_time`): RFC 3339 in China
/// time, whole seconds (`2015-05-20T13:29:35+08:00`), never a fraction.
pub fn format_time(at: chrono::DateTime<chrono::Utc>) -> String {
    at.with_timezone(&order_closer_core::time::china())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// WeChat Pay in the binary's list of gateways (its plugin).
#[cfg(feature = "client")]
pub const PLUGIN: Plugin = Plugin {
    rules: RULES,
    connect: config::connect,
    env_prefix: "WECHAT",
    common: config::COMMON,
    variables: vars::VARIABLES,
    configured_by: &["WECHAT_MCH_PRIVATE_KEY", "WECHAT_PUBLIC_KEY"],
};
