//! The machine's own ceilings, measured with the crate's own building blocks: RSA-2048
//! signs per second (`RsaPrivateKey::sign_base64`, one thread and every core), the
//! broker's persistent publish+confirm rate (`Publisher::publish`, one at a time and
//! pipelined) and consume+ack rate, and the database's one-decision-per-transaction rate
//! (the guarded update, the audit row and the event row that `Decider` writes).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use order_closer_core::broker::topology::QueueType;
use order_closer_core::db::decisions::NewDecision;
use order_closer_core::db::{self};
use order_closer_core::message::CloseMessage;
use order_closer_engine::relay;
use order_closer_gateway::rsa::RsaPrivateKey;
use serde::Serialize;
use tokio::task::JoinSet;

use super::BenchEnv;
use super::stats::rate;

/// Publishes in flight at once in the pipelined broker measurement.
pub const PUBLISH_WINDOW: usize = 256;
/// Connections in the concurrent database measurement.
pub const DB_CONNECTIONS: usize = 16;

/// Signing content of a typical request's size (a query's parameters, its order number
/// and a timestamp: about what a gateway client signs).
const SIGNING_CONTENT: &str = "app_id=2021000000000000&biz_content={\"out_trade_no\":\
\"B1a2b3c4d-pipeline-12345\"}&charset=utf-8&format=JSON&method=trade.query&\
sign_type=RSA2&timestamp=2026-11-22 10:00:00&version=1.0";

/// A gateway answer of typical size, for the audit row.
const ANSWER: &str = "query: Ok(WaitBuyerPay) {\"code\":\"10000\",\"msg\":\"Success\",\
\"buyer_logon_id\":\"159****5620\",\"buyer_pay_amount\":\"0.00\",\"invoice_amount\":\"0.00\",\
\"out_trade_no\":\"B1a2b3c4d-pipeline-12345\",\"point_amount\":\"0.00\",\"receipt_amount\":\"0.00\",\
\"total_amount\":\"88.88\",\"trade_no\":\"2026112222001468031234567890\",\"trade_status\":\
\"WAIT_BUYER_PAY\"}\nclose: Closed";

/// An event of typical size, for the outbox row.
const EVENT: &str = "{\"v\":1,\"event_id\":\"order.closed:123456\",\"event\":\"order.closed\",\
\"order_id\":123456,\"out_trade_no\":\"B1a2b3c4d-pipeline-12345\",\"status\":\"CLOSED\",\
\"amount_minor\":8888,\"currency\":\"CNY\",\"gateway_trade_no\":null,\"reason\":\
\"deadline_closed_by_us\",\"occurred_at\":\"2026-11-22T02:00:00.123456Z\"}";

/// The ceilings.
#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    /// How long each was measured, seconds.
    pub seconds_each: f64,
    /// Threads used for "all cores".
    pub threads: usize,
    /// RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second on one thread.
    pub rsa_signs_per_second_one_thread: f64,
    /// The same on every core.
    pub rsa_signs_per_second_all_cores: f64,
    /// Persistent, mandatory publishes confirmed per second, one at a time.
    pub broker_publish_confirm_per_second_sequential: f64,
    /// The same with [`PUBLISH_WINDOW`] publishes in flight on the shared channel.
    pub broker_publish_confirm_per_second_pipelined: f64,
    /// Publishes in flight in the pipelined measurement.
    pub broker_pipeline_window: usize,
    /// Deliveries consumed and acknowledged (one ack each) per second.
    pub broker_consume_ack_per_second: f64,
    /// Decision transactions (guarded update + audit row + event row) per second on one
    /// connection.
    pub db_decision_tx_per_second_sequential: f64,
    /// The same on [`DB_CONNECTIONS`] connections.
    pub db_decision_tx_per_second_concurrent: f64,
    /// Connections in the concurrent measurement.
    pub db_concurrent_connections: usize,
}

/// Measures every ceiling for `each`.
pub async fn run(env: &BenchEnv, each: Duration) -> anyhow::Result<Ceilings> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let (one, all) = tokio::task::spawn_blocking(move || {
        let key = RsaPrivateKey::generate()?;
        let one = signs_per_second(&key, 1, each);
        let all = signs_per_second(&key, threads, each);
        Ok::<_, anyhow::Error>((one, all))
    })
    .await
    .context("signing task")??;
    let broker = broker(env, each).await.context("broker ceiling")?;
    let (db_seq, db_conc) = database(env, each).await.context("database ceiling")?;
    Ok(Ceilings {
        seconds_each: each.as_secs_f64(),
        threads,
        rsa_signs_per_second_one_thread: one,
        rsa_signs_per_second_all_cores: all,
        broker_publish_confirm_per_second_sequential: broker.0,
        broker_publish_confirm_per_second_pipelined: broker.1,
        broker_pipeline_window: PUBLISH_WINDOW,
        broker_consume_ack_per_second: broker.2,
        db_decision_tx_per_second_sequential: db_seq,
        db_decision_tx_per_second_concurrent: db_conc,
        db_concurrent_connections: DB_CONNECTIONS,
    })
}

/// Signs on `threads` threads for `each`; signatures per second over all threads.
fn signs_per_second(key: &RsaPrivateKey, threads: usize, each: Duration) -> f64 {
    let started = Instant::now();
    let end = started + each;
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        if key.sign_base64(SIGNING_CONTENT.as_bytes()).is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    rate(total as f64, started.elapsed().as_secs_f64())
}

/// The queue the broker ceiling publishes to and consumes from.
fn ceiling_queue(env: &BenchEnv) -> String {
    format!("{}.bench.ceiling", env.topology.prefix())
}

/// Deletes the ceiling queue (idempotent).
pub async fn delete_ceiling_queue(env: &BenchEnv) -> anyhow::Result<()> {
    env.publisher
        .channel()
        .queue_delete(
            ceiling_queue(env).as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
    Ok(())
}

/// (sequential publish+confirm, pipelined publish+confirm, consume+ack) per second.
async fn broker(env: &BenchEnv, each: Duration) -> anyhow::Result<(f64, f64, f64)> {
    let queue = ceiling_queue(env);
    let mut args = FieldTable::default();
    let kind = match env.topology.queue_type() {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    };
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    env.publisher
        .channel()
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    let payload = CloseMessage::new(123_456, "B1a2b3c4d-pipeline-12345", Utc::now()).encode();
    let publish = || {
        env.publisher
            .publish("", &queue, &payload, FieldTable::default())
    };

    let started = Instant::now();
    let mut sequential = 0u64;
    while started.elapsed() < each {
        publish().await?;
        sequential += 1;
    }
    let sequential_rate = rate(sequential as f64, started.elapsed().as_secs_f64());

    let started = Instant::now();
    let mut pipelined = 0u64;
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < PUBLISH_WINDOW && started.elapsed() < each {
            in_flight.push(publish());
        }
        match in_flight.next().await {
            Some(result) => {
                result?;
                pipelined += 1;
            }
            None => break,
        }
    }
    let pipelined_rate = rate(pipelined as f64, started.elapsed().as_secs_f64());

    let channel = env.connection.create_channel().await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let total = sequential + pipelined;
    let started = Instant::now();
    let end = started + each;
    let mut consumed = 0u64;
    while consumed < total {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                consumed += 1;
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => break,
        }
    }
    let consume_rate = rate(consumed as f64, started.elapsed().as_secs_f64());
    let _ = channel.close(200, "ceiling measured".into()).await;
    delete_ceiling_queue(env).await?;
    Ok((sequential_rate, pipelined_rate, consume_rate))
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// (sequential, concurrent) decision transactions per second.
async fn database(env: &BenchEnv, each: Duration) -> anyhow::Result<(f64, f64)> {
    // Enough NEW orders for both runs at a generous rate; running out ends a run early
    // (its rate is still right).
    let needed = ((each.as_secs_f64() * 30_000.0) as i64).clamp(5_000, 300_000);
    let currency = order_closer_app::gateways::for_channel(env.channel)
        .and_then(|rules| rules.currencies.first().copied())
        .context("the bench's channel has no currency")?;
    let mut conn = db::conn(&env.pool).await?;
    let rows: Vec<Id> = diesel::sql_query(
        "INSERT INTO orders (out_trade_no, channel, amount_minor, currency, deadline) \
         SELECT 'CEIL-' || $1 || '-' || g, $3, 8888, $4, now() \
         FROM generate_series(1, $2) AS g RETURNING id",
    )
    .bind::<diesel::sql_types::Text, _>(&env.tag)
    .bind::<diesel::sql_types::BigInt, _>(needed)
    .bind::<diesel::sql_types::Text, _>(env.channel)
    .bind::<diesel::sql_types::Text, _>(currency)
    .load(&mut conn)
    .await
    .context("inserting orders for the database ceiling")?;
    let mut ids: Vec<i64> = rows.into_iter().map(|r| r.id).collect();
    ids.sort_unstable();
    let half = ids.len() / 2;
    let concurrent_ids = Arc::new(ids.split_off(half));

    let started = Instant::now();
    let mut sequential = 0u64;
    for id in &ids {
        if started.elapsed() >= each {
            break;
        }
        if decision_tx(&mut conn, *id).await? {
            sequential += 1;
        }
    }
    let sequential_rate = rate(sequential as f64, started.elapsed().as_secs_f64());
    drop(conn);

    let pool = db::pool(&env.database_url, DB_CONNECTIONS)?;
    // Open every connection before the clock starts.
    let mut warm = Vec::new();
    for _ in 0..DB_CONNECTIONS {
        warm.push(db::conn(&pool).await?);
    }
    drop(warm);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..DB_CONNECTIONS {
        let pool = pool.clone();
        let ids = concurrent_ids.clone();
        let next = next.clone();
        set.spawn(async move {
            let mut conn = db::conn(&pool).await?;
            let mut done = 0u64;
            while started.elapsed() < each {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                if decision_tx(&mut conn, *id).await? {
                    done += 1;
                }
            }
            Ok::<_, anyhow::Error>(done)
        });
    }
    let mut concurrent = 0u64;
    while let Some(joined) = set.join_next().await {
        concurrent += joined.context("database ceiling task")??;
    }
    let concurrent_rate = rate(concurrent as f64, started.elapsed().as_secs_f64());
    pool.close();

    // The event rows are not for the worker's relay.
    let mut conn = db::conn(&env.pool).await?;
    diesel::sql_query("DELETE FROM outbox")
        .execute(&mut conn)
        .await?;
    Ok((sequential_rate, concurrent_rate))
}

/// One decision's transaction, as `Decider` writes it for a close.
async fn decision_tx(conn: &mut AsyncPgConnection, id: i64) -> anyhow::Result<bool> {
    let done = conn
        .transaction::<_, diesel::result::Error, _>(async |tx| {
            if !db::orders::mark_closed(tx, id, "deadline_closed_by_us").await? {
                return Ok(false);
            }
            db::decisions::insert(
                tx,
                &NewDecision {
                    order_id: id,
                    attempt: 0,
                    outcome: order_closer_core::db::decisions::DecisionOutcome::Closed,
                    gateway_answer: Some(ANSWER),
                    detail: "deadline_closed_by_us",
                    actor: "bench",
                },
            )
            .await?;
            relay::enqueue_event(tx, "order.closed", EVENT).await?;
            Ok(true)
        })
        .await?;
    Ok(done)
}
