//! The simulator's Alipay protocol, tested over HTTP: signed requests in, signed answers
//! and faults out, the bill download.

use crate::alipay::AlipaySim;
use crate::{
    self as sim, BuyerClient, BuyerError, RunningSim, SimConfig, SimTradeStatus, SimTradeView,
};
use order_closer_alipay::{extract_sign, extract_signed_object, format_china_time, sign_params};
use order_closer_gateway::rsa::RsaPrivateKey;
use order_closer_gateway::rsa::RsaPublicKey;
use serde_json::Value;
use std::sync::OnceLock;

const APP_ID: &str = "2021000000000002";

/// (the app's key, the simulator's key).
fn keys() -> &'static (RsaPrivateKey, RsaPrivateKey) {
    static KEYS: OnceLock<(RsaPrivateKey, RsaPrivateKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (
            RsaPrivateKey::generate().unwrap(),
            RsaPrivateKey::generate().unwrap(),
        )
    })
}

fn app_key() -> &'static RsaPrivateKey {
    &keys().0
}

fn sim_public_key() -> &'static RsaPublicKey {
    keys().1.public_key()
}

fn alipay() -> AlipaySim {
    AlipaySim::new(
        APP_ID,
        app_key().public_key().clone(),
        RsaPrivateKey::parse(&keys().1.to_pkcs8_pem()).unwrap(),
        None,
    )
}

async fn start_sim() -> RunningSim {
    sim::start(SimConfig::one(alipay())).await.unwrap()
}

fn common(method: &str) -> Vec<(String, String)> {
    [
        ("app_id", APP_ID),
        ("method", method),
        ("format", "JSON"),
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("version", "1.0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .chain([(
        "timestamp".to_owned(),
        format_china_time(chrono::Utc::now()),
    )])
    .collect()
}

/// Signs `params` (plus `extra_unsigned`, added after signing), puts the keys named in
/// `in_query` into the query string and the rest into the form body, posts, and
/// returns the raw body.
async fn post_raw(
    sim: &RunningSim,
    mut params: Vec<(String, String)>,
    in_query: &[&str],
    sign: bool,
) -> String {
    if sign {
        let s = sign_params(app_key(), &params).unwrap();
        params.push(("sign".into(), s));
    }
    let (query, body): (Vec<_>, Vec<_>) = params
        .into_iter()
        .partition(|(k, _)| in_query.contains(&k.as_str()));
    let url = format!(
        "{}/gateway.do?{}",
        sim.base_url(),
        serde_urlencoded::to_string(&query).unwrap()
    );
    reqwest::Client::new()
        .post(url)
        .form(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Checks the answer's layout and signature; returns (member name used, object).
fn verified(body: &str, key: &str) -> Value {
    assert!(
        body.starts_with(&format!("{{\"{key}\":{{")),
        "object first: {body}"
    );
    let object = extract_signed_object(body, key).unwrap();
    let sign = extract_sign(body).unwrap();
    assert!(body.ends_with(&format!(",\"sign\":\"{sign}\"}}")));
    assert!(sim_public_key().verify_base64(object.as_bytes(), &sign));
    serde_json::from_str(object).unwrap()
}

fn with(mut params: Vec<(String, String)>, k: &str, v: &str) -> Vec<(String, String)> {
    params.retain(|(key, _)| key != k);
    params.push((k.to_owned(), v.to_owned()));
    params
}

fn without(mut params: Vec<(String, String)>, k: &str) -> Vec<(String, String)> {
    params.retain(|(key, _)| key != k);
    params
}

const QUERY_KEY: &str = "alipay_trade_query_response";

/// Parameters, whether to sign them, and the expected member, code and sub-code.
type ErrorCase = (
    Vec<(String, String)>,
    bool,
    &'static str,
    &'static str,
    &'static str,
);

/// `POST /sim/trades/{path}` with `body`, as any HTTP client would send it.
async fn post_trade(sim: &RunningSim, path: &str, body: &'static str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/sim/trades/{path}", sim.base_url()))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The status of a buyer the simulator refused.
fn rejected(r: Result<SimTradeView, BuyerError>) -> u16 {
    match r {
        Err(BuyerError::Rejected { status, .. }) => status,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn common_params_in_query_string_and_biz_content_in_body() {
    let sim = start_sim().await;
    BuyerClient::new(sim.base_url())
        .unwrap()
        .buyer("ORD-Q")
        .scans(8888)
        .pays()
        .send()
        .await
        .unwrap();
    let params = with(
        common("alipay.trade.query"),
        "biz_content",
        r#"{"out_trade_no":"ORD-Q"}"#,
    );
    let in_query = [
        "app_id",
        "method",
        "format",
        "charset",
        "sign_type",
        "timestamp",
        "version",
        "sign",
    ];
    let body = post_raw(&sim, params, &in_query, true).await;
    let v = verified(&body, QUERY_KEY);
    assert_eq!(v["code"], "10000");
    assert_eq!(v["trade_status"], "TRADE_SUCCESS");
    assert_eq!(v["total_amount"], "88.88");
    assert_eq!(v["buyer_pay_amount"], "88.88");
    assert!(v["send_pay_date"].as_str().unwrap().len() == 19);
    assert_eq!(v["trade_no"].as_str().unwrap().len(), 28);
    sim.shutdown().await;
}

#[tokio::test]
async fn protocol_errors() {
    let sim = start_sim().await;
    let base = with(
        common("alipay.trade.query"),
        "biz_content",
        r#"{"out_trade_no":"ORD-1"}"#,
    );
    let cases: Vec<ErrorCase> = vec![
        (
            without(base.clone(), "method"),
            true,
            "error_response",
            "40001",
            "isv.missing-method",
        ),
        (
            with(base.clone(), "method", "alipay.trade.pay"),
            true,
            "error_response",
            "40002",
            "isv.invalid-method",
        ),
        (
            without(base.clone(), "app_id"),
            true,
            QUERY_KEY,
            "40001",
            "isv.missing-app-id",
        ),
        (
            with(base.clone(), "app_id", "1"),
            true,
            QUERY_KEY,
            "40002",
            "isv.invalid-app-id",
        ),
        (
            base.clone(),
            false,
            QUERY_KEY,
            "40001",
            "isv.missing-signature",
        ),
        (
            with(base.clone(), "sign_type", "RSA"),
            true,
            QUERY_KEY,
            "40002",
            "isv.invalid-signature-type",
        ),
        (
            without(base.clone(), "timestamp"),
            true,
            QUERY_KEY,
            "40001",
            "isv.missing-timestamp",
        ),
        (
            with(base.clone(), "timestamp", "yesterday"),
            true,
            QUERY_KEY,
            "40002",
            "isv.invalid-timestamp",
        ),
        (
            without(base.clone(), "biz_content"),
            true,
            QUERY_KEY,
            "40001",
            "isv.missing-biz-content",
        ),
        (
            with(base.clone(), "biz_content", "not json"),
            true,
            QUERY_KEY,
            "40002",
            "isv.invalid-parameter",
        ),
        (
            with(base.clone(), "biz_content", "{}"),
            true,
            QUERY_KEY,
            "40004",
            "ACQ.INVALID_PARAMETER",
        ),
    ];
    for (params, sign, key, code, sub_code) in cases {
        let body = post_raw(&sim, params, &[], sign).await;
        let v = verified(&body, key);
        assert_eq!(
            (v["code"].as_str(), v["sub_code"].as_str()),
            (Some(code), Some(sub_code)),
            "{body}"
        );
    }

    // A signature over other content is refused and counted.
    let mut tampered = base.clone();
    let sig = sign_params(app_key(), &tampered).unwrap();
    tampered.push(("sign".into(), sig));
    let tampered = with(tampered, "biz_content", r#"{"out_trade_no":"ORD-2"}"#);
    let body = post_raw(&sim, tampered, &[], false).await;
    let v = verified(&body, QUERY_KEY);
    assert_eq!(v["sub_code"], "isv.invalid-signature");
    // A parameter given twice (query and body) is refused.
    let mut dup = base.clone();
    dup.push(("format".into(), "JSON".into()));
    let body = post_raw(&sim, dup, &["format"], true).await;
    assert_eq!(verified(&body, "error_response")["code"], "40002");

    let stats = sim.state().stats();
    assert_eq!(stats.signature_failures, 1);
    assert_eq!(stats.queries, 0);
    assert_eq!(stats.gateway_requests, 13);
    assert_eq!(stats.rejected_requests, 12);
    sim.shutdown().await;
}

#[tokio::test]
async fn bill_url_requests() {
    const BILL_KEY: &str = "alipay_data_dataservice_bill_downloadurl_query_response";
    let sim = start_sim().await;
    let bill = |biz: &str| {
        with(
            common(order_closer_alipay::Method::BillDownloadUrl.name()),
            "biz_content",
            biz,
        )
    };
    let today = crate::state::china_date(chrono::Utc::now());
    let tomorrow = today.succ_opt().unwrap();
    let cases = [
        (
            r#"{"bill_type":"signcustomer","bill_date":"2020-01-01"}"#.to_owned(),
            "isv.invalid-bill-type",
        ),
        (
            r#"{"bill_date":"2020-01-01"}"#.to_owned(),
            "isv.invalid-bill-type",
        ),
        (
            r#"{"bill_type":"trade"}"#.to_owned(),
            "isv.invalid-bill-date",
        ),
        (
            r#"{"bill_type":"trade","bill_date":"2020-1-1"}"#.to_owned(),
            "isv.invalid-bill-date",
        ),
        (
            r#"{"bill_type":"trade","bill_date":"2020-01"}"#.to_owned(),
            "isv.invalid-bill-date",
        ),
        (
            r#"{"bill_type":"trade","bill_date":"2020-02-30"}"#.to_owned(),
            "isv.invalid-bill-date",
        ),
        (
            format!(r#"{{"bill_type":"trade","bill_date":"{tomorrow}"}}"#),
            "isv.invalid-bill-date",
        ),
    ];
    for (biz, sub_code) in cases {
        let body = post_raw(&sim, bill(&biz), &[], true).await;
        let v = verified(&body, BILL_KEY);
        assert_eq!(
            (v["code"].as_str(), v["sub_code"].as_str()),
            (Some("40004"), Some(sub_code)),
            "{biz}: {body}"
        );
    }
    let biz = format!(r#"{{"bill_type":"trade","bill_date":"{today}"}}"#);
    let body = post_raw(&sim, bill(&biz), &[], true).await;
    let v = verified(&body, BILL_KEY);
    assert_eq!(v["code"], "10000");
    let url = v["bill_download_url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/alipay/bills/", sim.base_url())),
        "{url}"
    );
    assert!(url.ends_with(".zip"));

    let http = reqwest::Client::new();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert!(order_closer_alipay::bill::parse_zip(&bytes, "bill.zip").is_ok());
    for missing in ["/alipay/bills/nope.zip", "/alipay/bills/nope"] {
        let r = http
            .get(format!("{}{missing}", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }

    // Overrides larger than an ordinary request body are accepted.
    let big = vec![b'x'; 200 * 1024];
    BuyerClient::new(sim.base_url())
        .unwrap()
        .override_bill(big.clone())
        .await
        .unwrap();
    assert_eq!(
        http.get(&url).send().await.unwrap().bytes().await.unwrap(),
        big
    );

    // The bill method can be named in a fault plan; wrong_order does not apply to it.
    let buyers = BuyerClient::new(sim.base_url()).unwrap();
    let mut plan = crate::FaultPlan::only(crate::FaultKind::WrongOrder, 1.0);
    plan.methods = Some(vec!["bill".to_owned()]);
    buyers.set_faults(&plan).await.unwrap();
    let body = post_raw(&sim, bill(&biz), &[], true).await;
    let v = verified(&body, BILL_KEY);
    assert_eq!(v["code"], "10000");
    assert!(v.get("out_trade_no").is_none());
    buyers
        .set_faults(&crate::FaultPlan::only(crate::FaultKind::Busy20000, 1.0))
        .await
        .unwrap();
    let body = post_raw(&sim, bill(&biz), &[], true).await;
    assert_eq!(verified(&body, BILL_KEY)["code"], "20000");

    let stats = sim.state().stats();
    assert_eq!(stats.bill_url_requests, 10);
    assert_eq!(stats.bill_downloads, 2);
    assert_eq!(stats.rejected_requests, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn buyer_api() {
    let sim = start_sim().await;
    let buyers = BuyerClient::new(sim.base_url()).unwrap();
    assert_eq!(buyers.trade("nope").await.unwrap(), None);
    assert_eq!(rejected(buyers.buyer("nope").pays().send().await), 404);
    assert_eq!(
        rejected(buyers.buyer("nope").pays_on_close().send().await),
        404
    );
    assert_eq!(rejected(buyers.buyer("A").scans(0).send().await), 400);

    let a = buyers.buyer("A b/c").scans(1234).send().await.unwrap();
    assert_eq!(a.out_trade_no, "A b/c");
    assert_eq!(a.status, SimTradeStatus::WaitBuyerPay);
    assert_eq!(buyers.buyer("A b/c").scans(1234).send().await.unwrap(), a);
    assert_eq!(rejected(buyers.buyer("A b/c").scans(999).send().await), 409);
    assert_eq!(buyers.trade("A b/c").await.unwrap(), Some(a.clone()));

    let armed = buyers.buyer("A b/c").pays_on_close().send().await.unwrap();
    assert!(armed.pay_on_close);
    let paid = buyers.buyer("A b/c").pays().send().await.unwrap();
    assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
    assert!(!paid.pay_on_close);
    assert_eq!(rejected(buyers.buyer("A b/c").pays().send().await), 409);
    assert_eq!(
        rejected(buyers.buyer("A b/c").pays_on_close().send().await),
        409
    );

    let implicit = buyers.buyer("B").scans(50).pays().send().await.unwrap();
    assert_eq!(
        (implicit.status, implicit.amount_minor),
        (SimTradeStatus::TradeSuccess, 50)
    );

    // Raw endpoints: missing amount, bad JSON.
    assert_eq!(post_trade(&sim, "C/scan", "").await.status(), 400);
    let r = post_trade(&sim, "C/pay", "{oops").await;
    assert_eq!(r.status(), 400);
    let err: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(err["error"], "bad_request");

    let vars = buyers.client_vars().await.unwrap();
    assert_eq!(vars["ALIPAY_PUBLIC_KEY"], sim_public_key().to_spki_pem());
    assert_eq!(vars["ALIPAY_APP_ID"], APP_ID);
    assert_eq!(buyers.stats().await.unwrap(), sim.state().stats());
    assert_eq!(sim.state().trades().len(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_buyer_builder_over_http() {
    let sim = start_sim().await;
    let buyers = BuyerClient::new(sim.base_url()).unwrap();
    // Scanned and paid in one request, its notification lost.
    let lost = buyers
        .buyer("L")
        .scans(10)
        .pays()
        .loses_notification()
        .send()
        .await
        .unwrap();
    assert!(lost.notification_lost && lost.paid_at.is_some());

    // The bodies callers have always sent still work: a scan, then a pay losing the
    // notification.
    let r = post_trade(&sim, "M/scan", r#"{"amount_minor":20}"#).await;
    assert_eq!(r.status(), 200);
    let r = post_trade(&sim, "M/pay", r#"{"lose_notification":true}"#).await;
    assert_eq!(r.status(), 200);
    let m: SimTradeView = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(m.notification_lost && m.paid_at.is_some());

    // A gateway not spoken here, as the client's default or the buyer's own: refused.
    let elsewhere = buyers.at("nowhere");
    assert_eq!(rejected(elsewhere.buyer("N").scans(1).send().await), 400);
    assert_eq!(
        rejected(buyers.buyer("N").at("nowhere").scans(1).send().await),
        400
    );
    // A buyer who does nothing, or an expiry on a trade not being created.
    assert_eq!(rejected(buyers.buyer("M").send().await), 400);
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        rejected(buyers.buyer("M").expiring_at(later).pays().send().await),
        400
    );
    assert_eq!(sim.state().trades().len(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn time_expire_in_the_buyer_api() {
    let sim = start_sim().await;
    let buyers = BuyerClient::new(sim.base_url()).unwrap();
    // Past: refused, nothing created, whichever action would create the trade.
    for (path, body) in [
        (
            "E/scan",
            r#"{"amount_minor":100,"time_expire":"2000-01-01T00:00:00Z"}"#,
        ),
        (
            "E/pay",
            r#"{"amount_minor":100,"time_expire":"2000-01-01T08:00:00+08:00"}"#,
        ),
        (
            "E/pay-on-close",
            r#"{"amount_minor":100,"time_expire":"2000-01-01T00:00:00Z"}"#,
        ),
    ] {
        let r = post_trade(&sim, path, body).await;
        assert_eq!(r.status(), 409, "{path}");
        let err: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(err["error"], "trade_expired", "{path}");
    }
    assert_eq!(buyers.trade("E").await.unwrap(), None);
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    match buyers
        .buyer("E")
        .scans(100)
        .expiring_at(past)
        .pays()
        .send()
        .await
    {
        Err(BuyerError::Rejected { status, error, .. }) => {
            assert_eq!((status, error.as_str()), (409, "trade_expired"));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(sim.state().trades().is_empty());

    // Future, any offset: stored as given.
    let r = post_trade(
        &sim,
        "F/scan",
        r#"{"amount_minor":1,"time_expire":"2999-01-01T08:00:00+08:00"}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    let view = buyers.trade("F").await.unwrap().unwrap();
    assert_eq!(
        view.time_expire,
        Some("2999-01-01T00:00:00Z".parse().unwrap())
    );
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let paid = buyers
        .buyer("G")
        .scans(5)
        .expiring_at(future)
        .pays()
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
    assert_eq!(paid.time_expire, Some(future));

    // Malformed: not RFC 3339, or an expiry without an amount to create the trade.
    for (path, body) in [
        ("H/scan", r#"{"amount_minor":1,"time_expire":"tomorrow"}"#),
        (
            "H/scan",
            r#"{"amount_minor":1,"time_expire":"2026-11-22 10:00:00"}"#,
        ),
        ("H/scan", r#"{"time_expire":"2999-01-01T00:00:00Z"}"#),
        ("F/pay", r#"{"time_expire":"2999-01-01T00:00:00Z"}"#),
    ] {
        let r = post_trade(&sim, path, body).await;
        assert_eq!(r.status(), 400, "{path} {body}");
    }
    assert_eq!(sim.state().trades().len(), 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn lifecycle_helpers() {
    // Binding a port that is taken fails cleanly.
    let sim = start_sim().await;
    let err = sim::start(SimConfig {
        listen: sim.addr(),
        ..SimConfig::one(alipay())
    })
    .await
    .unwrap_err();
    assert!(matches!(err, sim::SimError::Bind { .. }), "{err}");
    let addr = sim.addr();
    sim.shutdown().await;
    // After shutdown the port no longer answers.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    // run_until returns when its shutdown future completes.
    let running = sim::start(SimConfig::one(alipay())).await.unwrap();
    let done = running.run_until(tokio::time::sleep(std::time::Duration::from_millis(50)));
    tokio::time::timeout(std::time::Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();

    // No gateway, or one twice, is refused.
    let none = SimConfig {
        gateways: Vec::new(),
        ..SimConfig::one(alipay())
    };
    assert!(matches!(
        sim::start(none).await.unwrap_err(),
        sim::SimError::Gateways(_)
    ));
    let mut twice = SimConfig::one(alipay());
    twice.gateways.push(std::sync::Arc::new(alipay()));
    assert!(matches!(
        sim::start(twice).await.unwrap_err(),
        sim::SimError::Gateways(_)
    ));
}
