//! Every row of the decision table end to end: real Postgres, real RabbitMQ, the
//! simulator over HTTP, an in-process worker.

mod common;

use std::time::Duration;

use common::TestEnv;
use order_closer::order::OrderStatus;
use order_closer::sim::SimTradeStatus;

const DECIDED_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn paid_before_the_deadline_with_the_callback_lost_ends_paid() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let no = env.no("paid");
    env.create(&no, 1234, Duration::from_secs(1)).await;
    env.buyers.scan(&no, 1234).await.unwrap();
    env.buyers.pay(&no).await.unwrap();

    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Paid);
    let trade = env.buyers.trade(&no).await.unwrap().unwrap();
    assert_eq!(
        order.gateway_trade_no.as_deref(),
        Some(trade.trade_no.as_str())
    );
    assert!(order.paid_at.is_some());
    let history = env.decisions(order.id).await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].0, "paid");

    let events = env.drain_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "order.paid");
    assert_eq!(events[0]["out_trade_no"], no.as_str());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn never_scanned_ends_closed_without_a_gateway_close() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let no = env.no("never");
    env.create(&no, 500, Duration::from_secs(1)).await;

    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Closed);
    assert_eq!(order.close_reason.as_deref(), Some("deadline_no_trade"));
    assert!(env.buyers.trade(&no).await.unwrap().is_none());
    let events = env.drain_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "order.closed");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scanned_and_unpaid_is_closed_at_the_gateway_then_locally() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let no = env.no("scanned");
    env.create(&no, 990, Duration::from_secs(1)).await;
    env.buyers.scan(&no, 990).await.unwrap();

    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Closed);
    assert_eq!(order.close_reason.as_deref(), Some("deadline_closed_by_us"));
    let trade = env.buyers.trade(&no).await.unwrap().unwrap();
    assert_eq!(trade.status, SimTradeStatus::TradeClosed);
    // Closed at the gateway: the buyer can no longer pay.
    assert!(env.buyers.pay(&no).await.is_err());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn buyer_paying_between_our_query_and_our_close_ends_paid() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let no = env.no("race");
    env.create(&no, 4200, Duration::from_secs(1)).await;
    env.buyers.scan(&no, 4200).await.unwrap();
    env.buyers.pay_on_close(&no).await.unwrap();

    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(
        order.status(),
        OrderStatus::Paid,
        "a paid order must never be closed"
    );
    let trade = env.buyers.trade(&no).await.unwrap().unwrap();
    assert_eq!(trade.status, SimTradeStatus::TradeSuccess);
    let history = env.decisions(order.id).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].0, "paid");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_closed_trade_closes_locally() {
    let mut env = TestEnv::new(&[]).await;
    let no = env.no("gwclosed");
    env.create(&no, 700, Duration::from_secs(1)).await;
    env.buyers.scan(&no, 700).await.unwrap();
    // Someone (an earlier attempt, an operator) closed the trade at the gateway already.
    env.gateway("alipay")
        .close(order_closer::gateway::TradeRef::new(&no))
        .await
        .unwrap();
    env.start_worker(4, 4);

    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Closed);
    assert_eq!(
        order.close_reason.as_deref(),
        Some("deadline_closed_at_gateway")
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paid_with_another_amount_is_marked_paid_and_recorded_as_an_anomaly() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 4);
    let no = env.no("amount");
    env.create(&no, 1000, Duration::from_secs(1)).await;
    env.buyers.scan(&no, 900).await.unwrap();
    env.buyers.pay(&no).await.unwrap();

    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Paid);
    let events = env.drain_events().await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"order.paid"), "{kinds:?}");
    assert!(
        kinds.contains(&"order.anomaly.amount_mismatch"),
        "{kinds:?}"
    );
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
    assert_eq!(
        created.gateway_ref.as_deref(),
        Some("pi_3MtwBwLkdIwHu7ix28a3tqPa")
    );
    assert_eq!(env.order(&no).await.gateway_ref, created.gateway_ref);
    let (_worker, held) = env.start_held_worker();
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
