//! A gateway's daily trade bill, as data every gateway's bill reader gives and the bill
//! reconciliation reads: one [`BillRow`] per payment or refund, the day the bill covers,
//! the gateway's calendar, and the errors a reader can meet, each naming the file and,
//! where there is one, the line and column, so that an operator can open the file at the
//! right place. The formats themselves are each gateway's (`gateway/<name>/bill.rs`).

pub mod csv;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use thiserror::Error;

/// What a bill row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BillRowKind {
    /// A payment.
    Payment,
    /// A refund (amounts negative).
    Refund,
}

/// One payment or refund of the bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillRow {
    /// 1-based line number in the file the row came from.
    pub line: usize,
    /// The gateway's trade number.
    pub trade_no: String,
    /// Our order number (may be empty for payments not made through the API).
    pub out_trade_no: String,
    /// Payment or refund.
    pub kind: BillRowKind,
    /// What was bought, as the bill says.
    pub subject: String,
    /// When the trade was created; `None` when the bill does not say.
    pub created_at: Option<DateTime<Utc>>,
    /// When the payment or refund happened; `None` when the bill does not say.
    pub finished_at: Option<DateTime<Utc>>,
    /// The order amount in minor units; negative on refunds.
    pub amount_minor: i64,
    /// What the merchant received in minor units; negative on refunds.
    pub received_minor: i64,
    /// The refund's number; `None` on payments.
    pub refund_no: Option<String>,
}

/// A parsed bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    /// The file the rows came from (inside the archive, where there is one).
    pub file: String,
    /// The gateway's calendar: the bill's day runs from midnight to midnight here.
    pub offset: FixedOffset,
    /// The period the bill says it covers, local to `offset`; None when the file does not
    /// say (then its rows' times tell).
    pub period: Option<(NaiveDateTime, NaiveDateTime)>,
    /// The rows, in file order.
    pub rows: Vec<BillRow>,
}

impl Bill {
    /// Checks that the bill is the one for `date`: its own period is that whole day, or,
    /// for a bill that states none, every row happened on that day.
    pub fn check_day(&self, date: NaiveDate) -> Result<(), BillError> {
        let wrong = |reason: String| {
            Err(BillError::WrongDay {
                file: self.file.clone(),
                date,
                reason,
            })
        };
        let Some((start, end)) = self.period else {
            let outside = self.rows.iter().find(|r| {
                r.finished_at
                    .is_some_and(|at| at.with_timezone(&self.offset).date_naive() != date)
            });
            return match outside {
                Some(row) => wrong(format!(
                    "line {} is of {}",
                    row.line,
                    row.finished_at
                        .map(|at| at.with_timezone(&self.offset).date_naive().to_string())
                        .unwrap_or_default()
                )),
                None => Ok(()),
            };
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
    /// The bytes are not a readable archive (zip, gzip) of the gateway's kind.
    #[error("{file}: not a readable archive: {reason}")]
    NotArchive {
        /// The archive's name (as given by the caller).
        file: String,
        /// What the archive reader said.
        reason: String,
    },
    /// The file is not the one the gateway vouched for: its digest differs.
    #[error("{file}: its {algorithm} digest is {actual}, the gateway said {expected}")]
    Digest {
        /// The file.
        file: String,
        /// The digest's algorithm (`SHA1`).
        algorithm: String,
        /// What the gateway said.
        expected: String,
        /// What the file has.
        actual: String,
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
    /// The archive holds no detail file (for Alipay: no entry ending in `业务明细.csv`).
    #[error("{file}: no detail file ({expected}) in the archive (entries: {entries})")]
    NoDetailFile {
        /// What the detail file's name looks like.
        expected: &'static str,
        /// The archive's name.
        file: String,
        /// The entries found, comma-separated (for the operator).
        entries: String,
    },
    /// More than one entry looks like the detail file: which one to trust is unclear.
    #[error("{file}: more than one detail file in the archive: {entries}")]
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
    /// A line is not valid text in the file's encoding.
    #[error("{file}: line {line} is not valid {encoding}")]
    Encoding {
        /// The file's name.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The encoding the gateway writes (`GBK`, `UTF-8`).
        encoding: &'static str,
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
