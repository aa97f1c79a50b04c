//! The simulator's WeChat Pay is WeChat-exact where SDKs look: every signed answer and
//! every notification names its scheme in `Wechatpay-Signature-Type`, and every time it
//! writes is whole seconds at +08:00, as WeChat Pay's are.

use std::sync::Arc;

use axum::http::HeaderMap;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use crate::state::{SimRefund, SimTradeStatus, SimTradeView};
use crate::wechat::{SIM_MERCHANT_SERIAL, SIM_PUBLIC_KEY_ID, WechatSim};
use crate::{self as sim, BuyerClient, Forge, SimConfig, SimGateway};
use order_closer_gateway::rsa::RsaPrivateKey;
use order_closer_wechat::sign::{self, HEADER_SIGNATURE_TYPE, SCHEME, SignedBy, WechatKeys};

/// `2026-12-07T13:17:16+08:00`, never `2026-12-07T13:17:16.776024082+08:00`.
fn assert_whole_seconds(value: &Value, what: &str) {
    let text = value.as_str().unwrap_or_else(|| panic!("{what}: {value}"));
    assert!(
        text.len() == 25
            && text.ends_with("+08:00")
            && !text.contains('.')
            && DateTime::parse_from_rfc3339(text).is_ok(),
        "{what} is not whole seconds at +08:00: {text}"
    );
}

/// An instant with a fraction of a second, as the simulator's clock gives them.
fn with_nanos(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 776_024_082).unwrap()
}

fn keys_of(sim: &WechatSim) -> WechatKeys {
    WechatKeys {
        public_key: Some((SIM_PUBLIC_KEY_ID.into(), sim.platform_public_key().clone())),
        platform: Vec::new(),
    }
}

/// A signed request of the merchant; the answer's status, headers and body.
async fn call(
    base: &str,
    merchant: &RsaPrivateKey,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, HeaderMap, String) {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    let authorization = sign::authorization(
        merchant,
        order_closer_wechat::config::DEFAULT_MCH_ID,
        SIM_MERCHANT_SERIAL,
        method.as_str(),
        path,
        &text,
        Utc::now(),
    )
    .unwrap();
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header(reqwest::header::AUTHORIZATION, authorization);
    if !text.is_empty() {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(text);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test]
async fn every_answer_names_its_signature_type_and_writes_whole_seconds() {
    let wechat = WechatSim::generate().unwrap();
    let merchant = Arc::clone(wechat.merchant_private_key.as_ref().unwrap());
    let keys = keys_of(&wechat);
    let running = sim::start(SimConfig::one(wechat)).await.unwrap();
    let base = running.base_url();
    let buyers = BuyerClient::new(&base).unwrap().at("wechat");
    buyers
        .buyer("WX-TIME-1")
        .scans(990)
        .pays()
        .send()
        .await
        .unwrap();

    let query = "/v3/pay/transactions/out-trade-no/WX-TIME-1?mchid=1900000109";
    let unknown = "/v3/pay/transactions/out-trade-no/WX-NONE-1?mchid=1900000109";
    let close = "/v3/pay/transactions/out-trade-no/WX-NONE-1/close";
    let refund = json!({"out_trade_no": "WX-TIME-1", "out_refund_no": "RF-WX-TIME-1",
                        "amount": {"refund": 990, "total": 990, "currency": "CNY"}});
    let answers = [
        (reqwest::Method::GET, query, None, 200),
        (reqwest::Method::GET, unknown, None, 404),
        (
            reqwest::Method::POST,
            close,
            Some(json!({"mchid": "1900000109"})),
            204,
        ),
        (
            reqwest::Method::POST,
            "/v3/refund/domestic/refunds",
            Some(refund),
            200,
        ),
    ];
    let mut bodies = Vec::new();
    for (method, path, body, expected) in answers {
        let (status, headers, text) = call(&base, &merchant, method, path, body).await;
        assert_eq!(status, expected, "{path}: {text}");
        assert_eq!(
            headers
                .get(HEADER_SIGNATURE_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(SCHEME),
            "{path}"
        );
        let signed = SignedBy::from_headers(&headers);
        assert_eq!(
            sign::verify(&keys, signed, text.as_bytes(), Utc::now()),
            Ok(()),
            "{path}"
        );
        bodies.push(serde_json::from_str::<Value>(&text).unwrap_or(Value::Null));
    }
    assert_whole_seconds(&bodies[0]["success_time"], "the query's success_time");
    assert_whole_seconds(&bodies[3]["create_time"], "the refund's create_time");
    assert_whole_seconds(&bodies[3]["success_time"], "the refund's success_time");
    running.shutdown().await;
}

fn trade(status: SimTradeStatus, refunds: Vec<SimRefund>) -> SimTradeView {
    SimTradeView {
        channel: "wechat".into(),
        out_trade_no: "WX-N-1".into(),
        trade_no: "4200000000000001".into(),
        amount_minor: 990,
        status,
        created_at: with_nanos(1_796_620_000),
        paid_at: Some(with_nanos(1_796_620_036)),
        closed_at: None,
        pay_on_close: false,
        time_expire: None,
        refunds,
        notification_lost: false,
    }
}

#[test]
fn every_notification_names_its_signature_type_and_writes_whole_seconds() {
    let wechat = WechatSim::generate().unwrap();
    let keys = keys_of(&wechat);
    let refunded = SimRefund {
        refund_no: "RF42000000000000011".into(),
        amount_minor: 990,
        refunded_at: with_nanos(1_796_620_100),
        out_request_no: Some("RF-WX-N-1".into()),
    };
    for (view, time_field) in [
        (
            trade(SimTradeStatus::TradeSuccess, Vec::new()),
            "success_time",
        ),
        (
            trade(SimTradeStatus::TradeClosed, vec![refunded]),
            "success_time",
        ),
    ] {
        let sent_at = with_nanos(Utc::now().timestamp());
        let out = wechat
            .notification(&view, "N-1", Forge::sent_at(sent_at))
            .unwrap();
        let header = |name: &str| {
            out.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header(HEADER_SIGNATURE_TYPE), Some(SCHEME));
        let signed = SignedBy {
            timestamp: header(sign::HEADER_TIMESTAMP),
            nonce: header(sign::HEADER_NONCE),
            signature: header(sign::HEADER_SIGNATURE),
            serial: header(sign::HEADER_SERIAL),
            signature_type: header(HEADER_SIGNATURE_TYPE),
        };
        assert_eq!(
            sign::verify(&keys, signed, out.body.as_bytes(), sent_at),
            Ok(())
        );
        let envelope: Value = serde_json::from_str(&out.body).unwrap();
        assert_whole_seconds(&envelope["create_time"], "the envelope's create_time");
        let r = &envelope["resource"];
        let text = |name: &str| r[name].as_str().unwrap();
        let plain = wechat
            .api_v3_key
            .decrypt(text("ciphertext"), text("nonce"), text("associated_data"))
            .unwrap();
        let resource: Value = serde_json::from_str(&plain).unwrap();
        assert_whole_seconds(&resource[time_field], "the resource's time");
    }
}
