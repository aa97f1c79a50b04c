//! Alipay's daily trade bill: reading the downloaded zip ([`parse_zip`]) and its detail
//! CSV ([`parse_detail`]) into a [`Bill`]. Nothing here panics, whatever the input.
//!
//! The bill for a day (`alipay.data.dataservice.bill.downloadurl.query`, then a plain
//! download) is a zip holding two GBK-encoded CSV files whose names are GBK too:
//! `{account}_{yyyymmdd}_业务明细.csv`, one row per payment or refund, and
//! `{account}_{yyyymmdd}_业务明细(汇总).csv`, a summary (skipped here). In the detail
//! file, lines starting with `#` are comments (among them the `#账号：[…]` line naming the
//! merchant account and the `#起始日期` period line, both read); a dashed `#---…业务明细列表…---` line
//! precedes the header row, data rows follow until the `#---…业务明细列表结束…---` line,
//! and the totals and export time come last as comments. Text cells carry a trailing
//! TAB, so every cell is trimmed. Columns are found by header name, never by position.
//!
//! Times in the file are China time (UTC+8) and become [`chrono::DateTime<Utc>`]; amounts
//! are yuan with two decimals and become integer minor units (fen), negative on refund
//! rows. Every [`BillError`] names the file, and the line and column when there is one.

use std::io::{Cursor, Read};

use chrono::NaiveDateTime;
use encoding_rs::GBK;
use zip::ZipArchive;

use order_closer_core::time::parse_china_time;
use order_closer_gateway::bill::csv::{self, Dress, Header, echo};
use order_closer_gateway::bill::{Bill, BillError, BillRow, BillRowKind};

/// Largest detail file read (uncompressed); a larger one is [`BillError::TooLarge`]. Also
/// a guard against zip bombs.
pub const MAX_DETAIL_BYTES: u64 = 256 * 1024 * 1024;

/// The suffix of the detail entry's name (the summary, `业务明细(汇总).csv`, does not end
/// with it).
const DETAIL_SUFFIX: &str = "业务明细.csv";

/// The general-purpose flag bit saying an entry's name is UTF-8 (APPNOTE 4.4.4, bit 11).
const UTF8_NAME_FLAG: u16 = 0x0800;

/// The digits of the account code a bill's `#账号：[…]` writes after the partner id
/// (`0156`, the CNY account).
pub const ACCOUNT_CODE_DIGITS: usize = 4;

/// Most entry names listed in an error message.
const MAX_LISTED_ENTRIES: usize = 10;

const COL_TRADE_NO: &str = "支付宝交易号";
const COL_OUT_TRADE_NO: &str = "商户订单号";
const COL_KIND: &str = "业务类型";
const COL_SUBJECT: &str = "商品名称";
const COL_CREATED: &str = "创建时间";
const COL_FINISHED: &str = "完成时间";
const COL_AMOUNT: &str = "订单金额（元）";
const COL_RECEIVED: &str = "商家实收（元）";
const COL_REFUND_NO: &str = "退款批次号/请求号";

/// The columns the reader needs, by header name (their position does not matter). Header
/// names are trimmed, and half-width parentheses count as the full-width ones.
pub const REQUIRED_COLUMNS: [&str; 9] = [
    COL_TRADE_NO,
    COL_OUT_TRADE_NO,
    COL_KIND,
    COL_SUBJECT,
    COL_CREATED,
    COL_FINISHED,
    COL_AMOUNT,
    COL_RECEIVED,
    COL_REFUND_NO,
];

/// Reads a downloaded bill archive: finds the detail entry (the one whose name, decoded
/// from GBK, or from UTF-8 when the entry says so, ends in `业务明细.csv`), decodes it
/// from GBK and parses it with [`parse_detail`]. `source` names the archive in errors
/// (for example `bill.zip` or the download URL's file name).
///
/// Fails with [`BillError::NotArchive`] for anything but a zip archive,
/// [`BillError::NoDetailFile`] / [`BillError::AmbiguousDetailFile`] when there is not
/// exactly one detail entry, [`BillError::Encoding`] naming the first undecodable line,
/// whatever [`parse_detail`] finds wrong, and [`BillError::MissingLine`] when the file
/// has no period line (`#起始日期：[…]   终止日期：[…]`): a bill must say its day. The
/// account line (`#账号：[…]`) is read into [`Bill::account`]; whether it is ours is
/// checked by [`Bill::check`].
pub fn parse_zip(bytes: &[u8], source: &str) -> Result<Bill, BillError> {
    let source = &*order_closer_core::text::printable(source);
    let mut archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| BillError::NotArchive {
        file: source.to_owned(),
        reason: e.to_string(),
    })?;
    let mut names = Vec::with_capacity(archive.len());
    let mut detail: Vec<(usize, String)> = Vec::new();
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(|e| BillError::Entry {
            file: source.to_owned(),
            entry: format!("#{index}"),
            reason: e.to_string(),
        })?;
        let utf8 = entry.flags().as_u16() & UTF8_NAME_FLAG != 0;
        let raw_name = decode_name(entry.name_raw(), utf8);
        // Names are shown to the operator: control characters escaped.
        let name = order_closer_core::text::printable(&raw_name).into_owned();
        if !entry.is_dir() && raw_name.ends_with(DETAIL_SUFFIX) {
            detail.push((index, name.clone()));
        }
        names.push(name);
    }
    let (index, name) = match detail.len() {
        1 => detail.swap_remove(0),
        0 => {
            return Err(BillError::NoDetailFile {
                expected: "…业务明细.csv",
                file: source.to_owned(),
                entries: list_names(&names),
            });
        }
        _ => {
            let found: Vec<String> = detail.into_iter().map(|(_, n)| n).collect();
            return Err(BillError::AmbiguousDetailFile {
                file: source.to_owned(),
                entries: list_names(&found),
            });
        }
    };
    let content = read_entry(&mut archive, index, source, &name)?;
    let text = decode_text(&content, &name)?;
    let rows = parse_detail(&text, &name)?;
    let Some(period) = parse_period(&text) else {
        return Err(BillError::MissingLine {
            file: name,
            what: "period",
            expected: "#起始日期：[yyyy年MM月dd日 HH:mm:ss]   终止日期：[…]",
        });
    };
    Ok(Bill {
        account: parse_account(&text),
        period: Some(period),
        offset: order_closer_core::time::china(),
        file: name,
        rows,
    })
}

/// Reads one entry whole, refusing more than [`MAX_DETAIL_BYTES`].
fn read_entry(
    archive: &mut ZipArchive<Cursor<&[u8]>>,
    index: usize,
    source: &str,
    name: &str,
) -> Result<Vec<u8>, BillError> {
    let entry_error = |reason: String| BillError::Entry {
        file: source.to_owned(),
        entry: name.to_owned(),
        reason,
    };
    let too_large = || BillError::TooLarge {
        file: name.to_owned(),
        limit: MAX_DETAIL_BYTES,
    };
    let entry = archive
        .by_index(index)
        .map_err(|e| entry_error(e.to_string()))?;
    if entry.size() > MAX_DETAIL_BYTES {
        return Err(too_large());
    }
    // The declared size may lie: cap what is read, whatever it says.
    let capacity = usize::try_from(entry.size()).unwrap_or(0).min(1 << 20);
    let mut content = Vec::with_capacity(capacity);
    entry
        .take(MAX_DETAIL_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| entry_error(e.to_string()))?;
    if content.len() as u64 > MAX_DETAIL_BYTES {
        return Err(too_large());
    }
    Ok(content)
}

/// An entry name: UTF-8 when the entry's flag says so (and it is), else GBK, else lossy.
fn decode_name(raw: &[u8], utf8_flag: bool) -> String {
    if utf8_flag && let Ok(name) = std::str::from_utf8(raw) {
        return name.to_owned();
    }
    match GBK.decode_without_bom_handling_and_without_replacement(raw) {
        Some(name) => name.into_owned(),
        None => String::from_utf8_lossy(raw).into_owned(),
    }
}

fn list_names(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let mut listed: Vec<String> = names
        .iter()
        .take(MAX_LISTED_ENTRIES)
        .map(|n| echo(n))
        .collect();
    if names.len() > MAX_LISTED_ENTRIES {
        listed.push(format!("… {} more", names.len() - MAX_LISTED_ENTRIES));
    }
    listed.join(", ")
}

/// Decodes the detail file line by line (so that an error can name the line): GBK, or
/// strict UTF-8 when the file starts with a UTF-8 byte-order mark. A newline byte never
/// occurs inside a GBK character, so splitting on it first is safe.
fn decode_text(bytes: &[u8], file: &str) -> Result<String, BillError> {
    let (utf8, body) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (true, rest),
        None => (false, bytes),
    };
    let mut text = String::with_capacity(body.len() + body.len() / 2);
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let decoded = if utf8 {
            std::str::from_utf8(line)
                .ok()
                .map(std::borrow::Cow::Borrowed)
        } else {
            GBK.decode_without_bom_handling_and_without_replacement(line)
        };
        match decoded {
            Some(s) => text.push_str(&s),
            None => {
                return Err(BillError::Encoding {
                    file: file.to_owned(),
                    line: i + 1,
                    encoding: if utf8 { "UTF-8" } else { "GBK" },
                });
            }
        }
    }
    Ok(text)
}

/// Parses the detail file's text (already decoded). `file` names it in errors.
///
/// Lines starting with `#` are comments. When a dashed start marker
/// (`#-----业务明细列表-----`) is present, the first non-comment line after it is the header;
/// without one, the first non-comment line is. Every column in [`REQUIRED_COLUMNS`] must
/// be in the header (by name, trimmed). Data rows follow until the end marker
/// (`业务明细列表结束`) or the end of the text; blank lines are skipped. Each row must have
/// exactly as many cells as the header (an unquoted comma in a subject would otherwise
/// shift the amounts into the wrong columns unnoticed). Cells are trimmed
/// (text cells carry a trailing TAB); a cell may be double-quoted (`"a,b"`, `""` for a
/// quote). Amounts are read with [`parse_minor`](order_closer_core::money::parse_minor), times as `yyyy-MM-dd HH:mm:ss` China
/// time (an empty time is `None`), `业务类型` must be `交易` or `退款`, and `支付宝交易号`
/// must not be empty.
pub fn parse_detail(text: &str, file: &str) -> Result<Vec<BillRow>, BillError> {
    let lines = csv::lines(text);
    let start = lines
        .iter()
        .position(|l| is_start_marker(l))
        .map_or(0, |i| i + 1);
    let mut header_at = None;
    for (i, line) in lines.iter().enumerate().skip(start) {
        if is_end_marker(line) {
            break;
        }
        if is_comment(line) || is_start_marker(line) || line.trim().is_empty() {
            continue;
        }
        header_at = Some(i);
        break;
    }
    let Some(header_at) = header_at else {
        return Err(BillError::NoHeader {
            file: file.to_owned(),
        });
    };
    let header = Header::read(
        lines[header_at],
        header_at + 1,
        file,
        &REQUIRED_COLUMNS,
        Dress::Plain,
    )?;

    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(header_at + 1) {
        if is_end_marker(line) {
            break;
        }
        if is_comment(line) || is_start_marker(line) || line.trim().is_empty() {
            continue;
        }
        rows.push(read_row(&header, line, i + 1, file)?);
    }
    Ok(rows)
}

/// The merchant account a detail file names, from its comment line `#账号：[…]` before the
/// start marker (the first such line): Alipay writes the merchant's 16-digit partner id
/// (`2088…`) followed by a 4-digit account code (`0156`, the CNY account).
pub fn parse_account(text: &str) -> Option<String> {
    let line = text
        .lines()
        .take_while(|l| !is_start_marker(l))
        .find(|l| is_comment(l) && l.contains("账号"))?;
    bracketed(line, "账号").map(|inside| inside.trim().to_owned())
}

/// The text inside the first `[…]` after `after` on `line`.
fn bracketed<'a>(line: &'a str, after: &str) -> Option<&'a str> {
    let rest = &line[line.find(after)? + after.len()..];
    let open = rest.find('[')? + 1;
    let close = open + rest[open..].find(']')?;
    Some(&rest[open..close])
}

/// The period a detail file says it covers, from its comment line
/// `#起始日期：[2026年11月21日 00:00:00]   终止日期：[2026年11月22日 00:00:00]` (China time).
pub fn parse_period(text: &str) -> Option<(NaiveDateTime, NaiveDateTime)> {
    let line = text
        .lines()
        .take_while(|l| !is_start_marker(l))
        .find(|l| is_comment(l) && l.contains("起始日期"))?;
    let time = |after: &str| -> Option<NaiveDateTime> {
        let inside = bracketed(line, after)?;
        NaiveDateTime::parse_from_str(inside.trim(), "%Y年%m月%d日 %H:%M:%S").ok()
    };
    Some((time("起始日期")?, time("终止日期")?))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

fn is_start_marker(line: &str) -> bool {
    line.contains("业务明细列表") && !line.contains("结束") && line.contains("---")
}

fn is_end_marker(line: &str) -> bool {
    line.contains("业务明细列表结束")
}

/// One data row as a [`BillRow`].
fn read_row(header: &Header, line: &str, line_no: usize, file: &str) -> Result<BillRow, BillError> {
    const TIME: &str = "yyyy-MM-dd HH:mm:ss";
    let row = header.row(line, line_no, file)?;
    let trade_no = row.required(COL_TRADE_NO)?;
    let kind = match row.cell(COL_KIND) {
        "交易" => BillRowKind::Payment,
        "退款" => BillRowKind::Refund,
        other => {
            return Err(row.bad(
                COL_KIND,
                format!("{:?} is neither 交易 nor 退款", echo(other)),
            ));
        }
    };
    let refund_no = row.cell(COL_REFUND_NO);
    Ok(BillRow {
        line: line_no,
        trade_no: trade_no.to_owned(),
        out_trade_no: row.cell(COL_OUT_TRADE_NO).to_owned(),
        kind,
        subject: row.cell(COL_SUBJECT).to_owned(),
        created_at: row.time(COL_CREATED, parse_china_time, TIME)?,
        finished_at: row.time(COL_FINISHED, parse_china_time, TIME)?,
        amount_minor: row.amount(COL_AMOUNT)?,
        received_minor: row.amount(COL_RECEIVED)?,
        refund_no: (!refund_no.is_empty()).then(|| refund_no.to_owned()),
    })
}

/// The bill's word for a row's kind: `交易` or `退款`.
pub fn kind_word(kind: BillRowKind) -> &'static str {
    match kind {
        BillRowKind::Payment => "交易",
        BillRowKind::Refund => "退款",
    }
}

#[cfg(test)]
#[path = "bill_tests.rs"]
mod bill_tests;
