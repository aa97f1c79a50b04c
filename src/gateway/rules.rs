//! Every gateway's order rules, as the shop's library is handed them: [`CHANNELS`], built
//! from the one gateway list ([`super::ALL`]). The rules type is the library's
//! ([`order_closer_core::rules`]); a gateway declares its own in its folder.

pub use order_closer_core::rules::{Channels, OrderRules};

use super::ALL;

/// The rules of every gateway in [`ALL`], in its order.
const RULES: [&OrderRules; ALL.len()] = {
    let mut rules = [&ALL[0].rules; ALL.len()];
    let mut i = 1;
    while i < ALL.len() {
        rules[i] = &ALL[i].rules;
        i += 1;
    }
    rules
};

/// The channels of every gateway order-closer speaks: what the binary hands the library.
pub const CHANNELS: Channels = Channels::new(&RULES);

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
        assert_eq!(channels().count(), ALL.len());
        for (plugin, channel) in ALL.iter().zip(channels()) {
            assert_eq!(plugin.rules.channel, channel);
            let rules = for_channel(channel).unwrap();
            assert!(rules.max_out_trade_no <= crate::message::MAX_OUT_TRADE_NO);
            assert!(rules.min_out_trade_no >= 1);
            assert!(!rules.currencies.is_empty());
        }
        assert!(for_channel("nosuch").is_none());
    }
}
