//! The simulator's HTTP surface: Alipay's `POST /gateway.do` (signed requests in, signed
//! answers out, with the faults of the current [`FaultPlan`](super::FaultPlan) injected),
//! served here; the JSON buyer API under `/sim/` used by tests and the demo, and the fault
//! admin API, served by `buyer_api.rs` and listed below.
//!
//! The buyer actions that may create the trade (`scan`, and `pay` / `pay-on-close` with an
//! amount) take `{"amount_minor":n,"time_expire":"2026-11-22T10:00:00Z"}`, `time_expire`
//! optional (RFC 3339): Alipay's absolute expiry passed by the shop. A trade cannot be
//! created at or after it (409 `trade_expired`), and closes if still unpaid then.
//!
//! | endpoint | effect |
//! |---|---|
//! | `GET /sim/faults` | the current plan |
//! | `PUT /sim/faults` | sets the plan (JSON body); 400 naming the field if invalid |
//! | `DELETE /sim/faults` | clears the plan and every pending one-shot |
//! | `POST /sim/trades/{no}/fail-next` | `{"kind":"busy_20000","count":N}`: the next N answers about the trade fail |
//! | `POST /sim/trades/{no}/refund` | `{"amount_minor":n}`: refunds part of a paid trade (409 beyond what is left); a full refund closes it |
//! | `GET /sim/bills/{token}.zip` | the bill archive a bill URL points to; 410 once expired, 404 if unknown |
//! | `PUT /sim/bill-override` | raw body: the next bill download serves these bytes instead of the bill |
//! | `DELETE /sim/bill-override` | clears the override |
//!
//! `alipay.data.dataservice.bill.downloadurl.query` (`{"bill_type":"trade",
//! "bill_date":"yyyy-MM-dd"}`) answers a `bill_download_url` pointing at
//! `GET /sim/bills/{token}.zip` on this server (the host the request came to), valid for
//! 30 s and for that date only. **Deviation:** Alipay serves only past days (T-1 from about
//! 09:00); the simulator also serves today's bill so far (China time), so that tests need
//! not wait a day. A future or malformed date answers `40004` `isv.invalid-bill-date`, a
//! `bill_type` other than `trade` `40004` `isv.invalid-bill-type`; both sub-codes are
//! unverified against the real gateway.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use chrono::{NaiveDate, Utc};

pub(crate) use super::shared::Shared;

use super::state::{
    BILL_URL_METHOD, CloseOutcome, FaultKind, REFUND_METHOD, RefundOutcome, SIM_METHODS,
    SimTradeStatus, SimTradeView, china_date,
};
use crate::gateway::alipay::{format_china_time, verify_params};
use crate::gateway::rsa::RsaPrivateKey;
use crate::money::format_minor;

/// Largest request body the simulator accepts.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Builds the simulator's router: the gateway protocol here, the buyer and admin API in
/// `buyer_api.rs`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/gateway.do", post(gateway))
        .merge(super::buyer_api::routes())
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------

const QUERY: &str = "alipay.trade.query";

/// An answer object plus the member name it goes under.
struct Answer {
    key: String,
    object: Map<String, Value>,
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn failure(key: &str, code: &str, msg: &str, sub_code: &str, sub_msg: &str) -> Answer {
    Answer {
        key: key.to_owned(),
        object: obj(json!({"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg})),
    }
}

fn missing(key: &str, sub_code: &str, what: &str) -> Answer {
    failure(
        key,
        "40001",
        "Missing Required Arguments",
        sub_code,
        &format!("缺少{what}参数"),
    )
}

fn invalid(key: &str, sub_code: &str, sub_msg: &str) -> Answer {
    failure(key, "40002", "Invalid Arguments", sub_code, sub_msg)
}

/// Signs the object's exact serialized bytes with `key` and writes
/// `{"<member>":<object>,"sign":"..."}`; `None` (logged) if signing fails.
fn signed_body(key: &RsaPrivateKey, answer: Answer) -> Option<String> {
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

fn signing_failed() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "signing failed").into_response()
}

fn json_body(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body,
    )
        .into_response()
}

/// The answer signed with the simulator's key, as a response.
fn signed_reply(shared: &Shared, answer: Answer) -> Response {
    signed_body(&shared.sim_key, answer).map_or_else(signing_failed, json_body)
}

fn html(status: StatusCode, page: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
}

const BAD_GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n\
    <body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n\
    </body>\r\n</html>\r\n";

const MAINTENANCE_PAGE: &str = "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
    <title>系统维护</title></head><body><h1>系统维护中，请稍后再试</h1>\
    <p>Service temporarily unavailable.</p></body></html>";

/// A response that never completes: its body fails at once, so the connection is cut
/// without an answer.
fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated timeout: connection dropped",
        ))
    });
    Response::new(Body::from_stream(stream))
}

fn shutting_down() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "simulator shutting down").into_response()
}

async fn gateway(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = origin(&shared, &headers);
    // Served in its own task: a client that gives up and drops the connection must not
    // cancel a close half-way. What the gateway started, it finishes (as Alipay would).
    match tokio::spawn(serve_gateway(shared, query, body, origin)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "simulator gateway task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "simulator failure").into_response()
        }
    }
}

/// `http://<host>` for URLs handed out by this server: the request's `Host` when it is
/// a plain host name or address, else the bound address.
fn origin(shared: &Shared, headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    match host {
        Some(host) => format!("http://{host}"),
        None => format!("http://{}", shared.addr),
    }
}

async fn serve_gateway(
    shared: Arc<Shared>,
    query: Option<String>,
    body: Bytes,
    origin: String,
) -> Response {
    shared.state.count_request();
    let request = match parse_request(&shared, query.as_deref().unwrap_or(""), &body, origin) {
        Ok(request) => request,
        Err(refused) => {
            let latency = shared.state.latency_for(refused.method);
            if !shared.pause(latency).await {
                return shutting_down();
            }
            let code = refused
                .answer
                .object
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("");
            if matches!(code, "40001" | "40002") {
                shared.state.count_rejected();
            }
            return signed_reply(&shared, refused.answer);
        }
    };
    let decision = shared.state.fault_for(
        request.method,
        request.out_trade_no.as_deref(),
        request.trade_no.as_deref(),
    );
    if !shared.pause(decision.latency).await {
        return shutting_down();
    }
    match decision.fault {
        None => signed_reply(&shared, answer(&shared, &request, Effect::Apply)),
        Some(kind) => {
            tracing::debug!(
                method = request.method,
                out_trade_no = request.out_trade_no.as_deref().unwrap_or(""),
                fault = %kind,
                "simulator: injecting a fault"
            );
            inject(&shared, &request, kind, decision.hold).await
        }
    }
}

/// An authenticated, well-formed gateway request.
struct Request {
    method: &'static str,
    /// The answer's member name (`alipay_trade_query_response`...).
    key: String,
    out_trade_no: Option<String>,
    trade_no: Option<String>,
    /// For the bill URL method: `bill_type` and `bill_date` as given (checked when
    /// served, like Alipay's business errors).
    bill: Option<BillAsk>,
    /// For the refund method: the amount and the request number.
    refund: Option<RefundAsk>,
    /// `http://host:port` of this server, as the client reached it.
    origin: String,
}

/// The business parameters of a bill URL request.
struct BillAsk {
    bill_type: Option<String>,
    bill_date: Option<String>,
}

/// The business parameters of a refund request.
struct RefundAsk {
    /// `refund_amount`, parsed.
    amount_minor: i64,
    /// `out_request_no`; Alipay defaults it to the order number (one full refund).
    out_request_no: String,
}

/// A request refused before it could be served, with the method if it named a known one.
struct Refused {
    method: Option<&'static str>,
    answer: Answer,
}

/// Parses and authenticates one gateway request.
fn parse_request(
    shared: &Shared,
    query: &str,
    body: &[u8],
    origin: String,
) -> Result<Request, Refused> {
    const ERR: &str = "error_response";
    let refuse = |method: Option<&'static str>, answer: Answer| Refused { method, answer };
    let from_query = serde_urlencoded::from_str::<Vec<(String, String)>>(query);
    let from_body = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body);
    let (Ok(mut params), Ok(body_params)) = (from_query, from_body) else {
        return Err(refuse(
            None,
            invalid(ERR, "isv.invalid-parameter", "请求参数不是合法的表单编码"),
        ));
    };
    params.extend(body_params);
    let mut seen = HashSet::new();
    if let Some((dup, _)) = params.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(refuse(
            None,
            invalid(ERR, "isv.invalid-parameter", &format!("参数{dup}重复")),
        ));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };

    let Some(method) = get("method") else {
        return Err(refuse(None, missing(ERR, "isv.missing-method", "方法名")));
    };
    let Some(method) = SIM_METHODS.into_iter().find(|m| *m == method) else {
        return Err(refuse(
            None,
            invalid(ERR, "isv.invalid-method", "不存在的方法名"),
        ));
    };
    let key = format!("{}_response", method.replace('.', "_"));
    let refuse = |answer: Answer| Refused {
        method: Some(method),
        answer,
    };

    let Some(app_id) = get("app_id") else {
        return Err(refuse(missing(&key, "isv.missing-app-id", "AppID")));
    };
    if app_id != shared.app_id {
        return Err(refuse(invalid(
            &key,
            "isv.invalid-app-id",
            "无效的AppID参数",
        )));
    }
    let Some(sign_type) = get("sign_type") else {
        return Err(refuse(missing(
            &key,
            "isv.missing-signature-type",
            "签名类型",
        )));
    };
    if sign_type != "RSA2" {
        return Err(refuse(invalid(
            &key,
            "isv.invalid-signature-type",
            "无效的签名类型",
        )));
    }
    if get("sign").is_none() {
        return Err(refuse(missing(&key, "isv.missing-signature", "签名")));
    }
    let Some(timestamp) = get("timestamp") else {
        return Err(refuse(missing(&key, "isv.missing-timestamp", "时间戳")));
    };
    if crate::gateway::alipay::parse_china_time(timestamp).is_none() {
        return Err(refuse(invalid(
            &key,
            "isv.invalid-timestamp",
            "非法的时间戳参数",
        )));
    }
    if get("version").is_none() {
        return Err(refuse(missing(&key, "isv.missing-version", "版本号")));
    }
    if get("charset").is_some_and(|c| !c.eq_ignore_ascii_case("utf-8")) {
        return Err(refuse(invalid(&key, "isv.invalid-charset", "字符集错误")));
    }
    if !verify_params(&shared.app_public_key, &params) {
        shared.state.count_signature_failure();
        tracing::debug!(method, "simulator: request signature does not verify");
        return Err(refuse(invalid(
            &key,
            "isv.invalid-signature",
            "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配",
        )));
    }

    let biz: Value = match get("biz_content").map(serde_json::from_str::<Value>) {
        Some(Ok(v @ Value::Object(_))) => v,
        Some(_) => {
            return Err(refuse(invalid(
                &key,
                "isv.invalid-parameter",
                "biz_content不是合法的JSON对象",
            )));
        }
        None => return Err(refuse(missing(&key, "isv.missing-biz-content", "业务参数"))),
    };
    let field = |name: &str| {
        biz.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if method == BILL_URL_METHOD {
        return Ok(Request {
            method,
            key,
            out_trade_no: None,
            trade_no: None,
            bill: Some(BillAsk {
                bill_type: field("bill_type"),
                bill_date: field("bill_date"),
            }),
            refund: None,
            origin,
        });
    }
    let out_trade_no = field("out_trade_no");
    let trade_no = field("trade_no");
    if out_trade_no.is_none() && trade_no.is_none() {
        return Err(refuse(failure(
            &key,
            "40004",
            "Business Failed",
            "ACQ.INVALID_PARAMETER",
            "参数无效",
        )));
    }
    let refund = if method == REFUND_METHOD {
        let amount = field("refund_amount")
            .as_deref()
            .and_then(|a| crate::money::parse_minor(a).ok())
            .filter(|a| *a > 0);
        let Some(amount_minor) = amount else {
            return Err(refuse(failure(
                &key,
                "40004",
                "Business Failed",
                "ACQ.INVALID_PARAMETER",
                "退款金额无效",
            )));
        };
        let out_request_no = field("out_request_no")
            .or_else(|| out_trade_no.clone())
            .or_else(|| trade_no.clone())
            .unwrap_or_default();
        Some(RefundAsk {
            amount_minor,
            out_request_no,
        })
    } else {
        None
    };
    Ok(Request {
        method,
        key,
        out_trade_no,
        trade_no,
        bill: None,
        refund,
        origin,
    })
}

/// Whether a request changes the trades or only shows what it would answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Serve it for real (a close closes, a refund refunds).
    Apply,
    /// The answer it would get, changing no trade (for faulted answers that must look
    /// real; a bill URL request still issues its URL: nothing depends on an unused one).
    Preview,
}

/// The answer to a request, applied or previewed.
fn answer(shared: &Shared, r: &Request, effect: Effect) -> Answer {
    let (out, tn) = (r.out_trade_no.as_deref(), r.trade_no.as_deref());
    let apply = effect == Effect::Apply;
    if let Some(ask) = &r.bill {
        bill_url_answer(shared, r, ask)
    } else if let Some(ask) = &r.refund {
        let outcome =
            shared
                .state
                .gateway_refund(out, tn, &ask.out_request_no, ask.amount_minor, apply);
        refund_answer(r.key.clone(), out, outcome)
    } else if r.method == QUERY {
        query_answer(r.key.clone(), out, shared.state.gateway_query(out, tn))
    } else if apply {
        close_answer(r.key.clone(), out, shared.state.gateway_close(out, tn))
    } else {
        close_answer(r.key.clone(), out, shared.state.preview_close(out, tn))
    }
}

/// Builds the faulted response. Nothing here changes a trade except
/// [`FaultKind::TimeoutAfterApply`], which applies the request before withholding it.
async fn inject(shared: &Shared, r: &Request, kind: FaultKind, hold: Duration) -> Response {
    match kind {
        FaultKind::Http502 => html(StatusCode::BAD_GATEWAY, BAD_GATEWAY_PAGE),
        FaultKind::Busy20000 => signed_reply(
            shared,
            failure(
                &r.key,
                "20000",
                "Service Currently Unavailable",
                "isp.unknow-error",
                "系统繁忙",
            ),
        ),
        FaultKind::SystemError => signed_reply(
            shared,
            failure(
                &r.key,
                "40004",
                "Business Failed",
                "ACQ.SYSTEM_ERROR",
                "系统错误",
            ),
        ),
        FaultKind::Timeout => {
            // Hold, then cut the connection: nothing was done, nothing is said.
            shared.pause(hold).await;
            dropped_connection()
        }
        FaultKind::TimeoutAfterApply => {
            let response = signed_reply(shared, answer(shared, r, Effect::Apply));
            if shared.pause(hold).await {
                response
            } else {
                dropped_connection()
            }
        }
        FaultKind::Html => html(StatusCode::OK, MAINTENANCE_PAGE),
        FaultKind::TruncatedJson => {
            match signed_body(&shared.sim_key, answer(shared, r, Effect::Preview)) {
                Some(body) => {
                    let mut cut = body.len() / 2;
                    while !body.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    json_body(body[..cut].to_owned())
                }
                None => signing_failed(),
            }
        }
        FaultKind::BadSignature => {
            let answer = answer(shared, r, Effect::Preview);
            match other_key(shared).await {
                Some(key) => signed_body(key, answer).map_or_else(signing_failed, json_body),
                None => (StatusCode::INTERNAL_SERVER_ERROR, "no second key").into_response(),
            }
        }
        FaultKind::WrongOrder => {
            let mut answer = answer(shared, r, Effect::Preview);
            let asked = r.out_trade_no.as_deref().unwrap_or("ORDER");
            answer.object.insert(
                "out_trade_no".into(),
                Value::String(format!("{asked}-OTHER")),
            );
            signed_reply(shared, answer)
        }
        FaultKind::WrongAmount => {
            let mut answer = answer(shared, r, Effect::Preview);
            let trade = shared
                .state
                .gateway_query(r.out_trade_no.as_deref(), r.trade_no.as_deref());
            if let Some(t) = trade {
                let wrong = format_minor(t.amount_minor.saturating_add(1));
                answer
                    .object
                    .insert("total_amount".into(), Value::String(wrong.clone()));
                if t.status == SimTradeStatus::TradeSuccess {
                    for name in ["buyer_pay_amount", "invoice_amount", "receipt_amount"] {
                        answer
                            .object
                            .insert(name.into(), Value::String(wrong.clone()));
                    }
                }
            }
            signed_reply(shared, answer)
        }
        FaultKind::EmptyBody => (
            [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
            "",
        )
            .into_response(),
    }
}

/// The second key for `bad_signature`, generated (off the async threads) on first use.
async fn other_key(shared: &Shared) -> Option<&RsaPrivateKey> {
    let made = shared
        .other_key
        .get_or_try_init(|| async {
            match tokio::task::spawn_blocking(RsaPrivateKey::generate).await {
                Ok(Ok(key)) => Ok(key),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    match made {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::error!(error = %e, "simulator could not make its second key");
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

/// Answers a bill URL request: a fresh one-date download URL, or a business failure.
fn bill_url_answer(shared: &Shared, r: &Request, ask: &BillAsk) -> Answer {
    if ask.bill_type.as_deref() != Some("trade") {
        // Unverified sub-code: what Alipay answers for a bill_type it does not know.
        return failure(
            &r.key,
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
            &r.key,
            "40004",
            "Business Failed",
            "isv.invalid-bill-date",
            "账单时间不正确",
        );
    };
    let token = shared.state.issue_bill_token(date);
    Answer {
        key: r.key.clone(),
        object: obj(json!({
            "code": "10000",
            "msg": "Success",
            "bill_download_url": format!("{}/sim/bills/{token}.zip", r.origin),
        })),
    }
}

fn query_answer(key: String, asked: Option<&str>, trade: Option<SimTradeView>) -> Answer {
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
    if let Some(paid_at) = t.paid_at.filter(|_| paid) {
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

fn close_answer(key: String, asked: Option<&str>, outcome: CloseOutcome) -> Answer {
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
fn refund_answer(key: String, asked: Option<&str>, outcome: RefundOutcome) -> Answer {
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
    }
}

#[cfg(test)]
mod tests {
    use crate::gateway::alipay::{
        extract_sign, extract_signed_object, format_china_time, sign_params,
    };
    use crate::gateway::rsa::RsaPrivateKey;
    use crate::sim::{self, BuyerClient, BuyerError, RunningSim, SimConfig, SimTradeStatus};
    use serde_json::Value;
    use std::sync::OnceLock;

    const APP_ID: &str = "2021000000000002";

    fn app_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::generate().unwrap())
    }

    async fn start_sim() -> RunningSim {
        sim::start(SimConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            app_id: APP_ID.into(),
            app_public_key: app_key().public_key().clone(),
            sim_private_key: None,
            notify: crate::sim::NotifyPlan::default(),
            app_private_key: None,
        })
        .await
        .unwrap()
    }

    fn common(method: &str) -> Vec<(String, String)> {
        [
            ("app_id", APP_ID),
            ("method", method),
            ("format", "JSON"),
            ("charset", "utf-8"),
            ("sign_type", "RSA2"),
            ("version", "1.0"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain([(
            "timestamp".to_owned(),
            format_china_time(chrono::Utc::now()),
        )])
        .collect()
    }

    /// Signs `params` (plus `extra_unsigned`, added after signing), puts the keys named in
    /// `in_query` into the query string and the rest into the form body, posts, and
    /// returns the raw body.
    async fn post_raw(
        sim: &RunningSim,
        mut params: Vec<(String, String)>,
        in_query: &[&str],
        sign: bool,
    ) -> String {
        if sign {
            let s = sign_params(app_key(), &params).unwrap();
            params.push(("sign".into(), s));
        }
        let (query, body): (Vec<_>, Vec<_>) = params
            .into_iter()
            .partition(|(k, _)| in_query.contains(&k.as_str()));
        let url = format!(
            "{}/gateway.do?{}",
            sim.base_url(),
            serde_urlencoded::to_string(&query).unwrap()
        );
        reqwest::Client::new()
            .post(url)
            .form(&body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Checks the answer's layout and signature; returns (member name used, object).
    fn verified(sim: &RunningSim, body: &str, key: &str) -> Value {
        assert!(
            body.starts_with(&format!("{{\"{key}\":{{")),
            "object first: {body}"
        );
        let object = extract_signed_object(body, key).unwrap();
        let sign = extract_sign(body).unwrap();
        assert!(body.ends_with(&format!(",\"sign\":\"{sign}\"}}")));
        assert!(sim.public_key().verify_base64(object.as_bytes(), &sign));
        serde_json::from_str(object).unwrap()
    }

    fn with(mut params: Vec<(String, String)>, k: &str, v: &str) -> Vec<(String, String)> {
        params.retain(|(key, _)| key != k);
        params.push((k.to_owned(), v.to_owned()));
        params
    }

    fn without(mut params: Vec<(String, String)>, k: &str) -> Vec<(String, String)> {
        params.retain(|(key, _)| key != k);
        params
    }

    const QUERY_KEY: &str = "alipay_trade_query_response";

    /// Parameters, whether to sign them, and the expected member, code and sub-code.
    type ErrorCase = (
        Vec<(String, String)>,
        bool,
        &'static str,
        &'static str,
        &'static str,
    );

    #[tokio::test]
    async fn common_params_in_query_string_and_biz_content_in_body() {
        let sim = start_sim().await;
        BuyerClient::new(sim.base_url())
            .unwrap()
            .scan_and_pay("ORD-Q", 8888)
            .await
            .unwrap();
        let params = with(
            common("alipay.trade.query"),
            "biz_content",
            r#"{"out_trade_no":"ORD-Q"}"#,
        );
        let in_query = [
            "app_id",
            "method",
            "format",
            "charset",
            "sign_type",
            "timestamp",
            "version",
            "sign",
        ];
        let body = post_raw(&sim, params, &in_query, true).await;
        let v = verified(&sim, &body, QUERY_KEY);
        assert_eq!(v["code"], "10000");
        assert_eq!(v["trade_status"], "TRADE_SUCCESS");
        assert_eq!(v["total_amount"], "88.88");
        assert_eq!(v["buyer_pay_amount"], "88.88");
        assert!(v["send_pay_date"].as_str().unwrap().len() == 19);
        assert_eq!(v["trade_no"].as_str().unwrap().len(), 28);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn protocol_errors() {
        let sim = start_sim().await;
        let base = with(
            common("alipay.trade.query"),
            "biz_content",
            r#"{"out_trade_no":"ORD-1"}"#,
        );
        let cases: Vec<ErrorCase> = vec![
            (
                without(base.clone(), "method"),
                true,
                "error_response",
                "40001",
                "isv.missing-method",
            ),
            (
                with(base.clone(), "method", "alipay.trade.pay"),
                true,
                "error_response",
                "40002",
                "isv.invalid-method",
            ),
            (
                without(base.clone(), "app_id"),
                true,
                QUERY_KEY,
                "40001",
                "isv.missing-app-id",
            ),
            (
                with(base.clone(), "app_id", "1"),
                true,
                QUERY_KEY,
                "40002",
                "isv.invalid-app-id",
            ),
            (
                base.clone(),
                false,
                QUERY_KEY,
                "40001",
                "isv.missing-signature",
            ),
            (
                with(base.clone(), "sign_type", "RSA"),
                true,
                QUERY_KEY,
                "40002",
                "isv.invalid-signature-type",
            ),
            (
                without(base.clone(), "timestamp"),
                true,
                QUERY_KEY,
                "40001",
                "isv.missing-timestamp",
            ),
            (
                with(base.clone(), "timestamp", "yesterday"),
                true,
                QUERY_KEY,
                "40002",
                "isv.invalid-timestamp",
            ),
            (
                without(base.clone(), "biz_content"),
                true,
                QUERY_KEY,
                "40001",
                "isv.missing-biz-content",
            ),
            (
                with(base.clone(), "biz_content", "not json"),
                true,
                QUERY_KEY,
                "40002",
                "isv.invalid-parameter",
            ),
            (
                with(base.clone(), "biz_content", "{}"),
                true,
                QUERY_KEY,
                "40004",
                "ACQ.INVALID_PARAMETER",
            ),
        ];
        for (params, sign, key, code, sub_code) in cases {
            let body = post_raw(&sim, params, &[], sign).await;
            let v = verified(&sim, &body, key);
            assert_eq!(
                (v["code"].as_str(), v["sub_code"].as_str()),
                (Some(code), Some(sub_code)),
                "{body}"
            );
        }

        // A signature over other content is refused and counted.
        let mut tampered = base.clone();
        let sig = sign_params(app_key(), &tampered).unwrap();
        tampered.push(("sign".into(), sig));
        let tampered = with(tampered, "biz_content", r#"{"out_trade_no":"ORD-2"}"#);
        let body = post_raw(&sim, tampered, &[], false).await;
        let v = verified(&sim, &body, QUERY_KEY);
        assert_eq!(v["sub_code"], "isv.invalid-signature");
        // A parameter given twice (query and body) is refused.
        let mut dup = base.clone();
        dup.push(("format".into(), "JSON".into()));
        let body = post_raw(&sim, dup, &["format"], true).await;
        assert_eq!(verified(&sim, &body, "error_response")["code"], "40002");

        let stats = sim.state().stats();
        assert_eq!(stats.signature_failures, 1);
        assert_eq!(stats.queries, 0);
        assert_eq!(stats.gateway_requests, 13);
        assert_eq!(stats.rejected_requests, 12);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn bill_url_requests() {
        const BILL_KEY: &str = "alipay_data_dataservice_bill_downloadurl_query_response";
        let sim = start_sim().await;
        let bill = |biz: &str| with(common(super::BILL_URL_METHOD), "biz_content", biz);
        let today = crate::sim::state::china_date(chrono::Utc::now());
        let tomorrow = today.succ_opt().unwrap();
        let cases = [
            (
                r#"{"bill_type":"signcustomer","bill_date":"2020-01-01"}"#.to_owned(),
                "isv.invalid-bill-type",
            ),
            (
                r#"{"bill_date":"2020-01-01"}"#.to_owned(),
                "isv.invalid-bill-type",
            ),
            (
                r#"{"bill_type":"trade"}"#.to_owned(),
                "isv.invalid-bill-date",
            ),
            (
                r#"{"bill_type":"trade","bill_date":"2020-1-1"}"#.to_owned(),
                "isv.invalid-bill-date",
            ),
            (
                r#"{"bill_type":"trade","bill_date":"2020-01"}"#.to_owned(),
                "isv.invalid-bill-date",
            ),
            (
                r#"{"bill_type":"trade","bill_date":"2020-02-30"}"#.to_owned(),
                "isv.invalid-bill-date",
            ),
            (
                format!(r#"{{"bill_type":"trade","bill_date":"{tomorrow}"}}"#),
                "isv.invalid-bill-date",
            ),
        ];
        for (biz, sub_code) in cases {
            let body = post_raw(&sim, bill(&biz), &[], true).await;
            let v = verified(&sim, &body, BILL_KEY);
            assert_eq!(
                (v["code"].as_str(), v["sub_code"].as_str()),
                (Some("40004"), Some(sub_code)),
                "{biz}: {body}"
            );
        }
        let biz = format!(r#"{{"bill_type":"trade","bill_date":"{today}"}}"#);
        let body = post_raw(&sim, bill(&biz), &[], true).await;
        let v = verified(&sim, &body, BILL_KEY);
        assert_eq!(v["code"], "10000");
        let url = v["bill_download_url"].as_str().unwrap().to_owned();
        assert!(
            url.starts_with(&format!("{}/sim/bills/", sim.base_url())),
            "{url}"
        );
        assert!(url.ends_with(".zip"));

        let http = reqwest::Client::new();
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        assert!(crate::gateway::alipay::bill::parse_zip(&bytes, "bill.zip").is_ok());
        for missing in ["/sim/bills/nope.zip", "/sim/bills/nope"] {
            let r = http
                .get(format!("{}{missing}", sim.base_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{missing}");
        }

        // Overrides larger than an ordinary request body are accepted.
        let big = vec![b'x'; 200 * 1024];
        BuyerClient::new(sim.base_url())
            .unwrap()
            .override_bill(big.clone())
            .await
            .unwrap();
        assert_eq!(
            http.get(&url).send().await.unwrap().bytes().await.unwrap(),
            big
        );

        // The bill method can be named in a fault plan; wrong_order does not apply to it.
        let buyer = BuyerClient::new(sim.base_url()).unwrap();
        let mut plan = crate::sim::FaultPlan::only(crate::sim::FaultKind::WrongOrder, 1.0);
        plan.methods = Some(vec![super::BILL_URL_METHOD.to_owned()]);
        buyer.set_faults(&plan).await.unwrap();
        let body = post_raw(&sim, bill(&biz), &[], true).await;
        let v = verified(&sim, &body, BILL_KEY);
        assert_eq!(v["code"], "10000");
        assert!(v.get("out_trade_no").is_none());
        buyer
            .set_faults(&crate::sim::FaultPlan::only(
                crate::sim::FaultKind::Busy20000,
                1.0,
            ))
            .await
            .unwrap();
        let body = post_raw(&sim, bill(&biz), &[], true).await;
        assert_eq!(verified(&sim, &body, BILL_KEY)["code"], "20000");

        let stats = sim.state().stats();
        assert_eq!(stats.bill_url_requests, 10);
        assert_eq!(stats.bill_downloads, 2);
        assert_eq!(stats.rejected_requests, 0);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn buyer_api() {
        let sim = start_sim().await;
        let buyer = BuyerClient::new(sim.base_url()).unwrap();
        assert_eq!(buyer.trade("nope").await.unwrap(), None);
        let rejected = |r: Result<_, BuyerError>| match r {
            Err(BuyerError::Rejected { status, .. }) => status,
            other => panic!("expected a rejection, got {other:?}"),
        };
        assert_eq!(rejected(buyer.pay("nope").await), 404);
        assert_eq!(rejected(buyer.pay_on_close("nope").await), 404);
        assert_eq!(rejected(buyer.scan("A", 0).await), 400);

        let a = buyer.scan("A b/c", 1234).await.unwrap();
        assert_eq!(a.out_trade_no, "A b/c");
        assert_eq!(a.status, SimTradeStatus::WaitBuyerPay);
        assert_eq!(buyer.scan("A b/c", 1234).await.unwrap(), a);
        assert_eq!(rejected(buyer.scan("A b/c", 999).await), 409);
        assert_eq!(buyer.trade("A b/c").await.unwrap(), Some(a.clone()));

        let armed = buyer.pay_on_close("A b/c").await.unwrap();
        assert!(armed.pay_on_close);
        let paid = buyer.pay("A b/c").await.unwrap();
        assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
        assert!(!paid.pay_on_close);
        assert_eq!(rejected(buyer.pay("A b/c").await), 409);
        assert_eq!(rejected(buyer.pay_on_close("A b/c").await), 409);

        let implicit = buyer.scan_and_pay("B", 50).await.unwrap();
        assert_eq!(
            (implicit.status, implicit.amount_minor),
            (SimTradeStatus::TradeSuccess, 50)
        );

        // Raw endpoints: missing amount, bad JSON.
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{}/sim/trades/C/scan", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = http
            .post(format!("{}/sim/trades/C/pay", sim.base_url()))
            .body("{oops")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let err: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(err["error"], "bad_request");

        let pem = buyer.public_key_pem().await.unwrap();
        assert_eq!(pem, sim.public_key().to_spki_pem());
        assert_eq!(buyer.stats().await.unwrap(), sim.state().stats());
        assert_eq!(sim.state().trades().len(), 2);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn time_expire_in_the_buyer_api() {
        let sim = start_sim().await;
        let buyer = BuyerClient::new(sim.base_url()).unwrap();
        let http = reqwest::Client::new();
        let post = |path: &str, body: &'static str| {
            http.post(format!("{}/sim/trades/{path}", sim.base_url()))
                .body(body)
                .send()
        };
        // Past: refused, nothing created, whichever action would create the trade.
        for (path, body) in [
            (
                "E/scan",
                r#"{"amount_minor":100,"time_expire":"2000-01-01T00:00:00Z"}"#,
            ),
            (
                "E/pay",
                r#"{"amount_minor":100,"time_expire":"2000-01-01T08:00:00+08:00"}"#,
            ),
            (
                "E/pay-on-close",
                r#"{"amount_minor":100,"time_expire":"2000-01-01T00:00:00Z"}"#,
            ),
        ] {
            let r = post(path, body).await.unwrap();
            assert_eq!(r.status(), 409, "{path}");
            let err: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(err["error"], "trade_expired", "{path}");
        }
        assert_eq!(buyer.trade("E").await.unwrap(), None);
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        match buyer.scan_and_pay_with_expiry("E", 100, past).await {
            Err(BuyerError::Rejected { status, error, .. }) => {
                assert_eq!((status, error.as_str()), (409, "trade_expired"));
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(sim.state().trades().is_empty());

        // Future, any offset: stored as given.
        let r = post(
            "F/scan",
            r#"{"amount_minor":1,"time_expire":"2999-01-01T08:00:00+08:00"}"#,
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        let view = buyer.trade("F").await.unwrap().unwrap();
        assert_eq!(
            view.time_expire,
            Some("2999-01-01T00:00:00Z".parse().unwrap())
        );
        let future = chrono::Utc::now() + chrono::Duration::hours(1);
        let paid = buyer
            .scan_and_pay_with_expiry("G", 5, future)
            .await
            .unwrap();
        assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
        assert_eq!(paid.time_expire, Some(future));

        // Malformed: not RFC 3339, or an expiry without an amount to create the trade.
        for (path, body) in [
            ("H/scan", r#"{"amount_minor":1,"time_expire":"tomorrow"}"#),
            (
                "H/scan",
                r#"{"amount_minor":1,"time_expire":"2026-11-22 10:00:00"}"#,
            ),
            ("H/scan", r#"{"time_expire":"2999-01-01T00:00:00Z"}"#),
            ("F/pay", r#"{"time_expire":"2999-01-01T00:00:00Z"}"#),
        ] {
            let r = post(path, body).await.unwrap();
            assert_eq!(r.status(), 400, "{path} {body}");
        }
        assert_eq!(sim.state().trades().len(), 2);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn lifecycle_helpers() {
        // Binding a port that is taken fails cleanly.
        let sim = start_sim().await;
        let err = sim::start(SimConfig {
            listen: sim.addr(),
            app_id: APP_ID.into(),
            app_public_key: app_key().public_key().clone(),
            sim_private_key: Some(RsaPrivateKey::generate().unwrap()),
            notify: crate::sim::NotifyPlan::default(),
            app_private_key: None,
        })
        .await
        .unwrap_err();
        assert!(matches!(err, sim::SimError::Bind { .. }), "{err}");
        let addr = sim.addr();
        sim.shutdown().await;
        // After shutdown the port no longer answers.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());

        // serve_until returns when its shutdown future completes.
        let done = sim::serve_until(
            SimConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                app_id: APP_ID.into(),
                app_public_key: app_key().public_key().clone(),
                sim_private_key: None,
                notify: crate::sim::NotifyPlan::default(),
                app_private_key: None,
            },
            tokio::time::sleep(std::time::Duration::from_millis(50)),
        );
        tokio::time::timeout(std::time::Duration::from_secs(10), done)
            .await
            .unwrap()
            .unwrap();
    }
}
