//! Queue and exchange names, and their idempotent declaration.
//!
//! ```text
//! publish ──► {p}.close.delay.<ms>ms (TTL, no consumer) ──dead-letter──► {p}.close ──due──► {p}.close.due ──► workers
//!                                                                           └──parked──► {p}.close.parked
//! decisions ──► {p}.events (topic: order.closed, order.paid, order.anomaly.*) ──#──► {p}.events.audit
//! ```

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::tiers::{DelayTiers, MAX_TIERS};
use super::{BrokerError, precondition_failed, timed};

/// Routing key from the close exchange to the close queue.
pub const DUE_KEY: &str = "due";
/// Routing key from the close exchange to the parking queue.
pub const PARKED_KEY: &str = "parked";
/// Quorum queues only: deliveries of one message before the broker dead-letters it to
/// the parking queue (a message that crashes workers cannot loop forever).
pub const QUORUM_DELIVERY_LIMIT: i64 = 50;
/// Most events the audit queue keeps (oldest dropped first).
pub const EVENTS_AUDIT_MAX_LENGTH: i64 = 1_000_000;
/// Most queues a topology declares: the close, parking and audit queues and the tiers.
pub const MAX_QUEUES: usize = 3 + MAX_TIERS;
// A few dozen queues, declared one at a time, is what a broker takes at every reconnect.
const _: () = assert!(MAX_QUEUES <= 40);

/// Classic queues for a single broker, quorum queues for a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// `x-queue-type=classic`.
    Classic,
    /// `x-queue-type=quorum`, with at-least-once dead-lettering.
    Quorum,
}

/// The names and shape of one deployment's queues (a prefix lets deployments share a vhost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    tiers: DelayTiers,
    queue_type: QueueType,
}

/// Checks a name prefix: at most 100 characters from `[A-Za-z0-9._-]`, and not the
/// broker's own `amq.` (RabbitMQ refuses to declare a queue or exchange named `amq.*`
/// with `ACCESS_REFUSED`, which a worker would retry for ever; the prefix `amq` makes
/// `amq.close`, reserved as well).
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix.len() > 100
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err("use 1 to 100 characters from [A-Za-z0-9._-]".into());
    }
    if prefix == "amq" || prefix.starts_with("amq.") {
        return Err(
            "names starting with amq. are reserved by the broker (it refuses to declare \
             them); choose another prefix"
                .into(),
        );
    }
    Ok(())
}

impl Topology {
    /// A topology with this prefix (default `order`), tiers and queue type.
    pub fn new(prefix: impl Into<String>, tiers: DelayTiers, queue_type: QueueType) -> Self {
        Self {
            prefix: prefix.into(),
            tiers,
            queue_type,
        }
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The delay tiers.
    pub fn tiers(&self) -> &DelayTiers {
        &self.tiers
    }

    /// The queue type.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// The direct exchange that tiers dead-letter into.
    pub fn close_exchange(&self) -> String {
        format!("{}.close", self.prefix)
    }

    /// The queue workers consume.
    pub fn close_queue(&self) -> String {
        format!("{}.close.due", self.prefix)
    }

    /// Where undecidable messages wait for an operator.
    pub fn parked_queue(&self) -> String {
        format!("{}.close.parked", self.prefix)
    }

    /// The tier queue for a delay (the TTL is in the name: redeclaring a queue with
    /// other arguments fails).
    pub fn delay_queue(&self, tier: Duration) -> String {
        format!("{}.close.delay.{}ms", self.prefix, tier.as_millis())
    }

    /// The topic exchange decisions are announced on.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// A bounded copy of every event (so an event is never unroutable, and for audits).
    pub fn events_audit_queue(&self) -> String {
        format!("{}.events.audit", self.prefix)
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        match self.queue_type {
            QueueType::Classic => args.insert("x-queue-type".into(), string("classic")),
            QueueType::Quorum => args.insert("x-queue-type".into(), string("quorum")),
        };
        args
    }

    fn dead_letter_args(&self, args: &mut FieldTable, routing_key: &str) {
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.close_exchange()),
        );
        args.insert("x-dead-letter-routing-key".into(), string(routing_key));
        if self.queue_type == QueueType::Quorum {
            args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
            args.insert("x-overflow".into(), string("reject-publish"));
        }
    }

    /// Every queue of this topology: the close, parking and audit queues and one per tier,
    /// at most [`MAX_QUEUES`].
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.close_queue(),
            self.parked_queue(),
            self.events_audit_queue(),
        ];
        queues.extend(self.tiers.all().iter().map(|t| self.delay_queue(*t)));
        queues
    }

    /// Declares everything, durable, in dependency order (a dead-letter exchange must
    /// exist before the queues pointing at it). Idempotent.
    ///
    /// One declaration at a time, each awaited before the next, and at most
    /// [`MAX_QUEUES`] queues: every worker declares the topology at each (re)connect, and
    /// a burst of quorum-queue declarations can wedge a broker.
    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        timed(
            "declare close exchange",
            channel.exchange_declare(
                self.close_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        timed(
            "declare events exchange",
            channel.exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;

        let mut due_args = self.queue_args();
        if self.queue_type == QueueType::Quorum {
            due_args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT),
            );
            self.dead_letter_args(&mut due_args, PARKED_KEY);
        }
        self.declare_queue(channel, &self.close_queue(), due_args)
            .await?;
        self.declare_queue(channel, &self.parked_queue(), self.queue_args())
            .await?;
        self.bind(
            channel,
            &self.close_queue(),
            &self.close_exchange(),
            DUE_KEY,
        )
        .await?;
        self.bind(
            channel,
            &self.parked_queue(),
            &self.close_exchange(),
            PARKED_KEY,
        )
        .await?;

        for tier in self.tiers.all() {
            let mut args = self.queue_args();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(tier.as_millis() as i64),
            );
            self.dead_letter_args(&mut args, DUE_KEY);
            self.declare_queue(channel, &self.delay_queue(*tier), args)
                .await?;
        }

        let mut audit_args = self.queue_args();
        audit_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(EVENTS_AUDIT_MAX_LENGTH),
        );
        if self.queue_type == QueueType::Classic {
            audit_args.insert("x-overflow".into(), string("drop-head"));
        }
        self.declare_queue(channel, &self.events_audit_queue(), audit_args)
            .await?;
        self.bind(
            channel,
            &self.events_audit_queue(),
            &self.events_exchange(),
            "#",
        )
        .await?;
        Ok(())
    }

    /// Deletes every queue and exchange of this topology (tests and demos clean up with it).
    pub async fn delete(&self, channel: &Channel) -> Result<(), BrokerError> {
        for queue in self.queues() {
            timed(
                "delete queue",
                channel.queue_delete(queue.into(), QueueDeleteOptions::default()),
            )
            .await?;
        }
        for exchange in [self.close_exchange(), self.events_exchange()] {
            timed(
                "delete exchange",
                channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()),
            )
            .await?;
        }
        Ok(())
    }

    async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        args: FieldTable,
    ) -> Result<(), BrokerError> {
        let options = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        match timed(
            "declare queue",
            channel.queue_declare(name.into(), options, args),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(BrokerError::Amqp { source, .. }) if precondition_failed(&source).is_some() => {
                Err(BrokerError::QueueMismatch {
                    queue: name.to_owned(),
                    reply: precondition_failed(&source).unwrap_or_default(),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn bind(
        &self,
        channel: &Channel,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), BrokerError> {
        timed(
            "bind queue",
            channel.queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Turns a header value into text, for the parked-message view.
pub fn header_text(headers: &FieldTable, key: &str) -> Option<String> {
    let key: ShortString = key.into();
    match headers.inner().get(&key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `amq.x` passed, and the broker then refused every declaration.
    #[test]
    fn the_brokers_reserved_prefix_is_refused() {
        for bad in ["amq", "amq.x", "amq.", "amq.order", "", "bad prefix!"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(check_prefix("amq.x").unwrap_err().contains("reserved"));
        for good in ["order", "amqx", "amq_x", "amq-x", "AMQ.x", "shop.amq.x"] {
            assert_eq!(check_prefix(good), Ok(()), "{good:?}");
        }
    }

    /// The queues a worker declares are bounded whatever the
    /// configuration says.
    #[test]
    fn the_declared_queues_are_bounded() {
        let extra: Vec<Duration> = (1..=crate::broker::tiers::MAX_EXTRA_TIERS as u64)
            .map(|i| Duration::from_millis(600 * i + 1))
            .collect();
        let tiers = DelayTiers::standard_with(&extra).unwrap();
        let topology = Topology::new("order", tiers, QueueType::Quorum);
        let queues = topology.queues();
        assert_eq!(queues.len(), MAX_QUEUES);
    }
}
