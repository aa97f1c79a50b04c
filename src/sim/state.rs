//! The simulator's memory: trades by `out_trade_no`, request counters, and the hook where
//! fault injection will plug in. Shared by cheap-clone handles ([`SimState`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gateway::alipay::format_china_time;

/// A simulated trade's status, spelled as Alipay spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimTradeStatus {
    /// Scanned, waiting for the buyer to pay.
    WaitBuyerPay,
    /// Paid.
    TradeSuccess,
    /// Closed unpaid.
    TradeClosed,
}

impl SimTradeStatus {
    /// Alipay's `trade_status` string.
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
    /// The merchant's order number.
    pub out_trade_no: String,
    /// The simulated Alipay trade number (28 digits).
    pub trade_no: String,
    /// Amount in minor units (fen).
    pub amount_minor: i64,
    /// Current status.
    pub status: SimTradeStatus,
    /// When the buyer scanned (the trade came into existence).
    pub created_at: DateTime<Utc>,
    /// When the buyer paid.
    pub paid_at: Option<DateTime<Utc>>,
    /// When the trade was closed.
    pub closed_at: Option<DateTime<Utc>>,
    /// Armed race: the next close request finds the buyer paying first.
    pub pay_on_close: bool,
}

/// Request counters, readable at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Every `POST /gateway.do`.
    pub gateway_requests: u64,
    /// `alipay.trade.query` requests that passed authentication.
    pub queries: u64,
    /// `alipay.trade.close` requests that passed authentication.
    pub closes: u64,
    /// Requests refused because their signature did not verify.
    pub signature_failures: u64,
    /// Requests refused for any other reason (missing or bad parameters, wrong app id...).
    pub rejected_requests: u64,
}

/// What the fault layer decides for one gateway request.
///
/// This is the hook for run-time fault injection (latency, error rates per kind, dropped
/// connections): today only [`FaultDecision::Proceed`] exists; new variants go here and
/// are acted on where the server calls [`SimState::fault_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDecision {
    /// Answer normally.
    Proceed,
}

/// Fault-injection settings (none yet); held in the shared state so that they can be
/// changed while the simulator runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {}

/// Why a buyer action was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BuyerOpError {
    /// No trade with that number (and no amount to create one).
    #[error("trade {0:?} does not exist")]
    NotFound(String),
    /// The trade is not in a state that allows the action.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed (for example a non-positive amount).
    #[error("{0}")]
    BadRequest(String),
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

#[derive(Debug, Default)]
struct Inner {
    trades: HashMap<String, SimTradeView>,
    stats: SimStats,
    faults: FaultPlan,
    next_seq: u64,
}

/// A cheap-clone handle on the simulator's trades, counters and fault plan.
#[derive(Debug, Clone, Default)]
pub struct SimState {
    inner: Arc<Mutex<Inner>>,
}

impl SimState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a trade half-written (every update
        // is a single assignment), so a poisoned lock is safe to keep using.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The buyer scans the QR code: the trade comes into existence, waiting for payment.
    /// Idempotent for the same amount; a different amount is a conflict.
    pub fn scan(
        &self,
        out_trade_no: &str,
        amount_minor: i64,
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
        if let Some(existing) = inner.trades.get(out_trade_no) {
            if existing.amount_minor != amount_minor {
                return Err(BuyerOpError::Conflict(format!(
                    "trade {out_trade_no:?} exists with amount_minor {}",
                    existing.amount_minor
                )));
            }
            return Ok(existing.clone());
        }
        inner.next_seq += 1;
        let now = Utc::now();
        let trade = SimTradeView {
            out_trade_no: out_trade_no.to_owned(),
            trade_no: new_trade_no(now, inner.next_seq),
            amount_minor,
            status: SimTradeStatus::WaitBuyerPay,
            created_at: now,
            paid_at: None,
            closed_at: None,
            pay_on_close: false,
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
            .trades
            .get_mut(out_trade_no)
            .ok_or_else(|| BuyerOpError::NotFound(out_trade_no.to_owned()))?;
        f(trade)?;
        Ok(trade.clone())
    }

    /// The buyer pays a waiting trade. With `scan_amount`, a trade never scanned is
    /// scanned first.
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

    /// One trade, if it exists.
    pub fn trade(&self, out_trade_no: &str) -> Option<SimTradeView> {
        self.lock().trades.get(out_trade_no).cloned()
    }

    /// All trades, ordered by creation time.
    pub fn trades(&self) -> Vec<SimTradeView> {
        let mut all: Vec<SimTradeView> = self.lock().trades.values().cloned().collect();
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

    /// Replaces the fault plan while the simulator runs.
    pub fn set_faults(&self, plan: FaultPlan) {
        self.lock().faults = plan;
    }

    /// The fault hook: what to do with a gateway request for `method`. Always
    /// [`FaultDecision::Proceed`] until fault injection is implemented.
    pub fn fault_for(&self, _method: &str) -> FaultDecision {
        let _plan = &self.lock().faults;
        FaultDecision::Proceed
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

    /// Gateway side: looks a trade up by `out_trade_no` or `trade_no` for a query.
    pub(crate) fn gateway_query(
        &self,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
    ) -> Option<SimTradeView> {
        let mut inner = self.lock();
        inner.stats.queries += 1;
        find(&inner, out_trade_no, trade_no).cloned()
    }

    /// Gateway side: closes a waiting trade, honouring an armed `pay_on_close` race.
    pub(crate) fn gateway_close(
        &self,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
    ) -> CloseOutcome {
        let mut inner = self.lock();
        inner.stats.closes += 1;
        let Some(key) = find(&inner, out_trade_no, trade_no).map(|t| t.out_trade_no.clone()) else {
            return CloseOutcome::NotFound;
        };
        let Some(trade) = inner.trades.get_mut(&key) else {
            return CloseOutcome::NotFound;
        };
        match trade.status {
            SimTradeStatus::WaitBuyerPay if trade.pay_on_close => {
                mark_paid(trade);
                CloseOutcome::StatusError(trade.clone())
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

fn find<'a>(
    inner: &'a Inner,
    out_trade_no: Option<&str>,
    trade_no: Option<&str>,
) -> Option<&'a SimTradeView> {
    match (out_trade_no, trade_no) {
        (Some(no), _) => inner.trades.get(no),
        (None, Some(tn)) => inner.trades.values().find(|t| t.trade_no == tn),
        (None, None) => None,
    }
}

fn mark_paid(trade: &mut SimTradeView) {
    trade.status = SimTradeStatus::TradeSuccess;
    trade.paid_at = Some(Utc::now());
    trade.pay_on_close = false;
}

/// An Alipay-like 28-digit trade number: China date, `22001`, 4 random digits, and an
/// 11-digit sequence.
fn new_trade_no(now: DateTime<Utc>, seq: u64) -> String {
    let date: String = format_china_time(now)
        .chars()
        .filter(char::is_ascii_digit)
        .take(8)
        .collect();
    let salt: u16 = rand::rng().random_range(0..10_000);
    format!("{date}22001{salt:04}{:011}", seq % 100_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.gateway_close(Some("none"), None), CloseOutcome::NotFound);
        s.scan("W", 1).unwrap();
        assert!(matches!(
            s.gateway_close(Some("W"), None),
            CloseOutcome::Closed(_)
        ));
        assert!(matches!(
            s.gateway_close(Some("W"), None),
            CloseOutcome::StatusError(_)
        ));
        assert!(matches!(s.pay("W", None), Err(BuyerOpError::Conflict(_))));

        s.scan("R", 2).unwrap();
        s.arm_pay_on_close("R", None).unwrap();
        match s.gateway_close(Some("R"), None) {
            CloseOutcome::StatusError(t) => {
                assert_eq!(t.status, SimTradeStatus::TradeSuccess);
                assert!(!t.pay_on_close);
            }
            other => panic!("{other:?}"),
        }
        let by_trade_no = s.trade("R").unwrap().trade_no;
        assert!(s.gateway_query(None, Some(&by_trade_no)).is_some());
        let stats = s.stats();
        assert_eq!((stats.closes, stats.queries), (4, 1));
        assert_eq!(s.fault_for("alipay.trade.query"), FaultDecision::Proceed);
        assert_eq!(s.trades().len(), 2);
    }
}
