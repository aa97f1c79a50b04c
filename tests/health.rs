//! The worker's `/healthz`, `/readyz` and `/metrics` over HTTP.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "cli")]

mod common;

use std::time::Duration;

use common::{TestEnv, eventually};
use order_closer::health;
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

/// Issue 10: clients that never finish their headers are disconnected, and while they
/// hold every slot, a real probe still gets its answer once they are gone; they never
/// hold a socket for ever.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_and_never_starve_the_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = TestEnv::new(&[]).await;
    let stop = CancellationToken::new();
    let routes = health::router(
        std::sync::Arc::new(order_closer::metrics::Metrics::default()),
        std::sync::Arc::new(health::Readiness::default()),
        env.pool.clone(),
    );
    let addr = health::serve("127.0.0.1:0".parse().unwrap(), routes, stop.clone())
        .await
        .unwrap();
    let limits = order_closer::http_server::Limits::INTERNAL;

    // Twice as many half-finished requests as the port serves at once.
    let mut slow = Vec::new();
    for _ in 0..limits.max_connections * 2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    // A real probe waits behind them, then is answered.
    let probe = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // Every slow client is disconnected (read ends) within a bound well past the
    // header timeout; none is held for ever.
    for (i, mut stream) in slow.into_iter().enumerate() {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "slow client {i} still connected");
    }
    assert_eq!(probe.await.unwrap().unwrap(), 200);
    stop.cancel();
    env.cleanup().await;
}
