//! Unit tests of Alipay's bill reader, with the simulator's writer (see `bill.rs`).

use std::io::Write as _;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use encoding_rs::GBK;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use order_closer_gateway::bill::{Bill, BillError, BillRow, BillRowKind};
use order_closer_sim::alipay::bill::*;

use super::*;

const FILE: &str = "业务明细.csv";

/// The GATEWAYS.md sample, with real TABs where the document shows them.
fn sample() -> String {
    [
        "#支付宝业务明细查询",
        "#账号：[20880000000000000156]",
        "#起始日期：[2026年11月21日 00:00:00]   终止日期：[2026年11月22日 00:00:00]",
        "#-----------------------------------------业务明细列表----------------------------------------",
        "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注",
        "2026112122001400000000000001\t,ORD-1001\t,交易\t,T-shirt,2026-11-21 10:55:16,2026-11-21 10:55:23,\t,\t,\t,\t,*san(138****01)\t,12.34,12.34,0.00,0.00,0.00,0.00,0.00,,0.00\t,0.00,\t,0.00,0.00,",
        "2026112122001400000000000001\t,ORD-1001\t,退款\t,T-shirt,2026-11-21 10:55:16,2026-11-21 11:20:02,\t,\t,\t,\t,*san(138****01)\t,-12.34,-12.34,0.00,0.00,0.00,0.00,0.00,,0.00\t,0.00,RF-1\t,0.00,0.00,",
        "#-----------------------------------------业务明细列表结束------------------------------------",
        "#交易合计：1笔，商家实收共12.34元，商家优惠共0.00元",
        "#退款合计：1笔，商家实收退款共-12.34元，商家优惠退款共0.00元",
        "#导出时间：[2026年11月22日 05:46:49]",
    ]
    .join("\n")
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

/// The sample with line `line` (1-based) passed through `f`.
fn sample_with(line: usize, f: impl Fn(&str) -> String) -> String {
    sample()
        .split('\n')
        .enumerate()
        .map(|(i, l)| if i + 1 == line { f(l) } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n")
}

fn err(text: &str) -> String {
    parse_detail(text, FILE).unwrap_err().to_string()
}

#[test]
fn parses_the_documented_sample() {
    let rows = parse_detail(&sample(), FILE).unwrap();
    assert_eq!(
        rows,
        vec![
            BillRow {
                line: 6,
                trade_no: "2026112122001400000000000001".into(),
                out_trade_no: "ORD-1001".into(),
                kind: BillRowKind::Payment,
                subject: "T-shirt".into(),
                created_at: Some(utc(2026, 11, 21, 2, 55, 16)),
                finished_at: Some(utc(2026, 11, 21, 2, 55, 23)),
                amount_minor: 1234,
                received_minor: 1234,
                refund_no: None,
            },
            BillRow {
                line: 7,
                trade_no: "2026112122001400000000000001".into(),
                out_trade_no: "ORD-1001".into(),
                kind: BillRowKind::Refund,
                subject: "T-shirt".into(),
                created_at: Some(utc(2026, 11, 21, 2, 55, 16)),
                finished_at: Some(utc(2026, 11, 21, 3, 20, 2)),
                amount_minor: -1234,
                received_minor: -1234,
                refund_no: Some("RF-1".into()),
            },
        ]
    );
    // CRLF line ends and a BOM change nothing.
    let crlf = format!("\u{feff}{}", sample().replace('\n', "\r\n"));
    assert_eq!(parse_detail(&crlf, FILE).unwrap(), rows);
}

#[test]
fn the_sample_matches_the_documented_columns() {
    let header = sample().split('\n').nth(4).unwrap().to_owned();
    assert_eq!(header, BILL_COLUMNS.join(","));
}

#[test]
fn markers_are_optional_and_columns_are_found_by_name() {
    // Without markers: the first non-comment line is the header; rows run to the end.
    let no_markers: String = sample()
        .split('\n')
        .filter(|l| !l.contains("业务明细列表"))
        .collect::<Vec<_>>()
        .join("\n");
    let rows = parse_detail(&no_markers, FILE).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].line, 5);

    // Columns in another order, half-width parentheses, padded names, a blank line.
    let text = "#comment\n\
        \u{20}商户订单号 ,支付宝交易号,退款批次号/请求号,业务类型,商品名称,创建时间,完成时间,订单金额(元),商家实收(元)\t\n\
        \n\
        O-1\t,T-1\t,\t,交易\t,苹果,,2026-01-01 00:00:00,1,0.5\n";
    let rows = parse_detail(text, FILE).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.trade_no.as_str(), r.out_trade_no.as_str()),
        ("T-1", "O-1")
    );
    assert_eq!((r.amount_minor, r.received_minor), (100, 50));
    assert_eq!(r.created_at, None);
    assert_eq!(r.finished_at, Some(utc(2025, 12, 31, 16, 0, 0)));
    assert_eq!((r.subject.as_str(), r.line), ("苹果", 4));

    // Rows after the end marker are not read.
    let after_end = format!("{}\nnot,a,row", sample());
    assert_eq!(parse_detail(&after_end, FILE).unwrap().len(), 2);
}

#[test]
fn a_header_only_file_has_no_rows() {
    let header_only: String = sample()
        .split('\n')
        .filter(|l| !l.starts_with("2026"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(parse_detail(&header_only, FILE).unwrap(), vec![]);
    assert_eq!(parse_detail(&BILL_COLUMNS.join(","), FILE).unwrap(), vec![]);
}

#[test]
fn malformed_details_name_file_line_and_column() {
    assert_eq!(
        err(&sample_with(6, |l| l.replacen("12.34", "12.3.4", 1))),
        "业务明细.csv line 6, column 订单金额（元）: \"12.3.4\" is not an amount"
    );
    assert_eq!(
        err(&sample_with(7, |l| l.replacen(
            "-12.34,-12.34",
            "-12.34,",
            1
        ))),
        "业务明细.csv line 7, column 商家实收（元）: \"\" is not an amount"
    );
    assert_eq!(
        err(&sample_with(6, |l| l.replacen("交易", "转账", 1))),
        "业务明细.csv line 6, column 业务类型: \"转账\" is neither 交易 nor 退款"
    );
    assert_eq!(
        err(&sample_with(7, |l| l.replacen(
            "2026-11-21 11:20:02",
            "2026/11/21 11:20",
            1
        ))),
        "业务明细.csv line 7, column 完成时间: \"2026/11/21 11:20\" is not a time \
         (yyyy-MM-dd HH:mm:ss)"
    );
    assert_eq!(
        err(&sample_with(6, |l| l.replacen(
            "2026112122001400000000000001",
            " ",
            1
        ))),
        "业务明细.csv line 6, column 支付宝交易号: is empty"
    );
    assert_eq!(
        err(&sample_with(5, |l| l.replacen("商户订单号", "订单号", 1))),
        "业务明细.csv: header (line 5) has no column 商户订单号"
    );
    // A missing cell (the last, empty 备注 dropped with its comma).
    assert_eq!(
        err(&sample_with(6, |l| l.strip_suffix(',').unwrap().to_owned())),
        "业务明细.csv line 6: 24 cells, but the header has 25"
    );
    // A cell too many, not empty (an unquoted comma shifting the columns).
    assert_eq!(
        err(&sample_with(6, |l| l.replacen("T-shirt", "T,shirt", 1))),
        "业务明细.csv line 6: 26 cells, but the header has 25"
    );
    // Even an empty extra cell.
    assert_eq!(
        err(&sample_with(7, |l| format!("{l},\t"))),
        "业务明细.csv line 7: 26 cells, but the header has 25"
    );
    // A long hostile cell is shortened in the message.
    let long = "9".repeat(500) + ".999";
    let message = err(&sample_with(6, |l| l.replacen("12.34", &long, 1)));
    assert!(message.len() < 200, "{message}");
    assert!(message.starts_with("业务明细.csv line 6, column 订单金额（元）: "));

    for empty in [
        "",
        "\n\n",
        "#only\n#comments",
        "#----业务明细列表----\n#----业务明细列表结束----\nlate,header",
    ] {
        assert_eq!(err(empty), "业务明细.csv: no header row", "{empty:?}");
    }
}

fn rows_for_round_trip() -> Vec<BillRow> {
    let t = |h, m, s| Some(utc(2026, 11, 21, h, m, s));
    vec![
        BillRow {
            line: 0,
            trade_no: "2026112122001400000000000001".into(),
            out_trade_no: "ORD-1".into(),
            kind: BillRowKind::Payment,
            subject: "订单 ORD-1：红色T恤".into(),
            created_at: t(1, 2, 3),
            finished_at: t(1, 2, 9),
            amount_minor: 1234,
            received_minor: 1234,
            refund_no: None,
        },
        BillRow {
            line: 0,
            trade_no: "2026112122001400000000000002".into(),
            out_trade_no: "ORD-2".into(),
            kind: BillRowKind::Payment,
            subject: "a, \"quoted\" subject".into(),
            created_at: t(15, 59, 59),
            finished_at: None,
            amount_minor: 5,
            received_minor: 5,
            refund_no: None,
        },
        BillRow {
            line: 0,
            trade_no: "2026112122001400000000000001".into(),
            out_trade_no: "ORD-1".into(),
            kind: BillRowKind::Refund,
            subject: "订单 ORD-1：红色T恤".into(),
            created_at: t(1, 2, 3),
            finished_at: t(2, 0, 0),
            amount_minor: -234,
            received_minor: -234,
            refund_no: Some("RF20261121220014000000000000011".into()),
        },
    ]
}

#[test]
fn build_then_parse_round_trips_through_gbk() {
    let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let rows = rows_for_round_trip();
    let zip = build_zip("20880000000000010156", date, &rows).unwrap();

    // Names are GBK in the archive, not UTF-8.
    let gbk_name = GBK.encode("20880000000000010156_20261121_业务明细.csv").0;
    assert!(zip.windows(gbk_name.len()).any(|w| w == &*gbk_name));
    let utf8_name = "业务明细".as_bytes();
    assert!(!zip.windows(utf8_name.len()).any(|w| w == utf8_name));

    let bill = parse_zip(&zip, "bill.zip").unwrap();
    assert_eq!(bill.file, "20880000000000010156_20261121_业务明细.csv");
    let expected: Vec<BillRow> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| BillRow {
            line: 6 + i,
            ..r.clone()
        })
        .collect();
    assert_eq!(bill.rows, expected);

    // The text itself is the documented layout.
    let text = detail_csv("20880000000000010156", date, &rows);
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "#支付宝业务明细查询");
    assert_eq!(lines[1], "#账号：[20880000000000010156]");
    assert_eq!(
        lines[2],
        "#起始日期：[2026年11月21日 00:00:00]   终止日期：[2026年11月22日 00:00:00]"
    );
    assert!(lines[3].starts_with("#---") && lines[3].contains("业务明细列表"));
    assert_eq!(lines[4], BILL_COLUMNS.join(","));
    assert_eq!(
        lines[5],
        "2026112122001400000000000001\t,ORD-1\t,交易\t,订单 ORD-1：红色T恤,\
         2026-11-21 09:02:03,2026-11-21 09:02:09,\t,\t,\t,\t,\t,12.34,12.34,0.00,0.00,0.00,\
         0.00,0.00,,0.00\t,0.00,\t,0.00,0.00,"
    );
    assert!(lines[8].contains("业务明细列表结束"));
    assert_eq!(
        lines[9],
        "#交易合计：2笔，商家实收共12.39元，商家优惠共0.00元"
    );
    assert_eq!(
        lines[10],
        "#退款合计：1笔，商家实收退款共-2.34元，商家优惠退款共0.00元"
    );
    assert!(lines[11].starts_with("#导出时间：["));
    assert_eq!(parse_detail(&text, FILE).unwrap(), expected);

    // A hand-edited detail text, zipped as is.
    let edited = text.replacen("12.34", "12.3.4", 1);
    let err = parse_zip(
        &zip_with_detail("20880000000000010156", date, &edited).unwrap(),
        "bill.zip",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "20880000000000010156_20261121_业务明细.csv line 6, column 订单金额（元）: \"12.3.4\" is \
         not an amount"
    );

    // An empty day is a valid bill with no rows.
    let empty = build_zip("2088", date, &[]).unwrap();
    assert_eq!(parse_zip(&empty, "bill.zip").unwrap().rows, vec![]);
}

/// A zip written by the `zip` crate: UTF-8 flagged names, deflated content.
fn deflated_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in entries {
        writer.start_file(*name, options).unwrap();
        writer.write_all(content).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[test]
fn utf8_flagged_names_and_deflated_entries_are_read() {
    let detail = GBK.encode(&sample()).0.into_owned();
    let zip = deflated_zip(&[
        ("2088_20261121_业务明细(汇总).csv", b"#summary"),
        ("dir/2088_20261121_业务明细.csv", &detail),
    ]);
    let bill = parse_zip(&zip, "bill.zip").unwrap();
    assert_eq!(bill.file, "dir/2088_20261121_业务明细.csv");
    assert_eq!(bill.rows, parse_detail(&sample(), FILE).unwrap());
}

#[test]
fn archive_problems_name_the_archive_or_the_detail_file() {
    let modified = Utc::now();
    let gbk = |s: &str| GBK.encode(s).0.into_owned();
    let zip = |entries: &[(Vec<u8>, Vec<u8>)]| {
        let refs: Vec<(&[u8], &[u8])> = entries
            .iter()
            .map(|(n, c)| (n.as_slice(), c.as_slice()))
            .collect();
        stored_zip(&refs, modified, "test.zip").unwrap()
    };
    let message = |bytes: &[u8]| parse_zip(bytes, "bill.zip").unwrap_err().to_string();

    assert!(message(b"").starts_with("bill.zip: not a readable archive: "));
    assert!(message(b"<html>503</html>").starts_with("bill.zip: not a readable archive: "));

    let summary_only = zip(&[(gbk("a_业务明细(汇总).csv"), gbk("#x"))]);
    assert_eq!(
        message(&summary_only),
        "bill.zip: no detail file (…业务明细.csv) in the archive (entries: a_业务明细(汇总).csv)"
    );
    assert_eq!(
        message(&zip(&[])),
        "bill.zip: no detail file (…业务明细.csv) in the archive (entries: none)"
    );
    let two = zip(&[
        (gbk("a_业务明细.csv"), gbk(&sample())),
        (gbk("b_业务明细.csv"), gbk(&sample())),
    ]);
    assert_eq!(
        message(&two),
        "bill.zip: more than one detail file in the archive: \
         a_业务明细.csv, b_业务明细.csv"
    );

    // Line 3 holds a byte GBK has no character for.
    let mut bad = gbk(&sample());
    let third = bad
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .map(|(i, _)| i + 2)
        .unwrap();
    bad[third] = 0xFF;
    let bad_gbk = zip(&[(gbk("x_业务明细.csv"), bad)]);
    assert_eq!(message(&bad_gbk), "x_业务明细.csv: line 3 is not valid GBK");

    // Content errors name the detail file.
    let bad_amount = zip(&[(
        gbk("x_业务明细.csv"),
        gbk(&sample_with(7, |l| l.replacen("-12.34", "x", 1))),
    )]);
    assert_eq!(
        message(&bad_amount),
        "x_业务明细.csv line 7, column 订单金额（元）: \"x\" is not an amount"
    );

    // A UTF-8 detail file with a BOM is accepted.
    let utf8 = zip(&[(
        gbk("x_业务明细.csv"),
        format!("\u{feff}{}", sample()).into_bytes(),
    )]);
    assert_eq!(parse_zip(&utf8, "bill.zip").unwrap().rows.len(), 2);

    // A corrupted stored entry fails its CRC check.
    let mut corrupt = zip(&[(gbk("x_业务明细.csv"), gbk(&sample()))]);
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0x01;
    let m = message(&corrupt);
    assert!(m.starts_with("bill.zip: "), "{m}");
}

#[test]
fn hostile_archives_never_panic() {
    let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let good = build_zip("2088", date, &rows_for_round_trip()).unwrap();
    let named = |e: &BillError| {
        let m = e.to_string();
        m.starts_with("bill.zip") || m.starts_with("2088_20261121_业务明细.csv")
    };
    // Every truncation.
    for cut in 0..good.len() {
        if let Err(e) = parse_zip(&good[..cut], "bill.zip") {
            assert!(named(&e), "{e}");
        }
    }
    // Every single-byte corruption.
    for at in 0..good.len() {
        let mut bytes = good.clone();
        bytes[at] ^= 0xA5;
        if let Err(e) = parse_zip(&bytes, "bill.zip") {
            assert!(named(&e), "{e}");
        }
    }
    // Random bytes, with and without a zip signature in front.
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..500 {
        let len = rng.random_range(0..400);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) {
            bytes.splice(0..0, *b"PK\x03\x04");
        }
        if let Err(e) = parse_zip(&bytes, "bill.zip") {
            assert!(e.to_string().starts_with("bill.zip"), "{e}");
        }
    }
}

#[test]
fn hostile_text_never_panics() {
    let pieces = [
        ",",
        "\t",
        "\n",
        "\r\n",
        "#",
        "\"",
        "\"\"",
        "-",
        "---业务明细列表---",
        "业务明细列表结束",
        "交易",
        "退款",
        "12.34",
        "-0.01",
        "2026-11-21 10:55:16",
        "9999-99-99 99:99:99",
        "",
        " ",
        "\u{feff}",
        "商户订单号",
        "订单金额（元）",
        "é",
        "𝄞",
    ];
    let header = BILL_COLUMNS.join(",");
    let mut rng = StdRng::seed_from_u64(11);
    for round in 0..2000 {
        let mut text = if round % 2 == 0 {
            format!("{header}\n")
        } else {
            String::new()
        };
        for _ in 0..rng.random_range(0..80) {
            text.push_str(pieces[rng.random_range(0..pieces.len())]);
        }
        match parse_detail(&text, FILE) {
            Ok(rows) => assert!(rows.iter().all(|r| !r.trade_no.is_empty())),
            Err(e) => assert!(e.to_string().starts_with(FILE), "{e}"),
        }
    }
}

#[test]
fn a_bill_knows_which_day_it_covers() {
    let day: chrono::NaiveDate = "2026-11-21".parse().unwrap();
    let text = sample();
    let period = parse_period(&text).expect("the period line");
    let bill = Bill {
        file: "x_业务明细.csv".into(),
        offset: order_closer_core::time::china(),
        account: parse_account(&text),
        period: Some(period),
        rows: Vec::new(),
    };
    assert_eq!(bill.check_day(day), Ok(()));
    let other = bill.check_day("2026-12-02".parse().unwrap()).unwrap_err();
    assert!(
        other.to_string().contains("covers 2026-11-21 00:00:00"),
        "{other}"
    );
    // A bill that says no period is judged by its rows' China-time days.
    let rows = parse_detail(&text, "x").unwrap();
    let undated = Bill {
        period: None,
        rows,
        ..bill.clone()
    };
    assert_eq!(undated.check_day(day), Ok(()));
    let err = undated
        .check_day("2026-11-22".parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 6 is of 2026-11-21"), "{err}");
    // Neither a period nor rows: it says no day, and would pass for any.
    let blank = Bill {
        period: None,
        ..bill.clone()
    };
    for date in [day, "1999-01-01".parse().unwrap()] {
        let err = blank.check_day(date).unwrap_err();
        assert!(matches!(err, BillError::NoDay { .. }), "{err}");
        assert!(
            err.to_string().contains("does not say which day it covers"),
            "{err}"
        );
    }
    // A row without a time says no day either.
    let mut timeless = undated.clone();
    timeless.rows[1].finished_at = None;
    let err = timeless.check_day(day).unwrap_err().to_string();
    assert!(err.contains("line 7 has no time"), "{err}");
}

/// Our account as the Alipay client says it, for `seller_id`.
fn ours(seller_id: &str) -> order_closer_gateway::bill::Account {
    order_closer_gateway::bill::Account {
        id: seller_id.into(),
        configured_by: "ALIPAY_SELLER_ID",
        code_digits: ACCOUNT_CODE_DIGITS,
    }
}

#[test]
fn a_bill_of_another_merchant_is_refused_naming_both() {
    let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let rows = rows_for_round_trip();
    let zip = |account: &str| build_zip(account, date, &rows).unwrap();
    let bill = parse_zip(&zip("20880000000001560156"), "bill.zip").unwrap();
    assert_eq!(bill.account.as_deref(), Some("20880000000001560156"));
    let checked = bill.check(&ours("2088000000000156"), date).unwrap();
    assert_eq!(checked.bill().rows.len(), rows.len());

    // Another partner id, or ours without (or with a longer) account code.
    for other in [
        "20889999999999990156",
        "2088000000000156",
        "208800000000015601560",
        "2088000000000156015x",
        "20880000000001570156",
    ] {
        let err = parse_zip(&zip(other), "bill.zip")
            .unwrap()
            .check(&ours("2088000000000156"), date)
            .unwrap_err();
        assert!(
            matches!(err, BillError::OtherAccount { .. }),
            "{other}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(other) && text.contains("2088000000000156, from ALIPAY_SELLER_ID"),
            "{text}"
        );
    }
    // A detail file without its account line names no merchant.
    let headless = detail_csv_without("20880000000001560156", date, &rows, "#账号");
    let bill = parse_zip(
        &zip_with_detail("2088", date, &headless).unwrap(),
        "bill.zip",
    )
    .unwrap();
    assert_eq!(bill.account, None);
    let err = bill.check(&ours("2088000000000156"), date).unwrap_err();
    assert!(
        err.to_string().contains("names no merchant account"),
        "{err}"
    );
    // An unset (empty) id matches nothing.
    assert!(!ours("").is_named_by("0156"));
}

#[test]
fn the_simulators_bill_names_the_account_its_client_env_configures() {
    use order_closer_sim::alipay::{SIM_BILL_ACCOUNT, SIM_SELLER_ID};
    assert!(ours(SIM_SELLER_ID).is_named_by(SIM_BILL_ACCOUNT));
}

#[test]
fn a_detail_file_without_its_period_line_is_refused() {
    let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let rows = rows_for_round_trip();
    let undated = detail_csv_without("20880000000001560156", date, &rows, "#起始日期");
    let err = parse_zip(
        &zip_with_detail("2088", date, &undated).unwrap(),
        "bill.zip",
    )
    .unwrap_err();
    assert!(matches!(err, BillError::MissingLine { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("2088_20261121_业务明细.csv: no period line (#起始日期"),
        "{err}"
    );
    // A period line that cannot be read counts as none (and never panics).
    for broken in [
        "#起始日期：]x[   终止日期：[",
        "#起始日期：[2026年13月01日 00:00:00]",
    ] {
        let text = undated.replacen("#账号", &format!("{broken}\r\n#账号"), 1);
        assert!(parse_zip(&zip_with_detail("2088", date, &text).unwrap(), "b").is_err());
    }
}

#[test]
fn entry_names_are_escaped_for_the_terminal() {
    let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    let text = detail_csv("20880000000001560156", date, &rows_for_round_trip());
    let gbk = |s: &str| GBK.encode(s).0.into_owned();
    let zip = stored_zip(
        &[(&gbk("x\u{1b}[2J\u{8}_业务明细.csv"), &gbk(&text))],
        Utc::now(),
        "t.zip",
    )
    .unwrap();
    let bill = parse_zip(&zip, "bill\u{0}.zip").unwrap();
    assert_eq!(bill.file, "x\\u{1b}[2J\\u{8}_业务明细.csv");
    let none = stored_zip(&[(&gbk("\u{1b}]0;x\u{7}"), b"")], Utc::now(), "t.zip").unwrap();
    let err = parse_zip(&none, "bill\u{0}.zip").unwrap_err().to_string();
    assert!(!err.chars().any(char::is_control), "{err:?}");
}
