//! Every row of the order table with two trades on two gateways, and the invariants that
//! hold for every pair of answers whatever the order's state.

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Order 1 in `status`, paid through trade `paid_trade_id` (its gateway trade number is
/// `GW-<id>`).
fn order(status: &str, paid_trade_id: Option<i64>) -> Order {
    Order {
        gateway_trade_no: paid_trade_id.map(|id| format!("GW-{id}")),
        paid_trade_id,
        ..crate::decide::fixtures::order(status, t("2026-11-22T10:00:00Z"))
    }
}

fn trade(id: i64, channel: &str, status: TradeStatus) -> Trade {
    let at = t("2026-11-22T09:50:00Z");
    Trade {
        id,
        order_id: 1,
        channel: channel.into(),
        out_trade_no: format!("ORD-1-{id}"),
        gateway_ref: None,
        status,
        gateway_trade_no: None,
        paid_minor: None,
        paid_at: None,
        closed_at: None,
        close_reason: None,
        created_at: at,
        updated_at: at,
    }
}

/// Trade 1 at Alipay, trade 2 at WeChat Pay, both open.
fn two() -> Vec<Trade> {
    vec![
        trade(1, "alipay", TradeStatus::Open),
        trade(2, "wechat", TradeStatus::Open),
    ]
}

fn paid(id: i64) -> Action {
    Action::MarkPaid {
        trade_no: format!("GW-{id}"),
        paid_at: Some(t("2026-11-22T09:59:00Z")),
        mismatch: None,
    }
}

fn retry() -> Action {
    Action::Retry {
        code: "timeout".into(),
        detail: "slow".into(),
    }
}

fn park() -> Action {
    Action::Park {
        code: "40002".into(),
        detail: "bad key".into(),
    }
}

fn v(trade_id: i64, action: Action) -> TradeVerdict {
    TradeVerdict { trade_id, action }
}

fn closed(reason: CloseReason) -> TradeMove {
    TradeMove::Closed {
        reason: reason.as_str(),
    }
}

fn paid_move(id: i64) -> TradeMove {
    TradeMove::Paid {
        gateway_trade_no: format!("GW-{id}"),
        paid_minor: 1234,
        paid_at: Some(t("2026-11-22T09:59:00Z")),
    }
}

#[test]
fn an_order_without_trades_is_closed_without_asking() {
    let d = decide(&order("NEW", None), &[], &[]);
    assert_eq!(d.order, Some(OrderMove::Closed(CloseReason::NoTrade)));
    assert!(d.trades.is_empty() && d.duplicates.is_empty() && d.unsettled.is_none());
    // Trades that are all closed already: the same.
    let all_closed = [
        trade(1, "alipay", TradeStatus::Closed),
        trade(2, "wechat", TradeStatus::Closed),
    ];
    let d = decide(&order("NEW", None), &all_closed, &[]);
    assert_eq!(d.order, Some(OrderMove::Closed(CloseReason::NoTrade)));
}

#[test]
fn both_closed_closes_the_order_naming_the_strongest_reason() {
    let d = decide(
        &order("NEW", None),
        &two(),
        &[
            v(1, Action::Close(CloseReason::NoTrade)),
            v(2, Action::Close(CloseReason::ClosedByUs)),
        ],
    );
    assert_eq!(d.order, Some(OrderMove::Closed(CloseReason::ClosedByUs)));
    assert_eq!(
        d.trades,
        vec![
            (1, closed(CloseReason::NoTrade)),
            (2, closed(CloseReason::ClosedByUs))
        ]
    );
    let d = decide(
        &order("NEW", None),
        &two(),
        &[
            v(1, Action::Close(CloseReason::ClosedAtGateway)),
            v(2, Action::Close(CloseReason::NoTrade)),
        ],
    );
    assert_eq!(
        d.order,
        Some(OrderMove::Closed(CloseReason::ClosedAtGateway))
    );
}

#[test]
fn switched_gateway_and_paid_the_second() {
    // The buyer opened Alipay, then paid with WeChat Pay: PAID through trade 2, and the
    // Alipay trade is closed at its gateway so it cannot be paid too.
    let d = decide(
        &order("NEW", None),
        &two(),
        &[v(1, Action::Close(CloseReason::ClosedByUs)), v(2, paid(2))],
    );
    assert_eq!(
        d.order,
        Some(OrderMove::Paid {
            trade_id: 2,
            trade_no: "GW-2".into(),
            paid_at: Some(t("2026-11-22T09:59:00Z")),
            mismatch: None
        })
    );
    assert_eq!(
        d.trades,
        vec![(1, closed(CloseReason::ClosedByUs)), (2, paid_move(2))]
    );
    assert!(d.duplicates.is_empty() && d.unsettled.is_none());
}

#[test]
fn paid_on_both_gateways_pays_the_order_once_and_names_the_duplicate() {
    let d = decide(&order("NEW", None), &two(), &[v(1, paid(1)), v(2, paid(2))]);
    assert!(matches!(d.order, Some(OrderMove::Paid { trade_id: 1, .. })));
    assert_eq!(d.trades, vec![(1, paid_move(1)), (2, paid_move(2))]);
    assert_eq!(d.duplicates, vec![2]);
}

#[test]
fn paid_with_the_other_trade_failing_pays_now_and_keeps_the_message_for_it() {
    let d = decide(&order("NEW", None), &two(), &[v(1, paid(1)), v(2, retry())]);
    assert!(matches!(d.order, Some(OrderMove::Paid { trade_id: 1, .. })));
    assert_eq!(d.trades, vec![(1, paid_move(1))]);
    let u = d.unsettled.unwrap();
    assert_eq!(
        (u.trade_id, u.retryable, u.code.as_str()),
        (2, true, "timeout")
    );
    assert!(u.detail.contains("wechat trade ORD-1-2"), "{}", u.detail);
}

#[test]
fn closed_with_the_other_trade_failing_stays_new() {
    for (failure, retryable) in [(retry(), true), (park(), false)] {
        let d = decide(
            &order("NEW", None),
            &two(),
            &[v(1, Action::Close(CloseReason::ClosedByUs)), v(2, failure)],
        );
        assert_eq!(d.order, None, "never CLOSED while a trade may be payable");
        assert_eq!(d.trades, vec![(1, closed(CloseReason::ClosedByUs))]);
        assert_eq!(d.unsettled.unwrap().retryable, retryable);
    }
}

#[test]
fn a_retry_comes_before_a_park() {
    let d = decide(&order("NEW", None), &two(), &[v(1, park()), v(2, retry())]);
    let u = d.unsettled.unwrap();
    assert_eq!((u.trade_id, u.retryable), (2, true));
    let d = decide(&order("NEW", None), &two(), &[v(1, park()), v(2, park())]);
    let u = d.unsettled.unwrap();
    assert_eq!((u.trade_id, u.retryable), (1, false));
}

#[test]
fn a_refunded_trade_closes_the_order_when_the_other_is_closed() {
    let d = decide(
        &order("NEW", None),
        &two(),
        &[
            v(
                1,
                Action::CloseRefunded {
                    trade_no: "GW-1".into(),
                    paid_minor: 1234,
                },
            ),
            v(2, Action::Close(CloseReason::ClosedByUs)),
        ],
    );
    assert_eq!(
        d.order,
        Some(OrderMove::Closed(CloseReason::RefundedAtGateway))
    );
    assert_eq!(d.refunded, vec![(1, "GW-1".into(), 1234)]);
}

#[test]
fn a_paid_order_closes_its_other_trades_and_names_a_second_payment() {
    // PAID through trade 1 (its trade is paid); trade 2 still open.
    let trades = [
        trade(1, "alipay", TradeStatus::Paid),
        trade(2, "wechat", TradeStatus::Open),
    ];
    let paid_order = order("PAID", Some(1));
    let d = decide(
        &paid_order,
        &trades,
        &[v(2, Action::Close(CloseReason::ClosedByUs))],
    );
    assert_eq!(d.order, None);
    assert_eq!(d.trades, vec![(2, closed(CloseReason::ClosedByUs))]);
    assert!(d.duplicates.is_empty() && d.unsettled.is_none());
    let d = decide(&paid_order, &trades, &[v(2, paid(2))]);
    assert_eq!(d.order, None);
    assert_eq!(d.duplicates, vec![2]);
    // An order paid before trades were recorded: its one open trade, found paid with
    // the trade number the order kept, is the payment itself, not a duplicate.
    let legacy = Order {
        paid_trade_id: None,
        gateway_trade_no: Some("GW-2".into()),
        ..order("PAID", None)
    };
    let d = decide(&legacy, &trades, &[v(2, paid(2))]);
    assert!(d.duplicates.is_empty());
    assert_eq!(d.trades, vec![(2, paid_move(2))]);
}

#[test]
fn an_open_trade_without_an_answer_is_never_taken_as_closed() {
    let d = decide(
        &order("NEW", None),
        &two(),
        &[v(1, Action::Close(CloseReason::ClosedByUs))],
    );
    assert_eq!(d.order, None);
    assert_eq!(d.unsettled.unwrap().trade_id, 2);
}

#[test]
fn a_mismatched_amount_is_kept_with_the_payment() {
    let mismatch = AmountMismatch {
        expected: 1234,
        paid: 1000,
    };
    let action = Action::MarkPaid {
        trade_no: "GW-1".into(),
        paid_at: None,
        mismatch: Some(mismatch),
    };
    let trades = [trade(1, "alipay", TradeStatus::Open)];
    let d = decide(&order("NEW", None), &trades, &[v(1, action)]);
    assert!(matches!(
        d.order,
        Some(OrderMove::Paid { mismatch: Some(m), .. }) if m == mismatch
    ));
    assert!(matches!(
        &d.trades[0].1,
        TradeMove::Paid {
            paid_minor: 1000,
            ..
        }
    ));
}

/// Every answer a trade's protocol can end in.
fn every_action(id: i64) -> Vec<Action> {
    vec![
        paid(id),
        Action::Close(CloseReason::NoTrade),
        Action::Close(CloseReason::ClosedAtGateway),
        Action::Close(CloseReason::ClosedByUs),
        Action::CloseRefunded {
            trade_no: format!("GW-{id}"),
            paid_minor: 1234,
        },
        retry(),
        park(),
    ]
}

#[test]
fn invariants_hold_for_every_pair_of_answers_in_every_order_state() {
    let states = [
        ("NEW", None, [TradeStatus::Open, TradeStatus::Open]),
        ("PAID", Some(9), [TradeStatus::Open, TradeStatus::Open]),
        ("PAID", Some(1), [TradeStatus::Paid, TradeStatus::Open]),
    ];
    for (status, paid_id, trade_states) in states {
        let o = order(status, paid_id);
        let trades = [
            trade(1, "alipay", trade_states[0]),
            trade(2, "wechat", trade_states[1]),
        ];
        for a in every_action(1) {
            for b in every_action(2) {
                let verdicts = [v(1, a.clone()), v(2, b.clone())];
                let d = decide(&o, &trades, &verdicts);
                let asked: Vec<&Action> = trades
                    .iter()
                    .filter(|t| t.is_open())
                    .filter_map(|t| verdicts.iter().find(|v| v.trade_id == t.id))
                    .map(|v| &v.action)
                    .collect();
                let paid_count = asked
                    .iter()
                    .filter(|a| matches!(a, Action::MarkPaid { .. }))
                    .count();
                let failing = asked
                    .iter()
                    .any(|a| matches!(a, Action::Retry { .. } | Action::Park { .. }));
                let case = format!("{status} {paid_id:?} {a:?} {b:?}: {d:?}");
                // Never CLOSED while a trade is paid or may still be payable.
                if matches!(d.order, Some(OrderMove::Closed(_))) {
                    assert!(paid_count == 0 && !failing, "{case}");
                }
                // A settled order never moves; a NEW one is PAID iff a trade is paid.
                if status == "PAID" {
                    assert_eq!(d.order, None, "{case}");
                } else {
                    assert_eq!(
                        matches!(d.order, Some(OrderMove::Paid { .. })),
                        paid_count > 0,
                        "{case}"
                    );
                }
                // The message stays iff a trade failed.
                assert_eq!(d.unsettled.is_some(), failing, "{case}");
                // Every payment found is recorded; all but the order's own are duplicates.
                let paid_moves = d
                    .trades
                    .iter()
                    .filter(|(_, m)| matches!(m, TradeMove::Paid { .. }))
                    .count();
                assert_eq!(paid_moves, paid_count, "{case}");
                let expected_duplicates = match status {
                    "NEW" => paid_count.saturating_sub(1),
                    _ => paid_count,
                };
                assert_eq!(d.duplicates.len(), expected_duplicates, "{case}");
                // Every answer that settles a trade moves it, and only open ones move.
                let settling = asked
                    .iter()
                    .filter(|a| !matches!(a, Action::Retry { .. } | Action::Park { .. }))
                    .count();
                assert_eq!(d.trades.len(), settling, "{case}");
                assert!(
                    d.trades
                        .iter()
                        .all(|(id, _)| trades.iter().any(|t| t.id == *id && t.is_open())),
                    "{case}"
                );
            }
        }
    }
}

#[test]
fn a_dry_run_summary_speaks_of_the_payment_first() {
    assert_eq!(
        summary(&[v(1, Action::Close(CloseReason::NoTrade)), v(2, paid(2))]),
        paid(2)
    );
    assert_eq!(
        summary(&[v(1, Action::CloseAtGateway), v(2, retry())]),
        retry()
    );
    assert_eq!(
        summary(&[
            v(1, Action::Close(CloseReason::NoTrade)),
            v(2, Action::CloseAtGateway)
        ]),
        Action::CloseAtGateway
    );
    assert_eq!(summary(&[]), Action::Close(CloseReason::NoTrade));
}
