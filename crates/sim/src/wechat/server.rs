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

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::WechatSim;
use super::bill::{bill_csv, gzip_with_digest, servable};
use crate::SimMethod;
use crate::shared::{
    Shared, bad_gateway_page, detached, dropped_connection, empty_json, maintenance_page,
    shutting_down, truncated,
};
use crate::state::{BillFetch, CloseOutcome, FaultKind, RefundOutcome, china_date};
use order_closer_gateway::rsa::RsaPrivateKey;
use order_closer_wechat::sign::{self, MAX_SKEW_SECS};
use order_closer_wechat::{CHANNEL, format_time};

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

/// What a request asks, once read.
#[derive(Debug, Clone)]
enum Call {
    Query {
        no: String,
    },
    Close {
        no: String,
    },
    Refund(RefundAsk),
    Bill {
        date: Option<NaiveDate>,
        origin: String,
    },
}

impl Call {
    fn method(&self) -> SimMethod {
        match self {
            Self::Query { .. } => SimMethod::Query,
            Self::Close { .. } => SimMethod::Close,
            Self::Refund(_) => SimMethod::Refund,
            Self::Bill { .. } => SimMethod::Bill,
        }
    }

    fn out_trade_no(&self) -> Option<&str> {
        match self {
            Self::Query { no } | Self::Close { no } => Some(no),
            Self::Refund(ask) => Some(&ask.out_trade_no),
            Self::Bill { .. } => None,
        }
    }
}

/// The body of a refund request.
#[derive(Debug, Clone, Deserialize)]
struct RefundAsk {
    out_trade_no: String,
    out_refund_no: String,
    amount: RefundAmount,
}

#[derive(Debug, Clone, Deserialize)]
struct RefundAmount {
    refund: i64,
    total: i64,
    #[serde(default)]
    currency: Option<String>,
}

/// An answer before it is signed.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    body: String,
}

fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    Reply {
        status,
        body: json!({"code": code, "message": message}).to_string(),
    }
}

/// WeChat's answer to a request whose parameters are wrong: 400 `PARAM_ERROR`.
fn param_error(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, "PARAM_ERROR", message)
}

fn ok(value: &Value) -> Reply {
    Reply {
        status: StatusCode::OK,
        body: value.to_string(),
    }
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

/// Checks a request's `Authorization`; the refusal is an unsigned 401 `SIGN_ERROR`.
fn authenticate(
    ctx: &Ctx,
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let auth = sign::parse_authorization(header)?;
    if auth.mchid != ctx.sim.mchid {
        return Err(format!("mchid {:?} is not the merchant here", auth.mchid));
    }
    if auth.serial_no != ctx.sim.merchant_serial {
        return Err("serial_no is not the merchant certificate's".into());
    }
    if (Utc::now().timestamp() - auth.timestamp).abs() >= MAX_SKEW_SECS {
        return Err("the timestamp is more than 5 minutes away".into());
    }
    let body = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    let message = sign::request_message(method.as_str(), uri, auth.timestamp, &auth.nonce, body);
    if !ctx
        .sim
        .merchant_public_key
        .verify_base64(message.as_bytes(), &auth.signature)
    {
        return Err("the signature does not verify with the merchant's key".into());
    }
    Ok(())
}

fn sign_error(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"code": "SIGN_ERROR", "message": format!("签名错误: {why}")}).to_string(),
    )
        .into_response()
}

/// A request as it arrived.
struct Arrived {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// Authenticates, reads the call, draws the fault, answers.
async fn serve(
    ctx: Ctx,
    arrived: Arrived,
    read: impl FnOnce(&Ctx, &Arrived) -> Result<Call, Reply>,
) -> Response {
    ctx.state.count_request();
    if let Err(why) = authenticate(
        &ctx,
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

fn arrived(method: Method, uri: &OriginalUri, headers: HeaderMap, body: Bytes) -> Arrived {
    Arrived {
        method,
        uri: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers,
        body,
    }
}

/// The `mchid` query parameter must be the merchant's.
fn check_mchid(ctx: &Ctx, uri: &str) -> Result<(), Reply> {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    let mchid = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "mchid")
        .map(|(_, v)| v.into_owned());
    match mchid {
        Some(m) if m == ctx.sim.mchid => Ok(()),
        Some(_) => Err(param_error("商户号与请求不符")),
        None => Err(param_error("缺少参数mchid")),
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
    detached(serve(ctx, a, move |ctx, a| {
        check_mchid(ctx, &a.uri)?;
        Ok(Call::Query { no })
    }))
    .await
}

async fn close(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    Path(no): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = arrived(Method::POST, &uri, headers, body);
    detached(serve(ctx, a, move |ctx, a| {
        let mchid = serde_json::from_slice::<Value>(&a.body)
            .ok()
            .and_then(|v| v.get("mchid").and_then(Value::as_str).map(str::to_owned));
        if mchid.as_deref() != Some(ctx.sim.mchid.as_str()) {
            return Err(param_error("mchid 不正确"));
        }
        Ok(Call::Close { no })
    }))
    .await
}

async fn refund(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = arrived(Method::POST, &uri, headers, body);
    detached(serve(ctx, a, |_, a| {
        let ask: RefundAsk =
            serde_json::from_slice(&a.body).map_err(|e| param_error(&format!("参数错误: {e}")))?;
        if ask.amount.refund <= 0 || ask.out_refund_no.is_empty() {
            return Err(param_error("退款金额或退款单号不正确"));
        }
        if ask.amount.currency.as_deref().is_some_and(|c| c != "CNY") {
            return Err(param_error("币种不正确"));
        }
        Ok(Call::Refund(ask))
    }))
    .await
}

async fn tradebill(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = ctx.origin(&headers);
    let a = arrived(Method::GET, &uri, headers, body);
    detached(serve(ctx, a, move |_, a| {
        let query = a.uri.split_once('?').map_or("", |(_, q)| q).to_owned();
        let param = |name: &str| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        if param("bill_type").is_some_and(|t| t != "ALL")
            || param("tar_type").is_some_and(|t| t != "GZIP")
        {
            return Err(param_error(
                "the simulator serves bill_type=ALL, tar_type=GZIP",
            ));
        }
        let date = param("bill_date").and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
        Ok(Call::Bill { date, origin })
    }))
    .await
}

/// `GET /v3/billdownload/file?token=`: signed request, unsigned answer.
async fn download(
    State(ctx): State<Ctx>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let a = arrived(Method::GET, &uri, headers, body);
    if let Err(why) = authenticate(&ctx, &a.method, &a.uri, &a.headers, &a.body) {
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
