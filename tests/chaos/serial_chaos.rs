//! The chaos run: thousands of orders, buyers paying at random moments (some during the
//! close), about 10% gateway faults, the worker killed with SIGKILL twice, the broker
//! application restarted, the worker's database connections terminated. At the end the
//! operator path runs (the gateway healthy again, `reconcile parked --requeue`), then
//! every invariant is checked and the figures are printed.
//!
//! The broker is a throwaway RabbitMQ node of the test's own (`crate::common::rabbit_node`), so
//! the machine's broker is never restarted. Kills processes and restarts a broker: runs
//! alone (`scripts/test.sh` gives it its own step), on classic queues and, with
//! `TEST_QUEUE_TYPE=quorum`, on quorum queues.
//!
//! One order in five has two trades (payment attempts), one at each gateway, added while
//! the buyer acts: the buyer pays neither, one (switching gateway first, or not) or both,
//! each before the deadline, during the close or just after the deadline. Every order's
//! status must agree with all its trades at their gateways, no trade may be left open,
//! and every second payment must be one `duplicate_payment` anomaly (held: the run keeps
//! the default `hold` policy).
//!
//! Why the verdict does not depend on luck: at about 11% faulty answers and two requests
//! per attempt on a waiting trade, walking the whole retry schedule happens to a few
//! orders in some runs; they are parked with a reason, which is an outcome, not a loss.
//! The run therefore ends the way an operator would, by requeueing the parking queue once
//! the gateway is healthy, and only then requires every order to agree with the gateway.
//!
//! Size and pace: `CHAOS_ORDERS` (default 5000), `CHAOS_SPREAD_SECS` (default 60).
//! Seeds: `CHAOS_SEED` (default 2026) drives the buyers and the faults. Soak:
//! `CHAOS_ROUNDS=N` repeats the run N times with seeds `CHAOS_SEED`, `CHAOS_SEED + 1`, ...
//! and prints the totals and the seed of every failed round.
// It runs the binary or the simulator: only with the full build (`--features cli`, the default).
#![cfg(feature = "tooling")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::common::rabbit_node::RabbitNode;
use crate::common::{TestEnv, eventually};
use chrono::Utc;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use diesel_async::RunQueryDsl;
use order_closer::broker::topology::header_text;
use order_closer::closer::{Closer, Due, NewOrder, NewTrade, TradeError};
use order_closer::db::{self, schema::anomalies, schema::decisions, schema::orders};
use order_closer::order::{Order, OrderStatus};
use order_closer::sim::{BuyerClient, FaultKind, FaultPlan, SimTradeStatus, SimTradeView};
use order_closer::trade::{Trade, TradeStatus};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::BIN;
use order_closer_testkit::stats::percentile;
const WORKER_APP_NAME: &str = "oc-chaos-worker";
/// How long past its schedule (deadline, or a retry's `not_before`) an order may stay NEW
/// under chaos: kills, broker downtime, reconnect back-off, and the janitor's own bound.
const LATENESS_BOUND: Duration = Duration::from_secs(120);
/// Orders past their schedule by more than the bound, parked ones excepted (they wait for
/// an operator, with a message saying why): NEW ones, and PAID ones with a trade still
/// open (the janitor re-drives both).
const OVERDUE: &str = "GREATEST(deadline, recheck_at) < now() - interval '120 seconds'";
/// Orders not settled yet: NEW, or with a trade still open at its gateway as far as we know.
const UNSETTLED: &str = "(status = 'NEW' OR open_trades > 0)";
/// One order in this many has two trades.
const TWO_TRADES_EVERY: usize = 5;
/// Steps in the run's retry schedule (`ORDER_CLOSER_RETRY_STEPS`).
const RETRY_STEPS: u32 = 6;
/// Orders made to walk the whole retry schedule and be parked.
const PARKED_ON_PURPOSE: usize = 10;
/// Orders not parked for an operator.
const NOT_PARKED: &str = "recheck_at IS DISTINCT FROM 'infinity'";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Buyer {
    NeverScans,
    ScansOnly,
    PaysEarly,
    PaysDuringClose,
    PaysAtTheDeadline,
    /// Two trades, one at each gateway (the second at the next gateway), added and scanned
    /// one after the other; each paid as said (`[Pay::Never, Pay::Early]`: the buyer
    /// switched gateway and paid the second).
    TwoTrades([Pay; 2]),
}

/// When the buyer pays one trade of a two-trade order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pay {
    Never,
    /// Once both trades are scanned, before the deadline.
    Early,
    /// Just before the worker's close of that trade lands.
    DuringClose,
    /// Up to 1.5 s after the deadline: before or after the close, as it happens.
    AtTheDeadline,
}

impl Pay {
    fn draw(rng: &mut StdRng) -> Self {
        match rng.random_range(0..10) {
            0..=3 => Self::Never,
            4..=6 => Self::Early,
            7 => Self::DuringClose,
            _ => Self::AtTheDeadline,
        }
    }
}

/// One order of the run and its buyer.
#[derive(Debug, Clone)]
struct Plan {
    /// The order's gateway (its only trade's, or its first trade's).
    channel: &'static str,
    /// The second trade's gateway, for an order with two.
    second: &'static str,
    no: String,
    amount: i64,
    deadline: chrono::DateTime<Utc>,
    buyer: Buyer,
    /// When within the time to pay the buyer acts, 0..1.
    moment: f64,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct WorkerProcess {
    vars: Vec<(String, String)>,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
    starts: u32,
}

impl WorkerProcess {
    fn start(&mut self) {
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("worker-{}.log", self.starts))).unwrap();
        let child = tokio::process::Command::new(BIN)
            .arg("worker")
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the worker");
        self.child = Some(child);
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap(); // SIGKILL
        }
    }

    async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().unwrap().to_string();
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        }
    }
}

/// The worker log lines that mention an order: its trail through the broker (received,
/// forwarded to a tier, retried, decided), for telling a message the broker dropped from
/// one that was forwarded and acknowledged.
fn trail(dir: &Path, order_id: i64, out_trade_no: &str) -> Vec<String> {
    let id = format!("order_id={order_id}");
    let mut lines = Vec::new();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.sort();
    for log in logs
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let name = log
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Ok(text) = std::fs::read_to_string(log) {
            lines.extend(
                text.lines()
                    .filter(|l| l.contains(&id) || l.contains(out_trade_no))
                    .map(|l| format!("    {name}: {l}")),
            );
        }
    }
    lines
}

/// Lines in the worker logs containing `needle`.
fn count_in_logs(dir: &Path, needle: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|text| text.lines().filter(|l| l.contains(needle)).count())
                .sum()
        })
        .unwrap_or(0)
}

/// What one round found.
#[derive(Debug, Default)]
struct Round {
    seed: u64,
    orders: usize,
    lost: usize,
    decided_twice: usize,
    disagreements: usize,
    parked_before_requeue: usize,
    redriven: usize,
    duplicate_events: usize,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serial_chaos_run() {
    let total = env_number("CHAOS_ORDERS", 5000) as usize;
    let spread = Duration::from_secs(env_number("CHAOS_SPREAD_SECS", 60));
    let first_seed = env_number("CHAOS_SEED", 2026);
    let rounds = env_number("CHAOS_ROUNDS", 1).max(1);
    let node = tokio::task::spawn_blocking(|| RabbitNode::start("[]"))
        .await
        .unwrap();
    let mut results = Vec::new();
    for seed in first_seed..first_seed + rounds {
        let round = chaos_round(&node, total, spread, seed).await;
        if !round.failures.is_empty() {
            println!("ROUND FAILED (seed {seed}): {:?}", round.failures);
        }
        results.push(round);
    }
    let failed: Vec<&Round> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    if rounds > 1 {
        let sum = |f: fn(&Round) -> usize| results.iter().map(f).sum::<usize>();
        println!("\n===== soak: {rounds} rounds of {total} orders, seeds {first_seed}.. =====");
        println!("orders                       {}", sum(|r| r.orders));
        println!("lost                         {}", sum(|r| r.lost));
        println!("decided twice                {}", sum(|r| r.decided_twice));
        println!("disagree after the requeue   {}", sum(|r| r.disagreements));
        println!(
            "parked before the requeue    {}",
            sum(|r| r.parked_before_requeue)
        );
        println!("re-driven by the janitor     {}", sum(|r| r.redriven));
        println!(
            "duplicate events             {}",
            sum(|r| r.duplicate_events)
        );
        println!(
            "failed rounds                {} {:?}",
            failed.len(),
            failed.iter().map(|r| r.seed).collect::<Vec<_>>()
        );
    }
    assert!(
        failed.is_empty(),
        "chaos rounds failed: {:?}",
        failed
            .iter()
            .map(|r| (r.seed, &r.failures))
            .collect::<Vec<_>>()
    );
}

async fn chaos_round(node: &RabbitNode, total: usize, spread: Duration, seed: u64) -> Round {
    let url = node.amqp_url();
    let mut env = TestEnv::new(&[("AMQP_URL", url.as_str())]).await;
    let dir = std::env::temp_dir().join(format!("oc-chaos-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let mut vars = env.binary_env(&dir);
    // Every gateway answers within a second or counts as a timeout.
    for plugin in order_closer::gateway::ALL {
        let name = plugin.common.timeout;
        vars.retain(|(k, _)| k != name);
        vars.push((name.to_owned(), "1s".into()));
    }
    for (k, v) in [
        ("ORDER_CLOSER_RETRY_STEPS", "1s,2s,3s,5s,8s,10s"), // RETRY_STEPS steps
        ("ORDER_CLOSER_CONCURRENCY", "64"),
        ("ORDER_CLOSER_PREFETCH", "128"),
        ("ORDER_CLOSER_HTTP_LISTEN", "off"),
        ("ORDER_CLOSER_SHUTDOWN_GRACE", "5s"),
        // The safety net, within the lateness bound.
        ("ORDER_CLOSER_JANITOR_AFTER", "30s"),
        ("ORDER_CLOSER_JANITOR_INTERVAL", "5s"),
        // Each delivery and forward is logged, so a lost order's trail can be read.
        ("RUST_LOG", "warn,order_closer::worker::handler=debug"),
    ] {
        vars.retain(|(name, _)| name != k);
        vars.push((k.into(), v.into()));
    }
    for (name, value) in vars.iter_mut() {
        if name == "DATABASE_URL" {
            value.push_str(&format!("&application_name={WORKER_APP_NAME}"));
        }
    }

    // About 10% of gateway answers go wrong, in every way the simulator knows.
    let plan = FaultPlan {
        http_502: 0.02,
        busy_20000: 0.02,
        system_error: 0.015,
        timeout: 0.01,
        timeout_after_apply: 0.005,
        timeout_ms: Some(3000),
        html: 0.01,
        truncated_json: 0.005,
        bad_signature: 0.005,
        wrong_order: 0.005,
        empty_body: 0.005,
        seed: Some(seed),
        ..FaultPlan::default()
    };
    env.buyers.set_faults(&plan).await.unwrap();

    let mut worker = WorkerProcess {
        vars: vars.clone(),
        dir: dir.clone(),
        child: None,
        starts: 0,
    };
    worker.start();

    // Orders, created by eight concurrent "shops", and their buyers.
    let started = Instant::now();
    let first_deadline = Utc::now() + chrono::Duration::seconds(5);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plans = Vec::with_capacity(total);
    let channels = env.sim().channels();
    for i in 0..total {
        let offset = Duration::from_millis(rng.random_range(0..=spread.as_millis() as u64));
        let deadline = first_deadline + chrono::Duration::from_std(offset).unwrap();
        let roll: f64 = rng.random();
        let buyer = match roll {
            _ if i % TWO_TRADES_EVERY == TWO_TRADES_EVERY - 1 => {
                Buyer::TwoTrades([Pay::draw(&mut rng), Pay::draw(&mut rng)])
            }
            r if r < 0.10 => Buyer::PaysEarly,
            r if r < 0.20 => Buyer::PaysDuringClose,
            r if r < 0.30 => Buyer::PaysAtTheDeadline,
            r if r < 0.60 => Buyer::ScansOnly,
            _ => Buyer::NeverScans,
        };
        let moment: f64 = rng.random();
        // The orders alternate over every gateway the simulator speaks.
        plans.push(Plan {
            channel: channels[i % channels.len()],
            second: channels[(i + 1) % channels.len()],
            no: env.no(&format!("chaos{i:05}")),
            amount: rng.random_range(100..50_000i64),
            deadline,
            buyer,
            moment,
        });
    }
    // The operator's path is always walked: a few never-scanned orders get more failed
    // answers than the retry schedule has attempts, so they are parked
    // (`attempts_exhausted`) and must be settled by the requeue at the end.
    // On every gateway.
    let designated: Vec<String> = channels
        .iter()
        .flat_map(|channel| {
            plans
                .iter()
                .filter(move |p| p.channel == *channel && p.buyer == Buyer::NeverScans)
                .take(PARKED_ON_PURPOSE)
        })
        .map(|p| p.no.clone())
        .collect();
    let parked_on_purpose = designated.len();
    for no in &designated {
        // Far more failures than attempts, whatever redeliveries after a kill consume.
        env.buyers
            .fail_next(no, FaultKind::Busy20000, (RETRY_STEPS + 1) * 10)
            .await
            .unwrap();
    }
    let plans = Arc::new(plans);
    let refused: Arc<Refused> = Arc::default();
    let mut shops = tokio::task::JoinSet::new();
    for shop in 0..8 {
        let refused = Arc::clone(&refused);
        // Trades are added until the deadline itself (the run's deadlines are seconds).
        let closer = env.closer.clone().with_expiry_margin(Duration::ZERO);
        let buyers = env.buyers.clone();
        let plans = plans.clone();
        shops.spawn(async move {
            let mut buyer_tasks = Vec::new();
            for plan in plans.iter().skip(shop).step_by(8).cloned() {
                let Plan {
                    channel,
                    ref no,
                    amount,
                    deadline,
                    buyer,
                    moment,
                    ..
                } = plan;
                let new = match buyer {
                    Buyer::TwoTrades(_) => {
                        NewOrder::without_trade(no, amount, "CNY", Due::At(deadline))
                    }
                    _ => NewOrder::new(channel, no, amount, Due::At(deadline)),
                };
                closer.create_order(new).await.expect("create order");
                let closer = closer.clone();
                let refused = Arc::clone(&refused);
                let buyers = buyers.at(channel);
                buyer_tasks.push(tokio::spawn(async move {
                    let no = &plan.no;
                    let until =
                        |at: chrono::DateTime<Utc>| (at - Utc::now()).to_std().unwrap_or_default();
                    let before = until(deadline).mul_f64(moment * 0.8);
                    let scan = || buyers.buyer(no).scans(amount).qr_valid_until(deadline);
                    // A buyer's request may meet the broker restart or a closed trade;
                    // what matters is what the simulator ends up saying.
                    match buyer {
                        Buyer::NeverScans => {}
                        Buyer::ScansOnly => {
                            tokio::time::sleep(before).await;
                            let _ = scan().send().await;
                        }
                        Buyer::PaysEarly => {
                            tokio::time::sleep(before).await;
                            if scan().send().await.is_ok() {
                                let _ = buyers.buyer(no).pays().send().await;
                            }
                        }
                        Buyer::PaysDuringClose => {
                            let _ = scan().send().await;
                            let _ = buyers.buyer(no).pays_on_close().send().await;
                        }
                        Buyer::PaysAtTheDeadline => {
                            let _ = scan().send().await;
                            let jitter = Duration::from_millis((moment * 1500.0) as u64);
                            tokio::time::sleep(until(deadline) + jitter).await;
                            let _ = buyers.buyer(no).pays().send().await;
                        }
                        Buyer::TwoTrades(pays) => {
                            two_trades(&closer, &buyers, &plan, pays, before, &refused).await;
                        }
                    }
                }));
            }
            for t in buyer_tasks {
                let _ = t.await;
            }
        });
    }

    // The chaos schedule.
    let at = |secs: u64| started + Duration::from_secs(secs);
    let say = |what: &str| println!("chaos: {what} at {:.1}s", started.elapsed().as_secs_f64());
    tokio::time::sleep_until(at(15).into()).await;
    worker.kill().await;
    say("SIGKILL worker");
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.start();

    tokio::time::sleep_until(at(25).into()).await;
    say("rabbitmqctl stop_app");
    tokio::task::block_in_place(|| node.ctl_ok(&["stop_app"]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| node.ctl_ok(&["start_app"]));
    say("rabbitmqctl start_app");

    tokio::time::sleep_until(at(40).into()).await;
    worker.kill().await;
    say("SIGKILL worker");
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.start();

    tokio::time::sleep_until(at(50).into()).await;
    let terminated = terminate_worker_backends(&env.database_url).await;
    say(&format!("terminated {terminated} worker Postgres backends"));

    while shops.join_next().await.is_some() {}
    say(&format!("all {total} orders created and buyers done"));

    // Wait for every order to be decided with every trade settled, or parked for an
    // operator.
    let limit = spread + Duration::from_secs(180);
    let overdue_max = AtomicI64::new(0);
    let done = eventually(limit, || async {
        let mut conn = db::conn(&env.pool).await.ok()?;
        let open: i64 = orders::table
            .filter(sql::<Bool>(UNSETTLED))
            .filter(sql::<Bool>(NOT_PARKED))
            .count()
            .get_result(&mut conn)
            .await
            .ok()?;
        let overdue: i64 = orders::table
            .filter(sql::<Bool>(UNSETTLED))
            .filter(sql::<Bool>(OVERDUE))
            .count()
            .get_result(&mut conn)
            .await
            .ok()?;
        overdue_max.fetch_max(overdue, Ordering::Relaxed);
        (open == 0).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let overdue_seen = overdue_max.into_inner();

    // The operator path: the gateway is healthy again, the parking queue is requeued.
    env.reconnect().await;
    let parked_before = env.queue_len(&env.topology.parked_queue()).await as usize;
    // The gateway is healthy again: no fault plan, no pending one-shot failures.
    env.buyers.clear_faults().await.unwrap();
    let requeue =
        crate::common::run_binary(crate::BIN, &vars, &["reconcile", "parked", "--requeue"]).await;
    let requeue_report = String::from_utf8_lossy(&requeue.stdout).into_owned();
    let settled_after_requeue = eventually(Duration::from_secs(60), || async {
        let mut conn = db::conn(&env.pool).await.ok()?;
        let open: i64 = orders::table
            .filter(sql::<Bool>(UNSETTLED))
            .count()
            .get_result(&mut conn)
            .await
            .ok()?;
        (open == 0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        (env.outbox_backlog().await == 0).then_some(())
    })
    .await;
    worker.terminate().await;

    // The checks.
    let mut conn = db::conn(&env.pool).await.unwrap();
    let rows: Vec<Order> = orders::table
        .select(Order::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    let finals: Vec<(i64, chrono::DateTime<Utc>, String)> = decisions::table
        .filter(decisions::outcome.eq_any(["closed", "paid"]))
        .select((decisions::order_id, decisions::decided_at, decisions::actor))
        .load(&mut conn)
        .await
        .unwrap();
    let retries: i64 = decisions::table
        .filter(decisions::outcome.eq("retry"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    // Anomalies: order, kind, trade.
    let anomaly_rows: Vec<(Option<i64>, String, Option<i64>)> = anomalies::table
        .order(anomalies::id)
        .select((anomalies::order_id, anomalies::kind, anomalies::trade_id))
        .load(&mut conn)
        .await
        .unwrap();
    let anomaly_orders: BTreeSet<i64> = anomaly_rows.iter().filter_map(|(o, _, _)| *o).collect();
    let views: BTreeMap<String, SimTradeView> = env
        .sim
        .as_ref()
        .unwrap()
        .state()
        .trades()
        .into_iter()
        .map(|t| (t.out_trade_no.clone(), t))
        .collect();

    // Every order's trades, as stored: one made with the order, or the two (or fewer, when
    // the buyer came too late) the shop added.
    let ids: Vec<i64> = rows.iter().map(|o| o.id).collect();
    let stored: Vec<Trade> = order_closer::db::trades::for_orders(&mut conn, &ids)
        .await
        .unwrap();
    let mut trades_of: BTreeMap<i64, Vec<&Trade>> = BTreeMap::new();
    for t in &stored {
        trades_of.entry(t.order_id).or_default().push(t);
    }
    // A trade at a gateway that the shop never recorded could be paid unseen: none may
    // exist (the buyer scans only a trade the shop added).
    let recorded: BTreeSet<&str> = stored.iter().map(|t| t.out_trade_no.as_str()).collect();
    let unknown_trades: Vec<&str> = views
        .keys()
        .map(String::as_str)
        .filter(|no| !recorded.contains(no))
        .collect();
    let plan_of: BTreeMap<&str, &Plan> = plans.iter().map(|p| (p.no.as_str(), p)).collect();
    let two_trade_orders: BTreeSet<&str> = plans
        .iter()
        .filter(|p| matches!(p.buyer, Buyer::TwoTrades(_)))
        .map(|p| p.no.as_str())
        .collect();
    let mut violations = Vec::new();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_channel: BTreeMap<&str, usize> = BTreeMap::new();
    let mut two_trade_outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut paid_closed_without_anomaly = 0;
    let mut open_trades_left = 0;
    let mut second_payments = 0;
    let mut duplicate_anomalies = 0;
    let mut duplicates_wrong = Vec::new();
    for order in &rows {
        let trades: &[&Trade] = trades_of.get(&order.id).map_or(&[], Vec::as_slice);
        let view = |t: &Trade| views.get(&t.out_trade_no);
        *by_status.entry(order.status().as_str()).or_default() += 1;
        for t in trades {
            *by_channel.entry(t.channel.as_str()).or_default() += 1;
        }
        let paid_at_gateway = trades
            .iter()
            .any(|t| view(t).is_some_and(|v| v.status == SimTradeStatus::TradeSuccess));
        let all_closed_at_gateway = trades
            .iter()
            .all(|t| view(t).is_none_or(|v| v.status == SimTradeStatus::TradeClosed));
        let payer = order
            .paid_trade_id
            .and_then(|id| trades.iter().find(|t| t.id == id));
        // The order has the trades planned: the one made with it (numbered and at its
        // gateway as the order), or up to two the shop added.
        let planned = match plan_of.get(order.out_trade_no.as_str()) {
            Some(
                p @ Plan {
                    buyer: Buyer::TwoTrades(_),
                    ..
                },
            ) => {
                let numbers = trade_numbers(&p.no);
                let channels = [p.channel, p.second];
                trades.iter().all(|t| {
                    (0..2).any(|k| t.out_trade_no == numbers[k] && t.channel == channels[k])
                })
            }
            Some(p) => matches!(trades, [t] if t.out_trade_no == p.no && t.channel == p.channel),
            None => false,
        };
        // The order's status agrees with all its trades at their gateways, each trade
        // as stored with its gateway's view, and a PAID order names a trade paid.
        let agrees = planned
            && trades.iter().all(|t| trade_agrees(t, view(t)))
            && match order.status() {
                OrderStatus::Paid => {
                    paid_at_gateway && payer.is_some_and(|t| t.status == TradeStatus::Paid)
                }
                OrderStatus::Closed => all_closed_at_gateway && order.paid_trade_id.is_none(),
                OrderStatus::New => false,
            };
        if order.status() == OrderStatus::Closed
            && paid_at_gateway
            && !anomaly_orders.contains(&order.id)
        {
            paid_closed_without_anomaly += 1;
        }
        if trades.iter().any(|t| t.status == TradeStatus::Open) {
            open_trades_left += 1;
        }
        // Every paid trade that did not pay the order is one `duplicate_payment`.
        let seconds: Vec<i64> = trades
            .iter()
            .filter(|t| t.status == TradeStatus::Paid && Some(t.id) != order.paid_trade_id)
            .map(|t| t.id)
            .collect();
        let mut duplicates: Vec<i64> = anomaly_rows
            .iter()
            .filter(|(o, kind, _)| *o == Some(order.id) && kind == "duplicate_payment")
            .map(|(_, _, trade)| trade.unwrap_or(0))
            .collect();
        duplicates.sort_unstable();
        second_payments += seconds.len();
        duplicate_anomalies += duplicates.len();
        if duplicates != seconds {
            duplicates_wrong.push(format!(
                "{}: second payments on trades {seconds:?}, duplicate_payment anomalies on {duplicates:?}",
                order.out_trade_no
            ));
        }
        if two_trade_orders.contains(order.out_trade_no.as_str()) {
            let outcome = match (order.status(), seconds.len()) {
                (OrderStatus::Paid, 0) => "paid once",
                (OrderStatus::Paid, _) => "paid twice",
                (OrderStatus::Closed, _) => "closed",
                (OrderStatus::New, _) => "new",
            };
            *two_trade_outcomes.entry(outcome).or_default() += 1;
        }
        if !agrees {
            let history: Vec<(String, String, chrono::DateTime<Utc>)> = decisions::table
                .filter(decisions::order_id.eq(order.id))
                .select((decisions::outcome, decisions::detail, decisions::decided_at))
                .load(&mut conn)
                .await
                .unwrap();
            let at_gateways: Vec<String> = trades
                .iter()
                .map(|t| {
                    let v = view(t);
                    format!(
                        "{} at {}: local {} gateway {:?} at {:?}, created {:?} paid {:?}",
                        t.out_trade_no,
                        t.channel,
                        t.status,
                        v.map(|v| v.status),
                        v.map(|v| v.channel.as_str()),
                        v.map(|v| v.created_at),
                        v.and_then(|v| v.paid_at)
                    )
                })
                .collect();
            violations.push(format!(
                "{}: local {} paid through {:?}; deadline {}; trades {at_gateways:?}; decisions {history:?}\n  worker log trail:\n{}",
                order.out_trade_no,
                order.status(),
                order.paid_trade_id,
                order.deadline,
                trail(&dir, order.id, &order.out_trade_no).join("\n"),
            ));
        }
    }
    let mut decisions_per_order: BTreeMap<i64, usize> = BTreeMap::new();
    for (id, _, _) in &finals {
        *decisions_per_order.entry(*id).or_default() += 1;
    }
    let double_decisions = decisions_per_order.values().filter(|n| **n > 1).count();
    let deadline_of: BTreeMap<i64, chrono::DateTime<Utc>> =
        rows.iter().map(|o| (o.id, o.deadline)).collect();
    // Lateness of the worker's own decisions (the requeue's come at the very end).
    let mut lateness: Vec<i64> = finals
        .iter()
        .filter(|(_, _, actor)| actor.starts_with("worker"))
        .map(|(id, at, _)| (*at - deadline_of[id]).num_milliseconds())
        .collect();
    lateness.sort_unstable();
    let pct = |p: f64| percentile(&lateness, p).unwrap_or(0);

    // Events: one per committed decision. A decision announced under two event ids, or an
    // event without a committed decision, is a duplicate; a second delivery of the same
    // event id is the outbox's documented at-least-once copy, which consumers drop by
    // `event_id` (counted and printed, see docs/operations.md).
    let events = env.get_all(&env.topology.events_audit_queue()).await;
    let mut event_ids = BTreeMap::<String, usize>::new();
    let mut announced = BTreeMap::<(i64, String), BTreeSet<String>>::new();
    for (body, _) in &events {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let id = v["event_id"].as_str().unwrap().to_owned();
        *event_ids.entry(id.clone()).or_default() += 1;
        let kind = v["event"].as_str().unwrap().to_owned();
        announced
            .entry((v["order_id"].as_i64().unwrap(), kind))
            .or_default()
            .insert(id);
    }
    let copies: usize = event_ids.values().map(|n| n - 1).sum();
    let duplicate_events = announced.values().filter(|ids| ids.len() > 1).count()
        + announced
            .keys()
            .filter(|(order, _)| !decisions_per_order.contains_key(order))
            .count();
    let decision_events = announced
        .keys()
        .filter(|(_, kind)| !kind.starts_with("order.anomaly"))
        .count();
    let parked = env.get_all(&env.topology.parked_queue()).await;
    let mut parked_by_reason = BTreeMap::<String, usize>::new();
    for (_, headers) in &parked {
        *parked_by_reason
            .entry(header_text(headers, "oc-park-reason").unwrap_or_else(|| "<no reason>".into()))
            .or_default() += 1;
    }
    let redriven = count_in_logs(&dir, "re-driving an order overdue");
    let stats = env.buyers.stats().await.unwrap();
    let lost = by_status.get("NEW").copied().unwrap_or(0);

    println!(
        "\n===== chaos run (seed {seed}, {:?} queues): {total} orders over {spread:?}, finished in {:.1}s =====",
        env.topology.queue_type(),
        elapsed.as_secs_f64()
    );
    println!("decided or parked in time    {}", done.is_some());
    println!("orders by status             {by_status:?}");
    println!("trades by gateway            {by_channel:?}");
    println!(
        "two-trade orders             {} {two_trade_outcomes:?}",
        two_trade_orders.len()
    );
    println!(
        "second payments              {second_payments} ({duplicate_anomalies} duplicate_payment anomalies)"
    );
    let refused = std::mem::take(&mut *refused.lock().unwrap());
    println!("trades the shop refused      {refused:?}");
    println!("trades left open             {open_trades_left}");
    println!("trades unknown to the shop   {}", unknown_trades.len());
    println!(
        "worker starts                {} (2 SIGKILLs), broker restarts 1, backends terminated 1",
        worker.starts
    );
    println!("gateway requests             {}", stats.gateway_requests);
    println!("faults injected              {:?}", stats.faults_injected);
    println!("retries                      {retries}");
    println!(
        "lateness p50/p99/max         {} / {} / {} ms",
        pct(0.5),
        pct(0.99),
        lateness.last().unwrap_or(&0)
    );
    println!("re-driven by the janitor     {redriven}");
    println!("parked, then requeued        {parked_before} ({parked_on_purpose} on purpose)");
    println!("state disagrees with sim     {}", violations.len());
    println!("paid but closed, no anomaly  {paid_closed_without_anomaly}");
    println!("orders decided twice         {double_decisions}");
    println!(
        "events                       {} delivered, {} distinct; duplicates {duplicate_events}; at-least-once copies {copies}",
        events.len(),
        event_ids.len()
    );
    println!(
        "unsettled past schedule + {:?} {overdue_seen} (max seen)",
        LATENESS_BOUND
    );
    println!(
        "parked after the requeue     {} {parked_by_reason:?}",
        parked.len()
    );
    for v in violations.iter().take(20) {
        println!("VIOLATION {v}");
    }
    for d in duplicates_wrong.iter().take(20) {
        println!("VIOLATION {d}");
    }
    for no in unknown_trades.iter().take(20) {
        println!("VIOLATION trade {no} exists at its gateway, not in the shop's records");
    }
    if settled_after_requeue.is_none() {
        println!("requeue report:\n{requeue_report}");
    }

    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        done.is_some(),
        format!("not every order was decided or parked within {limit:?}"),
    );
    check(
        channels
            .iter()
            .all(|c| by_channel.get(c).copied().unwrap_or(0) > 0),
        format!("trades by gateway {by_channel:?}: some gateway got none"),
    );
    check(
        rows.len() == total,
        format!("{} orders of {total}", rows.len()),
    );
    check(
        settled_after_requeue.is_some(),
        format!("{lost} orders still NEW after the requeue"),
    );
    check(
        violations.is_empty(),
        format!("{} orders disagree with the gateway", violations.len()),
    );
    check(
        open_trades_left == 0,
        format!("{open_trades_left} orders with a trade left open"),
    );
    check(
        duplicates_wrong.is_empty(),
        format!(
            "{} orders whose second payments are not one duplicate_payment each",
            duplicates_wrong.len()
        ),
    );
    check(
        unknown_trades.is_empty(),
        format!(
            "{} trades at the gateways unknown to the shop",
            unknown_trades.len()
        ),
    );
    // A trade comes too late, or after its order was decided: never for another reason.
    check(
        refused
            .keys()
            .all(|why| ["too late", "order PAID", "order CLOSED"].contains(&why.as_str())),
        format!("trades refused: {refused:?}"),
    );
    check(
        two_trade_orders.len() == total / TWO_TRADES_EVERY,
        format!("{} two-trade orders of {total}", two_trade_orders.len()),
    );
    check(
        paid_closed_without_anomaly == 0,
        format!("{paid_closed_without_anomaly} paid orders closed without an anomaly"),
    );
    check(
        double_decisions == 0,
        format!("{double_decisions} orders decided twice"),
    );
    check(
        decisions_per_order.len() == total,
        format!(
            "{} of {total} orders have their decision",
            decisions_per_order.len()
        ),
    );
    check(
        decision_events == total,
        format!("{decision_events} of {total} decisions announced"),
    );
    check(
        duplicate_events == 0,
        format!("{duplicate_events} duplicate events"),
    );
    check(
        overdue_seen == 0,
        format!("{overdue_seen} orders unsettled past their schedule + {LATENESS_BOUND:?}"),
    );
    check(
        parked.is_empty(),
        format!("{} messages still parked after the requeue", parked.len()),
    );
    check(
        parked_on_purpose == PARKED_ON_PURPOSE * channels.len()
            && parked_before >= parked_on_purpose,
        format!("only {parked_before} parked: the operator's path was not walked"),
    );
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
    Round {
        seed,
        orders: total,
        lost,
        decided_twice: double_decisions,
        disagreements: violations.len(),
        parked_before_requeue: parked_before,
        redriven,
        duplicate_events,
        failures,
    }
}

/// Why the shop could not add trades, and how often.
type Refused = std::sync::Mutex<BTreeMap<String, usize>>;

/// The numbers of a two-trade order's trades: the gateways know trades by number alone.
fn trade_numbers(no: &str) -> [String; 2] {
    [format!("{no}-1"), format!("{no}-2")]
}

/// The buyer of an order with two trades: the shop adds each trade as the buyer picks its
/// gateway (a trade it cannot add, too late or the order settled, is never offered), the
/// buyer scans its code (valid until the deadline), then pays each as drawn.
async fn two_trades(
    closer: &Closer,
    buyers: &BuyerClient,
    plan: &Plan,
    pays: [Pay; 2],
    before: Duration,
    refused: &Refused,
) {
    let numbers = trade_numbers(&plan.no);
    let mut scanned = [false; 2];
    for (k, channel) in [plan.channel, plan.second].into_iter().enumerate() {
        tokio::time::sleep(before / 2).await;
        let added = match closer
            .add_trade(&plan.no, NewTrade::new(channel, &numbers[k]))
            .await
        {
            Ok(added) => added,
            Err(e) => {
                let why = match e {
                    TradeError::TooLate { .. } => "too late".to_owned(),
                    TradeError::Settled { status, .. } => format!("order {status}"),
                    other => other.to_string(),
                };
                *refused.lock().unwrap().entry(why).or_default() += 1;
                continue;
            }
        };
        scanned[k] = buyers
            .buyer(&numbers[k])
            .at(channel)
            .scans(plan.amount)
            .qr_valid_until(added.expire_by)
            .send()
            .await
            .is_ok();
        if scanned[k] && pays[k] == Pay::DuringClose {
            let _ = buyers.buyer(&numbers[k]).pays_on_close().send().await;
        }
    }
    let numbers = &numbers;
    let pay = |when: Pay| async move {
        for k in 0..2 {
            if scanned[k] && pays[k] == when {
                let _ = buyers.buyer(&numbers[k]).pays().send().await;
            }
        }
    };
    pay(Pay::Early).await;
    if pays.contains(&Pay::AtTheDeadline) {
        let jitter = Duration::from_millis((plan.moment * 1500.0) as u64);
        let until = (plan.deadline - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(until + jitter).await;
        pay(Pay::AtTheDeadline).await;
    }
}

/// Whether a trade as stored agrees with its gateway's view (the run holds second
/// payments, so nothing is refunded): paid on both sides, or closed here and closed (or
/// never created) there. An open trade is not settled.
fn trade_agrees(trade: &Trade, view: Option<&SimTradeView>) -> bool {
    let at_its_gateway = view.is_none_or(|v| v.channel == trade.channel);
    at_its_gateway
        && match trade.status {
            TradeStatus::Paid => view.is_some_and(|v| v.status == SimTradeStatus::TradeSuccess),
            TradeStatus::Closed => view.is_none_or(|v| v.status == SimTradeStatus::TradeClosed),
            TradeStatus::Open => false,
        }
}

/// Terminates the worker's Postgres connections (by application name); returns how many.
async fn terminate_worker_backends(database_url: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db::connect(database_url).await.unwrap();
    let count: Count = diesel::sql_query(
        "SELECT count(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind::<diesel::sql_types::Text, _>(WORKER_APP_NAME)
    .get_result(&mut conn)
    .await
    .unwrap();
    count.n
}
