//! The WeChat notification verifier on what the signature alone does not prove: the
//! decrypted resource must name our merchant and our orders' currency, no object in the
//! body or the resource may repeat a key, and the key that signed must be valid now.

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::*;
use crate::sign::{HEADER_SIGNATURE_TYPE, PlatformCert, signature_headers};
use order_closer_gateway::rsa::RsaPrivateKey;

const MCH: &str = "1900000109";
const PUB_ID: &str = "PUB_KEY_ID_0119000001092026120300000000000001";
const CERT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
const API_V3: &str = "0123456789abcdefghijklmnopqrstuv";
const NONCE: &str = "fdasflkja484";

fn key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::generate().unwrap())
}

fn verifier(keys: WechatKeys) -> WechatNotify {
    WechatNotify::new(MCH, Arc::new(keys), ApiV3Key::new(API_V3).unwrap())
}

fn public_key() -> WechatKeys {
    WechatKeys {
        public_key: Some((PUB_ID.into(), key().public_key().clone())),
        platform: Vec::new(),
    }
}

fn transaction() -> Value {
    json!({"mchid": MCH, "appid": "wxd678efh567hg6787", "out_trade_no": "W-1",
           "transaction_id": "4200001", "trade_state": "SUCCESS",
           "amount": {"total": 990, "payer_total": 990, "currency": "CNY"},
           "success_time": "2026-11-21T10:55:23+08:00"})
}

/// The envelope around `resource` (the plaintext, encrypted here) with `event_type`
/// written as `event` (raw JSON text, so that a test can repeat a key).
fn body(resource: &str, event: &str) -> String {
    let ciphertext = ApiV3Key::new(API_V3)
        .unwrap()
        .encrypt(resource, NONCE, "transaction")
        .unwrap();
    format!(
        r#"{{"id":"EV-1","create_time":"2026-11-21T10:55:24+08:00","resource_type":"encrypt-resource",{event},"summary":"支付成功","resource":{{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":"{ciphertext}","associated_data":"transaction","nonce":"{NONCE}"}}}}"#
    )
}

fn paid_event() -> &'static str {
    r#""event_type":"TRANSACTION.SUCCESS""#
}

/// `body` signed under `serial`, as WeChat Pay sends it.
fn signed(body: &str, serial: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in signature_headers(key(), serial, body.as_bytes(), Utc::now()).unwrap() {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    headers
}

fn reason(notice: Notice) -> String {
    match notice.claim {
        Claim::Unverified { reason } | Claim::NotOurs { reason } => reason,
        Claim::Verified { state } => panic!("believed: {state:?}"),
    }
}

#[test]
fn a_genuine_notification_is_verified() {
    let text = body(&transaction().to_string(), paid_event());
    let notice = verifier(public_key())
        .read(&signed(&text, PUB_ID), text.as_bytes())
        .unwrap();
    assert!(
        matches!(
            notice.claim,
            Claim::Verified {
                state: TradeState::Paid {
                    amount_minor: 990,
                    ..
                }
            }
        ),
        "{notice:?}"
    );
}

#[test]
fn a_resource_without_our_mchid_or_in_another_currency_is_not_believed() {
    let mut no_mchid = transaction();
    no_mchid.as_object_mut().unwrap().remove("mchid");
    let mut dollars = transaction();
    dollars["amount"]["currency"] = json!("USD");
    for (resource, why) in [(no_mchid, "is not ours"), (dollars, "currency")] {
        let text = body(&resource.to_string(), paid_event());
        let notice = verifier(public_key())
            .read(&signed(&text, PUB_ID), text.as_bytes())
            .unwrap();
        let reason = reason(notice);
        assert!(reason.contains(why), "{why}: {reason}");
    }
}

#[test]
fn a_repeated_key_in_the_resource_or_the_body_is_refused() {
    // The last `trade_state` would make it paid; the first says unpaid.
    let resource = transaction().to_string().replacen(
        r#""trade_state":"SUCCESS""#,
        r#""trade_state":"NOTPAY","trade_state":"SUCCESS""#,
        1,
    );
    let mch_twice = transaction().to_string().replacen(
        r#""mchid":"1900000109""#,
        r#""mchid":"1900000999","mchid":"1900000109""#,
        1,
    );
    let nested =
        transaction()
            .to_string()
            .replacen(r#""total":990"#, r#""total":1,"total":990"#, 1);
    for resource in [resource, mch_twice, nested] {
        let text = body(&resource, paid_event());
        let err = verifier(public_key())
            .read(&signed(&text, PUB_ID), text.as_bytes())
            .unwrap_err();
        assert!(
            matches!(&err, NoticeError::Malformed(m) if m.contains("appears twice")),
            "{resource}: {err:?}"
        );
    }
    let event_twice = body(
        &transaction().to_string(),
        r#""event_type":"REFUND.SUCCESS","event_type":"TRANSACTION.SUCCESS""#,
    );
    let err = verifier(public_key())
        .read(&signed(&event_twice, PUB_ID), event_twice.as_bytes())
        .unwrap_err();
    assert!(
        matches!(&err, NoticeError::Malformed(m) if m.contains("\"event_type\" appears twice")),
        "{err:?}"
    );
}

fn platform(not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> WechatKeys {
    WechatKeys {
        public_key: None,
        platform: vec![PlatformCert {
            serial: CERT_SERIAL.into(),
            key: key().public_key().clone(),
            not_before,
            not_after,
        }],
    }
}

#[test]
fn a_platform_certificate_outside_its_validity_verifies_nothing_and_says_why() {
    let now = Utc::now();
    let day = Duration::days(1);
    let text = body(&transaction().to_string(), paid_event());
    let headers = signed(&text, CERT_SERIAL);
    let valid = verifier(platform(now - day, now + day))
        .read(&headers, text.as_bytes())
        .unwrap();
    assert!(matches!(valid.claim, Claim::Verified { .. }), "{valid:?}");
    let expired = verifier(platform(now - day * 30, now - day))
        .read(&headers, text.as_bytes())
        .unwrap();
    let why = reason(expired);
    assert!(
        why.contains("expired") && why.contains(CERT_SERIAL),
        "{why}"
    );
    let early = verifier(platform(now + day, now + day * 30))
        .read(&headers, text.as_bytes())
        .unwrap();
    assert!(reason(early).contains("not valid before"));
}

#[test]
fn a_notification_signed_under_another_scheme_is_not_believed() {
    let text = body(&transaction().to_string(), paid_event());
    let mut headers = signed(&text, PUB_ID);
    assert_eq!(
        headers
            .get(HEADER_SIGNATURE_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some(crate::sign::SCHEME)
    );
    headers.insert(
        HeaderName::from_bytes(HEADER_SIGNATURE_TYPE.as_bytes()).unwrap(),
        HeaderValue::from_static("WECHATPAY2-SM2-WITH-SM3"),
    );
    let why = reason(
        verifier(public_key())
            .read(&headers, text.as_bytes())
            .unwrap(),
    );
    assert!(why.contains("Wechatpay-Signature-Type"), "{why}");
}
