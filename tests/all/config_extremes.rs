//! No configuration value accepted at start-up can panic at run time: with every
//! duration at the largest value the configuration accepts, the code that does arithmetic
//! with them runs — the relay's claim, the janitor's pass, a retry's `not_before` and its
//! tier — and a worker decides an order.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use crate::common::TestEnv;
use chrono::Utc;
use order_closer::db::{self, outbox::Claim};
use order_closer::decide::{AttemptInfo, Mode, Outcome};
use order_closer::janitor::Janitor;
use order_closer::message::CloseMessage;
use order_closer::order::OrderStatus;
use order_closer::relay::Relay;
use order_closer::sim::FaultKind;

/// Every duration variable at the top of its accepted range, and the most quick retries.
const LARGEST: [(&str, &str); 10] = [
    ("ORDER_CLOSER_OUTBOX_GRACE", "1h"),
    ("ORDER_CLOSER_OUTBOX_INTERVAL", "1m"),
    ("ORDER_CLOSER_SHUTDOWN_GRACE", "30m"),
    ("ORDER_CLOSER_JANITOR_AFTER", "7days"),
    ("ORDER_CLOSER_JANITOR_INTERVAL", "1h"),
    ("ORDER_CLOSER_RETRY_STEPS", "24h"),
    ("ORDER_CLOSER_EXTRA_DELAY_TIERS", "7days"),
    ("ALIPAY_TIMEOUT", "5m"),
    ("ORDER_CLOSER_QUICK_RETRIES", "10"),
    ("ORDER_CLOSER_RETRY_BUDGET", "1"),
];

#[tokio::test(flavor = "multi_thread")]
async fn the_largest_accepted_durations_run_without_panicking() {
    let mut env = TestEnv::new(&LARGEST).await;
    assert_eq!(env.settings.worker.outbox.grace, Duration::from_secs(3600));

    // The relay's claim (an earlier panic was its cutoff).
    let relay = Relay::new(env.publisher.clone());
    let mut conn = db::conn(&env.pool).await.unwrap();
    let claim = Claim {
        grace: env.settings.worker.outbox.grace,
        limit: 10,
    };
    relay.flush(&mut conn, claim).await.expect("relay pass");
    drop(conn);

    // The janitor's cutoff and lease.
    let janitor = Janitor::new(
        env.decider("extremes"),
        env.publisher.clone(),
        env.settings.worker.janitor,
    );
    janitor.pass().await.expect("janitor pass");

    // A retry 24 h out, and its route through the tiers: the gateway fails more often
    // than the most quick retries (which the decision's time cap may stop sooner).
    let no = env.no("retry-far");
    env.buyers.buyer(&no).scans(100).send().await.unwrap();
    env.buyers
        .fail_next(&no, FaultKind::Busy20000, 11)
        .await
        .unwrap();
    let order = env.create(&no, 100, Duration::ZERO).await;
    let first = AttemptInfo {
        number: 0,
        first_seen: None,
        not_before: None,
    };
    let outcome = env
        .decider("extremes")
        .decide(order.id, Some(&no), first, Mode::Apply)
        .await
        .unwrap();
    let Outcome::Retry { not_before, .. } = outcome else {
        panic!("expected a retry, got {outcome:?}");
    };
    assert!(not_before > Utc::now() + chrono::Duration::hours(23));
    let mut message = CloseMessage::new(order.id, &no, order.deadline);
    message.attempt = 1;
    message.not_before = Some(not_before);
    env.publisher
        .schedule(&message, Utc::now())
        .await
        .expect("scheduled through the tiers");

    // A worker with these settings decides an order.
    env.start_worker(4, 8);
    let other = env.no("decided");
    env.create(&other, 100, Duration::from_secs(1)).await;
    let decided = env.settled(&other, Duration::from_secs(30)).await;
    assert_eq!(decided.status(), OrderStatus::Closed);
    env.cleanup().await;
}
