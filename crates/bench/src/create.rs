//! `Closer::create_order` throughput against a raw `INSERT` of the same rows into
//! `orders`, at the same concurrency on the same pool. The library call also writes
//! the outbox row in the same transaction, publishes the close message with a confirm
//! and deletes the row; the ratio says what that costs.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use diesel_async::RunQueryDsl;
use indicatif::ProgressBar;
use order_closer_core::closer::{Due, NewOrder};
use order_closer_core::db;
use serde::Serialize;

use super::stats::rate;
use super::{BenchEnv, fan_out};

/// Far enough ahead that no worker ever sees these orders during the run.
const FAR: Duration = Duration::from_secs(86_400);

/// The create measurement.
#[derive(Debug, Clone, Serialize)]
pub struct CreateResult {
    /// Orders per side.
    pub orders: usize,
    /// Concurrent tasks (and pool connections).
    pub tasks: usize,
    /// `Closer::create_order` calls completed per second.
    pub create_order_per_second: f64,
    /// Raw single-row inserts per second.
    pub raw_insert_per_second: f64,
    /// create_order / raw insert.
    pub ratio: f64,
}

/// Runs both sides with `tasks` tasks, `count` orders each.
pub async fn run(env: &BenchEnv, count: usize, tasks: usize) -> anyhow::Result<CreateResult> {
    let pool = db::pool(&env.database_url, tasks)?;
    // Open every connection before either clock starts.
    let mut warm = Vec::new();
    for _ in 0..tasks {
        warm.push(db::conn(&pool).await?);
    }
    drop(warm);
    let deadline = Utc::now() + chrono::Duration::from_std(FAR)?;
    let hidden = ProgressBar::hidden();

    let raw_pool = pool.clone();
    let prefix = format!("C{}-raw", env.tag);
    let channel = env.channel;
    let currency = order_closer_app::gateways::for_channel(channel)
        .and_then(|rules| rules.currencies.first().copied())
        .context("the bench's channel has no currency")?;
    let started = Instant::now();
    fan_out(tasks, count, &hidden, move |i| {
        let pool = raw_pool.clone();
        let no = format!("{prefix}-{i}");
        async move {
            let mut conn = db::conn(&pool).await?;
            // The order (its one trade comes with it), as bare as the schema allows.
            diesel::sql_query(
                "INSERT INTO orders (out_trade_no, channel, amount_minor, currency, deadline)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind::<diesel::sql_types::Text, _>(&no)
            .bind::<diesel::sql_types::Text, _>(channel)
            .bind::<diesel::sql_types::BigInt, _>(100 + (i as i64 % 9_900))
            .bind::<diesel::sql_types::Text, _>(currency)
            .bind::<diesel::sql_types::Timestamptz, _>(deadline)
            .execute(&mut conn)
            .await
            .with_context(|| format!("inserting {no}"))?;
            Ok(())
        }
    })
    .await?;
    let raw = rate(count as f64, started.elapsed().as_secs_f64());

    let closer = env
        .app()
        .closer_on(pool.clone(), Some(env.publisher.clone()));
    let prefix = format!("C{}-lib", env.tag);
    let started = Instant::now();
    let published = fan_out(tasks, count, &hidden, move |i| {
        let closer = closer.clone();
        let no = format!("{prefix}-{i}");
        async move {
            let created = closer
                .create_order(NewOrder::new(
                    channel,
                    &no,
                    100 + (i as i64 % 9_900),
                    Due::At(deadline),
                ))
                .await
                .with_context(|| format!("creating {no}"))?;
            Ok(created.published)
        }
    })
    .await?;
    let library = rate(count as f64, started.elapsed().as_secs_f64());
    pool.close();
    let unpublished = published.iter().filter(|p| !**p).count();
    if unpublished > 0 {
        eprintln!("warning: {unpublished} close messages were left to the relay");
    }
    Ok(CreateResult {
        orders: count,
        tasks,
        create_order_per_second: library,
        raw_insert_per_second: raw,
        ratio: if raw > 0.0 { library / raw } else { 0.0 },
    })
}
