//! The simulator's Alipay answer objects: the business errors in Alipay's words, each
//! method's answer to a trade as the store has it, and signing an answer as Alipay does.

use chrono::{NaiveDate, Utc};
use serde_json::{Map, Value, json};

use crate::state::{
    CloseOutcome, RefundOutcome, SimState, SimTradeStatus, SimTradeView, china_date,
};
use order_closer_alipay::format_china_time;
use order_closer_core::money::format_minor;
use order_closer_gateway::rsa::RsaPrivateKey;

/// The business parameters of a bill URL request.
pub(super) struct BillAsk {
    pub(super) bill_type: Option<String>,
    pub(super) bill_date: Option<String>,
}

/// An answer object plus the member name it goes under.
pub(super) struct Answer {
    pub(super) key: String,
    pub(super) object: Map<String, Value>,
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

pub(super) fn failure(key: &str, code: &str, msg: &str, sub_code: &str, sub_msg: &str) -> Answer {
    Answer {
        key: key.to_owned(),
        object: obj(json!({"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg})),
    }
}

pub(super) fn missing(key: &str, sub_code: &str, what: &str) -> Answer {
    failure(
        key,
        "40001",
        "Missing Required Arguments",
        sub_code,
        &format!("缺少{what}参数"),
    )
}

pub(super) fn invalid(key: &str, sub_code: &str, sub_msg: &str) -> Answer {
    failure(key, "40002", "Invalid Arguments", sub_code, sub_msg)
}

/// Signs the object's exact serialized bytes with `key` and writes
/// `{"<member>":<object>,"sign":"..."}`; `None` (logged) if signing fails.
pub(super) fn signed_body(key: &RsaPrivateKey, answer: Answer) -> Option<String> {
    let object = Value::Object(answer.object).to_string();
    match key.sign_base64(object.as_bytes()) {
        // The member is one of our fixed names and `sign` is base64: no escaping needed.
        Ok(sign) => Some(format!(
            "{{\"{}\":{object},\"sign\":\"{sign}\"}}",
            answer.key
        )),
        Err(e) => {
            tracing::error!(error = %e, "simulator could not sign its answer");
            None
        }
    }
}

/// A strict `yyyy-MM-dd` date.
fn bill_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|d| d.format("%Y-%m-%d").to_string() == text)
}

/// Answers a bill URL request (`key`: the answer's member name) from this server
/// (`origin`, as the client reached it): a fresh one-date download URL, or a business
/// failure.
pub(super) fn bill_url_answer(state: &SimState, key: &str, origin: &str, ask: &BillAsk) -> Answer {
    if ask.bill_type.as_deref() != Some("trade") {
        // Unverified sub-code: what Alipay answers for a bill_type it does not know.
        return failure(
            key,
            "40004",
            "Business Failed",
            "isv.invalid-bill-type",
            "账单类型不正确",
        );
    }
    let today = china_date(Utc::now());
    // Deviation: Alipay serves only past days; the simulator also serves today so far.
    let Some(date) = ask
        .bill_date
        .as_deref()
        .and_then(bill_date)
        .filter(|d| *d <= today)
    else {
        // Unverified sub-code: what Alipay answers for a malformed or future bill_date.
        return failure(
            key,
            "40004",
            "Business Failed",
            "isv.invalid-bill-date",
            "账单时间不正确",
        );
    };
    let token = state.issue_bill_token(date);
    Answer {
        key: key.to_owned(),
        object: obj(json!({
            "code": "10000",
            "msg": "Success",
            "bill_download_url": format!("{origin}/alipay/bills/{token}.zip"),
        })),
    }
}

pub(super) fn query_answer(
    key: String,
    asked: Option<&str>,
    trade: Option<SimTradeView>,
) -> Answer {
    let Some(t) = trade else {
        let mut object = obj(json!({
            "code": "40004",
            "msg": "Business Failed",
            "sub_code": "ACQ.TRADE_NOT_EXIST",
            "sub_msg": "交易不存在",
            "buyer_pay_amount": "0.00",
            "invoice_amount": "0.00",
            "point_amount": "0.00",
            "receipt_amount": "0.00",
        }));
        if let Some(no) = asked {
            object.insert("out_trade_no".into(), Value::String(no.to_owned()));
        }
        return Answer { key, object };
    };
    let paid = t.status == SimTradeStatus::TradeSuccess;
    let mut object = obj(json!({
        "code": "10000",
        "msg": "Success",
        "trade_no": t.trade_no,
        "out_trade_no": t.out_trade_no,
        "trade_status": t.status.as_str(),
        "total_amount": format_minor(t.amount_minor),
        "buyer_pay_amount": if paid { format_minor(t.amount_minor) } else { "0.00".to_owned() },
        "point_amount": "0.00",
        "invoice_amount": if paid { format_minor(t.amount_minor) } else { "0.00".to_owned() },
        "receipt_amount": if paid { format_minor(t.amount_minor) } else { "0.00".to_owned() },
    }));
    // A trade refunded in full reads TRADE_CLOSED but keeps its payment time: that is
    // how a client tells it from a trade closed unpaid.
    let refunded = t.status == SimTradeStatus::TradeClosed && !t.refunds.is_empty();
    if let Some(paid_at) = t.paid_at.filter(|_| paid || refunded) {
        object.insert(
            "send_pay_date".into(),
            Value::String(format_china_time(paid_at)),
        );
        object.insert(
            "buyer_logon_id".into(),
            Value::String("sim***@example.com".into()),
        );
        object.insert(
            "buyer_user_id".into(),
            Value::String("2088000000000001".into()),
        );
    }
    Answer { key, object }
}

pub(super) fn close_answer(key: String, asked: Option<&str>, outcome: CloseOutcome) -> Answer {
    match outcome {
        CloseOutcome::Closed(t) => Answer {
            key,
            object: obj(json!({
                "code": "10000",
                "msg": "Success",
                "trade_no": t.trade_no,
                "out_trade_no": t.out_trade_no,
            })),
        },
        CloseOutcome::NotFound => {
            let mut answer = failure(
                &key,
                "40004",
                "Business Failed",
                "ACQ.TRADE_NOT_EXIST",
                "交易不存在",
            );
            if let Some(no) = asked {
                answer
                    .object
                    .insert("out_trade_no".into(), Value::String(no.to_owned()));
            }
            answer
        }
        CloseOutcome::StatusError(t) => {
            let mut answer = failure(
                &key,
                "40004",
                "Business Failed",
                "ACQ.TRADE_STATUS_ERROR",
                "交易状态不合法",
            );
            answer
                .object
                .insert("trade_no".into(), Value::String(t.trade_no));
            answer
                .object
                .insert("out_trade_no".into(), Value::String(t.out_trade_no));
            answer
        }
    }
}

/// Alipay's `alipay_trade_refund_response`: `fund_change` says whether this request moved
/// money, `refund_fee` is everything refunded on the trade so far.
pub(super) fn refund_answer(key: String, asked: Option<&str>, outcome: RefundOutcome) -> Answer {
    let business = |sub_code: &str, sub_msg: &str, trade: Option<SimTradeView>| {
        let mut answer = failure(&key, "40004", "Business Failed", sub_code, sub_msg);
        let no = trade
            .as_ref()
            .map(|t| t.out_trade_no.clone())
            .or(asked.map(str::to_owned));
        if let Some(no) = no {
            answer
                .object
                .insert("out_trade_no".into(), Value::String(no));
        }
        answer
    };
    match outcome {
        RefundOutcome::Refunded { trade, fund_change } => Answer {
            key: key.clone(),
            object: obj(json!({
                "code": "10000",
                "msg": "Success",
                "trade_no": trade.trade_no,
                "out_trade_no": trade.out_trade_no,
                "buyer_logon_id": "sim***@example.com",
                "fund_change": if fund_change { "Y" } else { "N" },
                "refund_fee": format_minor(trade.amount_minor - trade.refundable_minor()),
                "gmt_refund_pay": format_china_time(trade.refunds.last().map_or_else(Utc::now, |r| r.refunded_at)),
            })),
        },
        RefundOutcome::NotFound => business("ACQ.TRADE_NOT_EXIST", "交易不存在", None),
        RefundOutcome::StatusError(t) => {
            business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法", Some(t))
        }
        RefundOutcome::AmountError(t) => {
            business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限", Some(t))
        }
        // Alipay holds `out_request_no` unique per trade (`AlipaySim` keeps the default
        // scope), so this is never served; were it, it is a parameter Alipay refuses.
        RefundOutcome::NumberTaken(t) => {
            business("ACQ.INVALID_PARAMETER", "退款请求号已被使用", Some(t))
        }
    }
}
