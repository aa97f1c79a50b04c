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
    /// The file the rows came from (inside the archive, where there is one), with any
    /// control character escaped ([`order_closer_core::text::printable`]): it is shown to the operator.
    pub file: String,
    /// The gateway's calendar: the bill's day runs from midnight to midnight here.
    pub offset: FixedOffset,
    /// The merchant account the bill names, as the file writes it; None when it names
    /// none (a file without the line or the rows that would say it).
    pub account: Option<String>,
    /// The period the bill says it covers, local to `offset`; None when the file does not
    /// say (then its rows' times tell).
    pub period: Option<(NaiveDateTime, NaiveDateTime)>,
    /// The rows, in file order.
    pub rows: Vec<BillRow>,
}

/// Our merchant account, as a gateway's configuration names it: a bill is read only when
/// it names this account ([`Bill::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Our id, as configured.
    pub id: String,
    /// The variable that configures it, named in errors.
    pub configured_by: &'static str,
    /// How many digits a bill writes after the id (an account code, whatever its
    /// value); 0 when a bill writes the id alone.
    pub code_digits: usize,
}

impl Account {
    /// Whether a bill naming `stated` is ours: `stated` is our id, followed by exactly
    /// [`Account::code_digits`] digits. An empty id matches nothing.
    pub fn is_named_by(&self, stated: &str) -> bool {
        !self.id.is_empty()
            && stated.strip_prefix(self.id.as_str()).is_some_and(|code| {
                code.len() == self.code_digits && code.bytes().all(|b| b.is_ascii_digit())
            })
    }
}

/// A bill checked to be ours and of its day ([`Bill::check`]): the only kind the bill
/// reconciliation reads, so that no path can compare an unchecked file with our orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBill {
    bill: Bill,
    date: NaiveDate,
}

impl CheckedBill {
    /// The bill.
    pub fn bill(&self) -> &Bill {
        &self.bill
    }

    /// The day it was checked to cover.
    pub fn date(&self) -> NaiveDate {
        self.date
    }
}

impl Bill {
    /// Checks that the bill is ours ([`Bill::check_account`]) and the one for `date`
    /// ([`Bill::check_day`]).
    pub fn check(self, ours: &Account, date: NaiveDate) -> Result<CheckedBill, BillError> {
        self.check_account(ours)?;
        self.check_day(date)?;
        Ok(CheckedBill { bill: self, date })
    }

    /// Checks that the bill names our merchant account: a bill that names none, or
    /// another, is refused, naming both (a bill of another merchant would turn its
    /// payments into ours).
    pub fn check_account(&self, ours: &Account) -> Result<(), BillError> {
        match &self.account {
            None => Err(BillError::NoAccount {
                file: self.file.clone(),
            }),
            Some(stated) if ours.is_named_by(stated) => Ok(()),
            Some(stated) => Err(BillError::OtherAccount {
                file: self.file.clone(),
                account: csv::echo(stated),
                ours: ours.id.clone(),
                configured_by: ours.configured_by,
            }),
        }
    }

    /// Takes the gateway's word for an empty bill: the gateway vouched that it is the
    /// bill of `date` for `account` (a signed answer to our request for that day, and the
    /// digest of the file it named), while the file itself cannot say so (a bill that
    /// names its day and merchant only in its rows). A bill with rows is left as it is:
    /// its rows are checked.
    pub fn vouch(&mut self, account: &str, date: NaiveDate) {
        if !self.rows.is_empty() {
            return;
        }
        if self.account.is_none() {
            self.account = Some(account.to_owned());
        }
        if self.period.is_none() {
            let start = date.and_time(NaiveTime::MIN);
            let end = date
                .succ_opt()
                .map_or(start, |d| d.and_time(NaiveTime::MIN));
            self.period = Some((start, end));
        }
    }

    /// Checks that the bill is the one for `date`: its own period is that whole day, or,
    /// for a bill that states none, it has rows and every one of them happened on that
    /// day. A bill that states no period and has no rows (or a row without a time) does
    /// not say its day, and is refused: it would pass for any day and report every
    /// payment of that day as missing.
    pub fn check_day(&self, date: NaiveDate) -> Result<(), BillError> {
        let wrong = |reason: String| {
            Err(BillError::WrongDay {
                file: self.file.clone(),
                date,
                reason,
            })
        };
        let Some((start, end)) = self.period else {
            if self.rows.is_empty() {
                return Err(BillError::NoDay {
                    file: self.file.clone(),
                    date,
                    reason: "it has no period line and no rows".to_owned(),
                });
            }
            for row in &self.rows {
                let Some(at) = row.finished_at else {
                    return Err(BillError::NoDay {
                        file: self.file.clone(),
                        date,
                        reason: format!("it has no period line, and line {} has no time", row.line),
                    });
                };
                let day = at.with_timezone(&self.offset).date_naive();
                if day != date {
                    return wrong(format!("line {} is of {day}", row.line));
                }
            }
            return Ok(());
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
    /// The bill does not say which day it covers.
    #[error(
        "{file} does not say which day it covers, so it cannot be taken as the bill of {date}: {reason}"
    )]
    NoDay {
        /// The detail file.
        file: String,
        /// The day asked for.
        date: NaiveDate,
        /// What is missing.
        reason: String,
    },
    /// A line the gateway's format always has is missing (the period a bill covers).
    #[error("{file}: no {what} line ({expected})")]
    MissingLine {
        /// The detail file.
        file: String,
        /// What the line says.
        what: &'static str,
        /// What it looks like.
        expected: &'static str,
    },
    /// The bill names no merchant account.
    #[error("{file} names no merchant account: whose bill it is cannot be checked")]
    NoAccount {
        /// The detail file.
        file: String,
    },
    /// The bill is another merchant's.
    #[error(
        "{file} is the bill of merchant account {account}, not ours ({ours}, from {configured_by})"
    )]
    OtherAccount {
        /// The detail file.
        file: String,
        /// The account the bill names (escaped, shortened).
        account: String,
        /// Our id.
        ours: String,
        /// The variable configuring our id.
        configured_by: &'static str,
    },
    /// The bill names more than one merchant account.
    #[error("{file} line {line} names merchant account {account}, line {first_line} {first}")]
    MixedAccounts {
        /// The detail file.
        file: String,
        /// The first row's line.
        first_line: usize,
        /// The account it names.
        first: String,
        /// The line naming another.
        line: usize,
        /// The other account.
        account: String,
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
