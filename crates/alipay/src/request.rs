//! Building a request to Alipay: the methods this client calls and the member each one
//! answers under, the signed form (the common parameters plus `biz_content`, signed with
//! the app key), and the endpoint URL. Kept apart from the sending (`transport.rs`) so
//! that what goes on the wire is plain data, read and tested without a network; the
//! simulator names the methods with the same [`Method`].

use chrono::Utc;
use serde_json::Value;

use super::sign::sign_params;
use order_closer_core::time::format_china_time;
use order_closer_gateway::GatewayError;
use order_closer_gateway::rsa::RsaPrivateKey;

/// The member any method's failure may come under instead of its own.
pub const ERROR_RESPONSE: &str = "error_response";

/// The Alipay methods this client calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `alipay.trade.query`: a trade's state.
    TradeQuery,
    /// `alipay.trade.close`: closes a trade still waiting for payment.
    TradeClose,
    /// `alipay.trade.refund`: gives back (part of) a paid trade.
    TradeRefund,
    /// `alipay.data.dataservice.bill.downloadurl.query`: where the bill of a day is.
    BillDownloadUrl,
}

impl Method {
    /// Every method, in the order above.
    pub const ALL: [Method; 4] = [
        Method::TradeQuery,
        Method::TradeClose,
        Method::TradeRefund,
        Method::BillDownloadUrl,
    ];

    /// The method's name on the wire (the `method` parameter).
    pub const fn name(self) -> &'static str {
        match self {
            Method::TradeQuery => "alipay.trade.query",
            Method::TradeClose => "alipay.trade.close",
            Method::TradeRefund => "alipay.trade.refund",
            Method::BillDownloadUrl => "alipay.data.dataservice.bill.downloadurl.query",
        }
    }

    /// The method of a wire name, if it is one of these.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The member its answer comes under (`alipay_trade_query_response`...).
    pub fn response_key(self) -> String {
        response_key(self.name())
    }
}

/// `alipay.trade.query` -> `alipay_trade_query_response`: the member the answer to a
/// method comes under (its failures may come under [`ERROR_RESPONSE`] instead).
pub fn response_key(method: &str) -> String {
    format!("{}_response", method.replace('.', "_"))
}

/// The signed form parameters of one call to `method` by app `app_id`.
///
/// Fails (permanent `signing`) only when the app key cannot sign.
pub(crate) fn signed_form(
    app_id: &str,
    app_key: &RsaPrivateKey,
    method: &str,
    biz_content: &Value,
) -> Result<Vec<(&'static str, String)>, GatewayError> {
    let mut params: Vec<(&'static str, String)> = vec![
        ("app_id", app_id.to_owned()),
        ("method", method.to_owned()),
        ("format", "JSON".to_owned()),
        ("charset", "utf-8".to_owned()),
        ("sign_type", "RSA2".to_owned()),
        ("timestamp", format_china_time(Utc::now())),
        ("version", "1.0".to_owned()),
        ("biz_content", biz_content.to_string()),
    ];
    let sign = sign_params(app_key, &params)
        .map_err(|e| GatewayError::permanent("signing", e.to_string()))?;
    params.push(("sign", sign));
    Ok(params)
}

/// `{base}/gateway.do` (a base already ending in `/gateway.do` is used as is); `None`
/// unless it is an absolute `http`/`https` URL with a host.
pub(crate) fn endpoint_url(base: &str) -> Option<reqwest::Url> {
    let trimmed = base.trim().trim_end_matches('/');
    let full = if trimmed.ends_with("/gateway.do") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/gateway.do")
    };
    reqwest::Url::parse(&full)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::verify_params;
    use serde_json::json;

    #[test]
    fn methods_and_their_response_keys() {
        assert_eq!(
            response_key("alipay.trade.query"),
            "alipay_trade_query_response"
        );
        assert_eq!(
            Method::BillDownloadUrl.response_key(),
            "alipay_data_dataservice_bill_downloadurl_query_response"
        );
        for method in Method::ALL {
            assert_eq!(Method::from_name(method.name()), Some(method));
        }
        assert_eq!(Method::from_name("alipay.no.such.method"), None);
    }

    #[test]
    fn endpoint_urls() {
        let url = |base: &str| endpoint_url(base).map(|u| u.to_string());
        assert_eq!(
            url("https://openapi.alipay.com/").unwrap(),
            "https://openapi.alipay.com/gateway.do"
        );
        assert_eq!(
            url(" http://127.0.0.1:9/gateway.do ").unwrap(),
            "http://127.0.0.1:9/gateway.do"
        );
        for bad in ["not a url", "ftp://x", "", "/gateway.do"] {
            assert_eq!(endpoint_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_form_is_signed_over_every_parameter() {
        let key = RsaPrivateKey::generate().unwrap();
        let form = signed_form(
            "2021000000000001",
            &key,
            Method::TradeQuery.name(),
            &json!({"out_trade_no": "ORD-1"}),
        )
        .unwrap();
        let names: Vec<&str> = form.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names.join(","),
            "app_id,method,format,charset,sign_type,timestamp,version,biz_content,sign"
        );
        assert!(verify_params(key.public_key(), &form));
        assert!(form.contains(&("biz_content", r#"{"out_trade_no":"ORD-1"}"#.to_owned())));
    }
}
