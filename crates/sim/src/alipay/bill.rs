//! Writing a trade bill in Alipay's format: the detail and summary CSV files in GBK, and a
//! zip archive whose entry names are GBK too (no UTF-8 flag), as Alipay's downloads are.
//!
//! The `zip` crate only writes UTF-8 names, so the archive is written here: a minimal
//! stored (uncompressed) zip with local headers, a central directory and the end record.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use encoding_rs::GBK;
use order_closer_core::time::china;

use order_closer_alipay::bill::kind_word;
use order_closer_alipay::format_china_time;
use order_closer_core::money::format_minor;
use order_closer_gateway::bill::{BillError, BillRow, BillRowKind};

/// The detail file's 25 columns, in Alipay's order.
pub const BILL_COLUMNS: [&str; 25] = [
    "支付宝交易号",
    "商户订单号",
    "业务类型",
    "商品名称",
    "创建时间",
    "完成时间",
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    "订单金额（元）",
    "商家实收（元）",
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    "退款批次号/请求号",
    "服务费（元）",
    "分润（元）",
    "备注",
];

/// The summary file's columns (a plausible layout: the reader skips this file).
const SUMMARY_COLUMNS: &str = "门店编号,门店名称,交易订单总笔数,退款订单总笔数,已收入总金额（元）,\
已退款总金额（元）,支付宝红包收入（元）,支付宝红包退款（元）,集分宝收入（元）,集分宝退款（元）,\
支付宝优惠（元）,商家优惠（元）,卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）";

const DETAIL_START: &str = "#-----------------------------------------业务明细列表----------------------------------------";
const DETAIL_END: &str = "#-----------------------------------------业务明细列表结束------------------------------------";
const SUMMARY_START: &str = "#-----------------------------------------业务汇总列表----------------------------------------";
const SUMMARY_END: &str = "#-----------------------------------------业务汇总列表结束------------------------------------";

/// Alipay's files end lines with CRLF.
const EOL: &str = "\r\n";

/// `{account}_{yyyymmdd}_业务明细.csv`.
pub fn detail_file_name(account: &str, date: NaiveDate) -> String {
    format!("{account}_{}_业务明细.csv", date.format("%Y%m%d"))
}

/// `{account}_{yyyymmdd}_业务明细(汇总).csv`.
pub fn summary_file_name(account: &str, date: NaiveDate) -> String {
    format!("{account}_{}_业务明细(汇总).csv", date.format("%Y%m%d"))
}

/// Writes the bill of `date` for `account` as Alipay serves it: a zip holding
/// [`detail_file_name`] (comment header, dashed start marker, the 25-column header of
/// [`BILL_COLUMNS`], one line per row with trailing TABs on text cells, end marker, totals
/// and export time) and [`summary_file_name`], both GBK-encoded, names GBK-encoded.
///
/// Each row is written from its fields (its `line` is ignored); characters GBK cannot
/// encode become HTML numeric references (`&#128512;`), line breaks in text become
/// spaces, text with a comma or quote is double-quoted, and surrounding whitespace is not
/// preserved (the reader trims cells). Fails only if a file would exceed the 4 GiB a
/// plain zip can hold ([`BillError::TooLarge`]).
pub fn build_zip(account: &str, date: NaiveDate, rows: &[BillRow]) -> Result<Vec<u8>, BillError> {
    let exported = Utc::now();
    let detail = detail_csv_at(account, date, rows, exported);
    let summary = summary_csv_at(account, date, rows, exported);
    zip_files(account, date, &detail, &summary, exported)
}

/// Writes a bill archive around a detail file's text given as is (GBK-encoded, under
/// [`detail_file_name`]), with an empty day's summary: for tests that need a bill with a
/// hand-made (possibly malformed) detail file, for example [`detail_csv`]'s output
/// edited. Fails only as [`build_zip`] does.
pub fn zip_with_detail(account: &str, date: NaiveDate, detail: &str) -> Result<Vec<u8>, BillError> {
    let exported = Utc::now();
    let summary = summary_csv_at(account, date, &[], exported);
    zip_files(account, date, detail, &summary, exported)
}

fn zip_files(
    account: &str,
    date: NaiveDate,
    detail: &str,
    summary: &str,
    exported: DateTime<Utc>,
) -> Result<Vec<u8>, BillError> {
    let detail_name = gbk(&detail_file_name(account, date));
    let summary_name = gbk(&summary_file_name(account, date));
    let archive = format!("{account}_{}.csv.zip", date.format("%Y%m%d"));
    stored_zip(
        &[(&detail_name, &gbk(detail)), (&summary_name, &gbk(summary))],
        exported,
        &archive,
    )
}

/// The detail file's text (before GBK encoding), as [`build_zip`] writes it, exported now.
pub fn detail_csv(account: &str, date: NaiveDate, rows: &[BillRow]) -> String {
    detail_csv_at(account, date, rows, Utc::now())
}

/// [`detail_csv`] without its lines starting with `prefix` (`#账号`, `#起始日期`): for
/// tests of a bill that lacks a line.
pub fn detail_csv_without(
    account: &str,
    date: NaiveDate,
    rows: &[BillRow],
    prefix: &str,
) -> String {
    detail_csv(account, date, rows)
        .split(EOL)
        .filter(|l| !l.starts_with(prefix))
        .collect::<Vec<_>>()
        .join(EOL)
}

fn gbk(text: &str) -> Vec<u8> {
    GBK.encode(text).0.into_owned()
}

/// `2026年11月21日 00:00:00`.
fn chinese_date(date: NaiveDate) -> String {
    date.format("%Y年%m月%d日 00:00:00").to_string()
}

/// `2026年11月22日 05:46:49`, China time.
fn chinese_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&china())
        .format("%Y年%m月%d日 %H:%M:%S")
        .to_string()
}

fn period_lines(title: &str, account: &str, date: NaiveDate) -> String {
    let next = date.succ_opt().unwrap_or(date);
    format!(
        "#{title}{EOL}#账号：[{account}]{EOL}#起始日期：[{}]   终止日期：[{}]{EOL}",
        chinese_date(date),
        chinese_date(next)
    )
}

/// A text cell as written: no line breaks, quoted if it holds a comma or a quote.
fn text(value: &str) -> String {
    let flat: String = value
        .chars()
        .map(|c| if matches!(c, '\r' | '\n') { ' ' } else { c })
        .collect();
    if flat.contains(',') || flat.contains('"') {
        format!("\"{}\"", flat.replace('"', "\"\""))
    } else {
        flat
    }
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(format_china_time).unwrap_or_default()
}

fn detail_line(row: &BillRow) -> String {
    let cells: [String; 25] = [
        format!("{}\t", text(&row.trade_no)),
        format!("{}\t", text(&row.out_trade_no)),
        format!("{}\t", kind_word(row.kind)),
        text(&row.subject),
        time(row.created_at),
        time(row.finished_at),
        "\t".to_owned(),
        "\t".to_owned(),
        "\t".to_owned(),
        "\t".to_owned(),
        "\t".to_owned(),
        format_minor(row.amount_minor),
        format_minor(row.received_minor),
        "0.00".to_owned(),
        "0.00".to_owned(),
        "0.00".to_owned(),
        "0.00".to_owned(),
        "0.00".to_owned(),
        String::new(),
        "0.00\t".to_owned(),
        "0.00".to_owned(),
        format!("{}\t", text(row.refund_no.as_deref().unwrap_or(""))),
        "0.00".to_owned(),
        "0.00".to_owned(),
        String::new(),
    ];
    cells.join(",")
}

/// Count and sum of `商家实收` for one kind of row.
fn totals(rows: &[BillRow], kind: BillRowKind) -> (usize, i64) {
    rows.iter()
        .filter(|r| r.kind == kind)
        .fold((0, 0_i64), |(n, sum), r| {
            (n + 1, sum.saturating_add(r.received_minor))
        })
}

fn detail_csv_at(
    account: &str,
    date: NaiveDate,
    rows: &[BillRow],
    exported: DateTime<Utc>,
) -> String {
    let mut out = period_lines("支付宝业务明细查询", account, date);
    out.push_str(DETAIL_START);
    out.push_str(EOL);
    out.push_str(&BILL_COLUMNS.join(","));
    out.push_str(EOL);
    for row in rows {
        out.push_str(&detail_line(row));
        out.push_str(EOL);
    }
    out.push_str(DETAIL_END);
    out.push_str(EOL);
    let (payments, received) = totals(rows, BillRowKind::Payment);
    let (refunds, refunded) = totals(rows, BillRowKind::Refund);
    out.push_str(&format!(
        "#交易合计：{payments}笔，商家实收共{}元，商家优惠共0.00元{EOL}",
        format_minor(received)
    ));
    out.push_str(&format!(
        "#退款合计：{refunds}笔，商家实收退款共{}元，商家优惠退款共0.00元{EOL}",
        format_minor(refunded)
    ));
    out.push_str(&format!("#导出时间：[{}]{EOL}", chinese_time(exported)));
    out
}

fn summary_csv_at(
    account: &str,
    date: NaiveDate,
    rows: &[BillRow],
    exported: DateTime<Utc>,
) -> String {
    let (payments, received) = totals(rows, BillRowKind::Payment);
    let (refunds, refunded) = totals(rows, BillRowKind::Refund);
    let net = format_minor(received.saturating_add(refunded));
    let (received, refunded) = (format_minor(received), format_minor(refunded));
    let zeros = ["0.00"; 9].join(",");
    let mut out = period_lines("支付宝业务汇总查询", account, date);
    out.push_str(SUMMARY_START);
    out.push_str(EOL);
    out.push_str(SUMMARY_COLUMNS);
    out.push_str(EOL);
    out.push_str(&format!(
        "\t,\t,{payments},{refunds},{received},{refunded},{zeros},{net}{EOL}"
    ));
    out.push_str(&format!(
        ",合计,{payments},{refunds},{received},{refunded},{zeros},{net}{EOL}"
    ));
    out.push_str(SUMMARY_END);
    out.push_str(EOL);
    out.push_str(&format!("#导出时间：[{}]{EOL}", chinese_time(exported)));
    out
}

// ---------------------------------------------------------------------------------------
// A minimal stored zip writer
// ---------------------------------------------------------------------------------------

/// MS-DOS time and date of `at` in China time (the zip format has no time zone).
fn dos_time_date(at: DateTime<Utc>) -> (u16, u16) {
    let local = at.with_timezone(&china());
    let year = u16::try_from(local.year().clamp(1980, 2107) - 1980).unwrap_or(0);
    // Hours < 24, minutes < 60, seconds / 2 < 30, months 1..=12, days 1..=31: all fit.
    let time =
        (local.hour() as u16) << 11 | (local.minute() as u16) << 5 | (local.second() as u16 / 2);
    let date = year << 9 | (local.month() as u16) << 5 | local.day() as u16;
    (time, date)
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes a zip archive of uncompressed entries, `(raw name, content)`, with the names
/// stored byte for byte and the UTF-8 flag clear (so readers take the names as the local
/// code page: GBK for Alipay's bills). `archive` names the archive in errors.
pub fn stored_zip(
    entries: &[(&[u8], &[u8])],
    modified: DateTime<Utc>,
    archive: &str,
) -> Result<Vec<u8>, BillError> {
    const VERSION: u16 = 20;
    let too_large = || BillError::TooLarge {
        file: archive.to_owned(),
        limit: u64::from(u32::MAX - 1),
    };
    let fits = |n: usize| u32::try_from(n).ok().filter(|v| *v < u32::MAX);
    let (time, date) = dos_time_date(modified);
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, content) in entries {
        let offset = fits(out.len()).ok_or_else(too_large)?;
        let size = fits(content.len()).ok_or_else(too_large)?;
        let name_len = u16::try_from(name.len()).map_err(|_| too_large())?;
        let crc = crc32fast::hash(content);

        put_u32(&mut out, 0x0403_4b50);
        put_u16(&mut out, VERSION);
        put_u16(&mut out, 0); // flags: no UTF-8 names, no data descriptor
        put_u16(&mut out, 0); // stored
        put_u16(&mut out, time);
        put_u16(&mut out, date);
        put_u32(&mut out, crc);
        put_u32(&mut out, size);
        put_u32(&mut out, size);
        put_u16(&mut out, name_len);
        put_u16(&mut out, 0); // extra field length
        out.extend_from_slice(name);
        out.extend_from_slice(content);

        put_u32(&mut central, 0x0201_4b50);
        put_u16(&mut central, VERSION); // made by: MS-DOS, 2.0
        put_u16(&mut central, VERSION);
        put_u16(&mut central, 0);
        put_u16(&mut central, 0);
        put_u16(&mut central, time);
        put_u16(&mut central, date);
        put_u32(&mut central, crc);
        put_u32(&mut central, size);
        put_u32(&mut central, size);
        put_u16(&mut central, name_len);
        put_u16(&mut central, 0); // extra
        put_u16(&mut central, 0); // comment
        put_u16(&mut central, 0); // disk number
        put_u16(&mut central, 0); // internal attributes
        put_u32(&mut central, 0); // external attributes
        put_u32(&mut central, offset);
        central.extend_from_slice(name);
    }
    let count = u16::try_from(entries.len()).map_err(|_| too_large())?;
    let central_offset = fits(out.len()).ok_or_else(too_large)?;
    let central_size = fits(central.len()).ok_or_else(too_large)?;
    out.extend_from_slice(&central);
    put_u32(&mut out, 0x0605_4b50);
    put_u16(&mut out, 0); // this disk
    put_u16(&mut out, 0); // disk with the central directory
    put_u16(&mut out, count);
    put_u16(&mut out, count);
    put_u32(&mut out, central_size);
    put_u32(&mut out, central_offset);
    put_u16(&mut out, 0); // comment length
    if out.len() as u64 >= u64::from(u32::MAX) {
        return Err(too_large());
    }
    Ok(out)
}
