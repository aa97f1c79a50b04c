//! When the worker's janitor acts: the janitor's part of the worker's settings (the
//! janitor itself is in the engine's `janitor`).

use std::time::Duration;

use super::{ConfigError, Vars};

/// When the janitor acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JanitorConfig {
    /// How far past its schedule a NEW order must be before it is re-driven
    /// (`ORDER_CLOSER_JANITOR_AFTER`).
    pub after: Duration,
    /// How often a pass runs (`ORDER_CLOSER_JANITOR_INTERVAL`).
    pub interval: Duration,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        Self {
            after: Duration::from_secs(120),
            interval: Duration::from_secs(30),
        }
    }
}

impl JanitorConfig {
    /// Reads `ORDER_CLOSER_JANITOR_AFTER` and `ORDER_CLOSER_JANITOR_INTERVAL`, each
    /// [`JanitorConfig::default`]'s when unset.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let default = Self::default();
        Ok(Self {
            after: vars.duration(
                "ORDER_CLOSER_JANITOR_AFTER",
                default.after,
                Duration::from_secs(10)..=Duration::from_secs(7 * 86_400),
            )?,
            interval: vars.duration(
                "ORDER_CLOSER_JANITOR_INTERVAL",
                default.interval,
                Duration::from_secs(1)..=Duration::from_secs(3600),
            )?,
        })
    }
}
