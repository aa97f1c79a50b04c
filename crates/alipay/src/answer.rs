//! Alipay's answers as typed structs, read once their signature is checked
//! (`envelope.rs`): what every answer carries ([`Status`]: `code`, `msg`, `sub_code`,
//! `sub_msg`), and each method's own fields ([`TradeQueryResponse`],
//! [`TradeCloseResponse`], [`TradeRefundResponse`], [`BillUrlResponse`]). The
//! vocabularies (`code`, `sub_code`, `trade_status`) are enums that keep an unknown value
//! as sent, for the error message.
//!
//! Every field is optional (an `error_response` carries only the status), and a field of
//! an unexpected JSON type reads as absent: classification (`classify.rs`) then finds the
//! answer incomplete and says which field, rather than the whole answer failing to read.
//! `code` is also read from a whole number, as some answers send it.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};
use serde_json::Value;

use order_closer_gateway::GatewayError;
use order_closer_gateway::http::echo;

/// Declares a vocabulary of the wire: an enum of the values this client knows, and
/// `Other` for any other, with both directions of the spelling in one list.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident {
        $($(#[$doc:meta])* $variant:ident = $wire:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$doc])* $variant,)+
            /// A value this client does not know, as sent.
            Other(String),
        }

        impl $name {
            /// The value as written on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)+
                    Self::Other(other) => other,
                }
            }
        }

        impl From<String> for $name {
            fn from(wire: String) -> Self {
                match wire.as_str() {
                    $($wire => Self::$variant,)+
                    _ => Self::Other(wire),
                }
            }
        }

        impl From<&str> for $name {
            fn from(wire: &str) -> Self {
                Self::from(wire.to_owned())
            }
        }
    };
}

vocabulary! {
    /// `code`: the outcome of a call, for every method alike.
    Code {
        /// `10000`: the call succeeded.
        Success = "10000",
        /// `20000`: service busy or an unknown error (retry).
        ServiceUnavailable = "20000",
        /// `20001`: the auth token is invalid.
        InvalidAuthToken = "20001",
        /// `40001`: a parameter is missing.
        MissingParameter = "40001",
        /// `40002`: a parameter is invalid (signature errors land here).
        InvalidParameter = "40002",
        /// `40004`: a business failure; `sub_code` says which.
        BusinessFailed = "40004",
        /// `40006`: the app lacks the permission.
        NoPermission = "40006",
    }
}

vocabulary! {
    /// `sub_code`: why a call failed, as far as this client tells failures apart.
    SubCode {
        /// A failure at Alipay (retry).
        SystemError = "ACQ.SYSTEM_ERROR",
        /// The parameters are invalid.
        InvalidParameter = "ACQ.INVALID_PARAMETER",
        /// No such trade.
        TradeNotExist = "ACQ.TRADE_NOT_EXIST",
        /// The trade is not in a state for this (closing a paid trade, for one).
        TradeStatusError = "ACQ.TRADE_STATUS_ERROR",
        /// Likewise, in the close's words.
        ReasonTradeStatusInvalid = "ACQ.REASON_TRADE_STATUS_INVALID",
        /// Likewise.
        ReasonIllegalStatus = "ACQ.REASON_ILLEGAL_STATUS",
        /// The merchant's balance cannot cover the refund.
        SellerBalanceNotEnough = "ACQ.SELLER_BALANCE_NOT_ENOUGH",
        /// The trade is closed: nothing to refund.
        TradeHasClose = "ACQ.TRADE_HAS_CLOSE",
        /// The refund does not match the trade's total.
        RefundAmtNotEqualTotal = "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
        /// The bill date is malformed or not served.
        InvalidBillDate = "isv.invalid-bill-date",
        /// The bill type is not one Alipay serves.
        InvalidBillType = "isv.invalid-bill-type",
        /// A parameter is invalid (the bill method's words).
        IsvInvalidParameter = "isv.invalid-parameter",
        /// The bill is not generated yet (sub-code unverified against Alipay).
        BillNotExist = "isp.bill_not_exist",
    }
}

vocabulary! {
    /// `trade_status`: where a trade stands.
    TradeStatus {
        /// Created, not paid yet.
        WaitBuyerPay = "WAIT_BUYER_PAY",
        /// Closed unpaid, or paid and then refunded in full.
        TradeClosed = "TRADE_CLOSED",
        /// Paid, refundable.
        TradeSuccess = "TRADE_SUCCESS",
        /// Paid, final.
        TradeFinished = "TRADE_FINISHED",
    }
}

/// How the fields are read: a value of an unexpected JSON type is absent.
mod lenient {
    use super::*;

    /// A string; anything else is absent.
    pub(super) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => Some(s),
            _ => None,
        })
    }

    /// A word of a vocabulary.
    pub(super) fn word<'de, D: Deserializer<'de>, T: From<String>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Ok(text(d)?.map(T::from))
    }

    /// `code`: a string, or a whole number.
    pub(super) fn code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Code>, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => Some(Code::from(s)),
            Value::Number(n) if n.is_u64() => Some(Code::from(n.to_string())),
            _ => None,
        })
    }

    /// A `Y`/`N` flag: only `Y` is yes.
    pub(super) fn yes<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(text(d)?.as_deref() == Some("Y"))
    }
}

/// What every answer carries: how the call went and, on failure, why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// `code`.
    #[serde(default, deserialize_with = "lenient::code")]
    pub code: Option<Code>,
    /// `msg`, the code's wording.
    #[serde(default, deserialize_with = "lenient::text")]
    pub msg: Option<String>,
    /// `sub_code`.
    #[serde(default, deserialize_with = "lenient::word")]
    pub sub_code: Option<SubCode>,
    /// `sub_msg`, the sub-code's wording.
    #[serde(default, deserialize_with = "lenient::text")]
    pub sub_msg: Option<String>,
}

impl Status {
    /// Whether the call succeeded (`10000`).
    pub fn is_success(&self) -> bool {
        self.code == Some(Code::Success)
    }

    /// The sub-code of a business failure (`40004`), if that is what the answer is.
    pub fn business_failure(&self) -> Option<&SubCode> {
        match self.code {
            Some(Code::BusinessFailed) => self.sub_code.as_ref(),
            _ => None,
        }
    }

    /// `code`, or `""`.
    pub fn code_str(&self) -> &str {
        self.code.as_ref().map_or("", Code::as_str)
    }

    /// `sub_code`, or `""`.
    pub fn sub_code_str(&self) -> &str {
        self.sub_code.as_ref().map_or("", SubCode::as_str)
    }

    /// The answer in a few words for an error message: `code msg (sub_code: sub_msg)`,
    /// each part shortened and escaped.
    pub fn describe(&self) -> String {
        let code = self.code.as_ref().map_or("?", Code::as_str);
        let msg = self.msg.as_deref().unwrap_or("");
        let sub_code = self.sub_code_str();
        if sub_code.is_empty() {
            format!("{} {}", echo(code), echo(msg))
        } else {
            format!(
                "{} {} ({}: {})",
                echo(code),
                echo(msg),
                echo(sub_code),
                echo(self.sub_msg.as_deref().unwrap_or(""))
            )
        }
    }
}

/// The answer to `alipay.trade.query`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TradeQueryResponse {
    /// How the call went.
    #[serde(flatten)]
    pub status: Status,
    /// The order the answer is about.
    #[serde(default, deserialize_with = "lenient::text")]
    pub out_trade_no: Option<String>,
    /// Alipay's trade number.
    #[serde(default, deserialize_with = "lenient::text")]
    pub trade_no: Option<String>,
    /// Where the trade stands.
    #[serde(default, deserialize_with = "lenient::word")]
    pub trade_status: Option<TradeStatus>,
    /// The trade's amount in yuan, as a decimal string.
    #[serde(default, deserialize_with = "lenient::text")]
    pub total_amount: Option<String>,
    /// When it was paid (`yyyy-MM-dd HH:mm:ss`, China time).
    #[serde(default, deserialize_with = "lenient::text")]
    pub send_pay_date: Option<String>,
}

/// The answer to `alipay.trade.close`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TradeCloseResponse {
    /// How the call went.
    #[serde(flatten)]
    pub status: Status,
    /// The order the answer is about.
    #[serde(default, deserialize_with = "lenient::text")]
    pub out_trade_no: Option<String>,
}

/// The answer to `alipay.trade.refund`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TradeRefundResponse {
    /// How the call went.
    #[serde(flatten)]
    pub status: Status,
    /// The order the answer is about.
    #[serde(default, deserialize_with = "lenient::text")]
    pub out_trade_no: Option<String>,
    /// `fund_change`: `Y` when this call moved money.
    #[serde(default, deserialize_with = "lenient::yes")]
    pub fund_change: bool,
    /// The trade's total refunded so far, in yuan.
    #[serde(default, deserialize_with = "lenient::text")]
    pub refund_fee: Option<String>,
}

/// The answer to `alipay.data.dataservice.bill.downloadurl.query`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct BillUrlResponse {
    /// How the call went.
    #[serde(flatten)]
    pub status: Status,
    /// Where to download the bill (valid for about 30 s).
    #[serde(default, deserialize_with = "lenient::text")]
    pub bill_download_url: Option<String>,
}

/// An answer type: read from the signed object, with its [`Status`].
pub trait Answer: DeserializeOwned {
    /// How the call went.
    fn status(&self) -> &Status;
}

impl Answer for Status {
    fn status(&self) -> &Status {
        self
    }
}

/// Each method's answer shows its flattened status.
macro_rules! answers {
    ($($answer:ty),+) => {
        $(impl Answer for $answer {
            fn status(&self) -> &Status {
                &self.status
            }
        })+
    };
}

answers!(
    TradeQueryResponse,
    TradeCloseResponse,
    TradeRefundResponse,
    BillUrlResponse
);

/// Reads a signature-checked answer object as `T`.
///
/// Fails (retryable `unclassifiable`) only for what is not an object or names a field
/// twice: a field of the wrong type reads as absent.
pub fn read<T: Answer>(object: &str) -> Result<T, GatewayError> {
    // serde would also read a struct from an array of its fields, in order.
    if !object.trim_start().starts_with('{') {
        return Err(GatewayError::retryable(
            "unclassifiable",
            "answer is not a JSON object",
        ));
    }
    serde_json::from_str(object).map_err(|e| {
        GatewayError::retryable(
            "unclassifiable",
            format!(
                "answer does not read as an answer: {}",
                echo(&e.to_string())
            ),
        )
    })
}

/// A signature-checked answer: the raw signed object and its typed form.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedAnswer<T> {
    /// Which member held the answer (`<method>_response` or `error_response`).
    pub response_key: String,
    /// The answer object exactly as signed, byte for byte.
    pub raw: String,
    /// The same object, read.
    pub answer: T,
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_closer_gateway::FaultClass;

    #[test]
    fn vocabularies_round_trip_and_keep_the_unknown() {
        for wire in [
            "10000", "20000", "20001", "40001", "40002", "40004", "40006",
        ] {
            let code = Code::from(wire);
            assert!(!matches!(code, Code::Other(_)), "{wire}");
            assert_eq!(code.as_str(), wire);
        }
        assert_eq!(Code::from("99999"), Code::Other("99999".into()));
        assert_eq!(SubCode::from("ACQ.TRADE_NOT_EXIST"), SubCode::TradeNotExist);
        assert_eq!(SubCode::from("ACQ.NEW").as_str(), "ACQ.NEW");
        assert_eq!(
            TradeStatus::from("TRADE_FINISHED"),
            TradeStatus::TradeFinished
        );
    }

    #[test]
    fn fields_of_another_type_read_as_absent() {
        let q: TradeQueryResponse = read(
            r#"{"code":40004,"msg":5,"sub_code":["x"],"sub_msg":null,
                "out_trade_no":{"a":1},"trade_no":"T","trade_status":7,"total_amount":12.34}"#,
        )
        .unwrap();
        assert_eq!(q.status.code, Some(Code::BusinessFailed));
        assert_eq!(
            (q.status.msg, q.status.sub_code, q.status.sub_msg),
            (None, None, None)
        );
        assert_eq!(
            (q.out_trade_no, q.trade_no.as_deref(), q.trade_status),
            (None, Some("T"), None)
        );
        assert_eq!(q.total_amount, None);
        // Only a whole number is a code.
        for code in ["-1", "1.5", "1e3", "true"] {
            let s: Status = read(&format!("{{\"code\":{code}}}")).unwrap();
            assert_eq!(s.code, None, "{code}");
        }
        let r: TradeRefundResponse = read(r#"{"fund_change":"y"}"#).unwrap();
        assert!(!r.fund_change);
    }

    #[test]
    fn what_is_not_an_answer_is_unclassifiable() {
        for object in ["[]", "\"text\"", r#"{"code":"10000","code":"40004"}"#, "{"] {
            let e = read::<Status>(object).unwrap_err();
            assert_eq!(
                (e.class, e.code.as_str()),
                (FaultClass::Retryable, "unclassifiable"),
                "{object}"
            );
        }
        // A field given twice is ambiguous, in a method's answer too.
        let twice = r#"{"code":"10000","out_trade_no":"A","out_trade_no":"B"}"#;
        let e = read::<TradeQueryResponse>(twice).unwrap_err();
        assert_eq!(e.code, "unclassifiable");
        assert!(e.message.contains("duplicate field"), "{e}");
        let long = format!("{{\"msg\":\"{}\",\"msg\":1}}", "x".repeat(10_000));
        assert!(read::<Status>(&long).unwrap_err().message.len() < 1_000);
    }

    #[test]
    fn describe_is_short_and_escaped() {
        let s: Status = read(r#"{"code":"40004","msg":"Business Failed"}"#).unwrap();
        assert_eq!(s.describe(), "40004 Business Failed");
        let s: Status =
            read(r#"{"code":"40004","msg":"m","sub_code":"ACQ.X","sub_msg":"a\u001bb"}"#).unwrap();
        assert!(s.describe().starts_with("40004 m (ACQ.X: a"));
        assert!(!s.describe().contains('\u{1b}'));
        assert_eq!(Status::default().describe(), "? ");
    }
}
