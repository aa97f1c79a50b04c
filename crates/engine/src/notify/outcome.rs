//! What became of one notification: the metric label, the log field, and what the
//! README's reply table is written in.

/// The outcome of one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyOutcome {
    /// Verified and applied: the order went NEW -> PAID.
    Paid,
    /// Verified; the order was PAID already (a resend, or the worker was first).
    AlreadyPaid,
    /// Verified or confirmed by a query: a payment on a CLOSED order (an anomaly).
    PaidAfterClose,
    /// Not trusted by itself: the gateway was asked and its answer applied.
    Queried,
    /// Not a notification, or not trusted and not worth a query (no query budget, no
    /// gateway for the channel).
    Rejected,
    /// It names no order of ours.
    UnknownOrder,
    /// The database could not be used: the gateway must send it again.
    DatabaseUnavailable,
}

impl NotifyOutcome {
    /// Every outcome (metrics start them at 0).
    pub const ALL: [Self; 7] = [
        Self::Paid,
        Self::AlreadyPaid,
        Self::PaidAfterClose,
        Self::Queried,
        Self::Rejected,
        Self::UnknownOrder,
        Self::DatabaseUnavailable,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::AlreadyPaid => "already_paid",
            Self::PaidAfterClose => "paid_after_close",
            Self::Queried => "queried",
            Self::Rejected => "rejected",
            Self::UnknownOrder => "unknown_order",
            Self::DatabaseUnavailable => "database_unavailable",
        }
    }
}

impl std::fmt::Display for NotifyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
