//! The `orders` table: insert, read, and the guarded `NEW -> PAID | CLOSED` updates.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::batch::Job;
use super::schema::orders;
use crate::order::{Order, OrderStatus};

/// A row to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = orders)]
pub struct NewOrderRow<'a> {
    /// Merchant order number.
    pub out_trade_no: &'a str,
    /// Gateway.
    pub channel: &'a str,
    /// Amount, minor units.
    pub amount_minor: i64,
    /// Currency code.
    pub currency: &'a str,
    /// Payment deadline.
    pub deadline: DateTime<Utc>,
}

/// Inserts an order (status NEW) and returns it.
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewOrderRow<'_>) -> QueryResult<Order> {
    diesel::insert_into(orders::table)
        .values(row)
        .returning(Order::as_returning())
        .get_result(conn)
        .await
}

/// Takes `n` order ids from the table's sequence (ids never taken are simply unused).
pub async fn reserve_ids(conn: &mut AsyncPgConnection, n: usize) -> QueryResult<Vec<i64>> {
    super::next_ids(conn, "orders_id_seq", n).await
}

/// Inserts an order with the id `id` (see [`reserve_ids`]) and its close schedule, an
/// outbox row holding `close_payload`, in one statement: both commit or neither does.
/// Returns the order and the outbox row's id.
pub async fn insert_scheduled(
    conn: &mut AsyncPgConnection,
    id: i64,
    row: &NewOrderRow<'_>,
    close_payload: &str,
) -> QueryResult<(Order, i64)> {
    use diesel::sql_types::{BigInt, Text, Timestamptz};

    #[derive(QueryableByName)]
    struct Scheduled {
        #[diesel(embed)]
        order: Order,
        #[diesel(sql_type = BigInt)]
        outbox_id: i64,
    }
    let scheduled: Scheduled = super::prepared::prepared(
        "WITH o AS (
             INSERT INTO orders (id, out_trade_no, channel, amount_minor, currency, deadline)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING *
         ), b AS (
             INSERT INTO outbox (kind, routing_key, payload)
             VALUES ($7, '', $8)
             RETURNING id AS outbox_id
         )
         SELECT o.*, b.outbox_id FROM o, b",
    )
    .bind::<BigInt, _>(id)
    .bind::<Text, _>(row.out_trade_no)
    .bind::<Text, _>(row.channel)
    .bind::<BigInt, _>(row.amount_minor)
    .bind::<Text, _>(row.currency)
    .bind::<Timestamptz, _>(row.deadline)
    .bind::<Text, _>(super::outbox::KIND_CLOSE)
    .bind::<Text, _>(close_payload)
    .get_result(conn)
    .await?;
    Ok((scheduled.order, scheduled.outbox_id))
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
        let mut found: HashMap<i64, Order> = find_many(conn, ids)
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        Ok(ids.iter().map(|id| found.remove(id)).collect())
    }

    /// An id appears once per group, so each caller gets its own copy of the row.
    fn key(&self, id: &i64) -> Option<i64> {
        Some(*id)
    }
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

/// `NEW -> PAID`, only if still NEW. Returns false when another actor got there first.
pub async fn mark_paid(
    conn: &mut AsyncPgConnection,
    id: i64,
    trade_no: &str,
    paid_at: DateTime<Utc>,
) -> QueryResult<bool> {
    let updated = diesel::update(orders::table)
        .filter(orders::id.eq(id))
        .filter(orders::status.eq(OrderStatus::New.as_str()))
        .set((
            orders::status.eq(OrderStatus::Paid.as_str()),
            orders::gateway_trade_no.eq(trade_no),
            orders::paid_at.eq(paid_at),
            orders::updated_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(updated == 1)
}

/// `NEW -> CLOSED`, only if still NEW. Returns false when another actor got there first.
pub async fn mark_closed(conn: &mut AsyncPgConnection, id: i64, reason: &str) -> QueryResult<bool> {
    let updated = diesel::update(orders::table)
        .filter(orders::id.eq(id))
        .filter(orders::status.eq(OrderStatus::New.as_str()))
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

/// One page of NEW orders whose deadline is before `cutoff`, in (deadline, id) order after
/// `after` (keyset pagination: constant cost per page however large the table).
pub async fn overdue_page(
    conn: &mut AsyncPgConnection,
    cutoff: DateTime<Utc>,
    channel: Option<&str>,
    after: Option<(DateTime<Utc>, i64)>,
    page: i64,
) -> QueryResult<Vec<Order>> {
    let mut query = orders::table
        .filter(orders::status.eq(OrderStatus::New.as_str()))
        .filter(orders::deadline.lt(cutoff))
        .order((orders::deadline.asc(), orders::id.asc()))
        .limit(page)
        .select(Order::as_select())
        .into_boxed();
    if let Some(channel) = channel {
        query = query.filter(orders::channel.eq(channel.to_owned()));
    }
    if let Some((deadline, id)) = after {
        query = query.filter(
            orders::deadline
                .gt(deadline)
                .or(orders::deadline.eq(deadline).and(orders::id.gt(id))),
        );
    }
    query.load(conn).await
}
