//! WeChat Pay API v3's wire protocol in the simulator: every request authenticated by its
//! `Authorization` header (fields in any order, the merchant's serial, a timestamp within
//! 5 minutes, SHA256withRSA over the exact method, URI and body), every answer signed
//! with the `Wechatpay-*` headers, `Wechatpay-Signature-Type: WECHATPAY2-SHA256-RSA2048`
//! among them (the bill file itself excepted, as on WeChat Pay), every time in whole
//! seconds (`2015-05-20T13:29:35+08:00`), the faults of the current
//! [`FaultPlan`](crate::FaultPlan) shown as WeChat Pay would.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v3/pay/transactions/out-trade-no/{no}?mchid=` | 200 the transaction; 404 `ORDER_NOT_EXIST` |
//! | `POST /v3/pay/transactions/out-trade-no/{no}/close` | 204 (also for an unknown or closed order, as WeChat Pay does); 400 `ORDER_PAID` for a paid one (v3 code unverified: the simulator's assumption) |
//! | `POST /v3/refund/domestic/refunds` | 200 `SUCCESS` at once (WeChat Pay answers `PROCESSING` first; the client handles both), the same `out_refund_no` answering the same refund; `out_refund_no` is unique per merchant: used on another trade, 400 `INVALID_REQUEST` |
//! | `GET /v3/bill/tradebill?bill_date=&bill_type=ALL&tar_type=GZIP` | 200 `{hash_type, hash_value, download_url}`; 400 `NO_STATEMENT_EXIST` for a day without trades |
//! | `GET /v3/billdownload/file?token=` | the gzipped bill, unsigned; 400 `INVALID_REQUEST` once expired |
//!
//! A request that does not authenticate gets an unsigned 401 `SIGN_ERROR`.
//!
//! A request is read and authenticated in `request.rs`; its answer is built in
//! `answers.rs`, signed here.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Value, json};

use super::WechatSim;
use super::answers::{Reply, bill_answer, close_answer, error, query_answer, refund_answer};
use super::request::{
    Arrived, Call, arrived, authenticate, read_close, read_query, read_refund, read_tradebill,
    sign_error,
};
use crate::shared::{
    Shared, bad_gateway_page, detached, dropped_connection, empty_json, maintenance_page,
    shutting_down, truncated,
};
use crate::state::{BillFetch, FaultKind};
use order_closer_gateway::rsa::RsaPrivateKey;
use order_closer_wechat::CHANNEL;
use order_closer_wechat::sign;

/// A request handler's view: what every gateway shares, and WeChat Pay's keys.
#[derive(Clone)]
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    sim: Arc<WechatSim>,
}

impl std::ops::Deref for Ctx {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// WeChat Pay's routes.
pub(crate) fn routes(shared: Arc<Shared>, sim: Arc<WechatSim>) -> Router {
    Router::new()
        .route("/v3/pay/transactions/out-trade-no/{no}", get(query))
        .route("/v3/pay/transactions/out-trade-no/{no}/close", post(close))
        .route("/v3/refund/domestic/refunds", post(refund))
        .route("/v3/bill/tradebill", get(tradebill))
        .route("/v3/billdownload/file", get(download))
        .with_state(Ctx { shared, sim })
}

/// The reply signed with `key` (WeChat Pay's, or another for `bad_signature`), body as
/// signed unless `sent` replaces it.
fn signed(ctx: &Ctx, reply: Reply, key: &RsaPrivateKey, sent: Option<String>) -> Response {
    let headers = match sign::signature_headers(
        key,
        &ctx.sim.platform_serial,
        reply.body.as_bytes(),
        Utc::now(),
    ) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "simulator could not sign its answer");
            return (StatusCode::INTERNAL_SERVER_ERROR, "signing failed").into_response();
        }
    };
    let body = sent.unwrap_or(reply.body);
    let mut response = (reply.status, body).into_response();
    let map = response.headers_mut();
    for (name, value) in headers {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            map.insert(name, v);
        }
    }
    if reply.status != StatusCode::NO_CONTENT {
        map.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    }
    response
}

fn genuine(ctx: &Ctx, reply: Reply) -> Response {
    signed(ctx, reply, &ctx.sim.platform_key.clone(), None)
}

/// Authenticates, reads the call, draws the fault, answers.
async fn serve(
    ctx: Ctx,
    arrived: Arrived,
    read: impl FnOnce(&Ctx, &Arrived) -> Result<Call, Reply>,
) -> Response {
    ctx.state.count_request();
    if let Err(why) = authenticate(
        &ctx.sim,
        &arrived.method,
        &arrived.uri,
        &arrived.headers,
        &arrived.body,
    ) {
        ctx.state.count_signature_failure();
        tracing::debug!(why, "simulator: a WeChat Pay request does not authenticate");
        if !ctx.pause(ctx.state.latency_for(None)).await {
            return shutting_down();
        }
        return sign_error(&why);
    }
    let call = match read(&ctx, &arrived) {
        Ok(call) => call,
        Err(reply) => {
            ctx.state.count_rejected();
            return genuine(&ctx, reply);
        }
    };
    let decision = ctx
        .state
        .fault_for(CHANNEL, call.method(), call.out_trade_no(), None);
    if !ctx.pause(decision.latency).await {
        return shutting_down();
    }
    match decision.fault {
        None => genuine(&ctx, answer(&ctx, &call, true)),
        Some(kind) => inject(&ctx, &call, kind, decision.hold).await,
    }
}

async fn query(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    Path(no): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = arrived(Method::GET, &uri, headers, body);
    detached(serve(ctx, a, move |ctx, a| read_query(&ctx.sim, a, no))).await
}

async fn close(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    Path(no): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = arrived(Method::POST, &uri, headers, body);
    detached(serve(ctx, a, move |ctx, a| read_close(&ctx.sim, a, no))).await
}

async fn refund(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = arrived(Method::POST, &uri, headers, body);
    detached(serve(ctx, a, |_, a| read_refund(a))).await
}

async fn tradebill(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = ctx.origin(&headers);
    let a = arrived(Method::GET, &uri, headers, body);
    detached(serve(ctx, a, move |_, a| read_tradebill(a, origin))).await
}

/// `GET /v3/billdownload/file?token=`: signed request, unsigned answer.
async fn download(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = arrived(Method::GET, &uri, headers, body);
    if let Err(why) = authenticate(&ctx.sim, &a.method, &a.uri, &a.headers, &a.body) {
        ctx.state.count_signature_failure();
        return sign_error(&why);
    }
    let token = a
        .uri
        .split_once("token=")
        .map(|(_, t)| t.split('&').next().unwrap_or("").to_owned())
        .unwrap_or_default();
    let expired = || error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "下载链接已失效");
    let reply = match ctx.state.fetch_bill(&token) {
        BillFetch::Unknown => Err(error(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_EXISTS",
            "账单不存在",
        )),
        BillFetch::Expired => Err(expired()),
        BillFetch::Ready {
            override_body: Some(bytes),
            ..
        } => Ok(bytes),
        BillFetch::Ready { .. } => ctx
            .sim
            .bills
            .lock()
            .ok()
            .and_then(|b| b.get(&token).map(|(_, gz)| gz.clone()))
            .ok_or_else(expired),
    };
    match reply {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(reply) => (
            reply.status,
            [(header::CONTENT_TYPE, "application/json")],
            reply.body,
        )
            .into_response(),
    }
}

/// The answer to a call, applied (a close closes, a refund refunds) or previewed.
fn answer(ctx: &Ctx, call: &Call, apply: bool) -> Reply {
    match call {
        Call::Query { no } => query_answer(&ctx.state, &ctx.sim, no),
        Call::Close { no } => close_answer(&ctx.state, no, apply),
        Call::Refund(ask) => refund_answer(&ctx.state, ask, apply),
        Call::Bill { date, origin } => bill_answer(&ctx.state, &ctx.sim, *date, origin),
    }
}

/// Builds the faulted response. Nothing here changes a trade except
/// [`FaultKind::TimeoutAfterApply`], which applies the request before withholding it.
async fn inject(ctx: &Ctx, call: &Call, kind: FaultKind, hold: Duration) -> Response {
    let preview = || answer(ctx, call, false);
    let key = ctx.sim.platform_key.clone();
    match kind {
        FaultKind::Http502 => bad_gateway_page(),
        FaultKind::Busy20000 => genuine(
            ctx,
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "FREQUENCY_LIMITED",
                "频率超限",
            ),
        ),
        FaultKind::SystemError => genuine(
            ctx,
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SYSTEM_ERROR",
                "系统错误",
            ),
        ),
        FaultKind::Timeout => {
            ctx.pause(hold).await;
            dropped_connection()
        }
        FaultKind::TimeoutAfterApply => {
            let response = genuine(ctx, answer(ctx, call, true));
            if ctx.pause(hold).await {
                response
            } else {
                dropped_connection()
            }
        }
        FaultKind::Html => maintenance_page(),
        FaultKind::TruncatedJson => {
            let reply = preview();
            let cut = truncated(&reply.body);
            signed(ctx, reply, &key, Some(cut))
        }
        FaultKind::BadSignature => match ctx.sim.other_key() {
            Some(other) => signed(ctx, preview(), other, None),
            None => (StatusCode::INTERNAL_SERVER_ERROR, "no second key").into_response(),
        },
        FaultKind::WrongOrder => {
            let mut reply = preview();
            if let Ok(mut v) = serde_json::from_str::<Value>(&reply.body)
                && let Some(object) = v.as_object_mut()
            {
                let asked = call.out_trade_no().unwrap_or("ORDER");
                object.insert("out_trade_no".into(), json!(format!("{asked}-OTHER")));
                reply.body = v.to_string();
            }
            genuine(ctx, reply)
        }
        FaultKind::WrongAmount => {
            let mut reply = preview();
            if let Ok(mut v) = serde_json::from_str::<Value>(&reply.body)
                && let Some(amount) = v.get_mut("amount").and_then(Value::as_object_mut)
            {
                for name in ["total", "payer_total"] {
                    if let Some(n) = amount.get(name).and_then(Value::as_i64) {
                        amount.insert(name.into(), json!(n.saturating_add(1)));
                    }
                }
                reply.body = v.to_string();
            }
            genuine(ctx, reply)
        }
        FaultKind::EmptyBody => empty_json(),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
