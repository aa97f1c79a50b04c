//! The worker section of the settings: how many orders a worker decides at once, how it
//! stops, and the pace of the two loops it runs beside the consumer (the outbox relay and
//! the janitor). The worker is handed this section and the broker's, nothing else.

use std::time::Duration;

use super::janitor::JanitorConfig;
use super::{ConfigError, Vars};

/// How a worker consumes, stops, relays and re-drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Orders decided at once per worker (`ORDER_CLOSER_CONCURRENCY`).
    pub concurrency: usize,
    /// Unacked messages the broker may push to one worker (`ORDER_CLOSER_PREFETCH`).
    pub prefetch: u16,
    /// How long a stopping worker waits for in-flight decisions
    /// (`ORDER_CLOSER_SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
    /// When the outbox relay publishes what a creator left behind.
    pub outbox: OutboxSettings,
    /// When the janitor re-drives overdue orders.
    pub janitor: JanitorConfig,
}

/// When the outbox relay acts: the worker's, and the one pass `reconcile` makes after
/// its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSettings {
    /// How old a row must be before the relay publishes it (`ORDER_CLOSER_OUTBOX_GRACE`).
    pub grace: Duration,
    /// How often the relay looks at the outbox (`ORDER_CLOSER_OUTBOX_INTERVAL`).
    pub interval: Duration,
}

impl WorkerSettings {
    /// Reads `ORDER_CLOSER_CONCURRENCY`, `..._PREFETCH`, `..._SHUTDOWN_GRACE` and the
    /// outbox's and the janitor's variables; an invalid value is an error naming it.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            concurrency: vars.number("ORDER_CLOSER_CONCURRENCY", 64, 1, 10_000)?,
            prefetch: vars.number("ORDER_CLOSER_PREFETCH", 128, 1, u16::MAX as usize)? as u16,
            // A delivery held longer than the broker's consumer timeout (30 min) closes
            // its channel: no grace may reach it.
            shutdown_grace: vars.duration(
                "ORDER_CLOSER_SHUTDOWN_GRACE",
                Duration::from_secs(30),
                Duration::from_secs(1)..=Duration::from_secs(1800),
            )?,
            outbox: OutboxSettings::from_vars(vars)?,
            janitor: JanitorConfig::from_vars(vars)?,
        })
    }
}

impl OutboxSettings {
    /// Reads `ORDER_CLOSER_OUTBOX_GRACE` and `ORDER_CLOSER_OUTBOX_INTERVAL`.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            grace: vars.duration(
                "ORDER_CLOSER_OUTBOX_GRACE",
                Duration::from_secs(5),
                Duration::from_millis(100)..=Duration::from_secs(3600),
            )?,
            interval: vars.duration(
                "ORDER_CLOSER_OUTBOX_INTERVAL",
                Duration::from_millis(500),
                Duration::from_millis(10)..=Duration::from_secs(60),
            )?,
        })
    }
}
