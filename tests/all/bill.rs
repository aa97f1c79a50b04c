//! The daily trade bill end to end: the real Alipay client asks the simulator (real HTTP on
//! loopback, signed both ways) for a bill URL, downloads the zip, and the bill reader
//! parses it.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use crate::common::gateway::{GatewayEnv, gateway_env};

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use order_closer::bill::{BillError, BillRow, BillRowKind};
use order_closer::gateway::FaultClass;
use order_closer::gateway::alipay::bill::parse_zip;
use order_closer::sim::{self, alipay::SIM_BILL_ACCOUNT};
use order_closer::time::china;

type Env = GatewayEnv;

async fn env() -> Env {
    gateway_env(Duration::from_secs(5)).await
}

fn china_date(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&china()).date_naive()
}

fn whole_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap()
}

#[tokio::test]
async fn todays_bill_lists_payments_and_refunds() {
    let Env {
        sim,
        buyers,
        client,
    } = env().await;
    buyers.buyer("ORD-A").scans(1234).send().await.unwrap();
    let a = buyers.buyer("ORD-A").pays().send().await.unwrap();
    let b = buyers
        .buyer("ORD-B")
        .scans(500)
        .pays()
        .send()
        .await
        .unwrap();
    buyers.buyer("ORD-UNPAID").scans(99).send().await.unwrap();
    let refunded = buyers.refund("ORD-A", 234).await.unwrap();
    assert_eq!(refunded.refunds.len(), 1);
    let refund = &refunded.refunds[0];

    // Normally one day; two if the test straddles midnight China time.
    let dates: BTreeSet<NaiveDate> = [a.paid_at.unwrap(), b.paid_at.unwrap(), refund.refunded_at]
        .into_iter()
        .map(china_date)
        .collect();
    let mut rows: Vec<BillRow> = Vec::new();
    for date in &dates {
        let url = client.bill_download_url(*date).await.unwrap();
        assert!(
            url.starts_with(&format!("{}/alipay/bills/", sim.base_url())),
            "{url}"
        );
        let bytes = client.download_bill(&url).await.unwrap();
        let bill = parse_zip(&bytes, "bill.zip").unwrap();
        assert_eq!(
            bill.file,
            format!("{SIM_BILL_ACCOUNT}_{}_业务明细.csv", date.format("%Y%m%d"))
        );
        // What the simulator meant to write, line numbers aside.
        let expected = sim.state().bill_rows("alipay", *date);
        let without_lines: Vec<BillRow> = bill
            .rows
            .iter()
            .map(|r| BillRow {
                line: 0,
                ..r.clone()
            })
            .collect();
        assert_eq!(without_lines, expected);
        rows.extend(bill.rows);
    }

    let payments: Vec<&BillRow> = rows
        .iter()
        .filter(|r| r.kind == BillRowKind::Payment)
        .collect();
    let refunds: Vec<&BillRow> = rows
        .iter()
        .filter(|r| r.kind == BillRowKind::Refund)
        .collect();
    assert_eq!((payments.len(), refunds.len()), (2, 1), "{rows:?}");

    let pay_a = payments.iter().find(|r| r.out_trade_no == "ORD-A").unwrap();
    assert_eq!(pay_a.trade_no, a.trade_no);
    assert_eq!((pay_a.amount_minor, pay_a.received_minor), (1234, 1234));
    assert_eq!(pay_a.refund_no, None);
    assert_eq!(pay_a.created_at, Some(whole_seconds(a.created_at)));
    assert_eq!(pay_a.finished_at, Some(whole_seconds(a.paid_at.unwrap())));
    assert!(pay_a.line >= 6);

    let pay_b = payments.iter().find(|r| r.out_trade_no == "ORD-B").unwrap();
    assert_eq!(
        (pay_b.trade_no.as_str(), pay_b.amount_minor),
        (&*b.trade_no, 500)
    );

    let back = refunds[0];
    assert_eq!(
        (back.out_trade_no.as_str(), back.trade_no.as_str()),
        ("ORD-A", &*a.trade_no)
    );
    assert_eq!((back.amount_minor, back.received_minor), (-234, -234));
    assert_eq!(
        back.refund_no.as_deref(),
        Some(format!("RF{}1", a.trade_no).as_str())
    );
    assert_eq!(back.finished_at, Some(whole_seconds(refund.refunded_at)));

    let stats = sim.state().stats();
    assert_eq!(stats.bill_url_requests, dates.len() as u64);
    assert_eq!(stats.bill_downloads, dates.len() as u64);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_full_refund_closes_the_trade_and_over_refunds_are_refused() {
    let Env { sim, buyers, .. } = env().await;
    buyers
        .buyer("ORD-F")
        .scans(1000)
        .pays()
        .send()
        .await
        .unwrap();
    match buyers.refund("ORD-F", 1001).await {
        Err(sim::BuyerError::Rejected { status, .. }) => assert_eq!(status, 409),
        other => panic!("expected 409, got {other:?}"),
    }
    let part = buyers.refund("ORD-F", 600).await.unwrap();
    assert_eq!(part.status, sim::SimTradeStatus::TradeSuccess);
    let full = buyers.refund("ORD-F", 400).await.unwrap();
    assert_eq!(full.status, sim::SimTradeStatus::TradeClosed);
    assert_eq!(full.refunds[1].refund_no, format!("RF{}2", full.trade_no));
    match buyers.refund("ORD-F", 1).await {
        Err(sim::BuyerError::Rejected { status, .. }) => assert_eq!(status, 409),
        other => panic!("expected 409, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_future_date_is_a_permanent_error() {
    let Env { sim, client, .. } = env().await;
    let tomorrow = china_date(Utc::now()).succ_opt().unwrap();
    let err = client.bill_download_url(tomorrow).await.unwrap_err();
    assert_eq!(
        (err.class, err.code.as_str()),
        (FaultClass::Permanent, "isv.invalid-bill-date"),
        "{err}"
    );
    // A past day is fine, and empty.
    let long_ago = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    let url = client.bill_download_url(long_ago).await.unwrap();
    let bill = parse_zip(&client.download_bill(&url).await.unwrap(), "bill.zip").unwrap();
    assert_eq!(bill.rows, vec![]);
    assert_eq!(
        bill.file,
        format!("{SIM_BILL_ACCOUNT}_20200101_业务明细.csv")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn an_expired_or_unknown_url_is_an_error() {
    let Env { sim, client, .. } = env().await;
    sim.state().set_bill_url_ttl(Duration::from_millis(200));
    let today = china_date(Utc::now());
    let url = client.bill_download_url(today).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = client.download_bill(&url).await.unwrap_err();
    assert_eq!(
        (err.class, err.code.as_str()),
        (FaultClass::Retryable, "http_410"),
        "{err}"
    );
    // A new URL works again (with the default lifetime).
    sim.state().set_bill_url_ttl(sim::DEFAULT_BILL_URL_TTL);
    let url = client.bill_download_url(today).await.unwrap();
    assert!(client.download_bill(&url).await.is_ok());

    let unknown = format!("{}/alipay/bills/0000.zip", sim.base_url());
    let err = client.download_bill(&unknown).await.unwrap_err();
    assert_eq!(err.code, "http_404", "{err}");
    let err = client.download_bill("not a url").await.unwrap_err();
    assert_eq!(
        (err.class, err.code.as_str()),
        (FaultClass::Permanent, "invalid_url")
    );
    sim.shutdown().await;
}

/// A zip written by the `zip` crate (UTF-8 names, deflated) holding one detail file.
fn zip_with_detail(name: &str, text: &str) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    writer.start_file(name, options).unwrap();
    writer.write_all(&encoding_rs::GBK.encode(text).0).unwrap();
    writer.finish().unwrap().into_inner()
}

#[tokio::test]
async fn overridden_bills_fail_with_errors_naming_the_file() {
    let Env {
        sim,
        buyers,
        client,
    } = env().await;
    let today = china_date(Utc::now());

    // Garbage instead of a zip: the error names the archive.
    buyers
        .override_bill(b"<html>busy</html>".to_vec())
        .await
        .unwrap();
    let url = client.bill_download_url(today).await.unwrap();
    let bytes = client.download_bill(&url).await.unwrap();
    let err = parse_zip(&bytes, "bill.zip").unwrap_err();
    assert!(matches!(err, BillError::NotArchive { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("bill.zip: not a readable archive: "),
        "{err}"
    );

    // The override is one-shot: the same URL now serves the real (empty) bill.
    let bill = parse_zip(&client.download_bill(&url).await.unwrap(), "bill.zip").unwrap();
    assert_eq!(bill.rows, vec![]);

    // A zip whose detail file has a bad amount: the error names the file, line and column.
    let header = order_closer::sim::alipay::bill::BILL_COLUMNS.join(",");
    let text = format!(
        "#支付宝业务明细查询\n#----业务明细列表----\n{header}\n\
         2026112122001400000000000001\t,ORD-1\t,交易\t,T,2026-11-21 10:55:16,\
         2026-11-21 10:55:23,\t,\t,\t,\t,\t,12.3.4,12.34,0.00,0.00,0.00,0.00,0.00,,0.00\t,\
         0.00,\t,0.00,0.00,\n#----业务明细列表结束----\n"
    );
    buyers
        .override_bill(zip_with_detail("2088_20261121_业务明细.csv", &text))
        .await
        .unwrap();
    let url = client.bill_download_url(today).await.unwrap();
    let err = parse_zip(&client.download_bill(&url).await.unwrap(), "bill.zip").unwrap_err();
    assert_eq!(
        err.to_string(),
        "2088_20261121_业务明细.csv line 4, column 订单金额（元）: \"12.3.4\" is not an amount"
    );

    // Cleared before use: the real bill again.
    buyers.override_bill(b"junk".to_vec()).await.unwrap();
    buyers.clear_bill_override().await.unwrap();
    let url = client.bill_download_url(today).await.unwrap();
    assert!(parse_zip(&client.download_bill(&url).await.unwrap(), "bill.zip").is_ok());
    sim.shutdown().await;
}
