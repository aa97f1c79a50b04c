//! The janitor end to end: an order whose close message vanished from the
//! broker is still decided, by the worker itself; an order waiting in its retry schedule,
//! or parked for an operator, is left alone; concurrent janitors never claim one order
//! twice.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{Observed, TestEnv, eventually};
use chrono::Utc;
use diesel_async::RunQueryDsl;
use lapin::options::QueuePurgeOptions;
use order_closer::db::{self, orders};
use order_closer::order::{Order, OrderStatus};
use order_closer::sim::FaultKind;

/// The janitor settings of these tests: re-drive 10 s past the schedule, look every second.
/// The outbox grace is long: these tests count close messages, and the relay must not
/// publish a second one for an order whose confirmed publish was not yet cleared from the
/// outbox (the harness's 1 s grace, on a loaded machine).
const JANITOR: [(&str, &str); 3] = [
    ("ORDER_CLOSER_JANITOR_AFTER", "10s"),
    ("ORDER_CLOSER_JANITOR_INTERVAL", "1s"),
    ("ORDER_CLOSER_OUTBOX_GRACE", "60s"),
];

/// A counter's value in the worker's metrics (0 when absent).
fn counter(observed: &Observed, series: &str) -> u64 {
    observed
        .metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

const PASSES: &str = "order_closer_janitor_passes_total{result=\"ran\"}";

/// Waits until the janitor has run `n` more full passes, so a negative check ("it did
/// not re-drive") is made after the janitor had every chance to, not after a guess.
async fn passes(observed: &Observed, n: u64) {
    let start = counter(observed, PASSES);
    let ran = eventually(Duration::from_secs(60), || async {
        (counter(observed, PASSES) >= start + n).then_some(())
    })
    .await;
    assert!(ran.is_some(), "the janitor did not run {n} passes");
}

fn redriven(observed: &Observed) -> u64 {
    observed
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("order_closer_redriven_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_whose_message_was_purged_from_its_tier_are_still_decided() {
    let mut env = TestEnv::new(&JANITOR).await;
    let observed = env.start_worker(8, 16);
    // 30 s ahead: the first hop is the 16 s tier, so there is ample time to purge it.
    let (unpaid, paid) = (env.no("purged-unpaid"), env.no("purged-paid"));
    env.buyers.buyer(&unpaid).scans(250).send().await.unwrap();
    env.buyers
        .buyer(&paid)
        .scans(400)
        .pays()
        .send()
        .await
        .unwrap();
    env.create(&unpaid, 250, Duration::from_secs(30)).await;
    env.create(&paid, 400, Duration::from_secs(30)).await;
    let tier = env.topology.delay_queue(Duration::from_secs(16));
    let channel = env.connection.create_channel().await.unwrap();
    let purged = channel
        .queue_purge(tier.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 2, "both close messages were in {tier}");

    let a = env.settled(&unpaid, Duration::from_secs(120)).await;
    let b = env.settled(&paid, Duration::from_secs(120)).await;
    assert_eq!(a.status(), OrderStatus::Closed);
    assert_eq!(a.close_reason.as_deref(), Some("deadline_closed_by_us"));
    assert_eq!(b.status(), OrderStatus::Paid);
    // Decided once each, by the janitor, not before the schedule plus its bound.
    for order in [&a, &b] {
        let history = env.decisions(order.id).await;
        assert_eq!(history.len(), 1, "{history:?}");
        assert!(Utc::now() - order.deadline >= chrono::Duration::seconds(10));
    }
    let metrics = observed.metrics.render();
    assert!(
        metrics.contains("order_closer_redriven_total{verdict=\"closed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("order_closer_redriven_total{verdict=\"paid\"} 1"),
        "{metrics}"
    );
    let events = env.drain_events().await;
    let kinds: BTreeSet<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["order.closed", "order.paid"]));
    env.cleanup().await;
}

/// A worker with the janitor settings and `retry_steps`, and a scanned order due in 1 s
/// whose next `failures` gateway answers are `20000`.
async fn failing_order(retry_steps: &str, failures: u32) -> (TestEnv, Observed, Order) {
    let retry = ("ORDER_CLOSER_RETRY_STEPS", retry_steps);
    // Each failure is one attempt through the tiers: quick retries off.
    let quick = ("ORDER_CLOSER_QUICK_RETRIES", "0");
    let mut env = TestEnv::new(&[JANITOR[0], JANITOR[1], JANITOR[2], retry, quick]).await;
    let observed = env.start_worker(8, 16);
    let no = env.no("failing");
    env.buyers.buyer(&no).scans(100).send().await.unwrap();
    env.buyers
        .fail_next(&no, FaultKind::Busy20000, failures)
        .await
        .unwrap();
    let order = env.create(&no, 100, Duration::from_secs(1)).await;
    (env, observed, order)
}

/// The outcomes recorded for an order, oldest first.
async fn outcomes(env: &TestEnv, order: &Order) -> Vec<String> {
    env.decisions(order.id)
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_waiting_in_its_retry_schedule_is_left_to_its_message() {
    let (env, observed, order) = failing_order("40s", 1).await;
    let no = order.out_trade_no.clone();

    // The first attempt fails; the retry is due 40 s later.
    let retried = eventually(Duration::from_secs(30), || async {
        (env.decisions(order.id).await.len() == 1).then_some(())
    })
    .await;
    assert!(retried.is_some(), "the first attempt was not recorded");
    // Past deadline + the janitor's bound, a janitor keyed on the deadline would act.
    let bound = order.deadline + chrono::Duration::seconds(11);
    tokio::time::sleep((bound - Utc::now()).to_std().unwrap_or_default()).await;
    passes(&observed, 2).await;
    assert_eq!(
        redriven(&observed),
        0,
        "the janitor fought the retry schedule"
    );
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);

    // The retry message decides it.
    let decided = env.settled(&no, Duration::from_secs(90)).await;
    assert_eq!(decided.status(), OrderStatus::Closed);
    assert_eq!(outcomes(&env, &order).await, ["retry", "closed"]);
    assert_eq!(redriven(&observed), 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_order_is_left_to_the_operator() {
    // Two failures with one retry step: parked.
    let (env, observed, order) = failing_order("1s", 2).await;
    let no = order.out_trade_no.clone();
    let parked = eventually(Duration::from_secs(30), || async {
        (env.queue_len(&env.topology.parked_queue()).await == 1).then_some(())
    })
    .await;
    assert!(parked.is_some(), "the order was not parked");
    let parked_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(11)).await;
    passes(&observed, 2).await;
    assert!(Utc::now() - parked_at >= chrono::Duration::seconds(11));
    assert_eq!(redriven(&observed), 0, "the janitor took a parked order");
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);
    assert_eq!(outcomes(&env, &order).await, ["retry", "parked"]);
    env.cleanup().await;
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_janitors_never_claim_one_order_twice() {
    let env = TestEnv::new(&[]).await;
    let mut conn = db::conn(&env.pool).await.unwrap();
    let past = Utc::now() - chrono::Duration::minutes(30);
    let mut ids = BTreeSet::new();
    for i in 0..300 {
        let no = env.no(&format!("claim{i}"));
        // Orders long overdue, as a crash would leave them (no Closer takes a deadline
        // this old), each with its one trade (written with it).
        let id: i64 = diesel::sql_query(
            "INSERT INTO orders (out_trade_no, channel, amount_minor, currency, deadline)
             VALUES ($1, 'alipay', 100, 'CNY', $2) RETURNING id",
        )
        .bind::<diesel::sql_types::Text, _>(&no)
        .bind::<diesel::sql_types::Timestamptz, _>(past)
        .get_result::<Id>(&mut conn)
        .await
        .unwrap()
        .id;
        ids.insert(id);
    }
    drop(conn);
    let mut janitors = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let pool = env.pool.clone();
        janitors.spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let mut conn = db::conn(&pool).await.unwrap();
                let now = Utc::now();
                let batch = orders::claim_overdue(
                    &mut conn,
                    now - chrono::Duration::minutes(2),
                    7,
                    now + chrono::Duration::minutes(10),
                )
                .await
                .unwrap();
                if batch.is_empty() {
                    return claimed;
                }
                claimed.extend(batch.into_iter().map(|o| o.id));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(claimed) = janitors.join_next().await {
        all.extend(claimed.unwrap());
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "an order was claimed twice");
    assert_eq!(distinct, ids, "every overdue order was claimed");
    env.cleanup().await;
}
