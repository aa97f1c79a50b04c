//! `reconcile bill`: the simulator's daily trade bill (the real zip/GBK format, fetched
//! through the signed download-URL method) diffed against the database.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::time::Duration;

use crate::common::TestEnv;
use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::bill::{BillRow, BillRowKind};
use order_closer::closer::{Closer, Due, NewOrder};
use order_closer::config::PaidAfterClose;
use order_closer::db::{self, orders};
use order_closer::decide::{AttemptInfo, Mode};
use order_closer::gateway::BillSource;
use order_closer::order::OrderStatus;
use order_closer::reconcile::Finding;
use order_closer::reconcile::bill::{gateway_day, load, reconcile};
use order_closer::sim::alipay::SIM_BILL_ACCOUNT;
use order_closer::time::china;

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
    Closer::without_broker(env.pool.clone(), order_closer::gateway::rules::CHANNELS)
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
    let buyers = env.buyers.at(channel);
    let mut conn = db::conn(&env.pool).await.unwrap();
    // Paid at the gateway, still NEW here (callback lost, no worker yet).
    let new_paid = order("newpaid", 1000).await;
    buyers
        .buyer(&new_paid.out_trade_no)
        .scans(1000)
        .pays()
        .send()
        .await
        .unwrap();
    // Closed here (no trade at the time), then paid at the gateway anyway.
    let closed = order("closed", 2000).await;
    orders::mark_closed(&mut conn, closed.id, "deadline_no_trade")
        .await
        .unwrap();
    buyers
        .buyer(&closed.out_trade_no)
        .scans(2000)
        .pays()
        .send()
        .await
        .unwrap();
    // Paid in both places, then partly refunded.
    let matched = order("matched", 3000).await;
    buyers
        .buyer(&matched.out_trade_no)
        .scans(3000)
        .pays()
        .send()
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
    buyers
        .buyer(&short.out_trade_no)
        .scans(4500)
        .pays()
        .send()
        .await
        .unwrap();
    orders::mark_paid(&mut conn, short.id, "T-SHORT", Utc::now())
        .await
        .unwrap();
    // A payment for an order we never had.
    buyers
        .buyer(&env.no(&format!("stranger-{channel}")))
        .scans(600)
        .pays()
        .send()
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
        let gateways = env.gateways();
        let source = gateways.bill_source(channel).unwrap();
        let parsed = load(source.as_ref(), today, None).await.unwrap();
        let dry = reconcile(&decider, channel, &parsed, false).await.unwrap();
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
        // The gateway, asked before acting on a row, agrees with its own bill.
        assert!(dry.disagreements.is_empty(), "{:?}", dry.disagreements);
        assert!(dry.unconfirmed.is_empty(), "{:?}", dry.unconfirmed);
        assert!(
            dry.paid_but_new[0]
                .gateway_said
                .as_deref()
                .is_some_and(|s| s.contains("paid 10.00")),
            "{:?}",
            dry.paid_but_new
        );
        assert_eq!(dry.finding, Finding::NeedsAttention);

        let applied = reconcile(&decider, channel, &parsed, true).await.unwrap();
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

/// A bill file of `channel`'s gateway naming `account`, of `date`, holding `rows`, as the
/// gateway writes it (Alipay: its zip; WeChat Pay: its CSV, given uncompressed).
fn bill_file(channel: &str, account: &str, date: NaiveDate, rows: &[BillRow]) -> Vec<u8> {
    match channel {
        "alipay" => order_closer::sim::alipay::bill::build_zip(account, date, rows).unwrap(),
        "wechat" => order_closer::sim::wechat::bill::bill_csv(account, rows).into_bytes(),
        other => panic!("no bill writer for {other}"),
    }
}

/// The account a bill of `channel` names for the simulated merchant.
fn our_bill_account(channel: &str, source: &dyn BillSource) -> String {
    match channel {
        "alipay" => order_closer::sim::alipay::SIM_BILL_ACCOUNT.to_owned(),
        _ => source.account().unwrap().id,
    }
}

/// A payment row for `order` of `amount` at `at`.
fn paid_row(order: &order_closer::order::Order, amount: i64, at: DateTime<Utc>) -> BillRow {
    BillRow {
        line: 0,
        trade_no: format!("FORGED{}", order.id),
        out_trade_no: order.out_trade_no.clone(),
        kind: BillRowKind::Payment,
        subject: "forged".into(),
        created_at: Some(at),
        finished_at: Some(at),
        amount_minor: amount,
        received_minor: amount,
        refund_no: None,
    }
}

/// An order of `channel` paid `amount` at the gateway, and marked PAID here at `at`.
async fn paid_everywhere(
    env: &TestEnv,
    channel: &str,
    name: &str,
    amount: i64,
    at: DateTime<Utc>,
) -> order_closer::order::Order {
    let order = order_at(env, channel, format!("{name}-{channel}"), amount).await;
    env.buyers
        .at(channel)
        .buyer(&order.out_trade_no)
        .scans(amount)
        .pays()
        .send()
        .await
        .unwrap();
    let mut conn = db::conn(&env.pool).await.unwrap();
    orders::mark_paid(&mut conn, order.id, &format!("T-{name}"), at)
        .await
        .unwrap();
    order
}

/// A bill of our merchant whose rows say what the gateway does not (edited, or simply
/// wrong) is only a hint: the gateway is asked about every row that would change an order
/// or record an anomaly, nothing is marked PAID, no anomaly is recorded and no refund
/// requested on the file's word, and the report says what the gateway said.
#[tokio::test(flavor = "multi_thread")]
async fn a_bill_row_is_only_a_hint_the_gateway_is_asked() {
    let env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    // Under the refund policy a believed row would also request a refund.
    let decider = env
        .decider("bill-hint-test")
        .with_paid_after_close(PaidAfterClose::Refund);
    let today = Utc::now().with_timezone(&china()).date_naive();
    let at = gateway_day(today, china()).0 + chrono::Duration::seconds(1);
    let mut conn = db::conn(&env.pool).await.unwrap();
    for channel in env.sim().channels() {
        let order =
            |name: &str, amount| order_at(&env, channel, format!("{name}-{channel}"), amount);
        // Never paid at the gateway (no trade at all).
        let unpaid = order("hint-unpaid", 1000).await;
        // Closed by us, no trade at the gateway.
        let closed = order("hint-closed", 2000).await;
        orders::mark_closed(&mut conn, closed.id, "deadline_no_trade")
            .await
            .unwrap();
        // Paid 30.00 at the gateway and here; the bill says 25.00.
        let paid = paid_everywhere(&env, channel, "hint-paid", 3000, at).await;
        // Paid at the gateway and here that day, but left out of the bill.
        let absent = paid_everywhere(&env, channel, "hint-absent", 4000, at).await;
        let rows = [
            paid_row(&unpaid, 1000, at),
            paid_row(&closed, 2000, at),
            paid_row(&paid, 2500, at),
        ];
        let gateways = env.gateways();
        let source = gateways.bill_source(channel).unwrap();
        let bytes = bill_file(
            channel,
            &our_bill_account(channel, source.as_ref()),
            today,
            &rows,
        );
        let bill = load(source.as_ref(), today, Some((&bytes, "edited-bill")))
            .await
            .unwrap();
        let report = reconcile(&decider, channel, &bill, true).await.unwrap();

        assert!(report.paid_but_new.is_empty(), "{channel}: {report:?}");
        assert!(report.paid_after_close.is_empty(), "{channel}: {report:?}");
        assert!(report.amount_mismatch.is_empty(), "{channel}: {report:?}");
        assert!(
            report.paid_missing_from_bill.is_empty(),
            "{channel}: {report:?}"
        );
        assert_eq!(report.finding, Finding::NeedsAttention);
        let said: Vec<(&str, &str)> = report
            .disagreements
            .iter()
            .map(|l| {
                (
                    l.out_trade_no.as_str(),
                    l.gateway_said.as_deref().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(said.len(), 4, "{channel}: {said:?}");
        assert_eq!(
            said[0],
            (unpaid.out_trade_no.as_str(), "there is no such trade")
        );
        assert_eq!(
            said[1],
            (closed.out_trade_no.as_str(), "there is no such trade")
        );
        assert_eq!(said[2].0, paid.out_trade_no);
        assert!(said[2].1.contains(" paid 30.00"), "{channel}: {said:?}");
        assert_eq!(said[3].0, absent.out_trade_no);
        assert!(said[3].1.contains(" paid 40.00"), "{channel}: {said:?}");
        assert!(
            report.disagreements[3]
                .action
                .starts_with("absent from the bill")
        );
        let text = report.to_text();
        assert!(
            text.contains("the gateway disagrees with the bill (its answer applies): 4")
                && text.contains("the gateway says: there is no such trade"),
            "{text}"
        );

        assert_eq!(
            env.order(&unpaid.out_trade_no).await.status(),
            OrderStatus::New
        );
        assert_eq!(
            env.order(&closed.out_trade_no).await.status(),
            OrderStatus::Closed
        );
    }
    assert_eq!(
        anomaly_count(&env).await,
        0,
        "no anomaly on the bill's word"
    );
    let refunds: i64 = db::schema::refunds::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(refunds, 0, "no refund on the bill's word");
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
    // It states neither its day nor its merchant; the gateway's signed answer to our
    // request for that day vouches for both.
    let checked = load(source.as_ref(), today, None).await.unwrap();
    assert!(checked.bill().rows.is_empty());
    assert!(
        empty
            .check(&source.account().unwrap(), today.pred_opt().unwrap())
            .is_err()
    );
    env.buyers
        .at("wechat")
        .buyer(&env.no("wxbill"))
        .scans(100)
        .pays()
        .send()
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

/// The anomalies recorded so far.
async fn anomaly_count(env: &TestEnv) -> i64 {
    let mut conn = db::conn(&env.pool).await.unwrap();
    db::schema::anomalies::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap()
}

/// Runs `reconcile bill --channel <channel> --date <date> [--file <path>] <more...>` with
/// `vars` (first writing `file`'s bytes to its path), which must fail with exit code 1:
/// its stderr.
async fn refused_by(
    vars: &[(String, String)],
    channel: &str,
    date: &str,
    file: Option<(&std::path::Path, &[u8])>,
    more: &[&str],
) -> String {
    let mut args = vec!["reconcile", "bill", "--channel", channel, "--date", date];
    let path = file.map(|(path, bytes)| {
        std::fs::write(path, bytes).unwrap();
        path.display().to_string()
    });
    if let Some(path) = &path {
        args.extend(["--file", path.as_str()]);
    }
    args.extend(more);
    let out = crate::common::run_binary(crate::BIN, vars, &args).await;
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A bill must name our merchant and state its day: a bill of another merchant (a file or
/// a download, on either gateway), an Alipay bill without its period line, a WeChat Pay
/// file without rows, and any Alipay bill while `ALIPAY_SELLER_ID` is unset are refused
/// by name, even with `--apply`, and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_bill_of_another_merchant_or_of_no_stated_day_is_refused() {
    let env = TestEnv::new(&[]).await;
    env.quiet_notifications();
    let dir = std::env::temp_dir().join(format!("oc-bill-merchant-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = env.binary_env(&dir);
    let yesterday = Utc::now()
        .with_timezone(&china())
        .date_naive()
        .pred_opt()
        .unwrap();
    let date = yesterday.to_string();
    let at = gateway_day(yesterday, china()).0;
    let ali = order(&env, "merchant-alipay", 1000).await;
    let wx = order_at(&env, "wechat", "merchant-wechat".into(), 1000).await;
    let ali_rows = [paid_row(&ali, 1000, at)];
    let wx_rows = [paid_row(&wx, 1000, at)];
    let apply = ["--apply"];

    let other = bill_file("alipay", "20889999999999990156", yesterday, &ali_rows);
    let path = dir.join("other-merchant.zip");
    let stderr = refused_by(&vars, "alipay", &date, Some((&path, &other)), &apply).await;
    assert!(
        stderr.contains(
            "is the bill of merchant account 20889999999999990156, not ours \
             (2088000000000156, from ALIPAY_SELLER_ID)"
        ),
        "{stderr}"
    );
    // The same bill served by the gateway.
    env.buyers.override_bill(other).await.unwrap();
    let stderr = refused_by(&vars, "alipay", &date, None, &apply).await;
    assert!(stderr.contains("20889999999999990156"), "{stderr}");
    env.buyers.clear_bill_override().await.unwrap();

    let other = bill_file("wechat", "1234567890", yesterday, &wx_rows);
    let path = dir.join("other-merchant.csv");
    let stderr = refused_by(&vars, "wechat", &date, Some((&path, &other)), &apply).await;
    assert!(
        stderr.contains("is the bill of merchant account 1234567890, not ours")
            && stderr.contains("WECHAT_MCH_ID"),
        "{stderr}"
    );

    // A WeChat Pay bill without rows says neither whose nor which day's it is.
    let empty = bill_file("wechat", "1234567890", yesterday, &[]);
    let path = dir.join("empty.csv");
    let stderr = refused_by(&vars, "wechat", &date, Some((&path, &empty)), &apply).await;
    assert!(stderr.contains("names no merchant account"), "{stderr}");

    // An Alipay bill without its period line says no day.
    let undated = order_closer::sim::alipay::bill::detail_csv_without(
        SIM_BILL_ACCOUNT,
        yesterday,
        &ali_rows,
        "#起始日期",
    );
    let zip =
        order_closer::sim::alipay::bill::zip_with_detail(SIM_BILL_ACCOUNT, yesterday, &undated)
            .unwrap();
    let path = dir.join("undated.zip");
    let stderr = refused_by(&vars, "alipay", &date, Some((&path, &zip)), &apply).await;
    assert!(stderr.contains("no period line"), "{stderr}");

    // Without our partner id no Alipay bill can be checked, so none is read.
    let unset: Vec<(String, String)> = vars
        .iter()
        .filter(|(k, _)| k != "ALIPAY_SELLER_ID")
        .cloned()
        .collect();
    let ours = bill_file("alipay", SIM_BILL_ACCOUNT, yesterday, &ali_rows);
    let path = dir.join("ours.zip");
    let stderr = refused_by(&unset, "alipay", &date, Some((&path, &ours)), &apply).await;
    assert!(stderr.contains("ALIPAY_SELLER_ID is not set"), "{stderr}");

    for order in [&ali, &wx] {
        assert_eq!(
            env.order(&order.out_trade_no).await.status(),
            OrderStatus::New
        );
    }
    assert_eq!(
        anomaly_count(&env).await,
        0,
        "no anomaly recorded from a refused bill"
    );
    std::fs::remove_dir_all(&dir).ok();
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
        .buyer(&paid.out_trade_no)
        .scans(1000)
        .pays()
        .send()
        .await
        .unwrap();
    // The command refuses days that have not ended: the latest bill is yesterday's.
    let today = Utc::now().with_timezone(&china()).date_naive();
    let yesterday = today.pred_opt().unwrap();
    // `reconcile bill --date <date> <more...>`, which must fail with exit code 1: its stderr.
    let refused = |date: String, more: Vec<String>| {
        let vars = vars.clone();
        async move {
            let more: Vec<&str> = more.iter().map(String::as_str).collect();
            refused_by(&vars, "alipay", &date, None, &more).await
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
    let text =
        order_closer::sim::alipay::bill::detail_csv(SIM_BILL_ACCOUNT, yesterday, &parsed.rows)
            .replacen("10.00", "10.0.0", 1);
    assert!(text.contains("10.0.0"));
    parsed.rows.clear();
    let zip = order_closer::sim::alipay::bill::zip_with_detail(SIM_BILL_ACCOUNT, yesterday, &text)
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
    let text = order_closer::sim::alipay::bill::detail_csv(SIM_BILL_ACCOUNT, other_day, &good_rows);
    let zip = order_closer::sim::alipay::bill::zip_with_detail(SIM_BILL_ACCOUNT, other_day, &text)
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
    assert_eq!(
        anomaly_count(&env).await,
        0,
        "no anomaly recorded from a refused bill"
    );
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}
