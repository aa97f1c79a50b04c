//! The library's create path on real Postgres and RabbitMQ: one order and a batch are
//! written with their close schedules, published, and their outbox rows removed; a batch
//! with one bad or duplicate order writes nothing and names the culprit.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use crate::common::{TestEnv, eventually};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::closer::{Closer, CreateError, Due, MAX_BATCH, NewOrder};
use order_closer::db::{self, schema::orders};
use order_closer::invalid::InvalidOrder;

async fn count_orders(env: &TestEnv, prefix: &str) -> i64 {
    let mut conn = db::conn(&env.pool).await.unwrap();
    orders::table
        .filter(orders::out_trade_no.like(format!("{prefix}%")))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

fn batch(env: &TestEnv, prefix: &str, n: usize) -> Vec<NewOrder> {
    (0..n)
        .map(|i| {
            NewOrder::new(
                "alipay",
                env.no(&format!("{prefix}{i}")),
                100 + i as i64,
                Due::After(Duration::from_secs(3600)),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_is_written_published_and_its_outbox_rows_removed() {
    let env = TestEnv::new(&[]).await;
    let new = batch(&env, "batch", 250);
    let created = env.closer.create_orders(&new).await.expect("batch created");
    assert_eq!(created.len(), 250);
    for (c, n) in created.iter().zip(&new) {
        assert_eq!(c.order.out_trade_no, n.out_trade_no, "in the given order");
        assert_eq!(c.order.amount_minor, n.amount_minor);
        assert!(c.published);
    }
    let mut ids: Vec<i64> = created.iter().map(|c| c.order.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 250, "distinct ids");
    assert_eq!(count_orders(&env, "batch").await, 250);

    // One single order after the batch takes an id from the same block mechanism.
    let single = env
        .create(&env.no("single"), 500, Duration::from_secs(3600))
        .await;
    assert!(!ids.contains(&single.id));

    // Every close message is in a delay tier; the outbox rows go in the background.
    let drained = eventually(Duration::from_secs(10), || async {
        (env.outbox_backlog().await == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "outbox rows left behind");
    let mut scheduled = 0;
    for tier in env.topology.tiers().all() {
        scheduled += env.queue_len(&env.topology.delay_queue(*tier)).await;
    }
    assert_eq!(scheduled, 251);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_a_bad_or_duplicate_order_writes_nothing_and_names_it() {
    let env = TestEnv::new(&[]).await;

    let mut bad = batch(&env, "bad", 5);
    bad[3].amount_minor = 0;
    let err = env.closer.create_orders(&bad).await.unwrap_err();
    match &err {
        CreateError::Invalid(InvalidOrder::InBatch { index, reason, .. }) => {
            assert_eq!(*index, 3);
            assert_eq!(**reason, InvalidOrder::AmountNotPositive(0));
            assert!(err.to_string().contains("order #3"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(count_orders(&env, "bad").await, 0);

    let existing = env.no("dup2");
    env.create(&existing, 100, Duration::from_secs(3600)).await;
    let dup = batch(&env, "dup", 5);
    let err = env.closer.create_orders(&dup).await.unwrap_err();
    match &err {
        CreateError::Duplicate(no) => assert_eq!(no, &existing),
        other => panic!("{other:?}"),
    }
    assert_eq!(count_orders(&env, "dup").await, 1, "only the earlier order");

    // The same number twice in one batch.
    let mut twice = batch(&env, "twice", 3);
    twice[2].out_trade_no = twice[0].out_trade_no.clone();
    assert!(matches!(
        env.closer.create_orders(&twice).await,
        Err(CreateError::Duplicate(no)) if no == twice[0].out_trade_no
    ));
    assert_eq!(count_orders(&env, "twice").await, 0);

    let too_many =
        vec![NewOrder::new("alipay", "x", 1, Due::After(Duration::from_secs(60))); MAX_BATCH + 1];
    assert!(matches!(
        env.closer.create_orders(&too_many).await,
        Err(CreateError::Invalid(InvalidOrder::TooMany { count, max }))
            if count == MAX_BATCH + 1 && max == MAX_BATCH
    ));
    assert!(env.closer.create_orders(&[]).await.unwrap().is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_broker_the_batch_is_left_to_the_relay() {
    let env = TestEnv::new(&[]).await;
    let offline = Closer::without_broker(env.pool.clone(), order_closer::gateway::rules::CHANNELS);
    let created = offline
        .create_orders(&batch(&env, "offline", 20))
        .await
        .unwrap();
    assert!(created.iter().all(|c| !c.published));
    assert_eq!(env.outbox_backlog().await, 20, "every close schedule kept");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_are_written_together_and_only_a_duplicate_fails() {
    let env = TestEnv::new(&[]).await;
    let taken = env.no("taken");
    env.create(&taken, 100, Duration::from_secs(3600)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        // Order 30 reuses a number that exists: its group fails and is written again one
        // order at a time.
        let no = if i == 30 {
            taken.clone()
        } else {
            env.no(&format!("conc{i}"))
        };
        let closer = env.closer.clone();
        tasks.spawn(async move {
            let result = closer
                .create_order(NewOrder::new(
                    "alipay",
                    &no,
                    100,
                    Due::After(Duration::from_secs(3600)),
                ))
                .await;
            (no, result)
        });
    }
    let mut created = 0;
    while let Some(done) = tasks.join_next().await {
        let (no, result) = done.unwrap();
        match result {
            Ok(c) => {
                assert_eq!(c.order.out_trade_no, no);
                assert!(c.published);
                created += 1;
            }
            Err(CreateError::Duplicate(dup)) => assert_eq!(dup, taken),
            Err(other) => panic!("{no}: {other}"),
        }
    }
    assert_eq!(created, 59);
    assert_eq!(count_orders(&env, "conc").await, 59);
    env.cleanup().await;
}
