//! Reading Alipay answers: cutting the signed `*_response` object out of the raw body text
//! (byte-exact, never re-serialized) and classifying query and close answers.
//!
//! Alipay's classic `alipay.trade.query` has no "buyer is paying right now" status (a
//! trade is `WAIT_BUYER_PAY` until the payment completes), so these functions never
//! answer [`TradeState::InProgress`]; that state exists for other gateways.

use order_closer_gateway::http::echo;
use serde_json::Value;

use order_closer_core::money::parse_minor;
use order_closer_gateway::{CloseAnswer, GatewayError, RefundAnswer, RefundRequest, TradeState};

/// Deepest nesting the brace matcher follows before giving up on a body.
const MAX_DEPTH: usize = 128;

pub use order_closer_core::time::{china, format_china_time, parse_china_time};

// ---------------------------------------------------------------------------------------
// Raw extraction
// ---------------------------------------------------------------------------------------

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// `b[i]` is `"`; returns the index just past the closing quote.
fn scan_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
    None
}

/// `b[i]` is `{` or `[`; returns the index just past the matching closer. Aware of strings
/// and escapes; checks that closers match openers; bounded depth, no recursion.
fn scan_container(b: &[u8], mut i: usize) -> Option<usize> {
    let mut stack: Vec<u8> = Vec::new();
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = scan_string(b, i)?;
                continue;
            }
            b'{' | b'[' => {
                if stack.len() >= MAX_DEPTH {
                    return None;
                }
                stack.push(if b[i] == b'{' { b'}' } else { b']' });
            }
            c @ (b'}' | b']') => {
                if stack.pop() != Some(c) {
                    return None;
                }
                if stack.is_empty() {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Returns the index just past the JSON value starting at `b[i]`.
fn scan_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => scan_string(b, i),
        b'{' | b'[' => scan_container(b, i),
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                if !(b[j].is_ascii_alphanumeric() || matches!(b[j], b'+' | b'-' | b'.')) {
                    return None;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The top-level members of a body that must be one JSON object: `(name, raw value)`
/// pairs in body order. The name is the raw text between its quotes (escapes undecoded).
/// Returns `None` unless the whole body (surrounding whitespace aside) is one object.
fn top_level_members(body: &str) -> Option<Vec<(&str, &str)>> {
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    let b = body.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut members = Vec::new();
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let name_end = scan_string(b, i)?;
            let name = body.get(i + 1..name_end - 1)?;
            i = skip_ws(b, name_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            let value_end = scan_value(b, i)?;
            members.push((name, body.get(i..value_end)?));
            i = skip_ws(b, value_end);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(members)
}

/// The one member called `name`, or `None` if absent or present more than once.
fn unique_member<'a>(members: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    let mut found = members.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v);
    match (found.next(), found.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// Returns the exact raw text of the top-level member `key`'s object value, from `{` to
/// the matching `}`, as it appears in `body` (what Alipay's signature covers).
///
/// `None` when the body is not one complete JSON object, the member is missing, appears
/// twice, or is not an object. Never panics, whatever the input.
pub fn extract_signed_object<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let members = top_level_members(body)?;
    unique_member(&members, key).filter(|v| v.starts_with('{'))
}

/// Returns the decoded top-level `sign` string, if there is exactly one and it is a string.
pub fn extract_sign(body: &str) -> Option<String> {
    let members = top_level_members(body)?;
    let raw = unique_member(&members, "sign")?;
    if !raw.starts_with('"') {
        return None;
    }
    serde_json::from_str::<String>(raw).ok()
}

/// A body cut into the parts the signature check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitResponse<'a> {
    /// Which member held the answer (for example `alipay_trade_query_response` or
    /// `error_response`).
    pub key: &'a str,
    /// The raw answer object, byte-exact.
    pub object: &'a str,
    /// The decoded `sign`, when present.
    pub sign: Option<String>,
}

/// Cuts a body once: finds the first of `keys` present as a top-level object member, and
/// the top-level `sign`. `None` when the body is not one JSON object or holds none of the
/// keys (or one of them twice).
pub fn split_response<'a>(body: &'a str, keys: &[&'a str]) -> Option<SplitResponse<'a>> {
    let members = top_level_members(body)?;
    let (key, object) = keys.iter().find_map(|k| {
        unique_member(&members, k)
            .filter(|v| v.starts_with('{'))
            .map(|v| (*k, v))
    })?;
    let sign = unique_member(&members, "sign")
        .filter(|raw| raw.starts_with('"'))
        .and_then(|raw| serde_json::from_str::<String>(raw).ok());
    Some(SplitResponse { key, object, sign })
}

// ---------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------

/// The fields of an answer object that classification looks at.
struct Fields<'a> {
    code: Option<String>,
    msg: &'a str,
    sub_code: &'a str,
    sub_msg: &'a str,
    out_trade_no: Option<&'a str>,
}

fn str_field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn fields(answer: &Value) -> Fields<'_> {
    let code = match answer.get("code") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        _ => None,
    };
    Fields {
        code,
        msg: str_field(answer, "msg").unwrap_or(""),
        sub_code: str_field(answer, "sub_code").unwrap_or(""),
        sub_msg: str_field(answer, "sub_msg").unwrap_or(""),
        out_trade_no: str_field(answer, "out_trade_no"),
    }
}

fn describe(f: &Fields<'_>) -> String {
    let code = f.code.as_deref().unwrap_or("?");
    if f.sub_code.is_empty() {
        format!("{} {}", echo(code), echo(f.msg))
    } else {
        format!(
            "{} {} ({}: {})",
            echo(code),
            echo(f.msg),
            echo(f.sub_code),
            echo(f.sub_msg)
        )
    }
}

fn unclassifiable(why: impl Into<String>) -> GatewayError {
    GatewayError::retryable("unclassifiable", why)
}

/// Rejects an answer that names another order than the one asked about.
fn check_order(asked: &str, f: &Fields<'_>, require: bool) -> Result<(), GatewayError> {
    match f.out_trade_no {
        Some(got) if got != asked => Err(GatewayError::retryable(
            "wrong_order",
            format!(
                "asked about out_trade_no {:?} but the answer is about {:?}",
                echo(asked),
                echo(got)
            ),
        )),
        None if require => Err(unclassifiable(format!(
            "answer without out_trade_no cannot decide the order: {}",
            describe(f)
        ))),
        _ => Ok(()),
    }
}

/// Classifies the failures common to every method (anything but `10000` and the
/// method-specific `40004` sub-codes).
fn common_failure(f: &Fields<'_>) -> GatewayError {
    let detail = describe(f);
    match (f.code.as_deref(), f.sub_code) {
        (_, "ACQ.SYSTEM_ERROR") => GatewayError::retryable("ACQ.SYSTEM_ERROR", detail),
        (_, "ACQ.INVALID_PARAMETER") => GatewayError::permanent("ACQ.INVALID_PARAMETER", detail),
        (Some("20000"), _) => GatewayError::retryable("20000", detail),
        (Some(code @ ("20001" | "40001" | "40002" | "40006")), _) => {
            GatewayError::permanent(code, detail)
        }
        _ => unclassifiable(format!("unrecognised answer: {detail}")),
    }
}

/// Classifies an `alipay.trade.query` answer object (already signature-checked) for the
/// order `asked`.
///
/// | answer | result |
/// |---|---|
/// | `10000` + `TRADE_SUCCESS` / `TRADE_FINISHED` | [`TradeState::Paid`] (`trade_no` and a valid `total_amount` required) |
/// | `10000` + `WAIT_BUYER_PAY` | [`TradeState::WaitingForPayment`] |
/// | `10000` + `TRADE_CLOSED` with a `send_pay_date` | [`TradeState::Refunded`] (paid, then refunded in full; `trade_no` and a valid `total_amount` required) |
/// | `10000` + `TRADE_CLOSED` | [`TradeState::Closed`] |
/// | `40004` + `ACQ.TRADE_NOT_EXIST` (with our `out_trade_no`) | [`TradeState::NotFound`] |
/// | `20000`, `ACQ.SYSTEM_ERROR` | retryable |
/// | `20001`, `40001`, `40002`, `40006`, `ACQ.INVALID_PARAMETER` | permanent |
/// | another order's `out_trade_no` | retryable `wrong_order` |
/// | anything else | retryable `unclassifiable` |
///
/// An answer that would decide the order (`10000`, `ACQ.TRADE_NOT_EXIST`) must name it in
/// `out_trade_no`; one that does not is unclassifiable (retryable), never trusted.
/// Alipay echoes `out_trade_no` in its `ACQ.TRADE_NOT_EXIST` answers (as the simulator
/// does); that a real answer always carries it is assumed from its documented examples.
///
/// A malformed `send_pay_date` does not block a payment: it yields `paid_at: None`.
///
/// `TRADE_CLOSED` is both "closed unpaid" and "paid, then refunded in full" (a partial
/// refund leaves `TRADE_SUCCESS`). The payment time `send_pay_date` tells them apart: a
/// trade that was never paid has none. Assumed from the documented fields (the payment
/// time stays with the trade; unverified against a real refunded trade).
pub fn classify_query(asked: &str, answer: &Value) -> Result<TradeState, GatewayError> {
    if !answer.is_object() {
        return Err(unclassifiable("answer is not a JSON object"));
    }
    let f = fields(answer);
    let success = f.code.as_deref() == Some("10000");
    let not_found = f.code.as_deref() == Some("40004") && f.sub_code == "ACQ.TRADE_NOT_EXIST";
    // An answer that decides the order must name it: a signed answer about no order in
    // particular could be a replay of any other.
    check_order(asked, &f, success || not_found)?;
    if not_found {
        return Ok(TradeState::NotFound);
    }
    if !success {
        return Err(common_failure(&f));
    }
    match str_field(answer, "trade_status") {
        Some("TRADE_SUCCESS" | "TRADE_FINISHED") => {
            let (trade_no, amount_minor, paid_at) = payment(answer)?;
            Ok(TradeState::Paid {
                trade_no,
                amount_minor,
                paid_at,
            })
        }
        Some("WAIT_BUYER_PAY") => Ok(TradeState::WaitingForPayment),
        Some("TRADE_CLOSED") if str_field(answer, "send_pay_date").is_some() => {
            let (trade_no, amount_minor, paid_at) = payment(answer)?;
            Ok(TradeState::Refunded {
                trade_no,
                amount_minor,
                paid_at,
            })
        }
        Some("TRADE_CLOSED") => Ok(TradeState::Closed),
        Some(other) => Err(unclassifiable(format!(
            "unknown trade_status {:?}",
            echo(other)
        ))),
        None => Err(unclassifiable("success answer without trade_status")),
    }
}

/// What a query answer says was paid: the trade number and `total_amount` (both
/// required), and `send_pay_date` (`None` when missing or unreadable).
fn payment(
    answer: &Value,
) -> Result<(String, i64, Option<chrono::DateTime<chrono::Utc>>), GatewayError> {
    let trade_no = str_field(answer, "trade_no")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unclassifiable("paid trade without trade_no"))?;
    let amount_text = str_field(answer, "total_amount")
        .ok_or_else(|| unclassifiable("paid trade without total_amount"))?;
    let amount_minor = parse_minor(amount_text)
        .ok()
        .filter(|a| *a >= 0)
        .ok_or_else(|| unclassifiable(format!("bad total_amount {:?}", echo(amount_text))))?;
    let paid_at = str_field(answer, "send_pay_date").and_then(|d| {
        let parsed = parse_china_time(d);
        if parsed.is_none() {
            tracing::warn!(send_pay_date = %echo(d), "unreadable send_pay_date");
        }
        parsed
    });
    Ok((trade_no.to_owned(), amount_minor, paid_at))
}

/// Classifies an `alipay.trade.close` answer object (already signature-checked) for the
/// order `asked`.
///
/// | answer | result |
/// |---|---|
/// | `10000` (with our `out_trade_no`) | [`CloseAnswer::Closed`] |
/// | `40004` + `ACQ.TRADE_NOT_EXIST` (with our `out_trade_no`) | [`CloseAnswer::Closed`] (nothing to pay) |
/// | `40004` + `ACQ.TRADE_STATUS_ERROR` / `ACQ.REASON_TRADE_STATUS_INVALID` / `ACQ.REASON_ILLEGAL_STATUS` | [`CloseAnswer::NotCloseable`]: query again |
/// | `20000`, `ACQ.SYSTEM_ERROR` | retryable |
/// | `20001`, `40001`, `40002`, `40006`, `ACQ.INVALID_PARAMETER` | permanent |
/// | another order's `out_trade_no` | retryable `wrong_order` |
/// | anything else | retryable `unclassifiable` |
///
/// A `10000` or `ACQ.TRADE_NOT_EXIST` answer must name the order (`out_trade_no`); one that
/// does not is unclassifiable rather than trusted, since it cannot be told apart from a
/// replayed one.
pub fn classify_close(asked: &str, answer: &Value) -> Result<CloseAnswer, GatewayError> {
    if !answer.is_object() {
        return Err(unclassifiable("answer is not a JSON object"));
    }
    let f = fields(answer);
    let success = f.code.as_deref() == Some("10000");
    let not_found = f.code.as_deref() == Some("40004") && f.sub_code == "ACQ.TRADE_NOT_EXIST";
    // Both count as "closed", which closes the order: they must name it.
    check_order(asked, &f, success || not_found)?;
    if success {
        return Ok(CloseAnswer::Closed);
    }
    if f.code.as_deref() == Some("40004") {
        match f.sub_code {
            "ACQ.TRADE_NOT_EXIST" => return Ok(CloseAnswer::Closed),
            "ACQ.TRADE_STATUS_ERROR"
            | "ACQ.REASON_TRADE_STATUS_INVALID"
            | "ACQ.REASON_ILLEGAL_STATUS" => {
                return Ok(CloseAnswer::NotCloseable {
                    sub_code: f.sub_code.to_owned(),
                });
            }
            _ => {}
        }
    }
    Err(common_failure(&f))
}

/// Classifies an `alipay.trade.refund` answer object (already signature-checked) for
/// `asked`; `raw` is kept in the answer for the audit trail.
///
/// | answer | result |
/// |---|---|
/// | `10000` (our `out_trade_no`), `fund_change` `Y` | refunded now |
/// | `10000`, `fund_change` `N`, `refund_fee` covering the amount | refunded before (a retry of the same `out_request_no`) |
/// | `10000`, `fund_change` `N`, `refund_fee` short of the amount | retryable `refund_unconfirmed` |
/// | `40004` + `ACQ.SELLER_BALANCE_NOT_ENOUGH` | retryable: the merchant account may be topped up |
/// | `40004` + `ACQ.TRADE_NOT_EXIST`, `ACQ.TRADE_STATUS_ERROR`, `ACQ.TRADE_HAS_CLOSE`, `ACQ.REFUND_AMT_NOT_EQUAL_TOTAL` | permanent: nothing (more) to refund, an operator looks |
/// | `20000`, `ACQ.SYSTEM_ERROR` | retryable |
/// | `20001`, `40001`, `40002`, `40006`, `ACQ.INVALID_PARAMETER` | permanent |
/// | anything else | retryable `unclassifiable` |
///
/// Alipay advises confirming a `fund_change` of `N` with the refund query; here the
/// answer's own `refund_fee` (the trade's total refunded) is the confirmation.
pub fn classify_refund(
    asked: &RefundRequest<'_>,
    answer: &Value,
    raw: String,
) -> Result<RefundAnswer, GatewayError> {
    if !answer.is_object() {
        return Err(unclassifiable("answer is not a JSON object"));
    }
    let f = fields(answer);
    let success = f.code.as_deref() == Some("10000");
    check_order(asked.trade.out_trade_no, &f, success)?;
    if success {
        let fee = str_field(answer, "refund_fee").unwrap_or("");
        let refunded_minor = parse_minor(fee)
            .ok()
            .filter(|a| *a >= 0)
            .ok_or_else(|| unclassifiable(format!("bad refund_fee {:?}", echo(fee))))?;
        let fund_change = str_field(answer, "fund_change") == Some("Y");
        if !fund_change && refunded_minor < asked.amount_minor {
            return Err(GatewayError::retryable(
                "refund_unconfirmed",
                format!(
                    "fund_change N and only {} refunded on the trade",
                    order_closer_core::money::format_minor(refunded_minor)
                ),
            ));
        }
        return Ok(RefundAnswer {
            refunded_minor,
            fund_change,
            raw,
        });
    }
    if f.code.as_deref() == Some("40004") {
        let detail = describe(&f);
        match f.sub_code {
            "ACQ.SELLER_BALANCE_NOT_ENOUGH" => {
                return Err(GatewayError::retryable(f.sub_code, detail));
            }
            "ACQ.TRADE_NOT_EXIST"
            | "ACQ.TRADE_STATUS_ERROR"
            | "ACQ.TRADE_HAS_CLOSE"
            | "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL" => {
                return Err(GatewayError::permanent(f.sub_code, detail));
            }
            _ => {}
        }
    }
    Err(common_failure(&f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_closer_gateway::FaultClass;
    use serde_json::json;

    // ---- extraction ----

    #[test]
    fn extracts_exact_raw_bytes() {
        let object = "{ \"code\" : \"10000\",\n  \"msg\":\"Success\", \"sub_msg\":\"交易不存在 \\\"q\\\" {}}{ \\\\\", \"n\": {\"a\":[1,{\"b\":\"}\"}]}, \"x\": -1.5e3 }";
        let body = format!(
            "  {{\"alipay_trade_query_response\" :\t{object} , \"sign\":\"abc\\/def==\"}}\n"
        );
        assert_eq!(
            extract_signed_object(&body, "alipay_trade_query_response"),
            Some(object)
        );
        assert_eq!(extract_sign(&body).as_deref(), Some("abc/def=="));
        // The raw object is valid JSON on its own.
        let v: Value = serde_json::from_str(
            extract_signed_object(&body, "alipay_trade_query_response").unwrap(),
        )
        .unwrap();
        assert_eq!(v["sub_msg"], "交易不存在 \"q\" {}}{ \\");
    }

    #[test]
    fn extracts_error_response_and_sign_before_object() {
        let body = r#"{"sign":"SIG","error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id"}}"#;
        assert_eq!(
            extract_signed_object(body, "error_response"),
            Some(r#"{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-app-id"}"#)
        );
        assert_eq!(
            extract_signed_object(body, "alipay_trade_query_response"),
            None
        );
        assert_eq!(extract_sign(body).as_deref(), Some("SIG"));
        let split =
            split_response(body, &["alipay_trade_query_response", "error_response"]).unwrap();
        assert_eq!(split.key, "error_response");
        assert_eq!(split.sign.as_deref(), Some("SIG"));
    }

    #[test]
    fn unsigned_body_has_no_sign() {
        let body = r#"{"error_response":{"code":"40002"}}"#;
        assert!(extract_signed_object(body, "error_response").is_some());
        assert_eq!(extract_sign(body), None);
        // A non-string sign is no sign.
        assert_eq!(extract_sign(r#"{"sign":12,"a":{}}"#), None);
    }

    #[test]
    fn only_top_level_members_count() {
        let body = r#"{"outer":{"alipay_trade_query_response":{"fake":1}},"alipay_trade_query_response":{"real":2},"sign":"s"}"#;
        assert_eq!(
            extract_signed_object(body, "alipay_trade_query_response"),
            Some(r#"{"real":2}"#)
        );
        // A key that is only inside a string value is not a member.
        let body = r#"{"note":"\"alipay_trade_query_response\":{}","sign":"s"}"#;
        assert_eq!(
            extract_signed_object(body, "alipay_trade_query_response"),
            None
        );
        // Duplicated member: ambiguous, refused.
        let body = r#"{"r":{"a":1},"r":{"a":2}}"#;
        assert_eq!(extract_signed_object(body, "r"), None);
        // Not an object value.
        assert_eq!(extract_signed_object(r#"{"r":"{}"}"#, "r"), None);
        assert_eq!(extract_signed_object(r#"{"r":[{}]}"#, "r"), None);
    }

    #[test]
    fn hostile_bodies_give_none() {
        let key = "alipay_trade_query_response";
        let cases: Vec<String> = vec![
            String::new(),
            "   ".into(),
            "<html><body>502 Bad Gateway</body></html>".into(),
            r#"{"alipay_trade_query_response":{"code":"10000""#.into(),
            r#"{"alipay_trade_query_response":{"code":"10000"},"sign":"ab"#.into(),
            r#"{"alipay_trade_query_response":{"code":"10000"},"sign":"ab""#.into(),
            r#"{"alipay_trade_query_response":{"a":"\"}"#.into(),
            r#"{"alipay_trade_query_response":{"a":[}]}}"#.into(),
            r#"{"alipay_trade_query_response":{"a":1}} trailing"#.into(),
            r#"{"alipay_trade_query_response":{"a":1}}{"#.into(),
            r#"{alipay_trade_query_response:{}}"#.into(),
            r#"{"alipay_trade_query_response" {}}"#.into(),
            r#"{"alipay_trade_query_response":{},,"sign":"x"}"#.into(),
            r#"{"alipay_trade_query_response":@}"#.into(),
            "{\"alipay_trade_query_response\":{\"a\":\"line\nbreak\"}}".into(),
            "[{\"alipay_trade_query_response\":{}}]".into(),
            "{\"a\":\"\\".into(),
            "{".repeat(100_000),
            format!("{{\"{key}\":{}{}}}", "[".repeat(5000), "]".repeat(5000)),
            format!("{{\"{key}\":\"{}", "x".repeat(1_000_000)),
        ];
        for body in &cases {
            assert_eq!(extract_signed_object(body, key), None, "{:.80}", body);
            assert_eq!(extract_sign(body), None);
        }
        // Deep but bounded nesting inside the object is still fine.
        let deep = format!(
            "{{\"{key}\":{{\"a\":{}{}}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(extract_signed_object(&deep, key).is_some());
    }

    #[test]
    fn never_panics_on_prefixes_of_a_real_body() {
        let body = "{\"alipay_trade_query_response\":{\"code\":\"40004\",\"sub_msg\":\"交易不存在\\\"\"},\"sign\":\"x\"}";
        for (i, _) in body.char_indices() {
            let prefix = &body[..i];
            assert_eq!(
                extract_signed_object(prefix, "alipay_trade_query_response"),
                None
            );
        }
        assert!(extract_signed_object(body, "alipay_trade_query_response").is_some());
        // Arbitrary byte soup.
        let soup = "{\"\\\u{1}\"}\\]{[\"\u{0}你好\\u00\"";
        for (i, _) in soup.char_indices() {
            let _ = extract_signed_object(&soup[i..], "a");
            let _ = extract_sign(&soup[..i]);
        }
    }

    // ---- time ----

    #[test]
    fn china_time_round_trip() {
        let t = parse_china_time("2026-11-21 10:55:23").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-21T02:55:23+00:00");
        assert_eq!(format_china_time(t), "2026-11-21 10:55:23");
        assert_eq!(parse_china_time("2026-11-21T10:55:23"), None);
        assert_eq!(parse_china_time(""), None);
    }

    // ---- classification ----

    fn q(v: Value) -> Result<TradeState, GatewayError> {
        classify_query("ORD-1", &v)
    }

    fn c(v: Value) -> Result<CloseAnswer, GatewayError> {
        classify_close("ORD-1", &v)
    }

    fn class_and_code<T: std::fmt::Debug>(r: Result<T, GatewayError>) -> (FaultClass, String) {
        let e = r.unwrap_err();
        (e.class, e.code)
    }

    #[test]
    fn query_paid() {
        for status in ["TRADE_SUCCESS", "TRADE_FINISHED"] {
            let got = q(
                json!({"code":"10000","msg":"Success","trade_no":"2026112122001400000000000001",
                "out_trade_no":"ORD-1","trade_status":status,"total_amount":"12.34",
                "buyer_pay_amount":"12.34","send_pay_date":"2026-11-21 10:55:23"}),
            )
            .unwrap();
            assert_eq!(
                got,
                TradeState::Paid {
                    trade_no: "2026112122001400000000000001".into(),
                    amount_minor: 1234,
                    paid_at: parse_china_time("2026-11-21 10:55:23"),
                }
            );
        }
        // Missing or broken pay date: still paid, time unknown.
        let got = q(json!({"code":"10000","trade_no":"T","out_trade_no":"ORD-1",
            "trade_status":"TRADE_SUCCESS","total_amount":"1","send_pay_date":"yesterday"}))
        .unwrap();
        assert_eq!(
            got,
            TradeState::Paid {
                trade_no: "T".into(),
                amount_minor: 100,
                paid_at: None
            }
        );
    }

    #[test]
    fn query_paid_needs_amount_and_trade_no() {
        for amount in [
            json!("12.345"),
            json!("abc"),
            json!(""),
            json!("-1.00"),
            json!(12.34),
        ] {
            let r = q(json!({"code":"10000","trade_no":"T","out_trade_no":"ORD-1",
                "trade_status":"TRADE_SUCCESS","total_amount":amount}));
            assert_eq!(
                class_and_code(r),
                (FaultClass::Retryable, "unclassifiable".into())
            );
        }
        let r = q(
            json!({"code":"10000","out_trade_no":"ORD-1","trade_status":"TRADE_SUCCESS","total_amount":"1.00"}),
        );
        assert_eq!(class_and_code(r).1, "unclassifiable");
    }

    #[test]
    fn query_unpaid_closed_not_found() {
        assert_eq!(
            q(
                json!({"code":"10000","out_trade_no":"ORD-1","trade_no":"T","trade_status":"WAIT_BUYER_PAY","total_amount":"12.34"})
            ),
            Ok(TradeState::WaitingForPayment)
        );
        assert_eq!(
            q(
                json!({"code":"10000","out_trade_no":"ORD-1","trade_no":"T","trade_status":"TRADE_CLOSED","total_amount":"12.34"})
            ),
            Ok(TradeState::Closed)
        );
        // Closed after a payment (its time stays): paid, then refunded in full.
        assert_eq!(
            q(
                json!({"code":"10000","out_trade_no":"ORD-1","trade_no":"T","trade_status":"TRADE_CLOSED","total_amount":"12.34","send_pay_date":"2026-11-21 10:55:23"})
            ),
            Ok(TradeState::Refunded {
                trade_no: "T".into(),
                amount_minor: 1234,
                paid_at: order_closer_core::time::parse_china_time("2026-11-21 10:55:23"),
            })
        );
        assert_eq!(
            class_and_code(q(
                json!({"code":"10000","out_trade_no":"ORD-1","trade_status":"TRADE_CLOSED","total_amount":"12.34","send_pay_date":"2026-11-21 10:55:23"})
            )),
            (FaultClass::Retryable, "unclassifiable".to_owned()),
            "a refunded trade names its trade number"
        );
        assert_eq!(
            q(
                json!({"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在","out_trade_no":"ORD-1"})
            ),
            Ok(TradeState::NotFound)
        );
        // A "no such trade" naming no order decides nothing (it could be a replay).
        assert_eq!(
            class_and_code(q(
                json!({"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"})
            )),
            (FaultClass::Retryable, "unclassifiable".to_owned())
        );
        // The not-exist sub-code only counts under 40004.
        assert_eq!(
            class_and_code(q(json!({"code":"20000","sub_code":"ACQ.TRADE_NOT_EXIST"}))).0,
            FaultClass::Retryable
        );
    }

    #[test]
    fn query_failures() {
        let retryable = [
            (
                json!({"code":"20000","msg":"Service Currently Unavailable","sub_code":"isp.unknow-error"}),
                "20000",
            ),
            (
                json!({"code":"40004","sub_code":"ACQ.SYSTEM_ERROR"}),
                "ACQ.SYSTEM_ERROR",
            ),
            (
                json!({"code":"20000","sub_code":"ACQ.SYSTEM_ERROR"}),
                "ACQ.SYSTEM_ERROR",
            ),
            (
                json!({"code":"40004","sub_code":"ACQ.SOMETHING_NEW"}),
                "unclassifiable",
            ),
            (json!({"code":"99999"}), "unclassifiable"),
            (json!({"msg":"no code"}), "unclassifiable"),
            (
                json!({"code":"10000","out_trade_no":"ORD-1","trade_status":"WEIRD"}),
                "unclassifiable",
            ),
            (
                json!({"code":"10000","out_trade_no":"ORD-1"}),
                "unclassifiable",
            ),
            (
                json!({"code":"10000","trade_status":"TRADE_CLOSED"}),
                "unclassifiable",
            ),
            (json!("not an object"), "unclassifiable"),
            (
                json!({"code":"10000","out_trade_no":"ORD-2","trade_status":"TRADE_CLOSED"}),
                "wrong_order",
            ),
            (
                json!({"code":"40004","out_trade_no":"ORD-2","sub_code":"ACQ.TRADE_NOT_EXIST"}),
                "wrong_order",
            ),
        ];
        for (answer, code) in retryable {
            assert_eq!(
                class_and_code(q(answer.clone())),
                (FaultClass::Retryable, code.to_owned()),
                "{answer}"
            );
        }
        let permanent = [
            (
                json!({"code":"20001","sub_code":"aop.invalid-auth-token"}),
                "20001",
            ),
            (
                json!({"code":"40001","sub_code":"isv.missing-signature"}),
                "40001",
            ),
            (
                json!({"code":"40002","sub_code":"isv.invalid-signature"}),
                "40002",
            ),
            (
                json!({"code":40002,"sub_code":"isv.invalid-app-id"}),
                "40002",
            ),
            (
                json!({"code":"40006","sub_code":"isv.insufficient-isv-permissions"}),
                "40006",
            ),
            (
                json!({"code":"40004","sub_code":"ACQ.INVALID_PARAMETER"}),
                "ACQ.INVALID_PARAMETER",
            ),
        ];
        for (answer, code) in permanent {
            assert_eq!(
                class_and_code(q(answer.clone())),
                (FaultClass::Permanent, code.to_owned()),
                "{answer}"
            );
        }
    }

    #[test]
    fn close_answers() {
        assert_eq!(
            c(json!({"code":"10000","msg":"Success","trade_no":"T","out_trade_no":"ORD-1"})),
            Ok(CloseAnswer::Closed)
        );
        assert_eq!(
            c(
                json!({"code":"40004","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在","out_trade_no":"ORD-1"})
            ),
            Ok(CloseAnswer::Closed)
        );
        assert_eq!(
            class_and_code(c(
                json!({"code":"40004","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在"})
            )),
            (FaultClass::Retryable, "unclassifiable".to_owned())
        );
        for sub in [
            "ACQ.TRADE_STATUS_ERROR",
            "ACQ.REASON_TRADE_STATUS_INVALID",
            "ACQ.REASON_ILLEGAL_STATUS",
        ] {
            assert_eq!(
                c(json!({"code":"40004","sub_code":sub})),
                Ok(CloseAnswer::NotCloseable {
                    sub_code: sub.into()
                })
            );
        }
        let retryable = [
            (json!({"code":"20000"}), "20000"),
            (
                json!({"code":"40004","sub_code":"ACQ.SYSTEM_ERROR"}),
                "ACQ.SYSTEM_ERROR",
            ),
            (json!({"code":"10000","trade_no":"T"}), "unclassifiable"),
            (
                json!({"code":"10000","out_trade_no":"ORD-9"}),
                "wrong_order",
            ),
            (
                json!({"code":"40004","out_trade_no":"ORD-9","sub_code":"ACQ.TRADE_NOT_EXIST"}),
                "wrong_order",
            ),
            (
                json!({"code":"40004","sub_code":"ACQ.UNKNOWN"}),
                "unclassifiable",
            ),
            (
                json!({"code":"20000","sub_code":"ACQ.TRADE_STATUS_ERROR"}),
                "20000",
            ),
            (json!([]), "unclassifiable"),
        ];
        for (answer, code) in retryable {
            assert_eq!(
                class_and_code(c(answer.clone())),
                (FaultClass::Retryable, code.to_owned()),
                "{answer}"
            );
        }
        for (answer, code) in [
            (json!({"code":"20001"}), "20001"),
            (json!({"code":"40001"}), "40001"),
            (
                json!({"code":"40002","sub_code":"isv.invalid-signature"}),
                "40002",
            ),
            (json!({"code":"40006"}), "40006"),
            (
                json!({"code":"40004","sub_code":"ACQ.INVALID_PARAMETER"}),
                "ACQ.INVALID_PARAMETER",
            ),
        ] {
            assert_eq!(
                class_and_code(c(answer.clone())),
                (FaultClass::Permanent, code.to_owned()),
                "{answer}"
            );
        }
    }

    #[test]
    fn error_messages_are_bounded() {
        let long = "x".repeat(10_000);
        let e = q(json!({"code":"99999","msg":long})).unwrap_err();
        assert!(e.message.len() < 1_000);
    }

    // ---- refund ----

    #[test]
    fn refund_answers() {
        let ask = RefundRequest {
            trade: order_closer_gateway::TradeRef::new("ORD-1"),
            out_request_no: "RF-1",
            amount_minor: 1234,
            total_minor: 1234,
            currency: "CNY",
        };
        let run = |v: Value| classify_refund(&ask, &v, "raw".into());
        let ok = run(
            json!({"code":"10000","out_trade_no":"ORD-1","fund_change":"Y","refund_fee":"12.34"}),
        )
        .unwrap();
        assert_eq!(
            (ok.refunded_minor, ok.fund_change, ok.raw.as_str()),
            (1234, true, "raw")
        );
        let again = run(
            json!({"code":"10000","out_trade_no":"ORD-1","fund_change":"N","refund_fee":"12.34"}),
        )
        .unwrap();
        assert!(!again.fund_change);
        let short = run(
            json!({"code":"10000","out_trade_no":"ORD-1","fund_change":"N","refund_fee":"0.00"}),
        )
        .unwrap_err();
        assert_eq!(
            (short.class, short.code.as_str()),
            (FaultClass::Retryable, "refund_unconfirmed")
        );
        let other = run(
            json!({"code":"10000","out_trade_no":"ORD-2","fund_change":"Y","refund_fee":"12.34"}),
        )
        .unwrap_err();
        assert_eq!(other.code, "wrong_order");
        let anon = run(json!({"code":"10000","fund_change":"Y","refund_fee":"12.34"})).unwrap_err();
        assert_eq!(anon.code, "unclassifiable");
        let fee =
            run(json!({"code":"10000","out_trade_no":"ORD-1","fund_change":"Y","refund_fee":"x"}))
                .unwrap_err();
        assert_eq!(fee.code, "unclassifiable");
        for (sub, class) in [
            ("ACQ.SELLER_BALANCE_NOT_ENOUGH", FaultClass::Retryable),
            ("ACQ.SYSTEM_ERROR", FaultClass::Retryable),
            ("ACQ.TRADE_NOT_EXIST", FaultClass::Permanent),
            ("ACQ.TRADE_STATUS_ERROR", FaultClass::Permanent),
            ("ACQ.TRADE_HAS_CLOSE", FaultClass::Permanent),
            ("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", FaultClass::Permanent),
            ("ACQ.INVALID_PARAMETER", FaultClass::Permanent),
        ] {
            let e = run(json!({"code":"40004","sub_code":sub,"out_trade_no":"ORD-1"})).unwrap_err();
            assert_eq!((e.class, e.code.as_str()), (class, sub));
        }
        assert_eq!(
            run(json!({"code":"20000"})).unwrap_err().class,
            FaultClass::Retryable
        );
        assert_eq!(
            run(json!({"code":"40002"})).unwrap_err().class,
            FaultClass::Permanent
        );
        assert_eq!(run(json!([])).unwrap_err().code, "unclassifiable");
    }
}
