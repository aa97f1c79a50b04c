//! The payment gateways, under the names the binary and its tests use: the one list of
//! them and their order rules (`order_closer_app::gateways`), each gateway's crate by
//! name (`gateway::alipay`, `gateway::wechat`), and with the `worker` feature the port
//! (`order-closer-gateway`: the `Gateway` trait, the registry, the shared helpers).

pub use order_closer_app::gateways::*;
#[cfg(feature = "worker")]
pub use order_closer_gateway::*;

/// Every gateway's order rules, as the shop's library is handed them
/// ([`rules::CHANNELS`]).
pub mod rules {
    pub use order_closer_app::gateways::{CHANNELS, Channels, OrderRules, channels, for_channel};
}
