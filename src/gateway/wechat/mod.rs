//! WeChat Pay API v3: its order rules (always built), and behind the `worker` feature its
//! signatures both ways (`sign.rs`), the notification resource's encryption (`aead.rs`),
//! answer classification (`response.rs`), the client (`client.rs`), the notification
//! verifier (`notify.rs`), the trade bill (`bill.rs`) and its configuration
//! (`config.rs`). Facts marked unverified in `../shared/GATEWAYS.md` are said where they
//! are assumed.

#[cfg(feature = "worker")]
pub mod aead;
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
    at.with_timezone(&crate::time::china())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// WeChat Pay in the registry ([`crate::gateway::ALL`]).
pub const PLUGIN: Plugin = Plugin {
    rules: RULES,
    #[cfg(feature = "worker")]
    connect: config::connect,
    #[cfg(feature = "worker")]
    env_prefix: "WECHAT",
    #[cfg(feature = "worker")]
    common: config::COMMON,
    #[cfg(feature = "worker")]
    variables: vars::VARIABLES,
    #[cfg(feature = "worker")]
    configured_by: &["WECHAT_MCH_PRIVATE_KEY", "WECHAT_PUBLIC_KEY"],
};
