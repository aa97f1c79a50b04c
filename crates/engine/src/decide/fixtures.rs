//! Orders as the decision tables' tests need them: `ORD-1`, 12.34 CNY, in a given status.

use chrono::{DateTime, Utc};

use order_closer_core::order::Order;

/// Order 1 (`ORD-1`, 1234 minor units) in `status`, due at `deadline`.
pub(crate) fn order(status: &str, deadline: DateTime<Utc>) -> Order {
    Order {
        id: 1,
        out_trade_no: "ORD-1".into(),
        amount_minor: 1234,
        currency: "CNY".into(),
        status_text: status.into(),
        deadline,
        created_at: deadline,
        updated_at: deadline,
        paid_at: None,
        closed_at: None,
        gateway_trade_no: None,
        close_reason: None,
        paid_trade_id: None,
        open_trades: 0,
    }
}
