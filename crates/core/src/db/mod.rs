//! PostgreSQL at the edge: the connection pool, migrations, and one module per table.

pub mod anomalies;
pub mod batch;
pub mod connect;
pub mod conninfo;
pub mod decisions;
pub mod orders;
pub mod outbox;
pub mod prepared;
pub mod quota;
pub mod refunds;
pub mod schema;
pub mod text_enum;
pub mod trades;

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::pooled_connection::deadpool::{Hook, HookError, Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use thiserror::Error;

/// The migrations in the repository's top-level `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// How long to wait for a pooled connection or a new one before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of async Postgres connections.
pub type DbPool = Pool<AsyncPgConnection>;
/// A connection checked out of the pool.
pub type PooledConn = Object<AsyncPgConnection>;

/// A database failure.
#[derive(Debug, Error)]
pub enum DbError {
    /// No connection could be had (server down, pool exhausted, bad URL).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed.
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
}

/// A pooled connection idle for longer than this is checked with a query before it is
/// handed out again; one used more recently is handed out as it is.
pub const VERIFY_AFTER_IDLE: Duration = Duration::from_secs(10);

/// The server cancels a statement on a pooled connection that runs longer than this
/// (before [`batch::GROUP_TIMEOUT`], so that a group's connection stays usable).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(25);

/// A statement on a pooled connection that waits longer than this for a row lock fails
/// (a decision then tries again later instead of stalling the others of its group).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a pool. A connection whose socket closed is never handed out (the driver knows),
/// and one that idled longer than [`VERIFY_AFTER_IDLE`] is verified with `SELECT 1`
/// first, so a worker that idled through a database restart gets a fresh connection
/// instead of an error, without paying a round trip on every check-out under load. Every
/// connection gets [`STATEMENT_TIMEOUT`] and [`LOCK_TIMEOUT`], and is opened with the
/// URL's TLS mode ([`connect::Target`]).
pub fn pool(url: &str, max_size: usize) -> Result<DbPool, DbError> {
    let target = Arc::new(connect::Target::parse(url)?);
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |_url| {
        let target = Arc::clone(&target);
        async move {
            target
                .connect()
                .await
                .map_err(diesel::ConnectionError::BadConnection)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    Pool::builder(manager)
        .post_create(Hook::async_fn(|conn: &mut AsyncPgConnection, _| {
            Box::pin(async move {
                let limits = format!(
                    "SET statement_timeout = {}; SET lock_timeout = {}",
                    STATEMENT_TIMEOUT.as_millis(),
                    LOCK_TIMEOUT.as_millis()
                );
                conn.batch_execute(&limits)
                    .await
                    .map_err(|e| HookError::message(format!("setting the statement limits: {e}")))
            })
        }))
        .pre_recycle(Hook::async_fn(|conn, metrics| {
            let idle = metrics.last_used();
            Box::pin(async move {
                if idle < VERIFY_AFTER_IDLE {
                    return Ok(());
                }
                let ping = diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                    .get_result::<i32>(conn);
                match tokio::time::timeout(CONNECT_TIMEOUT, ping).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(HookError::message(format!(
                        "idle connection failed its check: {e}"
                    ))),
                    Err(_) => Err(HookError::message(
                        "idle connection did not answer its check",
                    )),
                }
            })
        }))
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| DbError::Unavailable(e.to_string()))
}

/// A pool whose first connection is opened now, so that a database that cannot be used
/// (a wrong password, TLS mode or CA) fails at start-up naming the cause, instead of at
/// the first order or decision.
pub async fn ready_pool(url: &str, max_size: usize) -> Result<DbPool, DbError> {
    let pool = pool(url, max_size)?;
    drop(conn(&pool).await?);
    Ok(pool)
}

/// Checks a connection out of the pool.
pub async fn conn(pool: &DbPool) -> Result<PooledConn, DbError> {
    pool.get()
        .await
        .map_err(|e| DbError::Unavailable(e.to_string()))
}

/// Takes `n` values from a sequence (ids a statement will then insert explicitly).
pub async fn next_ids(
    conn: &mut AsyncPgConnection,
    sequence: &str,
    n: usize,
) -> QueryResult<Vec<i64>> {
    #[derive(QueryableByName)]
    struct Next {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let rows: Vec<Next> =
        prepared::prepared("SELECT nextval($1::regclass) AS id FROM generate_series(1, $2)")
            .bind::<diesel::sql_types::Text, _>(sequence)
            .bind::<diesel::sql_types::BigInt, _>(n as i64)
            .load(conn)
            .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Opens one connection outside any pool, with the URL's TLS mode.
pub async fn connect(url: &str) -> Result<AsyncPgConnection, DbError> {
    let target = connect::Target::parse(url)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, target.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(DbError::Unavailable(e)),
        Err(_) => Err(DbError::Unavailable(format!(
            "{target:?}: no connection within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// Creates the database named in `url` if it does not exist (connecting to the
/// `postgres` maintenance database of the same server, with the same options and TLS
/// mode, to do so).
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let (admin_url, name) = split_database(url)
        .ok_or_else(|| DbError::Unavailable("DATABASE_URL names no database".into()))?;
    let mut admin = connect(&admin_url).await?;
    if !database_exists(&mut admin, &name).await? {
        let quoted = name.replace('"', "\"\"");
        match diesel::sql_query(format!("CREATE DATABASE \"{quoted}\""))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Someone else created it at the same moment (reported as "already exists" or
            // as a unique violation, depending on the timing): that is what we wanted.
            Err(e) if database_exists(&mut admin, &name).await.unwrap_or(false) => {
                tracing::debug!(database = %name, error = %e, "database created concurrently");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn database_exists(admin: &mut AsyncPgConnection, name: &str) -> Result<bool, DbError> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let found: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(name)
            .get_result(admin)
            .await?;
    Ok(found.exists)
}

/// Splits `postgres://user@host:port/db?opts` into the same URL naming the maintenance
/// database (`postgres://user@host:port/postgres?opts`) and `db`.
fn split_database(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.split_once('/')?;
    let (name, query) = path.split_once('?').unwrap_or((path, ""));
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    (!name.is_empty()).then(|| {
        (
            format!("{scheme}://{authority}/postgres{query}"),
            name.to_owned(),
        )
    })
}

/// The same database URL with `search_path` set to `schema`, so that every table lives
/// in that schema (the demo, tests and benchmarks isolate themselves this way).
pub fn with_search_path(url: &str, schema: &str) -> String {
    conninfo::with_param(url, "options", &format!("-c search_path={schema}"))
}

/// Creates a schema (its name must be a plain identifier).
pub async fn create_schema(url: &str, schema: &str) -> Result<(), DbError> {
    let mut conn = connect(url).await?;
    diesel::sql_query(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Drops a schema and everything in it.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), DbError> {
    let mut conn = connect(url).await?;
    diesel::sql_query(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Runs pending migrations, creating the database first when it is missing.
pub async fn migrate(url: &str) -> Result<usize, DbError> {
    ensure_database(url).await?;
    let conn = connect(url).await?;
    // The harness blocks (it wraps diesel's sync migration runner), so it runs on a
    // blocking thread where `block_in_place` is allowed.
    tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|e| DbError::Migration(e.to_string()))
    })
    .await
    .map_err(|e| DbError::Migration(format!("migration task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_database_urls() {
        assert_eq!(
            split_database("postgres://u:p@h:5432/db?sslmode=verify-full&sslrootcert=ca.pem"),
            Some((
                "postgres://u:p@h:5432/postgres?sslmode=verify-full&sslrootcert=ca.pem".into(),
                "db".into()
            ))
        );
        assert_eq!(
            split_database("postgres://u:p@h:5432/db"),
            Some(("postgres://u:p@h:5432/postgres".into(), "db".into()))
        );
        assert_eq!(split_database("postgres://h"), None);
        assert_eq!(split_database("postgres://h/"), None);
    }
}
