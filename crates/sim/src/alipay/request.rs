//! Reading one `POST /gateway.do`: the form (query string or body), the app id, the
//! signature over the sorted parameters, and each method's business parameters.

use std::collections::HashSet;

use serde_json::Value;

use super::AlipaySim;
use super::answers::{Answer, BillAsk, failure, invalid, missing};
use crate::SimMethod;
use crate::state::SimState;
use order_closer_alipay::{ERROR_RESPONSE, Method, verify_params};

/// What a method is, for the fault plan and the counters.
pub(super) fn sim_method(method: Method) -> SimMethod {
    match method {
        Method::TradeQuery => SimMethod::Query,
        Method::TradeClose => SimMethod::Close,
        Method::TradeRefund => SimMethod::Refund,
        Method::BillDownloadUrl => SimMethod::Bill,
    }
}

/// An authenticated, well-formed gateway request.
pub(super) struct Request {
    pub(super) method: Method,
    /// The answer's member name (`alipay_trade_query_response`...).
    pub(super) key: String,
    pub(super) out_trade_no: Option<String>,
    pub(super) trade_no: Option<String>,
    /// For the bill URL method: `bill_type` and `bill_date` as given (checked when
    /// served, like Alipay's business errors).
    pub(super) bill: Option<BillAsk>,
    /// For the refund method: the amount and the request number.
    pub(super) refund: Option<RefundAsk>,
    /// `http://host:port` of this server, as the client reached it.
    pub(super) origin: String,
}

/// The business parameters of a refund request.
pub(super) struct RefundAsk {
    /// `refund_amount`, parsed.
    pub(super) amount_minor: i64,
    /// `out_request_no`; Alipay defaults it to the order number (one full refund).
    pub(super) out_request_no: String,
}

/// A request refused before it could be served, with the method if it named a known one.
pub(super) struct Refused {
    pub(super) method: Option<Method>,
    pub(super) answer: Answer,
}

/// Parses and authenticates one gateway request.
pub(super) fn parse_request(
    sim: &AlipaySim,
    state: &SimState,
    query: &str,
    body: &[u8],
    origin: String,
) -> Result<Request, Refused> {
    const ERR: &str = ERROR_RESPONSE;
    let refuse = |method: Option<Method>, answer: Answer| Refused { method, answer };
    let from_query = serde_urlencoded::from_str::<Vec<(String, String)>>(query);
    let from_body = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body);
    let (Ok(mut params), Ok(body_params)) = (from_query, from_body) else {
        return Err(refuse(
            None,
            invalid(ERR, "isv.invalid-parameter", "请求参数不是合法的表单编码"),
        ));
    };
    params.extend(body_params);
    let mut seen = HashSet::new();
    if let Some((dup, _)) = params.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(refuse(
            None,
            invalid(ERR, "isv.invalid-parameter", &format!("参数{dup}重复")),
        ));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };

    let Some(method) = get("method") else {
        return Err(refuse(None, missing(ERR, "isv.missing-method", "方法名")));
    };
    let Some(method) = Method::from_name(method) else {
        return Err(refuse(
            None,
            invalid(ERR, "isv.invalid-method", "不存在的方法名"),
        ));
    };
    let key = method.response_key();
    let refuse = |answer: Answer| Refused {
        method: Some(method),
        answer,
    };

    let Some(app_id) = get("app_id") else {
        return Err(refuse(missing(&key, "isv.missing-app-id", "AppID")));
    };
    if app_id != sim.app_id {
        return Err(refuse(invalid(
            &key,
            "isv.invalid-app-id",
            "无效的AppID参数",
        )));
    }
    let Some(sign_type) = get("sign_type") else {
        return Err(refuse(missing(
            &key,
            "isv.missing-signature-type",
            "签名类型",
        )));
    };
    if sign_type != "RSA2" {
        return Err(refuse(invalid(
            &key,
            "isv.invalid-signature-type",
            "无效的签名类型",
        )));
    }
    if get("sign").is_none() {
        return Err(refuse(missing(&key, "isv.missing-signature", "签名")));
    }
    let Some(timestamp) = get("timestamp") else {
        return Err(refuse(missing(&key, "isv.missing-timestamp", "时间戳")));
    };
    if order_closer_alipay::parse_china_time(timestamp).is_none() {
        return Err(refuse(invalid(
            &key,
            "isv.invalid-timestamp",
            "非法的时间戳参数",
        )));
    }
    if get("version").is_none() {
        return Err(refuse(missing(&key, "isv.missing-version", "版本号")));
    }
    if get("charset").is_some_and(|c| !c.eq_ignore_ascii_case("utf-8")) {
        return Err(refuse(invalid(&key, "isv.invalid-charset", "字符集错误")));
    }
    if !verify_params(&sim.app_public_key, &params) {
        state.count_signature_failure();
        tracing::debug!(
            method = method.name(),
            "simulator: request signature does not verify"
        );
        return Err(refuse(invalid(
            &key,
            "isv.invalid-signature",
            "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配",
        )));
    }

    let biz: Value = match get("biz_content").map(serde_json::from_str::<Value>) {
        Some(Ok(v @ Value::Object(_))) => v,
        Some(_) => {
            return Err(refuse(invalid(
                &key,
                "isv.invalid-parameter",
                "biz_content不是合法的JSON对象",
            )));
        }
        None => return Err(refuse(missing(&key, "isv.missing-biz-content", "业务参数"))),
    };
    let field = |name: &str| {
        biz.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if method == Method::BillDownloadUrl {
        return Ok(Request {
            method,
            key,
            out_trade_no: None,
            trade_no: None,
            bill: Some(BillAsk {
                bill_type: field("bill_type"),
                bill_date: field("bill_date"),
            }),
            refund: None,
            origin,
        });
    }
    let out_trade_no = field("out_trade_no");
    let trade_no = field("trade_no");
    if out_trade_no.is_none() && trade_no.is_none() {
        return Err(refuse(failure(
            &key,
            "40004",
            "Business Failed",
            "ACQ.INVALID_PARAMETER",
            "参数无效",
        )));
    }
    let refund = if method == Method::TradeRefund {
        let amount = field("refund_amount")
            .as_deref()
            .and_then(|a| order_closer_core::money::parse_minor(a).ok())
            .filter(|a| *a > 0);
        let Some(amount_minor) = amount else {
            return Err(refuse(failure(
                &key,
                "40004",
                "Business Failed",
                "ACQ.INVALID_PARAMETER",
                "退款金额无效",
            )));
        };
        let out_request_no = field("out_request_no")
            .or_else(|| out_trade_no.clone())
            .or_else(|| trade_no.clone())
            .unwrap_or_default();
        Some(RefundAsk {
            amount_minor,
            out_request_no,
        })
    } else {
        None
    };
    Ok(Request {
        method,
        key,
        out_trade_no,
        trade_no,
        bill: None,
        refund,
        origin,
    })
}
