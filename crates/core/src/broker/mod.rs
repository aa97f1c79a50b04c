//! RabbitMQ at the edge: connecting, declaring the topology, publishing with confirms.

pub mod addresses;
pub mod confirms;
pub mod link;
pub mod publisher;
pub mod tiers;
pub mod tls;
pub mod topology;

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use thiserror::Error;

/// Heartbeat used when the URL does not set one: network cuts are noticed only by
/// heartbeats, so keep it short.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// Upper bound on any single broker round trip (declare, publish confirm, ack).
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker failure.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The AMQP URL could not be parsed.
    #[error("AMQP_URL is invalid: {0}")]
    BadUrl(String),
    /// The client library reported an error (connection, channel, protocol).
    #[error("broker error during {op}: {source}")]
    Amqp {
        /// What we were doing.
        op: &'static str,
        /// The underlying error.
        source: lapin::Error,
    },
    /// The broker did not answer in time.
    #[error("broker did not answer {op} within {timeout:?}")]
    Timeout {
        /// What we were doing.
        op: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// The broker could not route a mandatory message and returned it.
    #[error(
        "message to exchange {exchange:?} with key {routing_key:?} was returned as unroutable: {reply}"
    )]
    Returned {
        /// The exchange published to.
        exchange: String,
        /// The routing key used.
        routing_key: String,
        /// The broker's reply text.
        reply: String,
    },
    /// The broker refused the message (negative confirm).
    #[error("broker refused (nack) the message to {routing_key:?}")]
    Nacked {
        /// The routing key used.
        routing_key: String,
    },
    /// A queue exists with other arguments than this configuration declares (most often
    /// another queue type): a configuration error, retrying cannot help.
    #[error(
        "queue {queue:?} already exists with other arguments than configured ({reply}); \
         a queue cannot change type or arguments in place: keep the old \
         ORDER_CLOSER_QUEUE_TYPE, or use a new ORDER_CLOSER_QUEUE_PREFIX for the new type \
         (see docs/operations.md, \"Queue type\")"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The broker's reply text.
        reply: String,
    },
    /// The server did not speak AMQP (most often a TLS listener reached with `amqp://`).
    #[error(
        "the server at {address} did not answer in AMQP 0-9-1 ({detail}); if it is a TLS \
         listener, use an amqps:// URL"
    )]
    NotAmqp {
        /// `host:port`.
        address: String,
        /// What the client saw.
        detail: String,
    },
    /// One of the worker's background tasks (relay, janitor, acknowledgements) stopped;
    /// the session restarts them all.
    #[error("a background task of the worker stopped (see the error above); restarting")]
    TaskStopped,
    /// None of the listed addresses could be connected to (each one's error, in the
    /// order tried).
    #[error("no broker address answered: {tried}")]
    Unreachable {
        /// `host:port: error` for each address tried, `; `-separated.
        tried: String,
    },
    /// The library's broker connection is being re-established (or was tried moments
    /// ago): the close schedule is left to the outbox relay.
    #[error("the broker connection is being re-established")]
    Reconnecting,
    /// An ack or reject could not be delivered because the channel is gone; the broker
    /// will redeliver the message.
    #[error("channel gone before {op}: the broker will redeliver")]
    ChannelGone {
        /// What we were doing.
        op: &'static str,
    },
}

impl BrokerError {
    /// Whether retrying cannot help (the configuration must change).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::QueueMismatch { .. } | Self::BadUrl(_))
    }
}

/// The broker's reply when it closed a channel because a precondition failed (406, for
/// example a queue redeclared with other arguments).
pub fn precondition_failed(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) if e.get_id() == 406 => {
            Some(e.get_message().to_string())
        }
        _ => None,
    }
}

/// Whether a failed connect means the server does not speak AMQP: it answered bytes that
/// are not AMQP (a TLS listener's alert), or, reached in plain text, it dropped the
/// connection during the handshake (a TLS listener may reset it before its alert is read,
/// depending on timing).
fn not_amqp(error: &lapin::Error, plain: bool) -> bool {
    match error.kind() {
        lapin::ErrorKind::ParsingError(_) => true,
        lapin::ErrorKind::IOError(e) => {
            plain
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                )
        }
        _ => false,
    }
}

/// Runs one broker operation under [`BROKER_TIMEOUT`].
pub async fn timed<T>(
    op: &'static str,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(BROKER_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(BrokerError::Amqp { op, source }),
        Err(_) => Err(BrokerError::Timeout {
            op,
            timeout: BROKER_TIMEOUT,
        }),
    }
}

/// Connects to RabbitMQ, adding a short heartbeat when the URL has none; an `amqps://`
/// URL trusts the system's authorities only (see [`connect_with`]).
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection, BrokerError> {
    connect_with(url, &tls::AmqpTls::default(), connection_name).await
}

/// Connects as the broker's settings say (`AMQP_URL` and its TLS files), starting where
/// the settings' [`addresses::Failover`] says.
pub async fn connect_configured(
    settings: &crate::config::BrokerSettings,
    connection_name: &str,
) -> Result<Connection, BrokerError> {
    use secrecy::ExposeSecret;
    connect_from(
        settings.url.expose_secret(),
        &settings.tls,
        connection_name,
        &settings.failover,
    )
    .await
}

/// Connects to RabbitMQ with extra trusted authorities and a client certificate for
/// `amqps://`. `url` may list several addresses ([`addresses`]): they are tried in
/// order, and the first that answers is used.
pub async fn connect_with(
    url: &str,
    tls: &tls::AmqpTls,
    connection_name: &str,
) -> Result<Connection, BrokerError> {
    connect_from(url, tls, connection_name, &addresses::Failover::default()).await
}

/// Tries the listed addresses in the order `failover` gives, and records the one that
/// answered. A configuration the broker refuses stops the round at once (another node
/// would refuse it too); with one address, its own error is returned.
async fn connect_from(
    url: &str,
    tls: &tls::AmqpTls,
    connection_name: &str,
    failover: &addresses::Failover,
) -> Result<Connection, BrokerError> {
    let list = addresses::parse(url).map_err(BrokerError::BadUrl)?;
    let mut errors = Vec::new();
    for index in failover.order(list.len()) {
        let address = &list[index];
        match connect_one(address, tls, connection_name).await {
            Ok(connection) => {
                failover.got(index);
                if !errors.is_empty() {
                    tracing::info!(address = %address.shown, "connected to the broker at another address");
                }
                return Ok(connection);
            }
            Err(e) if e.is_fatal() || list.len() == 1 => return Err(e),
            Err(e) => {
                tracing::warn!(address = %address.shown, error = %e, "broker address did not answer; trying the next");
                errors.push(format!("{}: {e}", address.shown));
            }
        }
    }
    Err(BrokerError::Unreachable {
        tried: crate::url_secret::redact(&errors.join("; ")),
    })
}

/// Connects to one address.
async fn connect_one(
    address: &addresses::Address,
    tls: &tls::AmqpTls,
    connection_name: &str,
) -> Result<Connection, BrokerError> {
    let mut uri = address.uri.clone();
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
    }
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout = Some(BROKER_TIMEOUT.as_millis() as u64);
    }
    let props = ConnectionProperties::default().with_connection_name(connection_name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|source| BrokerError::Amqp {
        op: "connect",
        source,
    })?;
    let plain = uri.scheme == lapin::uri::AMQPScheme::AMQP;
    match timed(
        "connect",
        Connection::connect_uri_with_config(uri, props, tls.to_lapin(), runtime),
    )
    .await
    {
        Err(BrokerError::Amqp { source, .. }) if not_amqp(&source, plain) => {
            Err(BrokerError::NotAmqp {
                address: address.shown.clone(),
                detail: source.to_string(),
            })
        }
        other => other,
    }
}
