//! `reconcile bill`: the gateway's daily trade bill against the orders table.
//!
//! A bill is read only once checked ([`load`]): it must name our merchant account and
//! state its day (its period line, or rows that all fall on it), else it is refused
//! before the database is touched. Even then it is only a hint, as an unverified
//! notification is: before a row changes an order or records an anomaly, the gateway is
//! asked about the order (the signed query the worker makes), and its answer is what is
//! applied; where it contradicts the bill, the report says what the gateway said.
//!
//! Categories, each counted and listed (see [`BillReport`]):
//! - paid (the gateway says so), NEW locally: marked PAID with `apply` (through the
//!   decision table, with the gateway's answer as evidence), reported otherwise;
//! - paid (the gateway says so), CLOSED locally: a `paid_after_close` anomaly, then (with
//!   `apply`) the paid-after-close policy: held, or its refund requested;
//! - PAID locally that day (an order of the bill's channel), absent from the bill, and
//!   not paid as the gateway says: a `paid_missing_from_bill` anomaly (another channel's
//!   orders are in its own bill);
//! - the paid amount (the gateway's) differs from the order's: an `amount_mismatch`
//!   anomaly;
//! - refund rows, and rows for orders we do not know: reported;
//! - the gateway contradicts the bill, or could not be asked: reported, nothing done.
//!
//! What each row is, and what the gateway's answer calls for, is decided by pure code
//! (`bill_classify.rs`); this file reads the orders, asks the gateway, and records.
//!
//! Anomalies are findings, not fixes: they are recorded (once per order and kind, each
//! announced once as `order.anomaly.<kind>`) whether or not `apply` is given.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::bill_classify::{
    Absence, Known, RowAct, RowClass, absent_from_bill, classify_row, judge_absent, judge_row,
};
pub use super::bill_report::{BillLine, BillReport};
use crate::decide::refund::PolicyEffect;
use crate::decide::{Cause, Decider, Mode, Outcome, Unavailable};
use order_closer_core::db::anomalies::AnomalyKind;
use order_closer_core::db::schema::{orders, trades};
use order_closer_core::db::{self};
use order_closer_core::money::format_minor;
use order_closer_core::order::Order;
use order_closer_core::trade::{Trade, TradeStatus};
use order_closer_gateway::bill::{Bill, BillRow, CheckedBill};
use order_closer_gateway::{BillFetchError, BillSource, QueryAnswer, TradeState};

/// The UTC interval of one calendar day in the gateway's calendar `offset`.
pub fn gateway_day(date: NaiveDate, offset: FixedOffset) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = date
        .and_hms_opt(0, 0, 0)
        .and_then(|t| offset.from_local_datetime(&t).single())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default();
    (start, start + chrono::Duration::days(1))
}

/// Whether the gateway can have a bill for `date` yet: only for days that have ended in
/// its calendar `offset` (the Chinese gateways publish a day's bill the next morning).
/// Returns why not.
pub fn check_billable(
    date: NaiveDate,
    now: DateTime<Utc>,
    offset: FixedOffset,
) -> Result<(), String> {
    let today = now.with_timezone(&offset).date_naive();
    if date >= today {
        return Err(format!(
            "{date} has not ended yet in the gateway's calendar (UTC{offset}; today is \
             {today}): there is no bill for it"
        ));
    }
    Ok(())
}

/// The bill of `date` from `source`: read from `file` (its bytes and its name) when
/// given, else fetched from the gateway; either way checked to be ours and of that day
/// ([`Bill::check`]) before anything reads it. Our account is asked for first, so that
/// a configuration that cannot check a bill fails before the download.
pub async fn load(
    source: &dyn BillSource,
    date: NaiveDate,
    file: Option<(&[u8], &str)>,
) -> Result<CheckedBill, BillFetchError> {
    let ours = source.account()?;
    let bill = match file {
        Some((bytes, name)) => source.read_file(bytes, name)?,
        None => source.daily_bill(date).await?,
    };
    Ok(bill.check(&ours, date)?)
}

/// Diffs `bill` against the orders of `channel`. The bill is a hint, as an unverified
/// notification is: a row that would change an order or record an anomaly (and an order
/// PAID that day that the bill lacks) is first asked about at the gateway (a signed
/// query), and the gateway's answer is what is applied; where it contradicts the bill,
/// the report says what the gateway said.
pub async fn reconcile(
    decider: &Decider,
    channel: &str,
    bill: &CheckedBill,
    apply: bool,
) -> Result<BillReport, Unavailable> {
    let (date, bill) = (bill.date(), bill.bill());
    let mut report = BillReport::new(date, bill.file.clone(), bill.account.clone(), apply);
    let mode = if apply { Mode::Apply } else { Mode::DryRun };
    let numbers: BTreeSet<&str> = bill.rows.iter().map(|r| r.out_trade_no.as_str()).collect();
    let known = load_known(decider, channel, &numbers).await?;

    for row in &bill.rows {
        match classify_row(row, &known, channel) {
            RowClass::Refund(order) => {
                report.refunds += 1;
                report.refund_rows.push(line(
                    row,
                    order.map(|(o, _)| o),
                    format!("refund {}", row.refund_no.as_deref().unwrap_or("-")),
                ));
            }
            RowClass::UnknownOrder => {
                report.payments += 1;
                report
                    .unknown_orders
                    .push(line(row, None, "no such order".into()));
            }
            RowClass::Agrees => {
                report.payments += 1;
                report.matched += 1;
            }
            RowClass::Ask(known) => {
                report.payments += 1;
                settle_row(decider, bill, row, known, mode, &mut report).await?;
            }
        }
    }

    // Orders we say were paid that day, of which the bill knows nothing.
    let (start, end) = gateway_day(date, bill.offset);
    let paid_that_day = load_paid(decider, channel, start, end).await?;
    for known in absent_from_bill(&paid_that_day, &bill.rows) {
        settle_absent(decider, bill, date, known, &mut report).await?;
    }

    report.conclude();
    Ok(report)
}

/// Acts on a payment row that would change `order` or record an anomaly: asks the
/// gateway first, reports where it contradicts the row, and applies its answer (a payment
/// it confirms), never the row.
async fn settle_row(
    decider: &Decider,
    bill: &Bill,
    row: &BillRow,
    known: &Known,
    mode: Mode,
    report: &mut BillReport,
) -> Result<(), Unavailable> {
    let (order, trade) = known;
    // The bill is a hint: ask first.
    let answer = match ask(decider, trade).await {
        Ok(answer) => answer,
        Err(why) => {
            report.unconfirmed.push(line(
                row,
                Some(order),
                format!("the gateway could not be asked ({why}): nothing done"),
            ));
            return Ok(());
        }
    };
    let said = said(&answer.state);
    let judged = judge_row(row, known, &answer.state);
    if judged.contradicts {
        report.disagreements.push(BillLine {
            gateway_said: Some(said.clone()),
            ..line(
                row,
                Some(order),
                format!(
                    "the bill says trade {} paid {}; nothing is done on the bill's word",
                    row.trade_no,
                    format_minor(row.amount_minor)
                ),
            )
        });
    }
    let asked = |action: String| BillLine {
        gateway_said: Some(said.clone()),
        ..line(row, Some(order), action)
    };
    match judged.act {
        // Not paid as the gateway says, or it agrees with the order and not with the
        // bill: the disagreement above is the finding.
        RowAct::Nothing => {}
        RowAct::MarkPaid { amount_differs } => {
            let evidence = format!(
                "query: {}\n(asked because the bill {} line {} shows the order paid)",
                answer.raw, bill.file, row.line
            );
            let action = match decider
                .apply_evidence(order, trade, &answer.state, &evidence, Cause::Bill, mode)
                .await?
            {
                Outcome::Decided { .. } => "marked PAID".to_owned(),
                Outcome::LostRace(status) => format!("settled meanwhile as {status}"),
                Outcome::WouldDo(_) => "would mark PAID (run with --apply)".to_owned(),
                other => format!("{other:?}"),
            };
            report.paid_but_new.push(asked(action));
            if amount_differs {
                report.amount_mismatch.push(asked(if mode == Mode::Apply {
                    "anomaly recorded with the payment".into()
                } else {
                    "reported".into()
                }));
            }
        }
        RowAct::PaidAfterClose {
            trade_no,
            paid_minor,
        } => {
            let detail = format!(
                "the gateway says trade {trade_no} paid {} on an order we closed (asked \
                 because of the bill {} line {})",
                format_minor(paid_minor),
                bill.file,
                row.line
            );
            // The policy (hold or refund) acts only with `apply`; the anomaly is
            // recorded either way.
            let after = decider
                .paid_after_close(order, trade, paid_minor, Some(trade_no), &detail, mode)
                .await?;
            let recorded = recorded(after.new_anomaly, AnomalyKind::PaidAfterClose);
            let action = match after.policy {
                PolicyEffect::Nothing => recorded,
                PolicyEffect::RefundRequested => format!("{recorded}; refund requested"),
                PolicyEffect::WouldRequestRefund => {
                    format!("{recorded}; would request its refund (run with --apply)")
                }
            };
            report.paid_after_close.push(asked(action));
        }
        RowAct::AmountMismatch { paid_minor } => {
            let detail = format!(
                "the gateway says {} paid, the order says {} (asked because the bill {} \
                 line {} shows {})",
                format_minor(paid_minor),
                format_minor(order.amount_minor),
                bill.file,
                row.line,
                format_minor(row.amount_minor)
            );
            let new = decider
                .record_anomaly(order, Some(trade), AnomalyKind::AmountMismatch, &detail)
                .await?;
            report
                .amount_mismatch
                .push(asked(recorded(new, AnomalyKind::AmountMismatch)));
        }
    }
    Ok(())
}

/// Acts on `order`, PAID locally on the bill's day but absent from it: asks the gateway,
/// and records a `paid_missing_from_bill` anomaly only when it does not say the trade is
/// paid.
async fn settle_absent(
    decider: &Decider,
    bill: &Bill,
    date: NaiveDate,
    known: &Known,
    report: &mut BillReport,
) -> Result<(), Unavailable> {
    let (order, trade) = known;
    let absent = |action: String, said: Option<String>| BillLine {
        out_trade_no: trade.out_trade_no.clone(),
        line: None,
        trade_no: trade.gateway_trade_no.clone(),
        gateway_amount_minor: None,
        local_amount_minor: Some(order.amount_minor),
        local_status: Some(order.status().to_string()),
        gateway_said: said,
        action,
    };
    let answer = match ask(decider, trade).await {
        Ok(answer) => answer,
        Err(why) => {
            report.unconfirmed.push(absent(
                format!(
                    "absent from the bill; the gateway could not be asked ({why}): \
                     nothing recorded"
                ),
                None,
            ));
            return Ok(());
        }
    };
    let said = said(&answer.state);
    if judge_absent(&answer.state) == Absence::PaidAtGateway {
        report.disagreements.push(absent(
            "absent from the bill, but paid as the gateway says: no anomaly".into(),
            Some(said),
        ));
        return Ok(());
    }
    let detail = format!(
        "PAID locally on {date} (trade {}) but absent from the bill {}, and the gateway \
         says {said}",
        trade.gateway_trade_no.as_deref().unwrap_or("-"),
        bill.file
    );
    let new = decider
        .record_anomaly(
            order,
            Some(trade),
            AnomalyKind::PaidMissingFromBill,
            &detail,
        )
        .await?;
    report.paid_missing_from_bill.push(absent(
        recorded(new, AnomalyKind::PaidMissingFromBill),
        Some(said),
    ));
    Ok(())
}

/// Asks a trade's gateway about it (a signed query, timed and counted like the worker's);
/// the error says why there is no answer.
async fn ask(decider: &Decider, trade: &Trade) -> Result<QueryAnswer, String> {
    match decider.query_gateway(trade).await {
        Some(Ok(answer)) => Ok(answer),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("no gateway serves channel {:?}", trade.channel)),
    }
}

/// What the gateway said, in words.
fn said(state: &TradeState) -> String {
    match state {
        TradeState::Paid {
            trade_no,
            amount_minor,
            paid_at,
        } => format!(
            "trade {trade_no} paid {}{}",
            format_minor(*amount_minor),
            paid_at.map_or(String::new(), |at| format!(" at {}", at.to_rfc3339()))
        ),
        TradeState::Refunded {
            trade_no,
            amount_minor,
            ..
        } => format!(
            "trade {trade_no} was paid {} and the payment given back since",
            format_minor(*amount_minor)
        ),
        TradeState::WaitingForPayment => "the trade waits for payment (unpaid)".into(),
        TradeState::Closed => "the trade is closed, unpaid".into(),
        TradeState::NotFound => "there is no such trade".into(),
        TradeState::InProgress => "the buyer is paying right now (unpaid so far)".into(),
    }
}

fn recorded(new: bool, kind: AnomalyKind) -> String {
    if new {
        format!("{kind} anomaly recorded and announced")
    } else {
        format!("{kind} anomaly (already recorded)")
    }
}

fn line(row: &BillRow, order: Option<&Order>, action: String) -> BillLine {
    BillLine {
        out_trade_no: row.out_trade_no.clone(),
        line: Some(row.line),
        trade_no: Some(row.trade_no.clone()),
        gateway_amount_minor: Some(row.amount_minor),
        local_amount_minor: order.map(|o| o.amount_minor),
        local_status: order.map(|o| o.status().to_string()),
        gateway_said: None,
        action,
    }
}

/// The trades of `channel` paid within `[start, end)`, with their orders.
async fn load_paid(
    decider: &Decider,
    channel: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<Known>, Unavailable> {
    let mut conn = db::conn(decider.pool()).await?;
    Ok(trades::table
        .inner_join(orders::table)
        .filter(trades::status.eq(TradeStatus::Paid.as_str()))
        .filter(trades::channel.eq(channel))
        .filter(trades::paid_at.ge(start))
        .filter(trades::paid_at.lt(end))
        .select((Order::as_select(), Trade::as_select()))
        .load(&mut conn)
        .await?)
}

/// The trades of `channel` the bill's rows name, by merchant trade number, with their
/// orders.
async fn load_known(
    decider: &Decider,
    channel: &str,
    numbers: &BTreeSet<&str>,
) -> Result<BTreeMap<String, Known>, Unavailable> {
    let mut conn = db::conn(decider.pool()).await?;
    let mut found = BTreeMap::new();
    let numbers: Vec<&str> = numbers.iter().copied().collect();
    for chunk in numbers.chunks(1000) {
        let rows: Vec<Known> = trades::table
            .inner_join(orders::table)
            .filter(trades::channel.eq(channel))
            .filter(trades::out_trade_no.eq_any(chunk))
            .select((Order::as_select(), Trade::as_select()))
            .load(&mut conn)
            .await?;
        found.extend(rows.into_iter().map(|k| (k.1.out_trade_no.clone(), k)));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_closer_core::time::china;

    #[test]
    fn a_china_day_starts_at_16_utc_the_day_before() {
        let (start, end) = gateway_day(NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(), china());
        assert_eq!(start.to_rfc3339(), "2026-11-20T16:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2026-11-21T16:00:00+00:00");
    }

    #[test]
    fn only_days_that_have_ended_in_china_have_a_bill() {
        // 2026-12-02 03:00 UTC is 11:00 in China.
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).unwrap();
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(check_billable(day("2026-12-01"), now, china()), Ok(()));
        assert!(check_billable(day("2026-12-02"), now, china()).is_err());
        assert!(check_billable(day("9999-12-31"), now, china()).is_err());
        // 2026-12-01 17:00 UTC is already 2026-12-02 in China: the 1st has ended.
        let evening = Utc.with_ymd_and_hms(2026, 12, 1, 17, 0, 0).unwrap();
        assert_eq!(check_billable(day("2026-12-01"), evening, china()), Ok(()));
    }
}
