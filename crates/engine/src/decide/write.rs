//! Writing decisions in groups: for many orders at once, the guarded `NEW -> PAID |
//! CLOSED` transition, its audit row and its event, in one statement (run by a
//! [`order_closer_core::db::batch`] lane). An amount mismatch adds its anomaly row and event in the
//! same transaction.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::relay;
use order_closer_core::db::anomalies::{self, AnomalyKind, NewAnomaly};
use order_closer_core::db::batch::Job;
use order_closer_core::db::decisions::{self, DecisionOutcome, NewDecision, Transition};
use order_closer_core::events::{self, OrderEvent};
use order_closer_core::order::{Order, OrderStatus};

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
    /// An anomaly to record with the decision: (kind, detail).
    pub anomaly: Option<(AnomalyKind, String)>,
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
        let moved: HashSet<i64> = if items.iter().any(|s| s.anomaly.is_some()) {
            conn.transaction::<_, diesel::result::Error, _>(async |tx| {
                let moved: HashSet<i64> = decisions::apply_transitions(tx, &rows)
                    .await?
                    .into_iter()
                    .collect();
                for s in items.iter().filter(|s| moved.contains(&s.order.id)) {
                    if let Some((kind, detail)) = &s.anomaly {
                        record_anomaly(
                            tx,
                            &s.order,
                            *kind,
                            detail,
                            s.status,
                            s.trade_no.as_deref(),
                        )
                        .await?;
                    }
                }
                Ok(moved)
            })
            .await?
        } else {
            decisions::apply_transitions(conn, &rows)
                .await?
                .into_iter()
                .collect()
        };
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

/// Records an anomaly (once per order number and kind) and, when it is new, announces it
/// as `order.anomaly.<kind>`, inside the caller's transaction. Returns whether it was new.
pub async fn record_anomaly(
    tx: &mut AsyncPgConnection,
    order: &Order,
    kind: AnomalyKind,
    detail: &str,
    status: OrderStatus,
    trade_no: Option<&str>,
) -> QueryResult<bool> {
    let row = NewAnomaly {
        order_id: Some(order.id),
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
        &key,
        format!("{key}:a{id}"),
        status,
        trade_no,
        detail,
    );
    relay::enqueue_event(tx, &key, &event.to_json()).await?;
    Ok(true)
}
