//! `reconcile bill`: the simulator's daily trade bill (the real zip/GBK format, fetched
//! through the signed download-URL method) diffed against the database.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "cli")]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::TestEnv;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::closer::{Closer, Due, NewOrder};
use order_closer::db::{self, orders};
use order_closer::decide::{AttemptInfo, Mode};
use order_closer::gateway::alipay::response::china;
use order_closer::order::OrderStatus;
use order_closer::reconcile::Finding;
use order_closer::reconcile::bill::reconcile;

async fn order(env: &TestEnv, name: &str, amount: i64) -> order_closer::order::Order {
    order_at(env, "alipay", name.to_owned(), amount).await
}

async fn order_at(
    env: &TestEnv,
    channel: &str,
    name: String,
    amount: i64,
) -> order_closer::order::Order {
    let no = env.no(&name);
    Closer::without_broker(env.pool.clone())
        .create_order(NewOrder::new(
            channel,
            &no,
            amount,
            Due::After(Duration::from_secs(3600)),
        ))
        .await
        .unwrap()
        .order
}

fn first_attempt() -> AttemptInfo {
    AttemptInfo {
        number: 0,
        first_seen: None,
        not_before: None,
    }
}

/// The orders of one gateway, one per category of the diff.
struct Categories {
    channel: &'static str,
    new_paid: order_closer::order::Order,
    closed: order_closer::order::Order,
    ghost: order_closer::order::Order,
}

async fn categories(env: &TestEnv, channel: &'static str) -> Categories {
    let order = |name: &str, amount| order_at(env, channel, format!("{name}-{channel}"), amount);
    let buyer = env.buyers.at(channel);
    let mut conn = db::conn(&env.pool).await.unwrap();
    // Paid at the gateway, still NEW here (callback lost, no worker yet).
    let new_paid = order("newpaid", 1000).await;
    buyer
        .scan_and_pay(&new_paid.out_trade_no, 1000)
        .await
        .unwrap();
    // Closed here (no trade at the time), then paid at the gateway anyway.
    let closed = order("closed", 2000).await;
    orders::mark_closed(&mut conn, closed.id, "deadline_no_trade")
        .await
        .unwrap();
    buyer
        .scan_and_pay(&closed.out_trade_no, 2000)
        .await
        .unwrap();
    // Paid in both places, then partly refunded.
    let matched = order("matched", 3000).await;
    buyer
        .scan_and_pay(&matched.out_trade_no, 3000)
        .await
        .unwrap();
    orders::mark_paid(&mut conn, matched.id, "T-MATCHED", Utc::now())
        .await
        .unwrap();
    env.buyers.refund(&matched.out_trade_no, 500).await.unwrap();
    // PAID here today, unknown to the gateway.
    let ghost = order("ghost", 4000).await;
    orders::mark_paid(&mut conn, ghost.id, "T-GHOST", Utc::now())
        .await
        .unwrap();
    // PAID here with 5000, paid 4500 at the gateway.
    let short = order("short", 5000).await;
    buyer.scan_and_pay(&short.out_trade_no, 4500).await.unwrap();
    orders::mark_paid(&mut conn, short.id, "T-SHORT", Utc::now())
        .await
        .unwrap();
    // A payment for an order we never had.
    buyer
        .scan_and_pay(&env.no(&format!("stranger-{channel}")), 600)
        .await
        .unwrap();
    Categories {
        channel,
        new_paid,
        closed,
        ghost,
    }
}

/// Every category of the diff, on every gateway's bill: each gateway's orders are set up
/// first, so that each bill meets the other gateways' PAID orders too (not its business).
#[tokio::test(flavor = "multi_thread")]
async fn every_category_of_the_bill_diff_is_found_once() {
    let mut env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    let decider = env.decider("bill-test");
    let today = Utc::now().with_timezone(&china()).date_naive();
    let mut all = Vec::new();
    for channel in env.sim().channels() {
        all.push(categories(&env, channel).await);
    }
    for c in &all {
        let channel = c.channel;
        let parsed = env
            .gateways()
            .bill_source(channel)
            .unwrap()
            .daily_bill(today)
            .await
            .unwrap();
        let dry = reconcile(&decider, channel, &parsed, today, false)
            .await
            .unwrap();
        assert_eq!(dry.payments, 5, "{channel}");
        assert_eq!(dry.refunds, 1, "{channel}");
        assert_eq!(dry.matched, 1, "{channel}");
        assert_eq!(dry.paid_but_new.len(), 1, "{channel}");
        assert!(dry.paid_but_new[0].action.starts_with("would"));
        assert_eq!(
            env.order(&c.new_paid.out_trade_no).await.status(),
            OrderStatus::New
        );
        assert_eq!(dry.paid_after_close.len(), 1, "{channel}");
        assert_eq!(dry.paid_after_close[0].out_trade_no, c.closed.out_trade_no);
        assert_eq!(dry.paid_missing_from_bill.len(), 1, "{channel}");
        assert_eq!(
            dry.paid_missing_from_bill[0].out_trade_no,
            c.ghost.out_trade_no
        );
        assert_eq!(dry.amount_mismatch.len(), 1, "{channel}");
        assert_eq!(dry.amount_mismatch[0].gateway_amount_minor, Some(4500));
        assert_eq!(dry.refund_rows.len(), 1, "{channel}");
        assert_eq!(dry.refund_rows[0].gateway_amount_minor, Some(-500));
        assert_eq!(dry.unknown_orders.len(), 1, "{channel}");
        assert_eq!(dry.finding, Finding::NeedsAttention);

        let applied = reconcile(&decider, channel, &parsed, today, true)
            .await
            .unwrap();
        assert_eq!(applied.paid_but_new[0].action, "marked PAID");
        let paid = env.order(&c.new_paid.out_trade_no).await;
        assert_eq!(paid.status(), OrderStatus::Paid, "{channel}");
        assert!(paid.gateway_trade_no.is_some());
        // The same payment found again by a worker later changes nothing.
        let again = decider
            .decide(
                paid.id,
                Some(&paid.out_trade_no),
                first_attempt(),
                Mode::Apply,
            )
            .await
            .unwrap();
        assert!(matches!(
            again,
            order_closer::decide::Outcome::Settled(OrderStatus::Paid)
        ));
    }

    // Each anomaly is a row, listed again later, and announced exactly once.
    let n = all.len();
    let mut conn = db::conn(&env.pool).await.unwrap();
    let kinds: Vec<String> = db::anomalies::list(&mut conn, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    for kind in [
        "paid_after_close",
        "paid_missing_from_bill",
        "amount_mismatch",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| *k == kind).count(),
            n,
            "{kind}: {kinds:?}"
        );
    }
    env.start_worker(2, 2);
    let events = env.drain_events().await;
    let anomaly_events: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|e| e.starts_with("order.anomaly"))
        .collect();
    assert_eq!(anomaly_events.len(), 3 * n, "{anomaly_events:?}");
    env.cleanup().await;
}

/// WeChat Pay's bill is vouched for by its SHA-1: a file that does not match it is
/// refused, naming the digests; a day without trades is an empty bill, not an error.
#[tokio::test(flavor = "multi_thread")]
async fn a_wechat_bill_whose_digest_does_not_match_is_refused() {
    let env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    let today = Utc::now().with_timezone(&china()).date_naive();
    let source = env.gateways().bill_source("wechat").unwrap().clone();
    let empty = source.daily_bill(today).await.unwrap();
    assert!(empty.rows.is_empty(), "no trades: an empty bill");
    env.buyers
        .at("wechat")
        .scan_and_pay(&env.no("wxbill"), 100)
        .await
        .unwrap();
    // The next download serves other (gzipped) bytes than the bill applied for.
    let (other, _) = order_closer::sim::wechat::bill::gzip_with_digest("交易时间\r\n").unwrap();
    env.buyers.override_bill(other).await.unwrap();
    let err = source.daily_bill(today).await.unwrap_err().to_string();
    assert!(err.contains("SHA1 digest"), "{err}");
    // Not gzip at all.
    env.buyers.override_bill(b"<html>".to_vec()).await.unwrap();
    let err = source.daily_bill(today).await.unwrap_err().to_string();
    assert!(err.contains("not gzip"), "{err}");
    let good = source.daily_bill(today).await.unwrap();
    assert_eq!(good.rows.len(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_bill_is_named_and_changes_nothing() {
    let env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-bill-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let paid = order(&env, "untouched", 1000).await;
    env.buyers
        .scan_and_pay(&paid.out_trade_no, 1000)
        .await
        .unwrap();
    // The command refuses days that have not ended: the latest bill is yesterday's.
    let today = Utc::now().with_timezone(&china()).date_naive();
    let yesterday = today.pred_opt().unwrap();
    // `reconcile bill --date <date> <more...>`, which must fail with exit code 1: its stderr.
    let refused = |date: String, more: Vec<String>| {
        let vars = vars.clone();
        async move {
            let mut args = vec![
                "reconcile".to_owned(),
                "bill".into(),
                "--channel".into(),
                "alipay".into(),
                "--date".into(),
                date,
            ];
            args.extend(more);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = common::run_binary(&vars, &args).await;
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };

    // A file that is not a zip at all.
    let bad = dir.join("bill.zip");
    std::fs::write(&bad, b"PK\x03\x04 truncated").unwrap();
    let file = |path: &std::path::Path| vec!["--file".to_owned(), path.display().to_string()];
    let stderr = refused(yesterday.to_string(), file(&bad)).await;
    assert!(stderr.contains("bill.zip"), "{stderr}");

    // A real bill with one bad amount, served by the gateway itself.
    let client = env.alipay_client();
    let good = client
        .download_bill(&client.bill_download_url(today).await.unwrap())
        .await
        .unwrap();
    let mut parsed = order_closer::gateway::alipay::bill::parse_zip(&good, "good.zip").unwrap();
    let text = order_closer::sim::alipay::bill::detail_csv(
        "20880000000000000156",
        yesterday,
        &parsed.rows,
    )
    .replacen("10.00", "10.0.0", 1);
    assert!(text.contains("10.0.0"));
    parsed.rows.clear();
    let zip =
        order_closer::sim::alipay::bill::zip_with_detail("20880000000000000156", yesterday, &text)
            .unwrap();
    env.buyers.override_bill(zip).await.unwrap();
    let stderr = refused(yesterday.to_string(), vec!["--apply".into()]).await;
    assert!(
        stderr.contains("line") && stderr.contains("订单金额"),
        "{stderr}"
    );

    // A good bill of another day, given for yesterday: refused, nothing recorded.
    let good_rows = order_closer::gateway::alipay::bill::parse_zip(&good, "good.zip")
        .unwrap()
        .rows;
    let other_day = yesterday.pred_opt().unwrap();
    let text =
        order_closer::sim::alipay::bill::detail_csv("20880000000000000156", other_day, &good_rows);
    let zip =
        order_closer::sim::alipay::bill::zip_with_detail("20880000000000000156", other_day, &text)
            .unwrap();
    let wrong = dir.join("other-day.zip");
    std::fs::write(&wrong, zip).unwrap();
    let stderr = refused(yesterday.to_string(), file(&wrong)).await;
    assert!(stderr.contains("is not the bill of"), "{stderr}");

    // A day that has not ended has no bill.
    for date in [today.to_string(), "9999-12-31".to_owned()] {
        let stderr = refused(date, Vec::new()).await;
        assert!(stderr.contains("has not ended"), "{stderr}");
    }

    assert_eq!(
        env.order(&paid.out_trade_no).await.status(),
        OrderStatus::New,
        "nothing changed"
    );
    let mut conn = db::conn(&env.pool).await.unwrap();
    let anomalies: i64 = db::schema::anomalies::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(anomalies, 0, "no anomaly recorded from a refused bill");
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}
