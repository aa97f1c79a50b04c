//! The order as stored, and its status.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

/// Where an order is in its life: `NEW -> PAID` or `NEW -> CLOSED`, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OrderStatus {
    /// Created, not paid, not closed.
    New,
    /// Paid (terminal).
    Paid,
    /// Closed unpaid (terminal).
    Closed,
}

impl OrderStatus {
    /// The text stored in `orders.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Paid => "PAID",
            Self::Closed => "CLOSED",
        }
    }

    /// Reads the stored text; the table's CHECK constraint makes anything else impossible.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "NEW" => Some(Self::New),
            "PAID" => Some(Self::Paid),
            "CLOSED" => Some(Self::Closed),
            _ => None,
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row of `orders`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable, Serialize)]
#[diesel(table_name = crate::db::schema::orders, check_for_backend(diesel::pg::Pg))]
pub struct Order {
    /// Our id.
    pub id: i64,
    /// The shop's order number (in the one-call form, also its first trade's merchant
    /// trade number at the gateway; see [`crate::trade::Trade`]).
    pub out_trade_no: String,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO currency code.
    pub currency: String,
    /// `NEW`, `PAID` or `CLOSED` (see [`Order::status`]).
    #[diesel(column_name = status)]
    pub status_text: String,
    /// The payment deadline.
    pub deadline: DateTime<Utc>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it was paid, if it was.
    pub paid_at: Option<DateTime<Utc>>,
    /// When it was closed, if it was.
    pub closed_at: Option<DateTime<Utc>>,
    /// The gateway's trade number of the trade that paid it, once known.
    pub gateway_trade_no: Option<String>,
    /// Why it was closed.
    pub close_reason: Option<String>,
    /// The trade that paid it (None: not paid, paid before trades were recorded, or
    /// settled by other means).
    pub paid_trade_id: Option<i64>,
    /// How many of its trades are open (kept by the database's triggers).
    pub open_trades: i32,
}

impl Order {
    /// The status; an unknown text (impossible under the table's CHECK) reads as NEW so
    /// that nothing is ever closed or paid by mistake on a misread.
    pub fn status(&self) -> OrderStatus {
        OrderStatus::parse(&self.status_text).unwrap_or(OrderStatus::New)
    }

    /// Whether it was paid through the trade `trade_id` (whose gateway trade number is
    /// `gateway_trade_no`): the trade it names, or, for an order paid before trades were
    /// recorded (it names none), the trade whose number it kept. Any other paid trade of a
    /// PAID order is a second payment.
    pub fn paid_through(&self, trade_id: i64, gateway_trade_no: Option<&str>) -> bool {
        match self.paid_trade_id {
            Some(id) => id == trade_id,
            None => {
                gateway_trade_no.is_some() && self.gateway_trade_no.as_deref() == gateway_trade_no
            }
        }
    }
}

/// Why an order was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The gateway never saw a trade (the buyer never scanned or started paying).
    NoTrade,
    /// The gateway already had the trade closed.
    ClosedAtGateway,
    /// We closed the waiting trade at the gateway, then locally.
    ClosedByUs,
    /// The buyer paid, and the payment was given back at the gateway before we decided
    /// (a `refunded_before_deadline` anomaly goes with it).
    RefundedAtGateway,
}

impl CloseReason {
    /// The text stored in `orders.close_reason` and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoTrade => "deadline_no_trade",
            Self::ClosedAtGateway => "deadline_closed_at_gateway",
            Self::ClosedByUs => "deadline_closed_by_us",
            Self::RefundedAtGateway => "deadline_refunded_at_gateway",
        }
    }
}
