//! Group commit on real Postgres: concurrent reads and decisions are run as groups, a
//! failing member fails alone, two requests about one row never share a group, and
//! grouped decisions are written exactly like single ones (one audit row, one event
//! naming its decision, an anomaly where the amount differs).

mod common;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use common::TestEnv;
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
                env.buyers.scan_and_pay(&no, 1000).await.unwrap();
            }
            1 => {
                env.buyers.scan_and_pay(&no, 900).await.unwrap();
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
