//! `POST /notify/{channel}` as an axum router, and [`serve`], which runs it with the
//! public-facing limits of [`order_closer_http_server::Limits::PUBLIC`] (the body deadline and
//! the bound per source address are the server's).
//!
//! Before the body is touched, a request is refused (in the channel's reply format,
//! counted as rejected) when it cannot be a gateway's notification:
//! - a declared `Content-Length` over [`super::MAX_BODY_BYTES`]: 413 at once, never a
//!   `100 Continue` that invites the body;
//! - a `Transfer-Encoding` other than plain `chunked` (`gzip, chunked` would pass the
//!   compressed bytes through as the body): 400;
//! - an absolute-form request target (`POST http://host/notify/alipay`), which only a
//!   proxy is sent: 400.
//!
//! The body is then read up to [`super::MAX_BODY_BYTES`] (413 beyond) within the server's
//! body deadline (408 after it).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{MAX_BODY_BYTES, Notifier};
use order_closer_gateway::notice::echo;
use order_closer_http_server::{self as http_server, Limits};

/// The router to serve, or to mount in a shop's own axum application.
pub fn router(notifier: Arc<Notifier>) -> Router {
    Router::new()
        .route("/notify/{channel}", post(notify))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(notifier)
}

async fn notify(
    State(notifier): State<Arc<Notifier>>,
    Path(channel): Path<String>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    let reply = match unfit(request.uri(), &headers) {
        Some((status, why)) => notifier.refuse_unread(&channel, status.as_u16(), &why),
        None => match Bytes::from_request(request, &()).await {
            Ok(body) => notifier.handle(&channel, &headers, &body).await,
            Err(rejection) => {
                let status = match http_server::timed_out(&rejection) {
                    Some(_) => StatusCode::REQUEST_TIMEOUT,
                    None => rejection.status(),
                };
                notifier.refuse_unread(&channel, status.as_u16(), &rejection.body_text())
            }
        },
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, reply.body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    response
}

/// Why a request cannot be a notification, judged on its head alone.
fn unfit(uri: &Uri, headers: &HeaderMap) -> Option<(StatusCode, String)> {
    if uri.authority().is_some() {
        return Some((
            StatusCode::BAD_REQUEST,
            "an absolute-form request target (a request meant for a proxy)".into(),
        ));
    }
    // Plain `chunked` or nothing: any other coding would hand its bytes on as the body.
    let codings: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let plain = match codings.as_slice() {
        [] => true,
        [only] => only.trim_ascii().eq_ignore_ascii_case(b"chunked"),
        _ => false,
    };
    if !plain {
        let named: Vec<String> = codings
            .iter()
            .map(|c| echo(&String::from_utf8_lossy(c)))
            .collect();
        return Some((
            StatusCode::BAD_REQUEST,
            format!(
                "Transfer-Encoding {:?}: only chunked is accepted",
                named.join(", ")
            ),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > MAX_BODY_BYTES as u64 => Some((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a declared body of {length} bytes, over {MAX_BODY_BYTES}"),
        )),
        _ => None,
    }
}

/// Binds `addr` and serves the endpoint with [`Limits::PUBLIC`] until `stop`; returns the
/// bound address.
pub async fn serve(
    addr: SocketAddr,
    notifier: Arc<Notifier>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, notifier, Limits::PUBLIC, stop).await
}

/// Binds `addr` and serves the endpoint with `limits` until `stop`; returns the bound
/// address.
pub async fn serve_with(
    addr: SocketAddr,
    notifier: Arc<Notifier>,
    limits: Limits,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(http_server::serve(listener, router(notifier), limits, stop));
    Ok(bound)
}
