//! Reading WeChat Pay's answers: a status and a JSON body (an error body is
//! `{"code":"...","message":"..."}`), classified for the decision. Pure functions.
//!
//! | call | answer | class |
//! |---|---|---|
//! | query | 200, `trade_state` `SUCCESS` | paid |
//! | query | 200, `REFUND` | refunded (paid, then given back in whole or in part: the order is closed with a `refunded_before_deadline` anomaly) |
//! | query | 200, `NOTPAY`, `PAYERROR` | waiting, closeable (a failed payment may be tried again: closing it is the safe step) |
//! | query | 200, `CLOSED`, `REVOKED` | closed |
//! | query | 200, `USERPAYING`, `ACCEPT` | in progress |
//! | query | 404 `ORDER_NOT_EXIST` | not found |
//! | close | 204 | taken, unconfirmed (WeChat answers 204 to any close, of an unknown or a paid order too: the protocol queries again) |
//! | close | 400 `ORDER_CLOSED` | closed |
//! | close | `ORDER_PAID`, `ORDERPAID` (v3 code unverified) | not closeable: query again |
//! | close | `202 USER_PAYING` (the close-order page), `USERPAYING` | retryable as `buyer_paying`: the buyer is paying now, retry later |
//! | close | `INVALID_REQUEST`, `RULE_LIMIT`, `TRADE_ERROR` | retryable (a close refused soon after creation is retryable, never fatal; the code is unverified) |
//! | any | 429, 5xx, `SYSTEM_ERROR`, `BANK_ERROR`, `FREQUENCY_LIMITED` | retryable (429 and `FREQUENCY_LIMITED` are throttling: the account's shared quota slows down) |
//! | any | `PARAM_ERROR`, `SIGN_ERROR`, `APPID_MCHID_NOT_MATCH`, `MCH_NOT_EXISTS`, `NO_AUTH`, `INVALID_REQUEST` (query) | permanent |
//! | any | anything else, an answer about another order or merchant (or naming none), a payment in another currency, an unknown state | retryable, never closed |

use chrono::{DateTime, Utc};
use serde_json::Value;

use order_closer_gateway::http::echo;
use order_closer_gateway::{CloseAnswer, GatewayError, RefundAnswer, TradeState};

/// The fields of an error body.
fn error_code(body: &Value) -> (String, String) {
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(echo)
            .unwrap_or_default()
    };
    (text("code"), text("message"))
}

/// The class of an error answer no call treats specially.
fn common_error(status: u16, code: &str, message: &str) -> GatewayError {
    let detail = format!("HTTP {status} {code}: {message}");
    match code {
        "FREQUENCY_LIMITED" => GatewayError::throttled(code, detail),
        "SYSTEM_ERROR" | "BANK_ERROR" => GatewayError::retryable(code, detail),
        "PARAM_ERROR"
        | "SIGN_ERROR"
        | "APPID_MCHID_NOT_MATCH"
        | "MCH_NOT_EXISTS"
        | "NO_AUTH"
        | "INVALID_REQUEST" => GatewayError::permanent(code, detail),
        _ if status == 429 || status >= 500 => {
            let code = if code.is_empty() {
                format!("http_{status}")
            } else {
                code.to_owned()
            };
            GatewayError::at_status(status, code, detail)
        }
        _ => unclassifiable(format!("unrecognised answer: {detail}")),
    }
}

/// The code of a close refused because the buyer is paying right now (the decision
/// table's code for a query that says so).
const BUYER_PAYING: &str = "buyer_paying";

fn unclassifiable(why: impl Into<String>) -> GatewayError {
    GatewayError::retryable("unclassifiable", why)
}

/// The answer names our order at our merchant.
fn check_order(body: &Value, asked: &str, mchid: &str) -> Result<(), GatewayError> {
    let named = body.get("out_trade_no").and_then(Value::as_str);
    if named != Some(asked) {
        return Err(GatewayError::retryable(
            "wrong_order",
            format!(
                "asked about {asked:?}, the answer is about {:?}",
                named.map(echo)
            ),
        ));
    }
    // Required: a transaction that names no merchant is not shown to be ours.
    match body.get("mchid").and_then(Value::as_str) {
        Some(m) if m == mchid => Ok(()),
        Some(m) => Err(GatewayError::retryable(
            "wrong_merchant",
            format!("the answer names merchant {:?}, not ours", echo(m)),
        )),
        None => Err(GatewayError::retryable(
            "wrong_merchant",
            "the answer names no merchant (mchid)",
        )),
    }
}

/// A paid transaction's `amount.currency` is our orders' (WeChat's orders are in CNY
/// only, [`RULES`](super::RULES)): an amount in another currency is not the order's
/// amount. Absent, it is CNY (the only currency of a domestic merchant).
fn check_currency(body: &Value) -> Result<(), GatewayError> {
    match body.pointer("/amount/currency") {
        None => Ok(()),
        Some(Value::String(c)) if super::RULES.currencies.contains(&c.as_str()) => Ok(()),
        Some(other) => Err(GatewayError::retryable(
            "wrong_currency",
            format!(
                "the payment is in {}, not in our orders' currency ({})",
                echo(&other.to_string()),
                super::RULES.currencies.join(", ")
            ),
        )),
    }
}

/// A `transaction` (a query answer, or a notification's decrypted resource) as a trade
/// state; `asked` and `mchid` must be ours.
pub fn classify_transaction(
    body: &Value,
    asked: &str,
    mchid: &str,
) -> Result<TradeState, GatewayError> {
    if !body.is_object() {
        return Err(unclassifiable("the answer is not a JSON object"));
    }
    check_order(body, asked, mchid)?;
    let state = body
        .get("trade_state")
        .and_then(Value::as_str)
        .ok_or_else(|| unclassifiable("the answer has no trade_state"))?;
    match state {
        // REFUND: paid, then given back (in whole or in part: the answer does not say).
        "SUCCESS" | "REFUND" => {
            let trade_no = body
                .get("transaction_id")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| unclassifiable("a paid trade without transaction_id"))?;
            check_currency(body)?;
            let amount_minor = body
                .pointer("/amount/total")
                .and_then(Value::as_i64)
                .filter(|a| *a >= 0)
                .ok_or_else(|| unclassifiable("a paid trade without amount.total"))?;
            let paid_at = body
                .get("success_time")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            let trade_no = trade_no.to_owned();
            Ok(if state == "REFUND" {
                TradeState::Refunded {
                    trade_no,
                    amount_minor,
                    paid_at,
                }
            } else {
                TradeState::Paid {
                    trade_no,
                    amount_minor,
                    paid_at,
                }
            })
        }
        "NOTPAY" | "PAYERROR" => Ok(TradeState::WaitingForPayment),
        "CLOSED" | "REVOKED" => Ok(TradeState::Closed),
        "USERPAYING" | "ACCEPT" => Ok(TradeState::InProgress),
        other => Err(unclassifiable(format!(
            "trade_state {:?} is not one this client knows",
            echo(other)
        ))),
    }
}

/// A query answer (`status`, parsed body; its signature checked).
pub fn classify_query(
    status: u16,
    body: &Value,
    asked: &str,
    mchid: &str,
) -> Result<TradeState, GatewayError> {
    if status == 200 {
        return classify_transaction(body, asked, mchid);
    }
    // An error body names no order; one that names another is not about ours.
    if let Some(named) = body.get("out_trade_no").and_then(Value::as_str)
        && named != asked
    {
        return Err(GatewayError::retryable(
            "wrong_order",
            format!(
                "asked about {asked:?}, the answer is about {:?}",
                echo(named)
            ),
        ));
    }
    let (code, message) = error_code(body);
    match code.as_str() {
        "ORDER_NOT_EXIST" => Ok(TradeState::NotFound),
        "ORDER_CLOSED" => Ok(TradeState::Closed),
        _ => Err(common_error(status, &code, &message)),
    }
}

/// A close answer.
pub fn classify_close(status: u16, body: &Value) -> Result<CloseAnswer, GatewayError> {
    if status == 204 {
        return Ok(CloseAnswer::Unconfirmed);
    }
    let (code, message) = error_code(body);
    match code.as_str() {
        "ORDER_CLOSED" => Ok(CloseAnswer::Closed),
        "ORDER_PAID" | "ORDERPAID" => Ok(CloseAnswer::NotCloseable { sub_code: code }),
        // The close-order page documents `202 USER_PAYING`; v2 and the query say
        // `USERPAYING`: either way the buyer is paying now, as a query's `USERPAYING`.
        "USER_PAYING" | "USERPAYING" => Err(GatewayError::retryable(
            BUYER_PAYING,
            format!("HTTP {status} {code}: {message} (the buyer is paying right now: retry later)"),
        )),
        "INVALID_REQUEST" | "RULE_LIMIT" | "TRADE_ERROR" => Err(GatewayError::retryable(
            code.clone(),
            format!("HTTP {status} {code}: {message}"),
        )),
        _ => Err(common_error(status, &code, &message)),
    }
}

/// A refund answer: `SUCCESS` is done; `PROCESSING` is retried (the same
/// `out_refund_no` asks WeChat about the same refund); `CLOSED` and `ABNORMAL` need an
/// operator.
pub fn classify_refund(
    status: u16,
    body: &Value,
    raw: String,
    asked: &str,
) -> Result<RefundAnswer, GatewayError> {
    if status != 200 {
        let (code, message) = error_code(body);
        let detail = format!("HTTP {status} {code}: {message}");
        return Err(match code.as_str() {
            "NOT_ENOUGH" => GatewayError::retryable(code.clone(), detail),
            "USER_ACCOUNT_ABNORMAL" | "RESOURCE_NOT_EXISTS" => {
                GatewayError::permanent(code.clone(), detail)
            }
            _ => common_error(status, &code, &message),
        });
    }
    if body.get("out_trade_no").and_then(Value::as_str) != Some(asked) {
        return Err(GatewayError::retryable(
            "wrong_order",
            format!("the refund answer is not about {asked:?}"),
        ));
    }
    let refunded = body.pointer("/amount/refund").and_then(Value::as_i64);
    match body.get("status").and_then(Value::as_str) {
        Some("SUCCESS") => Ok(RefundAnswer {
            refunded_minor: refunded.unwrap_or_default(),
            // WeChat does not say whether this very call moved the money.
            fund_change: true,
            raw,
        }),
        Some("PROCESSING") => Err(GatewayError::retryable(
            "refund_processing",
            "WeChat Pay is still processing the refund",
        )),
        Some(s @ ("CLOSED" | "ABNORMAL")) => Err(GatewayError::permanent(
            format!("refund_{}", s.to_ascii_lowercase()),
            format!("WeChat Pay reports the refund {s}: an operator must look"),
        )),
        other => Err(unclassifiable(format!(
            "refund status {:?} is not one this client knows",
            other.map(echo)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_closer_gateway::FaultClass;
    use serde_json::json;

    const MCH: &str = "1900000109";

    fn paid(state: &str) -> Value {
        json!({"mchid": MCH, "out_trade_no": "W1", "transaction_id": "4200001", "trade_state": state,
               "amount": {"total": 990, "payer_total": 990, "currency": "CNY"},
               "success_time": "2026-11-21T10:55:23+08:00"})
    }

    #[test]
    fn every_trade_state_has_its_class() {
        let q = |v: Value| classify_query(200, &v, "W1", MCH);
        match q(paid("SUCCESS")).unwrap() {
            TradeState::Paid {
                trade_no,
                amount_minor,
                paid_at,
            } => {
                assert_eq!((trade_no.as_str(), amount_minor), ("4200001", 990));
                assert_eq!(paid_at.unwrap().to_rfc3339(), "2026-11-21T02:55:23+00:00");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(q(paid("REFUND")), Ok(TradeState::Refunded { .. })));
        for (state, expected) in [
            ("NOTPAY", TradeState::WaitingForPayment),
            ("PAYERROR", TradeState::WaitingForPayment),
            ("CLOSED", TradeState::Closed),
            ("REVOKED", TradeState::Closed),
            ("USERPAYING", TradeState::InProgress),
            ("ACCEPT", TradeState::InProgress),
        ] {
            let body = json!({"mchid": MCH, "out_trade_no": "W1", "trade_state": state});
            assert_eq!(q(body), Ok(expected), "{state}");
        }
        let unknown = json!({"mchid": MCH, "out_trade_no": "W1", "trade_state": "LATER"});
        assert_eq!(q(unknown).unwrap_err().code, "unclassifiable");
        let other = json!({"mchid": MCH, "out_trade_no": "W2", "trade_state": "SUCCESS"});
        assert_eq!(q(other).unwrap_err().code, "wrong_order");
        let other_mch = json!({"mchid": "1", "out_trade_no": "W1", "trade_state": "NOTPAY"});
        assert_eq!(q(other_mch).unwrap_err().code, "wrong_merchant");
        let no_amount = json!({"mchid": MCH, "out_trade_no": "W1", "trade_state": "SUCCESS", "transaction_id": "4"});
        assert_eq!(q(no_amount).unwrap_err().class, FaultClass::Retryable);
    }

    #[test]
    fn every_error_code_has_its_class() {
        let e = |_status: u16, code: &str| json!({"code": code, "message": "m"});
        assert_eq!(
            classify_query(404, &e(404, "ORDER_NOT_EXIST"), "W1", MCH),
            Ok(TradeState::NotFound)
        );
        assert_eq!(
            classify_query(400, &e(400, "ORDER_CLOSED"), "W1", MCH),
            Ok(TradeState::Closed)
        );
        // The last column: whether the answer asks the account to send less.
        for (status, code, class, throttle) in [
            (500, "SYSTEM_ERROR", FaultClass::Retryable, false),
            (500, "BANK_ERROR", FaultClass::Retryable, false),
            (429, "FREQUENCY_LIMITED", FaultClass::Retryable, true),
            (403, "FREQUENCY_LIMITED", FaultClass::Retryable, true),
            (429, "", FaultClass::Retryable, true),
            (429, "SOMETHING_NEW", FaultClass::Retryable, true),
            (502, "", FaultClass::Retryable, false),
            (400, "PARAM_ERROR", FaultClass::Permanent, false),
            (401, "SIGN_ERROR", FaultClass::Permanent, false),
            (400, "APPID_MCHID_NOT_MATCH", FaultClass::Permanent, false),
            (400, "INVALID_REQUEST", FaultClass::Permanent, false),
            (403, "NO_AUTH", FaultClass::Permanent, false),
            (418, "SOMETHING_NEW", FaultClass::Retryable, false),
        ] {
            let err = classify_query(status, &e(status, code), "W1", MCH).unwrap_err();
            assert_eq!(err.class, class, "{status} {code}");
            assert_eq!(err.is_throttle(), throttle, "{status} {code}");
        }
        assert_eq!(
            classify_query(502, &json!("<html>"), "W1", MCH)
                .unwrap_err()
                .code,
            "http_502"
        );
    }

    #[test]
    fn close_answers() {
        assert_eq!(
            classify_close(204, &Value::Null),
            Ok(CloseAnswer::Unconfirmed)
        );
        assert_eq!(
            classify_close(400, &json!({"code":"ORDER_CLOSED"})),
            Ok(CloseAnswer::Closed)
        );
        assert!(matches!(
            classify_close(400, &json!({"code":"ORDER_PAID"})),
            Ok(CloseAnswer::NotCloseable { .. })
        ));
        for code in ["INVALID_REQUEST", "RULE_LIMIT", "SYSTEM_ERROR"] {
            let err = classify_close(400, &json!({"code": code})).unwrap_err();
            assert_eq!(err.class, FaultClass::Retryable, "{code}");
        }
        let err = classify_close(401, &json!({"code":"SIGN_ERROR"})).unwrap_err();
        assert_eq!(err.class, FaultClass::Permanent);
    }

    #[test]
    fn refund_answers() {
        let r = |status: u16, v: Value| classify_refund(status, &v, "raw".into(), "W1");
        let done = r(
            200,
            json!({"out_trade_no":"W1","status":"SUCCESS","amount":{"refund":990}}),
        )
        .unwrap();
        assert_eq!((done.refunded_minor, done.raw.as_str()), (990, "raw"));
        assert_eq!(
            r(200, json!({"out_trade_no":"W1","status":"PROCESSING"}))
                .unwrap_err()
                .code,
            "refund_processing"
        );
        let closed = r(200, json!({"out_trade_no":"W1","status":"CLOSED"})).unwrap_err();
        assert_eq!(
            (closed.class, closed.code.as_str()),
            (FaultClass::Permanent, "refund_closed")
        );
        assert_eq!(
            r(200, json!({"out_trade_no":"W2","status":"SUCCESS"}))
                .unwrap_err()
                .code,
            "wrong_order"
        );
        assert_eq!(
            r(403, json!({"code":"NOT_ENOUGH"})).unwrap_err().class,
            FaultClass::Retryable
        );
        assert_eq!(
            r(404, json!({"code":"RESOURCE_NOT_EXISTS"}))
                .unwrap_err()
                .class,
            FaultClass::Permanent
        );
    }

    #[test]
    fn a_close_while_the_buyer_pays_is_retried_later_in_both_spellings() {
        // The close-order page: HTTP 202 with `USER_PAYING`; v2 and the query spell it
        // `USERPAYING`. Neither is unclassifiable.
        for (status, code) in [
            (202, "USER_PAYING"),
            (400, "USERPAYING"),
            (202, "USERPAYING"),
        ] {
            let err = classify_close(status, &json!({"code": code, "message": "用户支付中"}))
                .unwrap_err();
            assert_eq!(
                (err.class, err.code.as_str()),
                (FaultClass::Retryable, "buyer_paying"),
                "{status} {code}"
            );
            assert!(err.message.contains(code), "{}", err.message);
            assert!(err.message.contains("paying right now"), "{}", err.message);
        }
    }

    #[test]
    fn a_transaction_must_name_our_merchant_and_be_paid_in_our_currency() {
        let q = |v: Value| classify_query(200, &v, "W1", MCH);
        let mut no_mchid = paid("SUCCESS");
        no_mchid.as_object_mut().unwrap().remove("mchid");
        let err = q(no_mchid).unwrap_err();
        assert_eq!(
            (err.class, err.code.as_str()),
            (FaultClass::Retryable, "wrong_merchant")
        );
        assert!(err.message.contains("names no merchant"), "{}", err.message);
        let unpaid_no_mchid = json!({"out_trade_no": "W1", "trade_state": "NOTPAY"});
        assert_eq!(q(unpaid_no_mchid).unwrap_err().code, "wrong_merchant");

        for currency in [json!("USD"), json!(""), json!(156)] {
            let mut other = paid("SUCCESS");
            other["amount"]["currency"] = currency.clone();
            let err = q(other).unwrap_err();
            assert_eq!(
                (err.class, err.code.as_str()),
                (FaultClass::Retryable, "wrong_currency"),
                "{currency}"
            );
        }
        // Absent: CNY, the only currency of a domestic merchant.
        let mut absent = paid("SUCCESS");
        absent["amount"].as_object_mut().unwrap().remove("currency");
        assert!(matches!(q(absent), Ok(TradeState::Paid { .. })));
    }
}
