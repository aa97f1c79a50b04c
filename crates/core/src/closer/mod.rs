//! The library call a shop's backend makes when it creates an order.
//!
//! The order row and its close schedule (an outbox row) are written by one statement, so
//! they commit together; after the commit the close message is published with a confirm
//! and the outbox row is deleted in the background (grouped with other orders' rows). If
//! the broker is down or the process dies in between, the outbox row stays and the
//! worker's relay publishes it, so no order is ever forgotten (a row whose delete was lost
//! is published a second time: the worker decides an order once however many messages
//! name it).
//!
//! The closer accepts orders for the channels it is handed, each checked against its
//! gateway's rules ([`crate::rules::Channels`]; the `order-closer` crate hands every
//! gateway's as `order_closer::gateway::rules::CHANNELS`).
//!
//! An order is created first, without a gateway; a trade (a payment attempt) is added when
//! the buyer picks a payment method, and another when they switch. Each open trade is
//! closed at its gateway before the order is closed:
//!
//! ```no_run
//! use std::time::Duration;
//! use order_closer_core::closer::{Closer, Due, NewOrder, NewTrade};
//! use order_closer_core::config::Settings;
//! use order_closer_core::rules::Channels;
//!
//! # async fn run(channels: Channels) -> Result<(), Box<dyn std::error::Error>> {
//! let closer = Closer::connect(&Settings::from_env()?, channels).await?;
//! let due = Due::After(Duration::from_secs(15 * 60));
//! let created = closer
//!     .create_order(NewOrder::without_trade("ORD-1001", 1234, "CNY", due))
//!     .await?;
//! println!("order {} closes at {}", created.order.id, created.order.deadline);
//! // The buyer clicks "pay with Alipay":
//! let added = closer
//!     .add_trade("ORD-1001", NewTrade::new("alipay", "ORD-1001"))
//!     .await?;
//! println!("make the Alipay trade expire by {}", added.expire_by);
//! // The one-call form: an order with its first trade, numbered as the order.
//! closer
//!     .create_order(NewOrder::new("wechat", "ORD-1002", 1234, due))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! To create the shop's own rows and ours atomically, call [`Closer::create_order_in`]
//! inside the shop's transaction, then [`Closer::publish`] after it commits.
//!
//! [`Closer::add_trade`] adds a payment attempt (`add_trade.rs`). [`Closer::cancel_order`],
//! [`Closer::extend_deadline`] and [`Closer::settle_otherwise`] change an order on request
//! (`requests.rs`).

mod add_trade;
mod requests;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use futures_util::future::join_all;
use secrecy::ExposeSecret;
use thiserror::Error;
use tokio_util::task::TaskTracker;

use crate::broker::BrokerError;
use crate::broker::link::Link;
use crate::broker::publisher::Publisher;
use crate::config::Settings;
use crate::db::batch::{Batcher, Job};
use crate::db::outbox::DeletePublished;
use crate::db::{self, DbError, DbPool, orders};
pub use crate::invalid::InvalidOrder;
use crate::message::CloseMessage;
use crate::order::Order;
use crate::rules::Channels;
pub use add_trade::{AddedTrade, EXPIRY_MARGIN, NewTrade, TradeError};
pub use requests::{CANCEL_WAIT, Cancelled, ChangeError, EXTEND_MARGIN};

/// Longest allowed time to pay.
pub const MAX_TIME_TO_PAY: Duration = Duration::from_secs(366 * 86_400);
/// How far in the past a deadline may be (an order due at once, give or take clock skew);
/// anything older is a mistake, not an order.
pub const MAX_DEADLINE_AGE: Duration = Duration::from_secs(3600);

/// When an order must be paid by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// This long after creation.
    After(Duration),
    /// At this instant.
    At(DateTime<Utc>),
}

/// An order to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The shop's order number, unique. With a `channel`, it is also the first trade's
    /// merchant trade number, in the channel's format ([`crate::rules::OrderRules`]).
    pub out_trade_no: String,
    /// Amount in minor units (fen), positive, within the channel's limit.
    pub amount_minor: i64,
    /// ISO 4217 code, one the channel takes; empty with a channel: the channel's first
    /// (set when the order is created).
    pub currency: String,
    /// The gateway of the order's first trade (`alipay`, `wechat`): the one-call form.
    /// None: an order without a trade yet ([`Closer::add_trade`] adds them).
    pub channel: Option<String>,
    /// The payment deadline.
    pub due: Due,
    /// The gateway's own reference of the first trade, for a gateway that looks trades up
    /// by it rather than by `out_trade_no` (1 to 255 characters); None for the others.
    pub gateway_ref: Option<String>,
}

impl NewOrder {
    /// An order with its first trade at `channel` (`alipay`, `wechat`), numbered as the
    /// order, in the channel's first currency (CNY for both, set when the order is
    /// created; see [`NewOrder::in_currency`]).
    pub fn new(
        channel: impl Into<String>,
        out_trade_no: impl Into<String>,
        amount_minor: i64,
        due: Due,
    ) -> Self {
        Self {
            channel: Some(channel.into()),
            ..Self::without_trade(out_trade_no, amount_minor, "", due)
        }
    }

    /// An order without a trade: the buyer has not picked a payment method yet. Its
    /// trades are added by [`Closer::add_trade`]; at its deadline, an order without any is
    /// closed without asking a gateway.
    pub fn without_trade(
        out_trade_no: impl Into<String>,
        amount_minor: i64,
        currency: impl Into<String>,
        due: Due,
    ) -> Self {
        Self {
            out_trade_no: out_trade_no.into(),
            amount_minor,
            currency: currency.into(),
            channel: None,
            due,
            gateway_ref: None,
        }
    }

    /// The same order with the gateway's own reference of its first trade.
    pub fn with_gateway_ref(mut self, gateway_ref: impl Into<String>) -> Self {
        self.gateway_ref = Some(gateway_ref.into());
        self
    }

    /// The same order in another currency.
    pub fn in_currency(mut self, currency: impl Into<String>) -> Self {
        self.currency = currency.into();
        self
    }
}

/// An order written and its close schedule committed, perhaps not yet published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingClose {
    /// The stored order.
    pub order: Order,
    /// The outbox row holding its close message.
    pub outbox_id: i64,
}

/// The result of [`Closer::create_order`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedOrder {
    /// The stored order.
    pub order: Order,
    /// Whether the close message reached the broker now (false: the relay will send it).
    pub published: bool,
}

/// Why an order could not be created.
#[derive(Debug, Error)]
pub enum CreateError {
    /// The order itself is wrong (nothing was written).
    #[error("invalid order: {0}")]
    Invalid(#[from] InvalidOrder),
    /// An order with this number exists already.
    #[error("an order with out_trade_no {0:?} already exists")]
    Duplicate(String),
    /// The database failed; nothing was written.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for CreateError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

/// Why [`Closer::connect`] failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Creates orders and schedules their close.
#[derive(Clone)]
pub struct Closer {
    pool: DbPool,
    /// The channels orders are accepted for, with their gateways' rules.
    channels: Channels,
    /// The way to the broker (None: the relay publishes everything).
    link: Option<Link>,
    /// Writes concurrent `create_order` calls in groups (one statement, one commit each).
    inserts: Batcher<InsertOrders>,
    /// Deletes the outbox rows of published close messages, in groups.
    published: Batcher<DeletePublished>,
    /// Those deletes, still running (see [`Closer::shutdown`]).
    background: TaskTracker,
    /// How long before its deadline an order still takes a trade ([`EXPIRY_MARGIN`]).
    expiry_margin: Duration,
}

/// Most outbox rows deleted by one statement.
const DELETE_GROUP: usize = 1_000;
/// Most concurrent `create_order` calls written by one statement.
const INSERT_GROUP: usize = 256;
/// Groups of `create_order` calls written at once (each on its own connection).
const INSERT_LANES: usize = 2;

impl Closer {
    /// Connects to the database and the broker and declares the topology. A broker that
    /// cannot be reached is an error here; use [`Closer::without_broker`] to create
    /// orders anyway and leave publishing to the relay. A broker connection lost later is
    /// re-established on a later call, on the next address of `AMQP_URL`
    /// ([`crate::broker::link`]); meanwhile the relay publishes.
    pub async fn connect(settings: &Settings, channels: Channels) -> Result<Self, ConnectError> {
        let database = &settings.database;
        let pool = db::ready_pool(database.url.expose_secret(), database.pool_size).await?;
        let link = Link::connect(&settings.broker, "order-closer library").await?;
        Ok(Self::linked(pool, Some(link), channels))
    }

    /// A closer over an existing pool and publisher, accepting orders for `channels`.
    pub fn new(pool: DbPool, publisher: Option<Publisher>, channels: Channels) -> Self {
        Self::linked(pool, publisher.map(Link::fixed), channels)
    }

    fn linked(pool: DbPool, link: Option<Link>, channels: Channels) -> Self {
        Self {
            channels,
            inserts: Batcher::with_lanes(pool.clone(), InsertOrders, INSERT_GROUP, INSERT_LANES),
            published: Batcher::new(pool.clone(), DeletePublished, DELETE_GROUP),
            background: TaskTracker::new(),
            pool,
            link,
            expiry_margin: EXPIRY_MARGIN,
        }
    }

    /// The same closer taking trades until `margin` before an order's deadline instead of
    /// [`EXPIRY_MARGIN`] (for deadlines of seconds: the demo, tests).
    pub fn with_expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = margin;
        self
    }

    /// A closer that only writes: the outbox relay publishes later.
    pub fn without_broker(pool: DbPool, channels: Channels) -> Self {
        Self::new(pool, None, channels)
    }

    /// The channels this closer accepts orders for.
    pub fn channels(&self) -> Channels {
        self.channels
    }

    /// Writes the order and its close schedule, then publishes. Concurrent calls are
    /// written together, one statement (and one commit) per group; a group the database
    /// rejects is written again one order at a time, so only a bad order fails.
    #[tracing::instrument(skip_all, fields(out_trade_no = %new.out_trade_no))]
    pub async fn create_order(&self, mut new: NewOrder) -> Result<CreatedOrder, CreateError> {
        let deadline = validate(self.channels, &mut new, Utc::now())?;
        let no = new.out_trade_no.clone();
        let pending = self
            .inserts
            .submit((new, deadline))
            .await
            .map_err(|e| create_error(e, &[no.as_str()]))?;
        let published = self.publish(&pending).await;
        Ok(CreatedOrder {
            order: pending.order,
            published,
        })
    }

    /// Creates up to [`MAX_BATCH`] orders at once: every order and its close schedule in
    /// one statement (all are created or none is), then every close message published
    /// with its confirm in flight at once. Any invalid order fails the whole call, naming
    /// it; so does an `out_trade_no` that exists already.
    #[tracing::instrument(skip_all, fields(orders = new.len()))]
    pub async fn create_orders(&self, new: &[NewOrder]) -> Result<Vec<CreatedOrder>, CreateError> {
        let mut new = new.to_vec();
        let deadlines = validate_all(self.channels, &mut new, Utc::now())?;
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let numbers: Vec<&str> = new.iter().map(|n| n.out_trade_no.as_str()).collect();
        let mut conn = db::conn(&self.pool).await?;
        let items: Vec<(&NewOrder, DateTime<Utc>)> = new.iter().zip(deadlines).collect();
        let pending = insert(&mut conn, &items)
            .await
            .map_err(|e| create_error(DbError::Query(e), &numbers))?;
        drop(conn);
        let published = self.publish_all(&pending).await;
        Ok(pending
            .into_iter()
            .zip(published)
            .map(|(p, published)| CreatedOrder {
                order: p.order,
                published,
            })
            .collect())
    }

    /// Writes the order and its close schedule using the caller's connection, inside the
    /// caller's open transaction if there is one (both rows are written by one statement,
    /// so they commit together either way). Call [`Closer::publish`] after the commit.
    pub async fn create_order_in(
        &self,
        conn: &mut AsyncPgConnection,
        new: &NewOrder,
    ) -> Result<PendingClose, CreateError> {
        let mut new = new.clone();
        let deadline = validate(self.channels, &mut new, Utc::now())?;
        insert(conn, &[(&new, deadline)])
            .await
            .map_err(|e| create_error(DbError::Query(e), &[new.out_trade_no.as_str()]))?
            .pop()
            .ok_or_else(|| CreateError::Db(DbError::Query(diesel::result::Error::NotFound)))
    }

    /// Publishes a committed close schedule and deletes its outbox row in the background.
    /// Returns false (and logs) when the broker is unavailable: the relay publishes it
    /// later, so the order is not lost.
    pub async fn publish(&self, pending: &PendingClose) -> bool {
        self.publish_all(std::slice::from_ref(pending))
            .await
            .first()
            .copied()
            .unwrap_or(false)
    }

    /// Waits for the background work of this closer (and its clones) to finish: the
    /// deletes of published close messages' outbox rows. Call it before the process
    /// exits. Without it, a row whose delete had not run yet stays in the outbox, and
    /// the relay publishes that close message a second time after
    /// `ORDER_CLOSER_OUTBOX_GRACE` (harmless, but a second message chain for the order).
    /// Work submitted after the call is tracked again.
    pub async fn shutdown(&self) {
        self.background.close();
        self.background.wait().await;
        self.background.reopen();
    }

    /// Publishes committed close schedules, every confirm in flight at once; whether each
    /// reached the broker.
    async fn publish_all(&self, pending: &[PendingClose]) -> Vec<bool> {
        let Some(link) = &self.link else {
            return vec![false; pending.len()];
        };
        let publisher = match link.publisher().await {
            Ok(publisher) => publisher,
            Err(BrokerError::Reconnecting) => {
                tracing::debug!(
                    orders = pending.len(),
                    "broker connection being re-established; the close schedules are left to the relay"
                );
                return vec![false; pending.len()];
            }
            Err(e) => {
                tracing::warn!(error = %e, orders = pending.len(), "broker unavailable; the close schedules are left to the relay");
                return vec![false; pending.len()];
            }
        };
        let publisher = &publisher;
        let now = Utc::now();
        let results = join_all(pending.iter().map(|p| {
            let message =
                CloseMessage::new(p.order.id, p.order.out_trade_no.clone(), p.order.deadline);
            async move { publisher.schedule(&message, now).await }
        }))
        .await;
        let mut failures = 0;
        let published = pending
            .iter()
            .zip(results)
            .map(|(p, result)| match result {
                Ok(_) => {
                    let deletes = self.published.clone();
                    let id = p.outbox_id;
                    self.background.spawn(async move {
                        if let Err(e) = deletes.submit(id).await {
                            tracing::debug!(error = %e, "outbox row left for the relay");
                        }
                    });
                    true
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(error = %e, "broker unavailable; the close schedule is left to the relay");
                    }
                    failures += 1;
                    false
                }
            })
            .collect();
        if failures > 1 {
            tracing::warn!(failures, "close schedules left to the relay");
        }
        published
    }
}

/// Most orders [`Closer::create_orders`] takes at once.
pub const MAX_BATCH: usize = 10_000;

/// Writes validated orders (with their deadlines) and their close schedules in one
/// statement. Their ids are taken from the sequence first, so that each close message,
/// which names its order, is written by the same statement.
async fn insert(
    conn: &mut AsyncPgConnection,
    new: &[(&NewOrder, DateTime<Utc>)],
) -> diesel::QueryResult<Vec<PendingClose>> {
    let ids = orders::reserve_ids(conn, new.len()).await?;
    let payloads: Vec<String> = new
        .iter()
        .zip(&ids)
        .map(|((n, deadline), id)| {
            CloseMessage::new(*id, n.out_trade_no.clone(), *deadline).encode_text()
        })
        .collect();
    let rows: Vec<orders::Scheduled<'_>> = new
        .iter()
        .zip(&ids)
        .zip(&payloads)
        .map(|(((n, deadline), id), payload)| orders::Scheduled {
            id: *id,
            row: orders::NewOrderRow {
                out_trade_no: &n.out_trade_no,
                channel: n.channel.as_deref(),
                amount_minor: n.amount_minor,
                currency: &n.currency,
                deadline: *deadline,
                gateway_ref: n.gateway_ref.as_deref(),
            },
            close_payload: payload,
        })
        .collect();
    Ok(orders::insert_scheduled(conn, &rows)
        .await?
        .into_iter()
        .map(|(order, outbox_id)| PendingClose { order, outbox_id })
        .collect())
}

/// The group job behind [`Closer::create_order`].
struct InsertOrders;

#[async_trait]
impl Job for InsertOrders {
    type Item = (NewOrder, DateTime<Utc>);
    type Output = PendingClose;

    async fn run(
        &self,
        conn: &mut AsyncPgConnection,
        items: &[(NewOrder, DateTime<Utc>)],
    ) -> diesel::QueryResult<Vec<PendingClose>> {
        let items: Vec<(&NewOrder, DateTime<Utc>)> = items.iter().map(|(n, d)| (n, *d)).collect();
        insert(conn, &items).await
    }
}

/// A database failure while creating, a unique violation named as the duplicate order.
fn create_error(e: DbError, numbers: &[&str]) -> CreateError {
    match e {
        DbError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            info,
        )) => CreateError::Duplicate(duplicate_key(info.details(), numbers)),
        other => CreateError::Db(other),
    }
}

/// The `out_trade_no` a unique violation names: an order's (`Key (out_trade_no)=(X)
/// already exists.`) or the one-call form's first trade's (`Key (channel,
/// out_trade_no)=(wechat, X) ...`: the number follows the channel, whose name has no
/// comma); else the only order's.
fn duplicate_key(details: Option<&str>, numbers: &[&str]) -> String {
    let named = details
        .and_then(|d| d.split_once("=(")?.1.split_once(')'))
        .map(|(key, _)| key);
    let number = named.and_then(|key| {
        [Some(key), key.split_once(", ").map(|(_, no)| no)]
            .into_iter()
            .flatten()
            .find(|candidate| numbers.contains(candidate))
    });
    match (number, numbers) {
        (Some(key), _) => key.to_owned(),
        (None, [only]) => (*only).to_owned(),
        (None, _) => "one of the orders".to_owned(),
    }
}

/// Checks every order (setting the currency of those that name none); returns their
/// deadlines, or the first error naming its order.
fn validate_all(
    channels: Channels,
    new: &mut [NewOrder],
    now: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, InvalidOrder> {
    if new.len() > MAX_BATCH {
        return Err(InvalidOrder::TooMany {
            count: new.len(),
            max: MAX_BATCH,
        });
    }
    let many = new.len() > 1;
    new.iter_mut()
        .enumerate()
        .map(|(index, n)| {
            validate(channels, n, now).map_err(|reason| {
                if many {
                    InvalidOrder::InBatch {
                        index,
                        out_trade_no: n.out_trade_no.clone(),
                        reason: Box::new(reason),
                    }
                } else {
                    reason
                }
            })
        })
        .collect()
}

/// Checks an order: one with a first trade against its channel's rules (naming no
/// currency, it gets the channel's first), one without against what every order must be.
/// Returns its deadline.
fn validate(
    channels: Channels,
    new: &mut NewOrder,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, InvalidOrder> {
    match new.channel.as_deref() {
        Some(channel) => {
            let rules = known_channel(channels, channel)?;
            if new.currency.is_empty()
                && let Some(first) = rules.currencies.first()
            {
                new.currency = (*first).to_owned();
            }
            rules.check(&new.out_trade_no, &new.currency, new.amount_minor)?;
            check_gateway_ref(new.gateway_ref.as_deref())?;
        }
        None => check_without_trade(channels, new)?,
    }
    let deadline = match new.due {
        Due::After(d) => {
            let too_long = InvalidOrder::TimeToPayTooLong {
                given: d,
                max: MAX_TIME_TO_PAY,
            };
            if d > MAX_TIME_TO_PAY {
                return Err(too_long);
            }
            now + chrono::Duration::from_std(d).map_err(|_| too_long)?
        }
        Due::At(at) => {
            if (at - now).to_std().is_ok_and(|d| d > MAX_TIME_TO_PAY) {
                return Err(InvalidOrder::DeadlineTooFar(at));
            }
            if (now - at).to_std().is_ok_and(|d| d > MAX_DEADLINE_AGE) {
                return Err(InvalidOrder::DeadlineTooOld {
                    deadline: at,
                    max_age: MAX_DEADLINE_AGE,
                });
            }
            at
        }
    };
    Ok(deadline)
}

/// The rules of a channel the closer accepts.
fn known_channel(
    channels: Channels,
    channel: &str,
) -> Result<&'static crate::rules::OrderRules, InvalidOrder> {
    channels
        .for_channel(channel)
        .ok_or_else(|| InvalidOrder::UnknownChannel {
            channel: channel.to_owned(),
            supported: channels.names().collect(),
        })
}

/// A gateway reference, if given, is 1 to 255 printable characters.
fn check_gateway_ref(gateway_ref: Option<&str>) -> Result<(), InvalidOrder> {
    match gateway_ref {
        Some(r) if r.is_empty() || r.len() > 255 || r.chars().any(char::is_control) => {
            Err(InvalidOrder::GatewayRef { bytes: r.len() })
        }
        _ => Ok(()),
    }
}

/// An order without a trade: a number a close message can carry, a positive amount, and
/// a currency some accepted channel takes (each trade is checked by its channel's rules
/// when it is added). A gateway reference belongs to a trade, so it needs a channel.
fn check_without_trade(channels: Channels, new: &NewOrder) -> Result<(), InvalidOrder> {
    let max = crate::message::MAX_OUT_TRADE_NO;
    let no = &new.out_trade_no;
    if no.is_empty() || no.len() > max || no.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidOrder::OrderNumber {
            out_trade_no: no.clone(),
            max,
        });
    }
    if new.amount_minor <= 0 {
        return Err(InvalidOrder::AmountNotPositive(new.amount_minor));
    }
    let taken = channels
        .names()
        .filter_map(|name| channels.for_channel(name))
        .any(|rules| rules.currencies.contains(&new.currency.as_str()));
    if !taken {
        return Err(InvalidOrder::CurrencyNotTaken {
            currency: new.currency.clone(),
            supported: channels.names().collect(),
        });
    }
    if new.gateway_ref.is_some() {
        return Err(InvalidOrder::GatewayRef { bytes: 0 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::OrderRules;

    /// A gateway's rules, as a gateway declares them.
    const SHOP: OrderRules = OrderRules {
        channel: "shop",
        currencies: &["CNY"],
        min_out_trade_no: 1,
        max_out_trade_no: 64,
        out_trade_no_extra_chars: "_.-",
        max_amount_minor: 10_000_000_000,
    };
    const CHANNELS: Channels = Channels::new(&[&SHOP]);

    fn check(order: &NewOrder, now: DateTime<Utc>) -> Result<NewOrder, InvalidOrder> {
        let mut order = order.clone();
        validate(CHANNELS, &mut order, now).map(|_| order)
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let now = Utc::now();
        let ok = NewOrder::new("shop", "ORD-1", 100, Due::After(Duration::from_secs(60)));
        let checked = check(&ok, now).unwrap();
        assert_eq!(checked.currency, "CNY", "the channel's first currency");
        let cases = [
            (
                NewOrder {
                    out_trade_no: String::new(),
                    ..ok.clone()
                },
                "out_trade_no",
            ),
            (
                NewOrder {
                    out_trade_no: "a b".into(),
                    ..ok.clone()
                },
                "out_trade_no",
            ),
            (
                NewOrder {
                    out_trade_no: "x".repeat(65),
                    ..ok.clone()
                },
                "out_trade_no",
            ),
            (
                NewOrder {
                    amount_minor: 0,
                    ..ok.clone()
                },
                "amount",
            ),
            (
                NewOrder {
                    channel: Some("paypal".into()),
                    ..ok.clone()
                },
                "channel",
            ),
            (
                NewOrder {
                    currency: "USD".into(),
                    ..ok.clone()
                },
                "currency",
            ),
            (
                NewOrder {
                    due: Due::After(Duration::from_secs(400 * 86_400)),
                    ..ok.clone()
                },
                "time to pay",
            ),
            (
                NewOrder {
                    amount_minor: 9_200_000_000_000_000_000,
                    ..ok.clone()
                },
                "single-payment limit",
            ),
            (
                NewOrder {
                    due: Due::At("1000-01-01T00:00:00Z".parse().unwrap()),
                    ..ok.clone()
                },
                "in the past",
            ),
        ];
        // The edges are accepted: the largest payment, a deadline just past.
        let largest = NewOrder {
            amount_minor: SHOP.max_amount_minor,
            ..ok.clone()
        };
        assert!(check(&largest, now).is_ok());
        let just_past = NewOrder {
            due: Due::At(now - chrono::Duration::seconds(5)),
            ..ok.clone()
        };
        assert!(check(&just_past, now).is_ok());
        for (order, word) in cases {
            let err = check(&order, now).unwrap_err().to_string();
            assert!(err.contains(word), "{err}");
        }
    }

    #[test]
    fn a_duplicate_names_the_order_number_whichever_key_was_violated() {
        let numbers = ["A-1", "B-2"];
        let order = Some("Key (out_trade_no)=(B-2) already exists.");
        assert_eq!(duplicate_key(order, &numbers), "B-2");
        // The one-call form's first trade: a number its channel has already.
        let trade = Some("Key (channel, out_trade_no)=(wechat, A-1) already exists.");
        assert_eq!(duplicate_key(trade, &numbers), "A-1");
        // A key that is no order number (a gateway reference): the only order, if one.
        let reference = Some("Key (channel, gateway_ref)=(wechat, pi_1) already exists.");
        assert_eq!(duplicate_key(reference, &["A-1"]), "A-1");
        assert_eq!(duplicate_key(reference, &numbers), "one of the orders");
        assert_eq!(duplicate_key(None, &["A-1"]), "A-1");
    }

    #[test]
    fn an_order_without_a_trade_is_checked_for_what_every_order_must_be() {
        let now = Utc::now();
        let due = Due::After(Duration::from_secs(60));
        let ok = NewOrder::without_trade("ORD 1".replace(' ', "-"), 100, "CNY", due);
        assert_eq!(check(&ok, now).unwrap().channel, None);
        let cases = [
            (NewOrder::without_trade("", 100, "CNY", due), "order number"),
            (
                NewOrder::without_trade("a b", 100, "CNY", due),
                "order number",
            ),
            (
                NewOrder::without_trade("x".repeat(65), 100, "CNY", due),
                "order number",
            ),
            (
                NewOrder::without_trade("A\n", 100, "CNY", due),
                "order number",
            ),
            (NewOrder::without_trade("A", 0, "CNY", due), "amount"),
            (
                NewOrder::without_trade("A", 100, "USD", due),
                "currency \"USD\"",
            ),
            (NewOrder::without_trade("A", 100, "", due), "currency \"\""),
            (
                NewOrder::without_trade("A", 100, "CNY", due).with_gateway_ref("pi_1"),
                "gateway_ref",
            ),
        ];
        for (order, word) in cases {
            let err = check(&order, now).unwrap_err().to_string();
            assert!(err.contains(word), "{word}: {err}");
        }
    }
}
