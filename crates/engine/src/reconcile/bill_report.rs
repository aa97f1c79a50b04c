//! What `reconcile bill` found: one [`BillLine`] per finding, grouped by category in a
//! [`BillReport`], and the report as text for a terminal. Every piece of text that came
//! from the bill or the gateway (order and trade numbers, file names, what the gateway
//! said) is escaped where it is printed ([`printable`]), so that a cell holding escape
//! codes, NUL or backspace cannot drive the operator's terminal; the JSON form escapes
//! them itself.

use std::fmt::Write as _;

use chrono::NaiveDate;
use serde::Serialize;

use super::Finding;
use order_closer_core::money::format_minor;
use order_closer_core::text::printable;

/// One finding about one order.
#[derive(Debug, Clone, Serialize)]
pub struct BillLine {
    /// Merchant order number.
    pub out_trade_no: String,
    /// Line in the bill's detail file, when the finding comes from a row.
    pub line: Option<usize>,
    /// The gateway's trade number, as the bill (or, for an order absent from the bill,
    /// the order) says.
    pub trade_no: Option<String>,
    /// What the bill says (minor units).
    pub gateway_amount_minor: Option<i64>,
    /// What the order says (minor units).
    pub local_amount_minor: Option<i64>,
    /// The order's status before this run.
    pub local_status: Option<String>,
    /// What the gateway said when asked about the order (the bill is only a hint: every
    /// row that would change an order or record an anomaly is asked about first).
    pub gateway_said: Option<String>,
    /// What was done or would be done.
    pub action: String,
}

/// The result of a bill reconciliation.
#[derive(Debug, Clone, Serialize)]
pub struct BillReport {
    /// The bill's day (the gateway's calendar).
    pub date: NaiveDate,
    /// The detail file the rows came from.
    pub file: String,
    /// The merchant account the bill names (checked to be ours).
    pub account: Option<String>,
    /// Whether NEW orders paid at the gateway were marked PAID.
    pub applied: bool,
    /// Payment rows in the bill.
    pub payments: usize,
    /// Refund rows in the bill.
    pub refunds: usize,
    /// Payments that agree with a PAID order.
    pub matched: usize,
    /// Paid at the gateway (it says so when asked), NEW locally.
    pub paid_but_new: Vec<BillLine>,
    /// Paid at the gateway (it says so when asked), CLOSED locally.
    pub paid_after_close: Vec<BillLine>,
    /// PAID locally that day, absent from the bill, and not paid as the gateway says.
    pub paid_missing_from_bill: Vec<BillLine>,
    /// The amount the gateway says was paid differs from the order's.
    pub amount_mismatch: Vec<BillLine>,
    /// Refund rows.
    pub refund_rows: Vec<BillLine>,
    /// Bill rows naming an order we do not have.
    pub unknown_orders: Vec<BillLine>,
    /// Rows (or absences) the gateway contradicts when asked: the gateway's answer was
    /// applied, never the bill's.
    pub disagreements: Vec<BillLine>,
    /// Rows (or absences) about which the gateway could not be asked: nothing was done.
    pub unconfirmed: Vec<BillLine>,
    /// What cron should conclude.
    pub finding: Finding,
}

impl BillReport {
    /// An empty report of the bill `file` of `date`.
    pub fn new(date: NaiveDate, file: String, account: Option<String>, applied: bool) -> Self {
        Self {
            date,
            file,
            account,
            applied,
            payments: 0,
            refunds: 0,
            matched: 0,
            paid_but_new: Vec::new(),
            paid_after_close: Vec::new(),
            paid_missing_from_bill: Vec::new(),
            amount_mismatch: Vec::new(),
            refund_rows: Vec::new(),
            unknown_orders: Vec::new(),
            disagreements: Vec::new(),
            unconfirmed: Vec::new(),
            finding: Finding::Clean,
        }
    }

    /// Sets [`BillReport::finding`] from the categories: an anomaly, an unknown order, a
    /// disagreement or an unanswered question needs an operator; a NEW order found paid
    /// was fixed (or would be).
    pub fn conclude(&mut self) {
        self.finding = if !self.paid_after_close.is_empty()
            || !self.paid_missing_from_bill.is_empty()
            || !self.amount_mismatch.is_empty()
            || !self.unknown_orders.is_empty()
            || !self.disagreements.is_empty()
            || !self.unconfirmed.is_empty()
        {
            Finding::NeedsAttention
        } else if !self.paid_but_new.is_empty() {
            Finding::Fixed
        } else {
            Finding::Clean
        };
    }

    /// The report as text for a terminal, every untrusted piece of text escaped.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bill {} ({}, account {}): {} payments, {} refunds; {} agree with PAID orders",
            self.date,
            printable(&self.file),
            printable(self.account.as_deref().unwrap_or("-")),
            self.payments,
            self.refunds,
            self.matched
        );
        let sections = [
            ("paid at the gateway, NEW locally", &self.paid_but_new),
            (
                "paid at the gateway, CLOSED locally (paid after close)",
                &self.paid_after_close,
            ),
            (
                "PAID locally, absent from the bill",
                &self.paid_missing_from_bill,
            ),
            ("amounts differ", &self.amount_mismatch),
            ("refunds", &self.refund_rows),
            ("orders we do not know", &self.unknown_orders),
            (
                "the gateway disagrees with the bill (its answer applies)",
                &self.disagreements,
            ),
            (
                "the gateway could not be asked (nothing done)",
                &self.unconfirmed,
            ),
        ];
        for (title, lines) in sections {
            let _ = writeln!(out, "\n{title}: {}", lines.len());
            for l in lines {
                let _ = writeln!(
                    out,
                    "  {:<24} line {:<6} gateway {:>10} local {:>10} {:<7} {}",
                    printable(&l.out_trade_no),
                    l.line.map_or("-".into(), |n| n.to_string()),
                    l.gateway_amount_minor.map_or("-".into(), format_minor),
                    l.local_amount_minor.map_or("-".into(), format_minor),
                    l.local_status.as_deref().unwrap_or("-"),
                    printable(&l.action)
                );
                if let Some(said) = &l.gateway_said {
                    let _ = writeln!(out, "  {:<24} the gateway says: {}", "", printable(said));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_bill_cannot_reach_the_terminal_raw() {
        let hostile = "ORD\u{1b}[2J\u{0}\u{8}\u{9b}31m\r\nforged line";
        let mut report = BillReport::new(
            "2026-11-21".parse().unwrap(),
            format!("x{hostile}_业务明细.csv"),
            Some(format!("2088{hostile}")),
            false,
        );
        report.unknown_orders.push(BillLine {
            out_trade_no: hostile.into(),
            line: Some(7),
            trade_no: Some(hostile.into()),
            gateway_amount_minor: Some(100),
            local_amount_minor: None,
            local_status: None,
            gateway_said: Some(format!("trade {hostile} paid 1.00")),
            action: format!("no such order ({hostile})"),
        });
        let text = report.to_text();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        // Every line break is the report's own: none came from the bill.
        assert!(
            !text.lines().any(|l| l.starts_with("forged line")),
            "{text}"
        );
        assert!(text.contains("ORD\\u{1b}[2J\\u{0}\\u{8}\\u{9b}31m\\r\\nforged line"));
        // JSON escapes what JSON must (C0 controls: escape codes, NUL, backspace, line
        // breaks) itself.
        let json = serde_json::to_string(&report).unwrap();
        assert!(!json.chars().any(|c| c < ' '), "{json}");
    }
}
