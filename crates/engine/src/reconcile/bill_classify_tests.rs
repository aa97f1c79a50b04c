//! Bill classification as tables: every kind of row against every kind of order, every
//! gateway answer against every order status, and the orders a bill lacks.

use chrono::{DateTime, Utc};

use super::*;
use order_closer_core::trade::{Trade, TradeStatus};

fn at() -> DateTime<Utc> {
    "2026-11-21T08:00:00Z".parse().unwrap()
}

/// An order of ours numbered `no` with its one trade (numbered alike) at `channel`; a
/// PAID one was paid through that trade.
fn order(no: &str, channel: &str, status: &str, amount_minor: i64) -> Known {
    let paid = status == "PAID";
    let order = Order {
        id: 1,
        out_trade_no: no.into(),
        amount_minor,
        currency: "CNY".into(),
        status_text: status.into(),
        deadline: at(),
        created_at: at(),
        updated_at: at(),
        paid_at: None,
        closed_at: None,
        gateway_trade_no: None,
        close_reason: None,
        paid_trade_id: paid.then_some(1),
        open_trades: i32::from(status == "NEW"),
    };
    let trade = Trade {
        id: 1,
        order_id: 1,
        channel: channel.into(),
        out_trade_no: no.into(),
        gateway_ref: None,
        status: match status {
            "PAID" => TradeStatus::Paid,
            "CLOSED" => TradeStatus::Closed,
            _ => TradeStatus::Open,
        },
        gateway_trade_no: None,
        paid_minor: None,
        paid_at: None,
        closed_at: None,
        close_reason: None,
        created_at: at(),
        updated_at: at(),
    };
    (order, trade)
}

fn row(no: &str, kind: BillRowKind, amount_minor: i64) -> BillRow {
    BillRow {
        line: 5,
        trade_no: "T1".into(),
        out_trade_no: no.into(),
        kind,
        subject: "tea".into(),
        created_at: None,
        finished_at: None,
        amount_minor,
        received_minor: amount_minor,
        refund_no: (kind == BillRowKind::Refund).then(|| "R1".into()),
    }
}

fn paid(trade_no: &str, amount_minor: i64) -> TradeState {
    TradeState::Paid {
        trade_no: trade_no.into(),
        amount_minor,
        paid_at: None,
    }
}

use BillRowKind::{Payment, Refund};

#[test]
fn classify_row_rows() {
    let known: BTreeMap<String, Known> = [
        order("NEW", "alipay", "NEW", 100),
        order("PAID", "alipay", "PAID", 100),
        order("CLOSED", "alipay", "CLOSED", 100),
        order("OTHER", "wechat", "PAID", 100),
    ]
    .into_iter()
    .map(|k| (k.1.out_trade_no.clone(), k))
    .collect();
    let ours = |no: &str| &known[no];
    let rows = [
        // Refund rows are reported, with our order when it is ours.
        (
            "a refund of our order",
            row("PAID", Refund, -100),
            RowClass::Refund(Some(ours("PAID"))),
        ),
        (
            "a refund of no order",
            row("NOPE", Refund, -100),
            RowClass::Refund(None),
        ),
        (
            "a refund of another channel's order",
            row("OTHER", Refund, -100),
            RowClass::Refund(None),
        ),
        // Payments naming no order of this channel.
        (
            "a payment of no order",
            row("NOPE", Payment, 100),
            RowClass::UnknownOrder,
        ),
        (
            "a payment made outside the API",
            row("", Payment, 100),
            RowClass::UnknownOrder,
        ),
        (
            "another channel's order",
            row("OTHER", Payment, 100),
            RowClass::UnknownOrder,
        ),
        // Agrees: PAID with the same amount.
        (
            "PAID, same amount",
            row("PAID", Payment, 100),
            RowClass::Agrees,
        ),
        // Everything else is asked about first.
        (
            "PAID, another amount",
            row("PAID", Payment, 500),
            RowClass::Ask(ours("PAID")),
        ),
        ("NEW", row("NEW", Payment, 100), RowClass::Ask(ours("NEW"))),
        (
            "NEW, another amount",
            row("NEW", Payment, 1),
            RowClass::Ask(ours("NEW")),
        ),
        (
            "CLOSED",
            row("CLOSED", Payment, 100),
            RowClass::Ask(ours("CLOSED")),
        ),
    ];
    for (name, row, expected) in rows {
        assert_eq!(classify_row(&row, &known, "alipay"), expected, "{name}");
    }
}

#[test]
fn judge_row_rows() {
    let refunded = TradeState::Refunded {
        trade_no: "T1".into(),
        amount_minor: 100,
        paid_at: None,
    };
    let judged = |contradicts, act| RowJudgement { contradicts, act };
    let nothing = RowAct::Nothing;
    let new = order("O", "alipay", "NEW", 100);
    let closed = order("O", "alipay", "CLOSED", 100);
    let paid_order = order("O", "alipay", "PAID", 100);
    // (what, the row, the order, the gateway's answer, the judgement)
    // PAID through another trade (id 2): this trade's payment is a second one.
    let paid_through_other = {
        let (mut o, t) = order("O", "alipay", "NEW", 100);
        o.status_text = "PAID".into();
        o.paid_trade_id = Some(2);
        (o, t)
    };
    let rows: Vec<(&str, BillRow, &Known, TradeState, RowJudgement)> = vec![
        (
            "PAID through another trade, this one paid too",
            row("O", Payment, 100),
            &paid_through_other,
            paid("T1", 100),
            judged(
                false,
                RowAct::MarkPaid {
                    amount_differs: false,
                },
            ),
        ),
        // NEW here.
        (
            "NEW, paid as the row says",
            row("O", Payment, 100),
            &new,
            paid("T1", 100),
            judged(
                false,
                RowAct::MarkPaid {
                    amount_differs: false,
                },
            ),
        ),
        (
            "NEW, paid as the row says, another amount than the order's",
            row("O", Payment, 150),
            &new,
            paid("T1", 150),
            judged(
                false,
                RowAct::MarkPaid {
                    amount_differs: true,
                },
            ),
        ),
        (
            "NEW, paid under another trade number",
            row("O", Payment, 100),
            &new,
            paid("T2", 100),
            judged(
                true,
                RowAct::MarkPaid {
                    amount_differs: false,
                },
            ),
        ),
        (
            "NEW, paid another amount than the row's",
            row("O", Payment, 500),
            &new,
            paid("T1", 100),
            judged(
                true,
                RowAct::MarkPaid {
                    amount_differs: false,
                },
            ),
        ),
        (
            "NEW, not paid at all",
            row("O", Payment, 100),
            &new,
            TradeState::WaitingForPayment,
            judged(true, nothing),
        ),
        (
            "NEW, given back since",
            row("O", Payment, 100),
            &new,
            refunded.clone(),
            judged(true, nothing),
        ),
        // CLOSED here: a payment after close, on the gateway's figures.
        (
            "CLOSED, paid as the row says",
            row("O", Payment, 100),
            &closed,
            paid("T1", 100),
            judged(
                false,
                RowAct::PaidAfterClose {
                    trade_no: "T1",
                    paid_minor: 100,
                },
            ),
        ),
        (
            "CLOSED, paid other figures than the row's",
            row("O", Payment, 500),
            &closed,
            paid("T9", 300),
            judged(
                true,
                RowAct::PaidAfterClose {
                    trade_no: "T9",
                    paid_minor: 300,
                },
            ),
        ),
        (
            "CLOSED, closed at the gateway too",
            row("O", Payment, 100),
            &closed,
            TradeState::Closed,
            judged(true, nothing),
        ),
        (
            "CLOSED, no such trade",
            row("O", Payment, 100),
            &closed,
            TradeState::NotFound,
            judged(true, nothing),
        ),
        (
            "CLOSED, given back since",
            row("O", Payment, 100),
            &closed,
            refunded.clone(),
            judged(true, nothing),
        ),
        // PAID here (asked only when the row's amount differs from the order's).
        (
            "PAID, the gateway agrees with the row, not the order",
            row("O", Payment, 500),
            &paid_order,
            paid("T1", 500),
            judged(false, RowAct::AmountMismatch { paid_minor: 500 }),
        ),
        (
            "PAID, the gateway agrees with the order, not the row",
            row("O", Payment, 500),
            &paid_order,
            paid("T1", 100),
            judged(true, nothing),
        ),
        (
            "PAID, the gateway names a third amount",
            row("O", Payment, 500),
            &paid_order,
            paid("T1", 300),
            judged(true, RowAct::AmountMismatch { paid_minor: 300 }),
        ),
        (
            "PAID, the buyer paying right now",
            row("O", Payment, 500),
            &paid_order,
            TradeState::InProgress,
            judged(true, nothing),
        ),
    ];
    for (name, row, order, state, expected) in &rows {
        assert_eq!(judge_row(row, order, state), *expected, "{name}");
    }
}

#[test]
fn contradicts_rows() {
    let bill = row("O", Payment, 100);
    let rows = [
        ("same trade and amount", paid("T1", 100), false),
        ("another amount", paid("T1", 101), true),
        ("another trade", paid("T2", 100), true),
        ("waiting", TradeState::WaitingForPayment, true),
        ("paying", TradeState::InProgress, true),
        ("closed", TradeState::Closed, true),
        ("no such trade", TradeState::NotFound, true),
        (
            "given back since",
            TradeState::Refunded {
                trade_no: "T1".into(),
                amount_minor: 100,
                paid_at: None,
            },
            true,
        ),
    ];
    for (name, state, expected) in rows {
        assert_eq!(contradicts(&bill, &state), expected, "{name}");
    }
}

#[test]
fn absent_from_bill_rows() {
    let paid_that_day = [
        order("IN_BILL", "alipay", "PAID", 100),
        order("REFUNDED_ONLY", "alipay", "PAID", 100),
        order("ABSENT", "alipay", "PAID", 100),
        order("UNKNOWN_IN_BILL", "alipay", "PAID", 100),
    ];
    let rows = [
        row("IN_BILL", Payment, 100),
        // A refund row is not the payment.
        row("REFUNDED_ONLY", Refund, -100),
        // A payment row with another amount still names the order.
        row("UNKNOWN_IN_BILL", Payment, 1),
        row("NOT_OURS", Payment, 100),
    ];
    let absent: Vec<&str> = absent_from_bill(&paid_that_day, &rows)
        .into_iter()
        .map(|(_, t)| t.out_trade_no.as_str())
        .collect();
    assert_eq!(absent, ["REFUNDED_ONLY", "ABSENT"]);
    assert!(absent_from_bill(&[], &rows).is_empty());
    assert_eq!(absent_from_bill(&paid_that_day, &[]).len(), 4);
}

#[test]
fn judge_absent_rows() {
    let rows = [
        (
            "paid at the gateway",
            paid("T1", 100),
            Absence::PaidAtGateway,
        ),
        ("paid another amount", paid("T1", 1), Absence::PaidAtGateway),
        (
            "waiting",
            TradeState::WaitingForPayment,
            Absence::MissingFromBill,
        ),
        ("paying", TradeState::InProgress, Absence::MissingFromBill),
        ("closed", TradeState::Closed, Absence::MissingFromBill),
        (
            "no such trade",
            TradeState::NotFound,
            Absence::MissingFromBill,
        ),
        (
            "given back",
            TradeState::Refunded {
                trade_no: "T1".into(),
                amount_minor: 100,
                paid_at: None,
            },
            Absence::MissingFromBill,
        ),
    ];
    for (name, state, expected) in rows {
        assert_eq!(judge_absent(&state), expected, "{name}");
    }
}
