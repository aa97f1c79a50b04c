//! Events announced on the events exchange when a decision commits.
//!
//! Routing keys: `order.closed`, `order.paid`, `order.anomaly.<kind>`, `order.refunded`,
//! `order.refund_failed`. Each event carries
//! `event_id` (unique per decision) so that a consumer can drop the rare duplicate that
//! at-least-once publishing allows.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::order::{Order, OrderStatus};
use crate::trade::Trade;

/// Routing key of a close.
pub const ORDER_CLOSED: &str = "order.closed";
/// Routing key of a payment we discovered.
pub const ORDER_PAID: &str = "order.paid";

/// Routing key of a refund the gateway confirmed (a payment after close given back).
pub const ORDER_REFUNDED: &str = "order.refunded";
/// Routing key of a refund refused for good or out of retry steps (an operator looks).
pub const ORDER_REFUND_FAILED: &str = "order.refund_failed";

/// The routing key of an anomaly of this kind.
pub fn anomaly_key(kind: crate::db::anomalies::AnomalyKind) -> String {
    format!("order.anomaly.{kind}")
}

/// The JSON body of every event.
#[derive(Debug, Clone, Serialize)]
pub struct OrderEvent<'a> {
    /// Contract version.
    pub v: u32,
    /// Unique id: `<routing key>:<decision id>`.
    pub event_id: String,
    /// The routing key, repeated in the body.
    pub event: &'a str,
    /// Our order id.
    pub order_id: i64,
    /// Merchant order number.
    pub out_trade_no: &'a str,
    /// The gateway of the trade the event is about (`alipay`, `wechat`); empty when it is
    /// about no trade (an order closed without any, or settled by the shop otherwise).
    pub channel: &'a str,
    /// The trade (payment attempt) the event is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trade: Option<TradeNames<'a>>,
    /// The order's status after the decision.
    pub status: &'a str,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// Currency.
    pub currency: &'a str,
    /// The gateway's trade number, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_trade_no: Option<&'a str>,
    /// Why (close reason, anomaly detail).
    pub reason: &'a str,
    /// When the decision was made.
    pub occurred_at: DateTime<Utc>,
}

/// How an event names a trade: its id, gateway, merchant trade number and the gateway's
/// trade number.
#[derive(Debug, Clone, Serialize)]
pub struct TradeNames<'a> {
    /// Our trade id.
    pub id: i64,
    /// Its gateway.
    pub channel: &'a str,
    /// Its merchant trade number at that gateway.
    pub out_trade_no: &'a str,
    /// The gateway's trade number, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_trade_no: Option<&'a str>,
}

impl<'a> OrderEvent<'a> {
    /// The event announcing `order` now has `status`, occurring now, about `trade` when
    /// one is concerned.
    pub fn about(
        order: &'a Order,
        trade: Option<&'a Trade>,
        routing_key: &'a str,
        event_id: String,
        status: OrderStatus,
        gateway_trade_no: Option<&'a str>,
        reason: &'a str,
    ) -> Self {
        Self {
            v: 1,
            event_id,
            event: routing_key,
            order_id: order.id,
            out_trade_no: &order.out_trade_no,
            channel: trade.map_or("", |t| t.channel.as_str()),
            trade: trade.map(|t| TradeNames {
                id: t.id,
                channel: &t.channel,
                out_trade_no: &t.out_trade_no,
                gateway_trade_no: gateway_trade_no.or(t.gateway_trade_no.as_deref()),
            }),
            status: status.as_str(),
            amount_minor: order.amount_minor,
            currency: &order.currency,
            gateway_trade_no,
            reason,
            occurred_at: Utc::now(),
        }
    }

    /// Serializes the event.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
