//! What a gateway request does to the trades: the fault hook every authenticated request
//! passes (counting it, then the latency and fault it gets), the request counters, and
//! the gateway-side query, close and refund. Each gateway's wire protocol calls these in
//! its own words.

use std::time::Duration;

use chrono::Utc;
use rand::Rng as _;
use rand::SeedableRng as _;
use rand::rngs::StdRng;

use super::{
    BuyerOpError, FailNext, FaultDecision, FaultKind, FaultPlan, FaultPlanError, RefundNumberScope,
    RefundRefusal, SimState, SimTradeStatus, SimTradeView, add_refund, mark_paid,
};
use crate::faults::SimMethod;

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
    /// The `out_request_no` was used on another trade, at a gateway that holds refund
    /// numbers unique per merchant ([`RefundNumberScope::Merchant`]).
    NumberTaken(SimTradeView),
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

impl SimState {
    /// Gateway side: a refund request (requests are counted by
    /// [`SimState::fault_for`]). The same `out_request_no` answers the refund made under
    /// it, moving no money, when the amount is the same, and is refused with another
    /// amount; at a gateway whose refund numbers are unique per merchant
    /// ([`TradeRules::refund_numbers`](super::TradeRules::refund_numbers)) a number used
    /// on another trade is refused. With `apply` false nothing changes (a faulted answer's
    /// preview). A full refund closes the trade and is announced (the gateway's
    /// notification of a closed trade).
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
        let scope = inner
            .gateways
            .iter()
            .find(|g| g.channel() == channel)
            .map_or(RefundNumberScope::Trade, |g| g.refund_numbers());
        let key = (channel.to_owned(), out_request_no.to_owned());
        let used_on = inner.refund_numbers.get(&key).cloned();
        let Some(trade) = inner.current(Some(channel), out_trade_no, trade_no) else {
            return RefundOutcome::NotFound;
        };
        if scope == RefundNumberScope::Merchant
            && used_on.is_some_and(|other| other != trade.out_trade_no)
        {
            return RefundOutcome::NumberTaken(trade.clone());
        }
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
                    inner.refund_numbers.insert(key, after.out_trade_no.clone());
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
        self.fail_next_on(out_trade_no, None, kind, count)
    }

    /// [`SimState::fail_next`] for the requests of `method` only (`None`: any): the
    /// others about the trade are answered as the plan says.
    pub fn fail_next_on(
        &self,
        out_trade_no: &str,
        method: Option<SimMethod>,
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
            method,
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
    /// (and this method, if it names one) wins over the plan's random draw; a drawn fault that cannot apply
    /// (`wrong_amount` outside a query of an existing trade, `wrong_order` on a bill URL
    /// request) is dropped. Every fault
    /// decided here is counted in [`SimStats::faults_injected`](super::SimStats::faults_injected).
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
        super::per_second::count(
            &mut inner.stats.requests_per_second,
            channel,
            Utc::now().timestamp(),
        );
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
            && pending.method.is_none_or(|m| m == method)
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

    /// Gateway side: a close (requests are counted by [`SimState::fault_for`]). Applied,
    /// it closes a waiting trade, honouring an armed `pay_on_close` race; with `apply`
    /// false it shows what a close would answer and changes nothing (for faulted answers
    /// that must look real), ignoring an armed race. A trade that expired unpaid is
    /// closed already (its expiry is applied either way: it happened at `time_expire`,
    /// not because of this request): the close is refused as for any closed trade, and an
    /// armed race does not fire (the buyer cannot pay an expired trade).
    pub(crate) fn gateway_close(
        &self,
        channel: &str,
        out_trade_no: Option<&str>,
        trade_no: Option<&str>,
        apply: bool,
    ) -> CloseOutcome {
        let mut inner = self.lock();
        let Some(trade) = inner.current(Some(channel), out_trade_no, trade_no) else {
            return CloseOutcome::NotFound;
        };
        match trade.status {
            SimTradeStatus::WaitBuyerPay if apply && trade.pay_on_close => {
                mark_paid(trade);
                let paid = trade.clone();
                inner.announce(&paid);
                CloseOutcome::StatusError(paid)
            }
            SimTradeStatus::WaitBuyerPay => {
                let mut closed = trade.clone();
                closed.status = SimTradeStatus::TradeClosed;
                closed.closed_at = Some(Utc::now());
                if apply {
                    *trade = closed.clone();
                }
                CloseOutcome::Closed(closed)
            }
            SimTradeStatus::TradeSuccess | SimTradeStatus::TradeClosed => {
                CloseOutcome::StatusError(trade.clone())
            }
        }
    }
}
