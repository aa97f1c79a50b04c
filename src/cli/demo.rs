//! `order-closer demo`: the whole product end to end on one machine.
//!
//! Starts the gateway simulator in process, migrates, creates a few hundred orders with
//! short deadlines, lets simulated buyers act (never scan; scan and leave; pay before the
//! deadline with the payment notification delivered, or lost; pay during the close),
//! runs the worker and the notify endpoint, and checks that every order's final state
//! agrees with the simulator.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use indicatif::{ProgressBar, ProgressStyle};
use order_closer::broker::timed;
use order_closer::closer::{Due, NewOrder};
use order_closer::db::decisions::DecisionOutcome;
use order_closer::db::schema::{decisions, orders};
use order_closer::db::{self, DbPool};
use order_closer::order::{Order, OrderStatus};
use order_closer::sandbox::Sandbox;
use order_closer::sim::{BuyerClient, FaultKind, NotifyPlan, SimTradeStatus};
use order_closer_testkit::stats::percentile;
use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Flags of `demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How many orders to create.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(4..=100_000))]
    orders: u32,
    /// Shortest time to pay.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    min_deadline: Duration,
    /// Longest time to pay.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    max_deadline: Duration,
    /// Give up waiting this long after the last deadline.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Share of orders whose first gateway answer fails once (alternately HTTP 502 and
    /// the gateway's "busy"), to show retries; 0 turns faults off. The faulty orders
    /// are spread evenly, not drawn at random, so every run retries the same number.
    #[arg(long, default_value_t = 0.05, value_parser = parse_rate)]
    fault_rate: f64,
    /// Which gateway the orders go through: one channel (`alipay`, `wechat`), or `all`
    /// (the orders spread over every gateway).
    #[arg(long, default_value = "all", value_parser = |t: &str| order_closer::gateway::parse_channel(t, true))]
    channel: String,
}

/// Whether order `i` is one of the `rate` share whose first gateway answer fails: the
/// orders where `i * rate` crosses a whole number, so the faults are spread evenly.
fn faulty(i: u32, rate: f64) -> bool {
    (f64::from(i + 1) * rate).floor() > (f64::from(i) * rate).floor()
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{text:?} is not a rate between 0 and 1")),
    }
}

/// What a simulated buyer does with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Buyer {
    /// Never scans the code: no trade at the gateway.
    NeverScans,
    /// Scans, then walks away: a waiting trade that we must close at the gateway.
    ScansAndLeaves,
    /// Pays before the deadline; the payment notification arrives at once.
    PaysCallbackDelivered,
    /// Pays before the deadline, but the payment notification is lost.
    PaysCallbackLost,
    /// Starts paying exactly while we close: the close is refused, the order is paid.
    PaysDuringClose,
}

impl Buyer {
    fn pick(i: u32) -> Self {
        match i % 20 {
            0..=3 => Self::NeverScans,
            4..=7 => Self::ScansAndLeaves,
            8..=12 => Self::PaysCallbackDelivered,
            13..=16 => Self::PaysCallbackLost,
            _ => Self::PaysDuringClose,
        }
    }

    fn expected(self) -> OrderStatus {
        match self {
            Self::NeverScans | Self::ScansAndLeaves => OrderStatus::Closed,
            Self::PaysCallbackDelivered | Self::PaysCallbackLost | Self::PaysDuringClose => {
                OrderStatus::Paid
            }
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::NeverScans => "never scans",
            Self::ScansAndLeaves => "scans and leaves",
            Self::PaysCallbackDelivered => "pays, callback delivered",
            Self::PaysCallbackLost => "pays, callback lost",
            Self::PaysDuringClose => "pays during the close",
        }
    }
}

/// Runs the demo; exit code 0 only when every order agrees with the simulator.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.min_deadline <= args.max_deadline,
        "--min-deadline must not exceed --max-deadline"
    );
    let run_id: String = format!("{:06x}", rand::rng().random_range(0..0xff_ffffu32));
    println!(
        "order-closer demo, run {run_id}: {} orders, {:.0}% gateway faults",
        args.orders,
        args.fault_rate * 100.0
    );

    // A sandbox of its own (schema, queues, the simulator with fresh keys), removed at
    // the end: the demo neither sees nor leaves anything in the database and broker it
    // runs against. The run id names the sandbox as well as the orders.
    let mut sandbox =
        Sandbox::start_tagged("demo", &run_id, std::env::vars().collect(), &[]).await?;
    let result = demo(&sandbox, &args, &run_id).await;
    sandbox.cleanup().await;
    result
}

/// The demo proper, in `sandbox`.
async fn demo(sandbox: &Sandbox, args: &DemoArgs, run_id: &str) -> anyhow::Result<ExitCode> {
    let pool = sandbox.pool.clone();
    let running = sandbox.sim();
    let buyers = sandbox.buyers.clone();
    let app = sandbox.app();

    // The notify endpoint, in process, and the simulator's notifications sent to it
    // (resends a hundred times faster than Alipay's).
    let notify_stop = CancellationToken::new();
    let notifier = Arc::new(app.notifier(pool.clone(), format!("notify:demo-{run_id}"))?);
    let notify_addr = order_closer::notify::http::serve(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        Arc::clone(&notifier),
        notify_stop.clone(),
    )
    .await
    .context("starting the notify endpoint")?;
    running
        .notifier()
        .set_plan(NotifyPlan::to(format!("http://{notify_addr}/notify"), 0.01))
        .map_err(|e| anyhow::anyhow!("notify plan: {e}"))?;

    // The worker, in process.
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        app.worker(pool.clone(), format!("demo-worker:{run_id}"))?
            .run(stop.clone()),
    );

    // Orders and their buyers.
    let closer = sandbox.closer();
    let channels: Vec<&'static str> = match args.channel.as_str() {
        "all" => order_closer::gateway::rules::channels().collect(),
        one => order_closer::gateway::rules::channels()
            .filter(|c| *c == one)
            .collect(),
    };
    let started = Instant::now();
    let mut plan = BTreeMap::new();
    let mut buyer_tasks = tokio::task::JoinSet::new();
    let span = args
        .max_deadline
        .saturating_sub(args.min_deadline)
        .as_millis() as u64;
    for i in 0..args.orders {
        let no = format!("DEMO-{run_id}-{i:05}");
        let wait = args.min_deadline + Duration::from_millis(rand::rng().random_range(0..=span));
        let amount = rand::rng().random_range(100..100_000);
        // Round the channels, and the behaviours within each.
        let channel = channels[i as usize % channels.len()];
        let buyer = Buyer::pick(i / channels.len() as u32);
        let created = closer
            .create_order(NewOrder::new(channel, &no, amount, Due::After(wait)))
            .await?;
        plan.insert(no.clone(), (buyer, created.order.id));
        // Each gateway gets its share of faults, both kinds.
        let nth = i / channels.len() as u32;
        if faulty(nth, args.fault_rate) {
            let ordinal = (f64::from(nth) * args.fault_rate).floor() as usize;
            let kind = [FaultKind::Http502, FaultKind::Busy20000][ordinal % 2];
            running
                .state()
                .fail_next(&no, kind, 1)
                .map_err(|e| anyhow::anyhow!("--fault-rate: {e}"))?;
        }
        let buyers = buyers.at(channel);
        let deadline = created.order.deadline;
        buyer_tasks.spawn(async move { act(&buyers, &no, amount, buyer, wait, deadline).await });
    }
    println!(
        "created {} orders in {:.1}s; buyers are acting, the worker is deciding",
        args.orders,
        started.elapsed().as_secs_f64()
    );

    let ids: Vec<i64> = plan.values().map(|(_, id)| *id).collect();
    let settled = wait_for_decisions(&pool, &ids, args.max_deadline + args.timeout).await?;
    while let Some(result) = buyer_tasks.join_next().await {
        if let Ok(Err(e)) = result {
            eprintln!("a simulated buyer failed: {e}");
        }
    }
    // Let the relay announce the last decisions before stopping the worker.
    db::outbox::wait_drained(&pool, Duration::from_secs(15)).await;
    stop.cancel();
    let _ = worker.await;
    notify_stop.cancel();
    let notifications = running.notifier().stats();

    let report = report(&pool, &plan, &buyers).await?;
    let events = drain_events(
        sandbox.publisher.channel(),
        &sandbox.topology.events_audit_queue(),
    )
    .await?;

    println!("{}", report.table);
    println!(
        "notifications received    {} ({} answered success, {} lost on purpose)",
        notifications.sends, notifications.acknowledged, notifications.dropped
    );
    let unique: std::collections::BTreeSet<&str> = events.iter().map(String::as_str).collect();
    let duplicates = events.len() - unique.len();
    println!(
        "events announced          {} ({duplicates} duplicates)",
        events.len()
    );
    let events_ok = unique.len() as u64 == report.decided;
    if !events_ok {
        println!(
            "MISMATCH: {} decisions but {} distinct events",
            report.decided,
            unique.len()
        );
    }
    let ok = settled && report.problems.is_empty() && events_ok;
    for p in report.problems.iter().take(20) {
        println!("MISMATCH: {p}");
    }
    println!(
        "{}",
        if ok {
            "CHECK PASSED: every order's final state agrees with the simulator"
        } else {
            "CHECK FAILED"
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One simulated buyer.
async fn act(
    buyers: &BuyerClient,
    no: &str,
    amount: i64,
    buyer: Buyer,
    wait: Duration,
    deadline: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let before_deadline = |fraction: f64| Duration::from_secs_f64(wait.as_secs_f64() * fraction);
    let moment: f64 = rand::rng().random_range(0.0..1.0);
    // The buyer scans the QR code, valid until the deadline.
    let scan = || buyers.buyer(no).scans(amount).qr_valid_until(deadline);
    match buyer {
        Buyer::NeverScans => {}
        Buyer::ScansAndLeaves => {
            tokio::time::sleep(before_deadline(moment * 0.7)).await;
            scan().send().await?;
        }
        Buyer::PaysCallbackDelivered => {
            tokio::time::sleep(before_deadline(moment * 0.5)).await;
            scan().send().await?;
            tokio::time::sleep(before_deadline(0.2)).await;
            buyers.buyer(no).pays().send().await?;
        }
        Buyer::PaysCallbackLost => {
            tokio::time::sleep(before_deadline(moment * 0.5)).await;
            scan().send().await?;
            tokio::time::sleep(before_deadline(0.2)).await;
            buyers.buyer(no).pays().loses_notification().send().await?;
        }
        Buyer::PaysDuringClose => {
            scan().send().await?;
            buyers.buyer(no).pays_on_close().send().await?;
        }
    }
    Ok(())
}

/// Waits with a progress bar until no order of this run is NEW, or the time is up.
async fn wait_for_decisions(pool: &DbPool, ids: &[i64], limit: Duration) -> anyhow::Result<bool> {
    let bar = ProgressBar::new(ids.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} decided {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + limit;
    loop {
        let mut conn = db::conn(pool).await?;
        let open: i64 = orders::table
            .filter(orders::id.eq_any(ids))
            .filter(orders::status.eq(OrderStatus::New.as_str()))
            .count()
            .get_result(&mut conn)
            .await?;
        bar.set_position(ids.len() as u64 - open as u64);
        if open == 0 {
            bar.finish();
            return Ok(true);
        }
        if Instant::now() > deadline {
            bar.abandon_with_message(format!("{open} still open: giving up"));
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Takes every event from the audit queue and returns their ids.
async fn drain_events(channel: &lapin::Channel, queue: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    while let Some(message) = timed(
        "basic.get",
        channel.basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        ),
    )
    .await?
    {
        let event: serde_json::Value = serde_json::from_slice(&message.delivery.data)?;
        ids.push(event["event_id"].as_str().unwrap_or_default().to_owned());
    }
    Ok(ids)
}

struct Report {
    table: String,
    problems: Vec<String>,
    decided: u64,
}

async fn report(
    pool: &DbPool,
    plan: &BTreeMap<String, (Buyer, i64)>,
    buyers: &BuyerClient,
) -> anyhow::Result<Report> {
    let ids: Vec<i64> = plan.values().map(|(_, id)| *id).collect();
    let mut conn = db::conn(pool).await?;
    let rows: Vec<Order> = orders::table
        .filter(orders::id.eq_any(&ids))
        .select(Order::as_select())
        .load(&mut conn)
        .await?;
    let history: Vec<(i64, DecisionOutcome, chrono::DateTime<Utc>, String)> = decisions::table
        .filter(decisions::order_id.eq_any(&ids))
        .select((
            decisions::order_id,
            decisions::outcome,
            decisions::decided_at,
            decisions::actor,
        ))
        .load(&mut conn)
        .await?;
    let by_id: BTreeMap<i64, &Order> = rows.iter().map(|o| (o.id, o)).collect();
    // Each demo order has one trade, made with the order: its channel.
    let channel_of: BTreeMap<i64, String> = db::trades::for_orders(&mut conn, &ids)
        .await?
        .into_iter()
        .map(|t| (t.order_id, t.channel))
        .collect();

    let mut problems = Vec::new();
    let mut trades = BTreeMap::new();
    let mut by_buyer: BTreeMap<Buyer, (u32, u32)> = BTreeMap::new();
    let mut by_channel: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for (no, (buyer, id)) in plan {
        let Some(order) = by_id.get(id) else {
            problems.push(format!("{no}: order row missing"));
            continue;
        };
        let trade = buyers.trade(no).await?;
        trades.insert(no.clone(), trade.clone());
        let gateway_says = match trade.as_ref().map(|t| t.status) {
            None | Some(SimTradeStatus::TradeClosed) => OrderStatus::Closed,
            Some(SimTradeStatus::TradeSuccess) => OrderStatus::Paid,
            Some(SimTradeStatus::WaitBuyerPay) => OrderStatus::New,
        };
        let agrees = order.status() == gateway_says && order.status() == buyer.expected();
        for entry in [
            by_buyer.entry(*buyer).or_default(),
            by_channel
                .entry(channel_of.get(&order.id).cloned().unwrap_or_default())
                .or_default(),
        ] {
            entry.0 += 1;
            entry.1 += u32::from(agrees);
        }
        if !agrees {
            problems.push(format!(
                "{no} ({}): local {}, gateway {:?}, expected {}",
                buyer.label(),
                order.status(),
                trade.map(|t| t.status),
                buyer.expected()
            ));
        }
    }

    let count = |status: OrderStatus| rows.iter().filter(|o| o.status() == status).count();
    let retries = history
        .iter()
        .filter(|(_, outcome, _, _)| *outcome == DecisionOutcome::Retry)
        .count();
    let parked = history
        .iter()
        .filter(|(_, outcome, _, _)| *outcome == DecisionOutcome::Parked)
        .count();
    let settling = |outcome: &DecisionOutcome| {
        matches!(outcome, DecisionOutcome::Closed | DecisionOutcome::Paid)
    };
    let decided = history.iter().filter(|(_, o, _, _)| settling(o)).count() as u64;
    // Lateness of the deadline decisions (a payment learnt from its notification is
    // decided before the deadline, on its own clock: payment to PAID).
    let mut lateness_ms: Vec<i64> = history
        .iter()
        .filter(|(_, outcome, _, actor)| settling(outcome) && !actor.starts_with("notify"))
        .filter_map(|(id, _, at, _)| by_id.get(id).map(|o| (*at - o.deadline).num_milliseconds()))
        .collect();
    lateness_ms.sort_unstable();
    let mut payment_to_paid_ms = Vec::new();
    for (id, outcome, at, actor) in &history {
        if *outcome != DecisionOutcome::Paid || !actor.starts_with("notify") {
            continue;
        }
        let Some(order) = by_id.get(id) else { continue };
        if let Some(paid_at) = trades
            .get(&order.out_trade_no)
            .and_then(|t| t.as_ref())
            .and_then(|t| t.paid_at)
        {
            payment_to_paid_ms.push((*at - paid_at).num_milliseconds());
        }
    }
    payment_to_paid_ms.sort_unstable();
    let pct = |values: &[i64], p: f64| -> String {
        percentile(values, p).map_or_else(|| "-".into(), |v| format!("{v} ms"))
    };

    let mut table = String::new();
    table.push_str("\nbuyer behaviour           orders  agree\n");
    for (buyer, (n, agree)) in &by_buyer {
        table.push_str(&format!("{:<25} {n:>6}  {agree:>5}\n", buyer.label()));
    }
    table.push_str("\ngateway                   orders  agree\n");
    for (channel, (n, agree)) in &by_channel {
        table.push_str(&format!("{channel:<25} {n:>6}  {agree:>5}\n"));
    }
    table.push_str(&format!(
        "\nclosed                    {}\n",
        count(OrderStatus::Closed)
    ));
    table.push_str(&format!(
        "marked paid               {}\n",
        count(OrderStatus::Paid)
    ));
    table.push_str(&format!(
        "still open                {}\n",
        count(OrderStatus::New)
    ));
    table.push_str(&format!("retries                   {retries}\n"));
    table.push_str(&format!("parked                    {parked}\n"));
    table.push_str(&format!(
        "lateness p50              {}\n",
        pct(&lateness_ms, 0.50)
    ));
    table.push_str(&format!(
        "lateness p99              {}\n",
        pct(&lateness_ms, 0.99)
    ));
    table.push_str(&format!(
        "lateness max              {}",
        lateness_ms.last().map_or("-".into(), |m| format!("{m} ms"))
    ));
    table.push_str(&format!(
        "\npaid by notification      {}\n",
        payment_to_paid_ms.len()
    ));
    table.push_str(&format!(
        "payment to PAID p50 / p99 {} / {}",
        pct(&payment_to_paid_ms, 0.50),
        pct(&payment_to_paid_ms, 0.99)
    ));
    Ok(Report {
        table,
        problems,
        decided,
    })
}

#[cfg(test)]
mod tests {
    use super::faulty;

    #[test]
    fn the_faulty_orders_are_the_rate_share_spread_evenly() {
        let count = |n: u32, rate: f64| (0..n).filter(|i| faulty(*i, rate)).count();
        assert_eq!(count(300, 0.05), 15);
        assert_eq!(count(300, 0.0), 0);
        assert_eq!(count(300, 1.0), 300);
        assert_eq!(count(10, 0.5), 5);
        // Evenly: never two faulty orders next to each other at 5 %.
        let hit: Vec<u32> = (0..300).filter(|i| faulty(*i, 0.05)).collect();
        assert!(hit.windows(2).all(|w| w[1] - w[0] == 20), "{hit:?}");
    }
}
