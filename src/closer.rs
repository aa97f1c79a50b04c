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
//! ```no_run
//! use std::time::Duration;
//! use order_closer::closer::{Closer, Due, NewOrder};
//! use order_closer::config::Settings;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let closer = Closer::connect(&Settings::from_env()?).await?;
//! let created = closer
//!     .create_order(NewOrder::alipay("ORD-1001", 1234, Due::After(Duration::from_secs(15 * 60))))
//!     .await?;
//! println!("order {} closes at {}", created.order.id, created.order.deadline);
//! # Ok(()) }
//! ```
//!
//! To create the shop's own rows and ours atomically, call [`Closer::create_order_in`]
//! inside the shop's transaction, then [`Closer::publish`] after it commits.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use futures_util::future::join_all;
use thiserror::Error;

use crate::broker::publisher::Publisher;
use crate::broker::{self, BrokerError};
use crate::config::Settings;
use crate::db::batch::Batcher;
use crate::db::outbox::DeletePublished;
use crate::db::{self, DbError, DbPool, orders};
use crate::message::{CloseMessage, MAX_OUT_TRADE_NO};
use crate::order::Order;

/// Longest allowed time to pay.
pub const MAX_TIME_TO_PAY: Duration = Duration::from_secs(366 * 86_400);

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
    /// The merchant order number (`[A-Za-z0-9_.-]`, 1 to 64 characters), unique.
    pub out_trade_no: String,
    /// Amount in minor units (fen), positive.
    pub amount_minor: i64,
    /// ISO 4217 code; Alipay takes `CNY`.
    pub currency: String,
    /// The gateway (`alipay`).
    pub channel: String,
    /// The payment deadline.
    pub due: Due,
}

impl NewOrder {
    /// An Alipay order in CNY.
    pub fn alipay(out_trade_no: impl Into<String>, amount_minor: i64, due: Due) -> Self {
        Self {
            out_trade_no: out_trade_no.into(),
            amount_minor,
            currency: "CNY".into(),
            channel: "alipay".into(),
            due,
        }
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
    /// The order itself is wrong.
    #[error("invalid order: {0}")]
    Invalid(String),
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
    publisher: Option<Publisher>,
    /// Deletes the outbox rows of published close messages, in groups.
    published: Batcher<DeletePublished>,
    /// Order ids taken from the sequence in blocks, not yet used.
    ids: Arc<tokio::sync::Mutex<Vec<i64>>>,
    /// Kept open for as long as the closer lives.
    _connection: Option<Arc<lapin::Connection>>,
}

/// Most outbox rows deleted by one statement.
const DELETE_GROUP: usize = 1_000;
/// Order ids [`Closer::create_order`] takes from the sequence at once.
const ID_BLOCK: usize = 100;

impl Closer {
    /// Connects to the database and the broker and declares the topology. A broker that
    /// cannot be reached is an error here; use [`Closer::without_broker`] to create
    /// orders anyway and leave publishing to the relay.
    pub async fn connect(settings: &Settings) -> Result<Self, ConnectError> {
        let pool = db::pool(&settings.database_url, settings.db_pool_size)?;
        let connection = broker::connect(&settings.amqp_url, "order-closer library").await?;
        let publisher = Publisher::open(&connection, Arc::new(settings.topology.clone())).await?;
        settings.topology.declare(publisher.channel()).await?;
        Ok(Self {
            _connection: Some(Arc::new(connection)),
            ..Self::new(pool, Some(publisher))
        })
    }

    /// A closer over an existing pool and publisher.
    pub fn new(pool: DbPool, publisher: Option<Publisher>) -> Self {
        Self {
            published: Batcher::new(pool.clone(), DeletePublished, DELETE_GROUP),
            ids: Arc::new(tokio::sync::Mutex::new(Vec::new())),
            pool,
            publisher,
            _connection: None,
        }
    }

    /// A closer that only writes: the outbox relay publishes later.
    pub fn without_broker(pool: DbPool) -> Self {
        Self::new(pool, None)
    }

    /// Writes the order and its close schedule (one statement), then publishes.
    #[tracing::instrument(skip_all, fields(out_trade_no = %new.out_trade_no))]
    pub async fn create_order(&self, new: NewOrder) -> Result<CreatedOrder, CreateError> {
        self.create_orders(std::slice::from_ref(&new))
            .await?
            .pop()
            .ok_or_else(|| CreateError::Db(DbError::Query(diesel::result::Error::NotFound)))
    }

    /// Creates up to [`MAX_BATCH`] orders at once: every order and its close schedule in
    /// one statement (all are created or none is), then every close message published
    /// with its confirm in flight at once. Any invalid order fails the whole call, naming
    /// it; so does an `out_trade_no` that exists already.
    #[tracing::instrument(skip_all, fields(orders = new.len()))]
    pub async fn create_orders(&self, new: &[NewOrder]) -> Result<Vec<CreatedOrder>, CreateError> {
        let deadlines = validate_all(new, Utc::now())?;
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = db::conn(&self.pool).await?;
        let ids = self.take_ids(&mut conn, new.len()).await?;
        let pending = insert(&mut conn, &ids, new, &deadlines).await?;
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
        conn: &mut AsyncPgConnection,
        new: &NewOrder,
    ) -> Result<PendingClose, CreateError> {
        let deadline = validate(new, Utc::now())?;
        let ids = orders::reserve_ids(conn, 1).await?;
        insert(conn, &ids, std::slice::from_ref(new), &[deadline])
            .await?
            .pop()
            .ok_or_else(|| CreateError::Db(DbError::Query(diesel::result::Error::NotFound)))
    }

    /// `n` order ids from this closer's block, taking more from the sequence when the
    /// block runs short (at least [`ID_BLOCK`] at a time).
    async fn take_ids(
        &self,
        conn: &mut AsyncPgConnection,
        n: usize,
    ) -> Result<Vec<i64>, CreateError> {
        let mut block = self.ids.lock().await;
        if block.len() < n {
            let more = (n - block.len()).max(ID_BLOCK);
            block.extend(orders::reserve_ids(conn, more).await?);
        }
        let keep = block.len() - n;
        Ok(block.split_off(keep))
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

    /// Publishes committed close schedules, every confirm in flight at once; whether each
    /// reached the broker.
    async fn publish_all(&self, pending: &[PendingClose]) -> Vec<bool> {
        let Some(publisher) = &self.publisher else {
            return vec![false; pending.len()];
        };
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
                    self.published.submit_detached(p.outbox_id);
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

/// Writes orders with their ids known in advance (so that each close message naming its
/// order is written by the same statement) and their close schedules.
async fn insert(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    new: &[NewOrder],
    deadlines: &[DateTime<Utc>],
) -> Result<Vec<PendingClose>, CreateError> {
    let payloads: Vec<String> = new
        .iter()
        .zip(ids)
        .zip(deadlines)
        .map(|((n, id), deadline)| {
            let message = CloseMessage::new(*id, n.out_trade_no.clone(), *deadline);
            String::from_utf8(message.encode()).unwrap_or_default()
        })
        .collect();
    let rows: Vec<orders::Scheduled<'_>> = new
        .iter()
        .zip(ids)
        .zip(deadlines)
        .zip(&payloads)
        .map(|(((n, id), deadline), payload)| orders::Scheduled {
            id: *id,
            row: orders::NewOrderRow {
                out_trade_no: &n.out_trade_no,
                channel: &n.channel,
                amount_minor: n.amount_minor,
                currency: &n.currency,
                deadline: *deadline,
            },
            close_payload: payload,
        })
        .collect();
    match orders::insert_scheduled(conn, &rows).await {
        Ok(inserted) => Ok(inserted
            .into_iter()
            .map(|(order, outbox_id)| PendingClose { order, outbox_id })
            .collect()),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            info,
        )) => Err(CreateError::Duplicate(duplicate_key(info.details(), new))),
        Err(e) => Err(e.into()),
    }
}

/// The `out_trade_no` a unique violation names (`Key (out_trade_no)=(X) already exists.`),
/// or the only order's.
fn duplicate_key(details: Option<&str>, new: &[NewOrder]) -> String {
    let named = details
        .and_then(|d| d.split_once("=(")?.1.split_once(')'))
        .map(|(key, _)| key.to_owned());
    match (named, new) {
        (Some(key), _) => key,
        (None, [only]) => only.out_trade_no.clone(),
        (None, _) => "one of the orders".to_owned(),
    }
}

/// Checks every order; returns their deadlines, or the first error naming its order.
fn validate_all(new: &[NewOrder], now: DateTime<Utc>) -> Result<Vec<DateTime<Utc>>, CreateError> {
    if new.len() > MAX_BATCH {
        return Err(CreateError::Invalid(format!(
            "{} orders at once; at most {MAX_BATCH}",
            new.len()
        )));
    }
    new.iter()
        .enumerate()
        .map(|(i, n)| match validate(n, now) {
            Err(CreateError::Invalid(m)) if new.len() > 1 => Err(CreateError::Invalid(format!(
                "order #{i} ({:?}): {m}",
                n.out_trade_no
            ))),
            other => other,
        })
        .collect()
}

/// Checks an order and returns its deadline.
fn validate(new: &NewOrder, now: DateTime<Utc>) -> Result<DateTime<Utc>, CreateError> {
    let invalid = |m: String| Err(CreateError::Invalid(m));
    let no = &new.out_trade_no;
    if no.is_empty()
        || no.len() > MAX_OUT_TRADE_NO
        || !no
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return invalid(format!(
            "out_trade_no {no:?} must be 1 to {MAX_OUT_TRADE_NO} characters from [A-Za-z0-9_.-]"
        ));
    }
    if new.amount_minor <= 0 {
        return invalid(format!(
            "amount must be positive, got {} minor units",
            new.amount_minor
        ));
    }
    if new.channel != "alipay" {
        return invalid(format!(
            "unknown channel {:?} (supported: alipay)",
            new.channel
        ));
    }
    if new.currency != "CNY" {
        return invalid(format!(
            "channel alipay takes currency CNY, got {:?}",
            new.currency
        ));
    }
    let deadline = match new.due {
        Due::After(d) => {
            if d > MAX_TIME_TO_PAY {
                return invalid(format!(
                    "time to pay {d:?} is longer than {MAX_TIME_TO_PAY:?}"
                ));
            }
            now + chrono::Duration::from_std(d).map_err(|e| CreateError::Invalid(e.to_string()))?
        }
        Due::At(at) => {
            if (at - now).to_std().is_ok_and(|d| d > MAX_TIME_TO_PAY) {
                return invalid(format!("deadline {at} is more than a year away"));
            }
            at
        }
    };
    Ok(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_what_is_wrong() {
        let now = Utc::now();
        let ok = NewOrder::alipay("ORD-1", 100, Due::After(Duration::from_secs(60)));
        assert!(validate(&ok, now).is_ok());
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
                    channel: "paypal".into(),
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
        ];
        for (order, word) in cases {
            let err = validate(&order, now).unwrap_err().to_string();
            assert!(err.contains(word), "{err}");
        }
    }
}
