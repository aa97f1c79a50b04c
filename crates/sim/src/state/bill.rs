//! The simulator's bill desk: the rows of a gateway's daily bill, computed from the
//! trades, and the download tokens a bill URL carries (valid for a while, for one day
//! only), with the override a test uses to serve any bytes instead.

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use rand::Rng as _;

use super::SimState;
use order_closer_core::time::china;
use order_closer_gateway::bill::{BillRow, BillRowKind};

/// How long a bill download URL stays valid (about 30 s at the real gateways); afterwards
/// the download is refused as each gateway refuses an expired one. Changeable with
/// [`SimState::set_bill_url_ttl`].
pub const DEFAULT_BILL_URL_TTL: Duration = Duration::from_secs(30);

/// Expired bill tokens are forgotten (then answer 404) this long after they expire.
const BILL_TOKEN_MEMORY: Duration = Duration::from_secs(600);

/// What a bill download token leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BillFetch {
    /// No such token (never issued, or forgotten long after it expired).
    Unknown,
    /// The token expired.
    Expired,
    /// Serve the bill of `date`, or the override bytes instead when set.
    Ready {
        /// The bill's day (China time).
        date: NaiveDate,
        /// Bytes to serve instead of the bill (consumed by this download).
        override_body: Option<Vec<u8>>,
    },
}

/// An issued bill download URL.
#[derive(Debug, Clone)]
pub(super) struct BillToken {
    date: NaiveDate,
    expires: Instant,
}

impl SimState {
    /// The bill rows of `channel`'s gateway for a China-time day: one payment row for
    /// every trade paid that day (amount, created and paid times), and one refund row
    /// for every refund made that day (negative amounts, the trade's creation time, the
    /// refund time and number), ordered by completion time. Times are cut to whole
    /// seconds, as bill files write them; `line` is 0.
    pub fn bill_rows(&self, channel: &str, date: NaiveDate) -> Vec<BillRow> {
        let mut rows = Vec::new();
        for trade in self.trades().into_iter().filter(|t| t.channel == channel) {
            let subject = format!("订单 {}", trade.out_trade_no);
            let row =
                |kind, finished: DateTime<Utc>, amount: i64, refund_no: Option<&str>| BillRow {
                    line: 0,
                    trade_no: trade.trade_no.clone(),
                    out_trade_no: trade.out_trade_no.clone(),
                    kind,
                    subject: subject.clone(),
                    created_at: Some(whole_seconds(trade.created_at)),
                    finished_at: Some(whole_seconds(finished)),
                    amount_minor: amount,
                    received_minor: amount,
                    refund_no: refund_no.map(str::to_owned),
                };
            if let Some(paid_at) = trade.paid_at
                && china_date(paid_at) == date
            {
                rows.push(row(BillRowKind::Payment, paid_at, trade.amount_minor, None));
            }
            for refund in &trade.refunds {
                if china_date(refund.refunded_at) == date {
                    rows.push(row(
                        BillRowKind::Refund,
                        refund.refunded_at,
                        refund.amount_minor.saturating_neg(),
                        Some(&refund.refund_no),
                    ));
                }
            }
        }
        rows.sort_by_key(|r| r.finished_at);
        rows
    }

    /// How long bill download URLs issued from now on stay valid (default
    /// [`DEFAULT_BILL_URL_TTL`]); tests shorten it to see an URL expire.
    pub fn set_bill_url_ttl(&self, ttl: Duration) {
        self.lock().bill_ttl = ttl;
    }

    /// Makes the next bill download (of any valid URL) serve `body` instead of the bill;
    /// `None` clears it.
    pub fn set_bill_override(&self, body: Option<Vec<u8>>) {
        self.lock().bill_override = body;
    }

    /// Issues a download token for the bill of `date`, valid for the current TTL; forgets
    /// tokens long expired.
    pub(crate) fn issue_bill_token(&self, date: NaiveDate) -> String {
        let now = Instant::now();
        let token: String = {
            let mut rng = rand::rng();
            (0..32)
                .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
                .collect()
        };
        let mut inner = self.lock();
        inner
            .bill_tokens
            .retain(|_, t| t.expires + BILL_TOKEN_MEMORY > now);
        let expires = now + inner.bill_ttl;
        inner
            .bill_tokens
            .insert(token.clone(), BillToken { date, expires });
        token
    }

    /// Looks a download token up; a valid one counts a download and takes the override.
    pub(crate) fn fetch_bill(&self, token: &str) -> BillFetch {
        let mut inner = self.lock();
        let Some(found) = inner.bill_tokens.get(token).cloned() else {
            return BillFetch::Unknown;
        };
        if Instant::now() >= found.expires {
            return BillFetch::Expired;
        }
        inner.stats.bill_downloads += 1;
        BillFetch::Ready {
            date: found.date,
            override_body: inner.bill_override.take(),
        }
    }
}

/// The China-time calendar day of an instant.
pub(crate) fn china_date(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&china()).date_naive()
}

/// The instant without its fraction of a second.
pub(super) fn whole_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(0).unwrap_or(at)
}
