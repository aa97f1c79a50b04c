//! Carrying out an [`OrderDecision`]: the order's move with its trades' moves, audit row,
//! event and anomalies (grouped with other tasks' writes, `write.rs`); or, when the order
//! does not move, the trades' moves and anomalies alone; then the retry or park of the
//! message for a trade that did not settle.

use chrono::Utc;
use diesel_async::AsyncConnection;

use super::duplicates;
use super::order_table::{OrderDecision, OrderMove, Unsettled};
use super::retry_or_park::Failure;
use super::table::CloseReason;
use super::write::{self, DecisionWrite};
use super::{AttemptInfo, Cause, Decider, Outcome, Pending, Unavailable, attempt_column};
use order_closer_core::config::PaidAfterClose;
use order_closer_core::db::anomalies::AnomalyKind;
use order_closer_core::db::decisions::{self, DecisionOutcome, NewDecision};
use order_closer_core::db::trades::{self, TradeMove};
use order_closer_core::db::{self, DbError, outbox};
use order_closer_core::message::CloseMessage;
use order_closer_core::money::format_minor;
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::trade::Trade;

/// Where a decision comes from: which attempt of the message, whether its message is
/// parked already, and how a payment became known.
#[derive(Debug, Clone, Copy)]
pub(super) struct Context {
    pub(super) attempt: AttemptInfo,
    pub(super) pending: Pending,
    pub(super) cause: Cause,
}

impl Decider {
    /// Schedules the close of a PAID order's other open trades now (a close message due at
    /// once, through the outbox and the relay), if it has any: each is a chance to pay
    /// twice. The worker finds the order PAID with open trades and closes them at their
    /// gateways ([`super::table::precheck`]). Returns whether one was scheduled.
    pub async fn close_others_soon(&self, order: &Order) -> Result<bool, Unavailable> {
        let message = CloseMessage::new(order.id, order.out_trade_no.clone(), Utc::now());
        let mut conn = db::conn(&self.pool).await?;
        Ok(
            outbox::insert_close_if_open_trades(&mut conn, order.id, &message)
                .await?
                .is_some(),
        )
    }

    /// Writes what the order table decided and says what became of the order.
    pub(super) async fn settle(
        &self,
        order: Order,
        trades: &[Trade],
        decision: OrderDecision,
        answer: Option<String>,
        context: Context,
    ) -> Result<Outcome, Unavailable> {
        let Context {
            attempt,
            pending,
            cause,
        } = context;
        let find = |id: i64| trades.iter().find(|t| t.id == id).cloned();
        let mut anomalies = Vec::new();
        for (id, trade_no, paid_minor) in &decision.refunded {
            let detail = format!(
                "the gateway reports trade {trade_no} paid {} and given back before the deadline \
                 (by hand in the merchant portal, or by its risk control): closed, no goods for \
                 money that went back; check whether any of it was kept",
                format_minor(*paid_minor)
            );
            anomalies.push((AnomalyKind::RefundedBeforeDeadline, detail, find(*id)));
        }
        let unsettled = decision.unsettled.clone();
        /// What differs between a PAID and a CLOSED write.
        struct Moved {
            status: OrderStatus,
            close_reason: Option<&'static str>,
            trade_no: Option<String>,
            paid_at: Option<chrono::DateTime<Utc>>,
            detail: String,
            reason: &'static str,
            trade: Option<Trade>,
        }
        let moved = match decision.order {
            Some(OrderMove::Paid {
                trade_id,
                trade_no,
                paid_at,
                mismatch,
            }) => {
                let detail = match mismatch {
                    None => cause.detail().to_owned(),
                    Some(m) => format!(
                        "paid at the gateway with amount {} but the order says {}",
                        format_minor(m.paid),
                        format_minor(m.expected)
                    ),
                };
                if mismatch.is_some() {
                    anomalies.push((AnomalyKind::AmountMismatch, detail.clone(), find(trade_id)));
                }
                Some(Moved {
                    status: OrderStatus::Paid,
                    close_reason: None,
                    trade_no: Some(trade_no),
                    paid_at: Some(paid_at.unwrap_or_else(Utc::now)),
                    detail,
                    reason: "paid_at_gateway",
                    trade: find(trade_id),
                })
            }
            Some(OrderMove::Closed(reason)) => Some(Moved {
                status: OrderStatus::Closed,
                close_reason: Some(reason.as_str()),
                trade_no: decision.refunded.first().map(|(_, no, _)| no.clone()),
                paid_at: None,
                detail: match reason {
                    CloseReason::RefundedAtGateway => anomalies
                        .iter()
                        .find(|(k, ..)| *k == AnomalyKind::RefundedBeforeDeadline)
                        .map(|(_, d, _)| d.clone())
                        .unwrap_or_else(|| reason.as_str().to_owned()),
                    _ => reason.as_str().to_owned(),
                },
                reason: reason.as_str(),
                // The event names the trade when the order had exactly one.
                trade: match trades {
                    [one] => Some(one.clone()),
                    _ => None,
                },
            }),
            None => None,
        };
        let outcome = match moved {
            Some(m) => {
                let write = DecisionWrite {
                    order: order.clone(),
                    status: m.status,
                    close_reason: m.close_reason,
                    trade_no: m.trade_no,
                    paid_at: m.paid_at,
                    attempt: attempt_column(attempt),
                    answer: answer.clone(),
                    detail: m.detail,
                    reason: m.reason,
                    trade: m.trade,
                    trades: trades.to_vec(),
                    trade_moves: decision.trades,
                    anomalies,
                };
                self.commit_counting(write, attempt, pending).await?
            }
            None => {
                if !decision.trades.is_empty() || !anomalies.is_empty() {
                    self.record_trades(
                        &order,
                        trades,
                        &decision.trades,
                        &anomalies,
                        attempt,
                        answer.as_deref(),
                    )
                    .await?;
                }
                Outcome::Settled(order.status())
            }
        };
        match unsettled {
            Some(u) => {
                let channel = find(u.trade_id).map(|t| t.channel);
                self.after_failure(
                    order,
                    channel.as_deref(),
                    attempt,
                    failure(u),
                    answer,
                    pending,
                )
                .await
            }
            None => Ok(outcome),
        }
    }

    /// Commits a write, counting its anomalies once the order moved.
    async fn commit_counting(
        &self,
        write: DecisionWrite,
        attempt: AttemptInfo,
        pending: Pending,
    ) -> Result<Outcome, Unavailable> {
        let kinds: Vec<AnomalyKind> = write.anomalies.iter().map(|(k, ..)| *k).collect();
        let outcome = self.commit(write, attempt, pending).await?;
        if matches!(outcome, Outcome::Decided { .. }) {
            for kind in kinds {
                self.metrics.anomaly(kind);
            }
        }
        Ok(outcome)
    }

    /// Writes the moves of an order's trades that leave the order as it is (a PAID order's
    /// other trades closed, or found paid too; a NEW order's trades closed while another
    /// still fails), with their anomalies and an audit row, in one transaction.
    async fn record_trades(
        &self,
        order: &Order,
        all: &[Trade],
        moves: &[(i64, TradeMove)],
        anomalies: &[(AnomalyKind, String, Option<Trade>)],
        attempt: AttemptInfo,
        answer: Option<&str>,
    ) -> Result<(), Unavailable> {
        let detail = moves
            .iter()
            .map(|(id, m)| match m {
                TradeMove::Paid {
                    gateway_trade_no, ..
                } => format!("trade {id} paid ({gateway_trade_no})"),
                TradeMove::Closed { reason } => format!("trade {id} closed ({reason})"),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let refund = self.paid_after_close == PaidAfterClose::Refund;
        let mut conn = db::conn(&self.pool).await?;
        let (new_kinds, found) = conn
            .transaction::<_, diesel::result::Error, _>(async |tx| {
                let moved = trades::apply_moves(tx, moves).await?;
                decisions::insert(
                    tx,
                    &NewDecision {
                        order_id: order.id,
                        attempt: attempt_column(attempt),
                        outcome: DecisionOutcome::TradesSettled,
                        gateway_answer: answer,
                        detail: &detail,
                        actor: &self.actor,
                    },
                )
                .await?;
                let mut new_kinds = Vec::new();
                for (kind, detail, trade) in anomalies {
                    if write::record_anomaly(
                        tx,
                        order,
                        trade.as_ref(),
                        *kind,
                        detail,
                        order.status(),
                        trade.as_ref().and_then(|t| t.gateway_trade_no.as_deref()),
                    )
                    .await?
                    {
                        new_kinds.push(*kind);
                    }
                }
                let paid_now: Vec<i64> = moves
                    .iter()
                    .filter(|(id, m)| matches!(m, TradeMove::Paid { .. }) && moved.contains(id))
                    .map(|(id, _)| *id)
                    .collect();
                let all: Vec<&Trade> = all.iter().collect();
                let found =
                    duplicates::record(tx, &paid_now, &[order], &all, refund, &self.actor).await?;
                Ok((new_kinds, found))
            })
            .await
            .map_err(DbError::from)?;
        for kind in new_kinds {
            self.metrics.anomaly(kind);
        }
        self.metrics.found(found);
        Ok(())
    }
}

fn failure(u: Unsettled) -> Failure {
    if u.retryable {
        Failure::transient(u.code, u.detail)
    } else {
        Failure::permanent(u.code, u.detail)
    }
}
