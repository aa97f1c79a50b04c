//! The client against the simulator (real HTTP, real signatures) and against hostile
//! servers: every way a call can fail is retryable or permanent as documented.

use super::*;
use crate::answer::{Code, Status, SubCode, read};
use chrono::Utc;

use order_closer_gateway::{FaultClass, TradeState};
use order_closer_sim::alipay::AlipaySim;
use order_closer_sim::{self as sim, BuyerClient, RunningSim, SimConfig};
use std::sync::OnceLock;

/// Key generation is slow-ish: share a few keys across tests.
fn keys() -> &'static [Arc<RsaPrivateKey>; 3] {
    static KEYS: OnceLock<[Arc<RsaPrivateKey>; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            Arc::new(RsaPrivateKey::generate().unwrap()),
            Arc::new(RsaPrivateKey::generate().unwrap()),
            Arc::new(RsaPrivateKey::generate().unwrap()),
        ]
    })
}

const APP_ID: &str = "2021000000000001";

async fn start_sim() -> RunningSim {
    let [app, sim_key, _] = keys();
    sim::start(SimConfig::one(AlipaySim::new(
        APP_ID,
        app.public_key().clone(),
        RsaPrivateKey::parse(&sim_key.to_pkcs8_pem()).unwrap(),
        None,
    )))
    .await
    .unwrap()
}

/// A configuration for `base` signing with key `app` and trusting key `alipay`'s
/// public half (`keys()[0]` and `[1]` are those the simulator knows).
fn config(base: impl Into<String>, app_id: &str, app: usize, alipay: usize) -> AlipayConfig {
    AlipayConfig::new(
        base,
        app_id,
        keys()[app].clone(),
        Arc::new(keys()[alipay].public_key().clone()),
    )
}

fn client_for(sim: &RunningSim) -> AlipayClient {
    AlipayClient::new(config(sim.base_url(), APP_ID, 0, 1)).unwrap()
}

#[test]
fn config_is_validated() {
    let [app, other, _] = keys();
    let cfg = |url: &str| {
        AlipayConfig::new(
            url,
            APP_ID,
            app.clone(),
            Arc::new(other.public_key().clone()),
        )
    };
    assert!(matches!(
        AlipayClient::new(cfg("not a url")),
        Err(ConfigError::InvalidUrl(_))
    ));
    assert!(matches!(
        AlipayClient::new(cfg("ftp://x")),
        Err(ConfigError::InvalidUrl(_))
    ));
    let ok = AlipayClient::new(cfg("https://openapi.alipay.com/")).unwrap();
    assert_eq!(
        ok.endpoint.as_str(),
        "https://openapi.alipay.com/gateway.do"
    );
    let ok = AlipayClient::new(cfg("http://127.0.0.1:9/gateway.do")).unwrap();
    assert_eq!(ok.endpoint.as_str(), "http://127.0.0.1:9/gateway.do");
    let mut empty = cfg("http://x");
    empty.app_id = " ".into();
    assert!(matches!(
        AlipayClient::new(empty),
        Err(ConfigError::EmptyAppId)
    ));
    let mut zero = cfg("http://x");
    zero.timeout = Duration::ZERO;
    assert!(matches!(
        AlipayClient::new(zero),
        Err(ConfigError::ZeroTimeout)
    ));
}

#[tokio::test]
async fn query_lifecycle_against_the_sim() {
    let sim = start_sim().await;
    let client = client_for(&sim);
    let buyers = BuyerClient::new(sim.base_url()).unwrap();

    let answer = client.query(TradeRef::new("ORD-never")).await.unwrap();
    assert_eq!(answer.state, TradeState::NotFound);
    assert!(answer.raw.contains("ACQ.TRADE_NOT_EXIST"));

    buyers.buyer("ORD-1").scans(1234).send().await.unwrap();
    assert_eq!(
        client.query(TradeRef::new("ORD-1")).await.unwrap().state,
        TradeState::WaitingForPayment
    );

    let before = Utc::now() - chrono::Duration::seconds(2);
    buyers.buyer("ORD-1").pays().send().await.unwrap();
    let view = buyers.trade("ORD-1").await.unwrap().unwrap();
    match client.query(TradeRef::new("ORD-1")).await.unwrap().state {
        TradeState::Paid {
            trade_no,
            amount_minor,
            paid_at,
        } => {
            assert_eq!(trade_no, view.trade_no);
            assert_eq!(trade_no.len(), 28);
            assert_eq!(amount_minor, 1234);
            let paid_at = paid_at.unwrap();
            assert!(paid_at >= before && paid_at <= Utc::now() + chrono::Duration::seconds(2));
        }
        other => panic!("expected Paid, got {other:?}"),
    }
    assert!(sim.state().stats().queries >= 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn close_lifecycle_against_the_sim() {
    let sim = start_sim().await;
    let client = client_for(&sim);
    let buyers = BuyerClient::new(sim.base_url()).unwrap();

    // Close a waiting trade, then it reads as closed.
    buyers.buyer("ORD-W").scans(500).send().await.unwrap();
    assert_eq!(
        client.close(TradeRef::new("ORD-W")).await.unwrap(),
        CloseAnswer::Closed
    );
    assert_eq!(
        client.query(TradeRef::new("ORD-W")).await.unwrap().state,
        TradeState::Closed
    );
    // Closing again is refused (already closed), which the worker resolves by querying.
    assert!(matches!(
        client.close(TradeRef::new("ORD-W")).await.unwrap(),
        CloseAnswer::NotCloseable { .. }
    ));

    // A trade that never existed counts as closed.
    assert_eq!(
        client.close(TradeRef::new("ORD-none")).await.unwrap(),
        CloseAnswer::Closed
    );

    // A paid trade cannot be closed.
    buyers
        .buyer("ORD-P")
        .scans(700)
        .pays()
        .send()
        .await
        .unwrap();
    assert_eq!(
        client.close(TradeRef::new("ORD-P")).await.unwrap(),
        CloseAnswer::NotCloseable {
            sub_code: "ACQ.TRADE_STATUS_ERROR".into()
        }
    );

    // The race: the buyer pays just before our close lands.
    buyers
        .buyer("ORD-R")
        .scans(900)
        .pays_on_close()
        .send()
        .await
        .unwrap();
    assert_eq!(
        client.close(TradeRef::new("ORD-R")).await.unwrap(),
        CloseAnswer::NotCloseable {
            sub_code: "ACQ.TRADE_STATUS_ERROR".into()
        }
    );
    assert!(matches!(
        client.query(TradeRef::new("ORD-R")).await.unwrap().state,
        TradeState::Paid {
            amount_minor: 900,
            ..
        }
    ));
    assert!(sim.state().stats().closes >= 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_alipay_public_key_is_retryable_bad_signature() {
    let sim = start_sim().await;
    let client = AlipayClient::new(config(sim.base_url(), APP_ID, 0, 2)).unwrap();
    let err = client.query(TradeRef::new("ORD-1")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Retryable);
    assert_eq!(err.code, "bad_signature");
    sim.shutdown().await;
}

#[tokio::test]
async fn unregistered_app_key_is_permanent() {
    let sim = start_sim().await;
    let client = AlipayClient::new(config(sim.base_url(), APP_ID, 2, 1)).unwrap();
    let err = client.query(TradeRef::new("ORD-1")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Permanent, "{err}");
    assert_eq!(err.code, "40002");
    assert!(err.message.contains("isv.invalid-signature"), "{err}");
    let err = client.close(TradeRef::new("ORD-1")).await.unwrap_err();
    assert_eq!(
        (err.class, err.code.as_str()),
        (FaultClass::Permanent, "40002")
    );
    assert_eq!(sim.state().stats().signature_failures, 2);

    // Wrong app id is permanent too.
    let client = AlipayClient::new(config(sim.base_url(), "2021999999999999", 0, 1)).unwrap();
    let err = client.query(TradeRef::new("ORD-1")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Permanent, "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn unreachable_gateway_is_retryable() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(format!("http://127.0.0.1:{port}"), APP_ID, 0, 1);
    cfg.timeout = Duration::from_secs(2);
    let client = AlipayClient::new(cfg).unwrap();
    let err = client.query(TradeRef::new("ORD-1")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Retryable, "{err}");
    let err = client.close(TradeRef::new("ORD-1")).await.unwrap_err();
    assert_eq!(err.class, FaultClass::Retryable, "{err}");
}

/// A tiny HTTP server answering every request with a fixed status and body.
async fn fixed_server(status: u16, body: String) -> std::net::SocketAddr {
    use axum::http::StatusCode;
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { (StatusCode::from_u16(status).unwrap(), body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn code_for(status: u16, body: String, timeout: Duration) -> GatewayError {
    let addr = fixed_server(status, body).await;
    let mut cfg = config(format!("http://{addr}"), APP_ID, 0, 1);
    cfg.timeout = timeout;
    AlipayClient::new(cfg)
        .unwrap()
        .query(TradeRef::new("ORD-1"))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn hostile_answers_are_retryable() {
    let t = Duration::from_secs(5);
    let cases = [
        (502, "<html>Bad Gateway</html>".to_owned(), "http_502"),
        (200, "<html>maintenance</html>".to_owned(), "unparseable"),
        (200, "{\"alipay_trade_query_response\":{\"code\":\"10000\"".to_owned(), "unparseable"),
        (
            200,
            "{\"error_response\":{\"code\":\"40002\",\"sub_code\":\"isv.invalid-signature\"}}".to_owned(),
            "unsigned_answer",
        ),
        (
            200,
            "{\"alipay_trade_query_response\":{\"code\":\"10000\",\"out_trade_no\":\"ORD-1\",\"trade_status\":\"TRADE_CLOSED\"},\"sign\":\"AAAA\"}".to_owned(),
            "bad_signature",
        ),
        (200, "x".repeat(MAX_BODY_BYTES + 10), "body_too_large"),
    ];
    for (status, body, code) in cases {
        let err = code_for(status, body, t).await;
        assert_eq!(
            (err.class, err.code.as_str()),
            (FaultClass::Retryable, code),
            "{err}"
        );
        assert!(!err.is_throttle(), "{err}");
    }
    // "Too Many Requests", from Alipay or a proxy before it, slows the account down.
    let err = code_for(429, "slow down".to_owned(), t).await;
    assert_eq!(
        (err.class, err.code.as_str(), err.is_throttle()),
        (FaultClass::Retryable, "http_429", true),
        "{err}"
    );
}

#[tokio::test]
async fn slow_gateway_times_out() {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/gateway.do",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut cfg = config(format!("http://{addr}"), APP_ID, 0, 1);
    cfg.timeout = Duration::from_millis(300);
    let err = AlipayClient::new(cfg)
        .unwrap()
        .query(TradeRef::new("ORD-1"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.class, err.code.as_str()),
        (FaultClass::Retryable, "timeout")
    );
}

#[tokio::test]
async fn call_returns_the_verified_raw_object() {
    let sim = start_sim().await;
    let client = client_for(&sim);
    let answer = client
        .call::<Status>(Method::TradeQuery, &json!({"out_trade_no": "ORD-X"}))
        .await
        .unwrap();
    assert_eq!(answer.response_key, "alipay_trade_query_response");
    assert_eq!(answer.answer.sub_code, Some(SubCode::TradeNotExist));
    assert_eq!(read::<Status>(&answer.raw).unwrap(), answer.answer);
    // An unknown method is a signed 40002 in error_response.
    let answer = client
        .call_named::<Status>("alipay.no.such.method", &json!({}))
        .await
        .unwrap();
    assert_eq!(answer.response_key, "error_response");
    assert_eq!(answer.answer.code, Some(Code::InvalidParameter));
    assert_eq!(answer.answer.sub_code_str(), "isv.invalid-method");
    sim.shutdown().await;
}
