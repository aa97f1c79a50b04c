//! The broker section of the settings: where RabbitMQ is, how to reach it over TLS, and
//! the queues every process declares and publishes to. The shop's library, the worker
//! and `reconcile` all connect with it, and with nothing else of the settings.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::vars::parse_duration_list;
use super::{ConfigError, Vars};
use crate::broker::addresses::{self, Failover};
use crate::broker::tiers::DelayTiers;
use crate::broker::tls::AmqpTls;
use crate::broker::topology::{self, QueueType, Topology};

/// The default broker URL: the local server, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker and its topology.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// RabbitMQ URL (`AMQP_URL` or `AMQP_URL_FILE`), or several comma-separated (the
    /// nodes of a cluster); it may carry a password.
    pub url: SecretString,
    /// Which listed address this process's next connection tries first (shared by the
    /// clones of these settings).
    pub failover: Failover,
    /// TLS files for `amqps://` (`ORDER_CLOSER_AMQP_TLS_CA`, `..._CERT`, `..._KEY`).
    pub tls: AmqpTls,
    /// Queue names, tiers and queue type (`ORDER_CLOSER_QUEUE_PREFIX`,
    /// `ORDER_CLOSER_QUEUE_TYPE`, `ORDER_CLOSER_EXTRA_DELAY_TIERS`).
    pub topology: Topology,
}

impl BrokerSettings {
    /// Reads `AMQP_URL` (or its file), the TLS files and the topology's variables; an
    /// invalid value is an error naming it.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let url = vars.secret("AMQP_URL", "AMQP_URL_FILE")?.map_or_else(
            || DEFAULT_AMQP_URL.to_owned(),
            |s| s.expose_secret().to_owned(),
        );
        let addresses = addresses::parse(&url)
            .map_err(|reason| ConfigError::invalid_url("AMQP_URL", &url, reason))?;
        let tls_path = |name: &'static str| vars.get(name).map(|p| PathBuf::from(p.trim()));
        let tls = AmqpTls::load(
            tls_path("ORDER_CLOSER_AMQP_TLS_CA").as_deref(),
            tls_path("ORDER_CLOSER_AMQP_TLS_CERT").as_deref(),
            tls_path("ORDER_CLOSER_AMQP_TLS_KEY").as_deref(),
        )
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
        let plain = addresses
            .iter()
            .any(|a| a.uri.scheme == lapin::uri::AMQPScheme::AMQP);
        if tls.is_set() && plain {
            return Err(ConfigError::Tls(
                "ORDER_CLOSER_AMQP_TLS_* are set but an AMQP_URL address is not amqps://".into(),
            ));
        }
        Ok(Self {
            url: url.into(),
            failover: Failover::default(),
            tls,
            topology: read_topology(vars)?,
        })
    }
}

/// The queue prefix, queue type and delay tiers.
fn read_topology(vars: &Vars) -> Result<Topology, ConfigError> {
    let prefix = vars.string("ORDER_CLOSER_QUEUE_PREFIX", "order");
    topology::check_prefix(&prefix)
        .map_err(|e| ConfigError::invalid("ORDER_CLOSER_QUEUE_PREFIX", &prefix, e))?;
    // Quorum by default: its dead-lettering is at least once, a classic queue's at
    // most once (a tier can drop an expired message the close queue could not take;
    // see `tests/serial/serial_dead_letter.rs` and docs/operations.md, "Queue type").
    let queue_type = match vars.get("ORDER_CLOSER_QUEUE_TYPE").as_deref() {
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
    let tiers = match vars.get("ORDER_CLOSER_EXTRA_DELAY_TIERS") {
        None => DelayTiers::default(),
        Some(text) => {
            let extra = parse_duration_list("ORDER_CLOSER_EXTRA_DELAY_TIERS", &text)?;
            DelayTiers::standard_with(&extra)
                .map_err(|e| ConfigError::invalid("ORDER_CLOSER_EXTRA_DELAY_TIERS", &text, e))?
        }
    };
    Ok(Topology::new(prefix, tiers, queue_type))
}
