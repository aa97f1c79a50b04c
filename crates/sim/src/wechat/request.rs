//! Reading one WeChat Pay request in the simulator: the request as it arrived, its
//! `Authorization` checked (fields in any order, the merchant's serial, a timestamp within
//! 5 minutes, SHA256withRSA over the exact method, URI and body; the refusal is an
//! unsigned 401 `SIGN_ERROR`), and what each endpoint asks ([`Call`]), its parameters
//! checked as WeChat Pay checks them (a refusal is the [`Reply`] to sign).

use axum::body::Bytes;
use axum::extract::OriginalUri;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};
use serde_json::{Value, json};

use super::WechatSim;
use super::answers::{RefundAsk, Reply, param_error};
use crate::SimMethod;
use order_closer_wechat::sign::{self, MAX_SKEW_SECS};

/// What a request asks, once read.
#[derive(Debug, Clone)]
pub(super) enum Call {
    Query {
        no: String,
    },
    Close {
        no: String,
    },
    Refund(RefundAsk),
    Bill {
        date: Option<NaiveDate>,
        origin: String,
    },
}

impl Call {
    pub(super) fn method(&self) -> SimMethod {
        match self {
            Self::Query { .. } => SimMethod::Query,
            Self::Close { .. } => SimMethod::Close,
            Self::Refund(_) => SimMethod::Refund,
            Self::Bill { .. } => SimMethod::Bill,
        }
    }

    pub(super) fn out_trade_no(&self) -> Option<&str> {
        match self {
            Self::Query { no } | Self::Close { no } => Some(no),
            Self::Refund(ask) => Some(&ask.out_trade_no),
            Self::Bill { .. } => None,
        }
    }
}

/// Checks a request's `Authorization`; the refusal is an unsigned 401 `SIGN_ERROR`.
pub(super) fn authenticate(
    sim: &WechatSim,
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let auth = sign::parse_authorization(header)?;
    if auth.mchid != sim.mchid {
        return Err(format!("mchid {:?} is not the merchant here", auth.mchid));
    }
    if auth.serial_no != sim.merchant_serial {
        return Err("serial_no is not the merchant certificate's".into());
    }
    if (Utc::now().timestamp() - auth.timestamp).abs() >= MAX_SKEW_SECS {
        return Err("the timestamp is more than 5 minutes away".into());
    }
    let body = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    let message = sign::request_message(method.as_str(), uri, auth.timestamp, &auth.nonce, body);
    if !sim
        .merchant_public_key
        .verify_base64(message.as_bytes(), &auth.signature)
    {
        return Err("the signature does not verify with the merchant's key".into());
    }
    Ok(())
}

pub(super) fn sign_error(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"code": "SIGN_ERROR", "message": format!("签名错误: {why}")}).to_string(),
    )
        .into_response()
}

/// A request as it arrived.
pub(super) struct Arrived {
    pub(super) method: Method,
    pub(super) uri: String,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

pub(super) fn arrived(
    method: Method,
    uri: &OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Arrived {
    Arrived {
        method,
        uri: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers,
        body,
    }
}

/// The query parameter `name` of `uri`, decoded.
fn query_param(uri: &str, name: &str) -> Option<String> {
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The `mchid` query parameter must be the merchant's.
fn check_mchid(sim: &WechatSim, uri: &str) -> Result<(), Reply> {
    match query_param(uri, "mchid") {
        Some(m) if m == sim.mchid => Ok(()),
        Some(_) => Err(param_error("商户号与请求不符")),
        None => Err(param_error("缺少参数mchid")),
    }
}

/// `GET /v3/pay/transactions/out-trade-no/{no}?mchid=`.
pub(super) fn read_query(sim: &WechatSim, a: &Arrived, no: String) -> Result<Call, Reply> {
    check_mchid(sim, &a.uri)?;
    Ok(Call::Query { no })
}

/// `POST /v3/pay/transactions/out-trade-no/{no}/close` with `{"mchid": ...}`.
pub(super) fn read_close(sim: &WechatSim, a: &Arrived, no: String) -> Result<Call, Reply> {
    let mchid = serde_json::from_slice::<Value>(&a.body)
        .ok()
        .and_then(|v| v.get("mchid").and_then(Value::as_str).map(str::to_owned));
    if mchid.as_deref() != Some(sim.mchid.as_str()) {
        return Err(param_error("mchid 不正确"));
    }
    Ok(Call::Close { no })
}

/// `POST /v3/refund/domestic/refunds`.
pub(super) fn read_refund(a: &Arrived) -> Result<Call, Reply> {
    let ask: RefundAsk =
        serde_json::from_slice(&a.body).map_err(|e| param_error(&format!("参数错误: {e}")))?;
    if ask.amount.refund <= 0 || ask.out_refund_no.is_empty() {
        return Err(param_error("退款金额或退款单号不正确"));
    }
    if ask.amount.currency.as_deref().is_some_and(|c| c != "CNY") {
        return Err(param_error("币种不正确"));
    }
    Ok(Call::Refund(ask))
}

/// `GET /v3/bill/tradebill?bill_date=&bill_type=ALL&tar_type=GZIP`; `origin` is where
/// its download URL points.
pub(super) fn read_tradebill(a: &Arrived, origin: String) -> Result<Call, Reply> {
    let param = |name: &str| query_param(&a.uri, name);
    if param("bill_type").is_some_and(|t| t != "ALL")
        || param("tar_type").is_some_and(|t| t != "GZIP")
    {
        return Err(param_error(
            "the simulator serves bill_type=ALL, tar_type=GZIP",
        ));
    }
    let date = param("bill_date").and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
    Ok(Call::Bill { date, origin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(uri: &str, body: &str) -> Arrived {
        Arrived {
            method: Method::POST,
            uri: uri.to_owned(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn refused(read: Result<Call, Reply>) -> String {
        match read {
            Ok(call) => panic!("accepted: {call:?}"),
            Err(reply) => {
                assert_eq!(reply.status, StatusCode::BAD_REQUEST);
                reply.body
            }
        }
    }

    #[test]
    fn refunds_are_checked_as_wechat_pay_checks_them() {
        let body = |refund: i64, no: &str, currency: &str| {
            json!({"out_trade_no": "W1", "out_refund_no": no,
                "amount": {"refund": refund, "total": 100, "currency": currency}})
            .to_string()
        };
        let uri = "/v3/refund/domestic/refunds";
        match read_refund(&at(uri, &body(10, "R1", "CNY"))) {
            Ok(Call::Refund(ask)) => {
                assert_eq!((ask.out_trade_no.as_str(), ask.amount.refund), ("W1", 10));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            body(0, "R1", "CNY"),
            body(10, "", "CNY"),
            body(10, "R1", "USD"),
        ] {
            assert!(refused(read_refund(&at(uri, &bad))).contains("PARAM_ERROR"));
        }
        assert!(refused(read_refund(&at(uri, "{}"))).contains("参数错误"));
    }

    #[test]
    fn the_trade_bill_is_served_for_all_gzipped() {
        let read = |query: &str| {
            read_tradebill(
                &at(&format!("/v3/bill/tradebill?{query}"), ""),
                "http://o".into(),
            )
        };
        match read("bill_date=2026-12-01&bill_type=ALL&tar_type=GZIP") {
            Ok(Call::Bill { date, origin }) => {
                assert_eq!(date, NaiveDate::from_ymd_opt(2026, 12, 1));
                assert_eq!(origin, "http://o");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read("bill_date=12/01"),
            Ok(Call::Bill { date: None, .. })
        ));
        for query in ["bill_type=SUCCESS", "tar_type=NONE&bill_date=2026-12-01"] {
            assert!(refused(read(query)).contains("bill_type=ALL"));
        }
        assert_eq!(
            query_param("/x?a=1&b=%E4%BD%A0", "b").as_deref(),
            Some("你")
        );
        assert_eq!(query_param("/x", "a"), None);
    }
}
