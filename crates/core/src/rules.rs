//! What a gateway accepts as an order: the merchant order number's format, the
//! currencies, the amount's limits. Each gateway declares its [`OrderRules`]; the library
//! is handed the [`Channels`] it accepts orders for and checks every new order against
//! its channel's rules before writing it, so an order the gateway would refuse is never
//! scheduled. This crate names no gateway: the list is the caller's.

use crate::invalid::InvalidOrder;

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
    ) -> Result<(), InvalidOrder> {
        let chars_ok = out_trade_no
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || self.out_trade_no_extra_chars.contains(c));
        let len = out_trade_no.len();
        if !chars_ok || len < self.min_out_trade_no || len > self.max_out_trade_no {
            return Err(InvalidOrder::OutTradeNo {
                out_trade_no: out_trade_no.to_owned(),
                channel: self.channel,
                min: self.min_out_trade_no,
                max: self.max_out_trade_no,
                extra_chars: self.out_trade_no_extra_chars,
            });
        }
        if !self.currencies.contains(&currency) {
            return Err(InvalidOrder::Currency {
                currency: currency.to_owned(),
                channel: self.channel,
                accepted: self.currencies,
            });
        }
        if amount_minor <= 0 {
            return Err(InvalidOrder::AmountNotPositive(amount_minor));
        }
        if amount_minor > self.max_amount_minor {
            return Err(InvalidOrder::AmountAboveLimit {
                amount_minor,
                channel: self.channel,
                limit_minor: self.max_amount_minor,
            });
        }
        Ok(())
    }
}

/// The channels orders are accepted for, each with its gateway's rules: what a
/// [`crate::closer::Closer`] is handed (the binary's gateway list, or a shop's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels(&'static [&'static OrderRules]);

impl Channels {
    /// These channels, in this order (the first is the default where one is needed).
    pub const fn new(rules: &'static [&'static OrderRules]) -> Self {
        Self(rules)
    }

    /// The rules of `channel`, if it is one of these.
    pub fn for_channel(&self, channel: &str) -> Option<&'static OrderRules> {
        self.0
            .iter()
            .copied()
            .find(|rules| rules.channel == channel)
    }

    /// Every channel name, in order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + use<> {
        self.0.iter().map(|rules| rules.channel)
    }
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
            let err = RULES.check(no, currency, amount).unwrap_err().to_string();
            assert!(err.contains(word), "{no} {currency} {amount}: {err}");
        }
    }

    #[test]
    fn channels_find_their_rules_by_name() {
        const OTHER: OrderRules = OrderRules {
            channel: "other",
            ..RULES
        };
        const BOTH: Channels = Channels::new(&[&RULES, &OTHER]);
        assert_eq!(BOTH.for_channel("other"), Some(&OTHER));
        assert_eq!(BOTH.for_channel("nosuch"), None);
        assert_eq!(BOTH.names().collect::<Vec<_>>(), ["test", "other"]);
    }
}
