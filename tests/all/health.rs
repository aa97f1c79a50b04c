//! The worker's `/healthz`, `/readyz` and `/metrics` over HTTP.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::sync::Arc;
use std::time::Duration;

use crate::common::slow_clients::SlowClients;
use crate::common::{TestEnv, eventually};
use order_closer::health;
use order_closer::http_server::{self, Limits};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_follow_the_worker() {
    let mut env = TestEnv::new(&[]).await;
    let observed = env.start_worker(4, 8);
    let stop = CancellationToken::new();
    let routes = health::router(
        observed.metrics.clone(),
        observed.readiness.clone(),
        env.pool.clone(),
    );
    let addr = health::serve("127.0.0.1:0".parse().unwrap(), routes, stop.clone())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    assert_eq!(get("/healthz").await.0, 200);
    let ready = eventually(Duration::from_secs(10), || async {
        let (status, body) = get("/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(ready.unwrap().contains("\"broker\":true"));

    let no = env.no("metrics");
    env.create(&no, 100, Duration::from_millis(600)).await;
    env.settled(&no, Duration::from_secs(20)).await;
    env.publish_raw(b"garbage").await;
    let metrics = eventually(Duration::from_secs(10), || async {
        let (_, body) = get("/metrics").await;
        body.contains("order_closer_parked_total{reason=\"malformed\"} 1")
            .then_some(body)
    })
    .await
    .expect("the malformed message is counted");
    for needle in [
        "order_closer_decisions_total{outcome=\"closed\"} 1",
        "order_closer_decision_lateness_seconds_count 1",
        "order_closer_gateway_request_seconds_count{channel=\"alipay\",method=\"query\"} 1",
        "# TYPE order_closer_in_flight gauge",
        "# TYPE order_closer_outbox_backlog gauge",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from\n{metrics}");
    }

    // Without a consuming worker the process is alive but not ready.
    env.stop_workers().await;
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"broker\":false"));
    assert_eq!(get("/healthz").await.0, 200);
    stop.cancel();
    env.cleanup().await;
}

/// The health routes over the test's database, without a worker.
fn routes(env: &TestEnv) -> axum::Router {
    health::router(
        Arc::new(order_closer::metrics::Metrics::default()),
        Arc::new(health::Readiness::default()),
        env.pool.clone(),
    )
}

/// A probe as the kubelet sends it, from 127.0.0.1; its status.
async fn probe(addr: std::net::SocketAddr) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .expect("the probe is answered")
}

/// The start of a request that never ends.
const UNFINISHED: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";

/// Clients that never finish their headers are disconnected (one host's
/// connections beyond its bound at once, the others at the header deadline), and a real
/// probe from another host is answered; none holds a socket for ever.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_and_never_starve_the_port() {
    let env = TestEnv::new(&[]).await;
    let stop = CancellationToken::new();
    let addr = health::serve("127.0.0.1:0".parse().unwrap(), routes(&env), stop.clone())
        .await
        .unwrap();
    // Twice as many half-finished requests as the port serves at once, from one host.
    let n = Limits::INTERNAL.max_connections * 2;
    let slow = SlowClients::start(addr, &["127.0.0.2"], n, UNFINISHED, false).await;
    assert_eq!(probe(addr).await, 200);
    // Every slow client is disconnected within a bound well past the header deadline.
    let all_closed = eventually(Duration::from_secs(60), || async {
        (slow.closed() == n).then_some(())
    })
    .await;
    assert!(all_closed.is_some(), "{} of {n} closed", slow.closed());
    stop.cancel();
    env.cleanup().await;
}

/// `/readyz` waited 4 s behind 64 slow clients while Kubernetes gives a probe
/// 1 s. A host holds at most an eighth of the port's connections, so slow clients from
/// seven hosts, more of them than the port has connections, leave room for the probe.
/// Nothing is cut here (every deadline is an hour): the probe is answered while each
/// host's held connections stay open, not after they were freed.
#[tokio::test(flavor = "multi_thread")]
async fn a_probe_is_answered_while_slow_clients_hold_their_connections() {
    let env = TestEnv::new(&[]).await;
    let stop = CancellationToken::new();
    let hour = Duration::from_secs(3600);
    let limits = Limits {
        header_read_timeout: hour,
        body_read_timeout: hour,
        connection_lifetime: hour,
        ..Limits::INTERNAL
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http_server::serve(
        listener,
        routes(&env),
        limits,
        stop.clone(),
    ));
    let hosts = [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.7",
        "127.0.0.8",
    ];
    let per_host = 2 * limits.max_connections_per_source;
    assert!(hosts.len() * per_host > limits.max_connections);
    let slow = SlowClients::start(addr, &hosts, per_host, UNFINISHED, false).await;
    // Each host's connections beyond its bound are closed at once.
    let refused = hosts.len() * (per_host - limits.max_connections_per_source);
    let cut = eventually(Duration::from_secs(60), || async {
        (slow.closed() == refused).then_some(())
    })
    .await;
    assert!(
        cut.is_some(),
        "{} closed, {refused} expected",
        slow.closed()
    );
    assert_eq!(probe(addr).await, 200);
    assert_eq!(
        slow.closed(),
        refused,
        "the held connections are still open: the probe did not wait for them"
    );
    assert!(slow.answers().is_empty(), "{:?}", slow.answers());
    stop.cancel();
    env.cleanup().await;
}
