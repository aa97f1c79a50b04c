//! `reconcile bill`: the gateway's daily trade bill against the orders table.
//!
//! Categories, each counted and listed:
//! - paid at the gateway, NEW locally: marked PAID with `apply` (through the decision
//!   table, as if a query had said "paid"), reported otherwise;
//! - paid at the gateway, CLOSED locally: a `paid_after_close` anomaly, then (with
//!   `apply`) the paid-after-close policy: held, or its refund requested (money to refund
//!   or goods to deliver);
//! - PAID locally that day (an order of the bill's channel), absent from the bill: a
//!   `paid_missing_from_bill` anomaly (another channel's orders are in its own bill);
//! - amounts differ: an `amount_mismatch` anomaly;
//! - refund rows, and rows for orders we do not know: reported.
//!
//! Anomalies are findings, not fixes: they are recorded (once per order and kind, each
//! announced once as `order.anomaly.<kind>`) whether or not `apply` is given.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;

use super::Finding;
use crate::bill::{Bill, BillRow, BillRowKind};
use crate::db::anomalies::AnomalyKind;
use crate::db::schema::orders;
use crate::db::{self};
use crate::decide::refund::PolicyEffect;
use crate::decide::{Cause, Decider, Mode, Outcome, Unavailable};
use crate::gateway::TradeState;
use crate::money::format_minor;
use crate::order::{Order, OrderStatus};

/// One finding about one order.
#[derive(Debug, Clone, Serialize)]
pub struct BillLine {
    /// Merchant order number.
    pub out_trade_no: String,
    /// Line in the bill's detail file, when the finding comes from a row.
    pub line: Option<usize>,
    /// The gateway's trade number.
    pub trade_no: Option<String>,
    /// What the bill says (minor units).
    pub gateway_amount_minor: Option<i64>,
    /// What the order says (minor units).
    pub local_amount_minor: Option<i64>,
    /// The order's status before this run.
    pub local_status: Option<String>,
    /// What was done or would be done.
    pub action: String,
}

/// The result of a bill reconciliation.
#[derive(Debug, Clone, Serialize)]
pub struct BillReport {
    /// The bill's day (China time).
    pub date: NaiveDate,
    /// The detail file the rows came from.
    pub file: String,
    /// Whether NEW orders paid at the gateway were marked PAID.
    pub applied: bool,
    /// Payment rows in the bill.
    pub payments: usize,
    /// Refund rows in the bill.
    pub refunds: usize,
    /// Payments that agree with a PAID order.
    pub matched: usize,
    /// Paid at the gateway, NEW locally.
    pub paid_but_new: Vec<BillLine>,
    /// Paid at the gateway, CLOSED locally.
    pub paid_after_close: Vec<BillLine>,
    /// PAID locally that day, absent from the bill.
    pub paid_missing_from_bill: Vec<BillLine>,
    /// Amounts differ.
    pub amount_mismatch: Vec<BillLine>,
    /// Refund rows.
    pub refund_rows: Vec<BillLine>,
    /// Bill rows naming an order we do not have.
    pub unknown_orders: Vec<BillLine>,
    /// What cron should conclude.
    pub finding: Finding,
}

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

/// Diffs `bill` (the trade bill of `date`) against the database.
pub async fn reconcile(
    decider: &Decider,
    channel: &str,
    bill: &Bill,
    date: NaiveDate,
    apply: bool,
) -> Result<BillReport, Unavailable> {
    let mut report = BillReport {
        date,
        file: bill.file.clone(),
        applied: apply,
        payments: 0,
        refunds: 0,
        matched: 0,
        paid_but_new: Vec::new(),
        paid_after_close: Vec::new(),
        paid_missing_from_bill: Vec::new(),
        amount_mismatch: Vec::new(),
        refund_rows: Vec::new(),
        unknown_orders: Vec::new(),
        finding: Finding::Clean,
    };
    let numbers: BTreeSet<&str> = bill.rows.iter().map(|r| r.out_trade_no.as_str()).collect();
    let known = load_orders(decider, &numbers).await?;
    let mut paid_in_bill = BTreeSet::new();

    for row in &bill.rows {
        // An order of another channel is not this gateway's: its row is reported as
        // unknown, never acted on.
        let order = known
            .get(&row.out_trade_no)
            .filter(|o| o.channel == channel);
        match row.kind {
            BillRowKind::Refund => {
                report.refunds += 1;
                report.refund_rows.push(line(
                    row,
                    order,
                    format!("refund {}", row.refund_no.as_deref().unwrap_or("-")),
                ));
                continue;
            }
            BillRowKind::Payment => report.payments += 1,
        }
        paid_in_bill.insert(row.out_trade_no.as_str());
        let Some(order) = order else {
            report
                .unknown_orders
                .push(line(row, None, "no such order".into()));
            continue;
        };
        let mismatch = row.amount_minor != order.amount_minor;
        match order.status() {
            OrderStatus::New => {
                let evidence = TradeState::Paid {
                    trade_no: row.trade_no.clone(),
                    amount_minor: row.amount_minor,
                    paid_at: row.finished_at,
                };
                let source = format!(
                    "bill {} line {}: paid {}",
                    bill.file,
                    row.line,
                    format_minor(row.amount_minor)
                );
                let mode = if apply { Mode::Apply } else { Mode::DryRun };
                let action = match decider
                    .apply_evidence(order, &evidence, &source, Cause::Bill, mode)
                    .await?
                {
                    Outcome::Decided { .. } => "marked PAID".to_owned(),
                    Outcome::LostRace(status) => format!("settled meanwhile as {status}"),
                    Outcome::WouldDo(_) => "would mark PAID (run with --apply)".to_owned(),
                    other => format!("{other:?}"),
                };
                report.paid_but_new.push(line(row, Some(order), action));
                if mismatch {
                    report.amount_mismatch.push(line(
                        row,
                        Some(order),
                        if apply {
                            "anomaly recorded with the payment".into()
                        } else {
                            "reported".into()
                        },
                    ));
                }
            }
            OrderStatus::Closed => {
                let detail = format!(
                    "the bill {} (line {}) shows trade {} paid {} on an order we closed",
                    bill.file,
                    row.line,
                    row.trade_no,
                    format_minor(row.amount_minor)
                );
                // The policy (hold or refund) acts only with `apply`; the anomaly is
                // recorded either way.
                let mode = if apply { Mode::Apply } else { Mode::DryRun };
                let after = decider
                    .paid_after_close(order, row.amount_minor, Some(&row.trade_no), &detail, mode)
                    .await?;
                let recorded = recorded(after.new_anomaly, AnomalyKind::PaidAfterClose);
                let action = match after.policy {
                    PolicyEffect::Nothing => recorded,
                    PolicyEffect::RefundRequested => format!("{recorded}; refund requested"),
                    PolicyEffect::WouldRequestRefund => {
                        format!("{recorded}; would request its refund (run with --apply)")
                    }
                };
                report.paid_after_close.push(line(row, Some(order), action));
            }
            OrderStatus::Paid if mismatch => {
                let detail = format!(
                    "the bill {} (line {}) shows {} paid, the order says {}",
                    bill.file,
                    row.line,
                    format_minor(row.amount_minor),
                    format_minor(order.amount_minor)
                );
                let new = decider
                    .record_anomaly(order, AnomalyKind::AmountMismatch, &detail)
                    .await?;
                report.amount_mismatch.push(line(
                    row,
                    Some(order),
                    recorded(new, AnomalyKind::AmountMismatch),
                ));
            }
            OrderStatus::Paid => report.matched += 1,
        }
    }

    // Orders we say were paid that day, of which the gateway knows nothing.
    let (start, end) = gateway_day(date, bill.offset);
    let paid_that_day: Vec<Order> = {
        let mut conn = db::conn(decider.pool()).await?;
        orders::table
            .filter(orders::status.eq(OrderStatus::Paid.as_str()))
            .filter(orders::channel.eq(channel))
            .filter(orders::paid_at.ge(start))
            .filter(orders::paid_at.lt(end))
            .select(Order::as_select())
            .load(&mut conn)
            .await?
    };
    for order in paid_that_day {
        if paid_in_bill.contains(order.out_trade_no.as_str()) {
            continue;
        }
        let detail = format!(
            "PAID locally on {date} (trade {}) but absent from the bill {}",
            order.gateway_trade_no.as_deref().unwrap_or("-"),
            bill.file
        );
        let new = decider
            .record_anomaly(&order, AnomalyKind::PaidMissingFromBill, &detail)
            .await?;
        report.paid_missing_from_bill.push(BillLine {
            out_trade_no: order.out_trade_no.clone(),
            line: None,
            trade_no: order.gateway_trade_no.clone(),
            gateway_amount_minor: None,
            local_amount_minor: Some(order.amount_minor),
            local_status: Some(order.status().to_string()),
            action: recorded(new, AnomalyKind::PaidMissingFromBill),
        });
    }

    report.finding = if !report.paid_after_close.is_empty()
        || !report.paid_missing_from_bill.is_empty()
        || !report.amount_mismatch.is_empty()
        || !report.unknown_orders.is_empty()
    {
        Finding::NeedsAttention
    } else if !report.paid_but_new.is_empty() {
        Finding::Fixed
    } else {
        Finding::Clean
    };
    Ok(report)
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
        action,
    }
}

async fn load_orders(
    decider: &Decider,
    numbers: &BTreeSet<&str>,
) -> Result<BTreeMap<String, Order>, Unavailable> {
    let mut conn = db::conn(decider.pool()).await?;
    let mut found = BTreeMap::new();
    let numbers: Vec<&str> = numbers.iter().copied().collect();
    for chunk in numbers.chunks(1000) {
        let rows: Vec<Order> = orders::table
            .filter(orders::out_trade_no.eq_any(chunk))
            .select(Order::as_select())
            .load(&mut conn)
            .await?;
        found.extend(rows.into_iter().map(|o| (o.out_trade_no.clone(), o)));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::china;

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
