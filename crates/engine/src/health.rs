//! The worker's HTTP side: `/healthz` (the process is alive), `/readyz` (broker session
//! consuming and database answering) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use order_closer_core::db::{self, DbPool};

/// How long `/readyz` waits for the database.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the worker's broker session is consuming (set by the worker).
#[derive(Debug, Default)]
pub struct Readiness {
    broker: AtomicBool,
}

impl Readiness {
    /// Records whether the broker session is consuming.
    pub fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::Relaxed);
    }

    /// Whether the broker session is consuming.
    pub fn broker(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    pool: DbPool,
}

/// The routes.
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>, pool: DbPool) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState {
            metrics,
            readiness,
            pool,
        })
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let broker = state.readiness.broker();
    let database = tokio::time::timeout(DB_CHECK_TIMEOUT, async {
        let mut conn = db::conn(&state.pool).await.ok()?;
        diesel_async::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut conn)
            .await
            .ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    let status = if broker && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "broker": broker, "database": database })),
    )
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Binds `addr` (an error names it) and serves until `stop` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    tokio::spawn(order_closer_http_server::serve(
        listener,
        router,
        order_closer_http_server::Limits::INTERNAL,
        stop,
    ));
    Ok(bound)
}
