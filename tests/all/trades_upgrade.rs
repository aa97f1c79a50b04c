//! A rolling upgrade to trades loses nothing: orders written by the release before trades
//! (one trade each, implied by the order's own channel and number), with their close and
//! refund messages already in the queue, are migrated while the messages wait, and a
//! worker of this release then decides every one of them as the gateways say.
// It runs the simulator: only with the full build.
#![cfg(feature = "tooling")]

use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::db::{self, schema::refunds};
use order_closer::message::CloseMessage;
use order_closer::order::OrderStatus;
use order_closer::sim::SimTradeStatus;
use order_closer::trade::TradeStatus;

use crate::common::{TestEnv, eventually, migrations};

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Inserts an order as the release before trades wrote it; returns its id.
async fn old_order(env: &TestEnv, no: &str, status: &str) -> i64 {
    let mut conn = db::connect(&env.database_url).await.unwrap();
    diesel::sql_query(
        "INSERT INTO orders (out_trade_no, channel, amount_minor, currency, status, deadline,
                             closed_at, close_reason)
         VALUES ($1, 'alipay', 1234, 'CNY', $2, now() - interval '1 second',
                 CASE WHEN $3 = 'CLOSED' THEN now() END,
                 CASE WHEN $4 = 'CLOSED' THEN 'deadline_no_trade' END)
         RETURNING id",
    )
    .bind::<diesel::sql_types::Text, _>(no)
    .bind::<diesel::sql_types::Text, _>(status)
    .bind::<diesel::sql_types::Text, _>(status)
    .bind::<diesel::sql_types::Text, _>(status)
    .get_result::<Id>(&mut conn)
    .await
    .unwrap()
    .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_of_the_release_before_trades_are_decided_after_the_upgrade() {
    let mut env = TestEnv::new(&[("ORDER_CLOSER_PAID_AFTER_CLOSE", "refund")]).await;
    env.quiet_notifications();
    migrations::revert(&env.database_url, "trades").await;

    // Waiting at the gateway: closed there, then here. Paid, its notification lost: PAID.
    // Closed here and paid at the gateway since, its refund requested: refunded.
    let waiting = env.no("old-waiting");
    let paid = env.no("old-paid");
    let refund = env.no("old-refund");
    env.buyers.buyer(&waiting).scans(1234).send().await.unwrap();
    let paid_at_gateway = env
        .buyers
        .buyer(&paid)
        .scans(1234)
        .pays()
        .loses_notification()
        .send()
        .await
        .unwrap();
    env.buyers
        .buyer(&refund)
        .scans(1234)
        .pays()
        .loses_notification()
        .send()
        .await
        .unwrap();
    let waiting_id = old_order(&env, &waiting, "NEW").await;
    let paid_id = old_order(&env, &paid, "NEW").await;
    let refund_id = old_order(&env, &refund, "CLOSED").await;
    let mut conn = db::connect(&env.database_url).await.unwrap();
    diesel::sql_query(
        "INSERT INTO anomalies (order_id, out_trade_no, kind, detail)
         VALUES ($1, $2, 'paid_after_close', 'paid after we closed it')",
    )
    .bind::<diesel::sql_types::BigInt, _>(refund_id)
    .bind::<diesel::sql_types::Text, _>(&refund)
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(
        "INSERT INTO refunds (order_id, out_trade_no, requested_by) VALUES ($1, $2, 'old worker')",
    )
    .bind::<diesel::sql_types::BigInt, _>(refund_id)
    .bind::<diesel::sql_types::Text, _>(&refund)
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    // Their messages, as the release before published them, wait in the close queue.
    let deadline = Utc::now() - chrono::Duration::seconds(1);
    for (id, no) in [(waiting_id, &waiting), (paid_id, &paid)] {
        env.publish_raw(&CloseMessage::new(id, no.as_str(), deadline).encode())
            .await;
    }
    env.publish_raw(&CloseMessage::refund(refund_id, refund.as_str(), Utc::now()).encode())
        .await;

    // The upgrade, then a worker of this release.
    migrations::run_pending(&env.database_url).await;
    env.start_worker(4, 8);

    let closed = env.settled(&waiting, Duration::from_secs(40)).await;
    assert_eq!(closed.status(), OrderStatus::Closed);
    assert_eq!(env.trade(&waiting).await.status, TradeStatus::Closed);
    assert_eq!(
        env.buyers.trade(&waiting).await.unwrap().unwrap().status,
        SimTradeStatus::TradeClosed
    );
    let now_paid = env.settled(&paid, Duration::from_secs(40)).await;
    assert_eq!(now_paid.status(), OrderStatus::Paid);
    let trade = env.trade(&paid).await;
    assert_eq!(now_paid.paid_trade_id, Some(trade.id));
    assert_eq!(
        trade.gateway_trade_no.as_deref(),
        Some(paid_at_gateway.trade_no.as_str())
    );
    let refunded = eventually(Duration::from_secs(40), || async {
        let view = env.buyers.trade(&refund).await.unwrap().unwrap();
        (!view.refunds.is_empty()).then_some(view)
    })
    .await
    .expect("the refund requested before the upgrade is sent after it");
    assert_eq!(refunded.refunds.len(), 1);
    let refund_trade = env.trade(&refund).await;
    assert_eq!(refund_trade.status, TradeStatus::Paid, "paid after close");
    let mut conn = db::conn(&env.pool).await.unwrap();
    let row: (i64, String) = refunds::table
        .filter(refunds::order_id.eq(refund_id))
        .select((refunds::trade_id, refunds::status))
        .first(&mut conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(row, (refund_trade.id, "succeeded".to_owned()));
    env.cleanup().await;
}

/// A service of another language still writing orders by the previous contract (an
/// `orders` row and its close message, no trade, `channel` left to its default) has its
/// orders decided by asking their gateway: the row gets its first trade with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_written_by_the_previous_contract_gets_its_trade_and_is_asked_about() {
    let mut env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    let no = env.no("contract-v1");
    env.buyers
        .buyer(&no)
        .scans(1234)
        .pays()
        .loses_notification()
        .send()
        .await
        .unwrap();
    let mut conn = db::conn(&env.pool).await.unwrap();
    let id = diesel::sql_query(
        "INSERT INTO orders (out_trade_no, amount_minor, deadline)
         VALUES ($1, 1234, now() - interval '1 second') RETURNING id",
    )
    .bind::<diesel::sql_types::Text, _>(&no)
    .get_result::<Id>(&mut conn)
    .await
    .unwrap()
    .id;
    drop(conn);
    let deadline = Utc::now() - chrono::Duration::seconds(1);
    env.publish_raw(&CloseMessage::new(id, no.as_str(), deadline).encode())
        .await;
    env.start_worker(2, 4);
    let order = env.settled(&no, Duration::from_secs(40)).await;
    assert_eq!(order.status(), OrderStatus::Paid);
    let trade = env.trade(&no).await;
    assert_eq!(
        (trade.channel.as_str(), trade.status),
        ("alipay", TradeStatus::Paid)
    );
    env.cleanup().await;
}
