//! Every row of the decision table end to end: real Postgres, real RabbitMQ, the
//! simulator over HTTP, an in-process worker.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use crate::common::TestEnv;
use order_closer::order::OrderStatus;
use order_closer::sim::SimTradeStatus;

const DECIDED_WITHIN: Duration = Duration::from_secs(30);

/// Every row runs on every gateway the simulator speaks: one order per gateway, decided
/// by one worker.
fn channels(env: &TestEnv) -> Vec<&'static str> {
    env.sim().channels()
}

#[tokio::test(flavor = "multi_thread")]
async fn paid_before_the_deadline_with_the_callback_lost_ends_paid() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let mut nos = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("paid-{channel}"));
        // The buyer acts first: the worker is running and the deadline is a second away.
        let buyers = env.buyers.at(channel);
        buyers
            .buyer(&no)
            .scans(1234)
            .pays()
            .loses_notification()
            .send()
            .await
            .unwrap();
        env.create_at(channel, &no, 1234, Duration::from_secs(1))
            .await;
        nos.push((channel, no));
    }
    for (channel, no) in &nos {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Paid, "{channel}");
        let trade = env.buyers.trade(no).await.unwrap().unwrap();
        assert_eq!(
            order.gateway_trade_no.as_deref(),
            Some(trade.trade_no.as_str()),
            "{channel}"
        );
        assert!(order.paid_at.is_some());
        let history = env.decisions(order.id).await;
        assert_eq!(history.len(), 1, "{channel}: {history:?}");
        assert_eq!(history[0].0, "paid");
    }
    let events = env.drain_events().await;
    assert_eq!(events.len(), nos.len(), "{events:?}");
    for (channel, no) in &nos {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e["out_trade_no"] == no.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{channel}");
        assert_eq!(mine[0]["event"], "order.paid");
        assert_eq!(mine[0]["channel"], *channel);
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn never_scanned_ends_closed_without_a_gateway_close() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let mut nos = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("never-{channel}"));
        env.create_at(channel, &no, 500, Duration::from_secs(1))
            .await;
        nos.push((channel, no));
    }
    for (channel, no) in &nos {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{channel}");
        assert_eq!(
            order.close_reason.as_deref(),
            Some("deadline_no_trade"),
            "{channel}"
        );
        assert!(env.buyers.trade(no).await.unwrap().is_none());
    }
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!(
        stats.closes, 0,
        "no gateway close for a trade that does not exist"
    );
    let events = env.drain_events().await;
    assert_eq!(events.len(), nos.len());
    assert!(events.iter().all(|e| e["event"] == "order.closed"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scanned_and_unpaid_is_closed_at_the_gateway_then_locally() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let mut nos = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("scan-{channel}"));
        // The buyer acts first: the worker is running and the deadline is a second away.
        env.buyers
            .at(channel)
            .buyer(&no)
            .scans(990)
            .send()
            .await
            .unwrap();
        env.create_at(channel, &no, 990, Duration::from_secs(1))
            .await;
        nos.push((channel, no));
    }
    for (channel, no) in &nos {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{channel}");
        assert_eq!(
            order.close_reason.as_deref(),
            Some("deadline_closed_by_us"),
            "{channel}"
        );
        let trade = env.buyers.trade(no).await.unwrap().unwrap();
        assert_eq!(trade.status, SimTradeStatus::TradeClosed, "{channel}");
        // Closed at the gateway: the buyer can no longer pay.
        assert!(
            env.buyers.buyer(no).pays().send().await.is_err(),
            "{channel}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn buyer_paying_between_our_query_and_our_close_ends_paid() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let mut nos = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("race-{channel}"));
        // The buyer acts first: the worker is running and the deadline is a second away.
        let buyers = env.buyers.at(channel);
        buyers
            .buyer(&no)
            .scans(4200)
            .pays_on_close()
            .send()
            .await
            .unwrap();
        env.create_at(channel, &no, 4200, Duration::from_secs(1))
            .await;
        nos.push((channel, no));
    }
    env.quiet_notifications();
    for (channel, no) in &nos {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(
            order.status(),
            OrderStatus::Paid,
            "{channel}: a paid order must never be closed"
        );
        let trade = env.buyers.trade(no).await.unwrap().unwrap();
        assert_eq!(trade.status, SimTradeStatus::TradeSuccess);
        let history = env.decisions(order.id).await;
        assert_eq!(history.len(), 1, "{channel}");
        assert_eq!(history[0].0, "paid");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_closed_trade_closes_locally() {
    let mut env = TestEnv::new(&[]).await;
    let mut nos = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("gwcl-{channel}"));
        env.buyers
            .at(channel)
            .buyer(&no)
            .scans(700)
            .send()
            .await
            .unwrap();
        // Someone (an earlier attempt, an operator) closed the trade at the gateway.
        env.gateway(channel)
            .close(order_closer::gateway::TradeRef::new(&no))
            .await
            .unwrap();
        env.create_at(channel, &no, 700, Duration::from_secs(1))
            .await;
        nos.push((channel, no));
    }
    env.start_worker(4, 4);
    for (channel, no) in &nos {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{channel}");
        assert_eq!(
            order.close_reason.as_deref(),
            Some("deadline_closed_at_gateway"),
            "{channel}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paid_with_another_amount_is_marked_paid_and_recorded_as_an_anomaly() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 4);
    env.quiet_notifications();
    let mut nos = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("amt-{channel}"));
        // The buyer acts first: the worker is running and the deadline is a second away.
        let buyers = env.buyers.at(channel);
        buyers.buyer(&no).scans(900).pays().send().await.unwrap();
        env.create_at(channel, &no, 1000, Duration::from_secs(1))
            .await;
        nos.push((channel, no));
    }
    for (channel, no) in &nos {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Paid, "{channel}");
    }
    let events = env.drain_events().await;
    for (channel, no) in &nos {
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| e["out_trade_no"] == no.as_str())
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"order.paid"), "{channel}: {kinds:?}");
        assert!(
            kinds.contains(&"order.anomaly.amount_mismatch"),
            "{channel}: {kinds:?}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_is_asked_about_the_trade_by_the_order_s_references() {
    let mut env = TestEnv::new(&[]).await;
    let no = env.no("refs");
    let created = env
        .closer
        .create_order(
            order_closer::closer::NewOrder::new(
                "alipay",
                &no,
                300,
                order_closer::closer::Due::After(Duration::from_secs(1)),
            )
            .with_gateway_ref("pi_3MtwBwLkdIwHu7ix28a3tqPa"),
        )
        .await
        .unwrap()
        .order;
    let mut conn = order_closer::db::conn(&env.pool).await.unwrap();
    let trades = order_closer::db::trades::for_order(&mut conn, created.id)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(
        trades.len(),
        1,
        "the one-call form makes the order's first trade"
    );
    assert_eq!(
        trades[0].gateway_ref.as_deref(),
        Some("pi_3MtwBwLkdIwHu7ix28a3tqPa")
    );
    let (_worker, held) = env.start_held_worker("alipay");
    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Closed);
    let log = held.log();
    assert!(!log.is_empty());
    for (method, out_trade_no, gateway_ref) in log {
        assert_eq!(out_trade_no, no, "{method}");
        assert_eq!(
            gateway_ref.as_deref(),
            Some("pi_3MtwBwLkdIwHu7ix28a3tqPa"),
            "{method}"
        );
    }
    // A reference no gateway could hold is refused before anything is written.
    let bad = order_closer::closer::NewOrder::new(
        "alipay",
        env.no("badref"),
        300,
        order_closer::closer::Due::After(Duration::from_secs(60)),
    )
    .with_gateway_ref("x".repeat(256));
    let err = env.closer.create_order(bad).await.unwrap_err().to_string();
    assert!(err.contains("gateway_ref"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_error_is_retried_and_a_permanent_one_parks() {
    // The delay tiers' retry path: quick retries off (tests/all/quick_retries.rs has them).
    let mut env = TestEnv::new(&[("ORDER_CLOSER_QUICK_RETRIES", "0")]).await;
    let mut transient = Vec::new();
    let mut permanent = Vec::new();
    for channel in channels(&env) {
        // One answer lost to a proxy's 502, then the gateway answers: one retry step.
        let no = env.no(&format!("502-{channel}"));
        env.create_waiting(channel, &no, 300, Duration::from_secs(1))
            .await;
        env.buyers
            .fail_next(&no, order_closer::sim::FaultKind::Http502, 1)
            .await
            .unwrap();
        transient.push((channel, no));
    }
    env.start_worker(4, 8);
    for (channel, no) in &transient {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{channel}");
        let outcomes: Vec<String> = env
            .decisions(order.id)
            .await
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(outcomes, ["retry", "closed"], "{channel}");
    }
    env.stop_workers().await;

    // A merchant key the gateway does not know: a configuration problem, parked at once.
    for channel in channels(&env) {
        let no = env.no(&format!("perm-{channel}"));
        let order = env
            .create_at(channel, &no, 300, Duration::from_secs(1))
            .await;
        permanent.push((channel, no, order.id));
    }
    let stranger = order_closer::gateway::rsa::RsaPrivateKey::generate()
        .unwrap()
        .to_pkcs8_pem();
    let overrides: Vec<(&str, &str)> = order_closer::gateway::ALL
        .iter()
        .map(|p| (p.configured_by[0], stranger.as_str()))
        .collect();
    env.start_worker_with(&overrides);
    let parked = env
        .wait_parked(permanent.len() as u32, DECIDED_WITHIN)
        .await
        .expect("parked");
    assert_eq!(parked.len(), permanent.len());
    for (channel, no, id) in &permanent {
        assert_eq!(env.order(no).await.status(), OrderStatus::New, "{channel}");
        let outcomes: Vec<String> = env.decisions(*id).await.into_iter().map(|d| d.0).collect();
        assert_eq!(outcomes, ["parked"], "{channel}");
    }
    env.cleanup().await;
}

/// A trade the buyer paid and the merchant (or the gateway's risk
/// control) refunded in full before the deadline, its notification lost. No gateway
/// reads that as a plain payment: the order is CLOSED (`deadline_refunded_at_gateway`,
/// the trade number kept) with a `refunded_before_deadline` anomaly and its event, and
/// no close is sent for a trade that can no longer be paid.
#[tokio::test(flavor = "multi_thread")]
async fn paid_then_refunded_before_the_deadline_ends_closed_with_an_anomaly() {
    let mut env = TestEnv::new(&[]).await;
    let mut nos = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("refunded-{channel}"));
        let buyers = env.buyers.at(channel);
        buyers
            .buyer(&no)
            .scans(1234)
            .pays()
            .loses_notification()
            .send()
            .await
            .unwrap();
        buyers.refund(&no, 1234).await.unwrap();
        env.create_at(channel, &no, 1234, Duration::from_secs(1))
            .await;
        nos.push((channel, no));
    }
    // The worker starts once the refunds are made: nothing races them.
    env.start_worker(8, 16);
    for (channel, no) in &nos {
        let order = env.settled(no, DECIDED_WITHIN).await;
        assert_eq!(order.status(), OrderStatus::Closed, "{channel}");
        assert_eq!(
            order.close_reason.as_deref(),
            Some("deadline_refunded_at_gateway"),
            "{channel}"
        );
        let trade = env.buyers.trade(no).await.unwrap().unwrap();
        assert_eq!(
            order.gateway_trade_no.as_deref(),
            Some(trade.trade_no.as_str()),
            "{channel}"
        );
        let history = env.decisions(order.id).await;
        assert_eq!(history.len(), 1, "{channel}: {history:?}");
        assert_eq!(history[0].0, "closed", "{channel}");
    }
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!(stats.closes, 0, "no close for a refunded trade");
    let events = env.drain_events().await;
    for (channel, no) in &nos {
        let mut mine: Vec<String> = events
            .iter()
            .filter(|e| e["out_trade_no"] == no.as_str())
            .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
            .collect();
        mine.sort();
        assert_eq!(
            mine,
            ["order.anomaly.refunded_before_deadline", "order.closed"],
            "{channel}"
        );
    }
    env.cleanup().await;
}
