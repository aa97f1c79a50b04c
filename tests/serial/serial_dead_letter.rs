//! What the broker's own dead-lettering loses when a delay tier expires while the close
//! queue cannot take messages, on classic and on quorum queues, on a throwaway
//! RabbitMQ node of this test's own:
//!
//! - **refused**: a policy makes the close queue refuse everything (`max-length` 0,
//!   `reject-publish`) while the whole tier expires, then is cleared. Deterministic.
//! - **stop_app**: messages keep expiring from the tier while the broker's application is
//!   stopped and started (what the chaos run did when it lost an order).
//!
//! Classic queues dead-letter at most once: an expired message leaves the tier whether or
//! not the target took it. Quorum queues with `x-dead-letter-strategy=at-least-once` keep
//! it until the target confirms. The test asserts that quorum loses nothing in either
//! scenario, that classic loses every refused message (the mechanism), and prints the
//! figures. Stops a broker: runs serially.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::rabbit_node::RabbitNode;
use lapin::options::BasicGetOptions;
use lapin::types::FieldTable;
use order_closer::broker::publisher::Publisher;
use order_closer::broker::tiers::DelayTiers;
use order_closer::broker::topology::{QueueType, Topology};
use order_closer::broker::{self, BrokerError};
use rand::Rng;

const MESSAGES: usize = 3000;
const TIER: Duration = Duration::from_secs(2);
/// How long the broker may take to re-send what it kept (the node's dead-letter worker
/// re-sends unconfirmed messages after 1 s; see `start_node`).
const SETTLE: Duration = Duration::from_secs(30);

fn start_node() -> RabbitNode {
    // The quorum dead-letter worker re-sends unconfirmed messages after this timeout
    // (120 s by default): shortened so the test does not wait minutes.
    RabbitNode::start("[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 1000}]}]")
}

fn kind(queue_type: QueueType) -> &'static str {
    match queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    }
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Refused,
    StopApp,
}

/// What became of the messages of one run, by message number.
#[derive(Debug)]
struct Count {
    /// Publishes the broker confirmed.
    confirmed: BTreeSet<usize>,
    /// Messages that reached the close queue (a publish cut off by the stop may arrive
    /// without its confirm; at-least-once may deliver one twice).
    arrived: Vec<usize>,
}

impl Count {
    fn lost(&self) -> usize {
        let arrived: BTreeSet<usize> = self.arrived.iter().copied().collect();
        self.confirmed.difference(&arrived).count()
    }

    fn duplicates(&self) -> usize {
        let distinct: BTreeSet<usize> = self.arrived.iter().copied().collect();
        self.arrived.len() - distinct.len()
    }
}

/// Makes the close queue refuse every message (a policy: `max-length` 0 with
/// `reject-publish` overflow), and checks that it does. A policy rather than a new queue:
/// deleting a queue that the dead-letter worker is sending to is another failure.
async fn refuse_at_the_close_queue(node: &RabbitNode, publisher: &Publisher, topology: &Topology) {
    close_queue_policy(
        node,
        topology,
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
    );
    let refused = crate::common::eventually(Duration::from_secs(10), || async {
        let probe = publisher
            .publish(
                &topology.close_exchange(),
                "due",
                b"{}",
                FieldTable::default(),
            )
            .await;
        matches!(probe, Err(BrokerError::Nacked { .. })).then_some(())
    })
    .await;
    assert!(refused.is_some(), "the close queue still takes messages");
}

/// Sets the policy `refuse` on the close queue alone.
fn close_queue_policy(node: &RabbitNode, topology: &Topology, definition: &str) {
    let pattern = format!("^{}$", topology.close_queue().replace('.', "\\."));
    tokio::task::block_in_place(|| {
        node.ctl_ok(&[
            "set_policy",
            "--apply-to",
            "queues",
            "refuse",
            &pattern,
            definition,
        ])
    });
}

/// Publishes messages `from..from + n` to the tier, all in flight at once; returns the
/// numbers the broker confirmed (a publish caught by a broker stop is not).
async fn publish(publisher: &Publisher, tier: &str, n: usize, from: usize) -> BTreeSet<usize> {
    let mut sends = tokio::task::JoinSet::new();
    for i in from..from + n {
        let publisher = publisher.clone();
        let tier = tier.to_owned();
        sends.spawn(async move {
            let body = format!("{{\"n\":{i}}}");
            let sent = publisher
                .publish("", &tier, body.as_bytes(), FieldTable::default())
                .await;
            (i, sent.is_ok())
        });
    }
    let mut confirmed = BTreeSet::new();
    while let Some(done) = sends.join_next().await {
        let (i, ok) = done.unwrap();
        if ok {
            confirmed.insert(i);
        }
    }
    confirmed
}

/// Takes every message from the close queue; returns their numbers (probes have none).
async fn drain(channel: &lapin::Channel, queue: &str) -> Vec<usize> {
    let mut numbers = Vec::new();
    while let Ok(Some(message)) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
    {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&message.delivery.data)
            && let Some(n) = v["n"].as_u64()
        {
            numbers.push(n as usize);
        }
    }
    numbers
}

async fn run(node: &RabbitNode, queue_type: QueueType, scenario: Scenario) -> Count {
    let tag = format!("{:08x}", rand::rng().random::<u32>());
    let topology = Arc::new(Topology::new(
        format!("dl-{tag}"),
        DelayTiers::default(),
        queue_type,
    ));
    let url = node.amqp_url();
    let (_connection, publisher) = crate::common::declared(&url, &topology).await;
    let tier = topology.delay_queue(TIER);

    let published = match scenario {
        Scenario::Refused => {
            refuse_at_the_close_queue(node, &publisher, &topology).await;
            let published = publish(&publisher, &tier, MESSAGES, 0).await;
            assert_eq!(published.len(), MESSAGES);
            // Every message expires while the close queue refuses it.
            tokio::time::sleep(TIER + Duration::from_secs(3)).await;
            // Clearing the policy does not lift a quorum queue's `max-length` on 3.10.8
            // (it goes on refusing); a policy with a large limit does.
            close_queue_policy(node, &topology, r#"{"max-length":100000000}"#);
            published
        }
        Scenario::StopApp => {
            // A steady stream: 300 messages every 100 ms for 3 s, so messages expire all
            // through the stop (which begins 2.5 s in, while the first ones expire).
            let stream = {
                let publisher = publisher.clone();
                let tier = tier.clone();
                tokio::spawn(async move {
                    let mut published = BTreeSet::new();
                    for round in 0..30 {
                        published.extend(publish(&publisher, &tier, 100, round * 100).await);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    published
                })
            };
            tokio::time::sleep(TIER + Duration::from_millis(500)).await;
            tokio::task::block_in_place(|| node.ctl_ok(&["stop_app"]));
            tokio::time::sleep(Duration::from_secs(2)).await;
            tokio::task::block_in_place(|| node.ctl_ok(&["start_app"]));
            stream.await.unwrap()
        }
    };

    // Wait for arrivals: quorum queues re-send what the target had not confirmed (their
    // held messages are not in the tier's ready count), classic ones have nothing more.
    let until = Instant::now() + SETTLE;
    let mut last = (0, 0);
    let mut stable_since = Instant::now();
    let mut probe_connection = None;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if probe_connection.is_none() {
            probe_connection = broker::connect(&url, "test probe").await.ok();
        }
        let Some(conn) = &probe_connection else {
            continue;
        };
        let Ok(probe) = conn.create_channel().await else {
            probe_connection = None;
            continue;
        };
        let (Some(arrived), Some(ready)) = (
            crate::common::ready_count(&probe, &topology.close_queue()).await,
            crate::common::ready_count(&probe, &tier).await,
        ) else {
            continue;
        };
        if (arrived, ready) != last {
            last = (arrived, ready);
            stable_since = Instant::now();
        }
        let everything = arrived as usize >= published.len();
        let settled = queue_type == QueueType::Classic
            && ready == 0
            && stable_since.elapsed() > Duration::from_secs(10);
        if everything || settled {
            break;
        }
    }
    let conn = broker::connect(&url, "test drain").await.expect("broker");
    let channel = conn.create_channel().await.unwrap();
    let arrived = drain(&channel, &topology.close_queue()).await;
    let _ = topology.delete(&channel).await;
    if matches!(scenario, Scenario::Refused) {
        tokio::task::block_in_place(|| node.ctl_ok(&["clear_policy", "refuse"]));
    }
    Count {
        confirmed: published,
        arrived,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serial_dead_lettering_while_the_close_queue_cannot_take_messages() {
    let node = tokio::task::spawn_blocking(start_node).await.unwrap();
    let mut rows = Vec::new();
    for scenario in [Scenario::Refused, Scenario::StopApp] {
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            let count = run(&node, queue_type, scenario).await;
            rows.push((scenario, queue_type, count));
        }
    }
    println!("\n===== dead-lettering while the close queue cannot take messages =====");
    println!("scenario   queue type   confirmed   arrived   lost   arrived twice");
    for (scenario, queue_type, c) in &rows {
        println!(
            "{:<10} {:<12} {:>9}   {:>7}   {:>4}   {:>13}",
            format!("{scenario:?}"),
            kind(*queue_type),
            c.confirmed.len(),
            c.arrived.len(),
            c.lost(),
            c.duplicates()
        );
    }
    for (scenario, queue_type, c) in &rows {
        match (scenario, queue_type) {
            (_, QueueType::Quorum) => {
                assert_eq!(c.lost(), 0, "{scenario:?}: quorum queues lost messages");
            }
            (Scenario::Refused, QueueType::Classic) => assert_eq!(
                c.lost(),
                MESSAGES,
                "classic queues dead-letter at most once: every refused message is gone"
            ),
            // How many a stop catches depends on timing; the figures are printed above.
            (Scenario::StopApp, QueueType::Classic) => {
                assert!(c.lost() <= c.confirmed.len());
                assert_eq!(
                    c.duplicates(),
                    0,
                    "classic queues delivered a message twice"
                );
            }
        }
    }
}
