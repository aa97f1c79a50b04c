//! The payment gateways order-closer speaks: the one list of them. Each is a crate of its
//! own behind the port (`order-closer-gateway`); nothing outside a gateway's crate, its
//! simulator and this list names a gateway.
//!
//! Adding a gateway: its crate, one line in the `gateways!` list below, its simulator in
//! `order_closer_sim::GATEWAYS`, and its variables in docs/operations.md.

pub use order_closer_core::rules::{Channels, OrderRules};
#[cfg(feature = "engine")]
use order_closer_gateway::Plugin;

/// Declares the list of gateways once: each gateway's crate re-exported by name, every
/// gateway's order rules ([`RULES`], always built: the shop's library checks orders with
/// them), and with the `engine` feature every gateway's [`Plugin`] (`ALL`).
macro_rules! gateways {
    ($($name:ident => $krate:ident),+ $(,)?) => {
        $(pub use $krate as $name;)+

        /// Every gateway's order rules, in the list's order.
        pub const RULES: &[&OrderRules] = &[$(&$name::RULES),+];

        /// Every gateway order-closer speaks, in the list's order.
        #[cfg(feature = "engine")]
        pub const ALL: &[&Plugin] = &[$(&$name::PLUGIN),+];
    };
}

gateways! {
    alipay => order_closer_alipay,
    wechat => order_closer_wechat,
}

/// The channels of every gateway order-closer speaks: what a `Closer` is handed.
pub const CHANNELS: Channels = Channels::new(RULES);

/// The rules of `channel`, if a gateway of that name exists.
pub fn for_channel(channel: &str) -> Option<&'static OrderRules> {
    CHANNELS.for_channel(channel)
}

/// Every channel name, in the list's order.
pub fn channels() -> impl Iterator<Item = &'static str> {
    CHANNELS.names()
}

/// A channel given on a command line: one of the gateways order-closer speaks, or `all`
/// when `all_too`; the error lists the choices.
pub fn parse_channel(text: &str, all_too: bool) -> Result<String, String> {
    let known: Vec<&str> = channels().collect();
    if (all_too && text == "all") || known.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a gateway: give {}{}",
            if all_too { "all or one of " } else { "one of " },
            known.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_has_rules_within_the_message_contract() {
        #[cfg(feature = "engine")]
        for (plugin, channel) in ALL.iter().zip(channels()) {
            assert_eq!(plugin.rules.channel, channel);
        }
        for channel in channels() {
            let rules = for_channel(channel).unwrap();
            assert!(rules.max_out_trade_no <= order_closer_core::message::MAX_OUT_TRADE_NO);
            assert!(rules.min_out_trade_no >= 1);
            assert!(!rules.currencies.is_empty());
        }
        assert!(for_channel("nosuch").is_none());
    }

    #[test]
    fn a_channel_argument_is_a_known_gateway_or_all_where_allowed() {
        for channel in channels() {
            assert_eq!(parse_channel(channel, false).as_deref(), Ok(channel));
        }
        assert_eq!(parse_channel("all", true).as_deref(), Ok("all"));
        let err = parse_channel("all", false).unwrap_err();
        assert!(err.contains("one of"), "{err}");
        let err = parse_channel("paypal", true).unwrap_err();
        assert!(err.contains("\"paypal\" is not a gateway"), "{err}");
        for channel in channels() {
            assert!(err.contains(channel), "{err}");
        }
    }

    #[cfg(feature = "engine")]
    mod registry {
        use super::*;
        use order_closer_core::config::Settings;
        use order_closer_gateway::registry::{Gateways, RegistryError};
        use std::collections::HashMap;

        fn gateways(pairs: &[(&str, String)]) -> Result<Gateways, RegistryError> {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let settings = Settings::from_lookup(move |k| map.get(k).cloned()).unwrap();
            Gateways::from_settings(&settings, ALL)
        }

        /// With every WeChat variable but its key set, WeChat was silently
        /// off. Any one of a gateway's own variables set without its signing key stops the
        /// process, naming the key; its common variables alone do not.
        #[test]
        fn a_half_configured_gateway_is_refused_naming_its_key() {
            for plugin in ALL {
                let key = plugin.configured_by[0];
                let common = plugin.common.all();
                let key_file = format!("{key}_FILE");
                for var in plugin.variables {
                    if *var == key || *var == key_file || common.contains(var) {
                        continue;
                    }
                    let err = match gateways(&[(var, "1".to_owned())]) {
                        Ok(_) => panic!("{var} alone was accepted"),
                        Err(e) => e,
                    };
                    assert!(
                        matches!(&err, RegistryError::HalfConfigured { channel, .. }
                            if *channel == plugin.rules.channel),
                        "{var}: {err}"
                    );
                    assert!(err.to_string().contains(key), "{var}: {err}");
                }
                let err = gateways(&[(plugin.common.timeout, "5s".to_owned())])
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(err.contains("no payment gateway"), "{err}");
            }
            let err = gateways(&[]).err().map(|e| e.to_string());
            assert!(err.unwrap_or_default().contains("no payment gateway"));
        }
    }
}
