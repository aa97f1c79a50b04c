//! `reconcile parked`: the parking queue as an operator sees it. Listing takes the
//! messages without acknowledging them, then parks a fresh copy of each (in the order
//! taken) and acknowledges the one it took, so a listing consumes nothing; `requeue`
//! decides each parked order through the worker's decision code and removes the messages
//! whose order is now settled; `discard` removes them, each with an audit row in
//! `parked_discards`.
//!
//! Why a copy rather than a `nack` with requeue: a quorum queue counts every message
//! handed back toward its delivery limit on RabbitMQ 4.0 to 4.2, 20 by default, and the
//! parking queue has no dead-letter target (see `order_closer_core::broker::topology`),
//! so the 21st listing would drop every parked message. A fresh copy starts at zero on
//! every version. If the process dies between a copy's confirm and the acknowledgement, a
//! message is parked twice: a requeue settles the order once and removes both, a discard
//! records both. A message the broker parked itself (past the close queue's delivery
//! limit) is shown, and re-parked, with the broker's reason ([`super::broker_death`]).

use std::collections::BTreeMap;

use chrono::Utc;
use diesel_async::RunQueryDsl;
use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use thiserror::Error;

use super::broker_death::{BrokerDeath, reparked_headers};
use super::{Finding, Verdict};
use crate::decide::{AttemptInfo, Decider, Mode, Outcome, Unavailable};
use order_closer_core::broker::publisher::{
    HEADER_ATTEMPTS, HEADER_FIRST_SEEN, HEADER_LAST_ERROR, HEADER_PARKED_AT, HEADER_REASON,
    Publisher,
};
use order_closer_core::broker::topology::{PARKED_KEY, header_text};
use order_closer_core::broker::{BrokerError, timed};
use order_closer_core::db::schema::parked_discards;
use order_closer_core::db::{self, DbError, orders};
use order_closer_core::message::{CloseMessage, Cut, Job, cut_oversized};
use order_closer_core::order::OrderStatus;

/// What to do with the parked messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedAction {
    /// Only list them.
    List,
    /// Decide each order again; remove the messages whose order is settled.
    Requeue,
    /// Remove them, with an audit row each.
    Discard,
}

/// A parked message as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedLine {
    /// Order id, if the message could be read.
    pub order_id: Option<i64>,
    /// Merchant order number, if the message could be read.
    pub out_trade_no: Option<String>,
    /// Why it was parked.
    pub reason: String,
    /// The last error.
    pub last_error: String,
    /// Attempts made before parking.
    pub attempts: String,
    /// When the first attempt happened.
    pub first_seen: String,
    /// When it was parked.
    pub parked_at: String,
    /// The order's status when it is no longer NEW: the message is stale (another path,
    /// a second message chain or the janitor, settled the order) and `--requeue` removes
    /// it without asking the gateway.
    pub stale: Option<OrderStatus>,
    /// What this run did with it.
    pub verdict: Option<Verdict>,
    /// Whether the message left the parking queue.
    pub removed: bool,
    /// The body's size when it was over the contract's limit (parked whole by an older
    /// version, or by a foreign publisher): it is held here, and stored by a discard, cut
    /// to its first [`order_closer_core::message::MAX_BODY`] bytes.
    pub oversized_bytes: Option<usize>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedReport {
    /// Dry run or not.
    pub dry_run: bool,
    /// Messages looked at.
    pub messages: usize,
    /// Messages removed from the parking queue.
    pub removed: usize,
    /// Messages per park reason.
    pub by_reason: BTreeMap<String, usize>,
    /// One line per message.
    pub lines: Vec<ParkedLine>,
    /// What cron should conclude.
    pub finding: Finding,
}

/// A failure of the parked command.
#[derive(Debug, Error)]
pub enum ParkedError {
    /// The broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<Unavailable> for ParkedError {
    fn from(e: Unavailable) -> Self {
        Self::Db(e.0)
    }
}

impl From<diesel::result::Error> for ParkedError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

/// Runs `action` over up to `limit` parked messages. `publisher` re-schedules orders
/// found not yet due; `actor` signs audit rows.
pub async fn run(
    channel: &Channel,
    publisher: &Publisher,
    decider: &Decider,
    action: ParkedAction,
    mode: Mode,
    limit: usize,
    actor: &str,
) -> Result<ParkedReport, ParkedError> {
    let queue = publisher.topology().parked_queue();
    // Take them all first (unacknowledged): a message handed back during the loop would
    // otherwise come straight back to us. Each body is cut to the contract's limit as it
    // arrives, so that holding `limit` messages costs at most `limit` lawful bodies
    // whatever was parked (one oversized body at a time is the most ever held whole).
    let mut held = Vec::new();
    let mut cuts = Vec::new();
    while held.len() < limit {
        let got = timed(
            "basic.get",
            channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }),
        )
        .await?;
        match got {
            Some(mut message) => {
                cuts.push(cut_oversized(&mut message.delivery.data));
                held.push(message);
            }
            None => break,
        }
    }
    let mut report = ParkedReport {
        dry_run: mode == Mode::DryRun,
        messages: held.len(),
        removed: 0,
        by_reason: BTreeMap::new(),
        lines: Vec::with_capacity(held.len()),
        finding: Finding::Clean,
    };
    for (message, cut) in held.iter().zip(&cuts) {
        let mut line = describe(message);
        line.oversized_bytes = cut.map(|c| c.original_bytes);
        *report.by_reason.entry(line.reason.clone()).or_default() += 1;
        let decoded = CloseMessage::decode(&message.delivery.data).ok();
        if let Some(close) = &decoded {
            let mut conn = db::conn(decider.pool()).await?;
            line.stale = orders::find(&mut conn, close.order_id)
                .await?
                .map(|o| o.status())
                .filter(|s| *s != OrderStatus::New);
        }
        let remove = match (action, &decoded) {
            (ParkedAction::List, _) => false,
            (ParkedAction::Requeue, None) => {
                line.verdict = Some(Verdict::NeedsOperator);
                false
            }
            (ParkedAction::Requeue, Some(close)) => {
                let attempt = AttemptInfo {
                    number: 0,
                    first_seen: None,
                    not_before: None,
                };
                // A parked refund failed for good: replaying it means sending it again.
                let outcome = async {
                    if close.job == Job::Refund && mode == Mode::Apply {
                        decider.reopen_refund(close.order_id).await?;
                    }
                    decider.act_on(close, attempt, mode).await
                }
                .await;
                let verdict = match &outcome {
                    Ok(o) => Verdict::from(o),
                    Err(_) => Verdict::DatabaseUnavailable,
                };
                line.verdict = Some(verdict);
                match outcome {
                    Ok(Outcome::NotDue { deadline, .. }) if mode == Mode::Apply => {
                        // Back on its way to the worker at its (new) deadline.
                        let mut fresh =
                            CloseMessage::new(close.order_id, close.out_trade_no.clone(), deadline);
                        fresh.first_seen = close.first_seen;
                        publisher.schedule(&fresh, Utc::now()).await?;
                        true
                    }
                    Ok(
                        Outcome::Decided { .. }
                        | Outcome::Refunded { .. }
                        | Outcome::Settled(_)
                        | Outcome::LostRace(_)
                        | Outcome::Missing,
                    ) => mode == Mode::Apply,
                    _ => false,
                }
            }
            (ParkedAction::Discard, _) => {
                line.verdict = None;
                if mode == Mode::Apply {
                    record_discard(
                        decider,
                        &decoded,
                        &line.reason,
                        &message.delivery.data,
                        actor,
                    )
                    .await?;
                    true
                } else {
                    false
                }
            }
        };
        line.removed = remove;
        report.lines.push(line);
    }
    // Settle every held message: remove the ones done with; park a fresh copy of the
    // rest, then remove the one taken.
    let mut settling = held.iter().zip(&report.lines).zip(&cuts);
    while let Some(((message, line), cut)) = settling.next() {
        if !line.removed
            && let Err(e) = repark(publisher, message, *cut).await
        {
            // Hand this one and the rest back as they are (a nack: never a reject).
            hand_back(message).await;
            for ((message, _), _) in settling {
                hand_back(message).await;
            }
            return Err(e.into());
        }
        let settled = timed(
            "basic.ack",
            message.delivery.acker.ack(BasicAckOptions::default()),
        )
        .await?;
        if !settled {
            return Err(BrokerError::ChannelGone {
                op: "settle parked message",
            }
            .into());
        }
    }
    report.removed = report.lines.iter().filter(|l| l.removed).count();
    report.finding = match action {
        ParkedAction::List | ParkedAction::Discard if report.messages == 0 => Finding::Clean,
        ParkedAction::List => Finding::NeedsAttention,
        ParkedAction::Discard => Finding::Fixed,
        ParkedAction::Requeue => {
            let verdicts = report.lines.iter().filter_map(|l| l.verdict);
            if report.removed < report.messages && mode == Mode::Apply {
                Finding::NeedsAttention
            } else {
                Finding::of(verdicts)
            }
        }
    };
    Ok(report)
}

/// Parks a fresh copy of a held message (confirmed), with the headers it was parked with
/// and, when the broker parked it, the broker's reason written into ours.
async fn repark(
    publisher: &Publisher,
    message: &BasicGetMessage,
    cut: Option<Cut>,
) -> Result<(), BrokerError> {
    let headers = headers(message);
    publisher
        .publish(
            &publisher.topology().close_exchange(),
            PARKED_KEY,
            &message.delivery.data,
            reparked_headers(&headers, cut),
        )
        .await
}

/// Hands a held message back to the parking queue after a failure (best effort: if the
/// channel is gone, the broker takes it back when it closes).
async fn hand_back(message: &BasicGetMessage) {
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    let _ = timed("basic.nack", message.delivery.acker.nack(requeue)).await;
}

fn headers(message: &BasicGetMessage) -> FieldTable {
    message
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default()
}

fn describe(message: &BasicGetMessage) -> ParkedLine {
    let headers = headers(message);
    let text = |key: &str| header_text(&headers, key).unwrap_or_else(|| "-".into());
    let decoded = CloseMessage::decode(&message.delivery.data).ok();
    // Parked by the broker (past the close queue's delivery limit): its reason, not ours.
    let death = (!headers.contains_key(HEADER_REASON))
        .then(|| BrokerDeath::of(&headers))
        .flatten();
    ParkedLine {
        order_id: decoded.as_ref().map(|m| m.order_id),
        out_trade_no: decoded.map(|m| m.out_trade_no),
        reason: death
            .as_ref()
            .map_or_else(|| text(HEADER_REASON), |d| d.reason.as_str().to_owned()),
        last_error: death
            .as_ref()
            .map_or_else(|| text(HEADER_LAST_ERROR), ToString::to_string),
        attempts: text(HEADER_ATTEMPTS),
        first_seen: text(HEADER_FIRST_SEEN),
        parked_at: death
            .as_ref()
            .and_then(|d| d.time)
            .map_or_else(|| text(HEADER_PARKED_AT), |t| t.to_rfc3339()),
        stale: None,
        verdict: None,
        removed: false,
        oversized_bytes: None,
    }
}

async fn record_discard(
    decider: &Decider,
    decoded: &Option<CloseMessage>,
    reason: &str,
    payload: &[u8],
    actor: &str,
) -> Result<(), ParkedError> {
    use diesel::ExpressionMethods;
    let mut conn = db::conn(decider.pool()).await?;
    // Link the order only if it exists (a parked message may name a ghost).
    let order_id = match decoded {
        Some(m) => orders::find(&mut conn, m.order_id).await?.map(|o| o.id),
        None => None,
    };
    diesel::insert_into(parked_discards::table)
        .values((
            parked_discards::order_id.eq(order_id),
            parked_discards::out_trade_no.eq(decoded.as_ref().map(|m| m.out_trade_no.clone())),
            parked_discards::park_reason.eq(reason),
            parked_discards::payload.eq(payload),
            parked_discards::actor.eq(actor),
        ))
        .execute(&mut conn)
        .await?;
    Ok(())
}
