//! Queue and exchange names, and their idempotent declaration.
//!
//! ```text
//! publish ──► {p}.close.delay.<ms>ms (TTL, no consumer) ──dead-letter──► {p}.close ──due──► {p}.close.due ──► workers
//!                                                                           └──parked──► {p}.close.parked
//! decisions ──► {p}.events (topic: order.closed, order.paid, order.anomaly.*) ──#──► {p}.events.audit
//! ```
//!
//! # Delivery limits and dead-letter cycles
//!
//! A quorum queue counts how often a message comes back (a `nack` or `reject` with
//! requeue, a consumer's channel or connection lost while holding it) and, past its
//! delivery limit, dead-letters it to its target, or **drops** it when it has none. What
//! the argument `x-delivery-limit` means depends on the version (read in RabbitMQ's
//! `rabbit_quorum_queue.erl` and `rabbit_fifo.erl`, tags v3.10.0 to v4.3.0):
//!
//! | `x-delivery-limit` | 3.10, 3.13 | 4.0 to 4.2 | 4.3 and later |
//! |---|---|---|---|
//! | absent | no limit | 20 | 20 |
//! | negative (`-1`) | dead-lettered at the **first** return | no limit | no limit |
//! | `n >= 0` | dead-lettered at return `n + 1` | the same, every return counts | the same, but a `nack` no longer counts (a `reject` and a lost consumer do) |
//!
//! Only a non-negative value means the same everywhere, so that is the only kind
//! declared ([`DeliveryLimits`] holds `u32`s). Classic queues have no delivery limit on
//! any version (they refuse the argument). What each queue does past its limit:
//!
//! - **close queue** (quorum): [`QUORUM_DELIVERY_LIMIT`] returns, then the broker
//!   dead-letters the message to the parking queue (at least once), where its `x-death`
//!   says `delivery_limit` and `reconcile parked` shows it so. Classic: no limit; it is
//!   redelivered until a worker settles it.
//! - **tiers**: no consumer, so nothing comes back. A message someone takes by hand and
//!   returns past 4.x's default is dead-lettered to the close queue like an expired one:
//!   an early arrival the worker forwards again, never a drop.
//! - **parking queue**: no dead-letter target, and none is possible: its only safe
//!   destination would be itself, a cycle the broker drops at once (it records the death
//!   before it looks for cycles). No limit argument either: no value means "no limit" on
//!   both 3.x and 4.x, and changing an existing queue's arguments makes every process
//!   that declares it (the shop's library too) fail until the queue is re-created.
//!   Instead `reconcile parked` never returns a message it keeps: it parks a fresh copy
//!   and acknowledges the one it took, so no number of listings counts toward any limit.
//!   On 4.x only a `reconcile parked` losing its connection while it holds a message (or
//!   someone returning it by hand) counts, 20 times in a row before a listing completes;
//!   docs/operations.md gives the policy that lifts even that.
//! - **audit queue**: a bounded copy nothing of ours consumes (the oldest events are
//!   dropped past [`EVENTS_AUDIT_MAX_LENGTH`]); on 4.x an event a consumer of yours
//!   returns 20 times is dropped too. Consumers that need every event bind a queue of
//!   their own to the events exchange.
//!
//! A message the broker dead-letters into a queue it was already dead-lettered from is
//! dropped as a cycle unless a `rejected` death lies between (3.x reads this from the
//! message's `x-death` header, even one a client set; 4.x from its own record, ignoring
//! a client's `x-death`). Every publish of ours is fresh, with `oc-*` headers only (a
//! forward, a retry, a park, a re-park, a requeue by `reconcile parked`), so a message's
//! deaths are at most a tier (`expired`) then the close queue (`delivery_limit`): no
//! queue twice, on any version. The unit tests check that the declared dead-letter
//! targets form no cycle.

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
/// Quorum queues only: returns of one message the close queue allows before the broker
/// dead-letters it to the parking queue (a message that crashes workers cannot loop for
/// ever); the same on every version (see the module's table).
pub const QUORUM_DELIVERY_LIMIT: u32 = 50;
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

/// The `x-delivery-limit` of the quorum queues that declare one: a count, never
/// negative (a negative value means "no limit" on 4.x but "at the first return" on 3.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryLimits {
    /// The close queue's ([`QUORUM_DELIVERY_LIMIT`]).
    pub close: u32,
    /// The parking queue's: none by default (see the module's notes). Tests set a small
    /// one to see on 3.x what 4.x's default of 20 does.
    pub parked: Option<u32>,
}

impl Default for DeliveryLimits {
    fn default() -> Self {
        Self {
            close: QUORUM_DELIVERY_LIMIT,
            parked: None,
        }
    }
}

/// The names and shape of one deployment's queues (a prefix lets deployments share a vhost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    tiers: DelayTiers,
    queue_type: QueueType,
    limits: DeliveryLimits,
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
            limits: DeliveryLimits::default(),
        }
    }

    /// The same topology with other delivery limits (tests: small ones, to see the
    /// broker dead-letter or drop a message after a few returns). Quorum queues only;
    /// classic queues have none.
    pub fn with_delivery_limits(mut self, limits: DeliveryLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The delivery limits quorum queues are declared with.
    pub fn delivery_limits(&self) -> DeliveryLimits {
        self.limits
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

    fn delivery_limit_arg(&self, args: &mut FieldTable, limit: u32) {
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(limit)),
            );
        }
    }

    /// The close queue's arguments: on quorum, the delivery limit and the parking queue
    /// as its dead-letter target.
    fn close_args(&self) -> FieldTable {
        let mut args = self.queue_args();
        if self.queue_type == QueueType::Quorum {
            self.delivery_limit_arg(&mut args, self.limits.close);
            self.dead_letter_args(&mut args, PARKED_KEY);
        }
        args
    }

    /// The parking queue's arguments: no dead-letter target (see the module's notes).
    fn parked_args(&self) -> FieldTable {
        let mut args = self.queue_args();
        if let Some(limit) = self.limits.parked {
            self.delivery_limit_arg(&mut args, limit);
        }
        args
    }

    /// A tier's arguments: its TTL, and the close queue as its dead-letter target.
    fn tier_args(&self, tier: Duration) -> FieldTable {
        let mut args = self.queue_args();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(tier.as_millis() as i64),
        );
        self.dead_letter_args(&mut args, DUE_KEY);
        args
    }

    /// The audit queue's arguments: bounded, the oldest dropped first (`drop-head`, which
    /// quorum queues do by default).
    fn audit_args(&self) -> FieldTable {
        let mut args = self.queue_args();
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(EVENTS_AUDIT_MAX_LENGTH),
        );
        if self.queue_type == QueueType::Classic {
            args.insert("x-overflow".into(), string("drop-head"));
        }
        args
    }

    /// Every queue with the arguments it is declared with, in declaration order.
    fn declarations(&self) -> Vec<(String, FieldTable)> {
        let mut queues = vec![
            (self.close_queue(), self.close_args()),
            (self.parked_queue(), self.parked_args()),
        ];
        queues.extend(
            self.tiers
                .all()
                .iter()
                .map(|t| (self.delay_queue(*t), self.tier_args(*t))),
        );
        queues.push((self.events_audit_queue(), self.audit_args()));
        queues
    }

    /// Every queue of this topology: the close, parking and audit queues and one per tier,
    /// at most [`MAX_QUEUES`].
    pub fn queues(&self) -> Vec<String> {
        self.declarations()
            .into_iter()
            .map(|(queue, _)| queue)
            .collect()
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

        for (queue, args) in self.declarations() {
            self.declare_queue(channel, &queue, args).await?;
        }
        for (queue, exchange, key) in [
            (self.close_queue(), self.close_exchange(), DUE_KEY),
            (self.parked_queue(), self.close_exchange(), PARKED_KEY),
            (self.events_audit_queue(), self.events_exchange(), "#"),
        ] {
            self.bind(channel, &queue, &exchange, key).await?;
        }
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

    fn arg(args: &FieldTable, key: &str) -> Option<AMQPValue> {
        args.inner().get(&ShortString::from(key)).cloned()
    }

    fn topologies() -> Vec<Topology> {
        [QueueType::Classic, QueueType::Quorum]
            .into_iter()
            .map(|kind| Topology::new("order", DelayTiers::default(), kind))
            .collect()
    }

    /// Past its limit a close message is parked by the broker, on quorum queues; classic
    /// queues refuse the argument (and have no limit).
    #[test]
    fn the_close_queue_parks_what_passes_its_delivery_limit() {
        let quorum = Topology::new("order", DelayTiers::default(), QueueType::Quorum);
        let args = quorum.close_args();
        assert_eq!(
            arg(&args, "x-delivery-limit"),
            Some(AMQPValue::LongLongInt(50))
        );
        assert_eq!(
            arg(&args, "x-dead-letter-exchange"),
            Some(string("order.close"))
        );
        assert_eq!(
            arg(&args, "x-dead-letter-routing-key"),
            Some(string(PARKED_KEY))
        );
        assert_eq!(
            arg(&args, "x-dead-letter-strategy"),
            Some(string("at-least-once"))
        );
        let classic = Topology::new("order", DelayTiers::default(), QueueType::Classic);
        for (queue, args) in classic.declarations() {
            assert_eq!(arg(&args, "x-delivery-limit"), None, "{queue}");
        }
    }

    /// The parking queue keeps the broker's default unless a test asks (see the module's
    /// notes): the arguments of a queue every version has already declared never change.
    #[test]
    fn only_the_close_queue_declares_a_delivery_limit_unless_a_test_asks() {
        for topology in topologies() {
            for (queue, args) in topology.declarations() {
                let declared = arg(&args, "x-delivery-limit").is_some();
                let expected =
                    queue == topology.close_queue() && topology.queue_type() == QueueType::Quorum;
                assert_eq!(declared, expected, "{queue}");
            }
        }
        let small = DeliveryLimits {
            close: 2,
            parked: Some(3),
        };
        let quorum = Topology::new("t", DelayTiers::default(), QueueType::Quorum)
            .with_delivery_limits(small);
        assert_eq!(
            arg(&quorum.parked_args(), "x-delivery-limit"),
            Some(AMQPValue::LongLongInt(3))
        );
        assert_eq!(
            arg(&quorum.close_args(), "x-delivery-limit"),
            Some(AMQPValue::LongLongInt(2))
        );
        assert_eq!(arg(&quorum.parked_args(), "x-dead-letter-exchange"), None);
    }

    /// Where a queue dead-letters to: the queue its target exchange and routing key
    /// reach (the close exchange is direct, bound by `due` and `parked`).
    fn dead_letter_target(topology: &Topology, args: &FieldTable) -> Option<String> {
        let exchange = arg(args, "x-dead-letter-exchange")?;
        assert_eq!(exchange, string(&topology.close_exchange()));
        match arg(args, "x-dead-letter-routing-key")? {
            AMQPValue::LongString(key) if key.to_string() == DUE_KEY => {
                Some(topology.close_queue())
            }
            AMQPValue::LongString(key) if key.to_string() == PARKED_KEY => {
                Some(topology.parked_queue())
            }
            other => panic!("unexpected dead-letter routing key {other:?}"),
        }
    }

    /// The broker drops a message dead-lettered into a queue it was dead-lettered from
    /// before (no `rejected` between): following the declared targets from any queue
    /// never meets a queue twice, so only a publish carrying an old `x-death` could make
    /// a cycle, and none of ours does.
    #[test]
    fn the_declared_dead_letter_targets_form_no_cycle() {
        for topology in topologies() {
            let targets: std::collections::HashMap<String, Option<String>> = topology
                .declarations()
                .into_iter()
                .map(|(queue, args)| {
                    let target = dead_letter_target(&topology, &args);
                    (queue, target)
                })
                .collect();
            for start in targets.keys() {
                let mut seen = vec![start.clone()];
                let mut at = start.clone();
                while let Some(Some(next)) = targets.get(&at) {
                    assert!(
                        !seen.contains(next),
                        "{:?}: a dead-letter cycle {seen:?} -> {next}",
                        topology.queue_type()
                    );
                    seen.push(next.clone());
                    at = next.clone();
                }
                assert!(seen.len() <= 3, "{seen:?}");
            }
            assert_eq!(targets[&topology.parked_queue()], None);
            assert_eq!(targets[&topology.events_audit_queue()], None);
        }
    }
}
