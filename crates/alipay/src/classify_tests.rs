//! The classification tables, answer by answer: each answer is written as Alipay sends
//! it (JSON) and read as the client reads it, so the typed reading is under test too.

use super::*;
use crate::answer::{Answer, read};
use order_closer_gateway::{FaultClass, TradeRef};
use serde_json::{Value, json};

/// Reads `v` as the client does, then classifies it with `classify`.
fn run<A: Answer, T>(
    v: &Value,
    classify: impl FnOnce(&A) -> Result<T, GatewayError>,
) -> Result<T, GatewayError> {
    classify(&read::<A>(&v.to_string())?)
}

fn q(v: Value) -> Result<TradeState, GatewayError> {
    run(&v, |a| classify_query("ORD-1", a))
}

fn c(v: Value) -> Result<CloseAnswer, GatewayError> {
    run(&v, |a| classify_close("ORD-1", a))
}

fn b(v: Value) -> Result<String, GatewayError> {
    run(&v, classify_bill_url)
}

fn ask() -> RefundRequest<'static> {
    RefundRequest {
        trade: TradeRef::new("ORD-1"),
        out_request_no: "RF-1",
        amount_minor: 1234,
        total_minor: 1234,
        currency: "CNY",
    }
}

fn r(v: Value) -> Result<RefundAnswer, GatewayError> {
    run(&v, |a| classify_refund(&ask(), a, "raw".into()))
}

fn class_and_code<T: std::fmt::Debug>(r: Result<T, GatewayError>) -> (FaultClass, String) {
    let e = r.unwrap_err();
    (e.class, e.code)
}

#[test]
fn china_time_round_trip() {
    use order_closer_core::time::format_china_time;
    let t = parse_china_time("2026-11-21 10:55:23").unwrap();
    assert_eq!(t.to_rfc3339(), "2026-11-21T02:55:23+00:00");
    assert_eq!(format_china_time(t), "2026-11-21 10:55:23");
    assert_eq!(parse_china_time("2026-11-21T10:55:23"), None);
    assert_eq!(parse_china_time(""), None);
}

#[test]
fn query_paid() {
    for status in ["TRADE_SUCCESS", "TRADE_FINISHED"] {
        let got = q(
            json!({"code":"10000","msg":"Success","trade_no":"2026112122001400000000000001",
            "out_trade_no":"ORD-1","trade_status":status,"total_amount":"12.34",
            "buyer_pay_amount":"12.34","send_pay_date":"2026-11-21 10:55:23"}),
        )
        .unwrap();
        assert_eq!(
            got,
            TradeState::Paid {
                trade_no: "2026112122001400000000000001".into(),
                amount_minor: 1234,
                paid_at: parse_china_time("2026-11-21 10:55:23"),
            }
        );
    }
    // Missing or broken pay date: still paid, time unknown.
    let got = q(json!({"code":"10000","trade_no":"T","out_trade_no":"ORD-1",
        "trade_status":"TRADE_SUCCESS","total_amount":"1","send_pay_date":"yesterday"}))
    .unwrap();
    assert_eq!(
        got,
        TradeState::Paid {
            trade_no: "T".into(),
            amount_minor: 100,
            paid_at: None
        }
    );
}

#[test]
fn query_paid_needs_amount_and_trade_no() {
    for amount in [
        json!("12.345"),
        json!("abc"),
        json!(""),
        json!("-1.00"),
        json!(12.34),
    ] {
        let r = q(json!({"code":"10000","trade_no":"T","out_trade_no":"ORD-1",
            "trade_status":"TRADE_SUCCESS","total_amount":amount}));
        assert_eq!(
            class_and_code(r),
            (FaultClass::Retryable, "unclassifiable".into())
        );
    }
    for trade_no in [json!(null), json!(""), json!(5)] {
        let r = q(
            json!({"code":"10000","out_trade_no":"ORD-1","trade_no":trade_no,
            "trade_status":"TRADE_SUCCESS","total_amount":"1.00"}),
        );
        assert_eq!(class_and_code(r).1, "unclassifiable", "{trade_no}");
    }
}

#[test]
fn query_unpaid_closed_not_found() {
    assert_eq!(
        q(
            json!({"code":"10000","out_trade_no":"ORD-1","trade_no":"T","trade_status":"WAIT_BUYER_PAY","total_amount":"12.34"})
        ),
        Ok(TradeState::WaitingForPayment)
    );
    assert_eq!(
        q(
            json!({"code":"10000","out_trade_no":"ORD-1","trade_no":"T","trade_status":"TRADE_CLOSED","total_amount":"12.34"})
        ),
        Ok(TradeState::Closed)
    );
    // Closed after a payment (its time stays): paid, then refunded in full.
    assert_eq!(
        q(
            json!({"code":"10000","out_trade_no":"ORD-1","trade_no":"T","trade_status":"TRADE_CLOSED","total_amount":"12.34","send_pay_date":"2026-11-21 10:55:23"})
        ),
        Ok(TradeState::Refunded {
            trade_no: "T".into(),
            amount_minor: 1234,
            paid_at: parse_china_time("2026-11-21 10:55:23"),
        })
    );
    assert_eq!(
        class_and_code(q(
            json!({"code":"10000","out_trade_no":"ORD-1","trade_status":"TRADE_CLOSED","total_amount":"12.34","send_pay_date":"2026-11-21 10:55:23"})
        )),
        (FaultClass::Retryable, "unclassifiable".to_owned()),
        "a refunded trade names its trade number"
    );
    assert_eq!(
        q(
            json!({"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在","out_trade_no":"ORD-1"})
        ),
        Ok(TradeState::NotFound)
    );
    // A "no such trade" naming no order decides nothing (it could be a replay).
    assert_eq!(
        class_and_code(q(
            json!({"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"})
        )),
        (FaultClass::Retryable, "unclassifiable".to_owned())
    );
    // The not-exist sub-code only counts under 40004.
    assert_eq!(
        class_and_code(q(json!({"code":"20000","sub_code":"ACQ.TRADE_NOT_EXIST"}))).0,
        FaultClass::Retryable
    );
}

#[test]
fn query_failures() {
    let retryable = [
        (
            json!({"code":"20000","msg":"Service Currently Unavailable","sub_code":"isp.unknow-error"}),
            "20000",
        ),
        (
            json!({"code":"40004","sub_code":"ACQ.SYSTEM_ERROR"}),
            "ACQ.SYSTEM_ERROR",
        ),
        (
            json!({"code":"20000","sub_code":"ACQ.SYSTEM_ERROR"}),
            "ACQ.SYSTEM_ERROR",
        ),
        (
            json!({"code":"40004","sub_code":"ACQ.SOMETHING_NEW"}),
            "unclassifiable",
        ),
        (json!({"code":"99999"}), "unclassifiable"),
        (json!({"msg":"no code"}), "unclassifiable"),
        (
            json!({"code":"10000","out_trade_no":"ORD-1","trade_status":"WEIRD"}),
            "unclassifiable",
        ),
        (
            json!({"code":"10000","out_trade_no":"ORD-1"}),
            "unclassifiable",
        ),
        (
            json!({"code":"10000","trade_status":"TRADE_CLOSED"}),
            "unclassifiable",
        ),
        (json!("not an object"), "unclassifiable"),
        (
            json!({"code":"10000","out_trade_no":"ORD-2","trade_status":"TRADE_CLOSED"}),
            "wrong_order",
        ),
        (
            json!({"code":"40004","out_trade_no":"ORD-2","sub_code":"ACQ.TRADE_NOT_EXIST"}),
            "wrong_order",
        ),
    ];
    for (answer, code) in retryable {
        let err = q(answer.clone()).unwrap_err();
        assert_eq!(
            (err.class, err.code.as_str()),
            (FaultClass::Retryable, code),
            "{answer}"
        );
        // Alipay's busy answers ask the account to send less; nothing else does.
        let busy = ["20000", "ACQ.SYSTEM_ERROR"].contains(&code);
        assert_eq!(err.is_throttle(), busy, "{answer}");
    }
    let permanent = [
        (
            json!({"code":"20001","sub_code":"aop.invalid-auth-token"}),
            "20001",
        ),
        (
            json!({"code":"40001","sub_code":"isv.missing-signature"}),
            "40001",
        ),
        (
            json!({"code":"40002","sub_code":"isv.invalid-signature"}),
            "40002",
        ),
        (
            json!({"code":40002,"sub_code":"isv.invalid-app-id"}),
            "40002",
        ),
        (
            json!({"code":"40006","sub_code":"isv.insufficient-isv-permissions"}),
            "40006",
        ),
        (
            json!({"code":"40004","sub_code":"ACQ.INVALID_PARAMETER"}),
            "ACQ.INVALID_PARAMETER",
        ),
    ];
    for (answer, code) in permanent {
        assert_eq!(
            class_and_code(q(answer.clone())),
            (FaultClass::Permanent, code.to_owned()),
            "{answer}"
        );
    }
}

#[test]
fn close_answers() {
    assert_eq!(
        c(json!({"code":"10000","msg":"Success","trade_no":"T","out_trade_no":"ORD-1"})),
        Ok(CloseAnswer::Closed)
    );
    assert_eq!(
        c(
            json!({"code":"40004","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在","out_trade_no":"ORD-1"})
        ),
        Ok(CloseAnswer::Closed)
    );
    assert_eq!(
        class_and_code(c(
            json!({"code":"40004","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"})
        )),
        (FaultClass::Retryable, "unclassifiable".to_owned())
    );
    for sub in [
        "ACQ.TRADE_STATUS_ERROR",
        "ACQ.REASON_TRADE_STATUS_INVALID",
        "ACQ.REASON_ILLEGAL_STATUS",
    ] {
        assert_eq!(
            c(json!({"code":"40004","sub_code":sub})),
            Ok(CloseAnswer::NotCloseable {
                sub_code: sub.into()
            })
        );
    }
    let retryable = [
        (json!({"code":"20000"}), "20000"),
        (
            json!({"code":"40004","sub_code":"ACQ.SYSTEM_ERROR"}),
            "ACQ.SYSTEM_ERROR",
        ),
        (json!({"code":"10000","trade_no":"T"}), "unclassifiable"),
        (
            json!({"code":"10000","out_trade_no":"ORD-9"}),
            "wrong_order",
        ),
        (
            json!({"code":"40004","out_trade_no":"ORD-9","sub_code":"ACQ.TRADE_NOT_EXIST"}),
            "wrong_order",
        ),
        (
            json!({"code":"40004","sub_code":"ACQ.UNKNOWN"}),
            "unclassifiable",
        ),
        (
            json!({"code":"20000","sub_code":"ACQ.TRADE_STATUS_ERROR"}),
            "20000",
        ),
        (json!([]), "unclassifiable"),
    ];
    for (answer, code) in retryable {
        assert_eq!(
            class_and_code(c(answer.clone())),
            (FaultClass::Retryable, code.to_owned()),
            "{answer}"
        );
    }
    for (answer, code) in [
        (json!({"code":"20001"}), "20001"),
        (json!({"code":"40001"}), "40001"),
        (
            json!({"code":"40002","sub_code":"isv.invalid-signature"}),
            "40002",
        ),
        (json!({"code":"40006"}), "40006"),
        (
            json!({"code":"40004","sub_code":"ACQ.INVALID_PARAMETER"}),
            "ACQ.INVALID_PARAMETER",
        ),
    ] {
        assert_eq!(
            class_and_code(c(answer.clone())),
            (FaultClass::Permanent, code.to_owned()),
            "{answer}"
        );
    }
}

#[test]
fn error_messages_are_bounded() {
    let long = "x".repeat(10_000);
    let e = q(json!({"code":"99999","msg":long})).unwrap_err();
    assert!(e.message.len() < 1_000);
    let e = b(json!({"code":"10000","bill_download_url":long})).unwrap_err();
    assert!(e.message.len() < 1_000);
}

#[test]
fn refund_answers() {
    let ok =
        r(json!({"code":"10000","out_trade_no":"ORD-1","fund_change":"Y","refund_fee":"12.34"}))
            .unwrap();
    assert_eq!(
        (ok.refunded_minor, ok.fund_change, ok.raw.as_str()),
        (1234, true, "raw")
    );
    let again =
        r(json!({"code":"10000","out_trade_no":"ORD-1","fund_change":"N","refund_fee":"12.34"}))
            .unwrap();
    assert!(!again.fund_change);
    let short =
        r(json!({"code":"10000","out_trade_no":"ORD-1","fund_change":"N","refund_fee":"0.00"}))
            .unwrap_err();
    assert_eq!(
        (short.class, short.code.as_str()),
        (FaultClass::Retryable, "refund_unconfirmed")
    );
    let other =
        r(json!({"code":"10000","out_trade_no":"ORD-2","fund_change":"Y","refund_fee":"12.34"}))
            .unwrap_err();
    assert_eq!(other.code, "wrong_order");
    let anon = r(json!({"code":"10000","fund_change":"Y","refund_fee":"12.34"})).unwrap_err();
    assert_eq!(anon.code, "unclassifiable");
    let fee = r(json!({"code":"10000","out_trade_no":"ORD-1","fund_change":"Y","refund_fee":"x"}))
        .unwrap_err();
    assert_eq!(fee.code, "unclassifiable");
    for (sub, class) in [
        ("ACQ.SELLER_BALANCE_NOT_ENOUGH", FaultClass::Retryable),
        ("ACQ.SYSTEM_ERROR", FaultClass::Retryable),
        ("ACQ.TRADE_NOT_EXIST", FaultClass::Permanent),
        ("ACQ.TRADE_STATUS_ERROR", FaultClass::Permanent),
        ("ACQ.TRADE_HAS_CLOSE", FaultClass::Permanent),
        ("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", FaultClass::Permanent),
        ("ACQ.INVALID_PARAMETER", FaultClass::Permanent),
    ] {
        let e = r(json!({"code":"40004","sub_code":sub,"out_trade_no":"ORD-1"})).unwrap_err();
        assert_eq!((e.class, e.code.as_str()), (class, sub));
    }
    assert_eq!(
        r(json!({"code":"20000"})).unwrap_err().class,
        FaultClass::Retryable
    );
    assert_eq!(
        r(json!({"code":"40002"})).unwrap_err().class,
        FaultClass::Permanent
    );
    assert_eq!(r(json!([])).unwrap_err().code, "unclassifiable");
}

#[test]
fn bill_url_answers_are_classified() {
    let ok = b(json!({
        "code": "10000", "msg": "Success",
        "bill_download_url": "http://dwbillcenter.alipay.com/downloadBillFile.resource?fileId=1"
    }));
    assert_eq!(
        ok.unwrap(),
        "http://dwbillcenter.alipay.com/downloadBillFile.resource?fileId=1"
    );
    let cases = [
        (
            json!({"code": "10000", "msg": "Success"}),
            FaultClass::Retryable,
            "unclassifiable",
        ),
        (
            json!({"code": "10000", "bill_download_url": "file:///etc/passwd"}),
            FaultClass::Retryable,
            "unclassifiable",
        ),
        (
            json!({"code": "40004", "sub_code": "isv.invalid-bill-date"}),
            FaultClass::Permanent,
            "isv.invalid-bill-date",
        ),
        (
            json!({"code": "40004", "sub_code": "isv.invalid-bill-type"}),
            FaultClass::Permanent,
            "isv.invalid-bill-type",
        ),
        (
            json!({"code": "40004", "sub_code": "isv.invalid-parameter"}),
            FaultClass::Permanent,
            "isv.invalid-parameter",
        ),
        (
            json!({"code": "40004", "sub_code": "isp.bill_not_exist"}),
            FaultClass::Retryable,
            "isp.bill_not_exist",
        ),
        (
            json!({"code": "40004", "sub_code": "ACQ.INVALID_PARAMETER"}),
            FaultClass::Permanent,
            "ACQ.INVALID_PARAMETER",
        ),
        // The bill's own sub-codes count under 40004 only.
        (
            json!({"code": "20000", "sub_code": "isv.invalid-bill-date"}),
            FaultClass::Retryable,
            "20000",
        ),
        (json!({"code": "20000"}), FaultClass::Retryable, "20000"),
        (json!({"code": "40002"}), FaultClass::Permanent, "40002"),
        (
            json!({"code": "40004", "sub_code": "x"}),
            FaultClass::Retryable,
            "unclassifiable",
        ),
        (json!([1]), FaultClass::Retryable, "unclassifiable"),
    ];
    for (answer, class, code) in cases {
        let err = b(answer.clone()).unwrap_err();
        assert_eq!((err.class, err.code.as_str()), (class, code), "{answer}");
    }
}

/// The failures every method shares, under every code they can come with: each method
/// classifies them as [`common_failure`] does (a bill URL answer names no order, the
/// others' answers are about ours).
#[test]
fn every_method_agrees_with_common_failure() {
    let codes = [
        json!("20000"),
        json!("20001"),
        json!("40001"),
        json!("40002"),
        json!(40002),
        json!("40004"),
        json!("40006"),
        json!("99999"),
        json!(1.5),
        json!(null),
    ];
    let subs = [
        json!(null),
        json!("ACQ.SYSTEM_ERROR"),
        json!("ACQ.INVALID_PARAMETER"),
        json!("isp.unknow-error"),
        json!("isv.invalid-signature"),
        json!("ACQ.SOMETHING_NEW"),
        json!(""),
        json!(7),
    ];
    let mut checked = 0;
    for code in &codes {
        for sub in &subs {
            let answer = json!({"code": code, "msg": "m", "sub_code": sub, "sub_msg": "s",
                "out_trade_no": "ORD-1"});
            let status: Status = read(&answer.to_string()).unwrap();
            let expected = common_failure(&status);
            let expected = (expected.class, expected.code);
            assert_eq!(
                class_and_code(q(answer.clone())),
                expected,
                "query {answer}"
            );
            assert_eq!(
                class_and_code(c(answer.clone())),
                expected,
                "close {answer}"
            );
            assert_eq!(
                class_and_code(r(answer.clone())),
                expected,
                "refund {answer}"
            );
            assert_eq!(class_and_code(b(answer.clone())), expected, "bill {answer}");
            checked += 1;
        }
    }
    assert_eq!(checked, codes.len() * subs.len());
    // And the shared table itself.
    let common = |v: Value| {
        let e = common_failure(&read::<Status>(&v.to_string()).unwrap());
        (e.class, e.code)
    };
    for (answer, class, code) in [
        (json!({"code":"20000"}), FaultClass::Retryable, "20000"),
        (json!({"code":"20001"}), FaultClass::Permanent, "20001"),
        (json!({"code":"40001"}), FaultClass::Permanent, "40001"),
        (json!({"code":40002}), FaultClass::Permanent, "40002"),
        (json!({"code":"40006"}), FaultClass::Permanent, "40006"),
        (
            json!({"code":"20000","sub_code":"ACQ.INVALID_PARAMETER"}),
            FaultClass::Permanent,
            "ACQ.INVALID_PARAMETER",
        ),
        (
            json!({"code":"40002","sub_code":"ACQ.SYSTEM_ERROR"}),
            FaultClass::Retryable,
            "ACQ.SYSTEM_ERROR",
        ),
        (
            json!({"code":"40004"}),
            FaultClass::Retryable,
            "unclassifiable",
        ),
        (json!({}), FaultClass::Retryable, "unclassifiable"),
    ] {
        assert_eq!(common(answer.clone()), (class, code.to_owned()), "{answer}");
    }
}
