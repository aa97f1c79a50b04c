//! Orders with several trades (payment attempts), end to end: orders created without a
//! trade, trades added when the buyer picks a method (one at each gateway the simulator
//! speaks), buyers who switch, pay none, or pay twice; a worker on real RabbitMQ deciding
//! the whole order at its deadline, closing every open trade at its own gateway first.
//! Each outcome is checked against the simulator: what the gateways say is what the
//! order says.
// It runs the simulator: only with the full build.
#![cfg(feature = "tooling")]

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::closer::{Closer, Due, NewOrder, NewTrade};
use order_closer::db::{self, schema::anomalies, schema::refunds};
use order_closer::gateway::GatewayMethod;
use order_closer::order::{Order, OrderStatus};
use order_closer::sim::{Forge, SimRefund, SimTradeStatus, SimTradeView};
use order_closer::trade::{Trade, TradeStatus};

use crate::common::gateway::{HeldGateway, HoldAt};
use crate::common::{TestEnv, eventually};

const DECIDED_WITHIN: Duration = Duration::from_secs(40);

/// The two gateways of a two-trade order: the first trade's, the second's.
const FIRST: &str = "alipay";
const SECOND: &str = "wechat";

/// A closer taking trades until the deadline itself (the tests' deadlines are seconds).
fn closer(env: &TestEnv) -> Closer {
    env.closer.clone().with_expiry_margin(Duration::ZERO)
}

/// An order without a trade due after `after`, and its two trades, `<no>-A` at the first
/// gateway and `<no>-W` at the second, both scanned by the buyer (waiting for payment).
/// Their notifications are lost: only the deadline's queries (or the test) tell.
async fn two_trades(env: &TestEnv, name: &str, after: Duration) -> (String, [String; 2]) {
    let no = env.no(name);
    let closer = closer(env);
    closer
        .create_order(NewOrder::without_trade(&no, 1234, "CNY", Due::After(after)))
        .await
        .unwrap();
    let numbers = [format!("{no}-A"), format!("{no}-W")];
    for (channel, number) in [FIRST, SECOND].iter().zip(&numbers) {
        let added = closer
            .add_trade(&no, NewTrade::new(*channel, number))
            .await
            .unwrap();
        assert_eq!(added.trade.status, TradeStatus::Open);
        env.buyers
            .buyer(number)
            .at(channel)
            .scans(1234)
            .loses_notification()
            .send()
            .await
            .unwrap();
    }
    (no, numbers)
}

async fn trades(env: &TestEnv, no: &str) -> Vec<Trade> {
    let order = env.order(no).await;
    let mut conn = db::conn(&env.pool).await.unwrap();
    db::trades::for_order(&mut conn, order.id).await.unwrap()
}

async fn at_gateway(env: &TestEnv, number: &str) -> SimTradeView {
    env.buyers
        .trade(number)
        .await
        .unwrap()
        .expect("the trade exists at its gateway")
}

/// Every one of these trades is closed at its gateway.
async fn closed_at_gateways(env: &TestEnv, numbers: &[&String]) {
    for number in numbers {
        assert_eq!(
            at_gateway(env, number).await.status,
            SimTradeStatus::TradeClosed,
            "{number}"
        );
    }
}

/// The trade is closed at its gateway within [`DECIDED_WITHIN`].
async fn closed_soon(env: &TestEnv, number: &str) {
    let closed = eventually(DECIDED_WITHIN, || async {
        (at_gateway(env, number).await.status == SimTradeStatus::TradeClosed).then_some(())
    })
    .await;
    assert!(closed.is_some(), "{number} closed at its gateway");
}

/// The trade a paid order was paid through, and its other one.
fn payer_and_other<'a>(order: &Order, stored: &'a [Trade]) -> (&'a Trade, &'a Trade) {
    let payer = stored
        .iter()
        .find(|t| Some(t.id) == order.paid_trade_id)
        .expect("the order names the trade that paid it");
    let other = stored
        .iter()
        .find(|t| t.id != payer.id)
        .expect("a second trade");
    (payer, other)
}

/// The second payment is given back at its gateway, exactly once, and the order's own
/// payment is not; the refund as the gateway shows it.
async fn refunded_once(env: &TestEnv, order: &Order, stored: &[Trade]) -> SimRefund {
    let (payer, duplicate) = payer_and_other(order, stored);
    let refunded = eventually(DECIDED_WITHIN, || async {
        let view = at_gateway(env, &duplicate.out_trade_no).await;
        (!view.refunds.is_empty()).then_some(view)
    })
    .await
    .expect("the second payment is refunded");
    assert_eq!(refunded.refunds.len(), 1);
    assert!(
        at_gateway(env, &payer.out_trade_no)
            .await
            .refunds
            .is_empty()
    );
    refunded.refunds[0].clone()
}

async fn pays(env: &TestEnv, number: &str) -> SimTradeView {
    env.buyers.buyer(number).pays().send().await.unwrap()
}

async fn anomaly_kinds(env: &TestEnv, no: &str) -> Vec<(String, Option<i64>)> {
    let mut conn = db::conn(&env.pool).await.unwrap();
    anomalies::table
        .filter(anomalies::out_trade_no.eq(no))
        .order(anomalies::id)
        .select((anomalies::kind, anomalies::trade_id))
        .load(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_who_switches_gateway_pays_the_second_and_the_first_is_closed_at_its_gateway() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let (no, [a, w]) = two_trades(&env, "switch", Duration::from_secs(3)).await;
    pays(&env, &w).await;
    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Paid);
    let stored = trades(&env, &no).await;
    let paid = stored.iter().find(|t| t.out_trade_no == w).unwrap();
    let other = stored.iter().find(|t| t.out_trade_no == a).unwrap();
    assert_eq!(order.paid_trade_id, Some(paid.id));
    assert_eq!(paid.status, TradeStatus::Paid);
    assert_eq!(
        (other.status, other.close_reason.as_deref()),
        (TradeStatus::Closed, Some("deadline_closed_by_us"))
    );
    // The gateways agree: the first trade can no longer be paid.
    assert_eq!(
        at_gateway(&env, &a).await.status,
        SimTradeStatus::TradeClosed
    );
    assert_eq!(
        at_gateway(&env, &w).await.status,
        SimTradeStatus::TradeSuccess
    );
    assert!(anomaly_kinds(&env, &no).await.is_empty());
    // The event names the trade that paid.
    let events = env.drain_events().await;
    let paid_event: Vec<_> = events
        .iter()
        .filter(|e| e["out_trade_no"] == no.as_str() && e["event"] == "order.paid")
        .collect();
    assert_eq!(paid_event.len(), 1, "{events:?}");
    assert_eq!(paid_event[0]["trade"]["out_trade_no"], w.as_str());
    assert_eq!(paid_event[0]["channel"], SECOND);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_who_opens_two_and_pays_none_has_both_closed_at_their_gateways() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let (no, [a, w]) = two_trades(&env, "none", Duration::from_secs(2)).await;
    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Closed);
    assert_eq!(order.close_reason.as_deref(), Some("deadline_closed_by_us"));
    for t in trades(&env, &no).await {
        assert_eq!(t.status, TradeStatus::Closed, "{}", t.out_trade_no);
    }
    closed_at_gateways(&env, &[&a, &w]).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_without_a_trade_is_closed_without_asking_any_gateway() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let no = env.no("bare");
    closer(&env)
        .create_order(NewOrder::without_trade(
            &no,
            500,
            "CNY",
            Due::After(Duration::from_secs(1)),
        ))
        .await
        .unwrap();
    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(
        (order.status(), order.close_reason.as_deref()),
        (OrderStatus::Closed, Some("deadline_no_trade"))
    );
    let stats = env.buyers.stats().await.unwrap();
    assert_eq!((stats.queries, stats.closes), (0, 0));
    // No trade can be added to it now.
    let refused = closer(&env)
        .add_trade(&no, NewTrade::new(FIRST, format!("{no}-late")))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("CLOSED"), "{refused}");
    env.cleanup().await;
}

/// The buyer pays on both gateways; the order is PAID once, the second payment is a
/// `duplicate_payment`, recorded and announced once and refunded once under `refund`,
/// whatever the number of notifications and workers that see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_who_pays_on_two_gateways_gets_the_second_payment_back_once() {
    let mut env = TestEnv::new(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).await;
    env.quiet_notifications();
    let endpoint = env.start_notify().await;
    env.start_worker(4, 8);
    env.start_worker(4, 8);
    let (no, [a, w]) = two_trades(&env, "twice", Duration::from_secs(3)).await;
    let paid_a = pays(&env, &a).await;
    let paid_w = pays(&env, &w).await;
    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Paid);
    // Both notifications, three times each, after the deadline's decision.
    for _ in 0..3 {
        for (channel, view) in [(FIRST, &paid_a), (SECOND, &paid_w)] {
            let copy = env.notice(view, Forge::genuine());
            let reply = env.deliver(&endpoint, channel, &copy).await;
            assert!(reply.acknowledged, "{channel}: {reply:?}");
        }
    }
    let stored = trades(&env, &no).await;
    assert!(stored.iter().all(|t| t.status == TradeStatus::Paid));
    let duplicate = payer_and_other(&order, &stored).1.clone();
    // Given back at its gateway, once.
    assert_eq!(
        refunded_once(&env, &order, &stored).await.amount_minor,
        1234
    );
    assert_eq!(
        anomaly_kinds(&env, &no).await,
        vec![("duplicate_payment".to_owned(), Some(duplicate.id))]
    );
    let mut conn = db::conn(&env.pool).await.unwrap();
    let rows: Vec<(i64, String)> = refunds::table
        .filter(refunds::order_id.eq(order.id))
        .select((refunds::trade_id, refunds::status))
        .load(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, duplicate.id);
    let events = env.drain_events().await;
    let announced = events
        .iter()
        .filter(|e| {
            e["event"] == "order.anomaly.duplicate_payment" && e["out_trade_no"] == no.as_str()
        })
        .count();
    assert_eq!(announced, 1, "{events:?}");
    env.cleanup().await;
}

/// A notification pays the order long before its deadline: its other open trade is closed
/// at its gateway now, not at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notified_payment_closes_the_other_trade_at_once() {
    let mut env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    let endpoint = env.start_notify().await;
    env.start_worker(4, 8);
    let (no, [a, w]) = two_trades(&env, "early", Duration::from_secs(600)).await;
    let paid = pays(&env, &w).await;
    let copy = env.notice(&paid, Forge::genuine());
    assert!(env.deliver(&endpoint, SECOND, &copy).await.acknowledged);
    assert_eq!(env.order(&no).await.status(), OrderStatus::Paid);
    let closed = eventually(DECIDED_WITHIN, || async {
        let view = at_gateway(&env, &a).await;
        (view.status == SimTradeStatus::TradeClosed).then_some(view)
    })
    .await;
    assert!(
        closed.is_some(),
        "the other trade is closed long before the deadline"
    );
    let other = eventually(DECIDED_WITHIN, || async {
        trades(&env, &no)
            .await
            .into_iter()
            .find(|t| t.out_trade_no == a && t.status == TradeStatus::Closed)
    })
    .await;
    assert!(other.is_some(), "recorded closed");
    assert!(anomaly_kinds(&env, &no).await.is_empty());
    env.cleanup().await;
}

/// Two notifications paying both trades arrive at once, or one after the other in either
/// order: one payment pays the order, the other is the duplicate, recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_notifications_paying_both_trades_pay_the_order_once() {
    let env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    let endpoint = env.start_notify().await;
    for arrival in ["first-then-second", "second-then-first", "together"] {
        let (no, [a, w]) = two_trades(&env, arrival, Duration::from_secs(600)).await;
        let copies = [
            (FIRST, env.notice(&pays(&env, &a).await, Forge::genuine())),
            (SECOND, env.notice(&pays(&env, &w).await, Forge::genuine())),
        ];
        match arrival {
            "first-then-second" | "second-then-first" => {
                let order: Vec<usize> = if arrival == "first-then-second" {
                    vec![0, 1]
                } else {
                    vec![1, 0]
                };
                for i in order {
                    let (channel, copy) = &copies[i];
                    assert!(env.deliver(&endpoint, channel, copy).await.acknowledged);
                }
            }
            _ => {
                let replies = futures_util::future::join_all(
                    copies
                        .iter()
                        .map(|(channel, copy)| env.deliver(&endpoint, channel, copy)),
                )
                .await;
                assert!(replies.iter().all(|r| r.acknowledged), "{replies:?}");
            }
        }
        let order = env.order(&no).await;
        assert_eq!(order.status(), OrderStatus::Paid, "{arrival}");
        let stored = trades(&env, &no).await;
        assert!(
            stored.iter().all(|t| t.status == TradeStatus::Paid),
            "{arrival}: {stored:?}"
        );
        let duplicate = payer_and_other(&order, &stored).1;
        if arrival == "first-then-second" {
            assert_eq!(
                duplicate.out_trade_no, w,
                "the later payment is the duplicate"
            );
        }
        if arrival == "second-then-first" {
            assert_eq!(
                duplicate.out_trade_no, a,
                "the later payment is the duplicate"
            );
        }
        assert_eq!(
            anomaly_kinds(&env, &no).await,
            vec![("duplicate_payment".to_owned(), Some(duplicate.id))],
            "{arrival}"
        );
    }
    env.cleanup().await;
}

/// The buyer pays the second trade while the worker is closing the first: run in both
/// orders on purpose, with the worker held at chosen gateway calls. Paid before the
/// worker asked its gateway: PAID through it, the first closed. Asked and closed first:
/// the payment is refused at the gateway, and the order is CLOSED with both trades closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_on_one_trade_while_the_worker_closes_the_other() {
    for paid_first in [true, false] {
        let mut env = TestEnv::new(&[]).await;
        let gateways = env.gateways();
        let held_first = HeldGateway::new(gateways.get(FIRST).unwrap().clone());
        let held_second = HeldGateway::new(gateways.get(SECOND).unwrap().clone());
        let decider = env.app().decider_over(
            env.pool.clone(),
            gateways
                .with(FIRST, held_first.clone())
                .with(SECOND, held_second.clone()),
            "test-worker-held",
        );
        // The first trade's close waits; the second trade's query waits (paid first), or
        // its close, once applied at the gateway (closed first).
        let first = held_first.hold(GatewayMethod::Close, 1, HoldAt::Before);
        let second = if paid_first {
            held_second.hold(GatewayMethod::Query, 1, HoldAt::Before)
        } else {
            held_second.hold(GatewayMethod::Close, 1, HoldAt::After)
        };
        let config = order_closer::worker::WorkerConfig::from_settings(&env.settings);
        env.run_worker(decider, config);
        let (no, [_a, w]) = two_trades(&env, "race", Duration::from_secs(1)).await;
        first.reached.await.unwrap();
        second.reached.await.unwrap();
        let paid = env.buyers.buyer(&w).pays().send().await;
        assert_eq!(
            paid.is_ok(),
            paid_first,
            "paid_first={paid_first}: {paid:?}"
        );
        second.release.send(()).unwrap();
        first.release.send(()).unwrap();
        let order = env.settled(&no, DECIDED_WITHIN).await;
        let stored = trades(&env, &no).await;
        if paid_first {
            assert_eq!(order.status(), OrderStatus::Paid);
            let payer = stored.iter().find(|t| t.out_trade_no == w).unwrap();
            assert_eq!(order.paid_trade_id, Some(payer.id));
            assert!(
                stored
                    .iter()
                    .any(|t| t.out_trade_no != w && t.status == TradeStatus::Closed)
            );
        } else {
            assert_eq!(order.status(), OrderStatus::Closed);
            assert!(stored.iter().all(|t| t.status == TradeStatus::Closed));
        }
        for t in &stored {
            let view = at_gateway(&env, &t.out_trade_no).await;
            let expected = match t.status {
                TradeStatus::Paid => SimTradeStatus::TradeSuccess,
                _ => SimTradeStatus::TradeClosed,
            };
            assert_eq!(
                view.status, expected,
                "paid_first={paid_first}: {}",
                t.out_trade_no
            );
        }
        env.cleanup().await;
    }
}

/// The shop cancels an order with two trades: both are closed at their gateways first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_closes_every_open_trade_at_its_gateway() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let (no, [a, w]) = two_trades(&env, "cancel", Duration::from_secs(600)).await;
    let cancelled = env.closer.cancel_order(&no).await.unwrap();
    assert_eq!(cancelled, order_closer::closer::Cancelled::Closed);
    assert_eq!(env.order(&no).await.status(), OrderStatus::Closed);
    closed_at_gateways(&env, &[&a, &w]).await;
    env.cleanup().await;
}

/// The shop settles an order by other means (a voucher): PAID through no trade, audited and
/// announced, and its open trade closed at its gateway at once so the buyer cannot pay too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_settled_otherwise_is_paid_and_its_trades_are_closed_at_once() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let (no, [a, w]) = two_trades(&env, "voucher", Duration::from_secs(600)).await;
    let paid = env
        .closer
        .settle_otherwise(&no, "gift card GC-77")
        .await
        .unwrap();
    assert_eq!(
        (paid.status(), paid.paid_trade_id),
        (OrderStatus::Paid, None)
    );
    for number in [&a, &w] {
        closed_soon(&env, number).await;
    }
    let trail = env.trail(paid.id).await;
    assert!(
        trail
            .iter()
            .any(|d| d.outcome == "paid" && d.actor == "closer" && d.detail.contains("GC-77")),
        "{trail:?}"
    );
    let events = env.drain_events().await;
    let announced: Vec<_> = events
        .iter()
        .filter(|e| e["out_trade_no"] == no.as_str() && e["event"] == "order.paid")
        .collect();
    assert_eq!(announced.len(), 1, "{events:?}");
    assert_eq!(announced[0]["reason"], "settled_otherwise");
    assert!(announced[0].get("trade").is_none());
    // Settled already: refused, naming why.
    let again = env.closer.settle_otherwise(&no, "twice").await.unwrap_err();
    assert!(again.to_string().contains("PAID already"), "{again}");
    env.cleanup().await;
}

/// A trade added while the worker decides the order (a shop whose clock, or the
/// database's, let it in at the last moment: written here straight into the table) is
/// never missed: the close the worker had decided matches nothing, and the order is
/// decided again with the new trade closed at its gateway too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trade_added_while_the_worker_decides_is_closed_too() {
    let mut env = TestEnv::new(&[]).await;
    let (_worker, held) = env.start_held_worker(FIRST);
    let hold = held.hold(GatewayMethod::Close, 1, HoldAt::After);
    let no = env.no("late-trade");
    let order = env
        .create_at(FIRST, &no, 1234, Duration::from_secs(1))
        .await;
    env.buyers
        .buyer(&no)
        .at(FIRST)
        .scans(1234)
        .send()
        .await
        .unwrap();
    hold.reached.await.unwrap();
    // The first trade is closed at its gateway; the decision is about to close the order.
    let late = format!("{no}-W");
    let mut conn = db::conn(&env.pool).await.unwrap();
    db::trades::insert(
        &mut conn,
        order.id,
        db::trades::NewTradeRow {
            channel: SECOND,
            out_trade_no: &late,
            gateway_ref: None,
        },
    )
    .await
    .unwrap();
    drop(conn);
    env.buyers
        .buyer(&late)
        .at(SECOND)
        .scans(1234)
        .send()
        .await
        .unwrap();
    hold.release.send(()).unwrap();
    let settled = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(settled.status(), OrderStatus::Closed);
    for t in trades(&env, &no).await {
        assert_eq!(t.status, TradeStatus::Closed, "{}", t.out_trade_no);
        assert_eq!(
            at_gateway(&env, &t.out_trade_no).await.status,
            SimTradeStatus::TradeClosed,
            "{}",
            t.out_trade_no
        );
    }
    let trail = env.trail(order.id).await;
    assert!(
        trail
            .iter()
            .any(|d| d.outcome == "retry" && d.detail.starts_with("trade_added")),
        "{trail:?}"
    );
    env.cleanup().await;
}

/// Under `hold`, a second payment waits for an operator: `reconcile anomalies --refund`
/// gives back that trade's payment, never the order's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_hold_an_operator_refunds_the_second_payment_not_the_first() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let (no, [a, w]) = two_trades(&env, "held-twice", Duration::from_secs(2)).await;
    pays(&env, &a).await;
    pays(&env, &w).await;
    let order = env.settled(&no, DECIDED_WITHIN).await;
    assert_eq!(order.status(), OrderStatus::Paid);
    let stored = trades(&env, &no).await;
    let duplicate = payer_and_other(&order, &stored).1.clone();
    // Recorded and held: nothing given back yet.
    let recorded = eventually(DECIDED_WITHIN, || async {
        let kinds = anomaly_kinds(&env, &no).await;
        (!kinds.is_empty()).then_some(kinds)
    })
    .await;
    assert_eq!(
        recorded,
        Some(vec![("duplicate_payment".to_owned(), Some(duplicate.id))])
    );
    assert!(
        at_gateway(&env, &duplicate.out_trade_no)
            .await
            .refunds
            .is_empty()
    );

    let decider = env.decider("reconcile:test");
    let report = order_closer::reconcile::refund::request(&decider, &no, false)
        .await
        .unwrap();
    assert!(
        matches!(
            report.result,
            order_closer::decide::refund::RefundRequestResult::Requested {
                amount_minor: 1234,
                ..
            }
        ),
        "{report:?}"
    );
    refunded_once(&env, &order, &stored).await;
    env.cleanup().await;
}

/// A PAID order paid once has nothing an operator can refund: its own payment is refused,
/// naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_cannot_refund_the_payment_of_a_paid_order() {
    let mut env = TestEnv::new(&[]).await;
    env.start_worker(4, 8);
    let (no, [_a, w]) = two_trades(&env, "paid-once", Duration::from_secs(2)).await;
    pays(&env, &w).await;
    assert_eq!(
        env.settled(&no, DECIDED_WITHIN).await.status(),
        OrderStatus::Paid
    );
    let decider = env.decider("reconcile:test");
    let refused = order_closer::reconcile::refund::request(&decider, &no, false)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("its own payment is never refunded"),
        "{refused}"
    );
    env.cleanup().await;
}
