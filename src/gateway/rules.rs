//! What a gateway accepts as an order: the merchant order number's format, the
//! currencies, the amount's limits. Each gateway declares its [`OrderRules`] in its own
//! folder; the library checks every new order against its channel's rules before
//! writing it, so an order the gateway would refuse is never scheduled.
//!
//! Always built: the shop's lean library needs the rules, not the gateway clients.

/// The rules of one gateway's orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRules {
    /// The channel name (`orders.channel`, `POST /notify/{channel}`).
    pub channel: &'static str,
    /// ISO 4217 codes the gateway takes.
    pub currencies: &'static [&'static str],
    /// Shortest merchant order number.
    pub min_out_trade_no: usize,
    /// Longest merchant order number (at most the message contract's 64).
    pub max_out_trade_no: usize,
    /// The characters a merchant order number may use besides ASCII letters and digits.
    pub out_trade_no_extra_chars: &'static str,
    /// Largest amount of one order, in minor units.
    pub max_amount_minor: i64,
}

impl OrderRules {
    /// Checks an order number, a currency and an amount; the error says what is wrong.
    pub fn check(
        &self,
        out_trade_no: &str,
        currency: &str,
        amount_minor: i64,
    ) -> Result<(), String> {
        let chars_ok = out_trade_no
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || self.out_trade_no_extra_chars.contains(c));
        let len = out_trade_no.len();
        if !chars_ok || len < self.min_out_trade_no || len > self.max_out_trade_no {
            return Err(format!(
                "out_trade_no {out_trade_no:?} must be {} to {} characters from \
                 [A-Za-z0-9{}] for channel {}",
                self.min_out_trade_no,
                self.max_out_trade_no,
                self.out_trade_no_extra_chars,
                self.channel
            ));
        }
        if !self.currencies.contains(&currency) {
            return Err(format!(
                "channel {} takes currency {}, got {currency:?}",
                self.channel,
                self.currencies.join(" or ")
            ));
        }
        if amount_minor <= 0 {
            return Err(format!(
                "amount must be positive, got {amount_minor} minor units"
            ));
        }
        if amount_minor > self.max_amount_minor {
            return Err(format!(
                "amount {} is above channel {}'s single-payment limit of {}",
                crate::money::format_minor(amount_minor),
                self.channel,
                crate::money::format_minor(self.max_amount_minor)
            ));
        }
        Ok(())
    }
}

/// The rules of `channel`, if a gateway of that name exists.
pub fn for_channel(channel: &str) -> Option<&'static OrderRules> {
    super::ALL
        .iter()
        .map(|plugin| &plugin.rules)
        .find(|rules| rules.channel == channel)
}

/// Every channel name, in the registry's order.
pub fn channels() -> impl Iterator<Item = &'static str> {
    super::ALL.iter().map(|plugin| plugin.rules.channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: OrderRules = OrderRules {
        channel: "test",
        currencies: &["CNY"],
        min_out_trade_no: 2,
        max_out_trade_no: 8,
        out_trade_no_extra_chars: "_-",
        max_amount_minor: 1000,
    };

    #[test]
    fn each_rule_is_checked_and_named() {
        assert_eq!(RULES.check("AB_1-2", "CNY", 1000), Ok(()));
        for (no, currency, amount, word) in [
            ("A", "CNY", 1, "out_trade_no"),
            ("ABCDEFGHI", "CNY", 1, "out_trade_no"),
            ("AB.1", "CNY", 1, "[A-Za-z0-9_-]"),
            ("AB", "USD", 1, "currency CNY"),
            ("AB", "CNY", 0, "positive"),
            ("AB", "CNY", 1001, "limit of 10.00"),
        ] {
            let err = RULES.check(no, currency, amount).unwrap_err();
            assert!(err.contains(word), "{no} {currency} {amount}: {err}");
        }
    }

    #[test]
    fn every_gateway_has_rules_within_the_message_contract() {
        for channel in channels() {
            let rules = for_channel(channel).unwrap();
            assert!(rules.max_out_trade_no <= crate::message::MAX_OUT_TRADE_NO);
            assert!(rules.min_out_trade_no >= 1);
            assert!(!rules.currencies.is_empty());
        }
        assert!(for_channel("nosuch").is_none());
    }
}
