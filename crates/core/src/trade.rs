//! A payment attempt as stored: one trade of an order at one gateway.
//!
//! An order is paid through any of its trades. The buyer opens one when they pick a
//! payment method ("pay with Alipay"), may open another at another gateway, and may pay
//! on either. Each is a trade at its gateway that stays payable until it is closed there
//! or expires, so every open one is closed at its gateway before the order is closed.
//!
//! They are called *trades* (an order's trades, matching `out_trade_no` and the gateway
//! port's `TradeRef`) because *attempt* already names a message's retry count.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

crate::text_enum! {
    /// Where a trade is: `open -> paid`, `open -> closed`, or `closed -> paid` (paid after
    /// we closed it: an anomaly, held or refunded).
    TradeStatus {
        /// Payable at its gateway, as far as we know.
        Open => "open",
        /// The gateway took the money on it.
        Paid => "paid",
        /// Closed at its gateway (or it never existed there).
        Closed => "closed",
    }
}

/// A row of `trades`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable, Serialize)]
#[diesel(table_name = crate::db::schema::trades, check_for_backend(diesel::pg::Pg))]
pub struct Trade {
    /// Our id.
    pub id: i64,
    /// The order it pays.
    pub order_id: i64,
    /// Which gateway (`alipay`, `wechat`).
    pub channel: String,
    /// The merchant trade number sent to the gateway (unique per gateway).
    pub out_trade_no: String,
    /// The gateway's own reference of the trade, for gateways that look trades up by it;
    /// None for those that use `out_trade_no`.
    pub gateway_ref: Option<String>,
    /// Where it is.
    pub status: TradeStatus,
    /// The gateway's trade number, once known.
    pub gateway_trade_no: Option<String>,
    /// What the gateway says was paid on it, in minor units, once paid.
    pub paid_minor: Option<i64>,
    /// When it was paid, if it was.
    pub paid_at: Option<DateTime<Utc>>,
    /// When it was closed, if it was.
    pub closed_at: Option<DateTime<Utc>>,
    /// Why it was closed.
    pub close_reason: Option<String>,
    /// When the shop added it.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Trade {
    /// Whether it may still be paid at its gateway.
    pub fn is_open(&self) -> bool {
        self.status == TradeStatus::Open
    }
}
