//! Faults end to end through the worker: gateway failures walk the retry steps, a
//! database outage neither parks nor loses a message, impossible deadlines are named.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use crate::common::{TestEnv, eventually};
use order_closer::broker::topology::header_text;
use order_closer::db;
use order_closer::decide::Decider;
use order_closer::message::CloseMessage;
use order_closer::order::OrderStatus;
use order_closer::sim::{FaultKind, FaultPlan};
use order_closer::worker::WorkerConfig;

const DECIDED_WITHIN: Duration = Duration::from_secs(30);

fn outcomes(history: &[(String, String)]) -> Vec<&str> {
    history.iter().map(|(o, _)| o.as_str()).collect()
}

/// The client's timeout in these tests: long enough that a call the simulator answers at
/// once never times out on a loaded machine (each test counts its retries exactly).
const CLIENT_TIMEOUT: &str = "3s";
/// How long an injected timeout holds the answer: well past the client's timeout.
const HOLD_MS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn gateway_failures_are_retried_then_decided() {
    // The delay tiers' retry path: quick retries off (tests/all/quick_retries.rs has them).
    let mut env = TestEnv::new(&[
        ("ALIPAY_TIMEOUT", CLIENT_TIMEOUT),
        ("ORDER_CLOSER_QUICK_RETRIES", "0"),
    ])
    .await;
    // Timeouts hold the answer well past the client's timeout.
    env.buyers
        .set_faults(&FaultPlan {
            timeout_ms: Some(HOLD_MS),
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    let observed = env.start_worker(8, 16);
    let cases = [
        (FaultKind::Http502, "http_502"),
        (FaultKind::Busy20000, "20000"),
        (FaultKind::SystemError, "ACQ.SYSTEM_ERROR"),
        (FaultKind::Timeout, "timeout"),
        (FaultKind::Html, "unparseable"),
        (FaultKind::TruncatedJson, "unparseable"),
        (FaultKind::EmptyBody, "unparseable"),
        (FaultKind::BadSignature, "bad_signature"),
        (FaultKind::WrongOrder, "wrong_order"),
    ];
    let mut orders = Vec::new();
    for (kind, code) in cases {
        let no = env.no(&format!("f-{kind:?}"));
        env.buyers.buyer(&no).scans(300).send().await.unwrap();
        env.buyers.fail_next(&no, kind, 1).await.unwrap();
        let order = env.create(&no, 300, Duration::from_secs(1)).await;
        orders.push((order.id, no, code));
    }
    for (id, no, code) in &orders {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{code}");
        let history = env.decisions(*id).await;
        assert_eq!(
            outcomes(&history),
            ["retry", "closed"],
            "{code}: {history:?}"
        );
        assert!(history[0].1.starts_with(code), "{code}: {}", history[0].1);
    }
    let metrics = observed.metrics.render();
    assert!(
        metrics.contains("order_closer_retries_total{attempt=\"1\"} 9"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "order_closer_gateway_errors_total{channel=\"alipay\",method=\"query\",code=\"timeout\"} 1"
    ));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_close_that_happened_but_timed_out_is_found_closed_on_the_retry() {
    let mut env = TestEnv::new(&[("ALIPAY_TIMEOUT", CLIENT_TIMEOUT)]).await;
    env.buyers
        .set_faults(&FaultPlan {
            timeout_after_apply: 1.0,
            timeout_ms: Some(HOLD_MS),
            methods: Some(vec!["close".into()]),
            ..FaultPlan::default()
        })
        .await
        .unwrap();
    env.start_worker(4, 4);
    let no = env.no("ghostclose");
    env.buyers.buyer(&no).scans(300).send().await.unwrap();
    let order = env.create(&no, 300, Duration::from_secs(1)).await;
    let decided = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(decided.status(), OrderStatus::Closed);
    assert_eq!(
        decided.close_reason.as_deref(),
        Some("deadline_closed_at_gateway")
    );
    assert_eq!(
        outcomes(&env.decisions(order.id).await),
        ["retry", "closed"]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_amount_marks_paid_with_an_anomaly() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 4);
    let no = env.no("wrongamount");
    env.buyers
        .buyer(&no)
        .scans(1000)
        .pays()
        .send()
        .await
        .unwrap();
    env.buyers
        .fail_next(&no, FaultKind::WrongAmount, 1)
        .await
        .unwrap();
    env.create(&no, 1000, Duration::from_secs(1)).await;
    assert_eq!(
        env.settled(&no, DECIDED_WITHIN).await.status(),
        OrderStatus::Paid
    );
    let events = env.drain_events().await;
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "order.anomaly.amount_mismatch"),
        "{events:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_database_unreachable_messages_come_back_and_are_decided_later() {
    let mut env = TestEnv::new(&[]).await;
    let no = env.no("dbdown");
    let order = env.create(&no, 100, Duration::ZERO).await;

    // A worker whose database is unreachable: nothing is acked for good, nothing parked.
    let unreachable = db::pool("postgres://postgres@127.0.0.1:1/nowhere", 2).unwrap();
    let gateways = env.gateways();
    let blind = Decider::new(
        unreachable,
        gateways,
        env.settings.decisions.retry.clone(),
        "blind",
    );
    let observed = env.run_worker(blind, WorkerConfig::from_settings(&env.settings));
    let counted = eventually(Duration::from_secs(20), || async {
        observed
            .metrics
            .render()
            .contains("order_closer_decisions_total{outcome=\"database_unavailable\"}")
            .then_some(())
    })
    .await;
    assert!(counted.is_some());
    assert!(observed.readiness.broker(), "the worker keeps running");
    assert_eq!(env.queue_len(&env.topology.parked_queue()).await, 0);
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);
    env.stop_workers().await;

    // The database is back (a worker that can reach it): the message returns and is decided.
    env.start_worker(4, 4);
    assert_eq!(
        env.settled(&no, DECIDED_WITHIN).await.status(),
        OrderStatus::Closed
    );
    assert_eq!(outcomes(&env.decisions(order.id).await), ["closed"]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deadlines_in_1970_and_2999_have_named_outcomes() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 4);
    let no = env.no("epoch");
    let order = env.create(&no, 100, Duration::from_secs(60)).await;
    // 1970: the message says "long overdue", the order row says 60 s: the row wins, the
    // order is not decided early and the message goes back to wait.
    let epoch = "1970-01-01T00:00:00Z".parse().unwrap();
    env.publish_raw(&CloseMessage::new(order.id, &no, epoch).encode())
        .await;
    // 2999: no order is due that far ahead; parked with a reason, not hidden in a tier.
    let far = "2999-01-01T00:00:00Z".parse().unwrap();
    env.publish_raw(&CloseMessage::new(order.id, &no, far).encode())
        .await;

    let messages = env
        .wait_parked(1, Duration::from_secs(15))
        .await
        .expect("parked");
    assert_eq!(messages.len(), 1);
    assert_eq!(
        header_text(&messages[0].1, "oc-park-reason").as_deref(),
        Some("deadline_out_of_range")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);
    assert!(env.decisions(order.id).await.is_empty());
    env.cleanup().await;
}
