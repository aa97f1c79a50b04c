//! What every simulator request handler shares, whichever gateway it speaks: the trade
//! store, the bound address and the shutdown signal that ends holds at
//! once; and the answers that look the same from any gateway (a proxy's 502 page, a
//! maintenance page, a dropped connection, an empty body, a truncated one).

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::state::SimState;

/// Everything a request handler needs besides its gateway's own keys.
pub struct Shared {
    pub(crate) state: SimState,
    /// The address the server is bound to (URLs handed out, when a request has no
    /// usable `Host`).
    pub(crate) addr: SocketAddr,
    /// Cancelled when the simulator stops: ends latency and `timeout` holds at once.
    pub(crate) shutdown: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("addr", &self.addr).finish()
    }
}

impl Shared {
    /// Sleeps `d`, unless the simulator stops first (then `false`).
    pub(crate) async fn pause(&self, d: Duration) -> bool {
        super::pause(&self.shutdown, d).await
    }

    /// `http://<host>` for URLs handed out by this server: the request's `Host` when it
    /// is a plain host name or address, else the bound address.
    pub(crate) fn origin(&self, headers: &HeaderMap) -> String {
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
            None => format!("http://{}", self.addr),
        }
    }
}

const BAD_GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n\
    <body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>Tengine</center>\r\n\
    </body>\r\n</html>\r\n";

const MAINTENANCE_PAGE: &str = "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
    <title>系统维护</title></head><body><h1>系统维护中，请稍后再试</h1>\
    <p>Service temporarily unavailable.</p></body></html>";

/// The 502 page a proxy in front of the gateway would answer.
pub(crate) fn bad_gateway_page() -> Response {
    html(StatusCode::BAD_GATEWAY, BAD_GATEWAY_PAGE)
}

/// A 200 maintenance page.
pub(crate) fn maintenance_page() -> Response {
    html(StatusCode::OK, MAINTENANCE_PAGE)
}

fn html(status: StatusCode, page: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
}

/// A response that never completes: its body fails at once, so the connection is cut
/// without an answer.
pub(crate) fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated timeout: connection dropped",
        ))
    });
    Response::new(Body::from_stream(stream))
}

/// The answer while the simulator stops.
pub(crate) fn shutting_down() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "simulator shutting down").into_response()
}

/// A 200 with a JSON content type and nothing in it.
pub(crate) fn empty_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        "",
    )
        .into_response()
}

/// The first half of `body`, cut on a character boundary.
pub(crate) fn truncated(body: &str) -> String {
    let mut cut = body.len() / 2;
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    body[..cut].to_owned()
}

/// Runs a gateway request in its own task: a client that gives up and drops the
/// connection must not cancel a close half-way. What the gateway started, it finishes.
pub(crate) async fn detached(work: impl Future<Output = Response> + Send + 'static) -> Response {
    match tokio::spawn(work).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "simulator gateway task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "simulator failure").into_response()
        }
    }
}

/// A JSON error answer of the simulator's own API: `{"error": ..., "message": ...}`.
pub(crate) fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": error, "message": message})),
    )
        .into_response()
}
