//! The notify endpoint's own variables, read where they are used (as each gateway reads
//! its own) so that the settings every process shares stay in `config`:
//! - `ORDER_CLOSER_HINT_RATE`: hint queries a second, all orders together
//!   ([`super::hints::HintBudget::rate`]); keep it well below the gateways' rate limits,
//!   which the workers' deadline queries share;
//! - `ORDER_CLOSER_NOTIFY_CONNECTIONS_PER_SOURCE`: connections one source address may
//!   hold ([`order_closer_http_server::Limits::max_connections_per_source`]). Behind a proxy
//!   that does not pass the client's address, every connection is the proxy's: raise it
//!   to the connection limit (1024) and bound clients at the proxy.

use std::num::NonZeroU32;
use std::sync::Arc;

use super::hints::HintBudget;
use super::{HINT_CONCURRENCY, HINT_RATE, HINT_SPACING};
use order_closer_core::config::{ConfigError, Vars};
use order_closer_http_server::Limits;

/// What `order-closer notify` reads for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifySettings {
    /// Hint queries a second in all (`ORDER_CLOSER_HINT_RATE`).
    pub hint_rate: NonZeroU32,
    /// Connections per source address (`ORDER_CLOSER_NOTIFY_CONNECTIONS_PER_SOURCE`).
    pub connections_per_source: usize,
}

impl NotifySettings {
    /// Reads the variables; an invalid value is an error naming it.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let rate = vars.number(
            "ORDER_CLOSER_HINT_RATE",
            HINT_RATE.get() as usize,
            1,
            10_000,
        )?;
        Ok(Self {
            hint_rate: NonZeroU32::new(rate as u32).unwrap_or(HINT_RATE),
            connections_per_source: vars.number(
                "ORDER_CLOSER_NOTIFY_CONNECTIONS_PER_SOURCE",
                Limits::PUBLIC.max_connections_per_source,
                1,
                Limits::PUBLIC.max_connections,
            )?,
        })
    }

    /// The hint-query budget.
    pub fn hint_budget(&self) -> Arc<HintBudget> {
        HintBudget::new(HINT_SPACING, HINT_CONCURRENCY, self.hint_rate)
    }

    /// The public endpoint's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections_per_source: self.connections_per_source,
            ..Limits::PUBLIC
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&'static str, &'static str)]) -> Result<NotifySettings, ConfigError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        NotifySettings::from_vars(&Vars::from_fn(move |name| {
            map.get(name).map(|v| (*v).to_owned())
        }))
    }

    #[test]
    fn defaults_values_and_errors_naming_the_variable() {
        let defaults = read(&[]).unwrap();
        assert_eq!(defaults.hint_rate, HINT_RATE);
        assert_eq!(defaults.limits(), Limits::PUBLIC);
        let set = read(&[
            ("ORDER_CLOSER_HINT_RATE", "3"),
            ("ORDER_CLOSER_NOTIFY_CONNECTIONS_PER_SOURCE", "1024"),
        ])
        .unwrap();
        assert_eq!(set.hint_budget().rate().get(), 3);
        assert_eq!(set.limits().max_connections_per_source, 1024);
        for (name, value) in [
            ("ORDER_CLOSER_HINT_RATE", "0"),
            ("ORDER_CLOSER_HINT_RATE", "lots"),
            ("ORDER_CLOSER_NOTIFY_CONNECTIONS_PER_SOURCE", "1025"),
        ] {
            let err = read(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
