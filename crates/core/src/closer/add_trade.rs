//! Adding a payment attempt: the buyer picked a payment method, and the shop is about to
//! create the trade at that gateway.
//!
//! The trade is recorded **before** the shop creates it at the gateway, so that the worker
//! closes it at the deadline whatever happens next (a trade recorded that never reached
//! the gateway is found missing there and counts as closed). The answer says by when the
//! shop must make the gateway trade expire: the order's deadline less [`EXPIRY_MARGIN`].
//!
//! The order's row is locked while the trade is added, and the worker's CLOSED update is
//! guarded by the order's count of open trades, so a trade added while a worker decides
//! the order is never missed: either the trade commits first and the close matches
//! nothing (the worker decides again, closing the new trade too), or the close commits
//! first and the trade is refused here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use thiserror::Error;

use super::{Closer, InvalidOrder, check_gateway_ref, known_channel};
use crate::db::trades::{self, NewTradeRow};
use crate::db::{self, DbError};
use crate::order::OrderStatus;
use crate::trade::Trade;

/// How long before the order's deadline the gateway trade must expire: the worker closes
/// every open trade at the deadline, and a trade that expired by itself before then
/// cannot be paid while the worker is deciding (clocks of the shop, the gateway and the
/// database differ by less than this).
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// A trade to add: its gateway and merchant trade number there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTrade {
    /// The gateway (`alipay`, `wechat`).
    pub channel: String,
    /// The merchant trade number at that gateway, in its format; unique per gateway (the
    /// order's own number may be used at each gateway once).
    pub out_trade_no: String,
    /// The gateway's own reference, for a gateway that looks trades up by it.
    pub gateway_ref: Option<String>,
}

impl NewTrade {
    /// A trade at `channel` numbered `out_trade_no`.
    pub fn new(channel: impl Into<String>, out_trade_no: impl Into<String>) -> Self {
        Self {
            channel: channel.into(),
            out_trade_no: out_trade_no.into(),
            gateway_ref: None,
        }
    }

    /// The same trade with the gateway's own reference.
    pub fn with_gateway_ref(mut self, gateway_ref: impl Into<String>) -> Self {
        self.gateway_ref = Some(gateway_ref.into());
        self
    }
}

/// A trade added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTrade {
    /// The stored trade.
    pub trade: Trade,
    /// The latest moment the gateway trade may stay payable: give it to the gateway as
    /// the trade's expiry (Alipay `time_expire`, WeChat Pay `time_expire`).
    pub expire_by: DateTime<Utc>,
}

/// Why a trade was not added (nothing was written).
#[derive(Debug, Error)]
pub enum TradeError {
    /// The trade itself is wrong: an unknown channel, a number its gateway refuses, or
    /// the order's amount or currency that gateway does not take.
    #[error("invalid trade: {0}")]
    Invalid(#[from] InvalidOrder),
    /// No order has that number.
    #[error("no order with out_trade_no {0:?}")]
    NoOrder(String),
    /// The order is PAID or CLOSED already.
    #[error("order {out_trade_no:?} is {status} already: no trade can be added")]
    Settled {
        /// The order.
        out_trade_no: String,
        /// Its status.
        status: OrderStatus,
    },
    /// The order's deadline, less the expiry margin, has passed (by the database's clock).
    #[error(
        "order {out_trade_no:?} is due at {deadline}: a trade must be added more than {margin:?} before its deadline"
    )]
    TooLate {
        /// The order.
        out_trade_no: String,
        /// Its deadline.
        deadline: DateTime<Utc>,
        /// The margin.
        margin: Duration,
    },
    /// That gateway already has a trade with that number (or that reference).
    #[error("channel {channel} already has a trade numbered {out_trade_no:?}")]
    Duplicate {
        /// The gateway.
        channel: String,
        /// The number.
        out_trade_no: String,
    },
    /// The database failed; nothing was written.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for TradeError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl Closer {
    /// Adds a payment attempt to the NEW order numbered `order_no`: a trade at
    /// `trade.channel`, checked by that gateway's rules with the order's amount and
    /// currency. Refused for an order PAID or CLOSED, or one whose deadline is less than
    /// [`EXPIRY_MARGIN`] away by the database's clock.
    #[tracing::instrument(skip(self, trade), fields(out_trade_no = %order_no, channel = %trade.channel))]
    pub async fn add_trade(
        &self,
        order_no: &str,
        trade: NewTrade,
    ) -> Result<AddedTrade, TradeError> {
        let rules = known_channel(self.channels, &trade.channel)?;
        check_gateway_ref(trade.gateway_ref.as_deref())?;
        let margin = self.expiry_margin;
        let mut conn = db::conn(&self.pool).await?;
        let added = conn
            .transaction::<_, TradeError, _>(async |tx| {
                let order = trades::lock_order(tx, order_no, margin.as_secs_f64())
                    .await?
                    .ok_or_else(|| TradeError::NoOrder(order_no.to_owned()))?;
                let status = OrderStatus::parse(&order.status).unwrap_or(OrderStatus::New);
                if status != OrderStatus::New {
                    return Err(TradeError::Settled {
                        out_trade_no: order_no.to_owned(),
                        status,
                    });
                }
                if !order.before_margin {
                    return Err(TradeError::TooLate {
                        out_trade_no: order_no.to_owned(),
                        deadline: order.deadline,
                        margin,
                    });
                }
                rules.check(&trade.out_trade_no, &order.currency, order.amount_minor)?;
                let row = NewTradeRow {
                    channel: &trade.channel,
                    out_trade_no: &trade.out_trade_no,
                    gateway_ref: trade.gateway_ref.as_deref(),
                };
                let stored = trades::insert(tx, order.id, row)
                    .await
                    .map_err(|e| match e {
                        diesel::result::Error::DatabaseError(
                            diesel::result::DatabaseErrorKind::UniqueViolation,
                            _,
                        ) => TradeError::Duplicate {
                            channel: trade.channel.clone(),
                            out_trade_no: trade.out_trade_no.clone(),
                        },
                        other => TradeError::from(other),
                    })?;
                let expire_by = order.deadline
                    - chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::zero());
                Ok(AddedTrade {
                    trade: stored,
                    expire_by,
                })
            })
            .await?;
        Ok(added)
    }
}
