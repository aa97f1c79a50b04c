//! Configuration from environment variables, validated at start-up.
//!
//! Every value has a default that works against the local services and the gateway
//! simulator, except the Alipay keys. An invalid value fails with an error naming the
//! variable, so a misconfigured deployment never starts half-working.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use thiserror::Error;

pub mod janitor;
pub mod urls;
pub mod vars;

use crate::broker::tiers::DelayTiers;
use crate::broker::tls::AmqpTls;
use crate::broker::topology::{QueueType, Topology};
use crate::retry::RetryPolicy;
use janitor::JanitorConfig;
use vars::parse_duration_list;
pub use vars::{Vars, key_material, parse_duration};

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

/// Where the log lines go and in which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What to do with a payment the gateway took after we closed the order
/// (`ORDER_CLOSER_PAID_AFTER_CLOSE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PaidAfterClose {
    /// Record the anomaly and announce it; an operator decides
    /// (`order-closer reconcile anomalies --refund <order>`). The default: money moves
    /// back only when someone chose so.
    #[default]
    Hold,
    /// Record and announce it, and give the money back at once: what the gateway says
    /// was paid, asked when the refund is sent, idempotent by a refund number derived
    /// from the gateway's trade number.
    Refund,
}

impl PaidAfterClose {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Refund => "refund",
        }
    }
}

impl std::str::FromStr for PaidAfterClose {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "hold" => Ok(Self::Hold),
            "refund" => Ok(Self::Refund),
            _ => Err("expected hold or refund".into()),
        }
    }
}

/// Everything the binary and the library read from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Postgres connection URL (`DATABASE_URL`); it may carry a password.
    pub database_url: SecretString,
    /// Maximum database connections per process (`ORDER_CLOSER_DB_POOL_SIZE`).
    pub db_pool_size: usize,
    /// RabbitMQ URL (`AMQP_URL`); it may carry a password.
    pub amqp_url: SecretString,
    /// TLS files for `amqps://` (`ORDER_CLOSER_AMQP_TLS_CA`, `..._CERT`, `..._KEY`).
    pub amqp_tls: AmqpTls,
    /// Queue names, tiers and queue type.
    pub topology: Topology,
    /// Back-off steps for transient failures (`ORDER_CLOSER_RETRY_STEPS`).
    pub retry: RetryPolicy,
    /// Orders decided at once per worker (`ORDER_CLOSER_CONCURRENCY`).
    pub concurrency: usize,
    /// Unacked messages the broker may push to one worker (`ORDER_CLOSER_PREFETCH`).
    pub prefetch: u16,
    /// How long a stopping worker waits for in-flight decisions (`ORDER_CLOSER_SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
    /// How old an outbox row must be before the relay publishes it (`ORDER_CLOSER_OUTBOX_GRACE`).
    pub outbox_grace: Duration,
    /// How often the relay looks at the outbox (`ORDER_CLOSER_OUTBOX_INTERVAL`).
    pub outbox_interval: Duration,
    /// When the janitor re-drives overdue orders (`ORDER_CLOSER_JANITOR_AFTER`,
    /// `ORDER_CLOSER_JANITOR_INTERVAL`).
    pub janitor: JanitorConfig,
    /// Log format (`ORDER_CLOSER_LOG_FORMAT`: `text` or `json`).
    pub log_format: LogFormat,
    /// A payment after close: held for an operator or refunded
    /// (`ORDER_CLOSER_PAID_AFTER_CLOSE`: `hold`, the default, or `refund`).
    pub paid_after_close: PaidAfterClose,
    /// Where the worker serves `/healthz`, `/readyz`, `/metrics`
    /// (`ORDER_CLOSER_HTTP_LISTEN`; `off` disables).
    pub http_listen: Option<SocketAddr>,
    /// The variables themselves, for what reads its own (each gateway's configuration,
    /// `ALIPAY_*`, `WECHAT_*`, read when the gateways are built).
    pub vars: Vars,
}

/// The database URL with `sslrootcert` naming the CA file `path`
/// (`ORDER_CLOSER_DB_TLS_CA`); refused when the URL names another one.
fn with_root_cert(url: &str, path: &str) -> Result<String, String> {
    use crate::db::connect::{query_value, with_query_param};
    match query_value(url, "sslrootcert") {
        Some(named) if named == path => Ok(url.to_owned()),
        Some(named) => Err(format!(
            "DATABASE_URL names another sslrootcert ({named}); set one of them"
        )),
        None => Ok(with_query_param(url, "sslrootcert", path)),
    }
}

/// The default database URL: the local server, database `order_closer`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/order_closer";
/// The default broker URL: the local server, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
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

    /// Reads settings from `vars`.
    pub fn from_vars(vars: Vars) -> Result<Self, ConfigError> {
        let var = |name: &'static str| vars.get(name);
        let string = |name: &'static str, default: &str| vars.string(name, default);
        let secret = |name: &'static str, file_var: &'static str| {
            use secrecy::ExposeSecret;
            vars.secret(name, file_var)
                .map(|s| s.map(|s| s.expose_secret().to_owned()))
        };
        let database_url = secret("DATABASE_URL", "DATABASE_URL_FILE")?
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        urls::check_database_url(&database_url)
            .map_err(|reason| ConfigError::invalid_url("DATABASE_URL", &database_url, reason))?;
        let database_url = match var("ORDER_CLOSER_DB_TLS_CA") {
            None => database_url,
            Some(path) => with_root_cert(&database_url, path.trim())
                .map_err(|reason| ConfigError::invalid("ORDER_CLOSER_DB_TLS_CA", &path, reason))?,
        };
        let amqp_url =
            secret("AMQP_URL", "AMQP_URL_FILE")?.unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
        urls::check_amqp_url(&amqp_url)
            .map_err(|reason| ConfigError::invalid_url("AMQP_URL", &amqp_url, reason))?;
        let tls_path = |name: &'static str| var(name).map(|p| std::path::PathBuf::from(p.trim()));
        let amqp_tls = AmqpTls::load(
            tls_path("ORDER_CLOSER_AMQP_TLS_CA").as_deref(),
            tls_path("ORDER_CLOSER_AMQP_TLS_CERT").as_deref(),
            tls_path("ORDER_CLOSER_AMQP_TLS_KEY").as_deref(),
        )
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
        if amqp_tls.is_set() && !amqp_url.starts_with("amqps://") {
            return Err(ConfigError::Tls(
                "ORDER_CLOSER_AMQP_TLS_* are set but AMQP_URL is not amqps://".into(),
            ));
        }

        let prefix = string("ORDER_CLOSER_QUEUE_PREFIX", "order");
        crate::broker::topology::check_prefix(&prefix)
            .map_err(|e| ConfigError::invalid("ORDER_CLOSER_QUEUE_PREFIX", &prefix, e))?;
        // Quorum by default: its dead-lettering is at least once, a classic queue's at
        // most once (a tier can drop an expired message the close queue could not take;
        // see `tests/serial_dead_letter.rs` and docs/operations.md, "Queue type").
        let queue_type = match var("ORDER_CLOSER_QUEUE_TYPE").as_deref() {
            None | Some("quorum") => QueueType::Quorum,
            Some("classic") => QueueType::Classic,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "ORDER_CLOSER_QUEUE_TYPE",
                    other,
                    "expected classic or quorum",
                ));
            }
        };
        let tiers = match var("ORDER_CLOSER_EXTRA_DELAY_TIERS") {
            None => DelayTiers::default(),
            Some(text) => {
                let extra = parse_duration_list("ORDER_CLOSER_EXTRA_DELAY_TIERS", &text)?;
                DelayTiers::standard_with(&extra)
                    .map_err(|e| ConfigError::invalid("ORDER_CLOSER_EXTRA_DELAY_TIERS", &text, e))?
            }
        };
        let topology = Topology::new(prefix, tiers, queue_type);

        let retry = vars
            .retry_steps("ORDER_CLOSER_RETRY_STEPS")?
            .unwrap_or_default();

        let log_format = match var("ORDER_CLOSER_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "ORDER_CLOSER_LOG_FORMAT",
                    other,
                    "expected text or json",
                ));
            }
        };

        let paid_after_close = match var("ORDER_CLOSER_PAID_AFTER_CLOSE") {
            None => PaidAfterClose::default(),
            Some(text) => text
                .parse()
                .map_err(|e| ConfigError::invalid("ORDER_CLOSER_PAID_AFTER_CLOSE", &text, e))?,
        };

        let http_listen = match var("ORDER_CLOSER_HTTP_LISTEN").as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            Some("off") => None,
            Some(text) => Some(text.parse().map_err(|e| {
                ConfigError::invalid(
                    "ORDER_CLOSER_HTTP_LISTEN",
                    text,
                    format!("{e} (expected HOST:PORT or off)"),
                )
            })?),
        };

        Ok(Self {
            database_url: database_url.into(),
            db_pool_size: vars.number("ORDER_CLOSER_DB_POOL_SIZE", 16, 1, 1000)?,
            amqp_url: amqp_url.into(),
            amqp_tls,
            topology,
            retry,
            concurrency: vars.number("ORDER_CLOSER_CONCURRENCY", 64, 1, 10_000)?,
            prefetch: vars.number("ORDER_CLOSER_PREFETCH", 128, 1, u16::MAX as usize)? as u16,
            // A delivery held longer than the broker's consumer timeout (30 min) closes
            // its channel: no grace may reach it.
            shutdown_grace: vars.duration(
                "ORDER_CLOSER_SHUTDOWN_GRACE",
                Duration::from_secs(30),
                Duration::from_secs(1)..=Duration::from_secs(1800),
            )?,
            outbox_grace: vars.duration(
                "ORDER_CLOSER_OUTBOX_GRACE",
                Duration::from_secs(5),
                Duration::from_millis(100)..=Duration::from_secs(3600),
            )?,
            outbox_interval: vars.duration(
                "ORDER_CLOSER_OUTBOX_INTERVAL",
                Duration::from_millis(500),
                Duration::from_millis(10)..=Duration::from_secs(60),
            )?,
            janitor: JanitorConfig {
                after: vars.duration(
                    "ORDER_CLOSER_JANITOR_AFTER",
                    JanitorConfig::default().after,
                    Duration::from_secs(10)..=Duration::from_secs(7 * 86_400),
                )?,
                interval: vars.duration(
                    "ORDER_CLOSER_JANITOR_INTERVAL",
                    JanitorConfig::default().interval,
                    Duration::from_secs(1)..=Duration::from_secs(3600),
                )?,
            },
            log_format,
            paid_after_close,
            http_listen,
            vars,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_work_without_any_variable() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.database_url.expose_secret(), DEFAULT_DATABASE_URL);
        assert_eq!(s.concurrency, 64);
        assert_eq!(s.topology.close_queue(), "order.close.due");
        assert_eq!(s.topology.queue_type(), QueueType::Quorum);
        assert_eq!(s.janitor.after, Duration::from_secs(120));
        assert_eq!(s.janitor.interval, Duration::from_secs(30));
        assert_eq!(s.paid_after_close, PaidAfterClose::Hold);
        let refund = settings(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).unwrap();
        assert_eq!(refund.paid_after_close, PaidAfterClose::Refund);
    }

    #[test]
    fn invalid_values_name_their_variable() {
        // 500 tiers, each a queue.
        let many_tiers: String = (1..=500)
            .map(|i| format!("{}ms", 600 + i))
            .collect::<Vec<_>>()
            .join(",");
        let cases = [
            ("DATABASE_URL", "mysql://x"),
            ("AMQP_URL", "http://x"),
            ("ORDER_CLOSER_QUEUE_PREFIX", "bad prefix!"),
            ("ORDER_CLOSER_QUEUE_TYPE", "stream"),
            ("ORDER_CLOSER_CONCURRENCY", "0"),
            ("ORDER_CLOSER_CONCURRENCY", "lots"),
            ("ORDER_CLOSER_PREFETCH", "70000"),
            ("ORDER_CLOSER_RETRY_STEPS", "3s,soon"),
            ("ORDER_CLOSER_SHUTDOWN_GRACE", "0s"),
            ("ORDER_CLOSER_LOG_FORMAT", "xml"),
            ("ORDER_CLOSER_HTTP_LISTEN", "everywhere"),
            ("ORDER_CLOSER_PAID_AFTER_CLOSE", "give-back"),
            ("ORDER_CLOSER_JANITOR_AFTER", "1s"),
            ("ORDER_CLOSER_JANITOR_AFTER", "1000000y"),
            ("ORDER_CLOSER_JANITOR_INTERVAL", "2h"),
            ("ORDER_CLOSER_JANITOR_INTERVAL", "soon"),
            ("ORDER_CLOSER_OUTBOX_GRACE", "1000000y"),
            ("ORDER_CLOSER_OUTBOX_INTERVAL", "1000000y"),
            ("ORDER_CLOSER_SHUTDOWN_GRACE", "1000000y"),
            ("ORDER_CLOSER_RETRY_STEPS", "1s,1000000y"),
            ("ORDER_CLOSER_EXTRA_DELAY_TIERS", "1000000y"),
            ("ORDER_CLOSER_EXTRA_DELAY_TIERS", many_tiers.as_str()),
            ("ORDER_CLOSER_QUEUE_PREFIX", "amq.x"),
            ("ORDER_CLOSER_QUEUE_PREFIX", "amq"),
            ("DATABASE_URL", "postgres://"),
            ("DATABASE_URL", "postgres://u:p@h:99999/db"),
            ("DATABASE_URL", "postgres://u:p@h/db?sslmode=bogus"),
            ("DATABASE_URL", "postgres://u:p@h:5432"),
            ("AMQP_URL", "amqp://g:g@h:99999/%2f"),
            ("AMQP_URL", "amqp://g:g@h/%2f?heartbeat=abc"),
        ];
        for (var, value) in cases {
            let err = settings(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var), "{var}={value}: {err}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://u:SeCrEt123@h/db"),
            ("AMQP_URL", "amqp://g:SeCrEt123@h/%2f"),
            ("ALIPAY_APP_PRIVATE_KEY", "U2VDckV0MTIz"),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("SeCrEt123"), "{shown}");
        assert!(!shown.contains("U2VDckV0MTIz"), "{shown}");
    }

    #[test]
    fn a_url_password_never_shows_in_an_error() {
        for (var, value) in [
            (
                "DATABASE_URL",
                " postgres://postgres:SeCrEt123@127.0.0.1:1/x",
            ),
            ("DATABASE_URL", "mysql://root:SeCrEt123@h/db"),
            ("DATABASE_URL", "postgres://postgres:SeCrEt123@h:5432"),
            ("AMQP_URL", "AMQP://guest:SeCrEt123@h/%2f"),
            ("AMQP_URL", "amqp://guest:SeCrEt123@h:99999/%2f"),
            // A password with a URL delimiter in it.
            (
                "DATABASE_URL",
                "postgres://app:Se/SeCrEt123@127.0.0.1:5432/db",
            ),
            (
                "DATABASE_URL",
                "postgres://app:Se?SeCrEt123@127.0.0.1:5432/db",
            ),
            (
                "DATABASE_URL",
                "postgres://app:Se#SeCrEt123@127.0.0.1:5432/db",
            ),
            (
                "DATABASE_URL",
                "postgres://app:S@SeCrEt123@127.0.0.1:5432/db",
            ),
            ("AMQP_URL", "amqp://guest:Se/SeCrEt123@h/%2f"),
            ("AMQP_URL", "amqp://guest:S@SeCrEt123@h/%2f"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var), "{err}");
            assert!(!err.contains("SeCrEt123"), "{var}: {err}");
        }
    }

    #[test]
    fn the_database_ca_joins_the_url_and_tls_files_are_checked() {
        let s = settings(&[
            ("DATABASE_URL", "postgres://u:p@h/db?sslmode=verify-full"),
            ("ORDER_CLOSER_DB_TLS_CA", "/etc/ssl/my ca.pem"),
        ])
        .unwrap();
        assert_eq!(
            s.database_url.expose_secret(),
            "postgres://u:p@h/db?sslmode=verify-full&sslrootcert=/etc/ssl/my%20ca.pem"
        );
        let err = settings(&[
            ("DATABASE_URL", "postgres://u:p@h/db?sslrootcert=a.pem"),
            ("ORDER_CLOSER_DB_TLS_CA", "b.pem"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("ORDER_CLOSER_DB_TLS_CA"), "{err}");
        for (var, why) in [
            ("ORDER_CLOSER_AMQP_TLS_CA", "cannot read"),
            ("ORDER_CLOSER_AMQP_TLS_CERT", "both"),
        ] {
            let err = settings(&[
                ("AMQP_URL", "amqps://u:SeCrEt123@h/%2f"),
                (var, "/no/such/file.pem"),
            ])
            .unwrap_err()
            .to_string();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("SeCrEt123"), "{err}");
        }
        let err = settings(&[("ORDER_CLOSER_AMQP_TLS_CA", "/etc/hostname")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ORDER_CLOSER_AMQP_TLS_CA"), "{err}");
    }
}
