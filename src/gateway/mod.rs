//! The payment gateways: the one list of them ([`ALL`], each a crate of its own behind
//! the port, `order-closer-gateway`), re-exported here with the port under the names the
//! rest of the binary uses. Nothing outside a gateway's crate and its simulator names a
//! gateway; the engine reaches them through the port and the registry built from this list.
//!
//! Adding a gateway: its crate, one line in the `gateways!` list below, its simulator in
//! `order_closer_sim::GATEWAYS`, and its variables in docs/operations.md.

pub mod rules;

#[cfg(feature = "worker")]
pub use order_closer_gateway::*;

/// Declares the list of gateways once: each gateway's crate re-exported by name, every
/// gateway's order rules ([`RULES`], always built: the shop's library checks orders with
/// them), and with the `worker` feature every gateway's [`Plugin`] ([`ALL`]).
macro_rules! gateways {
    ($($name:ident => $krate:ident),+ $(,)?) => {
        $(pub use $krate as $name;)+

        /// Every gateway's order rules, in the list's order.
        pub const RULES: &[&order_closer_core::rules::OrderRules] = &[$(&$name::RULES),+];

        /// Every gateway order-closer speaks, in the list's order.
        #[cfg(feature = "worker")]
        pub const ALL: &[&Plugin] = &[$(&$name::PLUGIN),+];
    };
}

gateways! {
    alipay => order_closer_alipay,
    wechat => order_closer_wechat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::gateway::registry::{Gateways, RegistryError};
    use std::collections::HashMap;

    fn gateways(pairs: &[(&str, String)]) -> Result<Gateways, RegistryError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let settings = Settings::from_lookup(move |k| map.get(k).cloned()).unwrap();
        Gateways::from_settings(&settings, ALL)
    }

    /// Issue 19, item 11: with every WeChat variable but its key set, WeChat was silently
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
