//! The notification run: payments at a steady rate, each announced by the simulator's
//! signed notification to `order-closer notify` (a child process, as in production), and
//! the time from each payment to our PAID commit. The target: p99 at most 50 ms at
//! 1,000 payments a second on this machine (reported, never asserted).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer_core::closer::{Due, NewOrder};
use order_closer_core::db::decisions::DecisionOutcome;
use order_closer_core::db::{self, schema::decisions};
use order_closer_sim::NotifyPlan;
use serde::Serialize;

use super::BenchEnv;
use super::stats::Percentiles;
use super::worker_proc::WorkerProcess;

/// The simulator's resend schedule, as a share of Alipay's.
const RESEND_FACTOR: f64 = 0.01;

/// How long after the last payment the run waits for the last commit.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct NotifyResult {
    /// Payments made.
    pub payments: u32,
    /// Payments per second asked for.
    pub target_rate: f64,
    /// Payments per second made.
    pub achieved_rate: f64,
    /// Orders the endpoint marked PAID.
    pub committed: u32,
    /// Commits per second, from the first payment to the last commit.
    pub notifications_per_second: f64,
    /// Payment (at the simulator) to PAID commit, milliseconds.
    pub payment_to_paid_ms: Percentiles,
    /// Notification sends, and those answered `success`.
    pub sends: u64,
    /// Sends answered `success`.
    pub acknowledged: u64,
}

/// Makes `payments` payments at `rate` a second and measures payment to PAID.
pub async fn run(env: &BenchEnv, payments: u32, rate: f64) -> anyhow::Result<NotifyResult> {
    // Orders due in an hour, every trade scanned: the run pays them.
    let closer = env.app().closer_on(env.pool.clone(), None);
    let numbers: Vec<String> = (0..payments)
        .map(|i| format!("N{}-{i:07}", env.tag))
        .collect();
    for chunk in numbers.chunks(10_000) {
        let new: Vec<NewOrder> = chunk
            .iter()
            .map(|no| NewOrder::new(env.channel, no, 1234, Due::After(Duration::from_secs(3600))))
            .collect();
        closer.create_orders(&new).await?;
    }
    for no in &numbers {
        env.sim_state
            .buyer(no)
            .at(env.channel)
            .scans(1234)
            .send()
            .map_err(|e| anyhow::anyhow!("scan {no}: {e}"))?;
    }

    // `order-closer notify` as a child process, the simulator notifying it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut notify = WorkerProcess::spawn(env, "notify", &["notify", "--listen", &listen])?;
    let up = Instant::now();
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        notify.ensure_alive()?;
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(30),
            "order-closer notify did not listen within 30 s; its log ends:\n{}",
            notify.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A notification the endpoint could not take (its database busy on a starved
    // machine) is resent on Alipay's schedule a hundred times sooner (after 2.4 s, 6 s,
    // ...), so it is committed within the drain instead of four minutes later.
    env.notifier()
        .set_plan(NotifyPlan::to(
            format!("http://{listen}/notify"),
            RESEND_FACTOR,
        ))
        .map_err(|e| anyhow::anyhow!("notify plan: {e}"))?;

    // Payments at a steady rate.
    let started = tokio::time::Instant::now();
    let first_payment = Utc::now();
    for (i, no) in numbers.iter().enumerate() {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        env.sim_state
            .buyer(no)
            .pays()
            .send()
            .map_err(|e| anyhow::anyhow!("pay {no}: {e}"))?;
    }
    let paying = started.elapsed().as_secs_f64();

    // Every commit, or the drain limit.
    let end = Instant::now() + DRAIN_LIMIT;
    let commits = loop {
        let commits = notify_commits(env).await?;
        if commits.len() >= numbers.len() || Instant::now() > end {
            break commits;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    notify.stop().await?;
    let stats = env.notifier().stats();
    env.notifier()
        .set_plan(NotifyPlan::default())
        .map_err(|e| anyhow::anyhow!("notify plan: {e}"))?;

    let mut latencies: Vec<f64> = commits
        .iter()
        .filter_map(|(no, at)| {
            let paid = env.sim_state.trade(no)?.paid_at?;
            Some((*at - paid).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let last = commits.iter().map(|(_, at)| *at).max();
    let span = last
        .map(|l| (l - first_payment).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok(NotifyResult {
        payments: numbers.len() as u32,
        target_rate: rate,
        achieved_rate: numbers.len() as f64 / paying.max(f64::EPSILON),
        committed: commits.len() as u32,
        notifications_per_second: if span > 0.0 {
            commits.len() as f64 / span
        } else {
            0.0
        },
        payment_to_paid_ms: Percentiles::of(&latencies),
        sends: stats.sends,
        acknowledged: stats.acknowledged,
    })
}

/// (order number, commit time) of every PAID decision the notify endpoint made.
async fn notify_commits(env: &BenchEnv) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    use order_closer_core::db::schema::orders;
    let mut conn = db::conn(&env.pool).await?;
    Ok(decisions::table
        .inner_join(orders::table)
        .filter(decisions::actor.like("notify%"))
        .filter(decisions::outcome.eq(DecisionOutcome::Paid.as_str()))
        .select((orders::out_trade_no, decisions::decided_at))
        .load(&mut conn)
        .await?)
}
