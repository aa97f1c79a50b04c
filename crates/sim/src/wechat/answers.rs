//! The simulator's WeChat Pay answers before they are signed: the error bodies in WeChat
//! Pay's words, and each call's answer to the trades as the store has them, applied (a
//! close closes, a refund refunds) or only previewed (a faulted answer that must look
//! real changes no trade). The bill answer makes the day's bill and keeps it for its
//! download.

use axum::http::StatusCode;
use chrono::{NaiveDate, Utc};
use serde_json::{Value, json};

use super::bill::{bill_csv, gzip_with_digest, servable};
use super::request::Call;
use super::server::Ctx;
use crate::state::{CloseOutcome, RefundOutcome, china_date};
use order_closer_wechat::{CHANNEL, format_time};

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

/// The answer to a call, applied (a close closes, a refund refunds) or previewed.
pub(super) fn answer(ctx: &Ctx, call: &Call, apply: bool) -> Reply {
    let state = &ctx.state;
    match call {
        Call::Query { no } => match state.gateway_query(CHANNEL, Some(no), None) {
            Some(trade) => ok(&ctx.sim.transaction(&trade, &ctx.sim.mchid)),
            None => error(StatusCode::NOT_FOUND, "ORDER_NOT_EXIST", "订单不存在"),
        },
        Call::Close { no } => match state.gateway_close(CHANNEL, Some(no), None, apply) {
            CloseOutcome::StatusError(t) if t.paid_at.is_some() => {
                error(StatusCode::BAD_REQUEST, "ORDER_PAID", "订单已支付")
            }
            _ => Reply {
                status: StatusCode::NO_CONTENT,
                body: String::new(),
            },
        },
        Call::Refund(ask) => {
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
        Call::Bill { date, origin } => bill_answer(ctx, *date, origin),
    }
}

/// The bill of a day: made now, kept for the download its answer points at.
fn bill_answer(ctx: &Ctx, date: Option<NaiveDate>, origin: &str) -> Reply {
    let Some(date) = date.filter(|d| servable(*d, china_date(Utc::now()))) else {
        return param_error("账单日期不正确");
    };
    let rows = ctx.state.bill_rows(CHANNEL, date);
    if rows.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "NO_STATEMENT_EXIST",
            "请求的账单文件不存在",
        );
    }
    let Ok((gz, sha1)) = gzip_with_digest(&bill_csv(&ctx.sim.mchid, &rows)) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SYSTEM_ERROR",
            "账单生成失败",
        );
    };
    let token = ctx.state.issue_bill_token(date);
    ctx.sim.keep_bill(&token, gz);
    ok(&json!({
        "hash_type": "SHA1",
        "hash_value": sha1,
        "download_url": format!("{origin}/v3/billdownload/file?token={token}"),
    }))
}
