//! The operator's reconcile tools, run by hand or from cron: re-drive overdue orders
//! ([`overdue`]), drain the parking queue ([`parked`]), diff the gateway's daily bill
//! against the database ([`bill`]), and refund a payment after close ([`refund`]). Every decision goes through [`crate::decide`], the
//! same code the worker runs.

pub mod bill;
pub mod bill_classify;
pub mod bill_report;
pub mod broker_death;
pub mod overdue;
pub mod parked;
pub mod refund;

use serde::Serialize;

use crate::decide::Outcome;
use crate::decide::table::Action;
use order_closer_core::order::OrderStatus;

/// How one order came out of a reconcile decision, in words an operator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Closed now.
    Closed,
    /// Marked paid now.
    Paid,
    /// Someone else settled it meanwhile (a worker, the callback).
    AlreadySettled,
    /// The order does not exist.
    Missing,
    /// Not due after all (deadline extended).
    NotDue,
    /// A transient failure: a later run (or the worker) will try again.
    RetryLater,
    /// Needs an operator (permanent gateway error, order mismatch).
    NeedsOperator,
    /// Its refund is made now.
    Refunded,
    /// Dry run: would send its refund.
    WouldRefund,
    /// Dry run: would close.
    WouldClose,
    /// Dry run: would mark paid.
    WouldPay,
    /// Dry run: would close at the gateway first, then locally.
    WouldCloseAtGateway,
    /// Dry run: would have to try again later.
    WouldRetry,
    /// Dry run: would need an operator.
    WouldNeedOperator,
    /// The database was unreachable.
    DatabaseUnavailable,
    /// Its message waits in the parking queue and the gateway could not settle it now: it
    /// stays parked for `reconcile parked`.
    StillParked,
}

impl Verdict {
    /// The verdict's name, as in JSON output and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Paid => "paid",
            Self::AlreadySettled => "already_settled",
            Self::Missing => "missing",
            Self::NotDue => "not_due",
            Self::RetryLater => "retry_later",
            Self::NeedsOperator => "needs_operator",
            Self::Refunded => "refunded",
            Self::WouldRefund => "would_refund",
            Self::WouldClose => "would_close",
            Self::WouldPay => "would_pay",
            Self::WouldCloseAtGateway => "would_close_at_gateway",
            Self::WouldRetry => "would_retry",
            Self::WouldNeedOperator => "would_need_operator",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::StillParked => "still_parked",
        }
    }

    /// Whether the order needed fixing (found in a bad state).
    pub fn needed_fixing(self) -> bool {
        !matches!(self, Self::AlreadySettled | Self::Missing | Self::NotDue)
    }

    /// Whether the run could not settle it.
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            Self::RetryLater
                | Self::NeedsOperator
                | Self::WouldRetry
                | Self::WouldNeedOperator
                | Self::DatabaseUnavailable
                | Self::StillParked
        )
    }
}

impl From<&Outcome> for Verdict {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Decided {
                status: OrderStatus::Paid,
                ..
            } => Self::Paid,
            Outcome::Decided { .. } => Self::Closed,
            Outcome::Settled(_) | Outcome::LostRace(_) => Self::AlreadySettled,
            Outcome::Missing => Self::Missing,
            Outcome::NotDue { .. } => Self::NotDue,
            Outcome::Retry { .. } => Self::RetryLater,
            Outcome::Park { .. } => Self::NeedsOperator,
            Outcome::Refunded { .. } => Self::Refunded,
            Outcome::WouldRefund { .. } => Self::WouldRefund,
            Outcome::StillParked { .. } => Self::StillParked,
            Outcome::WouldDo(action) => match action {
                Action::MarkPaid { .. } => Self::WouldPay,
                Action::Close(_) | Action::CloseRefunded { .. } => Self::WouldClose,
                Action::CloseAtGateway | Action::QueryAgain => Self::WouldCloseAtGateway,
                Action::Retry { .. } => Self::WouldRetry,
                Action::Park { .. } => Self::WouldNeedOperator,
            },
        }
    }
}

/// What a reconcile run tells cron through its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// Nothing needed fixing (exit 0).
    Clean,
    /// Something needed fixing and was fixed, or would be in a dry run (exit 3).
    Fixed,
    /// Something needs an operator or a later run (exit 4).
    NeedsAttention,
}

impl Finding {
    /// The process exit code for this finding.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Clean => 0,
            Self::Fixed => 3,
            Self::NeedsAttention => 4,
        }
    }

    /// The finding for a set of verdicts.
    pub fn of(verdicts: impl IntoIterator<Item = Verdict>) -> Self {
        let mut finding = Self::Clean;
        for v in verdicts {
            if v.needs_attention() {
                return Self::NeedsAttention;
            }
            if v.needed_fixing() {
                finding = Self::Fixed;
            }
        }
        finding
    }
}
