//! The chaos run: thousands of orders, buyers paying at random moments (some during the
//! close), about 10% gateway faults, the worker killed with SIGKILL twice, the broker
//! application restarted, the worker's database connections terminated. At the end every
//! invariant is checked and the figures are printed. Restarts the broker and kills
//! processes: runs alone (`scripts/test.sh` gives it its own step).
//!
//! Size and pace: `CHAOS_ORDERS` (default 5000), `CHAOS_SPREAD_SECS` (default 60).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{TestEnv, eventually};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::broker::topology::header_text;
use order_closer::closer::{Due, NewOrder};
use order_closer::db::{self, schema::anomalies, schema::decisions, schema::orders};
use order_closer::order::{Order, OrderStatus};
use order_closer::sim::{FaultPlan, SimTradeStatus};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_order-closer");
const WORKER_APP_NAME: &str = "oc-chaos-worker";
/// How long past its deadline an order may stay NEW under chaos: the whole retry
/// schedule (29 s) plus kills, broker downtime and reconnect back-off.
const LATENESS_BOUND: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Buyer {
    NeverScans,
    ScansOnly,
    PaysEarly,
    PaysDuringClose,
    PaysAtTheDeadline,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct WorkerProcess {
    vars: Vec<(String, String)>,
    dir: std::path::PathBuf,
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

fn rabbitmqctl(arg: &str) {
    let status = std::process::Command::new("rabbitmqctl")
        .arg(arg)
        .stdout(Stdio::null())
        .status();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "rabbitmqctl {arg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serial_chaos_run() {
    let total = env_number("CHAOS_ORDERS", 5000) as usize;
    let spread = Duration::from_secs(env_number("CHAOS_SPREAD_SECS", 60));
    let mut env = TestEnv::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("oc-chaos-{}", env.tag));
    std::fs::create_dir_all(&dir).unwrap();
    let mut vars = env.binary_env(&dir);
    for (k, v) in [
        ("ALIPAY_TIMEOUT", "1s"),
        ("ORDER_CLOSER_RETRY_STEPS", "1s,2s,3s,5s,8s,10s"),
        ("ORDER_CLOSER_CONCURRENCY", "64"),
        ("ORDER_CLOSER_PREFETCH", "128"),
        ("ORDER_CLOSER_HTTP_LISTEN", "off"),
        ("ORDER_CLOSER_SHUTDOWN_GRACE", "5s"),
        ("RUST_LOG", "warn"),
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
        seed: Some(7),
        ..FaultPlan::default()
    };
    env.buyers.set_faults(&plan).await.unwrap();

    let mut worker = WorkerProcess {
        vars,
        dir: dir.clone(),
        child: None,
        starts: 0,
    };
    worker.start();

    // Orders, created by eight concurrent "shops", and their buyers.
    let started = Instant::now();
    let first_deadline = Utc::now() + chrono::Duration::seconds(5);
    let mut rng = StdRng::seed_from_u64(2026);
    let mut plans = Vec::with_capacity(total);
    for i in 0..total {
        let offset = Duration::from_millis(rng.random_range(0..=spread.as_millis() as u64));
        let deadline = first_deadline + chrono::Duration::from_std(offset).unwrap();
        let roll: f64 = rng.random();
        let buyer = match roll {
            r if r < 0.10 => Buyer::PaysEarly,
            r if r < 0.20 => Buyer::PaysDuringClose,
            r if r < 0.30 => Buyer::PaysAtTheDeadline,
            r if r < 0.60 => Buyer::ScansOnly,
            _ => Buyer::NeverScans,
        };
        let moment: f64 = rng.random();
        plans.push((
            env.no(&format!("chaos{i:05}")),
            rng.random_range(100..50_000i64),
            deadline,
            buyer,
            moment,
        ));
    }
    let plans = Arc::new(plans);
    let mut shops = tokio::task::JoinSet::new();
    for shop in 0..8 {
        let closer = env.closer.clone();
        let buyers = env.buyers.clone();
        let plans = plans.clone();
        shops.spawn(async move {
            let mut buyer_tasks = Vec::new();
            for (no, amount, deadline, buyer, moment) in plans.iter().skip(shop).step_by(8).cloned()
            {
                closer
                    .create_order(NewOrder::alipay(&no, amount, Due::At(deadline)))
                    .await
                    .expect("create order");
                let buyers = buyers.clone();
                buyer_tasks.push(tokio::spawn(async move {
                    let until =
                        |at: chrono::DateTime<Utc>| (at - Utc::now()).to_std().unwrap_or_default();
                    let before = until(deadline).mul_f64(moment * 0.8);
                    // A buyer's request may meet the broker restart or a closed trade;
                    // what matters is what the simulator ends up saying.
                    match buyer {
                        Buyer::NeverScans => {}
                        Buyer::ScansOnly => {
                            tokio::time::sleep(before).await;
                            let _ = buyers.scan_before(&no, amount, deadline).await;
                        }
                        Buyer::PaysEarly => {
                            tokio::time::sleep(before).await;
                            if buyers.scan_before(&no, amount, deadline).await.is_ok() {
                                let _ = buyers.pay(&no).await;
                            }
                        }
                        Buyer::PaysDuringClose => {
                            let _ = buyers.scan_before(&no, amount, deadline).await;
                            let _ = buyers.pay_on_close(&no).await;
                        }
                        Buyer::PaysAtTheDeadline => {
                            let _ = buyers.scan_before(&no, amount, deadline).await;
                            let jitter = Duration::from_millis((moment * 1500.0) as u64);
                            tokio::time::sleep(until(deadline) + jitter).await;
                            let _ = buyers.pay(&no).await;
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
    tokio::time::sleep_until(at(15).into()).await;
    worker.kill().await;
    println!(
        "chaos: SIGKILL worker at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.start();

    tokio::time::sleep_until(at(25).into()).await;
    println!(
        "chaos: rabbitmqctl stop_app at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    rabbitmqctl("stop_app");
    tokio::time::sleep(Duration::from_secs(3)).await;
    rabbitmqctl("start_app");
    println!(
        "chaos: rabbitmqctl start_app at {:.1}s",
        started.elapsed().as_secs_f64()
    );

    tokio::time::sleep_until(at(40).into()).await;
    worker.kill().await;
    println!(
        "chaos: SIGKILL worker at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.start();

    tokio::time::sleep_until(at(50).into()).await;
    let terminated = terminate_worker_backends(&env.database_url).await;
    println!(
        "chaos: terminated {terminated} worker Postgres backends at {:.1}s",
        started.elapsed().as_secs_f64()
    );

    while shops.join_next().await.is_some() {}
    println!(
        "chaos: all {total} orders created and buyers done at {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Wait for every order to be decided.
    let limit = spread + Duration::from_secs(180);
    let overdue_max = std::sync::atomic::AtomicI64::new(0);
    let done = eventually(limit, || async {
        let mut conn = db::conn(&env.pool).await.ok()?;
        let open: i64 = orders::table
            .filter(orders::status.eq("NEW"))
            .count()
            .get_result(&mut conn)
            .await
            .ok()?;
        let bound = Utc::now() - chrono::Duration::from_std(LATENESS_BOUND).unwrap();
        let overdue: i64 = orders::table
            .filter(orders::status.eq("NEW"))
            .filter(orders::deadline.lt(bound))
            .count()
            .get_result(&mut conn)
            .await
            .ok()?;
        overdue_max.fetch_max(overdue, std::sync::atomic::Ordering::Relaxed);
        (open == 0).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let overdue_seen = overdue_max.into_inner();
    eventually(Duration::from_secs(30), || async {
        (env.outbox_backlog().await == 0).then_some(())
    })
    .await;
    worker.terminate().await;
    env.reconnect().await;

    // The checks.
    let mut conn = db::conn(&env.pool).await.unwrap();
    let rows: Vec<Order> = orders::table
        .select(Order::as_select())
        .load(&mut conn)
        .await
        .unwrap();
    let finals: Vec<(i64, chrono::DateTime<Utc>)> = decisions::table
        .filter(decisions::outcome.eq_any(["closed", "paid"]))
        .select((decisions::order_id, decisions::decided_at))
        .load(&mut conn)
        .await
        .unwrap();
    let retries: i64 = decisions::table
        .filter(decisions::outcome.eq("retry"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let anomaly_orders: BTreeSet<String> = anomalies::table
        .select(anomalies::out_trade_no)
        .load::<String>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let views: BTreeMap<String, order_closer::sim::SimTradeView> = env
        .sim
        .as_ref()
        .unwrap()
        .state()
        .trades()
        .into_iter()
        .map(|t| (t.out_trade_no.clone(), t))
        .collect();
    let trades: BTreeMap<String, SimTradeStatus> =
        views.iter().map(|(k, t)| (k.clone(), t.status)).collect();

    let mut violations = Vec::new();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    let mut paid_closed_without_anomaly = 0;
    for order in &rows {
        *by_status.entry(order.status().as_str()).or_default() += 1;
        let gateway = trades.get(&order.out_trade_no);
        let agrees = matches!(
            (order.status(), gateway),
            (
                OrderStatus::Closed,
                None | Some(SimTradeStatus::TradeClosed)
            ) | (OrderStatus::Paid, Some(SimTradeStatus::TradeSuccess))
        );
        if order.status() == OrderStatus::Closed
            && gateway == Some(&SimTradeStatus::TradeSuccess)
            && !anomaly_orders.contains(&order.out_trade_no)
        {
            paid_closed_without_anomaly += 1;
        }
        if !agrees {
            let history: Vec<(String, String, chrono::DateTime<Utc>)> = decisions::table
                .filter(decisions::order_id.eq(order.id))
                .select((decisions::outcome, decisions::detail, decisions::decided_at))
                .load(&mut conn)
                .await
                .unwrap();
            let trade = views.get(&order.out_trade_no);
            violations.push(format!(
                "{}: local {} gateway {gateway:?}; deadline {}, trade created {:?} paid {:?}; decisions {history:?}",
                order.out_trade_no,
                order.status(),
                order.deadline,
                trade.map(|t| t.created_at),
                trade.and_then(|t| t.paid_at),
            ));
        }
    }
    let mut decisions_per_order: BTreeMap<i64, usize> = BTreeMap::new();
    for (id, _) in &finals {
        *decisions_per_order.entry(*id).or_default() += 1;
    }
    let double_decisions = decisions_per_order.values().filter(|n| **n > 1).count();
    let deadline_of: BTreeMap<i64, chrono::DateTime<Utc>> =
        rows.iter().map(|o| (o.id, o.deadline)).collect();
    let mut lateness: Vec<i64> = finals
        .iter()
        .map(|(id, at)| (*at - deadline_of[id]).num_milliseconds())
        .collect();
    lateness.sort_unstable();
    let pct = |p: f64| {
        lateness
            .get(((lateness.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };

    // Events: one per committed decision. A decision announced under two event ids, or an
    // event without a committed decision, is a duplicate; a second delivery of the same
    // event id is the outbox's documented at-least-once copy, which consumers drop by
    // `event_id` (counted and printed, see the README).
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
    let stats = env.buyers.stats().await.unwrap();

    println!(
        "\n===== chaos run: {total} orders over {spread:?}, finished in {:.1}s =====",
        elapsed.as_secs_f64()
    );
    println!("all decided in time          {}", done.is_some());
    println!("orders by status             {by_status:?}");
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
    println!("state disagrees with sim     {}", violations.len());
    println!("paid but closed, no anomaly  {paid_closed_without_anomaly}");
    println!("orders decided twice         {double_decisions}");
    println!(
        "events                       {} delivered, {} distinct; duplicates {duplicate_events}; at-least-once copies {copies}",
        events.len(),
        event_ids.len()
    );
    println!(
        "NEW past deadline + {:?}  {overdue_seen} (max seen)",
        LATENESS_BOUND
    );
    println!(
        "parked                       {} {parked_by_reason:?}",
        parked.len()
    );
    for v in violations.iter().take(20) {
        println!("VIOLATION {v}");
    }

    assert!(
        done.is_some(),
        "not every order was decided within {limit:?}"
    );
    assert_eq!(rows.len(), total);
    assert!(
        violations.is_empty(),
        "{} orders disagree with the gateway",
        violations.len()
    );
    assert_eq!(paid_closed_without_anomaly, 0);
    assert_eq!(double_decisions, 0);
    assert_eq!(
        decisions_per_order.len(),
        total,
        "every order has its decision"
    );
    assert_eq!(decision_events, total, "every decision has its event");
    assert_eq!(duplicate_events, 0, "duplicate events");
    assert_eq!(overdue_seen, 0, "orders NEW past deadline + bound");
    assert!(
        !parked_by_reason.contains_key("<no reason>"),
        "a parked message without a reason"
    );
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
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
