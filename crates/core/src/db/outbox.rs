//! The `outbox` table: messages that must be published because a transaction committed.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::batch::Job;
use super::schema::outbox;

/// A close schedule (payload: a close message).
pub const KIND_CLOSE: &str = "close";
/// An event (payload: event JSON, routing key: event type).
pub const KIND_EVENT: &str = "event";

/// A row to insert.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = outbox)]
pub struct NewOutboxRow<'a> {
    /// [`KIND_CLOSE`] or [`KIND_EVENT`].
    pub kind: &'a str,
    /// For events, the routing key; for close schedules, empty (routed by deadline).
    pub routing_key: &'a str,
    /// The exact bytes to publish.
    pub payload: &'a str,
}

/// A stored row.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Routing key.
    pub routing_key: String,
    /// Payload.
    pub payload: String,
}

/// Inserts a row and returns its id.
pub async fn insert(conn: &mut AsyncPgConnection, row: &NewOutboxRow<'_>) -> QueryResult<i64> {
    diesel::insert_into(outbox::table)
        .values(row)
        .returning(outbox::id)
        .get_result(conn)
        .await
}

/// Inserts a close schedule (the relay publishes it if its creator does not) and returns
/// its id.
pub async fn insert_close(
    conn: &mut AsyncPgConnection,
    message: &crate::message::CloseMessage,
) -> QueryResult<i64> {
    insert(
        conn,
        &NewOutboxRow {
            kind: KIND_CLOSE,
            routing_key: "",
            payload: &message.encode_text(),
        },
    )
    .await
}

/// Inserts a close schedule for an order that still has an open trade (a PAID order's
/// other trades, closed now rather than at the deadline); returns its outbox row's id, or
/// None when the order has no open trade.
pub async fn insert_close_if_open_trades(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    message: &crate::message::CloseMessage,
) -> QueryResult<Option<i64>> {
    use diesel::sql_types::{BigInt, Text};

    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let inserted: Option<Inserted> = super::prepared::prepared(
        "INSERT INTO outbox (kind, routing_key, payload)
         SELECT $1, '', $2 FROM orders WHERE id = $3 AND open_trades > 0
         RETURNING id",
    )
    .bind::<Text, _>(KIND_CLOSE)
    .bind::<Text, _>(message.encode_text())
    .bind::<BigInt, _>(order_id)
    .get_result(conn)
    .await
    .optional()?;
    Ok(inserted.map(|i| i.id))
}

/// Which rows the relay claims: up to `limit` of the oldest rows that no one else will
/// publish, that is every event row (decisions leave them to the relay) and close rows
/// older than `grace` (left behind by a crash or a broker outage; younger ones are their
/// creator's to publish).
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// How long a close row belongs to its creator.
    pub grace: Duration,
    /// Batch size.
    pub limit: i64,
}

/// Locks and returns rows to publish, skipping rows another publisher holds, so that a
/// row is published by one relay at a time. Call inside a transaction.
pub async fn claim(conn: &mut AsyncPgConnection, which: Claim) -> QueryResult<Vec<OutboxRow>> {
    // The creator's clock decides ownership, so compare with this process's clock.
    let cutoff = crate::time::earlier(Utc::now(), which.grace);
    outbox::table
        .select(OutboxRow::as_select())
        .order(outbox::id.asc())
        .filter(
            outbox::kind
                .eq(KIND_EVENT)
                .or(outbox::created_at.lt(cutoff)),
        )
        .limit(which.limit)
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Deletes published rows.
pub async fn delete(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<usize> {
    diesel::delete(outbox::table.filter(outbox::id.eq_any(ids)))
        .execute(conn)
        .await
}

/// Deletes published rows in groups (one statement per group; see [`super::batch`]).
pub struct DeletePublished;

#[async_trait]
impl Job for DeletePublished {
    type Item = i64;
    type Output = ();

    async fn run(&self, conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<Vec<()>> {
        delete(conn, ids).await?;
        Ok(vec![(); ids.len()])
    }
}

/// How many rows wait to be published (a health signal: it grows while the broker is down).
pub async fn backlog(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    outbox::table.count().get_result(conn).await
}

/// Waits up to `limit` for the outbox to be empty (a relay publishing it); returns
/// whether it drained. An unreachable database counts as nothing left to wait for.
pub async fn wait_drained(pool: &super::DbPool, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let backlog = match super::conn(pool).await {
            Ok(mut conn) => backlog(&mut conn).await.unwrap_or(0),
            Err(_) => 0,
        };
        if backlog == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
