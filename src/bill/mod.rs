//! Alipay's daily trade bill, as data: reading the downloaded zip ([`parse_zip`]) and its
//! detail CSV ([`parse_detail`]), and writing one in the real format ([`build_zip`], used
//! by the simulator and by tests, with [`zip_with_detail`] for hand-made detail files).
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
//! rows. Every [`BillError`] names the file, and the line and column when there is one,
//! so that an operator can open the file at the right place.

pub mod build;
pub mod parse;

pub use build::{
    BILL_COLUMNS, build_zip, detail_csv, detail_file_name, summary_file_name, zip_with_detail,
};
pub use parse::{MAX_DETAIL_BYTES, REQUIRED_COLUMNS, parse_detail, parse_zip};

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use thiserror::Error;

/// What a bill row records (the `业务类型` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BillRowKind {
    /// `交易`: a payment.
    Payment,
    /// `退款`: a refund (amounts negative).
    Refund,
}

impl BillRowKind {
    /// The bill's spelling: `交易` or `退款`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "交易",
            Self::Refund => "退款",
        }
    }
}

/// One data row of the detail file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRow {
    /// 1-based line number in the detail file.
    pub line: usize,
    /// `支付宝交易号`: Alipay's trade number.
    pub trade_no: String,
    /// `商户订单号`: our order number (may be empty for payments not made through the API).
    pub out_trade_no: String,
    /// `业务类型`: payment or refund.
    pub kind: BillRowKind,
    /// `商品名称`.
    pub subject: String,
    /// `创建时间` (the file says China time, UTC+8); `None` when empty.
    pub created_at: Option<DateTime<Utc>>,
    /// `完成时间` (China time in the file); `None` when empty.
    pub finished_at: Option<DateTime<Utc>>,
    /// `订单金额（元）` in minor units; negative on refunds.
    pub amount_minor: i64,
    /// `商家实收（元）` in minor units; negative on refunds.
    pub received_minor: i64,
    /// `退款批次号/请求号`; `None` when empty (payments).
    pub refund_no: Option<String>,
}

/// A parsed bill: the detail file's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    /// The detail file's name inside the archive (decoded from GBK).
    pub file: String,
    /// The period the bill says it covers (its `#起始日期：[...] 终止日期：[...]` line),
    /// China time; None when the file has no such line.
    pub period: Option<(NaiveDateTime, NaiveDateTime)>,
    /// The data rows, in file order.
    pub rows: Vec<BillRow>,
}

impl Bill {
    /// Checks that the bill is the one for `date`: its own period is that whole day.
    pub fn check_day(&self, date: NaiveDate) -> Result<(), BillError> {
        let wrong = |reason: String| {
            Err(BillError::WrongDay {
                file: self.file.clone(),
                date,
                reason,
            })
        };
        let Some((start, end)) = self.period else {
            return wrong("it has no 起始日期/终止日期 line saying which day it covers".into());
        };
        let day_start = date.and_time(NaiveTime::MIN);
        let next = date.succ_opt().map(|d| d.and_time(NaiveTime::MIN));
        if start != day_start || Some(end) != next {
            return wrong(format!("it covers {start} to {end}"));
        }
        Ok(())
    }
}

/// Why a bill could not be read or written. The message always names the file (the
/// archive for archive-level problems, the detail file otherwise), and the line and
/// column where there is one.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BillError {
    /// The bill is not the one for the requested day.
    #[error("{file} is not the bill of {date}: {reason}")]
    WrongDay {
        /// The detail file.
        file: String,
        /// The day asked for.
        date: NaiveDate,
        /// What the bill says instead.
        reason: String,
    },
    /// The bytes are not a readable zip archive.
    #[error("{file}: not a zip archive: {reason}")]
    NotZip {
        /// The archive's name (as given by the caller).
        file: String,
        /// What the zip reader said.
        reason: String,
    },
    /// An entry of the archive could not be read (unsupported compression, corrupt data,
    /// encryption...).
    #[error("{file}: cannot read entry {entry}: {reason}")]
    Entry {
        /// The archive's name.
        file: String,
        /// The entry's (decoded) name, or its index when it has none.
        entry: String,
        /// What the zip reader said.
        reason: String,
    },
    /// No entry's name ends in `业务明细.csv`.
    #[error("{file}: no detail file (…业务明细.csv) in the archive (entries: {entries})")]
    NoDetailFile {
        /// The archive's name.
        file: String,
        /// The entries found, comma-separated (for the operator).
        entries: String,
    },
    /// More than one entry looks like the detail file: which one to trust is unclear.
    #[error("{file}: more than one detail file (…业务明细.csv) in the archive: {entries}")]
    AmbiguousDetailFile {
        /// The archive's name.
        file: String,
        /// The candidates, comma-separated.
        entries: String,
    },
    /// A file is larger than the reader accepts (or the writer can store).
    #[error("{file}: larger than {limit} bytes")]
    TooLarge {
        /// The file concerned.
        file: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A line of the detail file is not valid GBK.
    #[error("{file}: line {line} is not valid GBK")]
    NotGbk {
        /// The detail file's name.
        file: String,
        /// 1-based line number.
        line: usize,
    },
    /// The detail file has no header row (empty, only comments, or only markers).
    #[error("{file}: no header row")]
    NoHeader {
        /// The detail file's name.
        file: String,
    },
    /// The header row lacks a column this reader needs.
    #[error("{file}: header (line {line}) has no column {column}")]
    MissingColumn {
        /// The detail file's name.
        file: String,
        /// The header's 1-based line number.
        line: usize,
        /// The missing column's name.
        column: String,
    },
    /// A data row has not as many cells as the header (a missing cell, or an unquoted
    /// comma shifting the columns).
    #[error("{file} line {line}: {found} cells, but the header has {expected}")]
    CellCount {
        /// The detail file's name.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Cells found on the line.
        found: usize,
        /// Columns in the header.
        expected: usize,
    },
    /// A cell holds something unreadable for its column.
    #[error("{file} line {line}, column {column}: {problem}")]
    BadCell {
        /// The detail file's name.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The column's header name.
        column: String,
        /// What is wrong, quoting the (shortened) cell.
        problem: String,
    },
}

#[cfg(test)]
mod tests;
