//! The trade store's tests: scans, payments, expiry, refunds, bills and faults.

use super::bill::whole_seconds;
use super::*;
use chrono::NaiveDate;
use order_closer_gateway::bill::{BillRow, BillRowKind};

#[test]
fn an_expired_qr_code_cannot_be_scanned_but_a_trade_scanned_in_time_stays_payable() {
    let s = SimState::new();
    let past = Utc::now() - chrono::Duration::seconds(1);
    let future = Utc::now() + chrono::Duration::seconds(60);
    assert!(matches!(
        s.buyer("LATE").scans(100).qr_valid_until(past).send(),
        Err(BuyerOpError::Expired(_))
    ));
    assert!(s.trade("LATE").is_none());
    let t = s
        .buyer("ON-TIME")
        .scans(100)
        .qr_valid_until(future)
        .send()
        .unwrap();
    assert_eq!(t.time_expire, None);
    assert_eq!(t.status, SimTradeStatus::WaitBuyerPay);
    // Re-scanning after the QR code expired returns the existing trade.
    assert_eq!(
        s.buyer("ON-TIME")
            .scans(100)
            .qr_valid_until(past)
            .send()
            .unwrap(),
        t
    );
}

#[test]
fn scan_is_idempotent_and_checks_amount() {
    let s = SimState::new();
    let a = s.buyer("A").scans(100).send().unwrap();
    assert_eq!(a.status, SimTradeStatus::WaitBuyerPay);
    assert_eq!(a.trade_no.len(), 28);
    assert!(a.trade_no.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(s.buyer("A").scans(100).send().unwrap(), a);
    assert!(matches!(
        s.buyer("A").scans(200).send(),
        Err(BuyerOpError::Conflict(_))
    ));
    assert!(matches!(
        s.buyer("B").scans(0).send(),
        Err(BuyerOpError::BadRequest(_))
    ));
    assert_ne!(s.buyer("C").scans(1).send().unwrap().trade_no, a.trade_no);
}

#[test]
fn pay_rules() {
    let s = SimState::new();
    assert_eq!(
        s.buyer("X").pays().send(),
        Err(BuyerOpError::NotFound("X".into()))
    );
    let paid = s.buyer("X").scans(500).pays().send().unwrap();
    assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
    assert!(paid.paid_at.is_some());
    assert!(matches!(
        s.buyer("X").pays().send(),
        Err(BuyerOpError::Conflict(_))
    ));
}

#[test]
fn close_rules_and_race() {
    let s = SimState::new();
    assert_eq!(
        s.gateway_close("", Some("none"), None, true),
        CloseOutcome::NotFound
    );
    s.buyer("W").scans(1).send().unwrap();
    assert!(matches!(
        s.gateway_close("", Some("W"), None, true),
        CloseOutcome::Closed(_)
    ));
    assert!(matches!(
        s.gateway_close("", Some("W"), None, true),
        CloseOutcome::StatusError(_)
    ));
    assert!(matches!(
        s.buyer("W").pays().send(),
        Err(BuyerOpError::Conflict(_))
    ));

    s.buyer("R").scans(2).send().unwrap();
    s.buyer("R").pays_on_close().send().unwrap();
    match s.gateway_close("", Some("R"), None, true) {
        CloseOutcome::StatusError(t) => {
            assert_eq!(t.status, SimTradeStatus::TradeSuccess);
            assert!(!t.pay_on_close);
        }
        other => panic!("{other:?}"),
    }
    let by_trade_no = s.trade("R").unwrap().trade_no;
    assert!(s.gateway_query("", None, Some(&by_trade_no)).is_some());
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("R"), None),
        FaultDecision::PROCEED
    );
    assert_eq!(
        s.fault_for("", SimMethod::Close, Some("R"), None),
        FaultDecision::PROCEED
    );
    let stats = s.stats();
    assert_eq!((stats.closes, stats.queries), (1, 1));
    assert!(stats.faults_injected.is_empty());
    assert_eq!(s.trades().len(), 2);
}

#[test]
fn refunds_in_parts_then_in_full_close_the_trade() {
    let s = SimState::new();
    assert!(matches!(
        s.refund("none", 1),
        Err(BuyerOpError::NotFound(_))
    ));
    s.buyer("W").scans(1000).send().unwrap();
    assert!(matches!(s.refund("W", 1), Err(BuyerOpError::Conflict(_))));
    let paid = s.buyer("W").pays().send().unwrap();
    assert!(matches!(s.refund("W", 0), Err(BuyerOpError::BadRequest(_))));
    assert!(matches!(
        s.refund("W", 1001),
        Err(BuyerOpError::Conflict(_))
    ));

    let part = s.refund("W", 300).unwrap();
    assert_eq!(part.status, SimTradeStatus::TradeSuccess);
    assert_eq!(part.refundable_minor(), 700);
    assert_eq!(part.refunds[0].refund_no, format!("RF{}1", paid.trade_no));
    assert!(matches!(s.refund("W", 701), Err(BuyerOpError::Conflict(_))));

    let full = s.refund("W", 700).unwrap();
    assert_eq!(full.status, SimTradeStatus::TradeClosed);
    assert_eq!(full.closed_at, Some(full.refunds[1].refunded_at));
    assert_eq!(full.refunds[1].refund_no, format!("RF{}2", paid.trade_no));
    assert_eq!(full.refundable_minor(), 0);
    assert!(matches!(s.refund("W", 1), Err(BuyerOpError::Conflict(_))));
    // Fully refunded reads as closed, and cannot be closed again.
    assert_eq!(
        s.gateway_query("", Some("W"), None).unwrap().status,
        SimTradeStatus::TradeClosed
    );
    assert!(matches!(
        s.gateway_close("", Some("W"), None, true),
        CloseOutcome::StatusError(_)
    ));
}

#[test]
fn a_gateway_refund_is_idempotent_by_out_request_no() {
    let s = SimState::new();
    assert_eq!(
        s.gateway_refund("", Some("G"), None, "RF-1", 500, true),
        RefundOutcome::NotFound
    );
    s.buyer("G").scans(500).send().unwrap();
    assert!(matches!(
        s.gateway_refund("", Some("G"), None, "RF-1", 500, true),
        RefundOutcome::StatusError(_)
    ));
    s.buyer("G").pays().send().unwrap();
    // A preview changes nothing.
    assert!(matches!(
        s.gateway_refund("", Some("G"), None, "RF-1", 500, false),
        RefundOutcome::Refunded {
            fund_change: true,
            ..
        }
    ));
    assert!(s.trade("G").unwrap().refunds.is_empty());
    assert!(matches!(
        s.gateway_refund("", Some("G"), None, "RF-1", 501, true),
        RefundOutcome::AmountError(_)
    ));
    let RefundOutcome::Refunded { trade, fund_change } =
        s.gateway_refund("", Some("G"), None, "RF-1", 500, true)
    else {
        panic!("refunded")
    };
    assert!(fund_change);
    assert_eq!(trade.status, SimTradeStatus::TradeClosed);
    assert_eq!(trade.refunds[0].out_request_no.as_deref(), Some("RF-1"));
    // The same request again: the same refund, no money moves.
    for _ in 0..3 {
        assert!(matches!(
            s.gateway_refund("", Some("G"), None, "RF-1", 500, true),
            RefundOutcome::Refunded {
                fund_change: false,
                ..
            }
        ));
    }
    assert!(matches!(
        s.gateway_refund("", Some("G"), None, "RF-1", 400, true),
        RefundOutcome::AmountError(_)
    ));
    // Another request on a fully refunded trade.
    assert!(matches!(
        s.gateway_refund("", Some("G"), None, "RF-2", 1, true),
        RefundOutcome::StatusError(_)
    ));
    assert_eq!(s.trade("G").unwrap().refunds.len(), 1);
}

/// A gateway whose refund numbers are unique per merchant (WeChat Pay's `out_refund_no`)
/// or per trade (Alipay's `out_request_no`).
#[derive(Debug)]
struct Scoped(&'static str, RefundNumberScope);

impl TradeRules for Scoped {
    fn channel(&self) -> &'static str {
        self.0
    }

    fn trade_no(&self, _: DateTime<Utc>, seq: u64) -> String {
        format!("{}{seq:08}", self.0)
    }

    fn refund_numbers(&self) -> RefundNumberScope {
        self.1
    }
}

#[test]
fn refund_numbers_are_unique_per_merchant_or_per_trade_as_the_gateway_holds_them() {
    let s = SimState::for_gateways(vec![
        Arc::new(Scoped("merchant", RefundNumberScope::Merchant)),
        Arc::new(Scoped("trade", RefundNumberScope::Trade)),
        Arc::new(Scoped("other", RefundNumberScope::Merchant)),
    ]);
    for (channel, first, second) in [("merchant", "M1", "M2"), ("trade", "T1", "T2")] {
        for no in [first, second] {
            s.buyer(no).at(channel).scans(500).send().unwrap();
            s.buyer(no).pays().send().unwrap();
        }
        // A preview does not take the number.
        assert!(matches!(
            s.gateway_refund(channel, Some(first), None, "RF-1", 500, false),
            RefundOutcome::Refunded { .. }
        ));
        assert!(matches!(
            s.gateway_refund(channel, Some(second), None, "RF-1", 500, false),
            RefundOutcome::Refunded { .. }
        ));
        assert!(matches!(
            s.gateway_refund(channel, Some(first), None, "RF-1", 500, true),
            RefundOutcome::Refunded {
                fund_change: true,
                ..
            }
        ));
        // Sent again on its own trade: the same refund, whatever the scope.
        assert!(matches!(
            s.gateway_refund(channel, Some(first), None, "RF-1", 500, true),
            RefundOutcome::Refunded {
                fund_change: false,
                ..
            }
        ));
        let on_another_trade = s.gateway_refund(channel, Some(second), None, "RF-1", 500, true);
        match channel {
            "merchant" => {
                assert!(
                    matches!(on_another_trade, RefundOutcome::NumberTaken(ref t) if t.out_trade_no == second),
                    "{on_another_trade:?}"
                );
                assert!(s.trade(second).unwrap().refunds.is_empty());
            }
            _ => {
                assert!(
                    matches!(
                        on_another_trade,
                        RefundOutcome::Refunded {
                            fund_change: true,
                            ..
                        }
                    ),
                    "{on_another_trade:?}"
                );
                assert_eq!(s.trade(second).unwrap().refunds.len(), 1);
            }
        }
    }
    // Numbers are a merchant's at one gateway: another gateway's RF-1 does not count.
    s.buyer("O1").at("other").scans(500).send().unwrap();
    s.buyer("O1").pays().send().unwrap();
    assert!(matches!(
        s.gateway_refund("other", Some("O1"), None, "RF-1", 500, true),
        RefundOutcome::Refunded {
            fund_change: true,
            ..
        }
    ));
    // Refunds made in the merchant portal (the buyer API) carry no number.
    s.buyer("M4").at("merchant").scans(500).send().unwrap();
    s.buyer("M4").pays().send().unwrap();
    s.refund("M4", 100).unwrap();
    assert!(matches!(
        s.gateway_refund("merchant", Some("M4"), None, "RF-4", 400, true),
        RefundOutcome::Refunded { .. }
    ));
}

#[test]
fn a_one_shot_for_one_method_leaves_the_others_alone() {
    let s = SimState::new();
    s.buyer("A").scans(1).send().unwrap();
    s.fail_next_on("A", Some(SimMethod::Refund), FaultKind::Timeout, 1)
        .unwrap();
    assert_eq!(
        s.pending_fail_next("A").and_then(|p| p.method),
        Some(SimMethod::Refund)
    );
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("A"), None).fault,
        None
    );
    assert_eq!(
        s.fault_for("", SimMethod::Refund, Some("A"), None).fault,
        Some(FaultKind::Timeout)
    );
    assert_eq!(
        s.fault_for("", SimMethod::Refund, Some("A"), None).fault,
        None
    );
}

#[test]
fn the_trade_store_is_bounded() {
    let s = SimState::new();
    s.limit_trades(2);
    s.buyer("A").scans(1).send().unwrap();
    s.buyer("B").scans(1).send().unwrap();
    assert!(matches!(
        s.buyer("C").scans(1).send(),
        Err(BuyerOpError::Full(2))
    ));
    // Existing trades still work.
    assert_eq!(s.buyer("A").scans(1).send().unwrap().out_trade_no, "A");
    assert_eq!(s.trades().len(), 2);
}

#[test]
fn bill_rows_list_the_days_payments_and_refunds() {
    let s = SimState::new();
    s.buyer("P1").scans(1000).pays().send().unwrap();
    s.buyer("P2").scans(250).pays().send().unwrap();
    s.buyer("UNPAID").scans(5).send().unwrap();
    s.refund("P1", 400).unwrap();
    let today = china_date(Utc::now());
    let rows = s.bill_rows("", today);
    // Around midnight China time the payments and the refund may fall on two days.
    let rows: Vec<BillRow> = if rows.len() == 3 {
        rows
    } else {
        let mut both = s.bill_rows("", today.pred_opt().unwrap());
        both.extend(rows);
        both
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    let p1 = s.trade("P1").unwrap();
    let payment = rows
        .iter()
        .find(|r| r.out_trade_no == "P1" && r.kind == BillRowKind::Payment)
        .unwrap();
    assert_eq!((payment.amount_minor, payment.received_minor), (1000, 1000));
    assert_eq!(payment.trade_no, p1.trade_no);
    assert_eq!(payment.refund_no, None);
    assert_eq!(
        payment.finished_at,
        Some(whole_seconds(p1.paid_at.unwrap()))
    );
    let refund = rows.iter().find(|r| r.kind == BillRowKind::Refund).unwrap();
    assert_eq!((refund.amount_minor, refund.received_minor), (-400, -400));
    assert_eq!(refund.refund_no.as_deref(), Some(&*p1.refunds[0].refund_no));
    assert_eq!(refund.created_at, Some(whole_seconds(p1.created_at)));
    assert!(!rows.iter().any(|r| r.out_trade_no == "UNPAID"));
    assert!(
        rows.windows(2)
            .all(|w| w[0].finished_at <= w[1].finished_at)
    );
    assert!(s.bill_rows("", today.succ_opt().unwrap()).is_empty());
}

#[test]
fn bill_tokens_expire_and_overrides_are_one_shot() {
    let s = SimState::new();
    let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
    assert_eq!(s.fetch_bill("nope"), BillFetch::Unknown);
    let token = s.issue_bill_token(date);
    assert_eq!(token.len(), 32);
    assert_eq!(
        s.fetch_bill(&token),
        BillFetch::Ready {
            date,
            override_body: None
        }
    );
    s.set_bill_override(Some(b"junk".to_vec()));
    assert_eq!(
        s.fetch_bill(&token),
        BillFetch::Ready {
            date,
            override_body: Some(b"junk".to_vec())
        }
    );
    assert_eq!(
        s.fetch_bill(&token),
        BillFetch::Ready {
            date,
            override_body: None
        }
    );
    s.set_bill_override(Some(b"junk".to_vec()));
    s.set_bill_override(None);
    assert!(matches!(
        s.fetch_bill(&token),
        BillFetch::Ready {
            override_body: None,
            ..
        }
    ));
    s.set_bill_url_ttl(Duration::ZERO);
    let expired = s.issue_bill_token(date);
    assert_eq!(s.fetch_bill(&expired), BillFetch::Expired);
    assert_eq!(s.stats().bill_downloads, 4);
}

#[test]
fn faults_are_drawn_and_counted() {
    let s = SimState::new();
    s.buyer("A").scans(100).send().unwrap();
    let mut plan = FaultPlan::only(FaultKind::Busy20000, 1.0);
    plan.latency_ms = 7;
    plan.timeout_ms = Some(1234);
    s.set_faults(plan).unwrap();
    let d = s.fault_for("", SimMethod::Query, Some("A"), None);
    assert_eq!(d.fault, Some(FaultKind::Busy20000));
    assert_eq!(d.latency, Duration::from_millis(7));
    assert_eq!(d.hold, Duration::from_millis(1234));

    // An invalid plan leaves the current one in place.
    assert!(s.set_faults(FaultPlan::only(FaultKind::Html, 2.0)).is_err());
    assert_eq!(s.faults().busy_20000, 1.0);

    // wrong_amount applies only to queries of existing trades.
    s.set_faults(FaultPlan::only(FaultKind::WrongAmount, 1.0))
        .unwrap();
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("A"), None).fault,
        Some(FaultKind::WrongAmount)
    );
    assert_eq!(
        s.fault_for("", SimMethod::Close, Some("A"), None).fault,
        None
    );
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("Z"), None).fault,
        None
    );

    // The methods filter.
    let mut only_close = FaultPlan::only(FaultKind::Html, 1.0);
    only_close.methods = Some(vec!["close".into()]);
    only_close.latency_ms = 3;
    s.set_faults(only_close).unwrap();
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("A"), None),
        FaultDecision::PROCEED
    );
    assert_eq!(
        s.fault_for("", SimMethod::Close, Some("A"), None).fault,
        Some(FaultKind::Html)
    );

    s.clear_faults();
    assert_eq!(s.faults(), FaultPlan::default());
    let stats = s.stats();
    assert_eq!((stats.queries, stats.closes), (4, 2));
    let counted: Vec<(&str, u64)> = stats
        .faults_injected
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        counted,
        [("busy_20000", 1), ("html", 1), ("wrong_amount", 1)]
    );
}

#[test]
fn seeded_draws_repeat() {
    let s = SimState::new();
    let plan = FaultPlan {
        http_502: 0.3,
        empty_body: 0.3,
        latency_jitter_ms: Some(50),
        seed: Some(42),
        ..FaultPlan::default()
    };
    let run = |s: &SimState| -> Vec<FaultDecision> {
        (0..200)
            .map(|_| s.fault_for("", SimMethod::Query, Some("X"), None))
            .collect()
    };
    s.set_faults(plan.clone()).unwrap();
    let first = run(&s);
    s.set_faults(plan).unwrap();
    assert_eq!(run(&s), first);
    let faulted = first.iter().filter(|d| d.fault.is_some()).count();
    assert!((80..=160).contains(&faulted), "{faulted} of 200 at 0.6");
    assert!(first.iter().any(|d| d.fault.is_none()));
    assert!(first.iter().all(|d| d.latency <= Duration::from_millis(50)));
    assert!(first.iter().any(|d| d.latency > Duration::ZERO));
}

#[test]
fn fail_next_is_exact_and_wins_over_the_plan() {
    let s = SimState::new();
    let tn = s.buyer("A").scans(1).send().unwrap().trade_no;
    s.set_faults(FaultPlan::only(FaultKind::Html, 1.0)).unwrap();
    s.fail_next("A", FaultKind::SystemError, 2).unwrap();
    assert_eq!(s.pending_fail_next("A").map(|p| p.remaining), Some(2));
    // Found by trade_no as well.
    assert_eq!(
        s.fault_for("", SimMethod::Query, None, Some(&tn)).fault,
        Some(FaultKind::SystemError)
    );
    assert_eq!(
        s.fault_for("", SimMethod::Close, Some("A"), None).fault,
        Some(FaultKind::SystemError)
    );
    assert_eq!(s.pending_fail_next("A"), None);
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("A"), None).fault,
        Some(FaultKind::Html)
    );
    s.clear_faults();

    // A trade that does not exist yet; count 0 cancels.
    s.fail_next("NEW", FaultKind::Timeout, 1).unwrap();
    s.fail_next("B", FaultKind::Timeout, 5).unwrap();
    s.fail_next("B", FaultKind::Timeout, 0).unwrap();
    assert_eq!(s.pending_fail_next("B"), None);
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("B"), None).fault,
        None
    );
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("NEW"), None).fault,
        Some(FaultKind::Timeout)
    );
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("NEW"), None).fault,
        None
    );

    // wrong_amount waits for a query of an existing trade.
    s.fail_next("A", FaultKind::WrongAmount, 1).unwrap();
    assert_eq!(
        s.fault_for("", SimMethod::Close, Some("A"), None).fault,
        None
    );
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("A"), None).fault,
        Some(FaultKind::WrongAmount)
    );
    assert!(s.fail_next("", FaultKind::Html, 1).is_err());
    // clear_faults drops pending one-shots too.
    s.fail_next("A", FaultKind::Html, 3).unwrap();
    s.clear_faults();
    assert_eq!(
        s.fault_for("", SimMethod::Query, Some("A"), None).fault,
        None
    );
    assert_eq!(s.stats().faults_injected["system_error"], 2);
}

/// Moves a stored trade's `time_expire` (into the past, to let it expire) without
/// applying anything.
fn set_expiry(s: &SimState, no: &str, at: DateTime<Utc>) {
    s.lock().trades.get_mut(no).unwrap().time_expire = Some(at);
}

fn ago(secs: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(secs)
}

fn in_an_hour() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(1)
}

#[test]
fn scan_after_expiry_is_refused_and_creates_nothing() {
    let s = SimState::new();
    let past = ago(1);
    match s.buyer("X").scans(100).expiring_at(past).send() {
        Err(BuyerOpError::Expired(msg)) => assert!(msg.contains("\"X\""), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.trade("X"), None);
    assert_eq!(s.gateway_query("", Some("X"), None), None);
    assert_eq!(
        s.gateway_close("", Some("X"), None, true),
        CloseOutcome::NotFound
    );
    assert!(s.trades().is_empty());

    // Before the expiry the trade is created and keeps it; a re-scan does not move it.
    let expire = in_an_hour();
    let w = s.buyer("W").scans(100).expiring_at(expire).send().unwrap();
    assert_eq!(w.status, SimTradeStatus::WaitBuyerPay);
    assert_eq!(w.time_expire, Some(expire));
    assert_eq!(s.buyer("W").scans(100).expiring_at(past).send().unwrap(), w);
    assert_eq!(s.buyer("W").scans(100).send().unwrap(), w);
    assert!(matches!(
        s.buyer("W").scans(999).expiring_at(expire).send(),
        Err(BuyerOpError::Conflict(_))
    ));
    // No expiry given, none stored.
    assert_eq!(s.buyer("N").scans(1).send().unwrap().time_expire, None);
}

#[test]
fn a_waiting_trade_closes_at_its_expiry() {
    let s = SimState::new();
    let w = s
        .buyer("W")
        .scans(100)
        .expiring_at(in_an_hour())
        .send()
        .unwrap();
    let expired_at = ago(5);
    set_expiry(&s, "W", expired_at);

    // Every read sees it closed, as of the expiry moment.
    let by_trade_no = s.gateway_query("", None, Some(&w.trade_no)).unwrap();
    assert_eq!(by_trade_no.status, SimTradeStatus::TradeClosed);
    assert_eq!(by_trade_no.closed_at, Some(expired_at));
    assert_eq!(by_trade_no.paid_at, None);
    assert_eq!(s.trade("W"), Some(by_trade_no.clone()));
    assert_eq!(s.trades(), vec![by_trade_no.clone()]);
    // Re-scanning returns the closed trade.
    assert_eq!(s.buyer("W").scans(100).send().unwrap(), by_trade_no);

    // Paying and arming the race are refused as for a closed trade.
    match s.buyer("W").scans(100).pays().send() {
        Err(BuyerOpError::Conflict(msg)) => assert!(msg.contains("TRADE_CLOSED"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.buyer("W").pays_on_close().send(),
        Err(BuyerOpError::Conflict(_))
    ));
    // A close answers as for a closed trade, previewed or not.
    assert_eq!(
        s.gateway_close("", Some("W"), None, false),
        CloseOutcome::StatusError(by_trade_no.clone())
    );
    assert_eq!(
        s.gateway_close("", Some("W"), None, true),
        CloseOutcome::StatusError(by_trade_no.clone())
    );
    assert_eq!(s.trade("W"), Some(by_trade_no));
}

#[test]
fn a_previewed_close_sees_a_due_expiry() {
    let s = SimState::new();
    s.buyer("P")
        .scans(100)
        .expiring_at(in_an_hour())
        .send()
        .unwrap();
    let expired_at = ago(1);
    set_expiry(&s, "P", expired_at);
    match s.gateway_close("", Some("P"), None, false) {
        CloseOutcome::StatusError(t) => {
            assert_eq!(t.status, SimTradeStatus::TradeClosed);
            assert_eq!(t.closed_at, Some(expired_at));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_armed_race_does_not_fire_after_expiry() {
    let s = SimState::new();
    s.buyer("R")
        .scans(100)
        .expiring_at(in_an_hour())
        .send()
        .unwrap();
    assert!(s.buyer("R").pays_on_close().send().unwrap().pay_on_close);
    let expired_at = ago(1);
    set_expiry(&s, "R", expired_at);
    match s.gateway_close("", Some("R"), None, true) {
        CloseOutcome::StatusError(t) => {
            assert_eq!(t.status, SimTradeStatus::TradeClosed);
            assert_eq!(t.closed_at, Some(expired_at));
            assert_eq!(t.paid_at, None);
            assert!(!t.pay_on_close);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn expiry_does_not_touch_paid_or_closed_trades() {
    let s = SimState::new();
    s.buyer("PAID")
        .scans(100)
        .expiring_at(in_an_hour())
        .send()
        .unwrap();
    let paid = s.buyer("PAID").pays().send().unwrap();
    s.buyer("CLOSED")
        .scans(100)
        .expiring_at(in_an_hour())
        .send()
        .unwrap();
    let CloseOutcome::Closed(closed) = s.gateway_close("", Some("CLOSED"), None, true) else {
        panic!("not closed");
    };
    set_expiry(&s, "PAID", ago(1));
    set_expiry(&s, "CLOSED", ago(1));
    let after = s.gateway_query("", Some("PAID"), None).unwrap();
    assert_eq!(after.status, SimTradeStatus::TradeSuccess);
    assert_eq!((after.paid_at, after.closed_at), (paid.paid_at, None));
    // A trade closed before its expiry keeps its own closing time.
    let after = s.trade("CLOSED").unwrap();
    assert_eq!(after.status, SimTradeStatus::TradeClosed);
    assert_eq!(after.closed_at, closed.closed_at);
}

#[test]
fn a_view_without_time_expire_still_parses() {
    let old = r#"{"out_trade_no":"A","trade_no":"1","amount_minor":5,
        "status":"WAIT_BUYER_PAY","created_at":"2026-11-22T10:00:00Z",
        "paid_at":null,"closed_at":null,"pay_on_close":false}"#;
    let view: SimTradeView = serde_json::from_str(old).unwrap();
    assert_eq!(view.time_expire, None);
    let mut with = view.clone();
    with.time_expire = Some("2026-11-22T10:15:00Z".parse().unwrap());
    let json = serde_json::to_string(&with).unwrap();
    assert!(
        json.contains(r#""time_expire":"2026-11-22T10:15:00Z""#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<SimTradeView>(&json).unwrap(), with);
}

#[test]
fn preview_close_changes_nothing() {
    let s = SimState::new();
    s.buyer("W").scans(1).send().unwrap();
    s.buyer("W").pays_on_close().send().unwrap();
    match s.gateway_close("", Some("W"), None, false) {
        CloseOutcome::Closed(t) => assert_eq!(t.status, SimTradeStatus::TradeClosed),
        other => panic!("{other:?}"),
    }
    let stored = s.trade("W").unwrap();
    assert_eq!(stored.status, SimTradeStatus::WaitBuyerPay);
    assert!(stored.pay_on_close);
    assert_eq!(
        s.gateway_close("", Some("none"), None, false),
        CloseOutcome::NotFound
    );
}
