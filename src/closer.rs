//! The library call a shop's backend makes when it creates an order.
//!
//! The order row and its close schedule (an outbox row) are written in one transaction;
//! after the commit the close message is published with a confirm. If the broker is down
//! or the process dies in between, the outbox row stays and the worker's relay publishes
//! it, so no order is ever forgotten.
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
use diesel_async::{AsyncConnection, AsyncPgConnection};
use thiserror::Error;

use crate::broker::publisher::Publisher;
use crate::broker::{self, BrokerError};
use crate::config::Settings;
use crate::db::outbox::{self, Claim, KIND_CLOSE, NewOutboxRow};
use crate::db::{self, DbError, DbPool, orders};
use crate::message::{CloseMessage, MAX_OUT_TRADE_NO};
use crate::order::Order;
use crate::relay::{Relay, RelayError};

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
    relay: Option<Arc<Relay>>,
    /// Kept open for as long as the closer lives.
    _connection: Option<Arc<lapin::Connection>>,
}

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
            pool,
            relay: Some(Arc::new(Relay::new(publisher))),
            _connection: Some(Arc::new(connection)),
        })
    }

    /// A closer over an existing pool and publisher.
    pub fn new(pool: DbPool, publisher: Option<Publisher>) -> Self {
        Self {
            pool,
            relay: publisher.map(|p| Arc::new(Relay::new(p))),
            _connection: None,
        }
    }

    /// A closer that only writes: the outbox relay publishes later.
    pub fn without_broker(pool: DbPool) -> Self {
        Self::new(pool, None)
    }

    /// Writes the order and its close schedule in one transaction, then publishes.
    #[tracing::instrument(skip_all, fields(out_trade_no = %new.out_trade_no))]
    pub async fn create_order(&self, new: NewOrder) -> Result<CreatedOrder, CreateError> {
        let mut conn = db::conn(&self.pool).await?;
        let pending = conn
            .transaction::<_, CreateError, _>(async |tx| Self::create_order_in(tx, &new).await)
            .await?;
        let published = self.publish_with(&mut conn, &pending).await;
        Ok(CreatedOrder {
            order: pending.order,
            published,
        })
    }

    /// Writes the order and its close schedule using the caller's connection, inside the
    /// caller's open transaction. Call [`Closer::publish`] after the caller commits.
    pub async fn create_order_in(
        conn: &mut AsyncPgConnection,
        new: &NewOrder,
    ) -> Result<PendingClose, CreateError> {
        let now = Utc::now();
        let deadline = validate(new, now)?;
        let row = orders::NewOrderRow {
            out_trade_no: &new.out_trade_no,
            channel: &new.channel,
            amount_minor: new.amount_minor,
            currency: &new.currency,
            deadline,
        };
        let order = match orders::insert(conn, &row).await {
            Ok(order) => order,
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {
                return Err(CreateError::Duplicate(new.out_trade_no.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let message = CloseMessage::new(order.id, order.out_trade_no.clone(), order.deadline);
        let payload = String::from_utf8(message.encode()).unwrap_or_default();
        let outbox_id = outbox::insert(
            conn,
            &NewOutboxRow {
                kind: KIND_CLOSE,
                routing_key: "",
                payload: &payload,
            },
        )
        .await?;
        Ok(PendingClose { order, outbox_id })
    }

    /// Publishes a committed close schedule. Returns false (and logs) when the broker is
    /// unavailable: the relay publishes it later, so the order is not lost.
    pub async fn publish(&self, pending: &PendingClose) -> bool {
        match db::conn(&self.pool).await {
            Ok(mut conn) => self.publish_with(&mut conn, pending).await,
            Err(e) => {
                tracing::warn!(error = %e, "close schedule left to the relay");
                false
            }
        }
    }

    async fn publish_with(&self, conn: &mut AsyncPgConnection, pending: &PendingClose) -> bool {
        let Some(relay) = &self.relay else {
            return false;
        };
        match relay.flush(conn, Claim::Ids(&[pending.outbox_id])).await {
            Ok(_) => true,
            Err(RelayError::Broker(e)) => {
                tracing::warn!(error = %e, "broker unavailable; the close schedule is left to the relay");
                false
            }
            Err(RelayError::Db(e)) => {
                tracing::warn!(error = %e, "close schedule left to the relay");
                false
            }
        }
    }
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
