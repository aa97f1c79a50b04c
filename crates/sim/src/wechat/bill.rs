//! Writing a trade bill in WeChat Pay's format (`bill_type=ALL`): the header, one
//! backtick-prefixed row per payment or refund, the summary; gzipped, with the SHA-1 of
//! the decompressed text that the bill answer vouches for.

use std::io::Write as _;

use chrono::NaiveDate;

use order_closer_core::money::format_minor;
use order_closer_core::time::format_china_time;
use order_closer_gateway::bill::{BillRow, BillRowKind};
use order_closer_wechat::bill::{BILL_COLUMNS, SUMMARY_MARK};

/// The simulated app id in bill rows.
const APP_ID: &str = "wxd678efh567hg6787";

/// The bill's CSV text for `rows` of merchant `mchid`.
pub fn bill_csv(mchid: &str, rows: &[BillRow]) -> String {
    let mut out = BILL_COLUMNS.join(",");
    out.push_str("\r\n");
    let (mut paid, mut refunded, mut count) = (0i64, 0i64, 0usize);
    for row in rows {
        let at = row.finished_at.map(format_china_time).unwrap_or_default();
        let amount = format_minor(row.amount_minor.abs());
        let (state, settled, refund_no, refund) = match row.kind {
            BillRowKind::Payment => {
                paid += row.amount_minor;
                count += 1;
                ("SUCCESS", amount.clone(), String::new(), "0.00".to_owned())
            }
            BillRowKind::Refund => {
                refunded += row.amount_minor.abs();
                (
                    "REFUND",
                    "0.00".to_owned(),
                    row.refund_no.clone().unwrap_or_default(),
                    amount.clone(),
                )
            }
        };
        let cells: [&str; 27] = [
            &at,
            APP_ID,
            mchid,
            "0",
            "",
            &row.trade_no,
            &row.out_trade_no,
            "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "NATIVE",
            state,
            "OTHERS",
            "CNY",
            &settled,
            "0.00",
            if refund_no.is_empty() {
                "0"
            } else {
                "50300000000000000001"
            },
            if refund_no.is_empty() {
                "0"
            } else {
                &refund_no
            },
            &refund,
            "0.00",
            if refund_no.is_empty() { "" } else { "ORIGINAL" },
            if refund_no.is_empty() { "" } else { "SUCCESS" },
            &row.subject,
            "",
            "0.00000",
            "0.60%",
            &amount,
            &refund,
            "",
        ];
        let line: Vec<String> = cells.iter().map(|c| format!("`{c}")).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out.push_str(&format!(
        "{SUMMARY_MARK},应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n"
    ));
    out.push_str(&format!(
        "`{count},`{},`{},`0.00,`0.00000,`{},`{}\r\n",
        format_minor(paid),
        format_minor(refunded),
        format_minor(paid),
        format_minor(refunded)
    ));
    out
}

/// The gzipped bill and the SHA-1 (lower-case hex) of its text.
pub fn gzip_with_digest(text: &str) -> std::io::Result<(Vec<u8>, String)> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(text.as_bytes())?;
    let gz = encoder.finish()?;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        text.as_bytes(),
    );
    Ok((
        gz,
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

/// The bill of `date` is for a day that has begun (the simulator also serves today).
pub fn servable(date: NaiveDate, today: NaiveDate) -> bool {
    date <= today
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use order_closer_wechat::bill::parse_bill;
    use order_closer_wechat::client::{check_digest, gunzip};

    #[test]
    fn a_written_bill_reads_back_and_its_digest_checks() {
        let at = Utc.with_ymd_and_hms(2026, 11, 21, 2, 55, 23).unwrap();
        let payment = BillRow {
            line: 0,
            trade_no: "4200000001".into(),
            out_trade_no: "W-1".into(),
            kind: BillRowKind::Payment,
            subject: "T-shirt".into(),
            created_at: Some(at),
            finished_at: Some(at),
            amount_minor: 1234,
            received_minor: 1234,
            refund_no: None,
        };
        let refund = BillRow {
            kind: BillRowKind::Refund,
            amount_minor: -1234,
            received_minor: -1234,
            refund_no: Some("RF-9".into()),
            ..payment.clone()
        };
        let rows = vec![payment, refund];
        let text = bill_csv("1900000109", &rows);
        let (gz, sha1) = gzip_with_digest(&text).unwrap();
        let back = gunzip(&gz, "b").unwrap();
        assert_eq!(check_digest(&back, &sha1.to_uppercase(), "b"), Ok(()));
        assert!(check_digest(&back, "00", "b").is_err());
        let bill = parse_bill(&back, "b").unwrap();
        let read: Vec<(BillRowKind, i64, Option<String>)> = bill
            .rows
            .iter()
            .map(|r| (r.kind, r.amount_minor, r.refund_no.clone()))
            .collect();
        assert_eq!(
            read,
            vec![
                (BillRowKind::Payment, 1234, None),
                (BillRowKind::Refund, -1234, Some("RF-9".into()))
            ]
        );
        assert!(gunzip(b"not gzip", "b").is_err());
    }
}
