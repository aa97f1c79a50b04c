//! Writing decisions in groups: for many orders at once, the moves of their trades, then
//! the guarded `NEW -> PAID | CLOSED` transition, its audit row and its event, in one
//! transaction (run by a [`order_closer_core::db::batch`] lane). The trades move first so
//! that the CLOSED guard (`orders.open_trades = 0`) sees them closed. An anomaly (an
//! amount mismatch, a duplicate payment, a trade refunded before the deadline) adds its
//! row and event in the same transaction.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};

use std::sync::Arc;

use super::duplicates;
use crate::metrics::Metrics;
use crate::relay;
use order_closer_core::db::anomalies::{self, AnomalyKind, NewAnomaly};
use order_closer_core::db::batch::Job;
use order_closer_core::db::decisions::{self, DecisionOutcome, NewDecision, Transition};
use order_closer_core::db::trades::{self, TradeMove};
use order_closer_core::events::{self, OrderEvent};
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::trade::Trade;

/// One decision to write: the order moves to `status` if it is still NEW.
#[derive(Debug, Clone)]
pub struct DecisionWrite {
    /// The order as read before asking the gateway.
    pub order: Order,
    /// `Paid` or `Closed`.
    pub status: OrderStatus,
    /// Why it is closed (closes only).
    pub close_reason: Option<&'static str>,
    /// The gateway's trade number (payments only).
    pub trade_no: Option<String>,
    /// When it was paid (payments only).
    pub paid_at: Option<DateTime<Utc>>,
    /// Failed attempts before this one.
    pub attempt: i32,
    /// What the gateway answered, for the audit row.
    pub answer: Option<String>,
    /// The audit row's explanation.
    pub detail: String,
    /// The event's `reason`.
    pub reason: &'static str,
    /// The trade the event names: the one that paid the order, or a closed order's only
    /// trade (recorded as the order's `paid_trade_id` for a payment only).
    pub trade: Option<Trade>,
    /// Every trade of the order, as read before asking the gateways.
    pub trades: Vec<Trade>,
    /// The moves of the order's trades, written first whether or not the order moves
    /// (what a gateway said about a trade is true either way). A trade moved to paid that
    /// did not pay the order is a duplicate payment ([`super::duplicates`]).
    pub trade_moves: Vec<(i64, TradeMove)>,
    /// Anomalies to record if the order moves: (kind, detail, the trade it is about).
    pub anomalies: Vec<(AnomalyKind, String, Option<Trade>)>,
}

impl DecisionWrite {
    fn event_key(&self) -> &'static str {
        match self.status {
            OrderStatus::Paid => events::ORDER_PAID,
            _ => events::ORDER_CLOSED,
        }
    }

    fn event(&self, decision_id: i64) -> OrderEvent<'_> {
        let key = self.event_key();
        OrderEvent::about(
            &self.order,
            self.trade.as_ref(),
            key,
            format!("{key}:{decision_id}"),
            self.status,
            self.trade_no.as_deref(),
            self.reason,
        )
    }
}

/// The group job: writes decisions, answering each with its decision id, or None when
/// another actor had already moved the order.
pub struct WriteDecisions {
    /// Who decides (`worker:<host>:<pid>`, `reconcile`, ...).
    pub actor: String,
    /// Whether a duplicate payment's refund is requested (the `refund` policy).
    pub refund_duplicates: bool,
    /// Counts the duplicate payments and refunds found.
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl Job for WriteDecisions {
    type Item = DecisionWrite;
    type Output = Option<i64>;

    async fn run(
        &self,
        conn: &mut AsyncPgConnection,
        items: &[DecisionWrite],
    ) -> QueryResult<Vec<Option<i64>>> {
        let ids = decisions::reserve_ids(conn, items.len()).await?;
        let payloads: Vec<String> = items
            .iter()
            .zip(&ids)
            .map(|(s, id)| s.event(*id).to_json())
            .collect();
        let rows: Vec<Transition<'_>> = items
            .iter()
            .zip(&ids)
            .zip(&payloads)
            .map(|((s, id), payload)| Transition {
                order_id: s.order.id,
                decision_id: *id,
                status: s.status.as_str(),
                // The trade a close's event names is not a payment.
                paid_trade_id: s
                    .trade
                    .as_ref()
                    .filter(|_| s.status == OrderStatus::Paid)
                    .map(|t| t.id),
                close_reason: s.close_reason,
                trade_no: s.trade_no.as_deref(),
                paid_at: s.paid_at,
                decision: NewDecision {
                    order_id: s.order.id,
                    attempt: s.attempt,
                    outcome: if s.status == OrderStatus::Paid {
                        DecisionOutcome::Paid
                    } else {
                        DecisionOutcome::Closed
                    },
                    gateway_answer: s.answer.as_deref(),
                    detail: &s.detail,
                    actor: &self.actor,
                },
                event_key: s.event_key(),
                event_payload: payload,
            })
            .collect();
        let moves: Vec<(i64, TradeMove)> = items
            .iter()
            .flat_map(|s| s.trade_moves.iter().cloned())
            .collect();
        let mut found = duplicates::Found::default();
        let moved: HashSet<i64> = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                let moved_trades: HashSet<i64> =
                    trades::apply_moves(tx, &moves).await?.into_iter().collect();
                let moved: HashSet<i64> = decisions::apply_transitions(tx, &rows)
                    .await?
                    .into_iter()
                    .collect();
                for s in items.iter().filter(|s| moved.contains(&s.order.id)) {
                    for (kind, detail, trade) in &s.anomalies {
                        record_anomaly(
                            tx,
                            &s.order,
                            trade.as_ref(),
                            *kind,
                            detail,
                            s.status,
                            s.trade_no.as_deref(),
                        )
                        .await?;
                    }
                }
                // Trades moved to paid, but for the one each moved order is paid through
                // now: only the others can be a second payment.
                let paying: HashSet<i64> = items
                    .iter()
                    .filter(|s| s.status == OrderStatus::Paid && moved.contains(&s.order.id))
                    .filter_map(|s| s.trade.as_ref().map(|t| t.id))
                    .collect();
                let paid_now: Vec<i64> = moves
                    .iter()
                    .filter(|(id, m)| {
                        matches!(m, TradeMove::Paid { .. })
                            && moved_trades.contains(id)
                            && !paying.contains(id)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let orders: Vec<&Order> = items.iter().map(|s| &s.order).collect();
                let all_trades: Vec<&Trade> = items.iter().flat_map(|s| &s.trades).collect();
                found = duplicates::record(
                    tx,
                    &paid_now,
                    &orders,
                    &all_trades,
                    self.refund_duplicates,
                    &self.actor,
                )
                .await?;
                Ok(moved)
            })
            .await?;
        self.metrics.found(found);
        Ok(items
            .iter()
            .zip(ids)
            .map(|(s, id)| moved.contains(&s.order.id).then_some(id))
            .collect())
    }

    /// One decision per order in a group: the guarded update decides between them.
    fn key(&self, s: &DecisionWrite) -> Option<i64> {
        Some(s.order.id)
    }
}

/// Records an anomaly (once per order number, kind and trade) and, when it is new,
/// announces it as `order.anomaly.<kind>`, inside the caller's transaction. Returns
/// whether it was new.
pub async fn record_anomaly(
    tx: &mut AsyncPgConnection,
    order: &Order,
    trade: Option<&Trade>,
    kind: AnomalyKind,
    detail: &str,
    status: OrderStatus,
    trade_no: Option<&str>,
) -> QueryResult<bool> {
    let row = NewAnomaly {
        order_id: Some(order.id),
        trade_id: trade.map(|t| t.id),
        out_trade_no: &order.out_trade_no,
        kind,
        detail,
    };
    let Some(id) = anomalies::record(tx, &row).await? else {
        return Ok(false);
    };
    let key = events::anomaly_key(kind);
    let event = OrderEvent::about(
        order,
        trade,
        &key,
        format!("{key}:a{id}"),
        status,
        trade_no,
        detail,
    );
    relay::enqueue_event(tx, &key, &event.to_json()).await?;
    Ok(true)
}
