//! Cancelling and extending orders on request, end to end (real Postgres and RabbitMQ, the
//! simulator over HTTP, an in-process worker): a cancel runs the deadline decision at once
//! in each gateway state, and the caller is told how it ended; an extension is honoured by
//! the message already scheduled.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use chrono::Utc;
use order_closer::closer::{Cancelled, ChangeError};
use order_closer::order::OrderStatus;
use order_closer::sim::{FaultKind, SimTradeStatus};

use crate::common::TestEnv;

/// (outcome, decided_at) of every decision about an order.
async fn trail(env: &TestEnv, order_id: i64) -> Vec<(String, chrono::DateTime<Utc>)> {
    env.trail(order_id)
        .await
        .into_iter()
        .map(|d| (d.outcome, d.decided_at))
        .collect()
}

fn outcomes(trail: &[(String, chrono::DateTime<Utc>)]) -> Vec<&str> {
    trail.iter().map(|(o, _)| o.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_runs_the_deadline_decision_at_once_in_each_gateway_state() {
    for channel in order_closer::gateway::rules::channels() {
        cancel_in_each_state(channel).await;
    }
}

/// On `channel`'s gateway.
async fn cancel_in_each_state(channel: &str) {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(8, 16);
    let hour = Duration::from_secs(3600);
    let no_trade = env.no("no-trade");
    let waiting = env.no("waiting");
    let paid = env.no("paid");
    let expired = env.no("expired");
    let a = env.create_at(channel, &no_trade, 100, hour).await;
    let b = env.create_at(channel, &waiting, 200, hour).await;
    let c = env.create_at(channel, &paid, 300, hour).await;
    let d = env.create_at(channel, &expired, 400, hour).await;
    let buyers = env.buyers.at(channel);
    buyers.buyer(&waiting).scans(200).send().await.unwrap();
    buyers
        .buyer(&paid)
        .scans(300)
        .pays()
        .loses_notification()
        .send()
        .await
        .unwrap();
    // A trade whose own expiry closed it at the gateway (the expiry far enough for the
    // scan to come before it; then wait until it has passed).
    let soon = Utc::now() + chrono::Duration::seconds(3);
    buyers
        .buyer(&expired)
        .scans(400)
        .expiring_at(soon)
        .send()
        .await
        .unwrap();
    let left = (soon - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(300)).await;

    // No trade yet: closed here, but a QR code already shown stays valid until the
    // original deadline, and the caller is told so.
    assert_eq!(
        env.closer.cancel_order(&no_trade).await.unwrap(),
        Cancelled::ClosedBeforeScan {
            qr_valid_until: a.deadline
        }
    );
    assert_eq!(
        env.closer.cancel_order(&waiting).await.unwrap(),
        Cancelled::Closed
    );
    assert_eq!(
        env.closer.cancel_order(&paid).await.unwrap(),
        Cancelled::Paid
    );
    assert_eq!(
        env.closer.cancel_order(&expired).await.unwrap(),
        Cancelled::Closed
    );

    // Closed at the gateway first: the buyer can no longer pay.
    let trade = env.buyers.trade(&waiting).await.unwrap().unwrap();
    assert_eq!(trade.status, SimTradeStatus::TradeClosed);
    assert!(env.buyers.buyer(&waiting).pays().send().await.is_err());
    for (order, end) in [(&a, "closed"), (&b, "closed"), (&c, "paid"), (&d, "closed")] {
        let t = trail(&env, order.id).await;
        assert_eq!(
            outcomes(&t),
            vec!["cancel_requested", end],
            "{}",
            order.out_trade_no
        );
        assert!(
            Utc::now() < order.deadline,
            "decided long before the deadline"
        );
    }
    assert_eq!(
        env.order(&waiting).await.close_reason.as_deref(),
        Some("deadline_closed_by_us")
    );
    assert_eq!(
        env.order(&expired).await.close_reason.as_deref(),
        Some("deadline_closed_at_gateway")
    );

    // Settled orders answer at once and write nothing; unknown ones are named.
    assert_eq!(
        env.closer.cancel_order(&no_trade).await.unwrap(),
        Cancelled::Closed
    );
    assert_eq!(
        env.closer.cancel_order(&paid).await.unwrap(),
        Cancelled::Paid
    );
    assert_eq!(trail(&env, a.id).await.len(), 2);
    assert!(matches!(
        env.closer.cancel_order("no-such-order").await,
        Err(ChangeError::NotFound(_))
    ));

    let events = env.drain_events().await;
    let count = |no: &str, event: &str| {
        events
            .iter()
            .filter(|e| e["out_trade_no"] == no && e["event"] == event)
            .count()
    };
    assert_eq!(count(&no_trade, "order.closed"), 1);
    assert_eq!(count(&waiting, "order.closed"), 1);
    assert_eq!(count(&paid, "order.paid"), 1);
    assert_eq!(count(&expired, "order.closed"), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_meeting_a_gateway_error_is_retried_and_the_caller_told_how_it_ended() {
    // The delay tiers' retry path: quick retries off (tests/all/quick_retries.rs has them).
    let mut env = TestEnv::new(&[("ORDER_CLOSER_QUICK_RETRIES", "0")]).await;
    env.start_worker(4, 8);
    let hour = Duration::from_secs(3600);
    // The first query answers 502, then the gateway is healthy: one retry step (1 s in
    // the tests), then the trade is closed at the gateway first.
    let flaky = env.no("flaky");
    let a = env.create(&flaky, 800, hour).await;
    env.buyers.buyer(&flaky).scans(800).send().await.unwrap();
    env.buyers
        .fail_next(&flaky, FaultKind::Http502, 1)
        .await
        .unwrap();
    assert_eq!(
        env.closer.cancel_order(&flaky).await.unwrap(),
        Cancelled::Closed
    );
    assert_eq!(
        outcomes(&trail(&env, a.id).await),
        vec!["cancel_requested", "retry", "closed"]
    );
    let trade = env.buyers.trade(&flaky).await.unwrap().unwrap();
    assert_eq!(trade.status, SimTradeStatus::TradeClosed);

    // A gateway that keeps failing: the cancel stays requested (the caller is told it is
    // pending) and the order stays NEW; it is decided once the gateway answers.
    let down = env.no("down");
    let b = env.create(&down, 900, hour).await;
    env.buyers.buyer(&down).scans(900).send().await.unwrap();
    env.buyers
        .fail_next(&down, FaultKind::Busy20000, 2)
        .await
        .unwrap();
    assert_eq!(
        env.closer
            .cancel_order_within(&down, Duration::from_millis(300))
            .await
            .unwrap(),
        Cancelled::Pending
    );
    let closed = env.settled(&down, Duration::from_secs(20)).await;
    assert_eq!(closed.status(), OrderStatus::Closed);
    assert_eq!(
        outcomes(&trail(&env, b.id).await),
        vec!["cancel_requested", "retry", "retry", "closed"]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_with_no_worker_running_is_pending_then_decided() {
    let mut env = TestEnv::new(&[]).await;
    let no = env.no("pending");
    let order = env.create(&no, 500, Duration::from_secs(3600)).await;
    env.buyers.buyer(&no).scans(500).send().await.unwrap();
    let result = env
        .closer
        .cancel_order_within(&no, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(result, Cancelled::Pending, "no worker, no decision");
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);
    env.start_worker(4, 8);
    let decided = env.settled(&no, Duration::from_secs(20)).await;
    assert_eq!(decided.status(), OrderStatus::Closed);
    assert!(Utc::now() < order.deadline);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_extended_deadline_is_honoured_and_bad_extensions_are_refused() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let no = env.no("extended");
    let order = env.create(&no, 600, Duration::from_secs(7)).await;
    let later = order.deadline + chrono::Duration::seconds(4);
    let moved = env.closer.extend_deadline(&no, later).await.unwrap();
    assert_eq!(moved.deadline, later);
    // Earlier, equal, a year and more away: refused, the deadline stays.
    for to in [
        later - chrono::Duration::seconds(1),
        later,
        Utc::now() + chrono::Duration::days(400),
    ] {
        assert!(matches!(
            env.closer.extend_deadline(&no, to).await,
            Err(ChangeError::NotExtendable { .. })
        ));
    }
    // The close message scheduled for the old deadline waits for the new one: the
    // decision comes after it, whatever the timing.
    let decided = env.settled(&no, Duration::from_secs(30)).await;
    assert_eq!(decided.status(), OrderStatus::Closed);
    let t = trail(&env, order.id).await;
    assert_eq!(outcomes(&t), vec!["deadline_extended", "closed"]);
    assert!(t[1].1 >= later, "decided at {} before {later}", t[1].1);

    // A settled order, one about to be decided, and an unknown one.
    assert!(matches!(
        env.closer
            .extend_deadline(&no, later + chrono::Duration::minutes(1))
            .await,
        Err(ChangeError::Settled {
            status: OrderStatus::Closed,
            ..
        })
    ));
    let close = env.no("close");
    let soon = env.create(&close, 700, Duration::from_secs(2)).await;
    assert!(matches!(
        env.closer
            .extend_deadline(&close, soon.deadline + chrono::Duration::minutes(1))
            .await,
        Err(ChangeError::NotExtendable { .. })
    ));
    assert!(matches!(
        env.closer
            .extend_deadline("no-such-order", Utc::now() + chrono::Duration::minutes(1))
            .await,
        Err(ChangeError::NotFound(_))
    ));
    env.cleanup().await;
}
