//! Configuration from environment variables, validated at start-up.
//!
//! Every value has a default that works against the local services and the gateway
//! simulator, except the Alipay keys. An invalid value fails with an error naming the
//! variable, so a misconfigured deployment never starts half-working.
//!
//! [`Settings`] holds one section per part of the product (zero2prod's nested settings),
//! each with its own reader, so that each part is handed the section it uses and a
//! command can read only what it needs:
//! - [`DatabaseSettings`] (`database.rs`): Postgres;
//! - [`BrokerSettings`] (`broker.rs`): RabbitMQ and the topology;
//! - [`WorkerSettings`] (`worker.rs`): the consumer, its outbox relay and its janitor
//!   (`janitor.rs`);
//! - [`DecisionSettings`] (`decisions.rs`): quick retries, retry steps and payments after
//!   close;
//! - [`LogFormat`] (`logging.rs`) and the health endpoint's address.
//!
//! A gateway reads its own variables (`ALIPAY_*`, `WECHAT_*`) from [`Settings::vars`]
//! when the gateways are built, as the notify endpoint reads its own.

use std::net::SocketAddr;

use thiserror::Error;

pub mod broker;
pub mod database;
pub mod decisions;
pub mod janitor;
pub mod logging;
pub mod urls;
pub mod vars;
pub mod worker;

pub use broker::{BrokerSettings, DEFAULT_AMQP_URL};
pub use database::{DEFAULT_DATABASE_URL, DatabaseSettings};
pub use decisions::{DecisionSettings, PaidAfterClose, QuickRetrySettings};
pub use janitor::JanitorConfig;
pub use logging::LogFormat;
pub use vars::{Vars, key_material, parse_duration};
pub use worker::{OutboxSettings, WorkerSettings};

/// A configuration value that is missing or wrong, naming the variable.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{var} is required but not set{hint}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// A variable is set to something that cannot be used.
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// The value as given (never a secret: key values are not echoed).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS file or combination that cannot be used (the message names the variable).
    #[error("{0}")]
    Tls(String),
}

impl ConfigError {
    /// A value that cannot be used, and why.
    pub fn invalid(var: &'static str, value: &str, reason: impl ToString) -> Self {
        Self::Invalid {
            var,
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// An unusable URL, shown with its user name and password hidden (in the reason
    /// too: a parser's message may repeat the URL).
    pub fn invalid_url(var: &'static str, url: &str, reason: impl ToString) -> Self {
        let shown = crate::url_secret::redact(url);
        Self::invalid(var, &shown, reason.to_string().replace(url, &shown))
    }
}

/// Everything the product's processes read from the environment, by part.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Postgres.
    pub database: DatabaseSettings,
    /// RabbitMQ and the topology.
    pub broker: BrokerSettings,
    /// The worker's consumer, relay and janitor.
    pub worker: WorkerSettings,
    /// How every decider retries and treats a payment after close.
    pub decisions: DecisionSettings,
    /// Where the worker and the notify endpoint serve `/healthz`, `/readyz`, `/metrics`
    /// (`ORDER_CLOSER_HTTP_LISTEN`; `off` disables).
    pub http_listen: Option<SocketAddr>,
    /// Log format (`ORDER_CLOSER_LOG_FORMAT`: `text` or `json`).
    pub log_format: LogFormat,
    /// The variables themselves, for what reads its own (each gateway's configuration,
    /// `ALIPAY_*`, `WECHAT_*`, read when the gateways are built).
    pub vars: Vars,
}

/// The default gateway base URL: the simulator on its default port.
pub const DEFAULT_GATEWAY_URL: &str = "http://127.0.0.1:8080";

impl Settings {
    /// Reads settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(Vars::from_env())
    }

    /// Reads settings from any name -> value lookup (tests use a map).
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        Self::from_vars(Vars::from_fn(get))
    }

    /// Reads every section from `vars`; the first invalid value is the error.
    pub fn from_vars(vars: Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseSettings::from_vars(&vars)?,
            broker: BrokerSettings::from_vars(&vars)?,
            worker: WorkerSettings::from_vars(&vars)?,
            decisions: DecisionSettings::from_vars(&vars)?,
            http_listen: http_listen(&vars)?,
            log_format: LogFormat::from_vars(&vars)?,
            vars,
        })
    }
}

/// `ORDER_CLOSER_HTTP_LISTEN`: `127.0.0.1:9090` when unset, none when `off`.
fn http_listen(vars: &Vars) -> Result<Option<SocketAddr>, ConfigError> {
    match vars.get("ORDER_CLOSER_HTTP_LISTEN").as_deref() {
        None => Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9090)))),
        Some("off") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|e| {
            ConfigError::invalid(
                "ORDER_CLOSER_HTTP_LISTEN",
                text,
                format!("{e} (expected HOST:PORT or off)"),
            )
        }),
    }
}

#[cfg(test)]
mod tests;
