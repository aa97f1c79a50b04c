//! The simulator's WeChat Pay answers before they are signed: the error bodies in WeChat
//! Pay's words, and each call's answer to the trades as the store has them, applied (a
//! close closes, a refund refunds) or only previewed (a faulted answer that must look
//! real changes no trade). The bill answer makes the day's bill and keeps it for its
//! download. A refund's parameters ([`RefundAsk`]) are here, read in `request.rs`.

use axum::http::StatusCode;
use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::WechatSim;
use super::bill::{bill_csv, gzip_with_digest, servable};
use crate::state::{CloseOutcome, RefundOutcome, SimState, china_date};
use order_closer_wechat::{CHANNEL, format_time};

/// The body of a refund request.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RefundAsk {
    pub(super) out_trade_no: String,
    pub(super) out_refund_no: String,
    pub(super) amount: RefundAmount,
}

/// A refund request's `amount`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RefundAmount {
    pub(super) refund: i64,
    pub(super) total: i64,
    #[serde(default)]
    pub(super) currency: Option<String>,
}

/// An answer before it is signed.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: String,
}

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    Reply {
        status,
        body: json!({"code": code, "message": message}).to_string(),
    }
}

/// WeChat's answer to a request whose parameters are wrong: 400 `PARAM_ERROR`.
pub(super) fn param_error(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, "PARAM_ERROR", message)
}

fn ok(value: &Value) -> Reply {
    Reply {
        status: StatusCode::OK,
        body: value.to_string(),
    }
}

/// The answer to a transaction query.
pub(super) fn query_answer(state: &SimState, sim: &WechatSim, no: &str) -> Reply {
    match state.gateway_query(CHANNEL, Some(no), None) {
        Some(trade) => ok(&sim.transaction(&trade, &sim.mchid)),
        None => error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
    }
}

/// The answer to a close, applied (the trade closes) or previewed.
pub(super) fn close_answer(state: &SimState, no: &str, apply: bool) -> Reply {
    match state.gateway_close(CHANNEL, Some(no), None, apply) {
        CloseOutcome::StatusError(t) if t.paid_at.is_some() => {
            error(StatusCode::BAD_REQUEST, "ORDER_PAID", "订单已支付")
        }
        _ => Reply {
            status: StatusCode::NO_CONTENT,
            body: String::new(),
        },
    }
}

/// The answer to a refund, applied (the trade is refunded) or previewed.
pub(super) fn refund_answer(state: &SimState, ask: &RefundAsk, apply: bool) -> Reply {
    if let Some(trade) = state.gateway_query(CHANNEL, Some(&ask.out_trade_no), None)
        && trade.amount_minor != ask.amount.total
    {
        return param_error("订单金额与实际不符");
    }
    match state.gateway_refund(
        CHANNEL,
        Some(&ask.out_trade_no),
        None,
        &ask.out_refund_no,
        ask.amount.refund,
        apply,
    ) {
        RefundOutcome::Refunded { trade, .. } => {
            let refund = trade
                .refunds
                .iter()
                .find(|r| r.out_request_no.as_deref() == Some(ask.out_refund_no.as_str()));
            let at = refund.map_or_else(Utc::now, |r| r.refunded_at);
            ok(&json!({
                "refund_id": refund.map(|r| r.refund_no.clone()).unwrap_or_default(),
                "out_refund_no": ask.out_refund_no,
                "transaction_id": trade.trade_no,
                "out_trade_no": trade.out_trade_no,
                "channel": "ORIGINAL",
                "user_received_account": "支付用户零钱",
                "status": "SUCCESS",
                "create_time": format_time(at),
                "success_time": format_time(at),
                "amount": {"total": trade.amount_minor, "refund": ask.amount.refund,
                           "payer_total": trade.amount_minor, "payer_refund": ask.amount.refund,
                           "currency": "CNY"},
            }))
        }
        RefundOutcome::NotFound => {
            error(StatusCode::NOT_FOUND, "RESOURCE_NOT_EXISTS", "订单不存在")
        }
        RefundOutcome::StatusError(_) => {
            error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "订单状态不正确")
        }
        RefundOutcome::AmountError(_) => param_error("退款金额超过可退金额"),
        // `out_refund_no` is unique per merchant. WeChat answers a business rule
        // broken with 400 INVALID_REQUEST; the exact message is not documented.
        RefundOutcome::NumberTaken(_) => error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "商户退款单号已被其他订单使用",
        ),
    }
}

/// The bill of a day: made now, kept for the download its answer points at.
pub(super) fn bill_answer(
    state: &SimState,
    sim: &WechatSim,
    date: Option<NaiveDate>,
    origin: &str,
) -> Reply {
    let Some(date) = date.filter(|d| servable(*d, china_date(Utc::now()))) else {
        return param_error("账单日期不正确");
    };
    let rows = state.bill_rows(CHANNEL, date);
    if rows.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "NO_STATEMENT_EXIST",
            "请求的账单文件不存在",
        );
    }
    let Ok((gz, sha1)) = gzip_with_digest(&bill_csv(&sim.mchid, &rows)) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SYSTEM_ERROR",
            "账单生成失败",
        );
    };
    let token = state.issue_bill_token(date);
    sim.keep_bill(&token, gz);
    ok(&json!({
        "hash_type": "SHA1",
        "hash_value": sha1,
        "download_url": format!("{origin}/v3/billdownload/file?token={token}"),
    }))
}
