//! The decision core: from what we know about an order and what the gateway said, to
//! what to do. Pure functions, no I/O; the worker and the reconcile command both drive
//! it (through [`super::Decider`]), and every row of the decision table and every call
//! sequence of the protocol is a unit test here.

use std::time::Duration;

use chrono::{DateTime, Utc};

use order_closer_core::order::{Order, OrderStatus};
use order_closer_gateway::{CloseAnswer, FaultClass, GatewayError, TradeState};

/// What to do before asking the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precheck {
    /// No such order: acknowledge with a warning.
    Missing,
    /// Already PAID or CLOSED (redelivery, or another actor got there first): acknowledge.
    Settled(OrderStatus),
    /// Not due yet (deadline extended, or an early hop): wait this long more.
    NotDue(Duration),
    /// Due: ask the gateway.
    Due,
}

/// Checks an order (if it exists) against the clock before any gateway call.
/// `open_trades` says whether any of its trades is open; `not_before` is the message's own
/// earliest moment (set on retries). A PAID order with an open trade is due at once (or
/// at its retry's moment): each open trade is a chance to pay twice, closed now rather
/// than at the deadline.
pub fn precheck(
    order: Option<&Order>,
    open_trades: bool,
    not_before: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Precheck {
    let Some(order) = order else {
        return Precheck::Missing;
    };
    let due = match (order.status(), open_trades) {
        (OrderStatus::New, _) => match not_before {
            Some(nb) if nb > order.deadline => nb,
            _ => order.deadline,
        },
        (OrderStatus::Paid, true) => not_before.unwrap_or(now),
        (settled, _) => return Precheck::Settled(settled),
    };
    match (due - now).to_std() {
        Ok(wait) if !wait.is_zero() => Precheck::NotDue(wait),
        _ => Precheck::Due,
    }
}

pub use order_closer_core::order::CloseReason;

/// A paid amount that differs from the order's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmountMismatch {
    /// What the order says, minor units.
    pub expected: i64,
    /// What the gateway says was paid, minor units.
    pub paid: i64,
}

/// What to do once the gateway answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Mark the order PAID (the payment callback was missed).
    MarkPaid {
        /// The gateway's trade number.
        trade_no: String,
        /// When it was paid, if the gateway says.
        paid_at: Option<DateTime<Utc>>,
        /// Set when the paid amount is not the order's: recorded as an anomaly.
        mismatch: Option<AmountMismatch>,
    },
    /// Close the order locally: nothing at the gateway can be paid any more.
    Close(CloseReason),
    /// Close the order locally, with a `refunded_before_deadline` anomaly: the trade was
    /// paid and the payment given back at the gateway. No goods for money that went back,
    /// and nothing can be paid on the trade any more; an operator checks whether any of
    /// it was kept (WeChat Pay's `REFUND` does not say how much was given back).
    CloseRefunded {
        /// The gateway's trade number.
        trade_no: String,
        /// What was paid on it, in minor units.
        paid_minor: i64,
    },
    /// Close the waiting trade at the gateway first (then see [`after_close`]).
    CloseAtGateway,
    /// The close was refused (usually: paid just now): query again.
    QueryAgain,
    /// Try again later (transient failure, or the buyer is paying right now).
    Retry {
        /// Short code for the audit row and metrics.
        code: String,
        /// Explanation.
        detail: String,
    },
    /// Give up and park for an operator: retrying will not help.
    Park {
        /// Short code for the audit row and metrics.
        code: String,
        /// Explanation.
        detail: String,
    },
}

/// Where in the flow a query answer arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryStage {
    /// The first query at the deadline.
    First,
    /// The query after the gateway refused to close the trade.
    AfterCloseRefused,
    /// The query after a close the gateway took without saying the trade is closed.
    AfterCloseUnconfirmed,
}

/// The code of "the buyer is paying right now", whether a query says so or the gateway
/// refuses a close with it (WeChat Pay's `USER_PAYING`).
pub const BUYER_PAYING: &str = "buyer_paying";

/// Whether a failed call may be made again at once, in the process (a quick retry,
/// [`super::quick_retry`]), before the message goes back through the delay tiers: an
/// error this table retries (a transient one: a timeout, an HTTP error, busy, an
/// unreadable or badly signed answer), but never the gateway's definite answer that the
/// buyer is paying now, which a few hundred milliseconds do not change. A permanent error
/// parks; an answer (any [`TradeState`], any [`CloseAnswer`]) is acted on. What follows
/// the repeated call's answer is this table's, as for any answer.
pub fn worth_repeating(error: &GatewayError) -> bool {
    matches!(from_error(error), Action::Retry { .. }) && error.code != BUYER_PAYING
}

fn from_error(error: &GatewayError) -> Action {
    let code = error.code.clone();
    let detail = error.message.clone();
    match error.class {
        FaultClass::Retryable => Action::Retry { code, detail },
        FaultClass::Permanent => Action::Park { code, detail },
    }
}

/// The decision table: what to do with a due NEW order given the query answer.
pub fn after_query(
    order: &Order,
    stage: QueryStage,
    answer: Result<&TradeState, &GatewayError>,
) -> Action {
    let state = match answer {
        Ok(state) => state,
        Err(error) => return from_error(error),
    };
    match (state, stage) {
        // At any stage: a refund is terminal, whatever came before it (a close refused
        // because the trade was paid, then refunded; WeChat's 204 on a refunded trade).
        (
            TradeState::Refunded {
                trade_no,
                amount_minor,
                ..
            },
            _,
        ) => Action::CloseRefunded {
            trade_no: trade_no.clone(),
            paid_minor: *amount_minor,
        },
        (
            TradeState::Paid {
                trade_no,
                amount_minor,
                paid_at,
            },
            _,
        ) => Action::MarkPaid {
            trade_no: trade_no.clone(),
            paid_at: *paid_at,
            mismatch: (*amount_minor != order.amount_minor).then_some(AmountMismatch {
                expected: order.amount_minor,
                paid: *amount_minor,
            }),
        },
        (TradeState::NotFound, QueryStage::First) => Action::Close(CloseReason::NoTrade),
        (TradeState::Closed, QueryStage::First | QueryStage::AfterCloseRefused) => {
            Action::Close(CloseReason::ClosedAtGateway)
        }
        (TradeState::WaitingForPayment, QueryStage::First) => Action::CloseAtGateway,
        (TradeState::InProgress, _) => Action::Retry {
            code: BUYER_PAYING.into(),
            detail: "the buyer is paying right now".into(),
        },
        (TradeState::WaitingForPayment, QueryStage::AfterCloseRefused) => Action::Retry {
            code: "close_refused_still_waiting".into(),
            detail: "the gateway refused to close a trade it still reports as waiting".into(),
        },
        (TradeState::NotFound, QueryStage::AfterCloseRefused) => Action::Retry {
            code: "close_refused_not_found".into(),
            detail: "the gateway refused to close a trade it now reports as missing".into(),
        },
        // The close was taken; what the trade is now decides. Closed: closed by us. No
        // trade at all: nothing exists that could be paid. Still waiting: the close did
        // not take, try again later.
        (TradeState::Closed, QueryStage::AfterCloseUnconfirmed) => {
            Action::Close(CloseReason::ClosedByUs)
        }
        (TradeState::NotFound, QueryStage::AfterCloseUnconfirmed) => {
            Action::Close(CloseReason::NoTrade)
        }
        (TradeState::WaitingForPayment, QueryStage::AfterCloseUnconfirmed) => Action::Retry {
            code: "close_unconfirmed_still_waiting".into(),
            detail: "the gateway took the close but still reports the trade as waiting".into(),
        },
    }
}

/// What to do after asking the gateway to close a waiting trade.
pub fn after_close(answer: Result<&CloseAnswer, &GatewayError>) -> Action {
    match answer {
        Ok(CloseAnswer::Closed) => Action::Close(CloseReason::ClosedByUs),
        Ok(CloseAnswer::NotCloseable { .. } | CloseAnswer::Unconfirmed) => Action::QueryAgain,
        Err(error) => from_error(error),
    }
}

/// The gateway call the deadline protocol asks for next, or its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask for the trade's state.
    Query,
    /// Ask the gateway to close the waiting trade.
    Close,
    /// The protocol is over: do this.
    Done(Action),
}

/// The deadline protocol every gateway runs, as pure code: query; if the trade waits for
/// payment, close it at the gateway; if the close is refused, query again; then act on
/// the last answer. The caller makes each call [`Step`] asks for and hands its answer
/// back; a dry run stops after the first query.
#[derive(Debug, Clone)]
pub struct Protocol<'a> {
    order: &'a Order,
    dry_run: bool,
    stage: QueryStage,
}

impl<'a> Protocol<'a> {
    /// The protocol for a due NEW order, and its first step ([`Step::Query`]).
    pub fn start(order: &'a Order, dry_run: bool) -> (Self, Step) {
        let protocol = Self {
            order,
            dry_run,
            stage: QueryStage::First,
        };
        (protocol, Step::Query)
    }

    /// The step after a query answer.
    pub fn after_query(&mut self, answer: Result<&TradeState, &GatewayError>) -> Step {
        let action = after_query(self.order, self.stage, answer);
        if self.dry_run {
            return Step::Done(action);
        }
        match action {
            Action::CloseAtGateway => Step::Close,
            // `after_query` never answers QueryAgain; were it to, ending here (and
            // retrying later) is the safe reading.
            other => Step::Done(other),
        }
    }

    /// The step after a close answer.
    pub fn after_close(&mut self, answer: Result<&CloseAnswer, &GatewayError>) -> Step {
        match after_close(answer) {
            Action::QueryAgain => {
                self.stage = match answer {
                    Ok(CloseAnswer::Unconfirmed) => QueryStage::AfterCloseUnconfirmed,
                    _ => QueryStage::AfterCloseRefused,
                };
                Step::Query
            }
            other => Step::Done(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::decide::fixtures::order;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const NOW: &str = "2026-11-22T10:00:00Z";

    /// The precheck of an order without an open trade.
    fn pre(
        order: Option<&Order>,
        not_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Precheck {
        precheck(order, false, not_before, now)
    }

    #[test]
    fn a_paid_order_with_an_open_trade_is_due_at_once_or_at_its_retry() {
        let now = t(NOW);
        let paid = order("PAID", t("2026-11-22T11:00:00Z"));
        // Before its deadline: its other trades are closed now, not at the deadline.
        assert_eq!(precheck(Some(&paid), true, None, now), Precheck::Due);
        assert_eq!(
            precheck(Some(&paid), true, Some(t("2026-11-22T10:00:30Z")), now),
            Precheck::NotDue(Duration::from_secs(30))
        );
        assert_eq!(
            precheck(Some(&paid), false, None, now),
            Precheck::Settled(OrderStatus::Paid)
        );
        // A NEW order waits for its deadline whatever its trades.
        assert_eq!(
            precheck(
                Some(&order("NEW", t("2026-11-22T10:01:00Z"))),
                true,
                None,
                now
            ),
            Precheck::NotDue(Duration::from_secs(60))
        );
    }

    #[test]
    fn precheck_rows() {
        let now = t(NOW);
        assert_eq!(pre(None, None, now), Precheck::Missing);
        assert_eq!(
            pre(Some(&order("PAID", t("2026-11-22T09:00:00Z"))), None, now),
            Precheck::Settled(OrderStatus::Paid)
        );
        assert_eq!(
            pre(Some(&order("CLOSED", t("2026-11-22T09:00:00Z"))), None, now),
            Precheck::Settled(OrderStatus::Closed)
        );
        // Settled wins over not-due: a paid order with a future deadline is done.
        assert_eq!(
            pre(Some(&order("PAID", t("2026-11-22T11:00:00Z"))), None, now),
            Precheck::Settled(OrderStatus::Paid)
        );
        assert_eq!(
            pre(
                Some(&order("NEW", t("2026-11-22T10:00:07.300Z"))),
                None,
                now
            ),
            Precheck::NotDue(Duration::from_millis(7300))
        );
        assert_eq!(pre(Some(&order("NEW", t(NOW))), None, now), Precheck::Due);
        assert_eq!(
            pre(Some(&order("NEW", t("1970-01-01T00:00:00Z"))), None, now),
            Precheck::Due
        );
        // A retry waits for its own moment even though the deadline has passed.
        assert_eq!(
            pre(
                Some(&order("NEW", t("2026-11-22T09:00:00Z"))),
                Some(t("2026-11-22T10:00:30Z")),
                now
            ),
            Precheck::NotDue(Duration::from_secs(30))
        );
        // An extended deadline beats an older not_before.
        assert_eq!(
            pre(
                Some(&order("NEW", t("2026-11-22T10:01:00Z"))),
                Some(t("2026-11-22T09:00:00Z")),
                now
            ),
            Precheck::NotDue(Duration::from_secs(60))
        );
    }

    fn paid(amount: i64) -> TradeState {
        TradeState::Paid {
            trade_no: "2026112222001".into(),
            amount_minor: amount,
            paid_at: Some(t("2026-11-22T09:59:00Z")),
        }
    }

    #[test]
    fn query_rows_at_the_first_stage() {
        let o = order("NEW", t(NOW));
        let first = QueryStage::First;
        assert_eq!(
            after_query(&o, first, Ok(&paid(1234))),
            Action::MarkPaid {
                trade_no: "2026112222001".into(),
                paid_at: Some(t("2026-11-22T09:59:00Z")),
                mismatch: None
            }
        );
        assert_eq!(
            after_query(&o, first, Ok(&paid(1000))),
            Action::MarkPaid {
                trade_no: "2026112222001".into(),
                paid_at: Some(t("2026-11-22T09:59:00Z")),
                mismatch: Some(AmountMismatch {
                    expected: 1234,
                    paid: 1000
                })
            }
        );
        assert_eq!(
            after_query(&o, first, Ok(&TradeState::NotFound)),
            Action::Close(CloseReason::NoTrade)
        );
        assert_eq!(
            after_query(&o, first, Ok(&TradeState::WaitingForPayment)),
            Action::CloseAtGateway
        );
        assert_eq!(
            after_query(&o, first, Ok(&TradeState::Closed)),
            Action::Close(CloseReason::ClosedAtGateway)
        );
        assert!(matches!(
            after_query(&o, first, Ok(&TradeState::InProgress)),
            Action::Retry { code, .. } if code == "buyer_paying"
        ));
        assert!(matches!(
            after_query(&o, first, Err(&GatewayError::retryable("timeout", "slow"))),
            Action::Retry { code, .. } if code == "timeout"
        ));
        assert!(matches!(
            after_query(&o, first, Err(&GatewayError::permanent("40002", "bad key"))),
            Action::Park { code, .. } if code == "40002"
        ));
    }

    #[test]
    fn only_transient_errors_are_worth_repeating_at_once() {
        for code in [
            "timeout",
            "http_502",
            "20000",
            "ACQ.SYSTEM_ERROR",
            "bad_signature",
        ] {
            assert!(
                worth_repeating(&GatewayError::retryable(code, "x")),
                "{code}"
            );
        }
        // A permanent error parks; the buyer paying now is an answer, not a fault.
        assert!(!worth_repeating(&GatewayError::permanent(
            "40002", "bad key"
        )));
        assert!(!worth_repeating(&GatewayError::permanent("http_502", "x")));
        assert!(!worth_repeating(&GatewayError::retryable(
            BUYER_PAYING,
            "USER_PAYING"
        )));
    }

    #[test]
    fn query_rows_after_a_refused_close() {
        let o = order("NEW", t(NOW));
        let again = QueryStage::AfterCloseRefused;
        assert!(matches!(
            after_query(&o, again, Ok(&paid(1234))),
            Action::MarkPaid { mismatch: None, .. }
        ));
        assert_eq!(
            after_query(&o, again, Ok(&TradeState::Closed)),
            Action::Close(CloseReason::ClosedAtGateway)
        );
        // Never close on an answer that contradicts the refusal: retry instead.
        for state in [
            TradeState::WaitingForPayment,
            TradeState::NotFound,
            TradeState::InProgress,
        ] {
            assert!(
                matches!(after_query(&o, again, Ok(&state)), Action::Retry { .. }),
                "{state:?}"
            );
        }
        assert!(matches!(
            after_query(&o, again, Err(&GatewayError::retryable("20000", "busy"))),
            Action::Retry { .. }
        ));
    }

    #[test]
    fn close_rows() {
        assert_eq!(
            after_close(Ok(&CloseAnswer::Closed)),
            Action::Close(CloseReason::ClosedByUs)
        );
        assert_eq!(
            after_close(Ok(&CloseAnswer::NotCloseable {
                sub_code: "ACQ.TRADE_STATUS_ERROR".into()
            })),
            Action::QueryAgain
        );
        assert!(matches!(
            after_close(Err(&GatewayError::retryable("ACQ.SYSTEM_ERROR", "x"))),
            Action::Retry { .. }
        ));
        assert!(matches!(
            after_close(Err(&GatewayError::permanent("40006", "no permission"))),
            Action::Park { .. }
        ));
    }

    #[test]
    fn no_answer_ever_closes_a_paid_trade() {
        // Exhaustive over states and stages: a Paid answer always marks paid.
        let o = order("NEW", t(NOW));
        for stage in [QueryStage::First, QueryStage::AfterCloseRefused] {
            for amount in [1, 1234, 99_999] {
                assert!(matches!(
                    after_query(&o, stage, Ok(&paid(amount))),
                    Action::MarkPaid { .. }
                ));
            }
        }
    }

    /// A trade paid and then given back before the deadline is never a
    /// plain payment, at any stage, on any gateway: the order closes with its anomaly.
    #[test]
    fn a_refunded_trade_closes_the_order_with_its_anomaly_at_every_stage() {
        let o = order("NEW", t(NOW));
        let refunded = TradeState::Refunded {
            trade_no: "4200001".into(),
            amount_minor: 1234,
            paid_at: Some(t("2026-11-22T09:50:00Z")),
        };
        for stage in [
            QueryStage::First,
            QueryStage::AfterCloseRefused,
            QueryStage::AfterCloseUnconfirmed,
        ] {
            assert_eq!(
                after_query(&o, stage, Ok(&refunded)),
                Action::CloseRefunded {
                    trade_no: "4200001".into(),
                    paid_minor: 1234
                },
                "{stage:?}"
            );
        }
    }

    /// One scripted answer per call, in order.
    #[derive(Debug, Clone)]
    enum Scripted {
        Query(Result<TradeState, GatewayError>),
        Close(Result<CloseAnswer, GatewayError>),
    }

    /// Runs the protocol against a script; returns the calls made and the action.
    fn run(order: &Order, dry_run: bool, script: &[Scripted]) -> (Vec<&'static str>, Action) {
        let (mut protocol, mut step) = Protocol::start(order, dry_run);
        let mut calls = Vec::new();
        let mut answers = script.iter();
        loop {
            step = match (step, answers.next()) {
                (Step::Done(action), None) => return (calls, action),
                (Step::Query, Some(Scripted::Query(a))) => {
                    calls.push("query");
                    protocol.after_query(a.as_ref())
                }
                (Step::Close, Some(Scripted::Close(a))) => {
                    calls.push("close");
                    protocol.after_close(a.as_ref())
                }
                (step, next) => panic!("the protocol asked {step:?}, the script has {next:?}"),
            };
        }
    }

    #[test]
    fn the_protocol_makes_exactly_the_calls_the_table_needs() {
        let o = order("NEW", t(NOW));
        let paid = TradeState::Paid {
            trade_no: "T1".into(),
            amount_minor: 1234,
            paid_at: None,
        };
        let busy = GatewayError::retryable("20000", "busy");
        let denied = GatewayError::permanent("40002", "bad key");
        let refused = CloseAnswer::NotCloseable {
            sub_code: "ACQ.TRADE_STATUS_ERROR".into(),
        };
        use Scripted::{Close as C, Query as Q};
        type Case = (Vec<Scripted>, Vec<&'static str>, fn(&Action) -> bool);
        let cases: Vec<Case> = vec![
            (vec![Q(Ok(paid.clone()))], vec!["query"], |a| {
                matches!(a, Action::MarkPaid { .. })
            }),
            (vec![Q(Ok(TradeState::NotFound))], vec!["query"], |a| {
                *a == Action::Close(CloseReason::NoTrade)
            }),
            (vec![Q(Ok(TradeState::Closed))], vec!["query"], |a| {
                *a == Action::Close(CloseReason::ClosedAtGateway)
            }),
            (vec![Q(Ok(TradeState::InProgress))], vec!["query"], |a| {
                matches!(a, Action::Retry { .. })
            }),
            (vec![Q(Err(busy.clone()))], vec!["query"], |a| {
                matches!(a, Action::Retry { .. })
            }),
            (vec![Q(Err(denied.clone()))], vec!["query"], |a| {
                matches!(a, Action::Park { .. })
            }),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(CloseAnswer::Closed)),
                ],
                vec!["query", "close"],
                |a| *a == Action::Close(CloseReason::ClosedByUs),
            ),
            (
                vec![Q(Ok(TradeState::WaitingForPayment)), C(Err(busy.clone()))],
                vec!["query", "close"],
                |a| matches!(a, Action::Retry { .. }),
            ),
            (
                vec![Q(Ok(TradeState::WaitingForPayment)), C(Err(denied.clone()))],
                vec!["query", "close"],
                |a| matches!(a, Action::Park { .. }),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(refused.clone())),
                    Q(Ok(paid.clone())),
                ],
                vec!["query", "close", "query"],
                |a| matches!(a, Action::MarkPaid { .. }),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(refused.clone())),
                    Q(Ok(TradeState::Closed)),
                ],
                vec!["query", "close", "query"],
                |a| *a == Action::Close(CloseReason::ClosedAtGateway),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(refused.clone())),
                    Q(Ok(TradeState::WaitingForPayment)),
                ],
                vec!["query", "close", "query"],
                |a| matches!(a, Action::Retry { code, .. } if code == "close_refused_still_waiting"),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(refused.clone())),
                    Q(Ok(TradeState::NotFound)),
                ],
                vec!["query", "close", "query"],
                |a| matches!(a, Action::Retry { .. }),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(refused)),
                    Q(Err(busy.clone())),
                ],
                vec!["query", "close", "query"],
                |a| matches!(a, Action::Retry { .. }),
            ),
            // A close the gateway took without confirming (WeChat's 204): what the trade
            // is afterwards decides, and only "closed" or "no trade at all" closes.
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(CloseAnswer::Unconfirmed)),
                    Q(Ok(TradeState::Closed)),
                ],
                vec!["query", "close", "query"],
                |a| *a == Action::Close(CloseReason::ClosedByUs),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(CloseAnswer::Unconfirmed)),
                    Q(Ok(TradeState::NotFound)),
                ],
                vec!["query", "close", "query"],
                |a| *a == Action::Close(CloseReason::NoTrade),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(CloseAnswer::Unconfirmed)),
                    Q(Ok(paid.clone())),
                ],
                vec!["query", "close", "query"],
                |a| matches!(a, Action::MarkPaid { .. }),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(CloseAnswer::Unconfirmed)),
                    Q(Ok(TradeState::WaitingForPayment)),
                ],
                vec!["query", "close", "query"],
                |a| matches!(a, Action::Retry { code, .. } if code == "close_unconfirmed_still_waiting"),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(CloseAnswer::Unconfirmed)),
                    Q(Ok(TradeState::InProgress)),
                ],
                vec!["query", "close", "query"],
                |a| matches!(a, Action::Retry { code, .. } if code == "buyer_paying"),
            ),
            (
                vec![
                    Q(Ok(TradeState::WaitingForPayment)),
                    C(Ok(CloseAnswer::Unconfirmed)),
                    Q(Err(busy)),
                ],
                vec!["query", "close", "query"],
                |a| matches!(a, Action::Retry { .. }),
            ),
        ];
        for (script, expected_calls, check) in cases {
            let (calls, action) = run(&o, false, &script);
            assert_eq!(calls, expected_calls, "{script:?}");
            assert!(check(&action), "{script:?} -> {action:?}");
        }
        // Paid and given back: no close at the gateway (nothing can be paid), and after a
        // refused or unconfirmed close the refund still decides.
        let refunded = TradeState::Refunded {
            trade_no: "T1".into(),
            amount_minor: 1234,
            paid_at: None,
        };
        let closes_refunded = |a: &Action| matches!(a, Action::CloseRefunded { .. });
        for script in [
            vec![Q(Ok(refunded.clone()))],
            vec![
                Q(Ok(TradeState::WaitingForPayment)),
                C(Ok(CloseAnswer::NotCloseable {
                    sub_code: "ACQ.TRADE_STATUS_ERROR".into(),
                })),
                Q(Ok(refunded.clone())),
            ],
            vec![
                Q(Ok(TradeState::WaitingForPayment)),
                C(Ok(CloseAnswer::Unconfirmed)),
                Q(Ok(refunded.clone())),
            ],
        ] {
            let (calls, action) = run(&o, false, &script);
            assert_eq!(calls.len(), script.len(), "{script:?}");
            assert!(closes_refunded(&action), "{script:?} -> {action:?}");
        }
        // A dry run asks once and closes nothing.
        let (calls, action) = run(&o, true, &[Q(Ok(TradeState::WaitingForPayment))]);
        assert_eq!((calls, action), (vec!["query"], Action::CloseAtGateway));
    }
}
