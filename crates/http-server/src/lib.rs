//! Serving HTTP without letting clients hold the process: every server we run (the
//! worker's health and metrics port, the gateway simulator) goes through [`serve`].
//!
//! `axum::serve` has no header-read timeout and no connection limit, so 300 clients that
//! never finish their headers held 300 sockets for ever, and under a file-descriptor
//! limit the worker's own gateway calls then failed with "Too many open files".
//! Here:
//! - at most [`Limits::max_connections`] connections are served at once; the next one
//!   waits in the kernel's backlog, so inbound clients can never take every descriptor;
//! - a client must send its request headers within [`Limits::header_read_timeout`]
//!   (this also bounds an idle keep-alive connection waiting for its next request);
//! - a connection lives at most [`Limits::connection_lifetime`], whatever it does;
//! - request headers are limited to [`Limits::max_header_bytes`];
//! - a request's body must arrive whole within [`Limits::body_read_timeout`] of its
//!   headers (`deadline.rs`): without it, connections declaring a body and sending a byte
//!   every two seconds held the notify endpoint for a minute each;
//! - one source address holds at most [`Limits::max_connections_per_source`] of the
//!   connections (`sources.rs`); beyond that its connections are closed at once, so one
//!   client cannot take every slot however slowly it talks.
//!
//! A connection whose body was not read to the end (refused early, or over its deadline)
//! is closed after its answer unless the rest had arrived already: hyper never waits for
//! a body nobody reads.

mod deadline;
mod sources;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use deadline::{BodyTimeout, timed_out};
use sources::Sources;

/// How long a connection being closed may take to finish its request in flight.
const GRACE: Duration = Duration::from_secs(35);

/// What a server allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (and an idle connection to start
    /// its next request).
    pub header_read_timeout: Duration,
    /// Longest life of one connection.
    pub connection_lifetime: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time a request's body has to arrive whole, from the end of its headers.
    pub body_read_timeout: Duration,
    /// Connections one source address (an IPv6 /64) may hold at once.
    pub max_connections_per_source: usize,
}

impl Limits {
    /// For the worker's health and metrics port: a few probes and scrapers, each sending
    /// its request at once. A source (the kubelet, Prometheus) holds at most 8 of the 64
    /// connections and a client must send its headers within 2 s: slow clients from one
    /// host can no longer keep a probe waiting behind them (Kubernetes gives a probe 1 s),
    /// and eight hosts hogging the port make it wait at most 2 s.
    pub const INTERNAL: Self = Self {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(2),
        connection_lifetime: Duration::from_secs(60),
        max_header_bytes: 16 * 1024,
        body_read_timeout: Duration::from_secs(2),
        max_connections_per_source: 8,
    };

    /// For the notify endpoint, facing the internet: many gateway connections, each
    /// quick; a slow client is cut off rather than waited for. A notification is about
    /// 1.5 KiB (64 KiB at most): 2 s is ample for its body. One source may hold an eighth
    /// of the connections (`ORDER_CLOSER_NOTIFY_CONNECTIONS_PER_SOURCE`).
    pub const PUBLIC: Self = Self {
        max_connections: 1024,
        header_read_timeout: Duration::from_secs(5),
        connection_lifetime: Duration::from_secs(30),
        max_header_bytes: 16 * 1024,
        body_read_timeout: Duration::from_secs(2),
        max_connections_per_source: 128,
    };

    /// For the gateway simulator: many workers' and buyers' connections at once (the
    /// benchmark keeps over a thousand requests in flight, all from one host).
    pub const SIMULATOR: Self = Self {
        max_connections: 4096,
        header_read_timeout: Duration::from_secs(10),
        connection_lifetime: Duration::from_secs(120),
        max_header_bytes: 16 * 1024,
        body_read_timeout: Duration::from_secs(10),
        max_connections_per_source: 4096,
    };
}

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting and
/// gives open connections a moment to finish.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    let body_timeout = limits.body_read_timeout;
    let router = router.layer(axum::middleware::map_request(
        move |request: Request| async move {
            request.map(|body| Body::new(deadline::Deadline::new(body, body_timeout)))
        },
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let sources = Sources::new(limits.max_connections_per_source);
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: wait a
                    // little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over its source's bound: closed unread, and its slot is free again at once.
        let Some(source_slot) = sources.enter(peer.ip()) else {
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _slots = (slot, source_slot);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .max_header_size(limits.max_header_bytes);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = &mut connection => return,
                () = tokio::time::sleep(limits.connection_lifetime) => {}
                () = stop.cancelled() => {}
            }
            // Let the request in flight (if any) finish, then close.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(GRACE, connection).await;
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), connections.wait()).await;
}
