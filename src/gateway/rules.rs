//! Every gateway's order rules, as the shop's library is handed them: [`CHANNELS`], from
//! the one gateway list ([`super::RULES`]). The rules type is the library's
//! ([`order_closer_core::rules`]); a gateway declares its own in its crate.

pub use order_closer_core::rules::{Channels, OrderRules};

/// The channels of every gateway order-closer speaks: what the binary hands the library.
pub const CHANNELS: Channels = Channels::new(super::RULES);

/// The rules of `channel`, if a gateway of that name exists.
pub fn for_channel(channel: &str) -> Option<&'static OrderRules> {
    CHANNELS.for_channel(channel)
}

/// Every channel name, in the registry's order.
pub fn channels() -> impl Iterator<Item = &'static str> {
    CHANNELS.names()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_has_rules_within_the_message_contract() {
        #[cfg(feature = "worker")]
        for (plugin, channel) in super::super::ALL.iter().zip(channels()) {
            assert_eq!(plugin.rules.channel, channel);
        }
        for channel in channels() {
            let rules = for_channel(channel).unwrap();
            assert!(rules.max_out_trade_no <= crate::message::MAX_OUT_TRADE_NO);
            assert!(rules.min_out_trade_no >= 1);
            assert!(!rules.currencies.is_empty());
        }
        assert!(for_channel("nosuch").is_none());
    }
}
