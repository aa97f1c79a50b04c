//! The payment-gateway port: what the decision needs to know about a trade, and how a
//! gateway failure is classified. Each gateway implements [`Gateway`].

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use thiserror::Error;

/// Which trade a call is about: our order number, and the gateway's own reference for a
/// gateway that looks trades up by its own id (Stripe's `pi_...`). Alipay and WeChat Pay
/// use the order number alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TradeRef<'a> {
    /// The merchant trade number.
    pub out_trade_no: &'a str,
    /// The gateway's own reference, when the trade has one (`trades.gateway_ref`).
    pub gateway_ref: Option<&'a str>,
}

impl<'a> TradeRef<'a> {
    /// A trade known by our order number alone.
    pub fn new(out_trade_no: &'a str) -> Self {
        Self {
            out_trade_no,
            gateway_ref: None,
        }
    }

    /// A stored trade (payment attempt) of an order.
    pub fn of(trade: &'a order_closer_core::trade::Trade) -> Self {
        Self {
            out_trade_no: &trade.out_trade_no,
            gateway_ref: trade.gateway_ref.as_deref(),
        }
    }
}

/// What the gateway says about a trade, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TradeState {
    /// The buyer paid (`TRADE_SUCCESS` / `TRADE_FINISHED`).
    Paid {
        /// The gateway's own trade number.
        trade_no: String,
        /// The paid total, in minor units.
        amount_minor: i64,
        /// When the gateway says the payment happened, if it says.
        paid_at: Option<DateTime<Utc>>,
    },
    /// The buyer paid, and the payment has been given back since, in whole or in part (a
    /// refund by hand in the merchant portal, or by the gateway's risk control). Nothing
    /// can be paid on the trade any more. WeChat Pay's `REFUND` does not say how much was
    /// given back; Alipay's `TRADE_CLOSED` with a payment time is a full refund (a partial
    /// one leaves `TRADE_SUCCESS`, which is [`TradeState::Paid`]).
    Refunded {
        /// The gateway's own trade number.
        trade_no: String,
        /// What was paid, in minor units.
        amount_minor: i64,
        /// When the gateway says the payment happened, if it says.
        paid_at: Option<DateTime<Utc>>,
    },
    /// The trade exists and waits for payment (`WAIT_BUYER_PAY`): it can be closed.
    WaitingForPayment,
    /// The trade is closed at the gateway, unpaid (`TRADE_CLOSED`).
    Closed,
    /// The gateway has no such trade (the buyer never scanned or started paying).
    NotFound,
    /// The buyer is paying right now; ask again later.
    InProgress,
}

/// A query answer: the classified state plus the signed text it was read from (kept for
/// the audit trail, so every decision can be explained afterwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryAnswer {
    /// The classified trade state.
    pub state: TradeState,
    /// The raw, signature-verified response object as the gateway sent it.
    pub raw: String,
}

/// What the gateway says to a close request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseAnswer {
    /// The trade is closed now (or did not exist, which counts as closed).
    Closed,
    /// The gateway took the request, but its answer does not say the trade is closed
    /// (WeChat Pay answers 204 to any close, of an unknown or a paid order too): ask
    /// again to learn what the trade is now.
    Unconfirmed,
    /// The gateway refused: the trade is no longer closeable (usually: just paid).
    NotCloseable {
        /// The gateway's reason code, for example `ACQ.TRADE_STATUS_ERROR`.
        sub_code: String,
    },
}

/// A refund to make: the whole of a payment or a part of it, named by `out_request_no` so
/// that the same request sent again is the same refund, never a second one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundRequest<'a> {
    /// The paid trade.
    pub trade: TradeRef<'a>,
    /// Our idempotency key for this refund.
    pub out_request_no: &'a str,
    /// How much to give back, in minor units.
    pub amount_minor: i64,
    /// What the trade was paid in all, in minor units (WeChat Pay asks for it).
    pub total_minor: i64,
    /// The order's currency.
    pub currency: &'a str,
}

impl RefundRequest<'_> {
    /// Refuses, before anything is sent, a refund number the gateway would refuse: empty,
    /// longer than `max_chars`, or with a character outside its alphabet (`allowed`).
    /// Permanent: the same number would be refused every time.
    pub fn check_number(
        &self,
        max_chars: usize,
        allowed: impl Fn(char) -> bool,
    ) -> Result<(), GatewayError> {
        let number = self.out_request_no;
        if number.is_empty() || number.chars().count() > max_chars || !number.chars().all(allowed) {
            return Err(GatewayError::permanent(
                "bad_refund_number",
                format!(
                    "the refund number {:?} is not 1 to {max_chars} characters of the gateway's alphabet",
                    super::http::echo(number)
                ),
            ));
        }
        Ok(())
    }
}

/// What the gateway says to a refund it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundAnswer {
    /// Everything refunded on the trade so far, this refund included, in minor units.
    pub refunded_minor: i64,
    /// Whether this very call moved money (false: the request was seen before, and the
    /// answer repeats the refund made then).
    pub fund_change: bool,
    /// The raw, signature-verified response object, for the audit trail.
    pub raw: String,
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// Timeouts, 5xx, busy, system errors, unreadable or badly signed answers.
    Retryable,
    /// Bad credentials, invalid parameters: a configuration problem.
    Permanent,
}

/// What a failure says about how fast the merchant account sends. A gateway's own crate
/// knows which of its answers mean "too many requests" (a busy or system-error answer, a
/// frequency limit, HTTP 429) and says so here; the quota every process of the account
/// shares ([`crate::quota`]) then slows down, without naming any gateway's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pace {
    /// The failure says nothing about the rate.
    #[default]
    Unchanged,
    /// The gateway throttles the account: send less for a while.
    SlowDown,
}

/// A classified gateway failure.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{class:?} gateway error {code}: {message}")]
pub struct GatewayError {
    /// Retryable or permanent.
    pub class: FaultClass,
    /// A short machine-readable code (`timeout`, `http_502`, `20000`, `ACQ.SYSTEM_ERROR`,
    /// `bad_signature`, ...), used in audit rows and metrics.
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// Whether the gateway asks us to send less ([`Pace::SlowDown`] for its throttling
    /// answers, which are retryable too).
    pub pace: Pace,
}

impl GatewayError {
    /// A failure that may succeed later.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class: FaultClass::Retryable,
            code: code.into(),
            message: message.into(),
            pace: Pace::Unchanged,
        }
    }

    /// A retryable failure answered with HTTP `status` (not a success): throttling when
    /// it is 429 ("Too Many Requests", whoever sends it: the gateway or a proxy before
    /// it), plain retryable otherwise.
    pub fn at_status(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        if status == 429 {
            Self::throttled(code, message)
        } else {
            Self::retryable(code, message)
        }
    }

    /// A retryable failure by which the gateway says the account sends too fast (busy,
    /// frequency limited, HTTP 429): the shared quota slows down for a while.
    pub fn throttled(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pace: Pace::SlowDown,
            ..Self::retryable(code, message)
        }
    }

    /// A failure that will not succeed without an operator.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class: FaultClass::Permanent,
            code: code.into(),
            message: message.into(),
            pace: Pace::Unchanged,
        }
    }

    /// Whether the gateway asks us to send less.
    pub fn is_throttle(&self) -> bool {
        self.pace == Pace::SlowDown
    }
}

/// The gateway calls, as named in metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayMethod {
    /// [`Gateway::query`].
    Query,
    /// [`Gateway::close`].
    Close,
    /// [`Gateway::refund`].
    Refund,
}

impl GatewayMethod {
    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Close => "close",
            Self::Refund => "refund",
        }
    }
}

/// Why a gateway's daily bill could not be had.
#[derive(Debug, Error)]
pub enum BillFetchError {
    /// The gateway did not give it (the error says whether a later try may).
    #[error("asking the gateway for the {date} bill: {source}")]
    Gateway {
        /// The bill's day.
        date: NaiveDate,
        /// Why.
        #[source]
        source: GatewayError,
    },
    /// It came, but is not a readable bill (the error names the file, line and column),
    /// or not ours, or not of the day asked for.
    #[error(transparent)]
    Format(#[from] crate::bill::BillError),
    /// The configuration does not say which merchant account our bills name, so no bill
    /// can be checked to be ours.
    #[error(
        "{variable} is not set: a bill names its merchant account, and only a bill naming \
         ours is compared with our orders"
    )]
    NoAccount {
        /// The variable to set.
        variable: &'static str,
    },
}

/// Where `reconcile bill` gets a gateway's daily trade bill. The bills it gives are not
/// checked yet: the reconciliation reads only a [`crate::bill::CheckedBill`], checked
/// against [`BillSource::account`] and the day.
#[async_trait]
pub trait BillSource: Send + Sync {
    /// Fetches and reads the bill of `date` (the gateway's own calendar day). What the
    /// file cannot say of an empty bill (its day, its merchant) the gateway's signed
    /// answer may vouch for ([`crate::bill::Bill::vouch`]).
    async fn daily_bill(&self, date: NaiveDate) -> Result<crate::bill::Bill, BillFetchError>;
    /// Reads a bill file downloaded by hand; `name` names it in errors.
    fn read_file(&self, bytes: &[u8], name: &str) -> Result<crate::bill::Bill, BillFetchError>;
    /// Our merchant account as this gateway's bills name it ([`BillFetchError::NoAccount`]
    /// when the configuration does not say).
    fn account(&self) -> Result<crate::bill::Account, BillFetchError>;
    /// The largest bill file accepted.
    fn max_file_bytes(&self) -> u64;
    /// The gateway's calendar: a bill's day runs from midnight to midnight here.
    fn calendar(&self) -> chrono::FixedOffset;
}

/// A payment gateway as the decision sees it.
#[async_trait]
pub trait Gateway: Send + Sync {
    /// Asks for the state of a trade.
    async fn query(&self, trade: TradeRef<'_>) -> Result<QueryAnswer, GatewayError>;
    /// Asks the gateway to close the trade so that it can no longer be paid.
    async fn close(&self, trade: TradeRef<'_>) -> Result<CloseAnswer, GatewayError>;
    /// Gives a payment back; sending the same request again must not refund twice.
    async fn refund(&self, request: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError>;
}

#[async_trait]
impl<G: Gateway + ?Sized> Gateway for std::sync::Arc<G> {
    async fn query(&self, trade: TradeRef<'_>) -> Result<QueryAnswer, GatewayError> {
        (**self).query(trade).await
    }

    async fn close(&self, trade: TradeRef<'_>) -> Result<CloseAnswer, GatewayError> {
        (**self).close(trade).await
    }

    async fn refund(&self, request: &RefundRequest<'_>) -> Result<RefundAnswer, GatewayError> {
        (**self).refund(request).await
    }
}
