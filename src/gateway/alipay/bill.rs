//! Alipay's daily trade bill: reading the downloaded zip ([`parse_zip`]) and its detail
//! CSV ([`parse_detail`]) into a [`Bill`]. Nothing here panics, whatever the input.
//!
//! The bill for a day (`alipay.data.dataservice.bill.downloadurl.query`, then a plain
//! download) is a zip holding two GBK-encoded CSV files whose names are GBK too:
//! `{account}_{yyyymmdd}_业务明细.csv`, one row per payment or refund, and
//! `{account}_{yyyymmdd}_业务明细(汇总).csv`, a summary (skipped here). In the detail
//! file, lines starting with `#` are comments; a dashed `#---…业务明细列表…---` line
//! precedes the header row, data rows follow until the `#---…业务明细列表结束…---` line,
//! and the totals and export time come last as comments. Text cells carry a trailing
//! TAB, so every cell is trimmed. Columns are found by header name, never by position.
//!
//! Times in the file are China time (UTC+8) and become [`chrono::DateTime<Utc>`]; amounts
//! are yuan with two decimals and become integer minor units (fen), negative on refund
//! rows. Every [`BillError`] names the file, and the line and column when there is one.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use chrono::NaiveDateTime;
use encoding_rs::GBK;
use zip::ZipArchive;

use super::parse_china_time;
use crate::bill::{Bill, BillError, BillRow, BillRowKind};
use crate::money::parse_minor;

/// Largest detail file read (uncompressed); a larger one is [`BillError::TooLarge`]. Also
/// a guard against zip bombs.
pub const MAX_DETAIL_BYTES: u64 = 256 * 1024 * 1024;

/// The suffix of the detail entry's name (the summary, `业务明细(汇总).csv`, does not end
/// with it).
const DETAIL_SUFFIX: &str = "业务明细.csv";

/// The general-purpose flag bit saying an entry's name is UTF-8 (APPNOTE 4.4.4, bit 11).
const UTF8_NAME_FLAG: u16 = 0x0800;

/// Longest cell text quoted in an error message.
const MAX_ECHO_CHARS: usize = 40;

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
/// exactly one detail entry, [`BillError::Encoding`] naming the first undecodable line, and
/// whatever [`parse_detail`] finds wrong.
pub fn parse_zip(bytes: &[u8], source: &str) -> Result<Bill, BillError> {
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
        let name = decode_name(entry.name_raw(), utf8);
        if !entry.is_dir() && name.ends_with(DETAIL_SUFFIX) {
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
    Ok(Bill {
        period: parse_period(&text),
        offset: crate::time::china(),
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
/// quote). Amounts are read with [`parse_minor`], times as `yyyy-MM-dd HH:mm:ss` China
/// time (an empty time is `None`), `业务类型` must be `交易` or `退款`, and `支付宝交易号`
/// must not be empty.
pub fn parse_detail(text: &str, file: &str) -> Result<Vec<BillRow>, BillError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
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
    let header = Header::read(lines[header_at], header_at + 1, file)?;

    let mut rows = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(header_at + 1) {
        if is_end_marker(line) {
            break;
        }
        if is_comment(line) || is_start_marker(line) || line.trim().is_empty() {
            continue;
        }
        rows.push(header.row(line, i + 1, file)?);
    }
    Ok(rows)
}

/// The period a detail file says it covers, from its comment line
/// `#起始日期：[2026年11月21日 00:00:00]   终止日期：[2026年11月22日 00:00:00]` (China time).
pub fn parse_period(text: &str) -> Option<(NaiveDateTime, NaiveDateTime)> {
    let line = text
        .lines()
        .take_while(|l| !is_start_marker(l))
        .find(|l| is_comment(l) && l.contains("起始日期"))?;
    let bracketed = |after: &str| -> Option<NaiveDateTime> {
        let rest = &line[line.find(after)? + after.len()..];
        let inside = &rest[rest.find('[')? + 1..rest.find(']')?];
        NaiveDateTime::parse_from_str(inside.trim(), "%Y年%m月%d日 %H:%M:%S").ok()
    };
    Some((bracketed("起始日期")?, bracketed("终止日期")?))
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

/// The header row: where each required column is.
struct Header {
    /// Number of cells in the header.
    width: usize,
    /// Column index by (normalized) name; the first occurrence wins.
    index: HashMap<String, usize>,
}

/// A header name as compared: trimmed, half-width parentheses made full-width.
fn normalize_column(name: &str) -> String {
    name.trim()
        .trim_start_matches('\u{feff}')
        .replace('(', "（")
        .replace(')', "）")
}

impl Header {
    fn read(line: &str, line_no: usize, file: &str) -> Result<Self, BillError> {
        let cells = split_cells(line);
        let mut index = HashMap::new();
        for (i, cell) in cells.iter().enumerate() {
            index.entry(normalize_column(cell)).or_insert(i);
        }
        if let Some(missing) = REQUIRED_COLUMNS.iter().find(|c| !index.contains_key(**c)) {
            return Err(BillError::MissingColumn {
                file: file.to_owned(),
                line: line_no,
                column: (*missing).to_owned(),
            });
        }
        Ok(Self {
            width: cells.len(),
            index,
        })
    }

    fn row(&self, line: &str, line_no: usize, file: &str) -> Result<BillRow, BillError> {
        let cells = split_cells(line);
        if cells.len() != self.width {
            return Err(BillError::CellCount {
                file: file.to_owned(),
                line: line_no,
                found: cells.len(),
                expected: self.width,
            });
        }
        let cell = |column: &str| -> &str {
            self.index
                .get(column)
                .and_then(|i| cells.get(*i))
                .map_or("", |c| c.trim())
        };
        let bad = |column: &str, problem: String| BillError::BadCell {
            file: file.to_owned(),
            line: line_no,
            column: column.to_owned(),
            problem,
        };
        let amount = |column: &str| {
            let text = cell(column);
            parse_minor(text).map_err(|_| bad(column, format!("{:?} is not an amount", echo(text))))
        };
        let time = |column: &str| {
            let text = cell(column);
            if text.is_empty() {
                return Ok(None);
            }
            parse_china_time(text).map(Some).ok_or_else(|| {
                bad(
                    column,
                    format!("{:?} is not a time (yyyy-MM-dd HH:mm:ss)", echo(text)),
                )
            })
        };

        let trade_no = cell(COL_TRADE_NO);
        if trade_no.is_empty() {
            return Err(bad(COL_TRADE_NO, "is empty".to_owned()));
        }
        let kind = match cell(COL_KIND) {
            "交易" => BillRowKind::Payment,
            "退款" => BillRowKind::Refund,
            other => {
                return Err(bad(
                    COL_KIND,
                    format!("{:?} is neither 交易 nor 退款", echo(other)),
                ));
            }
        };
        let refund_no = cell(COL_REFUND_NO);
        Ok(BillRow {
            line: line_no,
            trade_no: trade_no.to_owned(),
            out_trade_no: cell(COL_OUT_TRADE_NO).to_owned(),
            kind,
            subject: cell(COL_SUBJECT).to_owned(),
            created_at: time(COL_CREATED)?,
            finished_at: time(COL_FINISHED)?,
            amount_minor: amount(COL_AMOUNT)?,
            received_minor: amount(COL_RECEIVED)?,
            refund_no: (!refund_no.is_empty()).then(|| refund_no.to_owned()),
        })
    }
}

/// Splits a CSV line on commas. A cell starting with `"` runs to the matching quote (`""`
/// inside is a quote), and whatever follows up to the next comma (a TAB) is kept. An
/// unterminated quote takes the rest of the line.
fn split_cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut cell = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        cell.push('"');
                    } else {
                        break;
                    }
                } else {
                    cell.push(c);
                }
            }
        }
        let mut ended = true;
        for c in chars.by_ref() {
            if c == ',' {
                ended = false;
                break;
            }
            cell.push(c);
        }
        cells.push(cell);
        if ended {
            return cells;
        }
    }
}

/// Cell text shortened for an error message.
fn echo(text: &str) -> String {
    if text.chars().count() <= MAX_ECHO_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_ECHO_CHARS).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod split_tests {
    use super::split_cells;

    #[test]
    fn splits_plain_and_quoted_cells() {
        assert_eq!(split_cells(""), vec![""]);
        assert_eq!(split_cells("a\t,b,"), vec!["a\t", "b", ""]);
        assert_eq!(split_cells("\"x,y\"\t,\"a\"\"b\""), vec!["x,y\t", "a\"b"]);
        assert_eq!(split_cells("\"open,end"), vec!["open,end"]);
    }
}

/// The bill's word for a row's kind: `交易` or `退款`.
pub fn kind_word(kind: BillRowKind) -> &'static str {
    match kind {
        BillRowKind::Payment => "交易",
        BillRowKind::Refund => "退款",
    }
}

#[cfg(all(test, feature = "sim"))]
#[path = "bill_tests.rs"]
mod bill_tests;
