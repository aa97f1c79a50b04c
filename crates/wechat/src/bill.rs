//! WeChat Pay's trade bill (`bill_type=ALL`), as a [`Bill`]: UTF-8 CSV (a byte-order mark
//! is dropped), a header row, one row per payment or refund with **every cell prefixed
//! by a backtick** (so spreadsheets keep long numbers), then a summary header starting
//! `总交易单数` and its row, which end the data. No `#` lines, no period line, no account
//! line: the rows' own times say which day the bill covers, and their `商户号` cells whose
//! bill it is (every row must name the same merchant). A bill without rows therefore
//! says neither: it is refused by [`Bill::check`] unless the gateway vouches for it (a
//! downloaded bill, see [`Bill::vouch`]). Amounts are yuan, times China time.
//!
//! Rows: `交易状态` `SUCCESS` is a payment; `REFUND` is a refund (`退款金额`, `商户退款单号`
//! filled). `REVOKED` (a payment-code payment revoked; its layout is unverified) is read as
//! a refund of the whole order. Assumed and unverified: a refund row's `交易时间` is the
//! refund's time.

use order_closer_core::time::parse_china_time;
use order_closer_gateway::bill::csv::{self, Dress, Header, echo};
use order_closer_gateway::bill::{Bill, BillError, BillRow, BillRowKind};

const COL_TIME: &str = "交易时间";
const COL_MCHID: &str = "商户号";
const COL_TRADE_NO: &str = "微信订单号";
const COL_OUT_TRADE_NO: &str = "商户订单号";
const COL_STATE: &str = "交易状态";
const COL_SETTLED: &str = "应结订单金额";
const COL_REFUND_NO: &str = "商户退款单号";
const COL_REFUND: &str = "退款金额";
const COL_SUBJECT: &str = "商品名称";
const COL_AMOUNT: &str = "订单金额";

/// The columns read (the bill has 27).
pub const REQUIRED_COLUMNS: [&str; 10] = [
    COL_TIME,
    COL_MCHID,
    COL_TRADE_NO,
    COL_OUT_TRADE_NO,
    COL_STATE,
    COL_SETTLED,
    COL_REFUND_NO,
    COL_REFUND,
    COL_SUBJECT,
    COL_AMOUNT,
];

/// Every column of `bill_type=ALL`, in order.
pub const BILL_COLUMNS: [&str; 27] = [
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
];

/// The first cell of the summary header, which ends the data rows.
pub const SUMMARY_MARK: &str = "总交易单数";

/// Reads a decompressed bill; `file` names it in errors (control characters escaped).
pub fn parse_bill(bytes: &[u8], file: &str) -> Result<Bill, BillError> {
    let file = &*order_closer_core::text::printable(file);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        BillError::Encoding {
            file: file.to_owned(),
            line,
            encoding: "UTF-8",
        }
    })?;
    let lines = csv::lines(text);
    let Some(header_at) = lines.iter().position(|l| !l.trim().is_empty()) else {
        return Err(BillError::NoHeader {
            file: file.to_owned(),
        });
    };
    let header = Header::read(
        lines[header_at],
        header_at + 1,
        file,
        &REQUIRED_COLUMNS,
        Dress::Backtick,
    )?;
    let mut rows = Vec::new();
    // The merchant the first row names, and its line.
    let mut account: Option<(String, usize)> = None;
    for (i, line) in lines.iter().enumerate().skip(header_at + 1) {
        if line.trim_start().starts_with(SUMMARY_MARK) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (row, mchid) = read_row(&header, line, i + 1, file)?;
        match &account {
            None => account = Some((mchid, row.line)),
            Some((first, first_line)) if *first != mchid => {
                return Err(BillError::MixedAccounts {
                    file: file.to_owned(),
                    first_line: *first_line,
                    first: echo(first),
                    line: row.line,
                    account: echo(&mchid),
                });
            }
            Some(_) => {}
        }
        rows.push(row);
    }
    Ok(Bill {
        file: file.to_owned(),
        offset: order_closer_core::time::china(),
        account: account.map(|(mchid, _)| mchid),
        period: None,
        rows,
    })
}

/// One data row, and the merchant it names.
fn read_row(
    header: &Header,
    line: &str,
    line_no: usize,
    file: &str,
) -> Result<(BillRow, String), BillError> {
    let row = header.row(line, line_no, file)?;
    let mchid = row.required(COL_MCHID)?.to_owned();
    let at = row.time(COL_TIME, parse_china_time, "yyyy-MM-dd HH:mm:ss")?;
    let trade_no = row.required(COL_TRADE_NO)?;
    let amount = row.amount(COL_AMOUNT)?;
    let (kind, amount_minor, received_minor, refund_no) = match row.cell(COL_STATE) {
        "SUCCESS" => (BillRowKind::Payment, amount, row.amount(COL_SETTLED)?, None),
        "REFUND" => {
            let refund = row.amount(COL_REFUND)?;
            let no = row.cell(COL_REFUND_NO);
            (
                BillRowKind::Refund,
                -refund.abs(),
                -refund.abs(),
                (!no.is_empty()).then(|| no.to_owned()),
            )
        }
        "REVOKED" => (BillRowKind::Refund, -amount.abs(), -amount.abs(), None),
        other => {
            return Err(row.bad(
                COL_STATE,
                format!("{:?} is neither SUCCESS, REFUND nor REVOKED", echo(other)),
            ));
        }
    };
    let bill_row = BillRow {
        line: line_no,
        trade_no: trade_no.to_owned(),
        out_trade_no: row.cell(COL_OUT_TRADE_NO).to_owned(),
        kind,
        subject: row.cell(COL_SUBJECT).to_owned(),
        created_at: at,
        finished_at: at,
        amount_minor,
        received_minor,
        refund_no,
    };
    Ok((bill_row, mchid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        [
            BILL_COLUMNS.join(","),
            "`2021-01-28 17:07:11,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000925202101284997714292,`S20210128170702357723,`ofyak5q,`NATIVE,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,`0.00,`0.00,`,`,`for testing,`cipher code,`0.00000,`1.00%,`0.01,`0.00,`".into(),
            "`2021-01-28 18:00:00,`wx81be3101902f7cb2,`1601959334,`0,`,`4200000925202101284997714292,`S20210128170702357723,`ofyak5q,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300001,`RF-1,`0.01,`0.00,`ORIGINAL,`SUCCESS,`for testing,`,`0.00000,`1.00%,`0.01,`0.01,`".into(),
            "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额".into(),
            "`1,`0.01,`0.01,`0.00,`0.00000,`0.01,`0.01".into(),
        ]
        .join("\r\n")
    }

    #[test]
    fn the_documented_layout_is_read() {
        let bill = parse_bill(format!("\u{feff}{}", sample()).as_bytes(), "b.csv").unwrap();
        assert_eq!(bill.rows.len(), 2);
        let pay = &bill.rows[0];
        assert_eq!(
            (
                pay.kind,
                pay.trade_no.as_str(),
                pay.out_trade_no.as_str(),
                pay.amount_minor
            ),
            (
                BillRowKind::Payment,
                "4200000925202101284997714292",
                "S20210128170702357723",
                1
            )
        );
        assert_eq!(
            pay.finished_at.unwrap().to_rfc3339(),
            "2021-01-28T09:07:11+00:00"
        );
        let refund = &bill.rows[1];
        assert_eq!(
            (
                refund.kind,
                refund.amount_minor,
                refund.refund_no.as_deref()
            ),
            (BillRowKind::Refund, -1, Some("RF-1"))
        );
        assert_eq!(bill.check_day("2021-01-28".parse().unwrap()), Ok(()));
        assert!(bill.check_day("2021-01-29".parse().unwrap()).is_err());
    }

    #[test]
    fn malformed_bills_name_file_line_and_column() {
        let lines: Vec<String> = sample().split("\r\n").map(str::to_owned).collect();
        let with = |i: usize, f: &dyn Fn(&str) -> String| {
            let mut l = lines.clone();
            l[i] = f(&l[i]);
            l.join("\n")
        };
        for (text, word) in [
            (String::new(), "no header row".to_owned()),
            (
                with(0, &|l| l.replace("商户订单号", "订单")),
                "no column 商户订单号".to_owned(),
            ),
            (
                with(1, &|l| l.replace("`SUCCESS", "`WHAT")),
                "b.csv line 2, column 交易状态".to_owned(),
            ),
            (
                with(1, &|l| l.replace("`0.01,`0.00,`0,", "`x,`0.00,`0,")),
                "column 应结订单金额".to_owned(),
            ),
            (
                with(1, &|l| l.replacen("`2021-01-28 17:07:11", "`yesterday", 1)),
                "column 交易时间".to_owned(),
            ),
            (
                with(2, &|l| l.replacen(",`", ",", 1).replacen(",`", "", 1)),
                "b.csv line 3:".to_owned(),
            ),
        ] {
            let err = parse_bill(text.as_bytes(), "b.csv")
                .unwrap_err()
                .to_string();
            assert!(err.contains(&word), "{word}: {err}");
        }
        let err = parse_bill(b"\xff\xfe", "b.csv").unwrap_err().to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }

    fn ours(mchid: &str) -> order_closer_gateway::bill::Account {
        order_closer_gateway::bill::Account {
            id: mchid.into(),
            configured_by: "WECHAT_MCH_ID",
            code_digits: 0,
        }
    }

    #[test]
    fn a_bill_names_its_merchant_in_every_row() {
        let day = "2021-01-28".parse().unwrap();
        let bill = parse_bill(sample().as_bytes(), "b.csv").unwrap();
        assert_eq!(bill.account.as_deref(), Some("1601959334"));
        assert!(bill.clone().check(&ours("1601959334"), day).is_ok());
        let err = bill.check(&ours("1900000109"), day).unwrap_err();
        assert!(matches!(err, BillError::OtherAccount { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "b.csv is the bill of merchant account 1601959334, not ours (1900000109, from \
             WECHAT_MCH_ID)"
        );
        // The column is required, and must be filled.
        let text = sample().replacen("商户号", "商户", 1);
        let err = parse_bill(text.as_bytes(), "b.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no column 商户号"), "{err}");
        let text = sample().replacen("`1601959334", "`", 1);
        let err = parse_bill(text.as_bytes(), "b.csv")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.csv line 2, column 商户号: is empty"),
            "{err}"
        );
        // Two merchants in one bill: whose is it?
        let text = sample().replacen("`1601959334", "`1900000109", 1);
        let err = parse_bill(text.as_bytes(), "b.csv")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "b.csv line 3 names merchant account 1601959334, line 2 1900000109"
        );
    }

    #[test]
    fn an_empty_bill_says_neither_its_day_nor_its_merchant() {
        let day = "2021-01-28".parse().unwrap();
        let lines: Vec<String> = sample().split("\r\n").map(str::to_owned).collect();
        let empty = [&lines[0], &lines[3], &lines[4]]
            .map(String::as_str)
            .join("\r\n");
        let bill = parse_bill(empty.as_bytes(), "b.csv").unwrap();
        assert_eq!((bill.account.as_deref(), bill.period), (None, None));
        let err = bill.clone().check(&ours("1601959334"), day).unwrap_err();
        assert!(matches!(err, BillError::NoAccount { .. }), "{err}");
        for date in [day, "2030-01-01".parse().unwrap()] {
            let err = bill.check_day(date).unwrap_err();
            assert!(matches!(err, BillError::NoDay { .. }), "{err}");
        }
        // Vouched for by the gateway (a download for that day), it is that day's bill.
        let mut vouched = bill;
        vouched.vouch("1601959334", day);
        assert!(vouched.clone().check(&ours("1601959334"), day).is_ok());
        assert!(
            vouched
                .check(&ours("1601959334"), "2021-01-29".parse().unwrap())
                .is_err()
        );
        // A bill with rows is not vouched for: its rows say whose and which day it is.
        let mut full = parse_bill(sample().as_bytes(), "b.csv").unwrap();
        full.vouch("1900000109", "2021-01-29".parse().unwrap());
        assert_eq!(full.account.as_deref(), Some("1601959334"));
        assert_eq!(full.period, None);
    }

    #[test]
    fn every_gzip_member_is_read_and_trailing_bytes_are_refused() {
        use crate::client::gunzip;
        use std::io::Write as _;
        let member = |text: &str| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap()
        };
        let text = sample();
        let (head, tail) = text.split_at(text.len() / 2);
        let two = [member(head), member(tail)].concat();
        assert_eq!(gunzip(&two, "b.csv.gz").unwrap(), text.as_bytes());
        let three = [member(head), member(""), member(tail)].concat();
        assert_eq!(gunzip(&three, "b.csv.gz").unwrap(), text.as_bytes());
        for garbage in [&b"junk"[..], b"\0", b"\x1f\x8b", b"\n"] {
            let bytes = [member(&text), garbage.to_vec()].concat();
            let err = gunzip(&bytes, "b.csv.gz").unwrap_err();
            assert!(
                matches!(err, BillError::NotArchive { .. }),
                "{garbage:?}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with("b.csv.gz: not a readable archive")
            );
        }
    }
}
