//! When the worker's janitor acts: plain settings, read with the rest of the
//! configuration (the janitor itself is in `crate::janitor`, with the `worker` feature).

use std::time::Duration;

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
