//! The notify endpoint end to end: the simulator sends Alipay's signed notifications over
//! HTTP to an endpoint in this process, over real Postgres, beside a worker on real
//! RabbitMQ. A notification and the worker's deadline decision meet in one guarded
//! transition; an untrusted notification only makes us ask the gateway; every bad input
//! gets a named outcome.

mod common;

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::db::{self, schema::anomalies};
use order_closer::gateway::GatewayMethod;
use order_closer::notify::NotifyOutcome;
use order_closer::order::Order;
use order_closer::order::OrderStatus;
use order_closer::sim::{Forge, NotifyPlan, SimTradeStatus, SimTradeView};

use common::gateway::{HeldGateway, HoldAt};
use common::tcp_proxy::TcpProxy;
use common::{TestEnv, eventually};

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .expect("the endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// (actor, outcome) of every decision about an order.
async fn audit(env: &TestEnv, order_id: i64) -> Vec<(String, String)> {
    env.trail(order_id)
        .await
        .into_iter()
        .map(|d| (d.actor, d.outcome))
        .collect()
}

async fn anomaly_kinds(env: &TestEnv, no: &str) -> Vec<String> {
    let mut conn = db::conn(&env.pool).await.unwrap();
    anomalies::table
        .filter(anomalies::out_trade_no.eq(no))
        .select(anomalies::kind)
        .load(&mut conn)
        .await
        .unwrap()
}

fn count(events: &[serde_json::Value], no: &str, event: &str) -> usize {
    events
        .iter()
        .filter(|e| e["out_trade_no"] == no && e["event"] == event)
        .count()
}

fn outcomes(env_metrics: &str, outcome: NotifyOutcome) -> u64 {
    let needle = format!(
        "order_closer_notifications_total{{outcome=\"{}\"}} ",
        outcome.as_str()
    );
    env_metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn trade(env: &TestEnv, no: &str) -> SimTradeView {
    env.buyers
        .trade(no)
        .await
        .unwrap()
        .expect("the trade exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivered_callback_pays_at_once_and_the_deadline_costs_no_gateway_call() {
    let mut env = TestEnv::new(&[]).await;
    let worker = env.start_worker(8, 16);
    let endpoint = env.start_notify().await;
    let no = env.no("delivered");
    let order = env.create(&no, 1234, Duration::from_secs(6)).await;
    env.buyers.scan_and_pay(&no, 1234).await.unwrap();

    let paid = env.settled(&no, Duration::from_secs(5)).await;
    assert_eq!(paid.status(), OrderStatus::Paid);
    assert!(Utc::now() < order.deadline, "PAID long before the deadline");
    let trail = audit(&env, order.id).await;
    assert_eq!(trail, vec![("notify:test".into(), "paid".into())]);
    let text = endpoint.notifier.metrics().render();
    assert!(
        text.contains("order_closer_payment_to_paid_seconds_count 1"),
        "one payment-to-PAID observation: {text}"
    );

    // At the deadline the close message finds the order settled: acked, no gateway call.
    let settled = eventually(Duration::from_secs(20), || async {
        worker
            .metrics
            .render()
            .contains("order_closer_decisions_total{outcome=\"already_settled\"} 1")
            .then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "the close message was not acked as settled"
    );
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!(
        (stats.queries, stats.closes),
        (0, 0),
        "no gateway call at all"
    );
    assert_eq!(audit(&env, order.id).await.len(), 1, "one decision");
    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.paid"), 1);
    assert_eq!(events.len(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_copies_at_once_give_one_decision_and_one_event() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let endpoint = env
        .serve_notify(env.notifier_over(env.pool.clone()), 0.001)
        .await;
    // The simulator stays quiet: the copies are ours.
    env.quiet_notifications();
    let no = env.no("copies");
    let order = env.create(&no, 990, Duration::from_secs(60)).await;
    let paid = env.buyers.scan_and_pay(&no, 990).await.unwrap();
    let form = env.notification(&paid);
    let replies =
        futures_util::future::join_all((0..10).map(|_| post(&endpoint.url, FORM, form.clone())))
            .await;
    for (status, body) in &replies {
        assert_eq!((*status, body.as_str()), (200, "success"));
    }
    assert_eq!(env.order(&no).await.status(), OrderStatus::Paid);
    assert_eq!(audit(&env, order.id).await.len(), 1, "one decision");
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), 1, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::AlreadyPaid), 9, "{text}");
    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.paid"), 1);
    env.cleanup().await;
}

/// The buyer pays while the worker closes: the close is refused and the worker asks again.
/// The worker is held just before that second query, so the race is run in each order of
/// arrival on purpose rather than left to chance.
async fn racing_payment(env: &mut TestEnv, name: &str) -> (String, Order, HeldHandles) {
    let (worker, held) = env.start_held_worker();
    let no = env.no(name);
    let order = env.create(&no, 500, Duration::from_secs(1)).await;
    env.buyers.scan(&no, 500).await.unwrap();
    env.buyers.pay_on_close(&no).await.unwrap();
    (no, order, HeldHandles { worker, held })
}

struct HeldHandles {
    worker: common::Observed,
    held: std::sync::Arc<HeldGateway>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_arriving_before_the_workers_second_query_wins_and_the_worker_finds_it_paid()
{
    let mut env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let (no, order, h) = racing_payment(&mut env, "notify-first").await;
    let hold = h.held.hold(GatewayMethod::Query, 2, HoldAt::Before);
    tokio::time::timeout(Duration::from_secs(20), hold.reached)
        .await
        .expect("the worker reached its second query")
        .unwrap();

    // The close was refused because the buyer paid; its notification lands now.
    let paid = trade(&env, &no).await;
    assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
    let (status, body) = post(&endpoint.url, FORM, env.notification(&paid)).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert_eq!(env.order(&no).await.status(), OrderStatus::Paid);

    // The worker goes on: the gateway says paid, its guarded update finds PAID.
    hold.release.send(()).unwrap();
    let lost = eventually(Duration::from_secs(20), || async {
        h.worker
            .metrics
            .render()
            .contains("order_closer_decisions_total{outcome=\"lost_race\"} 1")
            .then_some(())
    })
    .await;
    assert!(lost.is_some(), "{}", h.worker.metrics.render());
    assert_eq!(
        audit(&env, order.id).await,
        vec![("notify:test".into(), "paid".into())],
        "one decision: the notification's"
    );
    assert!(anomaly_kinds(&env, &no).await.is_empty());
    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.paid"), 1);
    assert_eq!(events.len(), 1);
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), 1, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_arriving_after_the_workers_decision_is_already_paid() {
    let mut env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let (no, order, _h) = racing_payment(&mut env, "worker-first").await;
    let decided = env.settled(&no, Duration::from_secs(20)).await;
    assert_eq!(decided.status(), OrderStatus::Paid);

    let paid = trade(&env, &no).await;
    let (status, body) = post(&endpoint.url, FORM, env.notification(&paid)).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert_eq!(
        audit(&env, order.id).await,
        vec![("test-worker-held".into(), "paid".into())],
        "one decision: the worker's"
    );
    assert!(anomaly_kinds(&env, &no).await.is_empty());
    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.paid"), 1);
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::AlreadyPaid), 1, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), 0, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_our_gateway_close_comes_first_the_buyer_cannot_pay_and_there_is_no_anomaly() {
    let mut env = TestEnv::new(&[]).await;
    let _endpoint = env.start_notify().await;
    let (worker, held) = env.start_held_worker();
    let no = env.no("closed-first");
    let order = env.create(&no, 700, Duration::from_secs(1)).await;
    env.buyers.scan(&no, 700).await.unwrap();
    // Held after the gateway closed the trade, before the local close commits: the buyer
    // tries to pay in exactly that window.
    let hold = held.hold(GatewayMethod::Close, 1, HoldAt::After);
    tokio::time::timeout(Duration::from_secs(20), hold.reached)
        .await
        .expect("the worker closed the trade at the gateway")
        .unwrap();
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);
    assert!(env.buyers.pay(&no).await.is_err(), "closed: unpayable");
    hold.release.send(()).unwrap();

    let closed = env.settled(&no, Duration::from_secs(20)).await;
    assert_eq!(closed.status(), OrderStatus::Closed);
    assert_eq!(
        closed.close_reason.as_deref(),
        Some("deadline_closed_by_us")
    );
    assert_eq!(trade(&env, &no).await.status, SimTradeStatus::TradeClosed);
    assert_eq!(audit(&env, order.id).await.len(), 1);
    assert!(anomaly_kinds(&env, &no).await.is_empty());
    let stats = env.buyers.notify_stats().await.unwrap();
    assert_eq!(stats.notifications, 0, "no payment, no notification");
    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.closed"), 1);
    assert_eq!(events.len(), 1);
    drop(worker);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_after_close_is_an_anomaly_announced_once() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let endpoint = env.start_notify().await;
    // Every notification arrives twice.
    let sim = env.sim.as_ref().unwrap();
    sim.notifier()
        .set_plan(NotifyPlan {
            duplicate_rate: 1.0,
            ..NotifyPlan::to(endpoint.base.clone(), 0.001)
        })
        .unwrap();
    let no = env.no("late");
    let order = env.create(&no, 1500, Duration::from_secs(1)).await;
    // Nobody scans before the deadline: the order closes (no trade at the gateway).
    assert_eq!(
        env.settled(&no, Duration::from_secs(15)).await.status(),
        OrderStatus::Closed
    );
    // A QR code without expiry, scanned and paid after we closed.
    let paid = env.buyers.scan_and_pay(&no, 1500).await.unwrap();
    let seen = eventually(Duration::from_secs(10), || async {
        let stats = env.buyers.notify_stats().await.ok()?;
        (stats.acknowledged >= 2).then_some(())
    })
    .await;
    assert!(seen.is_some(), "both copies acknowledged");
    // And a resend by hand, later.
    let (status, body) = post(&endpoint.url, FORM, env.notification(&paid)).await;
    assert_eq!((status, body.as_str()), (200, "success"));

    assert_eq!(env.order(&no).await.status(), OrderStatus::Closed);
    assert_eq!(anomaly_kinds(&env, &no).await, vec!["paid_after_close"]);
    assert_eq!(audit(&env, order.id).await.len(), 1, "the close only");
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::PaidAfterClose), 3, "{text}");
    let events = env.drain_events().await;
    assert_eq!(count(&events, &no, "order.anomaly.paid_after_close"), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_paid_notification_only_makes_us_ask_the_gateway() {
    let env = TestEnv::new(&[]).await;
    let endpoint = env
        .serve_notify(env.notifier_over(env.pool.clone()), 0.001)
        .await;
    let no = env.no("forged");
    env.create(&no, 1000, Duration::from_secs(60)).await;
    let waiting = env.buyers.scan(&no, 1000).await.unwrap();
    // "Paid", signed with a key that is not the gateway's.
    let claimed = SimTradeView {
        status: order_closer::sim::SimTradeStatus::TradeSuccess,
        paid_at: Some(Utc::now()),
        ..waiting
    };
    let forged = env.forged_notification(
        &claimed,
        Forge {
            stranger_key: true,
            ..Forge::genuine()
        },
    );
    let before = env.buyers.stats().await.unwrap().queries;
    let (status, body) = post(&endpoint.url, FORM, forged.clone()).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "success"),
        "asked and handled"
    );
    assert_eq!(env.buyers.stats().await.unwrap().queries, before + 1);
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);
    // The same again at once: no second query within the spacing.
    let (status, _) = post(&endpoint.url, FORM, forged).await;
    assert_eq!(status, 429);
    assert_eq!(env.buyers.stats().await.unwrap().queries, before + 1);
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Queried), 1, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Rejected), 1, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_notifications_each_get_a_named_outcome() {
    let env = TestEnv::new(&[]).await;
    let endpoint = env
        .serve_notify(env.notifier_over(env.pool.clone()), 0.001)
        .await;
    env.quiet_notifications();
    let url = endpoint.url.clone();
    let queries = || async { env.buyers.stats().await.unwrap().queries };

    // Oversized: 413 before anything is read, in Alipay's reply format, counted.
    let (status, body) = post(&url, FORM, vec![b'a'; 65 * 1024]).await;
    assert_eq!((status, body.as_str()), (413, "fail"));
    // Not a form.
    let (status, body) = post(&url, "application/json", "{\"out_trade_no\":\"X\"}").await;
    assert_eq!((status, body.as_str()), (400, "fail"));
    // A form without an order number.
    let (status, _) = post(&url, FORM, "trade_status=TRADE_SUCCESS&total_amount=1.00").await;
    assert_eq!(status, 400);
    // An order number no order can have (over 64 characters): refused unread.
    let long = format!("out_trade_no={}&trade_status=TRADE_SUCCESS", "X".repeat(65));
    assert_eq!(post(&url, FORM, long).await.0, 400);
    // An unknown channel.
    let other = url.replace("/notify/alipay", "/notify/nosuch");
    assert_eq!(post(&other, FORM, "out_trade_no=X").await.0, 404);

    // An order number we do not have: signed, it is acknowledged (not ours); forged, it
    // is refused; neither costs a query.
    let q0 = queries().await;
    let stranger = env.no("stranger");
    let mut view = env.buyers.scan_and_pay(&stranger, 100).await.unwrap();
    let (status, body) = post(&url, FORM, env.notification(&view)).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    view.amount_minor = 1;
    let (status, _) = post(
        &url,
        FORM,
        env.notification(&view).replace("sign=", "sign=x"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        queries().await,
        q0,
        "no query about an order we do not have"
    );

    // Missing fields (no signature), another app_id (signed by the gateway): hints; the
    // gateway's answer decides, and the buyer really paid, so each ends PAID.
    for name in ["nosign", "appid"] {
        let no = env.no(name);
        env.create(&no, 300, Duration::from_secs(60)).await;
        let paid = env.buyers.scan_and_pay(&no, 300).await.unwrap();
        let form = match name {
            "nosign" => env.forged_notification(
                &paid,
                Forge {
                    unsigned: true,
                    ..Forge::genuine()
                },
            ),
            _ => env.forged_notification(
                &paid,
                Forge {
                    other_merchant: true,
                    ..Forge::genuine()
                },
            ),
        };
        let before = queries().await;
        let (status, body) = post(&url, FORM, form).await;
        assert_eq!((status, body.as_str()), (200, "success"), "{name}");
        assert_eq!(queries().await, before + 1, "{name}: the gateway was asked");
        let order = env.order(&no).await;
        assert_eq!(order.status(), OrderStatus::Paid, "{name}");
        assert_eq!(
            audit(&env, order.id).await,
            vec![("notify:test".into(), "paid".into())],
            "{name}"
        );
        assert!(anomaly_kinds(&env, &no).await.is_empty(), "{name}");
    }
    // An amount that differs from the order's (the buyer paid 3.01 for 3.00), signed by
    // the gateway: not applied as it stands; asked, the gateway confirms 3.01, and the
    // decision table marks it PAID with an amount_mismatch anomaly.
    let differs = env.no("amount");
    env.create(&differs, 300, Duration::from_secs(60)).await;
    let paid = env.buyers.scan_and_pay(&differs, 301).await.unwrap();
    let before = queries().await;
    assert_eq!(post(&url, FORM, env.notification(&paid)).await.1, "success");
    assert_eq!(queries().await, before + 1);
    assert_eq!(env.order(&differs).await.status(), OrderStatus::Paid);
    assert_eq!(anomaly_kinds(&env, &differs).await, vec!["amount_mismatch"]);

    // TRADE_CLOSED after a full refund of a PAID order: not a state we act on, and a
    // PAID order has nothing left to learn: no query, the order stays PAID.
    let refunded = env.no("refunded");
    env.create(&refunded, 800, Duration::from_secs(60)).await;
    let paid = env.buyers.scan_and_pay(&refunded, 800).await.unwrap();
    assert_eq!(post(&url, FORM, env.notification(&paid)).await.1, "success");
    let closed = env.buyers.refund(&refunded, 800).await.unwrap();
    assert_eq!(
        closed.status,
        order_closer::sim::SimTradeStatus::TradeClosed
    );
    let before = queries().await;
    assert_eq!(
        post(&url, FORM, env.notification(&closed)).await.1,
        "success"
    );
    assert_eq!(queries().await, before);
    assert_eq!(env.order(&refunded).await.status(), OrderStatus::Paid);

    // A replay days later of a "paid" for an order still waiting: too old to be believed,
    // so the gateway is asked; it knows no payment, nothing changes.
    let replayed = env.no("replayed");
    let order = env.create(&replayed, 600, Duration::from_secs(60)).await;
    let waiting = env.buyers.scan(&replayed, 600).await.unwrap();
    let old = env.forged_notification(
        &SimTradeView {
            status: order_closer::sim::SimTradeStatus::TradeSuccess,
            paid_at: Some(Utc::now() - chrono::Duration::days(3)),
            ..waiting
        },
        Forge::sent_at(Utc::now() - chrono::Duration::days(3)),
    );
    let before = queries().await;
    assert_eq!(post(&url, FORM, old).await.1, "success");
    assert_eq!(queries().await, before + 1);
    assert_eq!(env.order(&replayed).await.status(), OrderStatus::New);
    assert!(audit(&env, order.id).await.is_empty());
    assert!(anomaly_kinds(&env, &replayed).await.is_empty());

    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Rejected), 5, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::UnknownOrder), 2, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Queried), 4, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), 1, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::AlreadyPaid), 1, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_days_later_for_an_order_closed_since_changes_nothing() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let no = env.no("closed-since");
    let order = env.create(&no, 600, Duration::from_secs(1)).await;
    let waiting = env.buyers.scan(&no, 600).await.unwrap();
    let closed = env.settled(&no, Duration::from_secs(20)).await;
    assert_eq!(closed.status(), OrderStatus::Closed);

    // A correctly signed "paid" from three days ago (as if captured then): too old to be
    // believed, so only a hint. The gateway, asked, says the trade is closed: the order
    // stays CLOSED, no anomaly, and the reply stops the resends.
    let days_ago = Utc::now() - chrono::Duration::days(3);
    let replay = env.forged_notification(
        &SimTradeView {
            status: SimTradeStatus::TradeSuccess,
            paid_at: Some(days_ago),
            ..waiting
        },
        Forge::sent_at(days_ago),
    );
    let before = env.buyers.stats().await.unwrap().queries;
    let (status, body) = post(&endpoint.url, FORM, replay.clone()).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert_eq!(env.buyers.stats().await.unwrap().queries, before + 1);
    // The same replay again at once: within the hint spacing, no second query.
    let (status, _) = post(&endpoint.url, FORM, replay).await;
    assert_eq!(status, 429);
    assert_eq!(env.buyers.stats().await.unwrap().queries, before + 1);

    let after = env.order(&no).await;
    assert_eq!(after.status(), OrderStatus::Closed);
    assert_eq!(after.closed_at, closed.closed_at);
    assert_eq!(
        audit(&env, order.id).await.len(),
        1,
        "the close, nothing more"
    );
    assert!(anomaly_kinds(&env, &no).await.is_empty());
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Queried), 1, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Rejected), 1, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::PaidAfterClose), 0, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_database_down_the_gateway_is_refused_and_the_resend_lands() {
    let env = TestEnv::new(&[]).await;
    // The endpoint reaches Postgres through a proxy the test switches off and on.
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap(), false).await;
    let url_via_proxy = env
        .database_url
        .replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
    assert_ne!(
        url_via_proxy, env.database_url,
        "the test database is on 127.0.0.1:5432"
    );
    let pool = db::pool(&url_via_proxy, 2).unwrap();
    // Resends after 240 ms, 600 ms, 600 ms, 3.6 s...
    let endpoint = env.serve_notify(env.notifier_over(pool), 0.001).await;
    let no = env.no("dbdown");
    let order = env.create(&no, 2500, Duration::from_secs(60)).await;
    env.buyers.scan_and_pay(&no, 2500).await.unwrap();

    let refused = eventually(Duration::from_secs(10), || async {
        let stats = env.buyers.notify_stats().await.ok()?;
        (stats.refused >= 1).then_some(())
    })
    .await;
    assert!(refused.is_some(), "the first send was refused");
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);
    proxy.switch_on();
    let paid = env.settled(&no, Duration::from_secs(15)).await;
    assert_eq!(paid.status(), OrderStatus::Paid);
    assert_eq!(audit(&env, order.id).await.len(), 1);
    let stats = env.buyers.notify_stats().await.unwrap();
    assert_eq!(stats.acknowledged, 1, "{stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let text = endpoint.notifier.metrics().render();
    assert!(
        outcomes(&text, NotifyOutcome::DatabaseUnavailable) >= 1,
        "{text}"
    );
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), 1, "{text}");
    env.cleanup().await;
}

/// `order-closer notify` itself: the binary serves the endpoint the simulator notifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_notify_command_serves_the_endpoint() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-notify-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-closer"))
        .args(["notify", "--listen", &listen])
        .envs(env.binary_env(&dir))
        .env("ORDER_CLOSER_HTTP_LISTEN", "off")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start order-closer notify");
    let up = eventually(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&listen)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(
        up.is_some(),
        "order-closer notify did not listen on {listen}"
    );
    env.sim
        .as_ref()
        .unwrap()
        .notifier()
        .set_plan(NotifyPlan::to(format!("http://{listen}/notify"), 0.001))
        .unwrap();
    let no = env.no("binary");
    let order = env.create(&no, 4321, Duration::from_secs(60)).await;
    env.buyers.scan_and_pay(&no, 4321).await.unwrap();
    assert_eq!(
        env.settled(&no, Duration::from_secs(10)).await.status(),
        OrderStatus::Paid
    );
    let trail = audit(&env, order.id).await;
    assert_eq!(trail.len(), 1);
    assert!(trail[0].0.starts_with("notify:"), "{trail:?}");
    // SIGTERM: a clean stop.
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("notify stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}
