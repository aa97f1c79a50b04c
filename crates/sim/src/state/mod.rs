//! The simulator's trade store, shared by every gateway it speaks: trades by
//! `out_trade_no` (each at one gateway, numbered by it), what buyers do to them (scan,
//! pay, refund, lose the notifications: the buyer's steps, which the one buyer builder
//! [`SimState::buyer`] composes), request counters, and the current fault plan and
//! per-trade one-shots (their types are in `faults.rs`). Shared by cheap-clone handles
//! ([`SimState`]). What a gateway request does is in `gateway_side.rs`, the daily bill and
//! its download tokens in `bill.rs`.
//!
//! A trade may carry an expiry (`time_expire`, [`Buyer::expiring_at`](crate::Buyer::expiring_at)): it cannot
//! be scanned at or after that moment, and a trade still waiting for payment then is
//! closed as the gateway's expiry job would close it (`closed_at` is the expiry moment).
//! The expiry is applied lazily, whenever a trade is read or changed, so every view of the
//! trade sees it closed from the expiry moment on.
//!
//! A paid trade can be refunded, in parts ([`SimState::refund`]); once fully refunded it
//! reads `TRADE_CLOSED`.

mod bill;
mod gateway_side;
pub mod per_second;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use self::bill::BillToken;
pub use self::bill::DEFAULT_BILL_URL_TTL;
pub(crate) use self::bill::{BillFetch, china_date};
pub use self::gateway_side::{CloseOutcome, RefundOutcome};
use super::faults::SimMethod;
pub use super::faults::{
    DEFAULT_TIMEOUT_HOLD, FailNext, FaultDecision, FaultKind, FaultPlan, FaultPlanError,
    MAX_FAULT_MS, UnknownFaultKind,
};

/// What the trade store needs to know of a gateway: its name, how it numbers trades, and
/// which faults its answers can show. Each gateway's [`SimGateway`](super::SimGateway)
/// extends it with its wire protocol.
pub trait TradeRules: Send + Sync + fmt::Debug {
    /// Its channel name.
    fn channel(&self) -> &'static str;
    /// A new trade number, as the gateway writes them (`seq` counts the trades).
    fn trade_no(&self, now: DateTime<Utc>, seq: u64) -> String;
    /// Whether the gateway's answer to `method` can show `kind` at all (an answer without
    /// an order in it cannot name another order); a fault that cannot be shown is not
    /// drawn.
    fn can_show(&self, kind: FaultKind, method: SimMethod) -> bool {
        let _ = (kind, method);
        true
    }
    /// Where the merchant's refund numbers must be unique (Alipay: per trade, the
    /// default).
    fn refund_numbers(&self) -> RefundNumberScope {
        RefundNumberScope::Trade
    }
}

/// Where a gateway holds a merchant's refund numbers (`out_request_no`, `out_refund_no`)
/// unique: the same number again on the same trade is the same refund (idempotent);
/// what it does on another trade depends on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundNumberScope {
    /// Per trade: another trade's refund may use the same number (Alipay's
    /// `out_request_no`).
    Trade,
    /// Per merchant: a number used on one trade is refused on any other (WeChat Pay's
    /// `out_refund_no`).
    Merchant,
}

/// A simulated trade's status, in the simulator's own words; each gateway's protocol
/// says it in its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimTradeStatus {
    /// Scanned, waiting for the buyer to pay.
    WaitBuyerPay,
    /// Paid.
    TradeSuccess,
    /// Closed unpaid, or fully refunded.
    TradeClosed,
}

impl SimTradeStatus {
    /// The simulator's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitBuyerPay => "WAIT_BUYER_PAY",
            Self::TradeSuccess => "TRADE_SUCCESS",
            Self::TradeClosed => "TRADE_CLOSED",
        }
    }
}

/// One simulated trade, as stored and as the buyer API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimTradeView {
    /// The gateway the trade is at (its channel name).
    #[serde(default)]
    pub channel: String,
    /// The merchant's order number.
    pub out_trade_no: String,
    /// The gateway's trade number, as that gateway writes them.
    pub trade_no: String,
    /// Amount in minor units (fen).
    pub amount_minor: i64,
    /// Current status.
    pub status: SimTradeStatus,
    /// When the buyer scanned (the trade came into existence).
    pub created_at: DateTime<Utc>,
    /// When the buyer paid.
    pub paid_at: Option<DateTime<Utc>>,
    /// When the trade was closed (by a close request, its `time_expire` when it expired
    /// unpaid, or its last refund when fully refunded).
    pub closed_at: Option<DateTime<Utc>>,
    /// Armed race: the next close request finds the buyer paying first.
    pub pay_on_close: bool,
    /// The trade's expiry (`time_expire`), as the shop passed it when the trade was
    /// created: unpaid at this moment, the trade is closed. `None`: it never expires.
    #[serde(default)]
    pub time_expire: Option<DateTime<Utc>>,
    /// Refunds of the paid trade, oldest first.
    #[serde(default)]
    pub refunds: Vec<SimRefund>,
    /// The buyer's payment notification never arrives ("callback lost").
    #[serde(default)]
    pub notification_lost: bool,
}

impl SimTradeView {
    /// What is left to refund: the amount minus every refund so far.
    pub fn refundable_minor(&self) -> i64 {
        self.refunds.iter().fold(self.amount_minor, |left, r| {
            left.saturating_sub(r.amount_minor)
        })
    }
}

/// One refund of a simulated trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRefund {
    /// The refund batch number as the bill shows it: `RF{trade_no}{k}`, `k` counting the
    /// trade's refunds from 1.
    pub refund_no: String,
    /// Refunded amount, in minor units (positive).
    pub amount_minor: i64,
    /// When the refund happened.
    pub refunded_at: DateTime<Utc>,
    /// The merchant's `out_request_no` (refunds through the gateway's refund request); a
    /// second request with the same one answers this refund again and moves no money.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_request_no: Option<String>,
}

/// Request counters, readable at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every gateway request (any gateway's wire protocol).
    pub gateway_requests: u64,
    /// Query requests that passed authentication (faulted or not).
    pub queries: u64,
    /// Close requests that passed authentication (faulted or not).
    pub closes: u64,
    /// Bill requests (the download URL, or the bill itself where a gateway answers it at
    /// once) that passed authentication (faulted or not).
    #[serde(default)]
    pub bill_url_requests: u64,
    /// Bill files served (including overrides), by each gateway's bill download.
    #[serde(default)]
    pub bill_downloads: u64,
    /// Refund requests that passed authentication (faulted or not).
    #[serde(default)]
    pub refund_requests: u64,
    /// Requests refused because their signature did not verify.
    pub signature_failures: u64,
    /// Requests refused for any other reason (missing or bad parameters, another merchant...).
    pub rejected_requests: u64,
    /// Injected faults by kind name (`busy_20000`, `timeout`...), from the plan and from
    /// `fail-next` one-shots.
    pub faults_injected: BTreeMap<String, u64>,
    /// Authenticated requests by channel and Unix second, the last quarter of an hour
    /// ([`per_second`]): what a merchant's quota at the gateway counts.
    #[serde(default)]
    pub requests_per_second: per_second::PerSecond,
}

impl SimStats {
    /// The requests at `channel` in the whole Unix seconds `from..to`, and their number
    /// per second.
    pub fn rate(&self, channel: &str, from: i64, to: i64) -> (u64, f64) {
        per_second::rate(&self.requests_per_second, channel, from, to)
    }
}

/// Why a buyer action was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BuyerOpError {
    /// No trade with that number (and no amount to create one).
    #[error("trade {0:?} does not exist")]
    NotFound(String),
    /// The trade is not in a state that allows the action.
    #[error("{0}")]
    Conflict(String),
    /// The scan came at or after the `time_expire` given for the trade: the QR code has
    /// expired and no trade was created.
    #[error("{0}")]
    Expired(String),
    /// The request is malformed (for example a non-positive amount).
    #[error("{0}")]
    BadRequest(String),
    /// The simulator holds [`MAX_TRADES`] trades already (its memory is bounded).
    #[error("the simulator holds {0} trades, its limit; start a new one")]
    Full(usize),
}

/// Most trades one simulator keeps (in memory, for the life of the process): more than
/// the benchmark's runs create, and a bound on its memory (about 330 bytes a trade, so
/// about 330 MB at the limit).
pub const MAX_TRADES: usize = 1_000_000;

#[derive(Debug)]
struct Inner {
    trades: HashMap<String, SimTradeView>,
    stats: SimStats,
    faults: FaultPlan,
    /// Pending one-shots by `out_trade_no`.
    fail_next: HashMap<String, FailNext>,
    /// The trade (`out_trade_no`) each refund number made through a gateway's refund
    /// request was used on, by channel and number.
    refund_numbers: HashMap<(String, String), String>,
    /// Draws faults and jitter; reseeded when a plan with a `seed` is set.
    rng: StdRng,
    next_seq: u64,
    /// Issued bill download URLs by token.
    bill_tokens: HashMap<String, BillToken>,
    /// How long a bill URL is valid.
    bill_ttl: Duration,
    /// Served by the next bill download instead of the bill.
    bill_override: Option<Vec<u8>>,
    /// Most trades kept ([`MAX_TRADES`] unless lowered).
    max_trades: usize,
    /// Where paid and fully refunded trades are announced (the notifier).
    notices: Option<tokio::sync::mpsc::UnboundedSender<SimTradeView>>,
    /// The gateways spoken, the first being the buyer API's default.
    gateways: Vec<Arc<dyn TradeRules>>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            trades: HashMap::new(),
            stats: SimStats::default(),
            faults: FaultPlan::default(),
            fail_next: HashMap::new(),
            refund_numbers: HashMap::new(),
            rng: StdRng::from_rng(&mut rand::rng()),
            next_seq: 0,
            bill_tokens: HashMap::new(),
            bill_ttl: DEFAULT_BILL_URL_TTL,
            bill_override: None,
            max_trades: MAX_TRADES,
            notices: None,
            gateways: Vec::new(),
        }
    }
}

impl Inner {
    /// Hands a trade that just became paid or fully refunded to the notifier.
    fn announce(&self, trade: &SimTradeView) {
        if let Some(tx) = &self.notices {
            // The notifier is gone only when the simulator stops.
            let _ = tx.send(trade.clone());
        }
    }

    /// The trade named by `out_trade_no` (or else by `trade_no`), at `channel`'s gateway
    /// when one is given, with its expiry applied if it is due.
    fn current(
        &mut self,
        channel: Option<&str>,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
    ) -> Option<&mut SimTradeView> {
        let trade = match (out_trade_no, trade_no) {
            (Some(no), _) => self.trades.get_mut(no),
            (None, Some(tn)) => self.trades.values_mut().find(|t| t.trade_no == tn),
            (None, None) => None,
        }
        .filter(|t| channel.is_none_or(|c| t.channel == c))?;
        expire_if_due(trade, Utc::now());
        Some(trade)
    }

    /// The plan's latency (with jitter) for a request to `method`.
    fn latency(&mut self, method: Option<SimMethod>) -> Duration {
        if !self.faults.applies_to(method) {
            return Duration::ZERO;
        }
        let jitter = match self.faults.latency_jitter_ms {
            Some(j) if j > 0 => self.rng.random_range(0..=j),
            _ => 0,
        };
        Duration::from_millis(self.faults.latency_ms.saturating_add(jitter))
    }
}

/// A cheap-clone handle on the simulator's trades, counters and fault plan.
#[derive(Debug, Clone, Default)]
pub struct SimState {
    inner: Arc<Mutex<Inner>>,
}

impl SimState {
    /// An empty state, speaking no gateway (trades get plain numbers).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty state for these gateways; the first is where the buyer API's trades go
    /// when they name none.
    pub fn for_gateways(gateways: Vec<Arc<dyn TradeRules>>) -> Self {
        let state = Self::default();
        state.lock().gateways = gateways;
        state
    }

    /// The channels spoken, the default first.
    pub fn channels(&self) -> Vec<&'static str> {
        self.lock().gateways.iter().map(|g| g.channel()).collect()
    }

    /// From now on, every trade that becomes paid or fully refunded is sent here (the
    /// notifier's queue; one per payment, so bounded by the trades).
    pub(crate) fn subscribe_notices(&self) -> tokio::sync::mpsc::UnboundedReceiver<SimTradeView> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().notices = Some(tx);
        rx
    }

    /// Lowers the number of trades kept (a scan beyond it is refused).
    pub fn limit_trades(&self, max: usize) {
        self.lock().max_trades = max.min(MAX_TRADES);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a trade half-written (every update
        // is a single assignment), so a poisoned lock is safe to keep using.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The buyer scans the QR code of `out_trade_no` for `amount_minor`, at `channel`'s
    /// gateway (`None`: the default one): the trade comes into existence, waiting for
    /// payment. Idempotent for the same amount; a different amount, or a trade that exists
    /// at another gateway, is a conflict. Scanning an existing trade again returns it as it
    /// is now (closed if it expired unpaid) and keeps its original expiry.
    ///
    /// At or after `time_expire` (the trade's expiry; `None`: never) or `qr_code_expire`
    /// (the QR code's validity) the scan is refused with [`BuyerOpError::Expired`] and no
    /// trade is created. A trade scanned in time stays payable until its `time_expire`.
    /// Checked under the same lock that creates the trade, so that a query at or after
    /// `qr_code_expire` sees every trade that will ever exist.
    pub(crate) fn scan(
        &self,
        channel: Option<&str>,
        out_trade_no: &str,
        amount_minor: i64,
        time_expire: Option<DateTime<Utc>>,
        qr_code_expire: Option<DateTime<Utc>>,
    ) -> Result<SimTradeView, BuyerOpError> {
        if out_trade_no.is_empty() {
            return Err(BuyerOpError::BadRequest("out_trade_no is empty".into()));
        }
        if amount_minor <= 0 {
            return Err(BuyerOpError::BadRequest(format!(
                "amount_minor must be positive, got {amount_minor}"
            )));
        }
        let mut inner = self.lock();
        let gateway = match channel {
            None => inner.gateways.first().cloned(),
            Some(c) => match inner.gateways.iter().find(|g| g.channel() == c) {
                Some(g) => Some(Arc::clone(g)),
                None => {
                    let known: Vec<&str> = inner.gateways.iter().map(|g| g.channel()).collect();
                    return Err(BuyerOpError::BadRequest(format!(
                        "channel {c:?} is not simulated here (channels: {})",
                        known.join(", ")
                    )));
                }
            },
        };
        let channel = gateway.as_ref().map_or("", |g| g.channel());
        if let Some(existing) = inner.current(None, Some(out_trade_no), None) {
            if existing.channel != channel {
                return Err(BuyerOpError::Conflict(format!(
                    "trade {out_trade_no:?} exists at {}",
                    existing.channel
                )));
            }
            if existing.amount_minor != amount_minor {
                return Err(BuyerOpError::Conflict(format!(
                    "trade {out_trade_no:?} exists with amount_minor {}",
                    existing.amount_minor
                )));
            }
            return Ok(existing.clone());
        }
        let now = Utc::now();
        if let Some(expire) = qr_code_expire
            && now >= expire
        {
            return Err(BuyerOpError::Expired(format!(
                "the QR code for {out_trade_no:?} expired at {}: it can no longer be scanned",
                expire.to_rfc3339()
            )));
        }
        if let Some(expire) = time_expire
            && now >= expire
        {
            return Err(BuyerOpError::Expired(format!(
                "trade {out_trade_no:?} expired at {} (time_expire): the QR code can no \
                 longer be scanned",
                expire.to_rfc3339()
            )));
        }
        if inner.trades.len() >= inner.max_trades {
            return Err(BuyerOpError::Full(inner.max_trades));
        }
        inner.next_seq += 1;
        let trade_no = match &gateway {
            Some(g) => g.trade_no(now, inner.next_seq),
            None => format!("{:028}", inner.next_seq),
        };
        let trade = SimTradeView {
            channel: channel.to_owned(),
            out_trade_no: out_trade_no.to_owned(),
            trade_no,
            amount_minor,
            status: SimTradeStatus::WaitBuyerPay,
            created_at: now,
            paid_at: None,
            closed_at: None,
            pay_on_close: false,
            time_expire,
            refunds: Vec::new(),
            notification_lost: false,
        };
        inner.trades.insert(out_trade_no.to_owned(), trade.clone());
        Ok(trade)
    }

    /// Runs `f` on a trade.
    fn with_trade(
        &self,
        out_trade_no: &str,
        f: impl FnOnce(&mut SimTradeView) -> Result<(), BuyerOpError>,
    ) -> Result<SimTradeView, BuyerOpError> {
        let mut inner = self.lock();
        let trade = inner
            .current(None, Some(out_trade_no), None)
            .ok_or_else(|| BuyerOpError::NotFound(out_trade_no.to_owned()))?;
        let before = trade.status;
        f(trade)?;
        let after = trade.clone();
        if after.status != before && after.status != SimTradeStatus::WaitBuyerPay {
            inner.announce(&after);
        }
        Ok(after)
    }

    /// The buyer pays a waiting trade. A trade that expired unpaid is closed, and paying
    /// it is refused like paying any closed trade.
    pub(crate) fn pay(&self, out_trade_no: &str) -> Result<SimTradeView, BuyerOpError> {
        self.with_trade(out_trade_no, |trade| {
            waiting(trade)?;
            mark_paid(trade);
            Ok(())
        })
    }

    /// The notifications of this trade will be lost (the "callback lost" buyer).
    pub(crate) fn lose_notifications(
        &self,
        out_trade_no: &str,
    ) -> Result<SimTradeView, BuyerOpError> {
        self.with_trade(out_trade_no, |trade| {
            trade.notification_lost = true;
            Ok(())
        })
    }

    /// Arms the race: when a close request arrives for this waiting trade, the buyer
    /// pays first and the close is refused.
    pub(crate) fn arm_pay_on_close(
        &self,
        out_trade_no: &str,
    ) -> Result<SimTradeView, BuyerOpError> {
        self.with_trade(out_trade_no, |trade| {
            waiting(trade)?;
            trade.pay_on_close = true;
            Ok(())
        })
    }

    /// Refunds `amount_minor` of a paid trade (`TRADE_SUCCESS`), now, with refund number
    /// `RF{trade_no}{k}`. Refunding more than is left is a conflict, as is refunding a
    /// trade that is not paid (or already fully refunded); a non-positive amount is a bad
    /// request. The refund that leaves nothing makes the trade `TRADE_CLOSED` (gateways
    /// report fully refunded trades as closed).
    pub fn refund(
        &self,
        out_trade_no: &str,
        amount_minor: i64,
    ) -> Result<SimTradeView, BuyerOpError> {
        if amount_minor <= 0 {
            return Err(BuyerOpError::BadRequest(format!(
                "amount_minor must be positive, got {amount_minor}"
            )));
        }
        self.with_trade(out_trade_no, |trade| {
            add_refund(trade, amount_minor, None).map_err(|e| match e {
                RefundRefusal::Status => BuyerOpError::Conflict(format!(
                    "trade {:?} is {}, not TRADE_SUCCESS: nothing to refund",
                    trade.out_trade_no,
                    trade.status.as_str()
                )),
                RefundRefusal::Amount => BuyerOpError::Conflict(format!(
                    "trade {:?} has {} left to refund, not {amount_minor}",
                    trade.out_trade_no,
                    trade.refundable_minor()
                )),
            })
        })
    }

    /// One trade, if it exists (closed if it expired unpaid).
    pub fn trade(&self, out_trade_no: &str) -> Option<SimTradeView> {
        self.lock().current(None, Some(out_trade_no), None).cloned()
    }

    /// All trades, ordered by creation time (those that expired unpaid closed).
    pub fn trades(&self) -> Vec<SimTradeView> {
        let now = Utc::now();
        let mut inner = self.lock();
        let mut all: Vec<SimTradeView> = inner
            .trades
            .values_mut()
            .map(|t| {
                expire_if_due(t, now);
                t.clone()
            })
            .collect();
        all.sort_by_key(|t| t.created_at);
        all
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }
}

/// The gateway's expiry job, applied lazily: a trade still waiting for payment at its
/// `time_expire` is closed as of that moment (and an armed race is dropped with it).
fn expire_if_due(trade: &mut SimTradeView, now: DateTime<Utc>) {
    if trade.status == SimTradeStatus::WaitBuyerPay
        && let Some(expire) = trade.time_expire
        && now >= expire
    {
        trade.status = SimTradeStatus::TradeClosed;
        trade.closed_at = Some(expire);
        trade.pay_on_close = false;
    }
}

/// Why a refund cannot be made.
enum RefundRefusal {
    /// The trade is not paid (or is fully refunded already).
    Status,
    /// Not positive, or more than is left.
    Amount,
}

/// Adds a refund of `amount_minor` to a paid trade, with refund number `RF{trade_no}{k}`;
/// the refund that leaves nothing closes the trade.
fn add_refund(
    trade: &mut SimTradeView,
    amount_minor: i64,
    out_request_no: Option<&str>,
) -> Result<(), RefundRefusal> {
    if trade.status != SimTradeStatus::TradeSuccess {
        return Err(RefundRefusal::Status);
    }
    let left = trade.refundable_minor();
    if amount_minor <= 0 || amount_minor > left {
        return Err(RefundRefusal::Amount);
    }
    let now = Utc::now();
    let k = trade.refunds.len() + 1;
    trade.refunds.push(SimRefund {
        refund_no: format!("RF{}{k}", trade.trade_no),
        amount_minor,
        refunded_at: now,
        out_request_no: out_request_no.map(str::to_owned),
    });
    if amount_minor == left {
        trade.status = SimTradeStatus::TradeClosed;
        trade.closed_at = Some(now);
    }
    Ok(())
}

/// Refuses a buyer action on a trade that is not waiting for payment.
fn waiting(trade: &SimTradeView) -> Result<(), BuyerOpError> {
    if trade.status == SimTradeStatus::WaitBuyerPay {
        return Ok(());
    }
    Err(BuyerOpError::Conflict(format!(
        "trade {:?} is {}, not WAIT_BUYER_PAY",
        trade.out_trade_no,
        trade.status.as_str()
    )))
}

fn mark_paid(trade: &mut SimTradeView) {
    trade.status = SimTradeStatus::TradeSuccess;
    trade.paid_at = Some(Utc::now());
    trade.pay_on_close = false;
}
