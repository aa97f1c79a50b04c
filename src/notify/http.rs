//! `POST /notify/{channel}` as an axum router: the body is capped at
//! [`super::MAX_BODY_BYTES`] (413 beyond), and [`serve`] runs it with the
//! public-facing connection limits of [`crate::http_server::Limits::PUBLIC`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{MAX_BODY_BYTES, Notifier};
use crate::http_server::{self, Limits};

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
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let reply = match body {
        Ok(body) => notifier.handle(&channel, &headers, &body).await,
        // Over the limit (or a body that could not be read): refused with its status and
        // counted like every other refusal, nothing read.
        Err(rejection) => notifier.refuse_unread(
            &channel,
            rejection.status().as_u16(),
            &rejection.body_text(),
        ),
    };
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, reply.body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    response
}

/// Binds `addr` and serves the endpoint until `stop`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    notifier: Arc<Notifier>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(http_server::serve(
        listener,
        router(notifier),
        Limits::PUBLIC,
        stop,
    ));
    Ok(bound)
}
