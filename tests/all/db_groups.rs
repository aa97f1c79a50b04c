//! Group commit on real Postgres: concurrent reads and decisions are run as groups, a
//! failing member fails alone, two requests about one row never share a group, and
//! grouped decisions are written exactly like single ones (one audit row, one event
//! naming its decision, an anomaly where the amount differs).
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::common::TestEnv;
use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use order_closer::db::batch::{Batcher, Job};
use order_closer::db::schema::{anomalies, decisions, outbox};
use order_closer::db::{self, DbError};
use order_closer::decide::{AttemptInfo, Mode, Outcome};
use order_closer::order::OrderStatus;
use tokio::task::JoinSet;

/// Divides 1000 by each value in one statement (a zero fails the whole group), and
/// remembers every group it was given.
#[derive(Default)]
struct Divide {
    groups: Mutex<Vec<Vec<(i64, i64)>>>,
}

#[derive(QueryableByName)]
struct Quotient {
    #[diesel(sql_type = BigInt)]
    q: i64,
}

#[async_trait]
impl Job for Divide {
    type Item = (i64, i64);
    type Output = i64;

    async fn run(
        &self,
        conn: &mut AsyncPgConnection,
        items: &[(i64, i64)],
    ) -> QueryResult<Vec<i64>> {
        self.groups.lock().unwrap().push(items.to_vec());
        let values: Vec<i64> = items.iter().map(|(_, v)| *v).collect();
        // A little server time per group, so that later callers queue up behind it.
        let rows: Vec<Quotient> = diesel::sql_query(
            "SELECT 1000 / v AS q FROM unnest($1::bigint[]) WITH ORDINALITY AS t(v, n), \
             pg_sleep(0.02) ORDER BY n",
        )
        .bind::<Array<BigInt>, _>(values)
        .load(conn)
        .await?;
        Ok(rows.into_iter().map(|r| r.q).collect())
    }

    fn key(&self, item: &(i64, i64)) -> Option<i64> {
        Some(item.0)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_form_a_failing_member_fails_alone_and_equal_keys_never_share_a_group() {
    let env = TestEnv::new(&[]).await;
    let batcher = Batcher::new(env.pool.clone(), Divide::default(), 32);
    let mut tasks = JoinSet::new();
    // Keys 0..60, each submitted twice; the value 0 (key 7's first request) divides by zero.
    for round in 0..2i64 {
        for key in 0..60i64 {
            let batcher = batcher.clone();
            let value = if key == 7 && round == 0 { 0 } else { key + 1 };
            tasks.spawn(async move { ((key, value), batcher.submit((key, value)).await) });
        }
    }
    let mut answers = Vec::new();
    while let Some(done) = tasks.join_next().await {
        answers.push(done.unwrap());
    }
    assert_eq!(answers.len(), 120);
    for ((key, value), answer) in &answers {
        match (value, answer) {
            (0, Err(DbError::Query(e))) => {
                assert!(e.to_string().contains("division by zero"), "{e}")
            }
            (0, other) => panic!("key {key}: the zero divisor answered {other:?}"),
            (v, Ok(q)) => assert_eq!(*q, 1000 / v, "key {key}"),
            (_, Err(e)) => panic!("key {key} failed with its group: {e}"),
        }
    }
    let groups = batcher.job().groups.lock().unwrap().clone();
    assert!(
        groups.iter().any(|g| g.len() > 1),
        "no group formed: {groups:?}"
    );
    assert!(
        groups.iter().all(|g| g.len() <= 32),
        "a group over the limit"
    );
    for group in &groups {
        let mut keys: Vec<i64> = group.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(
            keys.len(),
            group.len(),
            "equal keys in one group: {group:?}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_decisions_are_each_written_once_with_their_event_and_anomaly() {
    let env = TestEnv::new(&[]).await;
    const N: usize = 90;
    let mut orders = Vec::new();
    for i in 0..N {
        let no = env.no(&format!("g{i}"));
        let order = env.create(&no, 1000, Duration::from_millis(1)).await;
        match i % 3 {
            0 => {
                env.buyers
                    .buyer(&no)
                    .scans(1000)
                    .pays()
                    .send()
                    .await
                    .unwrap();
            }
            1 => {
                env.buyers
                    .buyer(&no)
                    .scans(900)
                    .pays()
                    .send()
                    .await
                    .unwrap();
            }
            _ => {}
        }
        orders.push((i, order));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Every order decided twice at once (a redelivery racing the first delivery).
    let decider = env.decider("grouped");
    let mut tasks = JoinSet::new();
    for _ in 0..2 {
        for (i, order) in &orders {
            let decider = decider.clone();
            let (i, id, no) = (*i, order.id, order.out_trade_no.clone());
            tasks.spawn(async move {
                let attempt = AttemptInfo {
                    number: 0,
                    first_seen: None,
                    not_before: None,
                };
                (i, decider.decide(id, Some(&no), attempt, Mode::Apply).await)
            });
        }
    }
    let mut decided: HashMap<usize, Vec<Outcome>> = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, outcome) = done.unwrap();
        decided
            .entry(i)
            .or_default()
            .push(outcome.expect("database available"));
    }

    let mut conn = db::conn(&env.pool).await.unwrap();
    let history: Vec<(i64, i64, String)> = decisions::table
        .select((decisions::id, decisions::order_id, decisions::outcome))
        .load(&mut conn)
        .await
        .unwrap();
    let events: Vec<(String, String)> = outbox::table
        .filter(outbox::kind.eq("event"))
        .select((outbox::routing_key, outbox::payload))
        .load(&mut conn)
        .await
        .unwrap();
    let anomaly_orders: Vec<Option<i64>> = anomalies::table
        .select(anomalies::order_id)
        .load(&mut conn)
        .await
        .unwrap();

    for (i, order) in &orders {
        let expected = if i % 3 == 2 {
            OrderStatus::Closed
        } else {
            OrderStatus::Paid
        };
        let outcomes = &decided[i];
        let winners: Vec<i64> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Decided {
                    status,
                    decision_id,
                    ..
                } => {
                    assert_eq!(*status, expected, "order {i}");
                    Some(*decision_id)
                }
                Outcome::Settled(s) | Outcome::LostRace(s) => {
                    assert_eq!(*s, expected, "order {i}");
                    None
                }
                other => panic!("order {i}: unexpected outcome {other:?}"),
            })
            .collect();
        assert_eq!(winners.len(), 1, "order {i} decided {outcomes:?}");
        let rows: Vec<&(i64, i64, String)> =
            history.iter().filter(|(_, o, _)| *o == order.id).collect();
        assert_eq!(rows.len(), 1, "order {i}: audit rows {rows:?}");
        assert_eq!(rows[0].0, winners[0]);
        assert_eq!(env.order(&order.out_trade_no).await.status(), expected);

        // Its event names its decision.
        let key = match expected {
            OrderStatus::Paid => "order.paid",
            _ => "order.closed",
        };
        let mine: Vec<serde_json::Value> = events
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, p)| serde_json::from_str::<serde_json::Value>(p).unwrap())
            .filter(|e| e["order_id"] == order.id)
            .collect();
        assert_eq!(mine.len(), 1, "order {i}: events {mine:?}");
        assert_eq!(mine[0]["event_id"], format!("{key}:{}", winners[0]));
        assert_eq!(mine[0]["status"], expected.as_str());

        let anomalies = anomaly_orders
            .iter()
            .filter(|o| **o == Some(order.id))
            .count();
        assert_eq!(anomalies, usize::from(i % 3 == 1), "order {i}: anomalies");
    }
    let anomaly_events = events
        .iter()
        .filter(|(k, _)| k == "order.anomaly.amount_mismatch")
        .count();
    assert_eq!(anomaly_events, N / 3);
    drop(conn);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_fails_every_member_as_unavailable() {
    let env = TestEnv::new(&[]).await;
    let unreachable = db::pool("postgres://nobody@127.0.0.1:1/none", 2).unwrap();
    let batcher = Batcher::new(unreachable, Divide::default(), 8);
    let answers = futures_util::future::join_all((0..5).map(|k| batcher.submit((k, 1)))).await;
    for answer in answers {
        assert!(matches!(answer, Err(DbError::Unavailable(_))), "{answer:?}");
    }
    env.cleanup().await;
}

/// Answers every group of more than one with a broken-connection error (outcome unknown),
/// panics on the item -1, and records the groups it was given.
#[derive(Default)]
struct Flaky {
    groups: Mutex<Vec<Vec<i64>>>,
}

#[async_trait]
impl Job for Flaky {
    type Item = i64;
    type Output = i64;

    async fn run(&self, _conn: &mut AsyncPgConnection, items: &[i64]) -> QueryResult<Vec<i64>> {
        self.groups.lock().unwrap().push(items.to_vec());
        // Long enough for the other callers to queue up behind the first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!items.contains(&-1), "poisoned item");
        if items.len() > 1 {
            return Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UnableToSendCommand,
                Box::new("connection reset mid-statement".to_owned()),
            ));
        }
        Ok(items.to_vec())
    }

    fn key(&self, item: &i64) -> Option<i64> {
        Some(*item % 2)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_with_an_unknown_outcome_is_not_run_again_and_a_panicking_group_fails_alone() {
    let env = TestEnv::new(&[]).await;
    let batcher = Batcher::new(env.pool.clone(), Flaky::default(), 16);
    let answers = futures_util::future::join_all((1..=12).map(|i| batcher.submit(i))).await;
    let groups = batcher.job().groups.lock().unwrap().clone();
    assert!(
        groups.iter().any(|g| g.len() > 1),
        "no group formed: {groups:?}"
    );
    for (i, answer) in (1..=12).zip(&answers) {
        // Each request ran in exactly one group: a member of a group whose outcome is
        // unknown is never run again.
        let runs = groups.iter().filter(|g| g.contains(&i)).count();
        assert_eq!(runs, 1, "request {i} ran {runs} times: {groups:?}");
        let alone = groups.iter().any(|g| g == &vec![i]);
        match answer {
            Ok(v) => assert!(alone && *v == i, "{i}: {answer:?}"),
            Err(e) => assert!(!alone, "{i}: {e}"),
        }
    }

    // A panicking job fails its group; the lane goes on with the next request.
    let poisoned = batcher.submit(-1).await;
    assert!(
        matches!(poisoned, Err(DbError::Unavailable(_))),
        "{poisoned:?}"
    );
    assert_eq!(batcher.submit(9).await.unwrap(), 9);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_held_back_by_their_key_finish_with_several_lanes() {
    let env = TestEnv::new(&[]).await;
    let batcher = Batcher::with_lanes(env.pool.clone(), Divide::default(), 32, 2);
    // Forty requests with one key: each group takes one, the rest are held by a lane.
    let all = futures_util::future::join_all((0..40).map(|i| batcher.submit((7, i + 1))));
    let answers = tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("held requests must not wait for new ones");
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.unwrap(), 1000 / (i as i64 + 1));
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decision_blocked_by_a_row_lock_fails_alone_and_succeeds_later() {
    use diesel_async::AsyncConnection;
    let env = TestEnv::new(&[]).await;
    let blocked = env
        .create(&env.no("locked"), 100, Duration::from_millis(1))
        .await;
    let free = env
        .create(&env.no("free"), 100, Duration::from_millis(1))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Another transaction holds the first order's row.
    let mut holder = db::connect(&env.database_url).await.unwrap();
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let id = blocked.id;
    let holding = tokio::spawn(async move {
        holder
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                diesel::sql_query("SELECT id FROM orders WHERE id = $1 FOR UPDATE")
                    .bind::<BigInt, _>(id)
                    .execute(tx)
                    .await?;
                let _ = locked_tx.send(());
                let _ = release_rx.await;
                Ok(())
            })
            .await
            .unwrap();
    });
    locked_rx.await.unwrap();

    let decider = env.decider("locks");
    let attempt = AttemptInfo {
        number: 0,
        first_seen: None,
        not_before: None,
    };
    let (on_blocked, on_free) = tokio::join!(
        decider.decide(
            blocked.id,
            Some(&blocked.out_trade_no),
            attempt,
            Mode::Apply
        ),
        decider.decide(free.id, Some(&free.out_trade_no), attempt, Mode::Apply),
    );
    assert!(
        on_blocked.is_err(),
        "the locked order waits, then fails: {on_blocked:?}"
    );
    assert!(
        matches!(on_free, Ok(Outcome::Decided { .. })),
        "the other decision is not held up: {on_free:?}"
    );

    let _ = release_tx.send(());
    holding.await.unwrap();
    let again = decider
        .decide(
            blocked.id,
            Some(&blocked.out_trade_no),
            attempt,
            Mode::Apply,
        )
        .await;
    assert!(matches!(again, Ok(Outcome::Decided { .. })), "{again:?}");
    env.cleanup().await;
}
