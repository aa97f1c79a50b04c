//! Two client-side races of a confirm-mode channel shared by many tasks, shown against a
//! real broker. Both come from lapin 4.12: a publish takes its confirm number
//! before its frames are queued (under another lock), and a `basic.return` is attached to
//! whichever confirm completes next, not to the publish it belongs to.
//!
//! - **Confirm numbering:** concurrent publishes alternate a normal queue with one that
//!   refuses everything (`x-max-length=0`, `x-overflow=reject-publish`). Every publish to
//!   the refusing queue must read as a nack, every other one as an ack; anything else is a
//!   swap.
//! - **Returns:** mandatory publishes alternate an existing queue with a routing key that
//!   names no queue. A publish to the missing key must never read as a clean ack.
//!
//! The queues are exclusive to the test's connection, so the broker deletes them when the
//! test ends, whether it passed or not.

use std::sync::Arc;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use order_closer::broker::publisher::Publisher;
use order_closer::broker::tiers::DelayTiers;
use order_closer::broker::topology::{QueueType, Topology};
use order_closer::broker::{self, BrokerError};
use rand::Rng;

/// Publishes per round, and rounds: enough for the races to show on a 2-core machine
/// (before the fix, every run of this test saw swaps).
const PUBLISHES: usize = 4000;
const ROUNDS: usize = 3;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn tag() -> String {
    format!("{:08x}", rand::rng().random::<u32>())
}

async fn exclusive_queue(channel: &lapin::Channel, name: &str, args: FieldTable) {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("declare queue");
}

/// Publishes `PUBLISHES` messages at once on one publisher from many tasks, the even ones
/// to `even`, the odd ones to `odd`; returns each result in order.
async fn publish_alternating(
    publisher: &Publisher,
    even: &str,
    odd: &str,
) -> Vec<Result<(), BrokerError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PUBLISHES {
        let publisher = publisher.clone();
        let key = if i % 2 == 0 { even } else { odd }.to_owned();
        tasks.spawn(async move {
            let body = format!("{{\"n\":{i}}}");
            let result = publisher
                .publish("", &key, body.as_bytes(), FieldTable::default())
                .await;
            (i, result)
        });
    }
    let mut results: Vec<Option<Result<(), BrokerError>>> = (0..PUBLISHES).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, result) = done.expect("publish task");
        results[i] = Some(result);
    }
    results.into_iter().map(|r| r.expect("result")).collect()
}

async fn publisher(connection: &lapin::Connection) -> Publisher {
    let topology = Topology::new(
        format!("race-{}", tag()),
        DelayTiers::default(),
        QueueType::Classic,
    );
    Publisher::open(connection, Arc::new(topology))
        .await
        .expect("publisher")
}

/// A connection, a channel to declare with, and a fresh name stem.
async fn connect() -> (lapin::Connection, lapin::Channel, String) {
    let connection = broker::connect(&amqp_url(), "test publish races")
        .await
        .expect("broker");
    let setup = connection.create_channel().await.unwrap();
    (connection, setup, format!("race-{}", tag()))
}

/// Every publish of every round: (publish number, whether it went to `odd`, result).
async fn rounds(
    publisher: &Publisher,
    even: &str,
    odd: &str,
) -> Vec<(usize, bool, Result<(), BrokerError>)> {
    let mut all = Vec::new();
    for _ in 0..ROUNDS {
        let results = publish_alternating(publisher, even, odd).await;
        all.extend(
            results
                .into_iter()
                .enumerate()
                .map(|(i, r)| (i, i % 2 == 1, r)),
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_confirms_are_never_swapped_between_publishes() {
    let (connection, setup, stem) = connect().await;
    let accepting = format!("{stem}-accepting");
    let refusing = format!("{stem}-refusing");
    exclusive_queue(&setup, &accepting, FieldTable::default()).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    exclusive_queue(&setup, &refusing, args).await;

    let publisher = publisher(&connection).await;
    let mut swapped = 0;
    for (i, to_refusing, result) in rounds(&publisher, &accepting, &refusing).await {
        let right = match result {
            Ok(()) => !to_refusing,
            Err(BrokerError::Nacked { .. }) => to_refusing,
            Err(other) => panic!("publish {i}: unexpected {other}"),
        };
        swapped += usize::from(!right);
    }
    assert_eq!(
        swapped,
        0,
        "{swapped} of {} confirms were reported for the wrong publish",
        PUBLISHES * ROUNDS
    );
    let _ = connection.close(200, "test done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_returned_publish_never_reads_as_a_clean_ack() {
    let (connection, setup, stem) = connect().await;
    let existing = format!("{stem}-existing");
    let missing = format!("{stem}-missing");
    exclusive_queue(&setup, &existing, FieldTable::default()).await;

    let publisher = publisher(&connection).await;
    let mut returned_read_as_clean = 0;
    let mut returned = 0;
    for (i, to_missing, result) in rounds(&publisher, &existing, &missing).await {
        match result {
            Ok(()) if to_missing => returned_read_as_clean += 1,
            Ok(()) => {}
            Err(BrokerError::Returned { .. }) => returned += 1,
            Err(other) => panic!("publish {i}: unexpected {other}"),
        }
    }
    assert_eq!(
        returned_read_as_clean, 0,
        "{returned_read_as_clean} publishes to a missing queue read as delivered"
    );
    // A return may fail publishes that were in flight beside it (they are retried by
    // their callers), but never fewer than the returned ones.
    assert!(returned >= PUBLISHES / 2 * ROUNDS, "{returned} returns");
    let _ = connection.close(200, "test done".into()).await;
}
