//! The simulator's buyer and admin API under `/sim/` (JSON), shared by every gateway the
//! simulator speaks: buyer actions on trades (scan, pay, pay during the close, refund),
//! the bill override, the fault plan and one-shots, the notification plan, the client
//! variables and the counters.
//!
//! The buyer actions (`scan`, `pay`, `pay-on-close`: the buyer builder's [`Pays`], sent by
//! [`Buyer`](crate::Buyer)) take its terms as their body,
//! `{"amount_minor":n,"channel":"<name>","time_expire":"...","qr_code_expire":"...",
//! "lose_notification":true}`, every field optional but `scan`'s amount. With an amount
//! the trade is scanned first (created if need be): `channel` (which gateway the trade is
//! at) defaults to the first gateway served, `time_expire` (RFC 3339) is the absolute
//! expiry passed by the shop, `qr_code_expire` the QR code's validity. A trade cannot be
//! created at or after either (409 `trade_expired`), and closes if still unpaid at its
//! `time_expire`. `lose_notification` loses the trade's payment notifications.
//!
//! | endpoint | effect |
//! |---|---|
//! | `GET /sim/faults` | the current plan |
//! | `PUT /sim/faults` | sets the plan (JSON body); 400 naming the field if invalid |
//! | `DELETE /sim/faults` | clears the plan and every pending one-shot |
//! | `POST /sim/trades/{no}/fail-next` | `{"kind":"busy_20000","count":N}`: the next N answers about the trade fail |
//! | `POST /sim/trades/{no}/refund` | `{"amount_minor":n}`: refunds part of a paid trade (409 beyond what is left); a full refund closes it |
//! | `PUT /sim/bill-override` | raw body: the next bill download (of any gateway) serves these bytes instead of the bill |
//! | `DELETE /sim/bill-override` | clears the override |
//! | `GET /sim/client-vars` | the variables that configure a client to reach and trust this simulator |

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::buy::{Pays, Terms, apply};
use super::faults::SimMethod;
use super::notifier::{NotifyPlan, SimNotifier};
use super::shared::{Shared, json_error};
use super::state::{BuyerOpError, FaultKind, FaultPlan, SimTradeView};

/// Largest bill override body (`PUT /sim/bill-override`).
const MAX_OVERRIDE_BYTES: usize = 16 * 1024 * 1024;

/// What the buyer API's handlers share: what every gateway's handlers share, plus the
/// notifier (its plan and counters) and the variables that configure a client.
#[derive(Clone)]
pub(crate) struct Desk {
    pub(crate) shared: Arc<Shared>,
    pub(crate) notifier: Arc<SimNotifier>,
    pub(crate) client_vars: Arc<Vec<(String, String)>>,
}

impl std::ops::Deref for Desk {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// The `/sim/` routes.
pub(crate) fn routes() -> Router<Desk> {
    Router::new()
        .route("/sim/trades", get(list_trades))
        .route("/sim/trades/{no}", get(get_trade))
        .route("/sim/trades/{no}/scan", post(scan))
        .route("/sim/trades/{no}/pay", post(pay))
        .route("/sim/trades/{no}/pay-on-close", post(pay_on_close))
        .route("/sim/trades/{no}/fail-next", post(fail_next))
        .route("/sim/trades/{no}/refund", post(refund))
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
        .route("/sim/client-vars", get(client_vars))
        .route("/sim/stats", get(stats))
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

/// Reads the optional body of a buyer action (its [`Terms`]; empty means none).
fn terms(body: &[u8]) -> Result<Terms, BuyerOpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Terms::default());
    }
    let parsed = serde_json::from_slice::<Terms>(body)
        .map_err(|e| BuyerOpError::BadRequest(format!("bad JSON body: {e}")))?;
    parsed.check()?;
    Ok(parsed)
}

fn view_or_error(result: Result<SimTradeView, BuyerOpError>) -> Response {
    match result {
        Ok(view) => axum::Json(view).into_response(),
        Err(e) => op_error(e),
    }
}

/// A buyer's action on trade `no`, paying as the endpoint says (`pays`), its [`Terms`] in
/// `body`: what the buyer builder does in process, by the same [`apply`].
fn act(desk: &Desk, no: &str, body: &[u8], pays: Pays) -> Response {
    view_or_error(terms(body).and_then(|terms| {
        if pays == Pays::Never && terms.amount_minor.is_none() {
            return Err(BuyerOpError::BadRequest(
                "body must give amount_minor".into(),
            ));
        }
        apply(&desk.state, no, &terms, pays)
    }))
}

async fn scan(State(desk): State<Desk>, Path(no): Path<String>, body: Bytes) -> Response {
    act(&desk, &no, &body, Pays::Never)
}

async fn pay(State(desk): State<Desk>, Path(no): Path<String>, body: Bytes) -> Response {
    act(&desk, &no, &body, Pays::Now)
}

async fn pay_on_close(State(desk): State<Desk>, Path(no): Path<String>, body: Bytes) -> Response {
    act(&desk, &no, &body, Pays::OnClose)
}

/// Body of `POST /sim/trades/{no}/refund`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundBody {
    amount_minor: i64,
    /// The gateway, as [`crate::BuyerClient::at`] names it with every amount; a
    /// trade is found by its number alone, so it is accepted and not needed.
    #[serde(default, rename = "channel")]
    _channel: Option<String>,
}

async fn refund(State(shared): State<Desk>, Path(no): Path<String>, body: Bytes) -> Response {
    match serde_json::from_slice::<RefundBody>(&body) {
        Ok(b) => view_or_error(shared.state.refund(&no, b.amount_minor)),
        Err(e) => op_error(BuyerOpError::BadRequest(format!(
            "bad JSON body (expected {{\"amount_minor\":100}}): {e}"
        ))),
    }
}

async fn put_bill_override(State(shared): State<Desk>, body: Bytes) -> Response {
    let len = body.len();
    shared.state.set_bill_override(Some(body.to_vec()));
    tracing::info!(bytes = len, "simulator bill override set");
    axum::Json(json!({ "bytes": len })).into_response()
}

async fn delete_bill_override(State(shared): State<Desk>) -> Response {
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
    /// Only this method's requests fail (`query`, `close`, `refund`, `bill`).
    #[serde(default)]
    method: Option<SimMethod>,
}

fn one() -> u32 {
    1
}

async fn fail_next(State(shared): State<Desk>, Path(no): Path<String>, body: Bytes) -> Response {
    match serde_json::from_slice::<FailNextBody>(&body) {
        Ok(b) => match shared.state.fail_next_on(&no, b.method, b.kind, b.count) {
            Ok(pending) => axum::Json(pending).into_response(),
            Err(e) => op_error(e),
        },
        Err(e) => op_error(BuyerOpError::BadRequest(format!(
            "bad JSON body (expected {{\"kind\":\"busy_20000\",\"count\":1}}): {e}"
        ))),
    }
}

async fn get_faults(State(shared): State<Desk>) -> Response {
    axum::Json(shared.state.faults()).into_response()
}

async fn put_faults(State(shared): State<Desk>, body: Bytes) -> Response {
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

async fn delete_faults(State(shared): State<Desk>) -> Response {
    shared.state.clear_faults();
    tracing::info!("simulator fault plan cleared");
    axum::Json(shared.state.faults()).into_response()
}

async fn get_trade(State(shared): State<Desk>, Path(no): Path<String>) -> Response {
    match shared.state.trade(&no) {
        Some(view) => axum::Json(view).into_response(),
        None => op_error(BuyerOpError::NotFound(no)),
    }
}

async fn list_trades(State(shared): State<Desk>) -> Response {
    axum::Json(shared.state.trades()).into_response()
}

async fn get_notify(State(shared): State<Desk>) -> Response {
    axum::Json(json!({
        "plan": shared.notifier.plan(),
        "stats": shared.notifier.stats(),
    }))
    .into_response()
}

async fn put_notify(State(shared): State<Desk>, body: Bytes) -> Response {
    let installed = serde_json::from_slice::<NotifyPlan>(&body)
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

async fn stats(State(shared): State<Desk>) -> Response {
    axum::Json(shared.state.stats()).into_response()
}

async fn client_vars(State(shared): State<Desk>) -> Response {
    let vars: std::collections::BTreeMap<String, String> =
        shared.client_vars.iter().cloned().collect();
    axum::Json(vars).into_response()
}
