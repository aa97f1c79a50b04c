//! The `gateway_quotas` table: one request quota per merchant account at a gateway,
//! shared by every process through this database. Each row is a GCRA reservation clock
//! (the theoretical arrival time of the next request, `tat_us`) and the end of a
//! slow-down the gateway asked for (`slow_until_us`).
//!
//! A booking is one statement: the row is locked, the next slots are computed from it
//! and the caller's rate, the clock moves past them, and the caller learns when its
//! slots start on this server's clock (so processes whose clocks differ agree). Nothing
//! holds the row between bookings: a process that dies holds at most what it booked.
//!
//! The arithmetic here is the one of `order_closer_gateway::quota::bucket` (the local
//! limiter's, unit-tested there); `tests/all/gateway_quota.rs` runs both on one script
//! and requires the same answers.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::prepared::prepared;

/// A booking asked of the shared clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask<'a> {
    /// The row: `<channel>:<account>`.
    pub account: &'a str,
    /// The clock to book at, microseconds since the Unix epoch; `None` (what processes
    /// pass) is the server's own clock. Tests script it.
    pub at: Option<i64>,
    /// How many slots the caller wants (at least 1).
    pub want: u32,
    /// Microseconds between two requests at the account's full steady rate (doubled
    /// while the account is slowed down).
    pub interval_us: i64,
    /// How many requests may go at once after a pause (at least 1).
    pub burst: u32,
    /// Bulk work (reconcile): it books only slots that start at once and leave half the
    /// burst to deadline work, never a place in the queue; deadline work books whatever
    /// comes next and waits for it.
    pub bulk: bool,
}

/// What a booking got, on the server's clock (microseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Booked {
    /// The clock the booking was made at.
    #[diesel(sql_type = BigInt)]
    pub now: i64,
    /// Slots booked: `want` for deadline work; for bulk work as many as fit, maybe none.
    #[diesel(sql_type = BigInt)]
    pub slots: i64,
    /// When the first slot may start: slot `i` starts at `max(now, first + i * spacing)`.
    #[diesel(sql_type = BigInt)]
    pub first: i64,
    /// Microseconds between two slots (the interval, doubled while slowed down).
    #[diesel(sql_type = BigInt)]
    pub spacing: i64,
    /// For bulk work refused (`slots` 0): when a booking may succeed, at the earliest.
    #[diesel(sql_type = BigInt)]
    pub retry_at: i64,
}

/// What a slow-down did, on the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct SlowedDown {
    /// Whether it started a slow-down (none was running): worth a log line.
    #[diesel(sql_type = Bool)]
    pub started: bool,
    /// Until when the rate is halved now.
    #[diesel(sql_type = BigInt)]
    pub until: i64,
}

/// Creates the account's row if it has none (a fresh clock: the whole burst free).
pub async fn ensure(conn: &mut AsyncPgConnection, account: &str) -> diesel::QueryResult<()> {
    prepared("INSERT INTO gateway_quotas (account) VALUES ($1) ON CONFLICT (account) DO NOTHING")
        .bind::<Text, _>(account)
        .execute(conn)
        .await
        .map(drop)
}

/// Books the next slots of the account; `None` when it has no row yet ([`ensure`]).
///
/// With `t` the spacing (the interval, doubled while slowed down), `tol = (burst - 1) * t`
/// and `theta = max(tat, now)`: deadline work gets `want` slots, the first starting at
/// `theta - tol`; bulk work gets those of them with `theta + i * t <= now + tol / 2`
/// (they start at once). The clock moves to `theta + slots * t`.
pub async fn book(
    conn: &mut AsyncPgConnection,
    ask: Ask<'_>,
) -> diesel::QueryResult<Option<Booked>> {
    let rows: Vec<Booked> = prepared(
        "WITH p AS (
             SELECT $1::text AS account,
                    coalesce($2::bigint,
                             (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) AS now,
                    $3::bigint AS want, $4::bigint AS step, $5::bigint AS burst,
                    $6::boolean AS bulk
         ),
         q AS (
             SELECT p.account, p.now, p.want, p.burst, p.bulk,
                    greatest(g.tat_us, p.now) AS theta,
                    CASE WHEN p.now < g.slow_until_us THEN p.step * 2
                         ELSE p.step END AS t
             FROM gateway_quotas g JOIN p ON g.account = p.account
             FOR UPDATE OF g
         ),
         r AS (
             SELECT q.*, (q.burst - 1) * q.t AS tol FROM q
         ),
         s AS (
             SELECT r.*,
                    CASE WHEN NOT r.bulk THEN r.want
                         WHEN r.theta > r.now + r.tol / 2 THEN 0
                         ELSE least(r.want, (r.now + r.tol / 2 - r.theta) / r.t + 1)
                    END AS slots
             FROM r
         )
         UPDATE gateway_quotas g SET tat_us = s.theta + s.slots * s.t
         FROM s WHERE g.account = s.account
         RETURNING s.now, s.slots, s.theta - s.tol AS first, s.t AS spacing,
                   s.theta - s.tol / 2 AS retry_at",
    )
    .bind::<Text, _>(ask.account)
    .bind::<Nullable<BigInt>, _>(ask.at)
    .bind::<BigInt, _>(i64::from(ask.want.max(1)))
    .bind::<BigInt, _>(ask.interval_us.max(1))
    .bind::<BigInt, _>(i64::from(ask.burst.max(1)))
    .bind::<Bool, _>(ask.bulk)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}

/// The gateway throttled the account: its rate is halved until `window_us` from now (a
/// slow-down already running is extended, never shortened). `None` when the account has
/// no row.
pub async fn slow_down(
    conn: &mut AsyncPgConnection,
    account: &str,
    at: Option<i64>,
    window_us: i64,
) -> diesel::QueryResult<Option<SlowedDown>> {
    let rows: Vec<SlowedDown> = prepared(
        "WITH p AS (
             SELECT $1::text AS account,
                    coalesce($2::bigint,
                             (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) AS now,
                    $3::bigint AS span
         ),
         old AS (
             SELECT g.account, g.slow_until_us AS before, p.now, p.span
             FROM gateway_quotas g JOIN p ON g.account = p.account
             FOR UPDATE OF g
         )
         UPDATE gateway_quotas g
         SET slow_until_us = greatest(old.before, old.now + old.span)
         FROM old WHERE g.account = old.account
         RETURNING old.before <= old.now AS started, g.slow_until_us AS until",
    )
    .bind::<Text, _>(account)
    .bind::<Nullable<BigInt>, _>(at)
    .bind::<BigInt, _>(window_us)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}
