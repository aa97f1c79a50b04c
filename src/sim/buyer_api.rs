//! The simulator's buyer and admin API under `/sim/` (JSON), shared by every gateway the
//! simulator speaks: buyer actions on trades (scan, pay, pay during the close, refund),
//! the bills' download and override, the fault plan and one-shots, the notification plan,
//! the public key and the counters. The endpoints are listed in `server.rs`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::alipay::bill::build_zip;
use super::shared::Shared;
use super::state::{
    BillFetch, BuyerOpError, FaultKind, FaultPlan, SIM_BILL_ACCOUNT, SimState, SimTradeView,
};

/// Largest bill override body (`PUT /sim/bill-override`).
const MAX_OVERRIDE_BYTES: usize = 16 * 1024 * 1024;

/// The `/sim/` routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/sim/trades", get(list_trades))
        .route("/sim/trades/{no}", get(get_trade))
        .route("/sim/trades/{no}/scan", post(scan))
        .route("/sim/trades/{no}/pay", post(pay))
        .route("/sim/trades/{no}/pay-on-close", post(pay_on_close))
        .route("/sim/trades/{no}/fail-next", post(fail_next))
        .route("/sim/trades/{no}/refund", post(refund))
        .route("/sim/bills/{file}", get(download_bill))
        .route(
            "/sim/bill-override",
            axum::routing::put(put_bill_override)
                .delete(delete_bill_override)
                .layer(DefaultBodyLimit::max(MAX_OVERRIDE_BYTES)),
        )
        .route(
            "/sim/faults",
            get(get_faults).put(put_faults).delete(delete_faults),
        )
        .route("/sim/notify", get(get_notify).put(put_notify))
        .route("/sim/public-key", get(public_key))
        .route("/sim/stats", get(stats))
}

/// Optional JSON body of the buyer actions.
#[derive(Debug, Default, Deserialize)]
struct TradeBody {
    /// The amount, to create the trade if it does not exist.
    amount_minor: Option<i64>,
    /// Alipay's `time_expire` for a trade created by this call (RFC 3339).
    time_expire: Option<DateTime<Utc>>,
    /// The QR code's validity: no first scan at or after it (RFC 3339).
    qr_code_expire: Option<DateTime<Utc>>,
    /// The payment notification is lost (`pay`, `pay-on-close`): the worker's deadline
    /// query is the only way to learn of the payment.
    #[serde(default)]
    lose_notification: bool,
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "message": message})),
    )
        .into_response()
}

fn op_error(e: BuyerOpError) -> Response {
    let (status, kind) = match &e {
        BuyerOpError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        BuyerOpError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        BuyerOpError::Expired(_) => (StatusCode::CONFLICT, "trade_expired"),
        BuyerOpError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        BuyerOpError::Full(_) => (StatusCode::INSUFFICIENT_STORAGE, "simulator_full"),
    };
    json_error(status, kind, &e.to_string())
}

/// Reads an optional `{"amount_minor": n, "time_expire": "..."}` body; empty means
/// neither. A `time_expire` needs an amount: it only applies to a trade being created.
fn trade_body(body: &[u8]) -> Result<TradeBody, BuyerOpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TradeBody::default());
    }
    let parsed = serde_json::from_slice::<TradeBody>(body)
        .map_err(|e| BuyerOpError::BadRequest(format!("bad JSON body: {e}")))?;
    if (parsed.time_expire.is_some() || parsed.qr_code_expire.is_some())
        && parsed.amount_minor.is_none()
    {
        return Err(BuyerOpError::BadRequest(
            "time_expire needs amount_minor (it applies to the trade being created)".into(),
        ));
    }
    Ok(parsed)
}

/// The implicit scan of `pay` and `pay-on-close`: with an amount in the body, a trade
/// never scanned is created first (with the body's `time_expire`).
fn scan_first(state: &SimState, no: &str, body: &TradeBody) -> Result<(), BuyerOpError> {
    match body.amount_minor {
        Some(amount) => state
            .scan_with_terms(no, amount, body.time_expire, body.qr_code_expire)
            .map(|_| ()),
        None => Ok(()),
    }
}

fn view_or_error(result: Result<SimTradeView, BuyerOpError>) -> Response {
    match result {
        Ok(view) => axum::Json(view).into_response(),
        Err(e) => op_error(e),
    }
}

async fn scan(State(shared): State<Arc<Shared>>, Path(no): Path<String>, body: Bytes) -> Response {
    match trade_body(&body) {
        Ok(TradeBody {
            amount_minor: Some(amount),
            time_expire,
            qr_code_expire,
            ..
        }) => view_or_error(
            shared
                .state
                .scan_with_terms(&no, amount, time_expire, qr_code_expire),
        ),
        Ok(_) => op_error(BuyerOpError::BadRequest(
            "body must give amount_minor".into(),
        )),
        Err(e) => op_error(e),
    }
}

async fn pay(State(shared): State<Arc<Shared>>, Path(no): Path<String>, body: Bytes) -> Response {
    let paid = trade_body(&body).and_then(|b| {
        scan_first(&shared.state, &no, &b)?;
        if b.lose_notification {
            shared.state.lose_notifications(&no)?;
        }
        shared.state.pay(&no, None)
    });
    view_or_error(paid)
}

async fn pay_on_close(
    State(shared): State<Arc<Shared>>,
    Path(no): Path<String>,
    body: Bytes,
) -> Response {
    let armed = trade_body(&body).and_then(|b| {
        scan_first(&shared.state, &no, &b)?;
        if b.lose_notification {
            shared.state.lose_notifications(&no)?;
        }
        shared.state.arm_pay_on_close(&no, None)
    });
    view_or_error(armed)
}

/// Body of `POST /sim/trades/{no}/refund`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    amount_minor: i64,
}

async fn refund(
    State(shared): State<Arc<Shared>>,
    Path(no): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<RefundBody>(&body) {
        Ok(b) => view_or_error(shared.state.refund(&no, b.amount_minor)),
        Err(e) => op_error(BuyerOpError::BadRequest(format!(
            "bad JSON body (expected {{\"amount_minor\":100}}): {e}"
        ))),
    }
}

/// `GET /sim/bills/{token}.zip`: the bill of the token's date, built now (or the
/// override, once).
async fn download_bill(State(shared): State<Arc<Shared>>, Path(file): Path<String>) -> Response {
    let Some(token) = file.strip_suffix(".zip") else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such bill");
    };
    match shared.state.fetch_bill(token) {
        BillFetch::Unknown => json_error(StatusCode::NOT_FOUND, "not_found", "no such bill"),
        BillFetch::Expired => json_error(
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
            let rows = shared.state.bill_rows(date);
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

async fn put_bill_override(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let len = body.len();
    shared.state.set_bill_override(Some(body.to_vec()));
    tracing::info!(bytes = len, "simulator bill override set");
    axum::Json(json!({ "bytes": len })).into_response()
}

async fn delete_bill_override(State(shared): State<Arc<Shared>>) -> Response {
    shared.state.set_bill_override(None);
    axum::Json(json!({ "bytes": 0 })).into_response()
}

/// Body of `POST /sim/trades/{no}/fail-next`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailNextBody {
    kind: FaultKind,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

async fn fail_next(
    State(shared): State<Arc<Shared>>,
    Path(no): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<FailNextBody>(&body) {
        Ok(b) => match shared.state.fail_next(&no, b.kind, b.count) {
            Ok(pending) => axum::Json(pending).into_response(),
            Err(e) => op_error(e),
        },
        Err(e) => op_error(BuyerOpError::BadRequest(format!(
            "bad JSON body (expected {{\"kind\":\"busy_20000\",\"count\":1}}): {e}"
        ))),
    }
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.state.faults()).into_response()
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let installed = FaultPlan::from_json(&body).and_then(|plan| {
        shared.state.set_faults(plan.clone())?;
        Ok(plan)
    });
    match installed {
        Ok(plan) => {
            tracing::info!(?plan, "simulator fault plan set");
            axum::Json(plan).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"error": "invalid_fault_plan", "field": e.field, "message": e.message}),
            ),
        )
            .into_response(),
    }
}

async fn delete_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.state.clear_faults();
    tracing::info!("simulator fault plan cleared");
    axum::Json(shared.state.faults()).into_response()
}

async fn get_trade(State(shared): State<Arc<Shared>>, Path(no): Path<String>) -> Response {
    match shared.state.trade(&no) {
        Some(view) => axum::Json(view).into_response(),
        None => op_error(BuyerOpError::NotFound(no)),
    }
}

async fn list_trades(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.state.trades()).into_response()
}

async fn get_notify(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "plan": shared.notifier.plan(),
        "stats": shared.notifier.stats(),
    }))
    .into_response()
}

async fn put_notify(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let installed = serde_json::from_slice::<super::notifier::NotifyPlan>(&body)
        .map_err(|e| e.to_string())
        .and_then(|plan| shared.notifier.set_plan(plan.clone()).map(|()| plan));
    match installed {
        Ok(plan) => {
            tracing::info!(?plan, "simulator notify plan set");
            axum::Json(plan).into_response()
        }
        Err(message) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_notify_plan", "message": message})),
        )
            .into_response(),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.state.stats()).into_response()
}

async fn public_key(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        shared.sim_key.public_key().to_spki_pem(),
    )
        .into_response()
}
