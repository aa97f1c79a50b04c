//! Quick retries end to end, on every gateway the simulator speaks: a transient gateway
//! error is retried in the process and the order decided in the same delivery (no tier
//! retry, the message's attempt unchanged, the quick retry in the audit row and the
//! metrics); with the process's retry budget spent, the message goes through the delay
//! tiers exactly as before; and every gateway call the decider makes, whichever trade of
//! the order and whichever path, is counted in that budget. The simulator's `fail-next`
//! places the faults, and the budget's clock stands still, so every count is exact.
// It runs the simulator: only with the full build.
#![cfg(feature = "tooling")]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use order_closer::closer::{Due, NewOrder, NewTrade};
use order_closer::db::decisions::Decision;
use order_closer::decide::quick_retry::{
    Clock, FixedJitter, ManualClock, QuickRetry, RetryBudget, WINDOW,
};
use order_closer::decide::{AttemptInfo, Mode, Outcome};
use order_closer::order::OrderStatus;
use order_closer::sim::{FaultKind, FaultPlan, SimMethod, SimTradeStatus};
use order_closer::worker::WorkerConfig;

use crate::common::TestEnv;

const DECIDED_WITHIN: Duration = Duration::from_secs(40);
/// The clients' timeout here: a call the simulator answers at once never reaches it.
const CLIENT_TIMEOUT: &str = "3s";
/// How long an injected timeout holds the answer: well past the client's timeout.
const HOLD_MS: u64 = 10_000;

fn channels(env: &TestEnv) -> Vec<&'static str> {
    env.sim().channels()
}

/// Quick retries on a clock that stands still (the budget's window never slides during
/// the test), retrying at once (no jitter).
fn frozen(attempts: u32, budget: RetryBudget) -> QuickRetry {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
    QuickRetry::with_budget(attempts, budget, clock).with_jitter(Arc::new(FixedJitter(0.0)))
}

fn outcomes(trail: &[Decision]) -> Vec<&str> {
    trail.iter().map(|d| d.outcome.as_str()).collect()
}

fn answer(decision: &Decision) -> &str {
    decision.gateway_answer.as_deref().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_error_is_retried_at_once_and_decided_in_the_same_delivery() {
    let timeouts: Vec<(&str, &str)> = order_closer::gateway::ALL
        .iter()
        .map(|p| (p.common.timeout, CLIENT_TIMEOUT))
        .collect();
    let mut env = TestEnv::new(&timeouts).await;
    env.buyers
        .set_faults(&FaultPlan {
            timeout_ms: Some(HOLD_MS),
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    let mut orders = Vec::new();
    for channel in channels(&env) {
        // The first query meets a proxy's 502; then the gateway answers.
        let query = env.no(&format!("q-{channel}"));
        env.create_waiting(channel, &query, 300, Duration::from_secs(1))
            .await;
        env.buyers
            .fail_next(&query, FaultKind::Http502, 1)
            .await
            .unwrap();
        // The close is applied at the gateway but its answer is lost (a timeout): closing
        // again is safe, and the table reads what the gateway says of a closed trade.
        let close = env.no(&format!("c-{channel}"));
        env.create_waiting(channel, &close, 300, Duration::from_secs(1))
            .await;
        env.buyers
            .fail_next_on(
                &close,
                Some(SimMethod::Close),
                FaultKind::TimeoutAfterApply,
                1,
            )
            .await
            .unwrap();
        orders.push((channel, query, close));
    }
    let observed = env.start_worker(8, 16);
    for (channel, query, close) in &orders {
        for (no, method) in [(query, "query"), (close, "close")] {
            let order = env.settled(no, DECIDED_WITHIN).await;
            assert_eq!(order.status(), OrderStatus::Closed, "{channel} {method}");
            let trail = env.trail(order.id).await;
            // One delivery: no tier retry, decided on the message's first attempt.
            assert_eq!(
                outcomes(&trail),
                ["closed"],
                "{channel} {method}: {trail:?}"
            );
            assert_eq!(trail[0].attempt, 0, "{channel} {method}");
            let said = answer(&trail[0]);
            assert!(
                said.contains("quick retry 1 of 3 after"),
                "{channel} {method}: {said}"
            );
            assert!(
                !said.contains("no quick retry"),
                "{channel} {method}: {said}"
            );
            let trade = env.buyers.trade(no).await.unwrap().unwrap();
            assert_eq!(
                trade.status,
                SimTradeStatus::TradeClosed,
                "{channel} {method}"
            );
        }
    }
    let metrics = observed.metrics.render();
    for (channel, _, _) in &orders {
        for method in ["query", "close"] {
            let line = format!(
                "order_closer_quick_retries_total{{channel=\"{channel}\",method=\"{method}\"}} 1"
            );
            assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
        }
    }
    assert!(
        !metrics.contains("order_closer_retries_total{"),
        "a tier retry was scheduled:\n{metrics}"
    );
    for reason in ["attempts", "time_cap", "budget"] {
        let line = format!("order_closer_quick_retries_refused_total{{reason=\"{reason}\"}} 0");
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_retry_budget_spent_a_transient_error_goes_through_the_tiers() {
    let mut env = TestEnv::new(&[]).await;
    // A tenth of the requests and no floor; 20 requests made, their 2 retries taken.
    let quick = frozen(3, RetryBudget::new(0.1, 0, WINDOW));
    for _ in 0..20 {
        quick.record_request();
    }
    assert!(quick.try_take() && quick.try_take());
    assert!(!quick.try_take(), "the budget is spent");
    let mut orders = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("b-{channel}"));
        env.create_waiting(channel, &no, 300, Duration::from_secs(1))
            .await;
        env.buyers
            .fail_next(&no, FaultKind::Busy20000, 1)
            .await
            .unwrap();
        orders.push((channel, no));
    }
    let decider = env.decider("budget-spent").with_quick_retry(quick.clone());
    let observed = env.run_worker(decider, WorkerConfig::from_settings(&env.settings));
    for (channel, no) in &orders {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{channel}");
        let trail = env.trail(order.id).await;
        // As before quick retries: a retry through the tiers, then the decision.
        assert_eq!(
            outcomes(&trail),
            ["retry", "closed"],
            "{channel}: {trail:?}"
        );
        assert_eq!((trail[0].attempt, trail[1].attempt), (0, 1), "{channel}");
        let said = answer(&trail[0]);
        assert!(
            said.contains("no quick retry: the process's retry budget is spent"),
            "{channel}: {said}"
        );
        assert!(!said.contains("quick retry 1"), "{channel}: {said}");
    }
    let metrics = observed.metrics.render();
    let refused = format!(
        "order_closer_quick_retries_refused_total{{reason=\"budget\"}} {}",
        orders.len()
    );
    assert!(
        metrics.contains(&refused),
        "{refused} missing from\n{metrics}"
    );
    assert!(
        !metrics.contains("order_closer_quick_retries_total{"),
        "{metrics}"
    );
    let tier = format!(
        "order_closer_retries_total{{attempt=\"1\"}} {}",
        orders.len()
    );
    assert!(metrics.contains(&tier), "{tier} missing from\n{metrics}");
    assert_eq!(quick.usage().retries, 2, "nothing more was taken");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_of_every_trade_and_path_counts_in_the_budget() {
    let env = TestEnv::new(&[]).await;
    let channels = channels(&env);
    let no = env.no("two");
    let closer = env.closer.clone().with_expiry_margin(Duration::ZERO);
    let created = closer
        .create_order(NewOrder::without_trade(
            &no,
            1234,
            "CNY",
            Due::After(Duration::from_secs(2)),
        ))
        .await
        .unwrap();
    // One trade at each gateway, both waiting for payment, each failing its first query.
    let mut numbers = Vec::new();
    for (k, channel) in channels.iter().enumerate() {
        let number = format!("{no}-{k}");
        closer
            .add_trade(&no, NewTrade::new(*channel, &number))
            .await
            .unwrap();
        env.buyers
            .buyer(&number)
            .at(channel)
            .scans(1234)
            .loses_notification()
            .send()
            .await
            .unwrap();
        env.buyers
            .fail_next(&number, FaultKind::Http502, 1)
            .await
            .unwrap();
        numbers.push(number);
    }
    let quick = frozen(3, RetryBudget::new(0.1, 10, WINDOW));
    let decider = env.decider("counted").with_quick_retry(quick.clone());
    // Decided past its deadline, by the decider itself (the worker's path without a
    // broker), its trades consulted at once.
    let wait = (created.order.deadline - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let first = AttemptInfo {
        number: 0,
        first_seen: None,
        not_before: None,
    };
    let outcome = decider
        .decide(created.order.id, Some(&no), first, Mode::Apply)
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Decided {
                status: OrderStatus::Closed,
                ..
            }
        ),
        "{outcome:?}"
    );
    let trail = env.trail(created.order.id).await;
    assert_eq!(outcomes(&trail), ["closed"], "{trail:?}");
    let said = answer(&trail[0]);
    for number in &numbers {
        let part = said
            .split(&format!("trade {number}:"))
            .nth(1)
            .unwrap_or_else(|| panic!("{number} missing from {said}"));
        assert!(part.contains("quick retry 1 of 3"), "{number}: {said}");
    }
    // Every request the simulator saw was counted: each trade's failed query, its quick
    // retry, its close (and the query after a close the gateway does not confirm).
    let stats = env.buyers.stats().await.unwrap();
    let seen = stats.queries + stats.closes;
    assert!(seen >= 3 * channels.len() as u64, "{stats:?}");
    let usage = quick.usage();
    assert_eq!(usage.requests, seen);
    assert_eq!(usage.retries, channels.len() as u64);
    // The path the notify endpoint's hints and reconcile take counts too.
    let order = env.order(&no).await;
    let mut conn = order_closer::db::conn(&env.pool).await.unwrap();
    let stored = order_closer::db::trades::for_order(&mut conn, order.id)
        .await
        .unwrap();
    drop(conn);
    for trade in &stored {
        let asked = decider.query_gateway(trade).await.expect("a gateway");
        assert!(asked.is_ok(), "{asked:?}");
    }
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!(quick.usage().requests, stats.queries + stats.closes);
    assert_eq!(quick.usage().requests, seen + stored.len() as u64);
    env.cleanup().await;
}
