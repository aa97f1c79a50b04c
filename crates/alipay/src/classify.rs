//! What Alipay's (signature-checked, typed) answers mean for an order: each method's
//! answer classified into the port's answers ([`TradeState`], [`CloseAnswer`],
//! [`RefundAnswer`], a bill URL) or a [`GatewayError`], retryable or permanent. The
//! failures every method shares are classified once, by [`common_failure`]; each method
//! adds only its own `40004` sub-codes. Pure functions: the tables in their docs are their
//! tests (`classify_tests.rs`).
//!
//! Alipay's classic `alipay.trade.query` has no "buyer is paying right now" status (a
//! trade is `WAIT_BUYER_PAY` until the payment completes), so these functions never
//! answer [`TradeState::InProgress`]; that state exists for other gateways.

use order_closer_core::money::{format_minor, parse_minor};
use order_closer_core::time::parse_china_time;
use order_closer_gateway::http::{self, echo};
use order_closer_gateway::{CloseAnswer, GatewayError, RefundAnswer, RefundRequest, TradeState};

use super::answer::{
    BillUrlResponse, Code, Status, SubCode, TradeCloseResponse, TradeQueryResponse,
    TradeRefundResponse, TradeStatus,
};

fn unclassifiable(why: impl Into<String>) -> GatewayError {
    GatewayError::retryable("unclassifiable", why)
}

/// Rejects an answer that names another order than the one asked about (`about`), and,
/// when `require`, one that names none.
fn check_order(
    asked: &str,
    about: Option<&str>,
    status: &Status,
    require: bool,
) -> Result<(), GatewayError> {
    match about {
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
            status.describe()
        ))),
        _ => Ok(()),
    }
}

/// What a query or close answer says of the trade, before the method's own reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// `10000`.
    Success,
    /// `40004` + `ACQ.TRADE_NOT_EXIST`.
    NotFound,
    /// Any other answer: a failure.
    Failed,
}

/// The [`Verdict`] of an answer about `about` to a question about `asked`. An answer that
/// decides the order (success, or no such trade) must name it: a signed answer about no
/// order in particular could be a replay of any other.
fn verdict(asked: &str, about: Option<&str>, status: &Status) -> Result<Verdict, GatewayError> {
    let verdict = if status.is_success() {
        Verdict::Success
    } else if status.business_failure() == Some(&SubCode::TradeNotExist) {
        Verdict::NotFound
    } else {
        Verdict::Failed
    };
    check_order(asked, about, status, verdict != Verdict::Failed)?;
    Ok(verdict)
}

/// An amount in yuan (`name` for the error): a valid, non-negative decimal, in minor units.
fn amount(name: &str, text: &str) -> Result<i64, GatewayError> {
    parse_minor(text)
        .ok()
        .filter(|a| *a >= 0)
        .ok_or_else(|| unclassifiable(format!("bad {name} {:?}", echo(text))))
}

/// Classifies the failures common to every method: anything but `10000` and the
/// method's own `40004` sub-codes.
///
/// | answer | result |
/// |---|---|
/// | `ACQ.SYSTEM_ERROR` (under any code) | retryable `ACQ.SYSTEM_ERROR`, throttling |
/// | `ACQ.INVALID_PARAMETER` (under any code) | permanent `ACQ.INVALID_PARAMETER` |
/// | `20000` | retryable `20000`, throttling |
/// | `20001`, `40001`, `40002`, `40006` | permanent, the code |
/// | anything else | retryable `unclassifiable` |
///
/// "Throttling" ([`GatewayError::throttled`]): Alipay answers an app that sends too fast
/// with its busy answers (`20000` "service currently unavailable", `ACQ.SYSTEM_ERROR`
/// "system busy"), so these shrink the account's shared quota for a while; an HTTP 429
/// does too (`transport.rs`).
pub fn common_failure(status: &Status) -> GatewayError {
    let detail = status.describe();
    match (&status.code, &status.sub_code) {
        (_, Some(sub @ SubCode::SystemError)) => GatewayError::throttled(sub.as_str(), detail),
        (_, Some(sub @ SubCode::InvalidParameter)) => GatewayError::permanent(sub.as_str(), detail),
        (Some(code @ Code::ServiceUnavailable), _) => {
            GatewayError::throttled(code.as_str(), detail)
        }
        (
            Some(
                code @ (Code::InvalidAuthToken
                | Code::MissingParameter
                | Code::InvalidParameter
                | Code::NoPermission),
            ),
            _,
        ) => GatewayError::permanent(code.as_str(), detail),
        _ => unclassifiable(format!("unrecognised answer: {detail}")),
    }
}

/// Classifies an `alipay.trade.query` answer for the order `asked`.
///
/// | answer | result |
/// |---|---|
/// | `10000` + `TRADE_SUCCESS` / `TRADE_FINISHED` | [`TradeState::Paid`] (`trade_no` and a valid `total_amount` required) |
/// | `10000` + `WAIT_BUYER_PAY` | [`TradeState::WaitingForPayment`] |
/// | `10000` + `TRADE_CLOSED` with a `send_pay_date` | [`TradeState::Refunded`] (paid, then refunded in full; `trade_no` and a valid `total_amount` required) |
/// | `10000` + `TRADE_CLOSED` | [`TradeState::Closed`] |
/// | `40004` + `ACQ.TRADE_NOT_EXIST` (with our `out_trade_no`) | [`TradeState::NotFound`] |
/// | another order's `out_trade_no` | retryable `wrong_order` |
/// | any other failure | [`common_failure`] |
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
pub fn classify_query(
    asked: &str,
    answer: &TradeQueryResponse,
) -> Result<TradeState, GatewayError> {
    match verdict(asked, answer.out_trade_no.as_deref(), &answer.status)? {
        Verdict::NotFound => return Ok(TradeState::NotFound),
        Verdict::Failed => return Err(common_failure(&answer.status)),
        Verdict::Success => {}
    }
    match &answer.trade_status {
        Some(TradeStatus::TradeSuccess | TradeStatus::TradeFinished) => {
            let (trade_no, amount_minor, paid_at) = payment(answer)?;
            Ok(TradeState::Paid {
                trade_no,
                amount_minor,
                paid_at,
            })
        }
        Some(TradeStatus::WaitBuyerPay) => Ok(TradeState::WaitingForPayment),
        Some(TradeStatus::TradeClosed) if answer.send_pay_date.is_some() => {
            let (trade_no, amount_minor, paid_at) = payment(answer)?;
            Ok(TradeState::Refunded {
                trade_no,
                amount_minor,
                paid_at,
            })
        }
        Some(TradeStatus::TradeClosed) => Ok(TradeState::Closed),
        Some(TradeStatus::Other(other)) => Err(unclassifiable(format!(
            "unknown trade_status {:?}",
            echo(other)
        ))),
        None => Err(unclassifiable("success answer without trade_status")),
    }
}

/// What a query answer says was paid: the trade number and `total_amount` (both
/// required), and `send_pay_date` (`None` when missing or unreadable).
fn payment(
    answer: &TradeQueryResponse,
) -> Result<(String, i64, Option<chrono::DateTime<chrono::Utc>>), GatewayError> {
    let trade_no = answer
        .trade_no
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unclassifiable("paid trade without trade_no"))?;
    let amount_text = answer
        .total_amount
        .as_deref()
        .ok_or_else(|| unclassifiable("paid trade without total_amount"))?;
    let amount_minor = amount("total_amount", amount_text)?;
    let paid_at = answer.send_pay_date.as_deref().and_then(|d| {
        let parsed = parse_china_time(d);
        if parsed.is_none() {
            tracing::warn!(send_pay_date = %echo(d), "unreadable send_pay_date");
        }
        parsed
    });
    Ok((trade_no.to_owned(), amount_minor, paid_at))
}

/// Classifies an `alipay.trade.close` answer for the order `asked`.
///
/// | answer | result |
/// |---|---|
/// | `10000` (with our `out_trade_no`) | [`CloseAnswer::Closed`] |
/// | `40004` + `ACQ.TRADE_NOT_EXIST` (with our `out_trade_no`) | [`CloseAnswer::Closed`] (nothing to pay) |
/// | `40004` + `ACQ.TRADE_STATUS_ERROR` / `ACQ.REASON_TRADE_STATUS_INVALID` / `ACQ.REASON_ILLEGAL_STATUS` | [`CloseAnswer::NotCloseable`]: query again |
/// | another order's `out_trade_no` | retryable `wrong_order` |
/// | any other failure | [`common_failure`] |
///
/// A `10000` or `ACQ.TRADE_NOT_EXIST` answer must name the order (`out_trade_no`); one that
/// does not is unclassifiable rather than trusted, since it cannot be told apart from a
/// replayed one.
pub fn classify_close(
    asked: &str,
    answer: &TradeCloseResponse,
) -> Result<CloseAnswer, GatewayError> {
    let status = &answer.status;
    // "No such trade" counts as closed too: nothing can be paid on it.
    if verdict(asked, answer.out_trade_no.as_deref(), status)? != Verdict::Failed {
        return Ok(CloseAnswer::Closed);
    }
    match status.business_failure() {
        Some(
            sub @ (SubCode::TradeStatusError
            | SubCode::ReasonTradeStatusInvalid
            | SubCode::ReasonIllegalStatus),
        ) => Ok(CloseAnswer::NotCloseable {
            sub_code: sub.as_str().to_owned(),
        }),
        _ => Err(common_failure(status)),
    }
}

/// Classifies an `alipay.trade.refund` answer for `asked`; `raw` is kept in the answer
/// for the audit trail.
///
/// | answer | result |
/// |---|---|
/// | `10000` (our `out_trade_no`), `fund_change` `Y` | refunded now |
/// | `10000`, `fund_change` `N`, `refund_fee` covering the amount | refunded before (a retry of the same `out_request_no`) |
/// | `10000`, `fund_change` `N`, `refund_fee` short of the amount | retryable `refund_unconfirmed` |
/// | `40004` + `ACQ.SELLER_BALANCE_NOT_ENOUGH` | retryable: the merchant account may be topped up |
/// | `40004` + `ACQ.TRADE_NOT_EXIST`, `ACQ.TRADE_STATUS_ERROR`, `ACQ.TRADE_HAS_CLOSE`, `ACQ.REFUND_AMT_NOT_EQUAL_TOTAL` | permanent: nothing (more) to refund, an operator looks |
/// | any other failure | [`common_failure`] |
///
/// Alipay advises confirming a `fund_change` of `N` with the refund query; here the
/// answer's own `refund_fee` (the trade's total refunded) is the confirmation.
pub fn classify_refund(
    asked: &RefundRequest<'_>,
    answer: &TradeRefundResponse,
    raw: String,
) -> Result<RefundAnswer, GatewayError> {
    let status = &answer.status;
    let success = status.is_success();
    check_order(
        asked.trade.out_trade_no,
        answer.out_trade_no.as_deref(),
        status,
        success,
    )?;
    if success {
        let refunded_minor = amount("refund_fee", answer.refund_fee.as_deref().unwrap_or(""))?;
        if !answer.fund_change && refunded_minor < asked.amount_minor {
            return Err(GatewayError::retryable(
                "refund_unconfirmed",
                format!(
                    "fund_change N and only {} refunded on the trade",
                    format_minor(refunded_minor)
                ),
            ));
        }
        return Ok(RefundAnswer {
            refunded_minor,
            fund_change: answer.fund_change,
            raw,
        });
    }
    match status.business_failure() {
        Some(sub @ SubCode::SellerBalanceNotEnough) => {
            Err(GatewayError::retryable(sub.as_str(), status.describe()))
        }
        Some(
            sub @ (SubCode::TradeNotExist
            | SubCode::TradeStatusError
            | SubCode::TradeHasClose
            | SubCode::RefundAmtNotEqualTotal),
        ) => Err(GatewayError::permanent(sub.as_str(), status.describe())),
        _ => Err(common_failure(status)),
    }
}

/// Classifies an `alipay.data.dataservice.bill.downloadurl.query` answer.
///
/// | answer | result |
/// |---|---|
/// | `10000` + an http(s) `bill_download_url` | the URL |
/// | `10000` without a usable URL | retryable `unclassifiable` |
/// | `40004` + `isv.invalid-bill-date` / `isv.invalid-bill-type` / `isv.invalid-parameter` | permanent (the sub-code) |
/// | `40004` + `isp.bill_not_exist` (not generated yet; unverified code) | retryable |
/// | any other failure | [`common_failure`] |
pub fn classify_bill_url(answer: &BillUrlResponse) -> Result<String, GatewayError> {
    let status = &answer.status;
    if status.is_success() {
        let url = answer.bill_download_url.as_deref().unwrap_or("");
        return match http::absolute_url(url) {
            Some(_) => Ok(url.to_owned()),
            None => Err(unclassifiable(format!(
                "success answer without a usable bill_download_url ({:?})",
                echo(url)
            ))),
        };
    }
    match status.business_failure() {
        Some(
            sub @ (SubCode::InvalidBillDate
            | SubCode::InvalidBillType
            | SubCode::IsvInvalidParameter),
        ) => Err(GatewayError::permanent(sub.as_str(), status.describe())),
        // Not generated yet (asked too early in the day); unverified sub-code.
        Some(sub @ SubCode::BillNotExist) => {
            Err(GatewayError::retryable(sub.as_str(), status.describe()))
        }
        _ => Err(common_failure(status)),
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod tests;
