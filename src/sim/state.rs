//! The simulator's memory: trades by `out_trade_no`, request counters, and the current
//! fault plan and per-trade one-shots (their types are in `faults.rs`), consulted for
//! every gateway request. Shared by cheap-clone handles ([`SimState`]).
//!
//! A trade may carry Alipay's `time_expire` ([`SimState::scan_with_expiry`]): it cannot
//! be scanned at or after that moment, and a trade still waiting for payment then is
//! closed as Alipay's expiry job would close it (`closed_at` is the expiry moment). The
//! expiry is applied lazily, whenever a trade is read or changed, so every view of the
//! trade sees it closed from the expiry moment on.
//!
//! A paid trade can be refunded, in parts ([`SimState::refund`]); once fully refunded it
//! reads `TRADE_CLOSED`, as on Alipay. The daily bill ([`SimState::bill_rows`]) lists the
//! payments and refunds of a China-time day; its download URLs are one-date tokens that
//! expire ([`DEFAULT_BILL_URL_TTL`]), and a test can make the next download serve any
//! bytes instead ([`SimState::set_bill_override`]).

use crate::time::china;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use super::faults::{
    DEFAULT_TIMEOUT_HOLD, FailNext, FaultDecision, FaultKind, FaultPlan, FaultPlanError,
    MAX_FAULT_MS, UnknownFaultKind,
};
use super::gateway::{SimGateway, SimMethod};
use crate::bill::{BillRow, BillRowKind};

/// A simulated trade's status, in the simulator's own words (Alipay's, as it happens);
/// each gateway's protocol says it in its own.
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
    /// Alipay's `time_expire`, as the shop passed it when the trade was created: unpaid
    /// at this moment, the trade is closed. `None`: it never expires.
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
    /// The merchant's `out_request_no` (refunds through `alipay.trade.refund`); a second
    /// request with the same one answers this refund again and moves no money.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_request_no: Option<String>,
}

/// Request counters, readable at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every `POST /gateway.do`.
    pub gateway_requests: u64,
    /// `alipay.trade.query` requests that passed authentication (faulted or not).
    pub queries: u64,
    /// `alipay.trade.close` requests that passed authentication (faulted or not).
    pub closes: u64,
    /// `alipay.data.dataservice.bill.downloadurl.query` requests that passed
    /// authentication (faulted or not).
    #[serde(default)]
    pub bill_url_requests: u64,
    /// Bill archives served (including overrides), by `GET /sim/bills/...`.
    #[serde(default)]
    pub bill_downloads: u64,
    /// `alipay.trade.refund` requests that passed authentication (faulted or not).
    #[serde(default)]
    pub refund_requests: u64,
    /// Requests refused because their signature did not verify.
    pub signature_failures: u64,
    /// Requests refused for any other reason (missing or bad parameters, wrong app id...).
    pub rejected_requests: u64,
    /// Injected faults by kind name (`busy_20000`, `timeout`...), from the plan and from
    /// `fail-next` one-shots.
    pub faults_injected: BTreeMap<String, u64>,
}

/// How long a bill download URL stays valid (Alipay: about 30 s); afterwards it answers
/// 410. Changeable with [`SimState::set_bill_url_ttl`].
pub const DEFAULT_BILL_URL_TTL: Duration = Duration::from_secs(30);

/// The merchant account named in the simulator's bills (file names and header).
pub const SIM_BILL_ACCOUNT: &str = "20880000000000010156";

/// Expired bill tokens are forgotten (then answer 404) this long after they expire.
const BILL_TOKEN_MEMORY: Duration = Duration::from_secs(600);

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

/// What a bill download token leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BillFetch {
    /// No such token (never issued, or forgotten long after it expired).
    Unknown,
    /// The token expired.
    Expired,
    /// Serve the bill of `date`, or the override bytes instead when set.
    Ready {
        /// The bill's day (China time).
        date: NaiveDate,
        /// Bytes to serve instead of the bill (consumed by this download).
        override_body: Option<Vec<u8>>,
    },
}

/// An issued bill download URL.
#[derive(Debug, Clone)]
struct BillToken {
    date: NaiveDate,
    expires: Instant,
}

/// The result of a refund request at the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Refunded: now (`fund_change`), or before under the same `out_request_no`.
    Refunded {
        /// The trade after the refund.
        trade: SimTradeView,
        /// Whether this request moved money.
        fund_change: bool,
    },
    /// No such trade.
    NotFound,
    /// The trade is not paid, or nothing is left to refund.
    StatusError(SimTradeView),
    /// More than is left, or the `out_request_no` was used with another amount.
    AmountError(SimTradeView),
}

/// The result of a close request at the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// The trade was waiting and is closed now.
    Closed(SimTradeView),
    /// No such trade.
    NotFound,
    /// The trade is paid or already closed (including a race armed by `pay_on_close`,
    /// in which case it was just paid).
    StatusError(SimTradeView),
}

#[derive(Debug)]
struct Inner {
    trades: HashMap<String, SimTradeView>,
    stats: SimStats,
    faults: FaultPlan,
    /// Pending one-shots by `out_trade_no`.
    fail_next: HashMap<String, FailNext>,
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
    gateways: Vec<Arc<dyn SimGateway>>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            trades: HashMap::new(),
            stats: SimStats::default(),
            faults: FaultPlan::default(),
            fail_next: HashMap::new(),
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
    pub fn for_gateways(gateways: Vec<Arc<dyn SimGateway>>) -> Self {
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

    /// The buyer scans the QR code: the trade comes into existence, waiting for payment,
    /// and never expires. Idempotent for the same amount; a different amount is a
    /// conflict.
    pub fn scan(
        &self,
        out_trade_no: &str,
        amount_minor: i64,
    ) -> Result<SimTradeView, BuyerOpError> {
        self.scan_with_expiry(out_trade_no, amount_minor, None)
    }

    /// The buyer scans a QR code whose trade the shop created with Alipay's
    /// `time_expire` (`None`: no expiry, as [`SimState::scan`]). At or after
    /// `time_expire` the scan is refused with [`BuyerOpError::Expired`] and no trade is
    /// created. Scanning an existing trade again is idempotent for the same amount (a
    /// different amount is a conflict): it returns the trade as it is now (closed if it
    /// expired unpaid) and keeps its original expiry, whatever `time_expire` says.
    pub fn scan_with_expiry(
        &self,
        out_trade_no: &str,
        amount_minor: i64,
        time_expire: Option<DateTime<Utc>>,
    ) -> Result<SimTradeView, BuyerOpError> {
        self.scan_with_terms(out_trade_no, amount_minor, time_expire, None)
    }

    /// [`SimState::scan_with_expiry`] plus the QR code's own validity (Alipay's
    /// `qr_code_timeout_express`): a first scan at or after `qr_code_expire` is refused
    /// with [`BuyerOpError::Expired`], but a trade scanned in time stays payable (until
    /// its `time_expire`, if any). Checked under the same lock that creates the trade, so
    /// that a query at or after `qr_code_expire` sees every trade that will ever exist.
    pub fn scan_with_terms(
        &self,
        out_trade_no: &str,
        amount_minor: i64,
        time_expire: Option<DateTime<Utc>>,
        qr_code_expire: Option<DateTime<Utc>>,
    ) -> Result<SimTradeView, BuyerOpError> {
        self.scan_in(
            None,
            out_trade_no,
            amount_minor,
            time_expire,
            qr_code_expire,
        )
    }

    /// [`SimState::scan_with_terms`] at `channel`'s gateway (`None`: the default one). A
    /// trade that exists already at another gateway is a conflict.
    pub fn scan_in(
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

    /// Runs `f` on a trade, scanning it first when `scan_amount` is given and it does
    /// not exist yet.
    fn with_trade(
        &self,
        out_trade_no: &str,
        scan_amount: Option<i64>,
        f: impl FnOnce(&mut SimTradeView) -> Result<(), BuyerOpError>,
    ) -> Result<SimTradeView, BuyerOpError> {
        if let Some(amount) = scan_amount {
            self.scan(out_trade_no, amount)?;
        }
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

    /// The buyer pays a waiting trade. With `scan_amount`, a trade never scanned is
    /// scanned first (without expiry). A trade that expired unpaid is closed, and paying
    /// it is refused like paying any closed trade.
    pub fn pay(
        &self,
        out_trade_no: &str,
        scan_amount: Option<i64>,
    ) -> Result<SimTradeView, BuyerOpError> {
        self.with_trade(out_trade_no, scan_amount, |trade| {
            if trade.status != SimTradeStatus::WaitBuyerPay {
                return Err(BuyerOpError::Conflict(format!(
                    "trade {:?} is {}, not WAIT_BUYER_PAY",
                    trade.out_trade_no,
                    trade.status.as_str()
                )));
            }
            mark_paid(trade);
            Ok(())
        })
    }

    /// The notifications of this trade will be lost (the "callback lost" buyer).
    pub fn lose_notifications(&self, out_trade_no: &str) -> Result<SimTradeView, BuyerOpError> {
        self.with_trade(out_trade_no, None, |trade| {
            trade.notification_lost = true;
            Ok(())
        })
    }

    /// Arms the race: when a close request arrives for this waiting trade, the buyer
    /// pays first and the close is refused. With `scan_amount`, a trade never scanned is
    /// scanned first.
    pub fn arm_pay_on_close(
        &self,
        out_trade_no: &str,
        scan_amount: Option<i64>,
    ) -> Result<SimTradeView, BuyerOpError> {
        self.with_trade(out_trade_no, scan_amount, |trade| {
            if trade.status != SimTradeStatus::WaitBuyerPay {
                return Err(BuyerOpError::Conflict(format!(
                    "trade {:?} is {}, not WAIT_BUYER_PAY",
                    trade.out_trade_no,
                    trade.status.as_str()
                )));
            }
            trade.pay_on_close = true;
            Ok(())
        })
    }

    /// Refunds `amount_minor` of a paid trade (`TRADE_SUCCESS`), now, with refund number
    /// `RF{trade_no}{k}`. Refunding more than is left is a conflict, as is refunding a
    /// trade that is not paid (or already fully refunded); a non-positive amount is a bad
    /// request. The refund that leaves nothing makes the trade `TRADE_CLOSED` (Alipay
    /// reports fully refunded trades so).
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
        self.with_trade(out_trade_no, None, |trade| {
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

    /// Gateway side: `alipay.trade.refund` (requests are counted by
    /// [`SimState::fault_for`]). The same `out_request_no` answers the refund made under
    /// it, moving no money, when the amount is the same, and is refused with another
    /// amount. With `apply` false nothing changes (a faulted answer's preview). A full
    /// refund closes the trade and is announced (Alipay's `TRADE_CLOSED` notification).
    pub(crate) fn gateway_refund(
        &self,
        channel: &str,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
        out_request_no: &str,
        amount_minor: i64,
        apply: bool,
    ) -> RefundOutcome {
        let mut inner = self.lock();
        let Some(trade) = inner.current(Some(channel), out_trade_no, trade_no) else {
            return RefundOutcome::NotFound;
        };
        if let Some(earlier) = trade
            .refunds
            .iter()
            .find(|r| r.out_request_no.as_deref() == Some(out_request_no))
        {
            return if earlier.amount_minor == amount_minor {
                RefundOutcome::Refunded {
                    trade: trade.clone(),
                    fund_change: false,
                }
            } else {
                RefundOutcome::AmountError(trade.clone())
            };
        }
        let mut after = trade.clone();
        let before = after.status;
        match add_refund(&mut after, amount_minor, Some(out_request_no)) {
            Err(RefundRefusal::Status) => RefundOutcome::StatusError(after),
            Err(RefundRefusal::Amount) => RefundOutcome::AmountError(after),
            Ok(()) => {
                if apply {
                    *trade = after.clone();
                    if after.status != before {
                        inner.announce(&after);
                    }
                }
                RefundOutcome::Refunded {
                    trade: after,
                    fund_change: true,
                }
            }
        }
    }

    /// The bill rows of `channel`'s gateway for a China-time day: one payment row for
    /// every trade paid that day (amount, created and paid times), and one refund row
    /// for every refund made that day (negative amounts, the trade's creation time, the
    /// refund time and number), ordered by completion time. Times are cut to whole
    /// seconds, as bill files write them; `line` is 0.
    pub fn bill_rows(&self, channel: &str, date: NaiveDate) -> Vec<BillRow> {
        let mut rows = Vec::new();
        for trade in self.trades().into_iter().filter(|t| t.channel == channel) {
            let subject = format!("订单 {}", trade.out_trade_no);
            let row =
                |kind, finished: DateTime<Utc>, amount: i64, refund_no: Option<&str>| BillRow {
                    line: 0,
                    trade_no: trade.trade_no.clone(),
                    out_trade_no: trade.out_trade_no.clone(),
                    kind,
                    subject: subject.clone(),
                    created_at: Some(whole_seconds(trade.created_at)),
                    finished_at: Some(whole_seconds(finished)),
                    amount_minor: amount,
                    received_minor: amount,
                    refund_no: refund_no.map(str::to_owned),
                };
            if let Some(paid_at) = trade.paid_at
                && china_date(paid_at) == date
            {
                rows.push(row(BillRowKind::Payment, paid_at, trade.amount_minor, None));
            }
            for refund in &trade.refunds {
                if china_date(refund.refunded_at) == date {
                    rows.push(row(
                        BillRowKind::Refund,
                        refund.refunded_at,
                        refund.amount_minor.saturating_neg(),
                        Some(&refund.refund_no),
                    ));
                }
            }
        }
        rows.sort_by_key(|r| r.finished_at);
        rows
    }

    /// How long bill download URLs issued from now on stay valid (default
    /// [`DEFAULT_BILL_URL_TTL`]); tests shorten it to see an URL expire.
    pub fn set_bill_url_ttl(&self, ttl: Duration) {
        self.lock().bill_ttl = ttl;
    }

    /// Makes the next bill download (of any valid URL) serve `body` instead of the bill;
    /// `None` clears it.
    pub fn set_bill_override(&self, body: Option<Vec<u8>>) {
        self.lock().bill_override = body;
    }

    /// Issues a download token for the bill of `date`, valid for the current TTL; forgets
    /// tokens long expired.
    pub(crate) fn issue_bill_token(&self, date: NaiveDate) -> String {
        let now = Instant::now();
        let token: String = {
            let mut rng = rand::rng();
            (0..32)
                .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
                .collect()
        };
        let mut inner = self.lock();
        inner
            .bill_tokens
            .retain(|_, t| t.expires + BILL_TOKEN_MEMORY > now);
        let expires = now + inner.bill_ttl;
        inner
            .bill_tokens
            .insert(token.clone(), BillToken { date, expires });
        token
    }

    /// Looks a download token up; a valid one counts a download and takes the override.
    pub(crate) fn fetch_bill(&self, token: &str) -> BillFetch {
        let mut inner = self.lock();
        let Some(found) = inner.bill_tokens.get(token).cloned() else {
            return BillFetch::Unknown;
        };
        if Instant::now() >= found.expires {
            return BillFetch::Expired;
        }
        inner.stats.bill_downloads += 1;
        BillFetch::Ready {
            date: found.date,
            override_body: inner.bill_override.take(),
        }
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

    /// The current fault plan.
    pub fn faults(&self) -> FaultPlan {
        self.lock().faults.clone()
    }

    /// Validates and installs a fault plan while the simulator runs (reseeding the
    /// draws when it has a `seed`). An invalid plan leaves the current one in place.
    pub fn set_faults(&self, plan: FaultPlan) -> Result<(), FaultPlanError> {
        plan.validate()?;
        let mut inner = self.lock();
        if let Some(seed) = plan.seed {
            inner.rng = StdRng::seed_from_u64(seed);
        }
        inner.faults = plan;
        Ok(())
    }

    /// Removes the fault plan and every pending `fail-next` one-shot: answers are
    /// normal again.
    pub fn clear_faults(&self) {
        let mut inner = self.lock();
        inner.faults = FaultPlan::default();
        inner.fail_next.clear();
    }

    /// Makes the next `count` gateway answers about the trade `out_trade_no` (which need
    /// not exist yet) fail with `kind`, ahead of the plan; replaces an earlier one-shot
    /// for the same trade, and `count` 0 cancels it. A `wrong_amount` one-shot waits for
    /// a query of an existing trade (it cannot apply to anything else).
    pub fn fail_next(
        &self,
        out_trade_no: &str,
        kind: FaultKind,
        count: u32,
    ) -> Result<FailNext, BuyerOpError> {
        if out_trade_no.is_empty() {
            return Err(BuyerOpError::BadRequest("out_trade_no is empty".into()));
        }
        let pending = FailNext {
            out_trade_no: out_trade_no.to_owned(),
            kind,
            remaining: count,
        };
        let mut inner = self.lock();
        if count == 0 {
            inner.fail_next.remove(out_trade_no);
        } else {
            inner
                .fail_next
                .insert(out_trade_no.to_owned(), pending.clone());
        }
        Ok(pending)
    }

    /// The pending one-shot for a trade, if any.
    pub fn pending_fail_next(&self, out_trade_no: &str) -> Option<FailNext> {
        self.lock().fail_next.get(out_trade_no).cloned()
    }

    /// The fault hook, called once for every authenticated gateway request: counts the
    /// request, then decides its latency and fault. A pending [`FailNext`] for the trade
    /// wins over the plan's random draw; a drawn fault that cannot apply
    /// (`wrong_amount` outside a query of an existing trade, `wrong_order` on a bill URL
    /// request) is dropped. Every fault
    /// decided here is counted in [`SimStats::faults_injected`].
    pub fn fault_for(
        &self,
        channel: &str,
        method: SimMethod,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
    ) -> FaultDecision {
        let mut guard = self.lock();
        let inner = &mut *guard;
        match method {
            SimMethod::Query => inner.stats.queries += 1,
            SimMethod::Close => inner.stats.closes += 1,
            SimMethod::Refund => inner.stats.refund_requests += 1,
            SimMethod::Bill => inner.stats.bill_url_requests += 1,
        }
        let existing = inner
            .current(Some(channel), out_trade_no, trade_no)
            .map(|t| t.out_trade_no.clone());
        let gateway = inner
            .gateways
            .iter()
            .find(|g| g.channel() == channel)
            .cloned();
        let applicable = |kind: FaultKind| {
            let shown = gateway.as_ref().is_none_or(|g| g.can_show(kind, method));
            shown
                && match kind {
                    FaultKind::WrongAmount => method == SimMethod::Query && existing.is_some(),
                    // A bill answer names no order.
                    FaultKind::WrongOrder => method != SimMethod::Bill,
                    _ => true,
                }
        };
        let latency = inner.latency(Some(method));

        let mut fault = None;
        if let Some(key) = existing.as_deref().or(out_trade_no)
            && let Some(pending) = inner.fail_next.get_mut(key)
            && applicable(pending.kind)
        {
            fault = Some(pending.kind);
            pending.remaining = pending.remaining.saturating_sub(1);
            if pending.remaining == 0 {
                inner.fail_next.remove(key);
            }
        }
        if fault.is_none() && inner.faults.applies_to(Some(method)) {
            let draw: f64 = inner.rng.random();
            fault = inner.faults.pick(draw).filter(|k| applicable(*k));
        }
        if let Some(kind) = fault {
            *inner
                .stats
                .faults_injected
                .entry(kind.as_str().to_owned())
                .or_default() += 1;
        }
        FaultDecision {
            latency,
            fault,
            hold: inner.faults.timeout_hold(),
        }
    }

    /// The plan's latency for a request refused before it could be served (`method` is
    /// `None` when the request did not name a known one).
    pub(crate) fn latency_for(&self, method: Option<SimMethod>) -> Duration {
        self.lock().latency(method)
    }

    pub(crate) fn count_request(&self) {
        self.lock().stats.gateway_requests += 1;
    }

    pub(crate) fn count_signature_failure(&self) {
        self.lock().stats.signature_failures += 1;
    }

    pub(crate) fn count_rejected(&self) {
        self.lock().stats.rejected_requests += 1;
    }

    /// Gateway side: looks a trade up by `out_trade_no` or `trade_no` for a query
    /// (requests are counted by [`SimState::fault_for`]).
    pub(crate) fn gateway_query(
        &self,
        channel: &str,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
    ) -> Option<SimTradeView> {
        self.lock()
            .current(Some(channel), out_trade_no, trade_no)
            .cloned()
    }

    /// Gateway side: what a close would answer, without closing anything (for faulted
    /// answers that must look real but change nothing). Ignores an armed race. A due
    /// expiry is applied all the same: it happened at `time_expire`, not because of this
    /// request.
    pub(crate) fn preview_close(
        &self,
        channel: &str,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
    ) -> CloseOutcome {
        let mut inner = self.lock();
        let Some(trade) = inner.current(Some(channel), out_trade_no, trade_no) else {
            return CloseOutcome::NotFound;
        };
        match trade.status {
            SimTradeStatus::WaitBuyerPay => {
                let mut closed = trade.clone();
                closed.status = SimTradeStatus::TradeClosed;
                closed.closed_at = Some(Utc::now());
                CloseOutcome::Closed(closed)
            }
            SimTradeStatus::TradeSuccess | SimTradeStatus::TradeClosed => {
                CloseOutcome::StatusError(trade.clone())
            }
        }
    }

    /// Gateway side: closes a waiting trade, honouring an armed `pay_on_close` race
    /// (requests are counted by [`SimState::fault_for`]). A trade that expired unpaid is
    /// closed already: the close is refused as for any closed trade, and an armed race
    /// does not fire (the buyer cannot pay an expired trade).
    pub(crate) fn gateway_close(
        &self,
        channel: &str,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
    ) -> CloseOutcome {
        let mut inner = self.lock();
        let Some(trade) = inner.current(Some(channel), out_trade_no, trade_no) else {
            return CloseOutcome::NotFound;
        };
        match trade.status {
            SimTradeStatus::WaitBuyerPay if trade.pay_on_close => {
                mark_paid(trade);
                let paid = trade.clone();
                inner.announce(&paid);
                CloseOutcome::StatusError(paid)
            }
            SimTradeStatus::WaitBuyerPay => {
                trade.status = SimTradeStatus::TradeClosed;
                trade.closed_at = Some(Utc::now());
                CloseOutcome::Closed(trade.clone())
            }
            SimTradeStatus::TradeSuccess | SimTradeStatus::TradeClosed => {
                CloseOutcome::StatusError(trade.clone())
            }
        }
    }
}

/// Alipay's expiry job, applied lazily: a trade still waiting for payment at its
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

/// The China-time calendar day of an instant.
pub(crate) fn china_date(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&china()).date_naive()
}

/// The instant without its fraction of a second.
fn whole_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(0).unwrap_or(at)
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

fn mark_paid(trade: &mut SimTradeView) {
    trade.status = SimTradeStatus::TradeSuccess;
    trade.paid_at = Some(Utc::now());
    trade.pay_on_close = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_qr_code_cannot_be_scanned_but_a_trade_scanned_in_time_stays_payable() {
        let s = SimState::new();
        let past = Utc::now() - chrono::Duration::seconds(1);
        let future = Utc::now() + chrono::Duration::seconds(60);
        assert!(matches!(
            s.scan_with_terms("LATE", 100, None, Some(past)),
            Err(BuyerOpError::Expired(_))
        ));
        assert!(s.trade("LATE").is_none());
        let t = s
            .scan_with_terms("ON-TIME", 100, None, Some(future))
            .unwrap();
        assert_eq!(t.time_expire, None);
        assert_eq!(t.status, SimTradeStatus::WaitBuyerPay);
        // Re-scanning after the QR code expired returns the existing trade.
        assert_eq!(
            s.scan_with_terms("ON-TIME", 100, None, Some(past)).unwrap(),
            t
        );
    }

    #[test]
    fn scan_is_idempotent_and_checks_amount() {
        let s = SimState::new();
        let a = s.scan("A", 100).unwrap();
        assert_eq!(a.status, SimTradeStatus::WaitBuyerPay);
        assert_eq!(a.trade_no.len(), 28);
        assert!(a.trade_no.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(s.scan("A", 100).unwrap(), a);
        assert!(matches!(s.scan("A", 200), Err(BuyerOpError::Conflict(_))));
        assert!(matches!(s.scan("B", 0), Err(BuyerOpError::BadRequest(_))));
        assert_ne!(s.scan("C", 1).unwrap().trade_no, a.trade_no);
    }

    #[test]
    fn pay_rules() {
        let s = SimState::new();
        assert_eq!(s.pay("X", None), Err(BuyerOpError::NotFound("X".into())));
        let paid = s.pay("X", Some(500)).unwrap();
        assert_eq!(paid.status, SimTradeStatus::TradeSuccess);
        assert!(paid.paid_at.is_some());
        assert!(matches!(s.pay("X", None), Err(BuyerOpError::Conflict(_))));
    }

    #[test]
    fn close_rules_and_race() {
        let s = SimState::new();
        assert_eq!(
            s.gateway_close("", Some("none"), None),
            CloseOutcome::NotFound
        );
        s.scan("W", 1).unwrap();
        assert!(matches!(
            s.gateway_close("", Some("W"), None),
            CloseOutcome::Closed(_)
        ));
        assert!(matches!(
            s.gateway_close("", Some("W"), None),
            CloseOutcome::StatusError(_)
        ));
        assert!(matches!(s.pay("W", None), Err(BuyerOpError::Conflict(_))));

        s.scan("R", 2).unwrap();
        s.arm_pay_on_close("R", None).unwrap();
        match s.gateway_close("", Some("R"), None) {
            CloseOutcome::StatusError(t) => {
                assert_eq!(t.status, SimTradeStatus::TradeSuccess);
                assert!(!t.pay_on_close);
            }
            other => panic!("{other:?}"),
        }
        let by_trade_no = s.trade("R").unwrap().trade_no;
        assert!(s.gateway_query("", None, Some(&by_trade_no)).is_some());
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("R"), None),
            FaultDecision::PROCEED
        );
        assert_eq!(
            s.fault_for("", SimMethod::Close, Some("R"), None),
            FaultDecision::PROCEED
        );
        let stats = s.stats();
        assert_eq!((stats.closes, stats.queries), (1, 1));
        assert!(stats.faults_injected.is_empty());
        assert_eq!(s.trades().len(), 2);
    }

    #[test]
    fn refunds_in_parts_then_in_full_close_the_trade() {
        let s = SimState::new();
        assert!(matches!(
            s.refund("none", 1),
            Err(BuyerOpError::NotFound(_))
        ));
        s.scan("W", 1000).unwrap();
        assert!(matches!(s.refund("W", 1), Err(BuyerOpError::Conflict(_))));
        let paid = s.pay("W", None).unwrap();
        assert!(matches!(s.refund("W", 0), Err(BuyerOpError::BadRequest(_))));
        assert!(matches!(
            s.refund("W", 1001),
            Err(BuyerOpError::Conflict(_))
        ));

        let part = s.refund("W", 300).unwrap();
        assert_eq!(part.status, SimTradeStatus::TradeSuccess);
        assert_eq!(part.refundable_minor(), 700);
        assert_eq!(part.refunds[0].refund_no, format!("RF{}1", paid.trade_no));
        assert!(matches!(s.refund("W", 701), Err(BuyerOpError::Conflict(_))));

        let full = s.refund("W", 700).unwrap();
        assert_eq!(full.status, SimTradeStatus::TradeClosed);
        assert_eq!(full.closed_at, Some(full.refunds[1].refunded_at));
        assert_eq!(full.refunds[1].refund_no, format!("RF{}2", paid.trade_no));
        assert_eq!(full.refundable_minor(), 0);
        assert!(matches!(s.refund("W", 1), Err(BuyerOpError::Conflict(_))));
        // Fully refunded reads as closed, and cannot be closed again.
        assert_eq!(
            s.gateway_query("", Some("W"), None).unwrap().status,
            SimTradeStatus::TradeClosed
        );
        assert!(matches!(
            s.gateway_close("", Some("W"), None),
            CloseOutcome::StatusError(_)
        ));
    }

    #[test]
    fn a_gateway_refund_is_idempotent_by_out_request_no() {
        let s = SimState::new();
        assert_eq!(
            s.gateway_refund("", Some("G"), None, "RF-1", 500, true),
            RefundOutcome::NotFound
        );
        s.scan("G", 500).unwrap();
        assert!(matches!(
            s.gateway_refund("", Some("G"), None, "RF-1", 500, true),
            RefundOutcome::StatusError(_)
        ));
        s.pay("G", None).unwrap();
        // A preview changes nothing.
        assert!(matches!(
            s.gateway_refund("", Some("G"), None, "RF-1", 500, false),
            RefundOutcome::Refunded {
                fund_change: true,
                ..
            }
        ));
        assert!(s.trade("G").unwrap().refunds.is_empty());
        assert!(matches!(
            s.gateway_refund("", Some("G"), None, "RF-1", 501, true),
            RefundOutcome::AmountError(_)
        ));
        let RefundOutcome::Refunded { trade, fund_change } =
            s.gateway_refund("", Some("G"), None, "RF-1", 500, true)
        else {
            panic!("refunded")
        };
        assert!(fund_change);
        assert_eq!(trade.status, SimTradeStatus::TradeClosed);
        assert_eq!(trade.refunds[0].out_request_no.as_deref(), Some("RF-1"));
        // The same request again: the same refund, no money moves.
        for _ in 0..3 {
            assert!(matches!(
                s.gateway_refund("", Some("G"), None, "RF-1", 500, true),
                RefundOutcome::Refunded {
                    fund_change: false,
                    ..
                }
            ));
        }
        assert!(matches!(
            s.gateway_refund("", Some("G"), None, "RF-1", 400, true),
            RefundOutcome::AmountError(_)
        ));
        // Another request on a fully refunded trade.
        assert!(matches!(
            s.gateway_refund("", Some("G"), None, "RF-2", 1, true),
            RefundOutcome::StatusError(_)
        ));
        assert_eq!(s.trade("G").unwrap().refunds.len(), 1);
    }

    #[test]
    fn the_trade_store_is_bounded() {
        let s = SimState::new();
        s.limit_trades(2);
        s.scan("A", 1).unwrap();
        s.scan("B", 1).unwrap();
        assert!(matches!(s.scan("C", 1), Err(BuyerOpError::Full(2))));
        // Existing trades still work.
        assert_eq!(s.scan("A", 1).unwrap().out_trade_no, "A");
        assert_eq!(s.trades().len(), 2);
    }

    #[test]
    fn bill_rows_list_the_days_payments_and_refunds() {
        let s = SimState::new();
        s.pay("P1", Some(1000)).unwrap();
        s.pay("P2", Some(250)).unwrap();
        s.scan("UNPAID", 5).unwrap();
        s.refund("P1", 400).unwrap();
        let today = china_date(Utc::now());
        let rows = s.bill_rows("", today);
        // Around midnight China time the payments and the refund may fall on two days.
        let rows: Vec<BillRow> = if rows.len() == 3 {
            rows
        } else {
            let mut both = s.bill_rows("", today.pred_opt().unwrap());
            both.extend(rows);
            both
        };
        assert_eq!(rows.len(), 3, "{rows:?}");
        let p1 = s.trade("P1").unwrap();
        let payment = rows
            .iter()
            .find(|r| r.out_trade_no == "P1" && r.kind == BillRowKind::Payment)
            .unwrap();
        assert_eq!((payment.amount_minor, payment.received_minor), (1000, 1000));
        assert_eq!(payment.trade_no, p1.trade_no);
        assert_eq!(payment.refund_no, None);
        assert_eq!(
            payment.finished_at,
            Some(whole_seconds(p1.paid_at.unwrap()))
        );
        let refund = rows.iter().find(|r| r.kind == BillRowKind::Refund).unwrap();
        assert_eq!((refund.amount_minor, refund.received_minor), (-400, -400));
        assert_eq!(refund.refund_no.as_deref(), Some(&*p1.refunds[0].refund_no));
        assert_eq!(refund.created_at, Some(whole_seconds(p1.created_at)));
        assert!(!rows.iter().any(|r| r.out_trade_no == "UNPAID"));
        assert!(
            rows.windows(2)
                .all(|w| w[0].finished_at <= w[1].finished_at)
        );
        assert!(s.bill_rows("", today.succ_opt().unwrap()).is_empty());
    }

    #[test]
    fn bill_tokens_expire_and_overrides_are_one_shot() {
        let s = SimState::new();
        let date = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        assert_eq!(s.fetch_bill("nope"), BillFetch::Unknown);
        let token = s.issue_bill_token(date);
        assert_eq!(token.len(), 32);
        assert_eq!(
            s.fetch_bill(&token),
            BillFetch::Ready {
                date,
                override_body: None
            }
        );
        s.set_bill_override(Some(b"junk".to_vec()));
        assert_eq!(
            s.fetch_bill(&token),
            BillFetch::Ready {
                date,
                override_body: Some(b"junk".to_vec())
            }
        );
        assert_eq!(
            s.fetch_bill(&token),
            BillFetch::Ready {
                date,
                override_body: None
            }
        );
        s.set_bill_override(Some(b"junk".to_vec()));
        s.set_bill_override(None);
        assert!(matches!(
            s.fetch_bill(&token),
            BillFetch::Ready {
                override_body: None,
                ..
            }
        ));
        s.set_bill_url_ttl(Duration::ZERO);
        let expired = s.issue_bill_token(date);
        assert_eq!(s.fetch_bill(&expired), BillFetch::Expired);
        assert_eq!(s.stats().bill_downloads, 4);
    }

    #[test]
    fn faults_are_drawn_and_counted() {
        let s = SimState::new();
        s.scan("A", 100).unwrap();
        let mut plan = FaultPlan::only(FaultKind::Busy20000, 1.0);
        plan.latency_ms = 7;
        plan.timeout_ms = Some(1234);
        s.set_faults(plan).unwrap();
        let d = s.fault_for("", SimMethod::Query, Some("A"), None);
        assert_eq!(d.fault, Some(FaultKind::Busy20000));
        assert_eq!(d.latency, Duration::from_millis(7));
        assert_eq!(d.hold, Duration::from_millis(1234));

        // An invalid plan leaves the current one in place.
        assert!(s.set_faults(FaultPlan::only(FaultKind::Html, 2.0)).is_err());
        assert_eq!(s.faults().busy_20000, 1.0);

        // wrong_amount applies only to queries of existing trades.
        s.set_faults(FaultPlan::only(FaultKind::WrongAmount, 1.0))
            .unwrap();
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("A"), None).fault,
            Some(FaultKind::WrongAmount)
        );
        assert_eq!(
            s.fault_for("", SimMethod::Close, Some("A"), None).fault,
            None
        );
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("Z"), None).fault,
            None
        );

        // The methods filter.
        let mut only_close = FaultPlan::only(FaultKind::Html, 1.0);
        only_close.methods = Some(vec!["close".into()]);
        only_close.latency_ms = 3;
        s.set_faults(only_close).unwrap();
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("A"), None),
            FaultDecision::PROCEED
        );
        assert_eq!(
            s.fault_for("", SimMethod::Close, Some("A"), None).fault,
            Some(FaultKind::Html)
        );

        s.clear_faults();
        assert_eq!(s.faults(), FaultPlan::default());
        let stats = s.stats();
        assert_eq!((stats.queries, stats.closes), (4, 2));
        let counted: Vec<(&str, u64)> = stats
            .faults_injected
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            counted,
            [("busy_20000", 1), ("html", 1), ("wrong_amount", 1)]
        );
    }

    #[test]
    fn seeded_draws_repeat() {
        let s = SimState::new();
        let plan = FaultPlan {
            http_502: 0.3,
            empty_body: 0.3,
            latency_jitter_ms: Some(50),
            seed: Some(42),
            ..FaultPlan::default()
        };
        let run = |s: &SimState| -> Vec<FaultDecision> {
            (0..200)
                .map(|_| s.fault_for("", SimMethod::Query, Some("X"), None))
                .collect()
        };
        s.set_faults(plan.clone()).unwrap();
        let first = run(&s);
        s.set_faults(plan).unwrap();
        assert_eq!(run(&s), first);
        let faulted = first.iter().filter(|d| d.fault.is_some()).count();
        assert!((80..=160).contains(&faulted), "{faulted} of 200 at 0.6");
        assert!(first.iter().any(|d| d.fault.is_none()));
        assert!(first.iter().all(|d| d.latency <= Duration::from_millis(50)));
        assert!(first.iter().any(|d| d.latency > Duration::ZERO));
    }

    #[test]
    fn fail_next_is_exact_and_wins_over_the_plan() {
        let s = SimState::new();
        let tn = s.scan("A", 1).unwrap().trade_no;
        s.set_faults(FaultPlan::only(FaultKind::Html, 1.0)).unwrap();
        s.fail_next("A", FaultKind::SystemError, 2).unwrap();
        assert_eq!(s.pending_fail_next("A").map(|p| p.remaining), Some(2));
        // Found by trade_no as well.
        assert_eq!(
            s.fault_for("", SimMethod::Query, None, Some(&tn)).fault,
            Some(FaultKind::SystemError)
        );
        assert_eq!(
            s.fault_for("", SimMethod::Close, Some("A"), None).fault,
            Some(FaultKind::SystemError)
        );
        assert_eq!(s.pending_fail_next("A"), None);
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("A"), None).fault,
            Some(FaultKind::Html)
        );
        s.clear_faults();

        // A trade that does not exist yet; count 0 cancels.
        s.fail_next("NEW", FaultKind::Timeout, 1).unwrap();
        s.fail_next("B", FaultKind::Timeout, 5).unwrap();
        s.fail_next("B", FaultKind::Timeout, 0).unwrap();
        assert_eq!(s.pending_fail_next("B"), None);
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("B"), None).fault,
            None
        );
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("NEW"), None).fault,
            Some(FaultKind::Timeout)
        );
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("NEW"), None).fault,
            None
        );

        // wrong_amount waits for a query of an existing trade.
        s.fail_next("A", FaultKind::WrongAmount, 1).unwrap();
        assert_eq!(
            s.fault_for("", SimMethod::Close, Some("A"), None).fault,
            None
        );
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("A"), None).fault,
            Some(FaultKind::WrongAmount)
        );
        assert!(s.fail_next("", FaultKind::Html, 1).is_err());
        // clear_faults drops pending one-shots too.
        s.fail_next("A", FaultKind::Html, 3).unwrap();
        s.clear_faults();
        assert_eq!(
            s.fault_for("", SimMethod::Query, Some("A"), None).fault,
            None
        );
        assert_eq!(s.stats().faults_injected["system_error"], 2);
    }

    /// Moves a stored trade's `time_expire` (into the past, to let it expire) without
    /// applying anything.
    fn set_expiry(s: &SimState, no: &str, at: DateTime<Utc>) {
        s.lock().trades.get_mut(no).unwrap().time_expire = Some(at);
    }

    fn ago(secs: i64) -> DateTime<Utc> {
        Utc::now() - chrono::Duration::seconds(secs)
    }

    fn in_an_hour() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::hours(1)
    }

    #[test]
    fn scan_after_expiry_is_refused_and_creates_nothing() {
        let s = SimState::new();
        let past = ago(1);
        match s.scan_with_expiry("X", 100, Some(past)) {
            Err(BuyerOpError::Expired(msg)) => assert!(msg.contains("\"X\""), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.trade("X"), None);
        assert_eq!(s.gateway_query("", Some("X"), None), None);
        assert_eq!(s.gateway_close("", Some("X"), None), CloseOutcome::NotFound);
        assert!(s.trades().is_empty());

        // Before the expiry the trade is created and keeps it; a re-scan does not move it.
        let expire = in_an_hour();
        let w = s.scan_with_expiry("W", 100, Some(expire)).unwrap();
        assert_eq!(w.status, SimTradeStatus::WaitBuyerPay);
        assert_eq!(w.time_expire, Some(expire));
        assert_eq!(s.scan_with_expiry("W", 100, Some(past)).unwrap(), w);
        assert_eq!(s.scan("W", 100).unwrap(), w);
        assert!(matches!(
            s.scan_with_expiry("W", 999, Some(expire)),
            Err(BuyerOpError::Conflict(_))
        ));
        // No expiry given, none stored.
        assert_eq!(s.scan("N", 1).unwrap().time_expire, None);
    }

    #[test]
    fn a_waiting_trade_closes_at_its_expiry() {
        let s = SimState::new();
        let w = s.scan_with_expiry("W", 100, Some(in_an_hour())).unwrap();
        let expired_at = ago(5);
        set_expiry(&s, "W", expired_at);

        // Every read sees it closed, as of the expiry moment.
        let by_trade_no = s.gateway_query("", None, Some(&w.trade_no)).unwrap();
        assert_eq!(by_trade_no.status, SimTradeStatus::TradeClosed);
        assert_eq!(by_trade_no.closed_at, Some(expired_at));
        assert_eq!(by_trade_no.paid_at, None);
        assert_eq!(s.trade("W"), Some(by_trade_no.clone()));
        assert_eq!(s.trades(), vec![by_trade_no.clone()]);
        // Re-scanning returns the closed trade.
        assert_eq!(s.scan("W", 100).unwrap(), by_trade_no);

        // Paying and arming the race are refused as for a closed trade.
        match s.pay("W", Some(100)) {
            Err(BuyerOpError::Conflict(msg)) => assert!(msg.contains("TRADE_CLOSED"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.arm_pay_on_close("W", None),
            Err(BuyerOpError::Conflict(_))
        ));
        // A close answers as for a closed trade, previewed or not.
        assert_eq!(
            s.preview_close("", Some("W"), None),
            CloseOutcome::StatusError(by_trade_no.clone())
        );
        assert_eq!(
            s.gateway_close("", Some("W"), None),
            CloseOutcome::StatusError(by_trade_no.clone())
        );
        assert_eq!(s.trade("W"), Some(by_trade_no));
    }

    #[test]
    fn a_previewed_close_sees_a_due_expiry() {
        let s = SimState::new();
        s.scan_with_expiry("P", 100, Some(in_an_hour())).unwrap();
        let expired_at = ago(1);
        set_expiry(&s, "P", expired_at);
        match s.preview_close("", Some("P"), None) {
            CloseOutcome::StatusError(t) => {
                assert_eq!(t.status, SimTradeStatus::TradeClosed);
                assert_eq!(t.closed_at, Some(expired_at));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_armed_race_does_not_fire_after_expiry() {
        let s = SimState::new();
        s.scan_with_expiry("R", 100, Some(in_an_hour())).unwrap();
        assert!(s.arm_pay_on_close("R", None).unwrap().pay_on_close);
        let expired_at = ago(1);
        set_expiry(&s, "R", expired_at);
        match s.gateway_close("", Some("R"), None) {
            CloseOutcome::StatusError(t) => {
                assert_eq!(t.status, SimTradeStatus::TradeClosed);
                assert_eq!(t.closed_at, Some(expired_at));
                assert_eq!(t.paid_at, None);
                assert!(!t.pay_on_close);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_does_not_touch_paid_or_closed_trades() {
        let s = SimState::new();
        s.scan_with_expiry("PAID", 100, Some(in_an_hour())).unwrap();
        let paid = s.pay("PAID", None).unwrap();
        s.scan_with_expiry("CLOSED", 100, Some(in_an_hour()))
            .unwrap();
        let CloseOutcome::Closed(closed) = s.gateway_close("", Some("CLOSED"), None) else {
            panic!("not closed");
        };
        set_expiry(&s, "PAID", ago(1));
        set_expiry(&s, "CLOSED", ago(1));
        let after = s.gateway_query("", Some("PAID"), None).unwrap();
        assert_eq!(after.status, SimTradeStatus::TradeSuccess);
        assert_eq!((after.paid_at, after.closed_at), (paid.paid_at, None));
        // A trade closed before its expiry keeps its own closing time.
        let after = s.trade("CLOSED").unwrap();
        assert_eq!(after.status, SimTradeStatus::TradeClosed);
        assert_eq!(after.closed_at, closed.closed_at);
    }

    #[test]
    fn a_view_without_time_expire_still_parses() {
        let old = r#"{"out_trade_no":"A","trade_no":"1","amount_minor":5,
            "status":"WAIT_BUYER_PAY","created_at":"2026-11-22T10:00:00Z",
            "paid_at":null,"closed_at":null,"pay_on_close":false}"#;
        let view: SimTradeView = serde_json::from_str(old).unwrap();
        assert_eq!(view.time_expire, None);
        let mut with = view.clone();
        with.time_expire = Some("2026-11-22T10:15:00Z".parse().unwrap());
        let json = serde_json::to_string(&with).unwrap();
        assert!(
            json.contains(r#""time_expire":"2026-11-22T10:15:00Z""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<SimTradeView>(&json).unwrap(), with);
    }

    #[test]
    fn preview_close_changes_nothing() {
        let s = SimState::new();
        s.scan("W", 1).unwrap();
        s.arm_pay_on_close("W", None).unwrap();
        match s.preview_close("", Some("W"), None) {
            CloseOutcome::Closed(t) => assert_eq!(t.status, SimTradeStatus::TradeClosed),
            other => panic!("{other:?}"),
        }
        let stored = s.trade("W").unwrap();
        assert_eq!(stored.status, SimTradeStatus::WaitBuyerPay);
        assert!(stored.pay_on_close);
        assert_eq!(
            s.preview_close("", Some("none"), None),
            CloseOutcome::NotFound
        );
    }
}
