//! The reconcile command: overdue sweep and parking-queue drain, through the same
//! decision code as the worker, against real Postgres, RabbitMQ and the simulator.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use crate::common::{TestEnv, eventually};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::broker::publisher::ParkNote;
use order_closer::closer::{Closer, Due, NewOrder};
use order_closer::db::{self, schema::parked_discards};
use order_closer::decide::Mode;
use order_closer::message::CloseMessage;
use order_closer::order::OrderStatus;
use order_closer::reconcile::overdue::{self, OverdueOptions};
use order_closer::reconcile::parked::{self, ParkedAction};
use order_closer::reconcile::{Finding, Verdict};
use order_closer::sim::SimTradeStatus;

fn options(mode: Mode) -> OverdueOptions {
    OverdueOptions {
        older_than: Duration::from_secs(300),
        channel: None,
        limit: None,
        concurrency: 8,
        mode,
    }
}

/// Creates an order whose close message was lost (never published), due `ago` ago.
async fn lost_order(env: &TestEnv, name: &str, amount: i64, ago: Duration) -> String {
    let no = env.no(name);
    let deadline = Utc::now() - chrono::Duration::from_std(ago).unwrap();
    Closer::without_broker(env.pool.clone(), order_closer::gateway::rules::CHANNELS)
        .create_order(NewOrder::new("alipay", &no, amount, Due::At(deadline)))
        .await
        .unwrap();
    // The outbox row is the lost message: drop it.
    let mut conn = db::conn(&env.pool).await.unwrap();
    diesel::delete(db::schema::outbox::table)
        .execute(&mut conn)
        .await
        .unwrap();
    no
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overdue_sweep_decides_lost_orders_and_a_dry_run_changes_nothing() {
    let env = TestEnv::new(&[]).await;
    let ten_minutes = Duration::from_secs(600);
    let never = lost_order(&env, "never", 100, ten_minutes).await;
    let scanned = lost_order(&env, "scanned", 200, ten_minutes).await;
    let paid = lost_order(&env, "paid", 300, ten_minutes).await;
    let racing = lost_order(&env, "racing", 400, ten_minutes).await;
    let recent = lost_order(&env, "recent", 500, Duration::from_secs(60)).await;
    env.buyers.buyer(&scanned).scans(200).send().await.unwrap();
    env.buyers
        .buyer(&paid)
        .scans(300)
        .pays()
        .send()
        .await
        .unwrap();
    env.buyers
        .buyer(&racing)
        .scans(400)
        .pays_on_close()
        .send()
        .await
        .unwrap();
    let decider = env.decider("reconcile-test");

    let dry = overdue::sweep(&decider, &options(Mode::DryRun), None, |_| {})
        .await
        .unwrap();
    assert_eq!(dry.scanned, 4, "{dry:?}");
    assert_eq!(dry.counts.get(&Verdict::WouldClose), Some(&1));
    assert_eq!(dry.counts.get(&Verdict::WouldPay), Some(&1));
    assert_eq!(dry.counts.get(&Verdict::WouldCloseAtGateway), Some(&2));
    assert_eq!(dry.finding, Finding::Fixed);
    for no in [&never, &scanned, &paid, &racing, &recent] {
        assert_eq!(
            env.order(no).await.status(),
            OrderStatus::New,
            "dry run changed {no}"
        );
    }
    // Only queries: the waiting trades are still waiting, the race still armed.
    assert_eq!(
        env.buyers.trade(&scanned).await.unwrap().unwrap().status,
        SimTradeStatus::WaitBuyerPay
    );

    let applied = overdue::sweep(&decider, &options(Mode::Apply), None, |_| {})
        .await
        .unwrap();
    assert_eq!(applied.scanned, 4);
    assert_eq!(applied.counts.get(&Verdict::Closed), Some(&2));
    assert_eq!(applied.counts.get(&Verdict::Paid), Some(&2));
    assert_eq!(env.order(&never).await.status(), OrderStatus::Closed);
    assert_eq!(env.order(&scanned).await.status(), OrderStatus::Closed);
    assert_eq!(env.order(&paid).await.status(), OrderStatus::Paid);
    assert_eq!(env.order(&racing).await.status(), OrderStatus::Paid);
    assert_eq!(
        env.order(&recent).await.status(),
        OrderStatus::New,
        "inside the grace period"
    );
    let again = overdue::sweep(&decider, &options(Mode::Apply), None, |_| {})
        .await
        .unwrap();
    assert_eq!((again.scanned, again.finding), (0, Finding::Clean));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_pages_through_many_orders_and_honours_limit() {
    let env = TestEnv::new(&[]).await;
    let past = Utc::now() - chrono::Duration::minutes(50);
    let shop = Closer::without_broker(env.pool.clone(), order_closer::gateway::rules::CHANNELS);
    for i in 0..1100 {
        let no = env.no(&format!("bulk{i:04}"));
        shop.create_order(NewOrder::new("alipay", &no, 100, Due::At(past)))
            .await
            .unwrap();
    }
    let decider = env.decider("reconcile-test");
    let mut limited = options(Mode::Apply);
    limited.limit = Some(700);
    limited.concurrency = 16;
    let first = overdue::sweep(&decider, &limited, None, |_| {})
        .await
        .unwrap();
    assert_eq!(first.scanned, 700);
    let mut rest = options(Mode::Apply);
    rest.concurrency = 16;
    let second = overdue::sweep(&decider, &rest, None, |_| {}).await.unwrap();
    assert_eq!(second.scanned, 400);
    assert_eq!(second.counts.get(&Verdict::Closed), Some(&400));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_beside_running_workers_decides_each_order_once() {
    let mut env = TestEnv::new(&[]).await;
    let mut numbers = Vec::new();
    for i in 0..40 {
        let no = env.no(&format!("both{i:02}"));
        env.create(&no, 100, Duration::ZERO).await;
        if i % 2 == 0 {
            env.buyers
                .buyer(&no)
                .scans(100)
                .pays()
                .send()
                .await
                .unwrap();
        }
        numbers.push(no);
    }
    env.start_worker(8, 16);
    let decider = env.decider("reconcile-test");
    let mut eager = options(Mode::Apply);
    eager.older_than = Duration::ZERO;
    overdue::sweep(&decider, &eager, None, |_| {})
        .await
        .unwrap();
    for no in &numbers {
        let order = env.settled(no, Duration::from_secs(20)).await;
        let finals: Vec<_> = env
            .decisions(order.id)
            .await
            .into_iter()
            .filter(|(o, _)| o == "closed" || o == "paid")
            .collect();
        assert_eq!(finals.len(), 1, "{no}: {finals:?}");
    }
    let events = env.drain_events().await;
    assert_eq!(events.len(), numbers.len());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parked_messages_are_listed_without_consuming_then_requeued_or_discarded() {
    let env = TestEnv::new(&[]).await;
    let no = lost_order(&env, "parked", 100, Duration::from_secs(600)).await;
    let order = env.order(&no).await;
    let note = ParkNote {
        reason: "attempts_exhausted",
        last_error: "timeout: the gateway did not answer",
        attempts: 7,
        first_seen: Utc::now(),
    };
    let message = CloseMessage::new(order.id, &no, order.deadline).encode();
    env.publisher.park(&message, &note).await.unwrap();
    let garbage = ParkNote {
        reason: "malformed",
        last_error: "not JSON",
        attempts: 0,
        first_seen: Utc::now(),
    };
    env.publisher.park(b"\x00garbage", &garbage).await.unwrap();
    let decider = env.decider("reconcile-test");
    let queue = env.topology.parked_queue();
    let channel = env.connection.create_channel().await.unwrap();
    let run = |action, mode| {
        let (channel, decider, publisher) = (&channel, &decider, &env.publisher);
        async move {
            parked::run(channel, publisher, decider, action, mode, 100, "test")
                .await
                .unwrap()
        }
    };

    let listed = run(ParkedAction::List, Mode::Apply).await;
    assert_eq!(listed.messages, 2);
    assert_eq!(listed.by_reason.get("attempts_exhausted"), Some(&1));
    assert_eq!(listed.lines[0].attempts, "7");
    assert_eq!(listed.finding, Finding::NeedsAttention);
    let back = eventually(Duration::from_secs(5), || async {
        (env.queue_len(&queue).await == 2).then_some(())
    })
    .await;
    assert!(back.is_some(), "listing must not consume");

    let dry = run(ParkedAction::Requeue, Mode::DryRun).await;
    assert_eq!(dry.removed, 0);
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);

    let requeued = run(ParkedAction::Requeue, Mode::Apply).await;
    assert_eq!(requeued.removed, 1);
    assert_eq!(env.order(&no).await.status(), OrderStatus::Closed);
    assert_eq!(
        requeued.finding,
        Finding::NeedsAttention,
        "the unreadable one stays"
    );
    let left = eventually(Duration::from_secs(5), || async {
        (env.queue_len(&queue).await == 1).then_some(())
    })
    .await;
    assert!(left.is_some());

    // A message parked for an order that is settled by now (a second chain, the janitor)
    // is listed as stale, and a requeue removes it.
    env.publisher.park(&message, &note).await.unwrap();
    let listed = run(ParkedAction::List, Mode::Apply).await;
    let stale: Vec<_> = listed
        .lines
        .iter()
        .filter(|l| l.out_trade_no.as_deref() == Some(no.as_str()))
        .map(|l| l.stale)
        .collect();
    assert_eq!(stale, [Some(OrderStatus::Closed)]);
    let requeued = run(ParkedAction::Requeue, Mode::Apply).await;
    assert_eq!(requeued.removed, 1);

    let discarded = run(ParkedAction::Discard, Mode::Apply).await;
    assert_eq!(discarded.removed, 1);
    let mut conn = db::conn(&env.pool).await.unwrap();
    let audit: Vec<String> = parked_discards::table
        .select(parked_discards::park_reason)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(audit, ["malformed"]);
    let empty = eventually(Duration::from_secs(5), || async {
        (env.queue_len(&queue).await == 0).then_some(())
    })
    .await;
    assert!(empty.is_some());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_tells_cron_what_it_found() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-reconcile-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let run = |args: &'static [&'static str]| {
        let vars = vars.clone();
        async move { crate::common::run_binary(crate::BIN, &vars, args).await }
    };
    let clean = run(&["reconcile", "overdue"]).await;
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );

    lost_order(&env, "cron", 100, Duration::from_secs(600)).await;
    let dry = run(&["reconcile", "overdue", "--dry-run", "--format", "json"]).await;
    assert_eq!(
        dry.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(report["scanned"], 1);
    assert_eq!(report["counts"]["would_close"], 1);
    let fixed = run(&["reconcile", "overdue"]).await;
    assert_eq!(fixed.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&fixed.stdout).contains("closed"));
    assert_eq!(run(&["reconcile", "overdue"]).await.status.code(), Some(0));

    let refused = run(&["reconcile", "parked", "--discard"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    let bad = run(&["reconcile", "overdue", "--older-than", "yesterday"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("older-than"));
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// An order whose message is parked is parked once. The sweep settles
/// it when the gateway allows; a gateway that still fails, or still gives a reason to
/// park, leaves it exactly as it was: no second park row, no retry row pulling it back
/// into the janitor's schedule, its one parked message.
#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_leaves_a_parked_order_parked_once_unless_it_settles() {
    // A transient failure below must reach the table: quick retries off.
    let env = TestEnv::new(&[("ORDER_CLOSER_QUICK_RETRIES", "0")]).await;
    let no = lost_order(&env, "parked-once", 100, Duration::from_secs(600)).await;
    let order = env.order(&no).await;
    let queue = env.topology.parked_queue();
    // A merchant id the gateway does not know: a permanent error, so the order is parked.
    let refused = env.decider_with(&[("ALIPAY_APP_ID", "2021999999999999")], "reconcile-test");
    let decider = env.decider("reconcile-test");
    let parked_rows = || async {
        env.decisions(order.id)
            .await
            .into_iter()
            .filter(|(outcome, _)| outcome == "parked")
            .count()
    };
    let claimable = || async {
        let mut conn = db::conn(&env.pool).await.unwrap();
        let later = Utc::now() + chrono::Duration::days(1);
        order_closer::db::orders::claim_overdue(&mut conn, later, 100, later)
            .await
            .unwrap()
            .len()
    };

    // A lost order the sweep must park gets its parked message, as the janitor's would.
    let first = overdue::sweep(
        &refused,
        &options(Mode::Apply),
        Some(&env.publisher),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        first.counts.get(&Verdict::NeedsOperator),
        Some(&1),
        "{first:?}"
    );
    assert_eq!(parked_rows().await, 1);
    let one = eventually(Duration::from_secs(5), || async {
        (env.queue_len(&queue).await == 1).then_some(())
    })
    .await;
    assert!(one.is_some(), "the parked message was published");
    assert_eq!(claimable().await, 0, "a parked order is not the janitor's");

    // Swept again while the reason holds: still parked, nothing written, no new message.
    let again = overdue::sweep(
        &refused,
        &options(Mode::Apply),
        Some(&env.publisher),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        again.counts.get(&Verdict::StillParked),
        Some(&1),
        "{again:?}"
    );
    assert_eq!(again.finding, Finding::NeedsAttention);
    assert_eq!(parked_rows().await, 1, "parked a second time");

    // A transient failure is not a retry either: the order stays out of the janitor's
    // schedule while its message waits for the operator.
    env.buyers
        .fail_next(&no, order_closer::sim::FaultKind::Http502, 1)
        .await
        .unwrap();
    let failing = overdue::sweep(
        &decider,
        &options(Mode::Apply),
        Some(&env.publisher),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        failing.counts.get(&Verdict::StillParked),
        Some(&1),
        "{failing:?}"
    );
    let trail = env.decisions(order.id).await;
    assert!(
        trail.iter().all(|(outcome, _)| outcome != "retry"),
        "{trail:?}"
    );
    assert_eq!(
        claimable().await,
        0,
        "pulled back into the janitor's schedule"
    );
    assert_eq!(env.queue_len(&queue).await, 1);

    // Once the gateway answers, the sweep settles it; its parked message is stale.
    let settled = overdue::sweep(
        &decider,
        &options(Mode::Apply),
        Some(&env.publisher),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        settled.counts.get(&Verdict::Closed),
        Some(&1),
        "{settled:?}"
    );
    assert_eq!(env.order(&no).await.status(), OrderStatus::Closed);
    env.cleanup().await;
}
