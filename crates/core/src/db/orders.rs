//! The `orders` table: insert, read, and the guarded `NEW -> PAID | CLOSED` updates.

use std::collections::HashMap;
use std::hash::Hash;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::batch::Job;
use super::prepared::{column, prepared};
use super::schema::orders;
use crate::order::{Order, OrderStatus};

/// A row to insert.
#[derive(Debug, Clone)]
pub struct NewOrderRow<'a> {
    /// The shop's order number.
    pub out_trade_no: &'a str,
    /// The gateway of its first trade, in the one-call form (a trade with the order's
    /// number, added with the order); None: an order without a trade yet.
    pub channel: Option<&'a str>,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// Currency code.
    pub currency: &'a str,
    /// Payment deadline.
    pub deadline: DateTime<Utc>,
    /// The gateway's own reference of the first trade, if its gateway needs one.
    pub gateway_ref: Option<&'a str>,
}

/// Takes `n` order ids from the table's sequence (ids never taken are simply unused).
pub async fn reserve_ids(conn: &mut AsyncPgConnection, n: usize) -> QueryResult<Vec<i64>> {
    super::next_ids(conn, "orders_id_seq", n).await
}

/// An order to insert with its id known in advance (see [`reserve_ids`]) and its close
/// message.
#[derive(Debug, Clone)]
pub struct Scheduled<'a> {
    /// The order's id.
    pub id: i64,
    /// The order.
    pub row: NewOrderRow<'a>,
    /// The close message naming it, for its outbox row.
    pub close_payload: &'a str,
}

/// Inserts orders (those that name a channel get their first trade, numbered as the
/// order, from the trigger `orders_first_trade`: the one-call form) and their close
/// schedules (an outbox row each), in one statement: all commit or none does. Returns each order with its outbox row's id, in the
/// given order.
pub async fn insert_scheduled(
    conn: &mut AsyncPgConnection,
    rows: &[Scheduled<'_>],
) -> QueryResult<Vec<(Order, i64)>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};

    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(embed)]
        order: Order,
        #[diesel(sql_type = BigInt)]
        outbox_id: i64,
    }
    let inserted: Vec<Inserted> = prepared(
        "WITH input AS (
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                  $5::text[], $6::timestamptz[], $7::text[], $8::text[])
                 AS t(id, out_trade_no, channel, amount_minor, currency, deadline, payload,
                      gateway_ref)
         ), o AS (
             INSERT INTO orders (id, out_trade_no, channel, amount_minor, currency, deadline,
                                 gateway_ref)
             SELECT id, out_trade_no, channel, amount_minor, currency, deadline, gateway_ref
             FROM input
             RETURNING *
         ), b AS (
             INSERT INTO outbox (kind, routing_key, payload)
             SELECT $9, '', payload FROM input
             RETURNING id AS outbox_id, payload
         )
         -- The result's columns are named, never `*`: a cached statement must keep its
         -- result shape when a migration adds a column.
         SELECT o.id, o.out_trade_no, o.amount_minor, o.currency, o.status,
                o.deadline, o.created_at, o.updated_at, o.paid_at, o.closed_at,
                o.gateway_trade_no, o.close_reason, o.paid_trade_id, o.open_trades, b.outbox_id
         FROM o JOIN input i ON i.id = o.id JOIN b ON b.payload = i.payload",
    )
    .bind::<Array<BigInt>, _>(column(rows, |r| r.id))
    .bind::<Array<Text>, _>(column(rows, |r| r.row.out_trade_no))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.row.channel))
    .bind::<Array<BigInt>, _>(column(rows, |r| r.row.amount_minor))
    .bind::<Array<Text>, _>(column(rows, |r| r.row.currency))
    .bind::<Array<Timestamptz>, _>(column(rows, |r| r.row.deadline))
    .bind::<Array<Text>, _>(column(rows, |r| r.close_payload))
    .bind::<Array<Nullable<Text>>, _>(column(rows, |r| r.row.gateway_ref))
    .bind::<Text, _>(super::outbox::KIND_CLOSE)
    .load(conn)
    .await?;
    let mut by_id: HashMap<i64, (Order, i64)> = inserted
        .into_iter()
        .map(|i| (i.order.id, (i.order, i.outbox_id)))
        .collect();
    rows.iter()
        .map(|r| by_id.remove(&r.id).ok_or(diesel::result::Error::NotFound))
        .collect()
}

/// Reads an order by id.
pub async fn find(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<Option<Order>> {
    orders::table
        .find(id)
        .select(Order::as_select())
        .first(conn)
        .await
        .optional()
}

/// Reads the orders with these ids (in no particular order; missing ids are left out).
pub async fn find_many(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<Vec<Order>> {
    orders::table
        .filter(orders::id.eq_any(ids))
        .select(Order::as_select())
        .load(conn)
        .await
}

/// Reads orders by id in groups (one statement per group; see [`super::batch`]).
pub struct FindById;

#[async_trait]
impl Job for FindById {
    type Item = i64;
    type Output = Option<Order>;

    async fn run(
        &self,
        conn: &mut AsyncPgConnection,
        ids: &[i64],
    ) -> QueryResult<Vec<Option<Order>>> {
        Ok(one_per_item(ids, find_many(conn, ids).await?, |o| o.id))
    }

    /// An id appears once per group, so each caller gets its own copy of the row.
    fn key(&self, id: &i64) -> Option<i64> {
        Some(*id)
    }
}

/// The row of each item, in the items' order (None where there is none). The items of a
/// group are distinct (each job's `key`), so each row goes to exactly one caller.
fn one_per_item<K: Hash + Eq>(
    items: &[K],
    rows: Vec<Order>,
    key: impl Fn(&Order) -> K,
) -> Vec<Option<Order>> {
    let mut found: HashMap<K, Order> = rows.into_iter().map(|o| (key(&o), o)).collect();
    items.iter().map(|k| found.remove(k)).collect()
}

/// Reads an order by merchant order number.
pub async fn find_by_out_trade_no(
    conn: &mut AsyncPgConnection,
    out_trade_no: &str,
) -> QueryResult<Option<Order>> {
    orders::table
        .filter(orders::out_trade_no.eq(out_trade_no))
        .select(Order::as_select())
        .first(conn)
        .await
        .optional()
}

/// `NEW -> PAID` through the order's first open trade (tools and tests: the decision and
/// the notify endpoint pay an order through the trade the gateway names), only if still
/// NEW. Returns false when another actor got there first, or it has no open trade.
pub async fn mark_paid(
    conn: &mut AsyncPgConnection,
    id: i64,
    trade_no: &str,
    paid_at: DateTime<Utc>,
) -> QueryResult<bool> {
    use diesel::sql_types::{BigInt, Text, Timestamptz};
    let updated = prepared(
        "WITH t AS (
             UPDATE trades SET status = 'paid', gateway_trade_no = $1, paid_at = $2,
                               paid_minor = o.amount_minor, updated_at = now()
             FROM orders o
             WHERE trades.id = (SELECT min(id) FROM trades WHERE order_id = $3 AND status = 'open')
               AND o.id = trades.order_id AND o.status = 'NEW'
             RETURNING trades.id, trades.order_id
         )
         UPDATE orders SET status = 'PAID', gateway_trade_no = $4, paid_at = $5,
                           paid_trade_id = t.id, updated_at = now()
         FROM t WHERE orders.id = t.order_id",
    )
    .bind::<Text, _>(trade_no)
    .bind::<Timestamptz, _>(paid_at)
    .bind::<BigInt, _>(id)
    .bind::<Text, _>(trade_no)
    .bind::<Timestamptz, _>(paid_at)
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// `NEW -> CLOSED` with every open trade of the order closed first, only if still NEW
/// (tools and tests: the deadline decision closes trades at their gateways first). Run it
/// inside a transaction. Returns false when another actor got there first.
pub async fn mark_closed(conn: &mut AsyncPgConnection, id: i64, reason: &str) -> QueryResult<bool> {
    use diesel::sql_types::{BigInt, Text};
    prepared(
        "UPDATE trades SET status = 'closed', closed_at = now(), close_reason = $1,
                           updated_at = now()
         WHERE order_id = $2 AND status = 'open'
           AND EXISTS (SELECT 1 FROM orders WHERE id = $3 AND status = 'NEW')",
    )
    .bind::<Text, _>(reason)
    .bind::<BigInt, _>(id)
    .bind::<BigInt, _>(id)
    .execute(conn)
    .await?;
    let updated = diesel::update(orders::table)
        .filter(orders::id.eq(id))
        .filter(orders::status.eq(OrderStatus::New.as_str()))
        .filter(orders::open_trades.eq(0))
        .set((
            orders::status.eq(OrderStatus::Closed.as_str()),
            orders::close_reason.eq(reason),
            orders::closed_at.eq(now),
            orders::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(updated == 1)
}

/// A NEW order past its deadline, and whether its message waits in the parking queue
/// (`recheck_at = infinity`, written with its park row).
#[derive(Debug, Clone)]
pub struct OverdueOrder {
    /// The order.
    pub order: Order,
    /// Whether it is parked for an operator.
    pub parked: bool,
}

/// One page of NEW orders (and PAID ones with an open trade left, each a chance to pay
/// twice) whose deadline is before `cutoff`, in (deadline, id) order after
/// `after` (keyset pagination: constant cost per page however large the table).
pub async fn overdue_page(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
    channel: Option<&str>,
    after: Option<(DateTime<Utc>, i64)>,
    page: i64,
) -> QueryResult<Vec<OverdueOrder>> {
    let parked = diesel::dsl::sql::<diesel::sql_types::Bool>(
        "coalesce(orders.recheck_at = 'infinity'::timestamptz, false)",
    );
    let mut query = orders::table
        .filter(
            orders::status
                .eq(OrderStatus::New.as_str())
                .or(orders::status
                    .eq(OrderStatus::Paid.as_str())
                    .and(orders::open_trades.gt(0))),
        )
        .filter(orders::deadline.lt(cutoff))
        .order((orders::deadline.asc(), orders::id.asc()))
        .limit(page)
        .select((Order::as_select(), parked))
        .into_boxed();
    if let Some(channel) = channel {
        use super::schema::trades;
        query = query.filter(diesel::dsl::exists(
            trades::table
                .filter(trades::order_id.eq(orders::id))
                .filter(trades::channel.eq(channel.to_owned())),
        ));
    }
    if let Some((deadline, id)) = after {
        query = query.filter(
            orders::deadline
                .gt(deadline)
                .or(orders::deadline.eq(deadline).and(orders::id.gt(id))),
        );
    }
    let rows: Vec<(Order, bool)> = query.load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(order, parked)| OverdueOrder { order, parked })
        .collect())
}

/// A NEW order the janitor claimed, with where its retry schedule stood.
#[derive(Debug, Clone, QueryableByName)]
pub struct Overdue {
    /// Our id.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    /// Merchant order number.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub out_trade_no: String,
    /// Its deadline.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub deadline: DateTime<Utc>,
    /// When its schedule said it would be decided (the later of the deadline and its last
    /// retry's `not_before`).
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub scheduled: DateTime<Utc>,
    /// Attempts that failed transiently so far (its `retry` audit rows).
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    /// Its first recorded decision, if any.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub first_seen: Option<DateTime<Utc>>,
}

/// Claims up to `limit` NEW orders (and PAID ones with an open trade left) whose schedule (the later of the deadline and
/// `recheck_at`) fell before `cutoff`, oldest first, and leases them until `lease_until`
/// (their `recheck_at`), so that no other janitor takes them meanwhile. Rows another
/// transaction holds are skipped, never waited for.
pub async fn claim_overdue(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
    lease_until: DateTime<Utc>,
) -> QueryResult<Vec<Overdue>> {
    use diesel::sql_types::{BigInt, Timestamptz};
    prepared(
        "WITH due AS (
             SELECT id, GREATEST(deadline, recheck_at) AS scheduled
             FROM orders
             WHERE (status = 'NEW' OR (status = 'PAID' AND open_trades > 0))
               AND GREATEST(deadline, recheck_at) < $1
             ORDER BY GREATEST(deadline, recheck_at)
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         UPDATE orders o SET recheck_at = $3
         FROM due
         WHERE o.id = due.id
         RETURNING o.id, o.out_trade_no, o.deadline, due.scheduled,
             (SELECT count(*)::int FROM decisions d
              WHERE d.order_id = o.id AND d.outcome = 'retry') AS attempts,
             (SELECT min(d.decided_at) FROM decisions d WHERE d.order_id = o.id) AS first_seen",
    )
    .bind::<Timestamptz, _>(cutoff)
    .bind::<BigInt, _>(limit)
    .bind::<Timestamptz, _>(lease_until)
    .load(conn)
    .await
}

/// Sets when the janitor may look at a NEW order again (`None`: at once, its deadline
/// being long past).
pub async fn set_recheck(
    conn: &mut AsyncPgConnection,
    id: i64,
    at: Option<DateTime<Utc>>,
) -> QueryResult<()> {
    diesel::update(orders::table)
        .filter(orders::id.eq(id))
        .filter(orders::status.eq(OrderStatus::New.as_str()))
        .set(orders::recheck_at.eq(at))
        .execute(conn)
        .await
        .map(|_| ())
}
