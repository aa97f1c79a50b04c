//! Alipay's wire protocol in the simulator: `POST /gateway.do` (signed requests in, signed
//! answers out, with the faults of the current [`FaultPlan`](crate::sim::FaultPlan)
//! injected as Alipay would show them), and the bill downloads its bill URLs point at.
//!
//! `alipay.data.dataservice.bill.downloadurl.query` (`{"bill_type":"trade",
//! "bill_date":"yyyy-MM-dd"}`) answers a `bill_download_url` pointing at
//! `GET /alipay/bills/{token}.zip` on this server (the host the request came to), valid
//! for 30 s and for that date only. **Deviation:** Alipay serves only past days (T-1 from
//! about 09:00); the simulator also serves today's bill so far (China time), so that tests
//! need not wait a day. A future or malformed date answers `40004`
//! `isv.invalid-bill-date`, a `bill_type` other than `trade` `40004`
//! `isv.invalid-bill-type`; both sub-codes are unverified against the real gateway.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use chrono::{NaiveDate, Utc};

use super::AlipaySim;
use super::bill::build_zip;
use crate::gateway::alipay::client::BILL_URL_METHOD;
use crate::gateway::alipay::{format_china_time, verify_params};
use crate::gateway::rsa::RsaPrivateKey;
use crate::money::format_minor;
use crate::sim::SimMethod;
use crate::sim::shared::{
    Shared, bad_gateway_page, detached, dropped_connection, empty_json, maintenance_page,
    shutting_down, truncated,
};
use crate::sim::state::{
    BillFetch, CloseOutcome, FaultKind, RefundOutcome, SIM_BILL_ACCOUNT, SimTradeStatus,
    SimTradeView, china_date,
};

/// A request handler's view: what every gateway shares, and Alipay's keys.
#[derive(Clone)]
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    sim: Arc<AlipaySim>,
}

impl std::ops::Deref for Ctx {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// Alipay's routes.
pub(crate) fn routes(shared: Arc<Shared>, sim: Arc<AlipaySim>) -> Router {
    Router::new()
        .route("/gateway.do", post(gateway))
        .route("/alipay/bills/{file}", get(download_bill))
        .with_state(Ctx { shared, sim })
}

const QUERY: &str = "alipay.trade.query";
const CLOSE: &str = "alipay.trade.close";
const REFUND_METHOD: &str = "alipay.trade.refund";

/// The methods served, by their wire names.
const ALIPAY_METHODS: [&str; 4] = [QUERY, CLOSE, REFUND_METHOD, BILL_URL_METHOD];

/// What a wire method is, for the fault plan and the counters.
fn sim_method(method: &str) -> SimMethod {
    match method {
        QUERY => SimMethod::Query,
        CLOSE => SimMethod::Close,
        REFUND_METHOD => SimMethod::Refund,
        _ => SimMethod::Bill,
    }
}

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
fn signed_reply(shared: &Ctx, answer: Answer) -> Response {
    signed_body(&shared.sim.sim_key, answer).map_or_else(signing_failed, json_body)
}

async fn gateway(
    State(shared): State<Ctx>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = shared.origin(&headers);
    detached(serve_gateway(shared, query, body, origin)).await
}

async fn serve_gateway(
    shared: Ctx,
    query: Option<String>,
    body: Bytes,
    origin: String,
) -> Response {
    shared.state.count_request();
    let request = match parse_request(&shared, query.as_deref().unwrap_or(""), &body, origin) {
        Ok(request) => request,
        Err(refused) => {
            let latency = shared.state.latency_for(refused.method.map(sim_method));
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
        super::CHANNEL,
        sim_method(request.method),
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
    shared: &Ctx,
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
    let Some(method) = ALIPAY_METHODS.into_iter().find(|m| *m == method) else {
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
    if app_id != shared.sim.app_id {
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
    if !verify_params(&shared.sim.app_public_key, &params) {
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
fn answer(shared: &Ctx, r: &Request, effect: Effect) -> Answer {
    let (out, tn) = (r.out_trade_no.as_deref(), r.trade_no.as_deref());
    let apply = effect == Effect::Apply;
    if let Some(ask) = &r.bill {
        bill_url_answer(shared, r, ask)
    } else if let Some(ask) = &r.refund {
        let outcome = shared.state.gateway_refund(
            super::CHANNEL,
            out,
            tn,
            &ask.out_request_no,
            ask.amount_minor,
            apply,
        );
        refund_answer(r.key.clone(), out, outcome)
    } else if r.method == QUERY {
        query_answer(
            r.key.clone(),
            out,
            shared.state.gateway_query(super::CHANNEL, out, tn),
        )
    } else if apply {
        close_answer(
            r.key.clone(),
            out,
            shared.state.gateway_close(super::CHANNEL, out, tn),
        )
    } else {
        close_answer(
            r.key.clone(),
            out,
            shared.state.preview_close(super::CHANNEL, out, tn),
        )
    }
}

/// Builds the faulted response. Nothing here changes a trade except
/// [`FaultKind::TimeoutAfterApply`], which applies the request before withholding it.
async fn inject(shared: &Ctx, r: &Request, kind: FaultKind, hold: Duration) -> Response {
    match kind {
        FaultKind::Http502 => bad_gateway_page(),
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
        FaultKind::Html => maintenance_page(),
        FaultKind::TruncatedJson => {
            match signed_body(&shared.sim.sim_key, answer(shared, r, Effect::Preview)) {
                Some(body) => json_body(truncated(&body)),
                None => signing_failed(),
            }
        }
        FaultKind::BadSignature => {
            let answer = answer(shared, r, Effect::Preview);
            match shared.sim.other_key().await {
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
            let trade = shared.state.gateway_query(
                super::CHANNEL,
                r.out_trade_no.as_deref(),
                r.trade_no.as_deref(),
            );
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
        FaultKind::EmptyBody => empty_json(),
    }
}

/// A strict `yyyy-MM-dd` date.
fn bill_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|d| d.format("%Y-%m-%d").to_string() == text)
}

/// Answers a bill URL request: a fresh one-date download URL, or a business failure.
fn bill_url_answer(shared: &Ctx, r: &Request, ask: &BillAsk) -> Answer {
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
            "bill_download_url": format!("{}/alipay/bills/{token}.zip", r.origin),
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

/// `GET /alipay/bills/{token}.zip`: the bill of the token's date, built now (or the
/// override, once).
async fn download_bill(State(shared): State<Ctx>, Path(file): Path<String>) -> Response {
    let Some(token) = file.strip_suffix(".zip") else {
        return crate::sim::shared::json_error(StatusCode::NOT_FOUND, "not_found", "no such bill");
    };
    match shared.state.fetch_bill(token) {
        BillFetch::Unknown => {
            crate::sim::shared::json_error(StatusCode::NOT_FOUND, "not_found", "no such bill")
        }
        BillFetch::Expired => crate::sim::shared::json_error(
            StatusCode::GONE,
            "expired",
            "this bill URL has expired; ask for a new one",
        ),
        BillFetch::Ready {
            override_body: Some(bytes),
            ..
        } => zip_response(bytes, "bill.zip".to_owned()),
        BillFetch::Ready {
            date,
            override_body: None,
        } => {
            let rows = shared.state.bill_rows(super::CHANNEL, date);
            match build_zip(SIM_BILL_ACCOUNT, date, &rows) {
                Ok(bytes) => zip_response(
                    bytes,
                    format!("{SIM_BILL_ACCOUNT}_{}.csv.zip", date.format("%Y%m%d")),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "simulator could not build a bill");
                    (StatusCode::INTERNAL_SERVER_ERROR, "cannot build the bill").into_response()
                }
            }
        }
    }
}

fn zip_response(bytes: Vec<u8>, name: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use crate::gateway::alipay::{
        extract_sign, extract_signed_object, format_china_time, sign_params,
    };
    use crate::gateway::rsa::RsaPrivateKey;
    use crate::gateway::rsa::RsaPublicKey;
    use crate::sim::alipay::AlipaySim;
    use crate::sim::{self, BuyerClient, BuyerError, RunningSim, SimConfig, SimTradeStatus};
    use serde_json::Value;
    use std::sync::OnceLock;

    const APP_ID: &str = "2021000000000002";

    /// (the app's key, the simulator's key).
    fn keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
        static KEYS: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
        KEYS.get_or_init(|| {
            (
                RsaPrivateKey::generate().unwrap(),
                RsaPrivateKey::generate().unwrap(),
            )
        })
    }

    fn app_key() -> &'static RsaPrivateKey {
        &keys().0
    }

    fn sim_public_key() -> &'static RsaPublicKey {
        keys().1.public_key()
    }

    fn alipay() -> AlipaySim {
        AlipaySim::new(
            APP_ID,
            app_key().public_key().clone(),
            RsaPrivateKey::parse(&keys().1.to_pkcs8_pem()).unwrap(),
            None,
        )
    }

    async fn start_sim() -> RunningSim {
        sim::start(SimConfig::one(alipay())).await.unwrap()
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
    fn verified(body: &str, key: &str) -> Value {
        assert!(
            body.starts_with(&format!("{{\"{key}\":{{")),
            "object first: {body}"
        );
        let object = extract_signed_object(body, key).unwrap();
        let sign = extract_sign(body).unwrap();
        assert!(body.ends_with(&format!(",\"sign\":\"{sign}\"}}")));
        assert!(sim_public_key().verify_base64(object.as_bytes(), &sign));
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
        let v = verified(&body, QUERY_KEY);
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
            let v = verified(&body, key);
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
        let v = verified(&body, QUERY_KEY);
        assert_eq!(v["sub_code"], "isv.invalid-signature");
        // A parameter given twice (query and body) is refused.
        let mut dup = base.clone();
        dup.push(("format".into(), "JSON".into()));
        let body = post_raw(&sim, dup, &["format"], true).await;
        assert_eq!(verified(&body, "error_response")["code"], "40002");

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
            let v = verified(&body, BILL_KEY);
            assert_eq!(
                (v["code"].as_str(), v["sub_code"].as_str()),
                (Some("40004"), Some(sub_code)),
                "{biz}: {body}"
            );
        }
        let biz = format!(r#"{{"bill_type":"trade","bill_date":"{today}"}}"#);
        let body = post_raw(&sim, bill(&biz), &[], true).await;
        let v = verified(&body, BILL_KEY);
        assert_eq!(v["code"], "10000");
        let url = v["bill_download_url"].as_str().unwrap().to_owned();
        assert!(
            url.starts_with(&format!("{}/alipay/bills/", sim.base_url())),
            "{url}"
        );
        assert!(url.ends_with(".zip"));

        let http = reqwest::Client::new();
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let bytes = r.bytes().await.unwrap();
        assert!(crate::gateway::alipay::bill::parse_zip(&bytes, "bill.zip").is_ok());
        for missing in ["/alipay/bills/nope.zip", "/alipay/bills/nope"] {
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
        plan.methods = Some(vec!["bill".to_owned()]);
        buyer.set_faults(&plan).await.unwrap();
        let body = post_raw(&sim, bill(&biz), &[], true).await;
        let v = verified(&body, BILL_KEY);
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
        assert_eq!(verified(&body, BILL_KEY)["code"], "20000");

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

        let vars = buyer.client_vars().await.unwrap();
        assert_eq!(vars["ALIPAY_PUBLIC_KEY"], sim_public_key().to_spki_pem());
        assert_eq!(vars["ALIPAY_APP_ID"], APP_ID);
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
            ..SimConfig::one(alipay())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, sim::SimError::Bind { .. }), "{err}");
        let addr = sim.addr();
        sim.shutdown().await;
        // After shutdown the port no longer answers.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());

        // run_until returns when its shutdown future completes.
        let running = sim::start(SimConfig::one(alipay())).await.unwrap();
        let done = running.run_until(tokio::time::sleep(std::time::Duration::from_millis(50)));
        tokio::time::timeout(std::time::Duration::from_secs(10), done)
            .await
            .unwrap()
            .unwrap();

        // No gateway, or one twice, is refused.
        let none = SimConfig {
            gateways: Vec::new(),
            ..SimConfig::one(alipay())
        };
        assert!(matches!(
            sim::start(none).await.unwrap_err(),
            sim::SimError::Gateways(_)
        ));
        let mut twice = SimConfig::one(alipay());
        twice.gateways.push(std::sync::Arc::new(alipay()));
        assert!(matches!(
            sim::start(twice).await.unwrap_err(),
            sim::SimError::Gateways(_)
        ));
    }
}
