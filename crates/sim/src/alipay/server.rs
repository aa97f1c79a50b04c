//! Alipay's wire protocol in the simulator: `POST /gateway.do` (signed requests in, signed
//! answers out, with the faults of the current [`FaultPlan`](crate::FaultPlan)
//! injected as Alipay would show them), and the bill downloads its bill URLs point at. A
//! request is read and authenticated in `request.rs`; its answer objects are built in
//! `answers.rs`.
//!
//! `alipay.data.dataservice.bill.downloadurl.query` (`{"bill_type":"trade",
//! "bill_date":"yyyy-MM-dd"}`) answers a `bill_download_url` pointing at
//! `GET /alipay/bills/{token}.zip` on this server (the host the request came to), valid
//! for 30 s and for that date only. **Deviation:** Alipay serves only past days (T-1 from
//! about 09:00); the simulator also serves today's bill so far (China time), so that tests
//! need not wait a day. A future or malformed date answers `40004`
//! `isv.invalid-bill-date`, a `bill_type` other than `trade` `40004`
//! `isv.invalid-bill-type`; both sub-codes are unverified against the real gateway.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::AlipaySim;
use super::SIM_BILL_ACCOUNT;
use super::answers::{
    Answer, bill_url_answer, close_answer, failure, query_answer, refund_answer, signed_body,
};
use super::bill::build_zip;
use super::request::{Request, parse_request, sim_method};
use crate::shared::{
    Shared, bad_gateway_page, detached, dropped_connection, empty_json, maintenance_page,
    shutting_down, truncated,
};
use crate::state::{BillFetch, FaultKind, SimTradeStatus};
use order_closer_alipay::Method;
use order_closer_core::money::format_minor;

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
    let request = match parse_request(
        &shared.sim,
        &shared.state,
        query.as_deref().unwrap_or(""),
        &body,
        origin,
    ) {
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
                method = request.method.name(),
                out_trade_no = request.out_trade_no.as_deref().unwrap_or(""),
                fault = %kind,
                "simulator: injecting a fault"
            );
            inject(&shared, &request, kind, decision.hold).await
        }
    }
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
        bill_url_answer(&shared.state, &r.key, &r.origin, ask)
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
    } else if r.method == Method::TradeQuery {
        query_answer(
            r.key.clone(),
            out,
            shared.state.gateway_query(super::CHANNEL, out, tn),
        )
    } else {
        close_answer(
            r.key.clone(),
            out,
            shared.state.gateway_close(super::CHANNEL, out, tn, apply),
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

/// `GET /alipay/bills/{token}.zip`: the bill of the token's date, built now (or the
/// override, once).
async fn download_bill(State(shared): State<Ctx>, Path(file): Path<String>) -> Response {
    let Some(token) = file.strip_suffix(".zip") else {
        return crate::shared::json_error(StatusCode::NOT_FOUND, "not_found", "no such bill");
    };
    match shared.state.fetch_bill(token) {
        BillFetch::Unknown => {
            crate::shared::json_error(StatusCode::NOT_FOUND, "not_found", "no such bill")
        }
        BillFetch::Expired => crate::shared::json_error(
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
#[path = "server_tests.rs"]
mod tests;
