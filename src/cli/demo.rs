//! `order-closer demo`: the whole product end to end on one machine.
//!
//! Starts the gateway simulator in process, migrates, creates a few hundred orders with
//! short deadlines, lets simulated buyers act (never scan; scan and leave; pay before the
//! deadline with the payment notification delivered, or lost; pay during the close; and,
//! on orders with two trades, one at each gateway: switch gateway and pay the second,
//! open both and pay none, pay on both), runs the worker and the notify endpoint, and
//! checks that every order's final state, and every trade's, agrees with the simulator.
//!
//! A second payment (a buyer who paid on both gateways) is refunded at once: the demo's
//! sandbox runs with `ORDER_CLOSER_PAID_AFTER_CLOSE=refund` unless the environment sets
//! the variable, and what it expects of those orders follows the policy it runs with.

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
use order_closer::closer::{Closer, Due, NewOrder, NewTrade};
use order_closer::config::PaidAfterClose;
use order_closer::db::anomalies::AnomalyKind;
use order_closer::db::decisions::DecisionOutcome;
use order_closer::db::refunds::RefundStatus;
use order_closer::db::schema::{anomalies, decisions, orders, refunds};
use order_closer::db::{self, DbPool};
use order_closer::events;
use order_closer::order::{Order, OrderStatus};
use order_closer::sandbox::Sandbox;
use order_closer::sim::{BuyerClient, FaultKind, NotifyPlan, SimTradeStatus, SimTradeView};
use order_closer::trade::{Trade, TradeStatus};
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
    /// Two trades: scans the first gateway's code, switches to the second gateway, scans
    /// and pays there (its notification delivered). The order is paid through the second
    /// trade; the first is closed at its gateway (at once, not at the deadline).
    SwitchesGateway,
    /// Two trades: scans both gateways' codes, pays neither. Both are closed at their
    /// gateways at the deadline, then the order.
    OpensTwoPaysNone,
    /// Two trades: scans both and pays both, the notifications lost. The deadline's
    /// queries find both paid: the order is paid once, through the first; the second
    /// payment is a `duplicate_payment`, refunded at its gateway under the `refund` policy.
    PaysOnTwoGateways,
}

impl Buyer {
    /// The behaviour of the `i`-th order of a gateway: every behaviour in each run of 20
    /// (so that a small demo shows them all). The 20th of each run, where the evenly
    /// spread faults of the default `--fault-rate` land, pays during the close.
    fn pick(i: u32) -> Self {
        match i % 20 {
            0..=2 => Self::NeverScans,
            3..=5 => Self::ScansAndLeaves,
            6..=9 => Self::PaysCallbackDelivered,
            10..=12 => Self::PaysCallbackLost,
            13..=14 => Self::SwitchesGateway,
            15..=16 => Self::OpensTwoPaysNone,
            17 => Self::PaysOnTwoGateways,
            _ => Self::PaysDuringClose,
        }
    }

    /// Whether the order has two trades, added as the buyer picks each gateway (the
    /// others have one, made with the order and numbered as it).
    fn two_trades(self) -> bool {
        matches!(
            self,
            Self::SwitchesGateway | Self::OpensTwoPaysNone | Self::PaysOnTwoGateways
        )
    }

    fn expected(self) -> OrderStatus {
        match self {
            Self::NeverScans | Self::ScansAndLeaves | Self::OpensTwoPaysNone => OrderStatus::Closed,
            Self::PaysCallbackDelivered
            | Self::PaysCallbackLost
            | Self::PaysDuringClose
            | Self::SwitchesGateway
            | Self::PaysOnTwoGateways => OrderStatus::Paid,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::NeverScans => "never scans",
            Self::ScansAndLeaves => "scans and leaves",
            Self::PaysCallbackDelivered => "pays, callback delivered",
            Self::PaysCallbackLost => "pays, callback lost",
            Self::PaysDuringClose => "pays during the close",
            Self::SwitchesGateway => "switches gateway, pays the second",
            Self::OpensTwoPaysNone => "opens two, pays none",
            Self::PaysOnTwoGateways => "pays on two gateways",
        }
    }
}

/// An order of the demo, as planned.
#[derive(Debug, Clone)]
struct Planned {
    buyer: Buyer,
    /// Our id.
    id: i64,
    amount: i64,
    /// Its trades, in the order the shop adds them: (gateway, merchant trade number).
    trades: Vec<(&'static str, String)>,
}

/// The policy for a payment the order cannot keep (a second payment among them).
const PAID_AFTER_CLOSE: &str = "ORDER_CLOSER_PAID_AFTER_CLOSE";

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
    // runs against. The run id names the sandbox as well as the orders. A second payment
    // is given back at once (`refund`) unless the environment chose a policy: the demo
    // shows the refund, and checks what the policy it runs with implies.
    let mut vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    vars.entry(PAID_AFTER_CLOSE.to_owned())
        .or_insert_with(|| PaidAfterClose::Refund.as_str().to_owned());
    let mut sandbox = Sandbox::start_tagged("demo", &run_id, vars, &[]).await?;
    println!(
        "a second payment is {} ({PAID_AFTER_CLOSE}={})",
        match sandbox.settings.decisions.paid_after_close {
            PaidAfterClose::Refund => "refunded at once",
            PaidAfterClose::Hold => "held for an operator",
        },
        sandbox.settings.decisions.paid_after_close.as_str()
    );
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
    let worker = app.worker(pool.clone(), format!("demo-worker:{run_id}"))?;
    let metrics = worker.metrics();
    let worker = tokio::spawn(worker.run(stop.clone()));

    // Orders and their buyers. Trades are added until the deadline itself (the demo's
    // deadlines are seconds, not the margin a real shop keeps).
    let closer = sandbox.closer().with_expiry_margin(Duration::ZERO);
    let policy = sandbox.settings.decisions.paid_after_close;
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
        // An order with two trades is created without one; its trades are numbered
        // apart (the gateways know trades by number), the first at the order's gateway,
        // the second at the next one (the same one when the demo runs on one gateway).
        let (new, trades) = if buyer.two_trades() {
            let next = channels[(i as usize + 1) % channels.len()];
            (
                NewOrder::without_trade(&no, amount, "CNY", Due::After(wait)),
                vec![(channel, format!("{no}-1")), (next, format!("{no}-2"))],
            )
        } else {
            (
                NewOrder::new(channel, &no, amount, Due::After(wait)),
                vec![(channel, no.clone())],
            )
        };
        let created = closer.create_order(new).await?;
        // Each gateway gets its share of faults, both kinds: on the order's last trade,
        // so that a retry never changes which of two paid trades pays the order.
        let nth = i / channels.len() as u32;
        if faulty(nth, args.fault_rate) {
            let ordinal = (f64::from(nth) * args.fault_rate).floor() as usize;
            let kind = [FaultKind::Http502, FaultKind::Busy20000][ordinal % 2];
            let (_, last) = trades
                .last()
                .context("a demo order without a trade cannot take a fault")?;
            running
                .state()
                .fail_next(last, kind, 1)
                .map_err(|e| anyhow::anyhow!("--fault-rate: {e}"))?;
        }
        plan.insert(
            no.clone(),
            Planned {
                buyer,
                id: created.order.id,
                amount,
                trades: trades.clone(),
            },
        );
        let acting = Acting {
            closer: closer.clone(),
            buyers: buyers.clone(),
            no,
            trades,
            amount,
            wait,
            deadline: created.order.deadline,
        };
        buyer_tasks.spawn(async move { act(&acting, buyer).await });
    }
    println!(
        "created {} orders in {:.1}s; buyers are acting, the worker is deciding",
        args.orders,
        started.elapsed().as_secs_f64()
    );

    let ids: Vec<i64> = plan.values().map(|p| p.id).collect();
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

    let quick_retries = metrics.quick_retries_made();
    let report = report(&pool, &plan, &buyers, policy, quick_retries).await?;
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
    // Distinct events by kind: one per decision, per anomaly, and per refund the gateway
    // confirmed; a second delivery of one event id is a duplicate.
    let mut distinct: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for (id, kind) in &events {
        distinct
            .entry(kind.as_str())
            .or_default()
            .insert(id.as_str());
    }
    let unique: usize = distinct.values().map(|ids| ids.len()).sum();
    let duplicates = events.len() - unique;
    let of = |wanted: &dyn Fn(&str) -> bool| -> u64 {
        distinct
            .iter()
            .filter(|(kind, _)| wanted(kind))
            .map(|(_, ids)| ids.len() as u64)
            .sum()
    };
    let decision_events = of(&|k| k == events::ORDER_PAID || k == events::ORDER_CLOSED);
    let anomaly_events = of(&|k| k.starts_with("order.anomaly."));
    let refund_events = of(&|k| k == events::ORDER_REFUNDED);
    let other_events = unique as u64 - decision_events - anomaly_events - refund_events;
    println!(
        "events announced          {} ({decision_events} decisions, {anomaly_events} anomalies, \
         {refund_events} refunds; {duplicates} duplicates)",
        events.len()
    );
    let mut events_ok = true;
    for (what, announced, happened) in [
        ("decisions", decision_events, report.decided),
        ("anomalies", anomaly_events, report.anomalies),
        ("refunds", refund_events, report.refunded),
        ("other events", other_events, 0),
    ] {
        if announced != happened {
            events_ok = false;
            println!("MISMATCH: {happened} {what} but {announced} distinct events");
        }
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

/// What a simulated buyer acts on: the shop (for the trades it adds as the buyer picks a
/// gateway), the simulator, and the order.
struct Acting {
    closer: Closer,
    buyers: BuyerClient,
    no: String,
    trades: Vec<(&'static str, String)>,
    amount: i64,
    /// The time to pay.
    wait: Duration,
    deadline: chrono::DateTime<Utc>,
}

/// One simulated buyer.
async fn act(a: &Acting, buyer: Buyer) -> anyhow::Result<()> {
    let before_deadline = |fraction: f64| Duration::from_secs_f64(a.wait.as_secs_f64() * fraction);
    let moment: f64 = rand::rng().random_range(0.0..1.0);
    // The order's only trade (the first, for an order with two).
    let (channel, no) = (a.trades[0].0, a.trades[0].1.as_str());
    // The buyer scans the QR code, valid until the deadline.
    let scan = || {
        a.buyers
            .buyer(no)
            .at(channel)
            .scans(a.amount)
            .qr_valid_until(a.deadline)
    };
    let pays = |no: &str| a.buyers.buyer(no).pays();
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
            pays(no).send().await?;
        }
        Buyer::PaysCallbackLost => {
            tokio::time::sleep(before_deadline(moment * 0.5)).await;
            scan().send().await?;
            tokio::time::sleep(before_deadline(0.2)).await;
            pays(no).loses_notification().send().await?;
        }
        Buyer::PaysDuringClose => {
            scan().send().await?;
            a.buyers.buyer(no).pays_on_close().send().await?;
        }
        Buyer::SwitchesGateway | Buyer::OpensTwoPaysNone | Buyer::PaysOnTwoGateways => {
            let [first, second] = &a.trades[..] else {
                anyhow::bail!("{}: two trades planned, {} made", a.no, a.trades.len());
            };
            tokio::time::sleep(before_deadline(moment * 0.3)).await;
            open_trade(a, first).await?;
            tokio::time::sleep(before_deadline(0.15)).await;
            open_trade(a, second).await?;
            tokio::time::sleep(before_deadline(0.15)).await;
            match buyer {
                Buyer::SwitchesGateway => {
                    pays(&second.1).send().await?;
                }
                Buyer::PaysOnTwoGateways => {
                    // Both paid before anything is known of either: the order cannot
                    // close the second trade before the buyer pays it.
                    pays(&first.1).loses_notification().send().await?;
                    pays(&second.1).loses_notification().send().await?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The buyer picks a gateway: the shop adds the trade to the order (before creating it at
/// the gateway), and the buyer scans its QR code, valid until the trade's expiry.
async fn open_trade(a: &Acting, (channel, number): &(&'static str, String)) -> anyhow::Result<()> {
    let added = a
        .closer
        .add_trade(&a.no, NewTrade::new(*channel, number))
        .await
        .with_context(|| format!("adding trade {number} at {channel}"))?;
    a.buyers
        .buyer(number)
        .at(channel)
        .scans(a.amount)
        .qr_valid_until(added.expire_by)
        .send()
        .await?;
    Ok(())
}

/// Waits with a progress bar until every order of this run is settled (not NEW, no trade
/// left open: a paid order's other trades are closed after it is paid) and no refund is
/// still to send, or the time is up.
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
            .filter(
                orders::status
                    .eq(OrderStatus::New.as_str())
                    .or(orders::open_trades.gt(0)),
            )
            .count()
            .get_result(&mut conn)
            .await?;
        let refunding: i64 = refunds::table
            .filter(refunds::order_id.eq_any(ids))
            .filter(refunds::status.eq(RefundStatus::Requested.as_str()))
            .count()
            .get_result(&mut conn)
            .await?;
        bar.set_position(ids.len() as u64 - open as u64);
        if open == 0 && refunding == 0 {
            bar.finish();
            return Ok(true);
        }
        if Instant::now() > deadline {
            bar.abandon_with_message(format!(
                "{open} still open, {refunding} refunds not sent: giving up"
            ));
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Takes every event from the audit queue and returns their ids and kinds.
async fn drain_events(
    channel: &lapin::Channel,
    queue: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
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
        let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        found.push((text("event_id"), text("event")));
    }
    Ok(found)
}

struct Report {
    table: String,
    problems: Vec<String>,
    /// Orders decided (PAID or CLOSED decisions).
    decided: u64,
    /// Anomalies recorded.
    anomalies: u64,
    /// Refunds the gateway confirmed.
    refunded: u64,
}

/// What the end of the run holds about one order: its rows and the gateways' view of each
/// of its trades.
struct Outcome<'a> {
    order: &'a Order,
    /// Its trades, in the order they were added, each with the simulator's view of it.
    trades: Vec<(&'a Trade, Option<&'a SimTradeView>)>,
    /// Its anomalies: kind and trade.
    anomalies: Vec<(String, Option<i64>)>,
    /// Its refunds: trade and status.
    refunds: Vec<(i64, String)>,
}

/// Whether a trade as stored agrees with its gateway's view: paid on both sides (a fully
/// refunded payment shows closed at the gateway, its payment still on record), or closed
/// (or never created) there and closed here; an open trade is not settled.
fn trade_agrees(trade: &Trade, view: Option<&SimTradeView>) -> bool {
    match trade.status {
        TradeStatus::Paid => view.is_some_and(|v| {
            v.paid_at.is_some()
                && trade.paid_minor == Some(v.amount_minor)
                && match v.status {
                    SimTradeStatus::TradeSuccess => true,
                    SimTradeStatus::TradeClosed => v.refundable_minor() == 0,
                    SimTradeStatus::WaitBuyerPay => false,
                }
        }),
        TradeStatus::Closed => {
            view.is_none_or(|v| v.status == SimTradeStatus::TradeClosed && v.paid_at.is_none())
        }
        TradeStatus::Open => false,
    }
}

/// What the gateways say of the whole order: paid if any trade was paid, waiting if one
/// still waits for payment, closed otherwise.
fn gateways_say(outcome: &Outcome<'_>) -> OrderStatus {
    let views = || outcome.trades.iter().filter_map(|(_, v)| *v);
    if views().any(|v| v.paid_at.is_some()) {
        OrderStatus::Paid
    } else if views().any(|v| v.status == SimTradeStatus::WaitBuyerPay) {
        OrderStatus::New
    } else {
        OrderStatus::Closed
    }
}

/// Why an order does not end the way its buyer and the gateways say it must (empty: it
/// agrees): the order against the gateways and the buyer's behaviour, each trade against
/// its gateway, and the anomalies and refunds the behaviour implies under `policy`.
fn disagreements(planned: &Planned, outcome: &Outcome<'_>, policy: PaidAfterClose) -> Vec<String> {
    let mut why = Vec::new();
    let order = outcome.order;
    let buyer = planned.buyer;
    let numbers: Vec<(&str, &str)> = outcome
        .trades
        .iter()
        .map(|(t, _)| (t.channel.as_str(), t.out_trade_no.as_str()))
        .collect();
    let planned_numbers: Vec<(&str, &str)> = planned
        .trades
        .iter()
        .map(|(c, n)| (*c, n.as_str()))
        .collect();
    if numbers != planned_numbers {
        why.push(format!("trades {numbers:?}, planned {planned_numbers:?}"));
    }
    for (trade, view) in &outcome.trades {
        if !trade_agrees(trade, *view) {
            why.push(format!(
                "trade {} at {}: local {}, gateway {:?}",
                trade.out_trade_no,
                trade.channel,
                trade.status,
                view.map(|v| (v.status, v.paid_at.is_some(), v.refunds.len()))
            ));
        }
    }
    let gateways = gateways_say(outcome);
    if order.status() != gateways || order.status() != buyer.expected() {
        why.push(format!(
            "local {}, gateway {gateways}, expected {}",
            order.status(),
            buyer.expected()
        ));
    }
    let trade = |k: usize| outcome.trades.get(k).map(|(t, v)| (*t, *v));
    // The trade that must pay the order: the second for a buyer who switched, else the
    // first.
    let payer = match buyer {
        Buyer::SwitchesGateway => trade(1),
        _ => trade(0),
    };
    if buyer.expected() == OrderStatus::Paid {
        let expected = payer.map(|(t, _)| t.id);
        if order.paid_trade_id != expected || expected.is_none() {
            why.push(format!(
                "paid through trade {:?}, expected {expected:?}",
                order.paid_trade_id
            ));
        }
    } else if order.paid_trade_id.is_some() {
        why.push(format!(
            "not paid, yet paid through trade {:?}",
            order.paid_trade_id
        ));
    }
    // Trades the buyer scanned and did not pay are closed at their gateways.
    let scanned_unpaid: &[usize] = match buyer {
        Buyer::SwitchesGateway => &[0],
        Buyer::OpensTwoPaysNone => &[0, 1],
        _ => &[],
    };
    for k in scanned_unpaid {
        if let Some((t, view)) = trade(*k)
            && view.map(|v| v.status) != Some(SimTradeStatus::TradeClosed)
        {
            why.push(format!(
                "trade {} is {:?} at its gateway, not closed",
                t.out_trade_no,
                view.map(|v| v.status)
            ));
        }
    }
    // A second payment: one duplicate_payment anomaly on the second trade, and under
    // `refund` one refund of its whole amount at its gateway, none of the first.
    let duplicate = match buyer {
        Buyer::PaysOnTwoGateways => trade(1),
        _ => None,
    };
    let expected_anomalies: Vec<(String, Option<i64>)> = duplicate
        .iter()
        .map(|(t, _)| {
            (
                AnomalyKind::DuplicatePayment.as_str().to_owned(),
                Some(t.id),
            )
        })
        .collect();
    if outcome.anomalies != expected_anomalies {
        why.push(format!(
            "anomalies {:?}, expected {expected_anomalies:?}",
            outcome.anomalies
        ));
    }
    let refunded = match (duplicate, policy) {
        (Some((t, _)), PaidAfterClose::Refund) => Some(t.id),
        _ => None,
    };
    let expected_refunds: Vec<(i64, String)> = refunded
        .iter()
        .map(|id| (*id, RefundStatus::Succeeded.as_str().to_owned()))
        .collect();
    if outcome.refunds != expected_refunds {
        why.push(format!(
            "refunds {:?}, expected {expected_refunds:?}",
            outcome.refunds
        ));
    }
    for (t, view) in &outcome.trades {
        let at_gateway: Vec<i64> = view
            .map(|v| v.refunds.iter().map(|r| r.amount_minor).collect())
            .unwrap_or_default();
        let expected: Vec<i64> = if refunded == Some(t.id) {
            vec![planned.amount]
        } else {
            Vec::new()
        };
        if at_gateway != expected {
            why.push(format!(
                "trade {} refunded {at_gateway:?} at its gateway, expected {expected:?}",
                t.out_trade_no
            ));
        }
    }
    why
}

async fn report(
    pool: &DbPool,
    plan: &BTreeMap<String, Planned>,
    buyers: &BuyerClient,
    policy: PaidAfterClose,
    quick_retries: u64,
) -> anyhow::Result<Report> {
    let ids: Vec<i64> = plan.values().map(|p| p.id).collect();
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
    let stored = db::trades::for_orders(&mut conn, &ids).await?;
    let mut trades_of: BTreeMap<i64, Vec<&Trade>> = BTreeMap::new();
    for t in &stored {
        trades_of.entry(t.order_id).or_default().push(t);
    }
    let mut anomalies_of: BTreeMap<i64, Vec<(String, Option<i64>)>> = BTreeMap::new();
    let anomaly_rows: Vec<(Option<i64>, String, Option<i64>)> = anomalies::table
        .filter(anomalies::order_id.eq_any(&ids))
        .order(anomalies::id)
        .select((anomalies::order_id, anomalies::kind, anomalies::trade_id))
        .load(&mut conn)
        .await?;
    for (order_id, kind, trade_id) in &anomaly_rows {
        if let Some(id) = order_id {
            anomalies_of
                .entry(*id)
                .or_default()
                .push((kind.clone(), *trade_id));
        }
    }
    let mut refunds_of: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    let refund_rows: Vec<(i64, i64, String)> = refunds::table
        .filter(refunds::order_id.eq_any(&ids))
        .order(refunds::id)
        .select((refunds::order_id, refunds::trade_id, refunds::status))
        .load(&mut conn)
        .await?;
    for (order_id, trade_id, status) in &refund_rows {
        refunds_of
            .entry(*order_id)
            .or_default()
            .push((*trade_id, status.clone()));
    }
    drop(conn);
    // The gateways' view of every trade, by number.
    let mut views: BTreeMap<String, SimTradeView> = BTreeMap::new();
    for t in &stored {
        if let Some(view) = buyers.trade(&t.out_trade_no).await? {
            views.insert(t.out_trade_no.clone(), view);
        }
    }

    let mut problems = Vec::new();
    let mut by_buyer: BTreeMap<Buyer, (u32, u32)> = BTreeMap::new();
    let mut by_channel: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for (no, planned) in plan {
        let Some(order) = by_id.get(&planned.id) else {
            problems.push(format!("{no}: order row missing"));
            continue;
        };
        let outcome = Outcome {
            order,
            trades: trades_of
                .get(&order.id)
                .into_iter()
                .flatten()
                .map(|t| (*t, views.get(&t.out_trade_no)))
                .collect(),
            anomalies: anomalies_of.remove(&order.id).unwrap_or_default(),
            refunds: refunds_of.remove(&order.id).unwrap_or_default(),
        };
        let why = disagreements(planned, &outcome, policy);
        let entry = by_buyer.entry(planned.buyer).or_default();
        entry.0 += 1;
        entry.1 += u32::from(why.is_empty());
        // Each trade against its gateway's view, counted at its gateway.
        for (trade, view) in &outcome.trades {
            let entry = by_channel.entry(trade.channel.clone()).or_default();
            entry.0 += 1;
            entry.1 += u32::from(trade_agrees(trade, *view));
        }
        if !why.is_empty() {
            problems.push(format!(
                "{no} ({}): {}",
                planned.buyer.label(),
                why.join("; ")
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
    let duplicates = anomaly_rows
        .iter()
        .filter(|(_, kind, _)| kind == AnomalyKind::DuplicatePayment.as_str())
        .count();
    let refunded = refund_rows
        .iter()
        .filter(|(_, _, status)| status == RefundStatus::Succeeded.as_str())
        .count();
    // Lateness of the deadline decisions (a payment learnt from its notification is
    // decided before the deadline, on its own clock: payment to PAID).
    let mut lateness_ms: Vec<i64> = history
        .iter()
        .filter(|(_, outcome, _, actor)| settling(outcome) && !actor.starts_with("notify"))
        .filter_map(|(id, _, at, _)| by_id.get(id).map(|o| (*at - o.deadline).num_milliseconds()))
        .collect();
    lateness_ms.sort_unstable();
    let paid_trade: BTreeMap<i64, &str> = stored
        .iter()
        .map(|t| (t.id, t.out_trade_no.as_str()))
        .collect();
    let mut payment_to_paid_ms = Vec::new();
    for (id, outcome, at, actor) in &history {
        if *outcome != DecisionOutcome::Paid || !actor.starts_with("notify") {
            continue;
        }
        let Some(order) = by_id.get(id) else { continue };
        if let Some(paid_at) = order
            .paid_trade_id
            .and_then(|t| paid_trade.get(&t))
            .and_then(|no| views.get(*no))
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
    table.push_str("\nbuyer behaviour                    orders  agree\n");
    for (buyer, (n, agree)) in &by_buyer {
        table.push_str(&format!("{:<34} {n:>6}  {agree:>5}\n", buyer.label()));
    }
    table.push_str("\ngateway                            trades  agree\n");
    for (channel, (n, agree)) in &by_channel {
        table.push_str(&format!("{channel:<34} {n:>6}  {agree:>5}\n"));
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
    table.push_str(&format!(
        "paid twice                {duplicates} ({})\n",
        match policy {
            PaidAfterClose::Refund => format!("{refunded} refunded"),
            PaidAfterClose::Hold => "held for an operator".to_owned(),
        }
    ));
    table.push_str(&format!(
        "retries                   {retries} (and {quick_retries} quick, in the process)\n"
    ));
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
        anomalies: anomaly_rows.len() as u64,
        refunded: refunded as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use order_closer::sim::SimRefund;

    fn at() -> chrono::DateTime<Utc> {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    /// Order 1, `status`, paid through `paid_trade_id`.
    fn order(status: OrderStatus, paid_trade_id: Option<i64>) -> Order {
        Order {
            id: 1,
            out_trade_no: "DEMO-1".into(),
            amount_minor: 1234,
            currency: "CNY".into(),
            status_text: status.as_str().into(),
            deadline: at(),
            created_at: at(),
            updated_at: at(),
            paid_at: None,
            closed_at: None,
            gateway_trade_no: None,
            close_reason: None,
            paid_trade_id,
            open_trades: 0,
        }
    }

    /// Trade `id` of order 1: `DEMO-1-<id>`, at alipay (1) or wechat (2).
    fn trade(id: i64, status: TradeStatus) -> Trade {
        Trade {
            id,
            order_id: 1,
            channel: ["alipay", "wechat"][(id as usize - 1) % 2].into(),
            out_trade_no: format!("DEMO-1-{id}"),
            gateway_ref: None,
            status,
            gateway_trade_no: None,
            paid_minor: (status == TradeStatus::Paid).then_some(1234),
            paid_at: None,
            closed_at: None,
            close_reason: None,
            created_at: at(),
            updated_at: at(),
        }
    }

    /// The gateway's view of trade `t`: `status`, paid or not, refunded these amounts.
    fn view(t: &Trade, status: SimTradeStatus, paid: bool, refunds: &[i64]) -> SimTradeView {
        SimTradeView {
            channel: t.channel.clone(),
            out_trade_no: t.out_trade_no.clone(),
            trade_no: format!("GW-{}", t.id),
            amount_minor: 1234,
            status,
            created_at: at(),
            paid_at: paid.then(at),
            closed_at: None,
            pay_on_close: false,
            time_expire: None,
            refunds: refunds
                .iter()
                .map(|a| SimRefund {
                    refund_no: format!("RF-{}", t.id),
                    amount_minor: *a,
                    refunded_at: at(),
                    out_request_no: None,
                })
                .collect(),
            notification_lost: false,
        }
    }

    fn planned(buyer: Buyer) -> Planned {
        Planned {
            buyer,
            id: 1,
            amount: 1234,
            trades: vec![("alipay", "DEMO-1-1".into()), ("wechat", "DEMO-1-2".into())],
        }
    }

    fn duplicate_on(id: i64) -> Vec<(String, Option<i64>)> {
        vec![("duplicate_payment".into(), Some(id))]
    }

    fn refunded(id: i64) -> Vec<(i64, String)> {
        vec![(id, "succeeded".into())]
    }

    /// `disagreements` for two trades and their views.
    fn check(
        buyer: Buyer,
        order: &Order,
        trades: [(Trade, Option<SimTradeView>); 2],
        anomalies: Vec<(String, Option<i64>)>,
        refunds: Vec<(i64, String)>,
        policy: PaidAfterClose,
    ) -> Vec<String> {
        let outcome = Outcome {
            order,
            trades: trades.iter().map(|(t, v)| (t, v.as_ref())).collect(),
            anomalies,
            refunds,
        };
        disagreements(&planned(buyer), &outcome, policy)
    }

    use PaidAfterClose::{Hold, Refund};
    use SimTradeStatus::{TradeClosed, TradeSuccess, WaitBuyerPay};
    use TradeStatus::{Closed, Open, Paid};

    #[test]
    fn a_switch_agrees_only_paid_through_the_second_with_the_first_closed_at_its_gateway() {
        let (t1, t2) = (trade(1, Closed), trade(2, Paid));
        let (v1, v2) = (
            view(&t1, TradeClosed, false, &[]),
            view(&t2, TradeSuccess, true, &[]),
        );
        let good = [
            (t1.clone(), Some(v1.clone())),
            (t2.clone(), Some(v2.clone())),
        ];
        let paid = order(OrderStatus::Paid, Some(2));
        let sw = Buyer::SwitchesGateway;
        assert_eq!(
            check(sw, &paid, good.clone(), vec![], vec![], Refund),
            Vec::<String>::new()
        );
        // Paid through the first: wrong.
        let wrong = order(OrderStatus::Paid, Some(1));
        assert!(!check(sw, &wrong, good.clone(), vec![], vec![], Refund).is_empty());
        // The first never reached its gateway, or still waits there.
        let unscanned = [(t1.clone(), None), (t2.clone(), Some(v2.clone()))];
        assert!(!check(sw, &paid, unscanned, vec![], vec![], Refund).is_empty());
        let waiting = [
            (trade(1, Open), Some(view(&t1, WaitBuyerPay, false, &[]))),
            (t2.clone(), Some(v2.clone())),
        ];
        assert!(!check(sw, &paid, waiting, vec![], vec![], Refund).is_empty());
        // Closed here but paid there.
        let paid_there = [
            (t1.clone(), Some(view(&t1, TradeSuccess, true, &[]))),
            (t2.clone(), Some(v2.clone())),
        ];
        assert!(!check(sw, &paid, paid_there, vec![], vec![], Refund).is_empty());
        // An anomaly it should not have.
        assert!(!check(sw, &paid, good, duplicate_on(1), vec![], Refund).is_empty());
    }

    #[test]
    fn two_unpaid_trades_agree_only_closed_at_both_gateways() {
        let (t1, t2) = (trade(1, Closed), trade(2, Closed));
        let closed = |t: &Trade| Some(view(t, TradeClosed, false, &[]));
        let order_closed = order(OrderStatus::Closed, None);
        let none = Buyer::OpensTwoPaysNone;
        let good = [(t1.clone(), closed(&t1)), (t2.clone(), closed(&t2))];
        assert!(check(none, &order_closed, good.clone(), vec![], vec![], Hold).is_empty());
        assert!(
            !check(
                none,
                &order(OrderStatus::Paid, Some(1)),
                good.clone(),
                vec![],
                vec![],
                Hold
            )
            .is_empty()
        );
        // Closed, yet naming a trade that paid it.
        let named = order(OrderStatus::Closed, Some(1));
        assert!(!check(none, &named, good, vec![], vec![], Hold).is_empty());
        let second_missing = [(t1.clone(), closed(&t1)), (t2.clone(), None)];
        assert!(!check(none, &order_closed, second_missing, vec![], vec![], Hold).is_empty());
        let open = [(t1.clone(), closed(&t1)), (trade(2, Open), closed(&t2))];
        assert!(!check(none, &order_closed, open, vec![], vec![], Hold).is_empty());
    }

    #[test]
    fn paying_twice_agrees_with_one_duplicate_on_the_second_refunded_as_the_policy_says() {
        let (t1, t2) = (trade(1, Paid), trade(2, Paid));
        let v1 = Some(view(&t1, TradeSuccess, true, &[]));
        let refunded_view = Some(view(&t2, TradeClosed, true, &[1234]));
        let held_view = Some(view(&t2, TradeSuccess, true, &[]));
        let paid = order(OrderStatus::Paid, Some(1));
        let twice = Buyer::PaysOnTwoGateways;
        let under_refund = [
            (t1.clone(), v1.clone()),
            (t2.clone(), refunded_view.clone()),
        ];
        let under_hold = [(t1.clone(), v1.clone()), (t2.clone(), held_view.clone())];
        assert!(
            check(
                twice,
                &paid,
                under_refund.clone(),
                duplicate_on(2),
                refunded(2),
                Refund
            )
            .is_empty()
        );
        assert!(
            check(
                twice,
                &paid,
                under_hold.clone(),
                duplicate_on(2),
                vec![],
                Hold
            )
            .is_empty()
        );
        // The refund the policy asks for is missing, or one the policy forbids was made.
        assert!(
            !check(
                twice,
                &paid,
                under_hold.clone(),
                duplicate_on(2),
                vec![],
                Refund
            )
            .is_empty()
        );
        assert!(
            !check(
                twice,
                &paid,
                under_refund.clone(),
                duplicate_on(2),
                refunded(2),
                Hold
            )
            .is_empty()
        );
        // Refunded twice at the gateway, or a part of it.
        let twice_refunded = [
            (t1.clone(), v1.clone()),
            (
                t2.clone(),
                Some(view(&t2, TradeClosed, true, &[1234, 1234])),
            ),
        ];
        assert!(
            !check(
                twice,
                &paid,
                twice_refunded,
                duplicate_on(2),
                refunded(2),
                Refund
            )
            .is_empty()
        );
        let part = [
            (t1.clone(), v1.clone()),
            (t2.clone(), Some(view(&t2, TradeSuccess, true, &[600]))),
        ];
        assert!(!check(twice, &paid, part, duplicate_on(2), refunded(2), Refund).is_empty());
        // The anomaly is missing, on the wrong trade, or recorded twice.
        assert!(!check(twice, &paid, under_hold.clone(), vec![], vec![], Hold).is_empty());
        assert!(
            !check(
                twice,
                &paid,
                under_hold.clone(),
                duplicate_on(1),
                vec![],
                Hold
            )
            .is_empty()
        );
        let mut two = duplicate_on(2);
        two.extend(duplicate_on(2));
        assert!(!check(twice, &paid, under_hold.clone(), two, vec![], Hold).is_empty());
        // Paid through the second.
        assert!(
            !check(
                twice,
                &order(OrderStatus::Paid, Some(2)),
                under_hold,
                duplicate_on(2),
                vec![],
                Hold
            )
            .is_empty()
        );
        // The second payment not recorded here.
        let second_closed = [(t1, v1), (trade(2, Closed), held_view)];
        assert!(!check(twice, &paid, second_closed, duplicate_on(2), vec![], Hold).is_empty());
    }

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
