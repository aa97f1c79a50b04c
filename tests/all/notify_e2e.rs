//! The notify endpoint end to end, on every gateway the simulator speaks: the simulator
//! sends each gateway's signed notifications over HTTP to an endpoint in this process,
//! over real Postgres, beside a worker on real RabbitMQ. A notification and the worker's
//! deadline decision meet in one guarded transition; an untrusted notification only makes
//! us ask the gateway; every bad input gets a named outcome. Each test loops over the
//! gateways: one test, not a copy per gateway.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::db::{self, schema::anomalies};
use order_closer::gateway::GatewayMethod;
use order_closer::notify::NotifyOutcome;
use order_closer::notify::hints::Refusal;
use order_closer::order::{Order, OrderStatus};
use order_closer::sim::{Forge, NotifyPlan, Outgoing, SimTradeStatus, SimTradeView};

use crate::common::gateway::{HoldAt, HoldHandle};
use crate::common::notices::{claimed_paid, outcomes, queries, refused_hints};
use crate::common::{NotifyEndpoint, TestEnv, eventually};

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

async fn trade(env: &TestEnv, no: &str) -> SimTradeView {
    env.buyers
        .trade(no)
        .await
        .unwrap()
        .expect("the trade exists")
}

fn channels(env: &TestEnv) -> Vec<&'static str> {
    env.sim().channels()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivered_callback_pays_at_once_and_the_deadline_costs_no_gateway_call() {
    let mut env = TestEnv::new(&[]).await;
    // No worker yet: the deadline path cannot race the notification, whatever the
    // machine's speed. The worker starts once every order is PAID, and its close
    // messages must then find them settled.
    let endpoint = env.start_notify().await;
    let mut orders = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("cb-{channel}"));
        let order = env
            .create_at(channel, &no, 1234, Duration::from_secs(6))
            .await;
        env.buyers
            .at(channel)
            .buyer(&no)
            .scans(1234)
            .pays()
            .send()
            .await
            .unwrap();
        orders.push((channel, no, order));
    }
    for (channel, no, order) in &orders {
        let paid = env.settled(no, Duration::from_secs(30)).await;
        assert_eq!(paid.status(), OrderStatus::Paid, "{channel}");
        let trail = audit(&env, order.id).await;
        assert_eq!(
            trail,
            vec![("notify:test".into(), "paid".into())],
            "{channel}"
        );
    }
    let n = orders.len();
    let text = endpoint.notifier.metrics().render();
    assert!(
        text.contains(&format!("order_closer_payment_to_paid_seconds_count {n}")),
        "one payment-to-PAID observation each: {text}"
    );

    // At the deadline the close messages find the orders settled: no gateway call.
    let worker = env.start_worker(8, 16);
    let settled = eventually(Duration::from_secs(20), || async {
        worker
            .metrics
            .render()
            .contains(&format!(
                "order_closer_decisions_total{{outcome=\"already_settled\"}} {n}"
            ))
            .then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "the close messages were not acked as settled"
    );
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!(
        (stats.queries, stats.closes),
        (0, 0),
        "no gateway call at all"
    );
    let events = env.drain_events().await;
    for (channel, no, order) in &orders {
        assert_eq!(
            audit(&env, order.id).await.len(),
            1,
            "{channel}: one decision"
        );
        assert_eq!(count(&events, no, "order.paid"), 1, "{channel}");
    }
    assert_eq!(events.len(), n);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_copies_at_once_give_one_decision_and_one_event() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let endpoint = env.start_notify().await;
    // The simulator stays quiet: the copies are ours.
    env.quiet_notifications();
    let mut orders = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("ten-{channel}"));
        let order = env
            .create_at(channel, &no, 990, Duration::from_secs(60))
            .await;
        let paid = env
            .buyers
            .at(channel)
            .buyer(&no)
            .scans(990)
            .pays()
            .send()
            .await
            .unwrap();
        let copy = env.notice(&paid, Forge::genuine());
        let replies =
            futures_util::future::join_all((0..10).map(|_| env.deliver(&endpoint, channel, &copy)))
                .await;
        assert!(
            replies.iter().all(|r| r.acknowledged),
            "{channel}: {replies:?}"
        );
        orders.push((channel, no, order));
    }
    let events = env.drain_events().await;
    for (channel, no, order) in &orders {
        assert_eq!(env.order(no).await.status(), OrderStatus::Paid, "{channel}");
        assert_eq!(
            audit(&env, order.id).await.len(),
            1,
            "{channel}: one decision"
        );
        assert_eq!(count(&events, no, "order.paid"), 1, "{channel}");
    }
    let n = orders.len() as u64;
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), n, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::AlreadyPaid), 9 * n, "{text}");
    env.cleanup().await;
}

/// The buyer pays while the worker closes: the close is refused and the worker asks again.
/// The worker is held at one gateway call, so the race is run in each order of arrival on
/// purpose rather than left to chance.
struct Race {
    env: TestEnv,
    endpoint: NotifyEndpoint,
    worker: crate::common::Observed,
    no: String,
    order: Order,
}

/// Sets the race up in an order that no timing can spoil: the held worker first, the
/// hold armed (when the test holds a call), the buyer's scan (and `pay_on_close`), and
/// only then the order, due a second later.
async fn race(
    channel: &str,
    name: &str,
    pay_on_close: bool,
    hold: Option<(GatewayMethod, usize, HoldAt)>,
) -> (Race, Option<HoldHandle>) {
    let mut env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let (worker, held) = env.start_held_worker(channel);
    let hold = hold.map(|(method, nth, at)| held.hold(method, nth, at));
    let no = env.no(name);
    let buyers = env.buyers.at(channel);
    buyers.buyer(&no).scans(500).send().await.unwrap();
    if pay_on_close {
        buyers.buyer(&no).pays_on_close().send().await.unwrap();
    }
    let order = env
        .create_at(channel, &no, 500, Duration::from_secs(1))
        .await;
    let race = Race {
        env,
        endpoint,
        worker,
        no,
        order,
    };
    (race, hold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_arriving_before_the_workers_second_query_wins_and_the_worker_finds_it_paid()
{
    for channel in order_closer::gateway::rules::channels() {
        let (r, hold) = race(
            channel,
            "nfirst",
            true,
            Some((GatewayMethod::Query, 2, HoldAt::Before)),
        )
        .await;
        let hold = hold.unwrap();
        tokio::time::timeout(Duration::from_secs(20), hold.reached)
            .await
            .expect("the worker reached its second query")
            .unwrap();

        // The close was refused because the buyer paid; its notification lands now.
        let paid = trade(&r.env, &r.no).await;
        assert_eq!(paid.status, SimTradeStatus::TradeSuccess, "{channel}");
        let sent = r
            .env
            .deliver(&r.endpoint, channel, &r.env.notice(&paid, Forge::genuine()))
            .await;
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        assert_eq!(r.env.order(&r.no).await.status(), OrderStatus::Paid);

        // The worker goes on: the gateway says paid, its guarded update finds PAID.
        hold.release.send(()).unwrap();
        let lost = eventually(Duration::from_secs(20), || async {
            r.worker
                .metrics
                .render()
                .contains("order_closer_decisions_total{outcome=\"lost_race\"} 1")
                .then_some(())
        })
        .await;
        assert!(lost.is_some(), "{channel}: {}", r.worker.metrics.render());
        assert_eq!(
            audit(&r.env, r.order.id).await,
            vec![("notify:test".into(), "paid".into())],
            "{channel}: one decision, the notification's"
        );
        assert!(anomaly_kinds(&r.env, &r.no).await.is_empty());
        let events = r.env.drain_events().await;
        assert_eq!(count(&events, &r.no, "order.paid"), 1, "{channel}");
        assert_eq!(events.len(), 1);
        let text = r.endpoint.notifier.metrics().render();
        assert_eq!(outcomes(&text, NotifyOutcome::Paid), 1, "{text}");
        r.env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_arriving_after_the_workers_decision_is_already_paid() {
    for channel in order_closer::gateway::rules::channels() {
        let (r, _) = race(channel, "wfirst", true, None).await;
        let decided = r.env.settled(&r.no, Duration::from_secs(20)).await;
        assert_eq!(decided.status(), OrderStatus::Paid, "{channel}");

        let paid = trade(&r.env, &r.no).await;
        let sent = r
            .env
            .deliver(&r.endpoint, channel, &r.env.notice(&paid, Forge::genuine()))
            .await;
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        assert_eq!(
            audit(&r.env, r.order.id).await,
            vec![("test-worker-held".into(), "paid".into())],
            "{channel}: one decision, the worker's"
        );
        assert!(anomaly_kinds(&r.env, &r.no).await.is_empty());
        let events = r.env.drain_events().await;
        assert_eq!(count(&events, &r.no, "order.paid"), 1, "{channel}");
        let text = r.endpoint.notifier.metrics().render();
        assert_eq!(outcomes(&text, NotifyOutcome::AlreadyPaid), 1, "{text}");
        assert_eq!(outcomes(&text, NotifyOutcome::Paid), 0, "{text}");
        r.env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_our_gateway_close_comes_first_the_buyer_cannot_pay_and_there_is_no_anomaly() {
    for channel in order_closer::gateway::rules::channels() {
        // Held after the gateway closed the trade, before the local close commits: the
        // buyer tries to pay in exactly that window.
        let (r, hold) = race(
            channel,
            "cfirst",
            false,
            Some((GatewayMethod::Close, 1, HoldAt::After)),
        )
        .await;
        let hold = hold.unwrap();
        tokio::time::timeout(Duration::from_secs(20), hold.reached)
            .await
            .expect("the worker closed the trade at the gateway")
            .unwrap();
        assert_eq!(r.env.order(&r.no).await.status(), OrderStatus::New);
        assert!(
            r.env.buyers.buyer(&r.no).pays().send().await.is_err(),
            "{channel}: closed, unpayable"
        );
        hold.release.send(()).unwrap();

        let closed = r.env.settled(&r.no, Duration::from_secs(20)).await;
        assert_eq!(closed.status(), OrderStatus::Closed, "{channel}");
        assert_eq!(
            closed.close_reason.as_deref(),
            Some("deadline_closed_by_us"),
            "{channel}"
        );
        assert_eq!(
            trade(&r.env, &r.no).await.status,
            SimTradeStatus::TradeClosed
        );
        assert_eq!(audit(&r.env, r.order.id).await.len(), 1);
        assert!(anomaly_kinds(&r.env, &r.no).await.is_empty());
        let events = r.env.drain_events().await;
        assert_eq!(count(&events, &r.no, "order.closed"), 1, "{channel}");
        assert_eq!(events.len(), 1);
        r.env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_after_close_is_an_anomaly_announced_once() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let endpoint = env.start_notify().await;
    // Every notification arrives twice.
    env.sim()
        .notifier()
        .set_plan(NotifyPlan {
            duplicate_rate: 1.0,
            ..NotifyPlan::to(endpoint.base.clone(), 0.001)
        })
        .unwrap();
    let mut orders = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("late-{channel}"));
        let order = env
            .create_at(channel, &no, 1500, Duration::from_secs(1))
            .await;
        orders.push((channel, no, order));
    }
    for (channel, no, _) in &orders {
        // Nobody scans before the deadline: the order closes (no trade at the gateway).
        let closed = env.settled(no, Duration::from_secs(15)).await;
        assert_eq!(closed.status(), OrderStatus::Closed, "{channel}");
        // A code without expiry, scanned and paid after we closed.
        env.buyers
            .at(channel)
            .buyer(no)
            .scans(1500)
            .pays()
            .send()
            .await
            .unwrap();
    }
    let n = orders.len() as u64;
    let seen = eventually(Duration::from_secs(10), || async {
        let stats = env.buyers.notify_stats().await.ok()?;
        (stats.acknowledged >= 2 * n).then_some(())
    })
    .await;
    assert!(seen.is_some(), "both copies acknowledged");
    let events = env.drain_events().await;
    for (channel, no, order) in &orders {
        // And a resend by hand, later.
        let paid = trade(&env, no).await;
        let sent = env
            .deliver(&endpoint, channel, &env.notice(&paid, Forge::genuine()))
            .await;
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        assert_eq!(
            env.order(no).await.status(),
            OrderStatus::Closed,
            "{channel}"
        );
        assert_eq!(
            anomaly_kinds(&env, no).await,
            vec!["paid_after_close"],
            "{channel}"
        );
        assert_eq!(
            audit(&env, order.id).await.len(),
            1,
            "{channel}: the close only"
        );
        assert_eq!(
            count(&events, no, "order.anomaly.paid_after_close"),
            1,
            "{channel}"
        );
    }
    let text = endpoint.notifier.metrics().render();
    assert_eq!(
        outcomes(&text, NotifyOutcome::PaidAfterClose),
        3 * n,
        "{text}"
    );
    let events = env.drain_events().await;
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "order.anomaly.paid_after_close"),
        "announced once"
    );
    env.cleanup().await;
}

/// A payment given back before the deadline closed its order with a
/// `refunded_before_deadline` anomaly. The payment's notification, resent late and
/// genuine, is no payment after close: that anomaly already says all there is, and under
/// the refund policy nothing is requested for money that went back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_notification_of_a_payment_given_back_before_the_deadline_is_no_payment_after_close()
{
    let mut env = TestEnv::new(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).await;
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let mut orders = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("given-back-{channel}"));
        let buyers = env.buyers.at(channel);
        buyers.buyer(&no).scans(800).send().await.unwrap();
        let paid = buyers
            .buyer(&no)
            .pays()
            .loses_notification()
            .send()
            .await
            .unwrap();
        buyers.refund(&no, 800).await.unwrap();
        let order = env
            .create_at(channel, &no, 800, Duration::from_secs(1))
            .await;
        orders.push((channel, no, order, paid));
    }
    env.start_worker(4, 8);
    for (channel, no, order, paid) in &orders {
        let closed = env.settled(no, Duration::from_secs(20)).await;
        assert_eq!(
            closed.close_reason.as_deref(),
            Some("deadline_refunded_at_gateway"),
            "{channel}"
        );
        let sent = env
            .deliver(&endpoint, channel, &env.notice(paid, Forge::genuine()))
            .await;
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        assert_eq!(
            anomaly_kinds(&env, no).await,
            vec!["refunded_before_deadline"],
            "{channel}"
        );
        assert_eq!(
            audit(&env, order.id).await.len(),
            1,
            "{channel}: the close only"
        );
    }
    let mut conn = order_closer::db::conn(&env.pool).await.unwrap();
    let open = order_closer::db::refunds::open(&mut conn, 100)
        .await
        .unwrap();
    assert!(open.is_empty(), "no refund requested: {open:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_paid_notification_only_makes_us_ask_the_gateway() {
    let env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    for channel in channels(&env) {
        let no = env.no(&format!("forged-{channel}"));
        env.create_at(channel, &no, 1000, Duration::from_secs(60))
            .await;
        let waiting = env
            .buyers
            .at(channel)
            .buyer(&no)
            .scans(1000)
            .send()
            .await
            .unwrap();
        // "Paid", signed with a key that is not the gateway's.
        let forged = env.notice(
            &claimed_paid(waiting, Utc::now()),
            Forge {
                stranger_key: true,
                ..Forge::genuine()
            },
        );
        let before = queries(&env).await;
        let sent = env.deliver(&endpoint, channel, &forged).await;
        assert!(sent.acknowledged, "{channel}: asked and handled: {sent:?}");
        assert_eq!(queries(&env).await, before + 1, "{channel}");
        assert_eq!(env.order(&no).await.status(), OrderStatus::New, "{channel}");
        // The same again at once: no second query within the spacing.
        let sent = env.deliver(&endpoint, channel, &forged).await;
        assert_eq!((sent.status, sent.acknowledged), (429, false), "{channel}");
        assert_eq!(queries(&env).await, before + 1, "{channel}");
    }
    let n = channels(&env).len() as u64;
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Queried), n, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Rejected), n, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_notifications_each_get_a_named_outcome() {
    let env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let n = channels(&env).len() as u64;
    for channel in channels(&env) {
        let buyers = env.buyers.at(channel);
        let refused = |sent: &crate::common::Sent, status: u16| {
            assert_eq!(
                (sent.status, sent.acknowledged),
                (status, false),
                "{channel}: {sent:?}"
            );
        };
        // Oversized: refused before anything is read, in the gateway's reply format.
        let big = Outgoing {
            content_type: "application/json",
            headers: Vec::new(),
            body: "a".repeat(65 * 1024),
        };
        refused(&env.deliver(&endpoint, channel, &big).await, 413);

        // An order number we do not have: genuine, it is acknowledged (not ours);
        // forged, it is refused; neither costs a query.
        let q0 = queries(&env).await;
        let stranger = env.no(&format!("unknown-{channel}"));
        let view = buyers
            .buyer(&stranger)
            .scans(100)
            .pays()
            .send()
            .await
            .unwrap();
        let sent = env
            .deliver(&endpoint, channel, &env.notice(&view, Forge::genuine()))
            .await;
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        let forged = Forge {
            stranger_key: true,
            ..Forge::genuine()
        };
        refused(
            &env.deliver(&endpoint, channel, &env.notice(&view, forged))
                .await,
            404,
        );
        assert_eq!(
            queries(&env).await,
            q0,
            "{channel}: no query about an order we do not have"
        );

        // Another merchant, even signed by the gateway: not addressed to us, refused
        // before anything is read or asked, though the buyer really paid.
        let merch = env.no(&format!("merch-{channel}"));
        env.create_at(channel, &merch, 300, Duration::from_secs(60))
            .await;
        let paid = buyers.buyer(&merch).scans(300).pays().send().await.unwrap();
        let before = queries(&env).await;
        let other = Forge {
            other_merchant: true,
            ..Forge::genuine()
        };
        refused(
            &env.deliver(&endpoint, channel, &env.notice(&paid, other))
                .await,
            400,
        );
        assert_eq!(queries(&env).await, before, "{channel}: nothing asked");
        assert_eq!(env.order(&merch).await.status(), OrderStatus::New);

        // No signature: a hint; the gateway's answer decides, and the buyer really paid,
        // so it ends PAID.
        let no = env.no(&format!("nosign-{channel}"));
        env.create_at(channel, &no, 300, Duration::from_secs(60))
            .await;
        let paid = buyers.buyer(&no).scans(300).pays().send().await.unwrap();
        let unsigned = Forge {
            unsigned: true,
            ..Forge::genuine()
        };
        let sent = env
            .deliver(&endpoint, channel, &env.notice(&paid, unsigned))
            .await;
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        assert_eq!(
            queries(&env).await,
            before + 1,
            "{channel}: the gateway was asked"
        );
        let order = env.order(&no).await;
        assert_eq!(order.status(), OrderStatus::Paid, "{channel}");
        assert_eq!(
            audit(&env, order.id).await,
            vec![("notify:test".into(), "paid".into())],
            "{channel}"
        );
        assert!(anomaly_kinds(&env, &no).await.is_empty(), "{channel}");

        // An amount that differs from the order's (the buyer paid 3.01 for 3.00), signed
        // by the gateway: not applied as it stands; asked, the gateway confirms 3.01, and
        // the decision table marks it PAID with an amount_mismatch anomaly.
        let differs = env.no(&format!("amount-{channel}"));
        env.create_at(channel, &differs, 300, Duration::from_secs(60))
            .await;
        let paid = buyers
            .buyer(&differs)
            .scans(301)
            .pays()
            .send()
            .await
            .unwrap();
        let before = queries(&env).await;
        assert!(
            env.deliver(&endpoint, channel, &env.notice(&paid, Forge::genuine()))
                .await
                .acknowledged
        );
        assert_eq!(queries(&env).await, before + 1, "{channel}");
        assert_eq!(
            env.order(&differs).await.status(),
            OrderStatus::Paid,
            "{channel}"
        );
        assert_eq!(
            anomaly_kinds(&env, &differs).await,
            vec!["amount_mismatch"],
            "{channel}"
        );

        // The notification of a full refund of a PAID order: not a state we act on, and
        // a PAID order has nothing left to learn: no query, the order stays PAID.
        let refunded = env.no(&format!("refund-{channel}"));
        env.create_at(channel, &refunded, 800, Duration::from_secs(60))
            .await;
        let paid = buyers
            .buyer(&refunded)
            .scans(800)
            .pays()
            .send()
            .await
            .unwrap();
        assert!(
            env.deliver(&endpoint, channel, &env.notice(&paid, Forge::genuine()))
                .await
                .acknowledged
        );
        let closed = env.buyers.refund(&refunded, 800).await.unwrap();
        assert_eq!(closed.status, SimTradeStatus::TradeClosed);
        let before = queries(&env).await;
        let sent = env
            .deliver(&endpoint, channel, &env.notice(&closed, Forge::genuine()))
            .await;
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        assert_eq!(queries(&env).await, before, "{channel}");
        assert_eq!(env.order(&refunded).await.status(), OrderStatus::Paid);

        // A replay days later of a "paid" for an order still waiting: too old to be
        // believed, so the gateway is asked; it knows no payment, nothing changes.
        let replayed = env.no(&format!("replay-{channel}"));
        let order = env
            .create_at(channel, &replayed, 600, Duration::from_secs(60))
            .await;
        let waiting = buyers.buyer(&replayed).scans(600).send().await.unwrap();
        let days_ago = Utc::now() - chrono::Duration::days(3);
        let old = env.notice(&claimed_paid(waiting, days_ago), Forge::sent_at(days_ago));
        let before = queries(&env).await;
        assert!(
            env.deliver(&endpoint, channel, &old).await.acknowledged,
            "{channel}"
        );
        assert_eq!(queries(&env).await, before + 1, "{channel}");
        assert_eq!(
            env.order(&replayed).await.status(),
            OrderStatus::New,
            "{channel}"
        );
        assert!(audit(&env, order.id).await.is_empty());
        assert!(anomaly_kinds(&env, &replayed).await.is_empty());
    }
    // An unknown channel.
    let sent = env
        .deliver(
            &endpoint,
            "nosuch",
            &Outgoing {
                content_type: "application/json",
                headers: Vec::new(),
                body: "{}".into(),
            },
        )
        .await;
    assert_eq!(sent.status, 404);

    let text = endpoint.notifier.metrics().render();
    assert_eq!(
        outcomes(&text, NotifyOutcome::Rejected),
        2 * n + 1,
        "{text}"
    );
    assert_eq!(
        outcomes(&text, NotifyOutcome::UnknownOrder),
        2 * n,
        "{text}"
    );
    assert_eq!(outcomes(&text, NotifyOutcome::Queried), 3 * n, "{text}");
    assert_eq!(refused_hints(&text, Refusal::NotOurMerchant), n, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), n, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::AlreadyPaid), n, "{text}");
    env.cleanup().await;
}

/// Alipay's own format errors: what is not a notification form at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn alipay_forms_that_are_not_notifications_are_refused_unread() {
    let env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    let form = "application/x-www-form-urlencoded; charset=utf-8";
    let send = |content_type: &'static str, body: String| Outgoing {
        content_type,
        headers: Vec::new(),
        body,
    };
    for (content_type, body) in [
        ("application/json", "{\"out_trade_no\":\"X\"}".to_owned()),
        (
            form,
            "trade_status=TRADE_SUCCESS&total_amount=1.00".to_owned(),
        ),
        // An order number no order can have (over 64 characters).
        (
            form,
            format!("out_trade_no={}&trade_status=TRADE_SUCCESS", "X".repeat(65)),
        ),
        (form, "out_trade_no=A&out_trade_no=B".to_owned()),
    ] {
        let sent = env
            .deliver(&endpoint, "alipay", &send(content_type, body.clone()))
            .await;
        assert_eq!((sent.status, sent.body.as_str()), (400, "fail"), "{body}");
    }
    assert_eq!(queries(&env).await, 0);
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Rejected), 4, "{text}");
    env.cleanup().await;
}

/// WeChat Pay's own: a signature probe, a tampered resource, a body that is not JSON, a
/// stale signature timestamp, a wrong merchant id in the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_probes_tampering_and_stale_signatures_each_get_a_named_outcome() {
    let env = TestEnv::new(&[]).await;
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let buyers = env.buyers.at("wechat");
    let no = env.no("wx-bad");
    let order = env
        .create_at("wechat", &no, 700, Duration::from_secs(60))
        .await;
    let paid = buyers.buyer(&no).scans(700).pays().send().await.unwrap();
    let genuine = env.notice(&paid, Forge::genuine());

    // WeChat's probe: a signature starting WECHATPAY/SIGNTEST/ must get a 4xx.
    let mut probe = genuine.clone();
    for (name, value) in probe.headers.iter_mut() {
        if name == "Wechatpay-Signature" {
            *value = order_closer::gateway::wechat::sign::probe_signature();
        }
    }
    let sent = env.deliver(&endpoint, "wechat", &probe).await;
    assert_eq!((sent.status, sent.acknowledged), (400, false), "{sent:?}");
    assert!(sent.body.contains("FAIL"), "{sent:?}");

    // The ciphertext changed (signature headers still those of the original): the
    // resource does not open, so nothing names an order: refused, no query.
    let mut envelope: serde_json::Value = serde_json::from_str(&genuine.body).unwrap();
    let ciphertext = envelope["resource"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if ciphertext.starts_with('A') {
        "B"
    } else {
        "A"
    };
    envelope["resource"]["ciphertext"] = format!("{flipped}{}", &ciphertext[1..]).into();
    let tampered = Outgoing {
        body: envelope.to_string(),
        ..genuine.clone()
    };
    let sent = env.deliver(&endpoint, "wechat", &tampered).await;
    assert_eq!((sent.status, sent.acknowledged), (400, false), "{sent:?}");
    let not_json = Outgoing {
        body: "trade_status=SUCCESS".into(),
        ..genuine.clone()
    };
    assert_eq!(
        env.deliver(&endpoint, "wechat", &not_json).await.status,
        400
    );
    assert_eq!(queries(&env).await, 0, "nothing to ask about");
    assert_eq!(env.order(&no).await.status(), OrderStatus::New);

    // Signed ten minutes ago: outside the 5-minute window, only a hint; the gateway,
    // asked, confirms the payment.
    let stale = env.notice(
        &paid,
        Forge::sent_at(Utc::now() - chrono::Duration::minutes(10)),
    );
    let sent = env.deliver(&endpoint, "wechat", &stale).await;
    assert!(sent.acknowledged, "{sent:?}");
    assert_eq!(queries(&env).await, 1);
    assert_eq!(env.order(&no).await.status(), OrderStatus::Paid);
    assert_eq!(
        audit(&env, order.id).await,
        vec![("notify:test".into(), "paid".into())]
    );
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Rejected), 3, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Queried), 1, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_days_later_for_an_order_closed_since_changes_nothing() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let endpoint = env.start_notify().await;
    env.quiet_notifications();
    let mut orders = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("since-{channel}"));
        let order = env
            .create_at(channel, &no, 600, Duration::from_secs(1))
            .await;
        let waiting = env
            .buyers
            .at(channel)
            .buyer(&no)
            .scans(600)
            .send()
            .await
            .unwrap();
        orders.push((channel, no, order, waiting));
    }
    // Every order closed first: the simulator's query counter is shared by its gateways,
    // and a deadline decision still running at another gateway would count its queries.
    let mut closed_orders = Vec::new();
    for (channel, no, order, waiting) in orders {
        let closed = env.settled(&no, Duration::from_secs(20)).await;
        assert_eq!(closed.status(), OrderStatus::Closed, "{channel}");
        closed_orders.push((channel, no, order, waiting, closed));
    }
    for (channel, no, order, waiting, closed) in closed_orders {
        // A correctly signed "paid" from three days ago (as if captured then): too old to
        // be believed, so only a hint. The gateway, asked, says the trade is closed: the
        // order stays CLOSED, no anomaly, and the reply stops the resends.
        let days_ago = Utc::now() - chrono::Duration::days(3);
        let replay = env.notice(&claimed_paid(waiting, days_ago), Forge::sent_at(days_ago));
        let before = queries(&env).await;
        let sent = env.deliver(&endpoint, channel, &replay).await;
        assert!(sent.acknowledged, "{channel}: {sent:?}");
        assert_eq!(queries(&env).await, before + 1, "{channel}");
        // The same replay again at once: within the hint spacing, no second query.
        let sent = env.deliver(&endpoint, channel, &replay).await;
        assert_eq!((sent.status, sent.acknowledged), (429, false), "{channel}");
        assert_eq!(queries(&env).await, before + 1);

        let after = env.order(&no).await;
        assert_eq!(after.status(), OrderStatus::Closed, "{channel}");
        assert_eq!(after.closed_at, closed.closed_at);
        assert_eq!(
            audit(&env, order.id).await.len(),
            1,
            "{channel}: the close, nothing more"
        );
        assert!(anomaly_kinds(&env, &no).await.is_empty());
    }
    let n = channels(&env).len() as u64;
    let text = endpoint.notifier.metrics().render();
    assert_eq!(outcomes(&text, NotifyOutcome::Queried), n, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::Rejected), n, "{text}");
    assert_eq!(outcomes(&text, NotifyOutcome::PaidAfterClose), 0, "{text}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_database_down_the_gateway_is_refused_and_the_resend_lands() {
    let env = TestEnv::new(&[]).await;
    // The endpoint reaches Postgres through a proxy the test switches off and on.
    let (proxy, url_via_proxy) = env.database_through_proxy(false).await;
    let pool = db::pool(&url_via_proxy, 2).unwrap();
    // Resends after a fraction of each gateway's schedule.
    let endpoint = env.serve_notify(env.notifier_over(pool), 0.001).await;
    let mut orders = Vec::new();
    for channel in channels(&env) {
        let no = env.no(&format!("dbd-{channel}"));
        let order = env
            .create_at(channel, &no, 2500, Duration::from_secs(60))
            .await;
        env.buyers
            .at(channel)
            .buyer(&no)
            .scans(2500)
            .pays()
            .send()
            .await
            .unwrap();
        orders.push((channel, no, order));
    }
    let n = orders.len() as u64;
    let refused = eventually(Duration::from_secs(10), || async {
        let stats = env.buyers.notify_stats().await.ok()?;
        (stats.refused >= n).then_some(())
    })
    .await;
    assert!(refused.is_some(), "the first sends were refused");
    for (_, no, _) in &orders {
        assert_eq!(env.order(no).await.status(), OrderStatus::New);
    }
    proxy.switch_on();
    for (channel, no, order) in &orders {
        let paid = env.settled(no, Duration::from_secs(15)).await;
        assert_eq!(paid.status(), OrderStatus::Paid, "{channel}");
        assert_eq!(audit(&env, order.id).await.len(), 1);
    }
    // The simulator counts an acknowledgement once it has read the reply, which comes
    // after the commit seen above: wait for it.
    let stats = eventually(Duration::from_secs(20), || async {
        let stats = env.buyers.notify_stats().await.ok()?;
        (stats.acknowledged >= n).then_some(stats)
    })
    .await
    .expect("every resend acknowledged");
    assert_eq!(stats.acknowledged, n, "{stats:?}");
    assert_eq!(stats.gave_up, 0, "{stats:?}");
    let text = endpoint.notifier.metrics().render();
    assert!(
        outcomes(&text, NotifyOutcome::DatabaseUnavailable) >= n,
        "{text}"
    );
    assert_eq!(outcomes(&text, NotifyOutcome::Paid), n, "{text}");
    env.cleanup().await;
}

/// `order-closer notify` as a child process on a free port, its stderr going to
/// `stderr`; returned once it listens, with its address.
async fn notify_command(
    env: &TestEnv,
    dir: &std::path::Path,
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String) {
    std::fs::create_dir_all(dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-closer"))
        .args(["notify", "--listen", &listen])
        .envs(env.binary_env(dir))
        .env("ORDER_CLOSER_HTTP_LISTEN", "off")
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
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
    (child, listen)
}

/// Stops the child with SIGTERM and says how it ended.
async fn terminate(mut child: tokio::process::Child) -> std::process::ExitStatus {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("notify stops on SIGTERM")
        .unwrap()
}

/// `order-closer notify` itself: the binary serves the endpoint the simulator notifies,
/// for every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_notify_command_serves_the_endpoint() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-notify-{}", env.tag));
    let (child, listen) = notify_command(&env, &dir, std::process::Stdio::inherit()).await;
    env.sim()
        .notifier()
        .set_plan(NotifyPlan::to(format!("http://{listen}/notify"), 0.001))
        .unwrap();
    for channel in channels(&env) {
        let no = env.no(&format!("bin-{channel}"));
        let order = env
            .create_at(channel, &no, 4321, Duration::from_secs(60))
            .await;
        env.buyers
            .at(channel)
            .buyer(&no)
            .scans(4321)
            .pays()
            .send()
            .await
            .unwrap();
        assert_eq!(
            env.settled(&no, Duration::from_secs(10)).await.status(),
            OrderStatus::Paid,
            "{channel}"
        );
        let trail = audit(&env, order.id).await;
        assert_eq!(trail.len(), 1);
        assert!(trail[0].0.starts_with("notify:"), "{trail:?}");
    }
    // SIGTERM: a clean stop.
    let status = terminate(child).await;
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// `curl -XPOST '/notify/x%1B%5B2J' -d a=b` cleared the terminal that showed the
/// log: the channel segment was logged raw. Escape codes, NUL and backspace from a URL
/// reach the log escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_channel_segment_with_control_characters_reaches_the_log_escaped() {
    use tokio::io::AsyncReadExt;

    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-notify-esc-{}", env.tag));
    let (mut child, listen) = notify_command(&env, &dir, std::process::Stdio::piped()).await;
    let mut stderr = child.stderr.take().expect("piped stderr");
    let log = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = stderr.read_to_end(&mut out).await;
        out
    });
    let sent = reqwest::Client::new()
        .post(format!("http://{listen}/notify/x%1B%5B2J%00%08"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .expect("the endpoint answers");
    assert_eq!(sent.status().as_u16(), 404);
    assert!(terminate(child).await.success());
    let log = log.await.unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        !log.iter().any(|b| matches!(b, 0x1b | 0x00 | 0x08)),
        "raw control characters in the log: {text:?}"
    );
    assert!(text.contains(r"x\u{1b}[2J\u{0}\u{8}"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}
