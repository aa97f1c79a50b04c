//! The notify endpoint: the gateways' payment notifications, applied through the same
//! guarded transition as the worker's decisions, so that whichever path learns of a
//! payment first wins and the other is a no-op.
//!
//! - A **verified** notification (signature, our merchant, a fresh one) saying "paid" with
//!   the order's amount is the gateway's answer: NEW -> PAID with its audit row (actor
//!   `notify:<host>:<pid>`, the raw notification kept) and the `order.paid` event, in one transaction.
//!   Already PAID: nothing is written. CLOSED: a `paid_after_close` anomaly and its event,
//!   once however often the notification is resent, then the policy: held for an operator,
//!   or its refund requested in the same transaction ([`crate::decide::refund`]).
//! - A notification that does not name our merchant (signed or not) is refused before
//!   anything is read or asked: the gateway's verifier says so ([`Claim::NotOurs`]).
//! - Anything else that names an order of ours (a bad signature, an amount that differs,
//!   a state we do not act on, a replay) is only a **hint**: we ask the gateway
//!   ourselves, within [`hints::HintBudget`], and apply its signed answer. Only a payment
//!   is applied before the deadline; closing stays the worker's.
//! - The gateway's "handled" reply is sent only after the transaction committed; when
//!   the database cannot be used the reply makes the gateway send it again.
//!
//! The same handler serves `order-closer notify` ([`http::router`]) and shops with their
//! own HTTP stack ([`Notifier::handle`]: headers and raw body in, the reply out).

pub mod hints;
pub mod http;
pub mod outcome;
pub mod reply;
pub mod settings;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::Utc;
use tracing::{Instrument, info, info_span, warn};

use crate::decide::refund::PolicyEffect;
use crate::decide::{Cause, Decider, MAX_GROUP, Mode, Outcome, Unavailable};
use crate::metrics::Metrics;
use hints::{HintBudget, Refusal};
use order_closer_core::db::batch::Batcher;
use order_closer_core::db::trades::{FindByKey, TradeKey};
use order_closer_core::money::format_minor;
use order_closer_core::order::{Order, OrderStatus};
use order_closer_core::trade::{Trade, TradeStatus};
use order_closer_gateway::TradeState;
use order_closer_gateway::notice::{Claim, Notice, NotifyVerifier, Reply};
pub use outcome::NotifyOutcome;
use reply::{Applied, Finding, Hint, Trust};
pub use settings::NotifySettings;

/// Largest notification body (a real one is about 1.5 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Default time between two hint queries about one order.
pub const HINT_SPACING: Duration = Duration::from_secs(5);

/// Default number of hint queries in flight at once.
pub const HINT_CONCURRENCY: usize = 16;

/// Default number of hint queries a second, all orders together
/// (`ORDER_CLOSER_HINT_RATE`): a twentieth of a gateway's default rate limit. A genuine
/// notification is verified and needs none; hints are the rare exception.
pub const HINT_RATE: NonZeroU32 = NonZeroU32::new(10).unwrap();

/// What one notification led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The outcome.
    pub outcome: NotifyOutcome,
    /// The reply to send.
    pub reply: Reply,
    /// Why, in words (logged).
    pub detail: String,
}

/// Applies payment notifications.
pub struct Notifier {
    decider: Decider,
    /// Reads trades by (channel, number), each with its order, grouped with the other
    /// notifications arriving together.
    reads: Batcher<FindByKey>,
    verifiers: HashMap<String, Arc<dyn NotifyVerifier>>,
    hints: Arc<HintBudget>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// A notifier deciding with `decider` (its actor names the audit rows, its gateways
    /// answer the hint queries, its metrics count the notifications).
    pub fn new(decider: Decider) -> Self {
        let verifiers = decider
            .gateways()
            .verifiers()
            .map(|(channel, v)| (channel.to_owned(), Arc::clone(v)))
            .collect();
        Self {
            verifiers,
            metrics: Arc::clone(decider.metrics()),
            reads: Batcher::new(decider.pool().clone(), FindByKey, MAX_GROUP),
            decider,
            hints: HintBudget::new(HINT_SPACING, HINT_CONCURRENCY, HINT_RATE),
        }
    }

    /// Registers the verifier of a channel's notifications (`POST /notify/{channel}`).
    pub fn with_verifier(mut self, channel: &str, verifier: Arc<dyn NotifyVerifier>) -> Self {
        self.verifiers.insert(channel.to_owned(), verifier);
        self
    }

    /// Another hint-query budget.
    pub fn with_hint_budget(mut self, budget: Arc<HintBudget>) -> Self {
        self.hints = budget;
        self
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handles one notification for `channel` and returns the reply to send; for shops
    /// that mount the endpoint in their own HTTP stack.
    pub async fn handle(&self, channel: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
        self.handle_notification(channel, headers, body).await.reply
    }

    /// Handles one notification and says what became of it.
    pub async fn handle_notification(
        &self,
        channel: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Handled {
        let span = span(channel);
        let handled = self
            .handle_inner(channel, headers, body)
            .instrument(span.clone())
            .await;
        span.in_scope(|| self.record(&handled));
        handled
    }

    /// Counts and logs what became of one notification.
    fn record(&self, handled: &Handled) {
        self.metrics.notification(handled.outcome);
        match handled.outcome {
            NotifyOutcome::Rejected | NotifyOutcome::DatabaseUnavailable => {
                warn!(outcome = %handled.outcome, detail = %handled.detail, status = handled.reply.status, "notification not applied")
            }
            _ => {
                info!(outcome = %handled.outcome, detail = %handled.detail, "notification handled")
            }
        }
    }

    /// A request whose body was not read (a head that cannot be a notification, a body
    /// over [`MAX_BODY_BYTES`], one cut off or late): refused with `status` in the
    /// channel's own reply format, and counted as rejected.
    pub fn refuse_unread(&self, channel: &str, status: u16, why: &str) -> Reply {
        let handled = match self.verifier(channel) {
            Ok(v) => done(v.as_ref(), Finding::Unread { status }, why.to_owned()),
            Err(no_channel) => no_channel,
        };
        span(channel).in_scope(|| self.record(&handled));
        handled.reply
    }

    fn verifier(&self, channel: &str) -> Result<&Arc<dyn NotifyVerifier>, Handled> {
        self.verifiers.get(channel).ok_or_else(|| {
            handled(
                Finding::NoSuchChannel,
                None,
                "no verifier for this channel".into(),
            )
        })
    }

    async fn handle_inner(&self, channel: &str, headers: &HeaderMap, body: &[u8]) -> Handled {
        let verifier = match self.verifier(channel) {
            Ok(v) => Arc::clone(v),
            Err(no_channel) => return no_channel,
        };
        let v = verifier.as_ref();
        if body.len() > MAX_BODY_BYTES {
            return done(
                v,
                Finding::TooLarge,
                format!("a body of {} bytes, over {MAX_BODY_BYTES}", body.len()),
            );
        }
        let notice = match v.read(headers, body) {
            Ok(notice) => notice,
            Err(e) => return done(v, Finding::Malformed, e.to_string()),
        };
        tracing::Span::current().record("out_trade_no", notice.out_trade_no.as_str());
        if let Claim::NotOurs { reason } = &notice.claim {
            self.metrics.hint_refused(Refusal::NotOurMerchant);
            return done(
                v,
                Finding::NotOurs,
                format!("{reason}: not addressed to us, nothing read or asked"),
            );
        }
        let (order, trade) = match self.find(channel, &notice.out_trade_no).await {
            Ok(Some(found)) => found,
            // A verified notification about an order we do not have is not ours (another
            // system on the same merchant account): resending cannot change that. An
            // unverified one is answered with a refusal and costs no query.
            Ok(None) => {
                let trust = match notice.claim {
                    Claim::Verified { .. } => Trust::Verified,
                    Claim::Unverified { .. } | Claim::NotOurs { .. } => Trust::Unverified,
                };
                return done(v, Finding::UnknownOrder(trust), "no such order".into());
            }
            Err(e) => return unavailable(v, &e),
        };
        match trusted_payment(&notice, &order) {
            Ok(paid) => match self
                .apply(&order, &trade, paid, &notice.raw, Cause::Notification)
                .await
            {
                Ok((applied, detail)) => done(v, Finding::Verified(applied), detail),
                Err(e) => unavailable(v, &e),
            },
            Err(why) => self.hint(v, &order, &trade, &why).await,
        }
    }

    /// The trade a notification names at its channel, with its order.
    async fn find(
        &self,
        channel: &str,
        out_trade_no: &str,
    ) -> Result<Option<(Order, Trade)>, Unavailable> {
        let key = TradeKey::number(channel, out_trade_no);
        Ok(self
            .reads
            .submit(key)
            .await?
            .map(|(trade, order)| (order, trade)))
    }

    /// A payment the gateway vouches for: PAID, already PAID, or paid after close; says
    /// what became of it, and why.
    async fn apply(
        &self,
        order: &Order,
        trade: &Trade,
        paid: &TradeState,
        evidence: &str,
        cause: Cause,
    ) -> Result<(Applied, String), Unavailable> {
        match order.status() {
            OrderStatus::Paid if order.paid_through(trade.id, paid_trade_no(paid)) => {
                Ok((Applied::AlreadyPaid, "the order is PAID already".into()))
            }
            OrderStatus::Paid if trade.status == TradeStatus::Paid => Ok((
                Applied::AlreadyPaid,
                "this second payment was recorded before".into(),
            )),
            // Paid through another trade: the buyer paid twice.
            OrderStatus::Paid => {
                self.decider
                    .apply_evidence(order, trade, paid, evidence, cause, Mode::Apply)
                    .await?;
                Ok((
                    Applied::AlreadyPaid,
                    format!(
                        "the order is PAID through another trade; this payment on {} trade {} is a duplicate_payment",
                        trade.channel, trade.out_trade_no
                    ),
                ))
            }
            OrderStatus::Closed => self.paid_after_close(order, trade, paid).await,
            OrderStatus::New => {
                match self
                    .decider
                    .apply_evidence(order, trade, paid, evidence, cause, Mode::Apply)
                    .await?
                {
                    Outcome::Decided {
                        status: OrderStatus::Paid,
                        decision_id,
                        ..
                    } => {
                        if let TradeState::Paid {
                            paid_at: Some(at), ..
                        } = paid
                        {
                            self.metrics
                                .payment_to_paid((Utc::now() - *at).to_std().unwrap_or_default());
                        }
                        // Its other open trades are closed at their gateways now, not at
                        // the deadline: each is a chance to pay twice.
                        self.decider.close_others_soon(order).await?;
                        Ok((
                            Applied::Paid,
                            format!("NEW -> PAID (decision {decision_id})"),
                        ))
                    }
                    Outcome::LostRace(OrderStatus::Paid) => Ok((
                        Applied::AlreadyPaid,
                        "another actor marked it PAID first".into(),
                    )),
                    // The worker closed it a moment ago: re-read and record the payment
                    // on the closed order.
                    Outcome::LostRace(OrderStatus::Closed) => {
                        match self.find(&trade.channel, &trade.out_trade_no).await? {
                            Some((now, trade)) => self.paid_after_close(&now, &trade, paid).await,
                            None => Ok((Applied::Vanished, "the order vanished".into())),
                        }
                    }
                    other => Ok((Applied::Unexpected, format!("unexpected outcome {other:?}"))),
                }
            }
        }
    }

    /// A payment on a CLOSED order: recorded (and announced) once, then held for an
    /// operator or refunded as the policy says.
    async fn paid_after_close(
        &self,
        order: &Order,
        trade: &Trade,
        paid: &TradeState,
    ) -> Result<(Applied, String), Unavailable> {
        let (paid_minor, trade_no) = match paid {
            TradeState::Paid {
                trade_no,
                amount_minor,
                ..
            } => (*amount_minor, Some(trade_no.as_str())),
            _ => (order.amount_minor, None),
        };
        let detail = format!(
            "the gateway reports a payment of {} (trade {}) on an order we closed",
            format_minor(paid_minor),
            trade_no.unwrap_or("unknown")
        );
        let after = self
            .decider
            .paid_after_close(order, trade, paid_minor, trade_no, &detail, Mode::Apply)
            .await?;
        let detail = match (after.new_anomaly, after.policy) {
            (_, PolicyEffect::RefundRequested) => format!("{detail}; its refund is requested"),
            (true, _) => format!("{detail}; held for an operator"),
            (false, _) => "paid after close, recorded before".into(),
        };
        Ok((Applied::PaidAfterClose, detail))
    }

    /// Not trusted by itself: ask the gateway (within the budget) and apply its answer.
    /// A PAID order has nothing left to learn: no query.
    async fn hint(
        &self,
        v: &dyn NotifyVerifier,
        order: &Order,
        trade: &Trade,
        why: &str,
    ) -> Handled {
        if order.status() == OrderStatus::Paid && !trade.is_open() {
            return done(
                v,
                Finding::Hint(Hint::OrderPaid),
                format!("{why}; the order is PAID already, nothing to ask"),
            );
        }
        let _grant = match self.hints.try_begin(&order.out_trade_no) {
            Ok(grant) => grant,
            Err(refusal) => {
                self.metrics.hint_refused(refusal);
                let because = match refusal {
                    Refusal::TooSoon => "the gateway was asked about this order moments ago",
                    Refusal::Busy => "too many gateway queries in flight",
                    Refusal::RateLimited => "this second's hint queries are spent",
                    Refusal::NotOurMerchant => "it does not name our merchant",
                };
                return done(
                    v,
                    Finding::Hint(Hint::Refused(refusal)),
                    format!("{why}; {because}"),
                );
            }
        };
        let answer = match self.decider.query_gateway(trade).await {
            None => {
                return done(
                    v,
                    Finding::Hint(Hint::NoGateway),
                    format!("{why}; no gateway serves channel {:?}", trade.channel),
                );
            }
            Some(Err(e)) => {
                return done(
                    v,
                    Finding::Hint(Hint::QueryFailed),
                    format!("{why}; the gateway query failed: {e}"),
                );
            }
            Some(Ok(answer)) => answer,
        };
        let (hint, detail) = match (&answer.state, order.status()) {
            (TradeState::Paid { .. }, _) => {
                match self
                    .apply(
                        order,
                        trade,
                        &answer.state,
                        &answer.raw,
                        Cause::NotificationHint,
                    )
                    .await
                {
                    Ok((applied, detail)) => (Hint::Applied(applied), detail),
                    Err(e) => return unavailable(v, &e),
                }
            }
            (state, _) => (
                Hint::NothingToApply,
                format!("the gateway says {state:?}; nothing to apply"),
            ),
        };
        let finding = Finding::Hint(hint);
        // What counts as a query says what the gateway was asked, and why.
        let detail = match reply::answer(finding).outcome {
            NotifyOutcome::Queried => format!("{why}; asked the gateway: {detail}"),
            _ => detail,
        };
        done(v, finding, detail)
    }
}

/// The gateway's trade number a payment names.
fn paid_trade_no(paid: &TradeState) -> Option<&str> {
    match paid {
        TradeState::Paid { trade_no, .. } => Some(trade_no),
        _ => None,
    }
}

/// The payment a notification vouches for, or why it is only a hint.
fn trusted_payment<'a>(notice: &'a Notice, order: &Order) -> Result<&'a TradeState, String> {
    let state = match &notice.claim {
        Claim::Unverified { reason } | Claim::NotOurs { reason } => return Err(reason.clone()),
        Claim::Verified { state } => state,
    };
    match state {
        TradeState::Paid { amount_minor, .. } if *amount_minor == order.amount_minor => Ok(state),
        TradeState::Paid { amount_minor, .. } => Err(format!(
            "it says {} was paid, the order is for {}",
            format_minor(*amount_minor),
            format_minor(order.amount_minor)
        )),
        other => Err(format!("it reports {other:?}, which we do not act on")),
    }
}

/// The span of one notification; the channel name comes from the URL, so it is cut short.
fn span(channel: &str) -> tracing::Span {
    let shown: String = channel.chars().take(32).collect();
    info_span!("notify", channel = %shown, out_trade_no = tracing::field::Empty)
}

/// What became of a notification, replied to in the gateway's words (`rule`, None at a
/// channel no gateway serves) as [`reply::reply`] says.
fn handled(finding: Finding, rule: Option<&dyn NotifyVerifier>, detail: String) -> Handled {
    let (outcome, reply) = reply::reply(finding, rule);
    Handled {
        outcome,
        reply,
        detail,
    }
}

/// [`handled`], at a channel a gateway serves.
fn done(v: &dyn NotifyVerifier, finding: Finding, detail: String) -> Handled {
    handled(finding, Some(v), detail)
}

fn unavailable(v: &dyn NotifyVerifier, e: &Unavailable) -> Handled {
    done(
        v,
        Finding::DatabaseDown,
        format!("the database cannot be used ({e}); the gateway will send it again"),
    )
}
