//! The `trades` table: an order's payment attempts, read by order or by their number at
//! the gateway, added while the order is NEW, and moved `open -> paid | closed` (or
//! `closed -> paid`) by guarded updates.
//!
//! `orders.open_trades` is kept by a trigger (see the migration `trades`): every write
//! here keeps it right without saying so, and the order's CLOSED update is guarded by it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::batch::Job;
use super::prepared::{column, prepared};
use super::schema::trades;
use crate::order::Order;
use crate::trade::{Trade, TradeStatus};

/// A trade to add to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewTradeRow<'a> {
    /// The gateway.
    pub channel: &'a str,
    /// The merchant trade number at that gateway.
    pub out_trade_no: &'a str,
    /// The gateway's own reference, if it needs one.
    pub gateway_ref: Option<&'a str>,
}

/// The trades of these orders, each order's in the order they were added.
pub async fn for_orders(
    conn: &mut AsyncPgConnection,
    order_ids: &[i64],
) -> QueryResult<Vec<Trade>> {
    trades::table
        .filter(trades::order_id.eq_any(order_ids))
        .order((trades::order_id.asc(), trades::id.asc()))
        .select(Trade::as_select())
        .load(conn)
        .await
}

/// The trades of one order, in the order they were added.
pub async fn for_order(conn: &mut AsyncPgConnection, order_id: i64) -> QueryResult<Vec<Trade>> {
    for_orders(conn, &[order_id]).await
}

/// One trade by id.
pub async fn find(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<Trade>> {
    trades::table
        .find(id)
        .select(Trade::as_select())
        .first(conn)
        .await
        .optional()
}

/// Reads the trades of orders in groups (one statement per group; see [`super::batch`]).
pub struct TradesOf;

#[async_trait]
impl Job for TradesOf {
    type Item = i64;
    type Output = Vec<Trade>;

    async fn run(&self, conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<Vec<Vec<Trade>>> {
        let mut by_order: HashMap<i64, Vec<Trade>> = HashMap::new();
        for trade in for_orders(conn, ids).await? {
            by_order.entry(trade.order_id).or_default().push(trade);
        }
        Ok(ids
            .iter()
            .map(|id| by_order.remove(id).unwrap_or_default())
            .collect())
    }

    /// An order appears once per group, so each caller gets its own rows.
    fn key(&self, id: &i64) -> Option<i64> {
        Some(*id)
    }
}

/// How a notification or a bill row names a trade: its gateway and either our merchant
/// trade number or the gateway's own reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TradeKey {
    /// (channel, out_trade_no).
    Number {
        /// The gateway.
        channel: String,
        /// Our merchant trade number.
        out_trade_no: String,
    },
    /// (channel, gateway_ref).
    GatewayRef {
        /// The gateway.
        channel: String,
        /// The gateway's own reference.
        gateway_ref: String,
    },
}

impl TradeKey {
    /// A trade named by our merchant trade number at `channel`.
    pub fn number(channel: &str, out_trade_no: &str) -> Self {
        Self::Number {
            channel: channel.to_owned(),
            out_trade_no: out_trade_no.to_owned(),
        }
    }

    fn matches(&self, trade: &Trade) -> bool {
        match self {
            Self::Number {
                channel,
                out_trade_no,
            } => trade.channel == *channel && trade.out_trade_no == *out_trade_no,
            Self::GatewayRef {
                channel,
                gateway_ref,
            } => trade.channel == *channel && trade.gateway_ref.as_deref() == Some(gateway_ref),
        }
    }
}

/// Reads the trades these keys name, each with its order (missing ones are left out).
pub async fn find_keys(
    conn: &mut AsyncPgConnection,
    keys: &[TradeKey],
) -> QueryResult<Vec<(Trade, Order)>> {
    use super::schema::orders;
    let (mut channels, mut numbers, mut refs) = (Vec::new(), Vec::new(), Vec::new());
    for key in keys {
        match key {
            TradeKey::Number {
                channel,
                out_trade_no,
            } => {
                channels.push(channel.as_str());
                numbers.push(out_trade_no.as_str());
            }
            TradeKey::GatewayRef {
                channel,
                gateway_ref,
            } => {
                channels.push(channel.as_str());
                refs.push(gateway_ref.as_str());
            }
        }
    }
    // Both conditions name the channel first, so the unique indexes on (channel, number)
    // and (channel, reference) serve them; a row another key's channel matched is
    // dropped by the caller's exact match.
    trades::table
        .inner_join(orders::table)
        .filter(trades::channel.eq_any(&channels))
        .filter(
            trades::out_trade_no
                .eq_any(&numbers)
                .or(trades::gateway_ref.eq_any(&refs)),
        )
        .select((Trade::as_select(), Order::as_select()))
        .load(conn)
        .await
}

/// Reads trades by key, each with its order, in groups (the notify endpoint: one
/// statement for the notifications that arrive together).
pub struct FindByKey;

#[async_trait]
impl Job for FindByKey {
    type Item = TradeKey;
    type Output = Option<(Trade, Order)>;

    async fn run(
        &self,
        conn: &mut AsyncPgConnection,
        keys: &[TradeKey],
    ) -> QueryResult<Vec<Option<(Trade, Order)>>> {
        let rows = find_keys(conn, keys).await?;
        Ok(keys
            .iter()
            .map(|k| rows.iter().find(|(t, _)| k.matches(t)).cloned())
            .collect())
    }

    /// A key appears once per group; two keys of one hash merely wait for each other.
    fn key(&self, key: &TradeKey) -> Option<i64> {
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        Some(hasher.finish() as i64)
    }
}

/// An order locked for adding a trade to it.
#[derive(Debug, Clone, QueryableByName)]
pub struct OrderLock {
    /// Its id.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    /// `NEW`, `PAID` or `CLOSED`.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: String,
    /// Its deadline.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub deadline: DateTime<Utc>,
    /// Its amount, minor units.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub amount_minor: i64,
    /// Its currency.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub currency: String,
    /// Whether its deadline, less the margin asked for, is still ahead by the database's
    /// clock.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub before_margin: bool,
}

/// Locks the order numbered `order_no` until the caller's transaction ends (so a worker's
/// CLOSED update waits for the trade added under it, then finds it open through
/// `orders.open_trades`), whatever its state: the answer is about the order as it is once
/// any concurrent decision committed. `margin_secs` is how long before the deadline a
/// trade may still be added.
pub async fn lock_order(
    conn: &mut AsyncPgConnection,
    order_no: &str,
    margin_secs: f64,
) -> QueryResult<Option<OrderLock>> {
    use diesel::sql_types::{Double, Text};
    prepared(
        "SELECT id, status, deadline, amount_minor, currency,
                deadline - make_interval(secs => $1) > now() AS before_margin
         FROM orders WHERE out_trade_no = $2 FOR UPDATE",
    )
    .bind::<Double, _>(margin_secs)
    .bind::<Text, _>(order_no)
    .get_result(conn)
    .await
    .optional()
}

/// Inserts an open trade of an order (locked by [`lock_order`]).
pub async fn insert(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    row: NewTradeRow<'_>,
) -> QueryResult<Trade> {
    use diesel::sql_types::{BigInt, Nullable, Text};
    prepared(
        "INSERT INTO trades (order_id, channel, out_trade_no, gateway_ref)
         VALUES ($1, $2, $3, $4)
         RETURNING id, order_id, channel, out_trade_no, gateway_ref, status, gateway_trade_no,
                   paid_minor, paid_at, closed_at, close_reason, created_at, updated_at",
    )
    .bind::<BigInt, _>(order_id)
    .bind::<Text, _>(row.channel)
    .bind::<Text, _>(row.out_trade_no)
    .bind::<Nullable<Text>, _>(row.gateway_ref)
    .get_result(conn)
    .await
}

/// Where a trade moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TradeMove {
    /// `open | closed -> paid`.
    Paid {
        /// The gateway's trade number.
        gateway_trade_no: String,
        /// What the gateway says was paid, in minor units.
        paid_minor: i64,
        /// When, if the gateway says.
        paid_at: Option<DateTime<Utc>>,
    },
    /// `open -> closed`.
    Closed {
        /// Why (`deadline_closed_by_us`, ...).
        reason: &'static str,
    },
}

/// Moves trades, each only from a state it may leave that way (`open -> paid | closed`,
/// `closed -> paid`); returns the ids of those that moved. At most one move per trade.
pub async fn apply_moves(
    conn: &mut AsyncPgConnection,
    moves: &[(i64, TradeMove)],
) -> QueryResult<Vec<i64>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};

    if moves.is_empty() {
        return Ok(Vec::new());
    }
    #[derive(QueryableByName)]
    struct Moved {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let status = |m: &TradeMove| match m {
        TradeMove::Paid { .. } => TradeStatus::Paid.as_str(),
        TradeMove::Closed { .. } => TradeStatus::Closed.as_str(),
    };
    let moved: Vec<Moved> = prepared(
        "UPDATE trades t SET
             status = i.status,
             gateway_trade_no = COALESCE(i.trade_no, t.gateway_trade_no),
             paid_minor = COALESCE(i.paid_minor, t.paid_minor),
             paid_at = CASE WHEN i.status = 'paid' THEN COALESCE(i.paid_at, now()) ELSE t.paid_at END,
             closed_at = CASE WHEN i.status = 'closed' THEN now() ELSE t.closed_at END,
             close_reason = COALESCE(i.close_reason, t.close_reason),
             updated_at = now()
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[],
                     $6::text[])
             AS i(id, status, trade_no, paid_minor, paid_at, close_reason)
         WHERE t.id = i.id
           AND (t.status = 'open' OR (t.status = 'closed' AND i.status = 'paid'))
         RETURNING t.id",
    )
    .bind::<Array<BigInt>, _>(column(moves, |(id, _)| *id))
    .bind::<Array<Text>, _>(column(moves, |(_, m)| status(m)))
    .bind::<Array<Nullable<Text>>, _>(moves.iter().map(trade_no_of).collect::<Vec<_>>())
    .bind::<Array<Nullable<BigInt>>, _>(column(moves, |(_, m)| match m {
        TradeMove::Paid { paid_minor, .. } => Some(*paid_minor),
        TradeMove::Closed { .. } => None,
    }))
    .bind::<Array<Nullable<Timestamptz>>, _>(column(moves, |(_, m)| match m {
        TradeMove::Paid { paid_at, .. } => *paid_at,
        TradeMove::Closed { .. } => None,
    }))
    .bind::<Array<Nullable<Text>>, _>(column(moves, |(_, m)| match m {
        TradeMove::Closed { reason } => Some(*reason),
        TradeMove::Paid { .. } => None,
    }))
    .load(conn)
    .await?;
    Ok(moved.into_iter().map(|m| m.id).collect())
}

fn trade_no_of((_, m): &(i64, TradeMove)) -> Option<&str> {
    match m {
        TradeMove::Paid {
            gateway_trade_no, ..
        } => Some(gateway_trade_no.as_str()),
        TradeMove::Closed { .. } => None,
    }
}
