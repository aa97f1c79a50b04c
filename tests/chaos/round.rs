//! One chaos run, whatever its scenario: thousands of orders and their buyers (see
//! `workload.rs`), about 10% gateway faults, worker processes of the real binary, the
//! scenario's disruptions at their seconds (`disruptions.rs`); at the end the operator
//! path (the gateway healthy again, `reconcile parked --requeue`), then every invariant is
//! checked and the figures are printed.
//!
//! Why the verdict does not depend on luck: at about 11% faulty answers and two requests
//! per attempt on a waiting trade, walking the whole retry schedule happens to a few
//! orders in some runs; they are parked with a reason, which is an outcome, not a loss.
//! The run therefore ends the way an operator would, by requeueing the parking queue once
//! the gateway is healthy, and only then requires every order to agree with the gateway.
//!
//! Every order's status must agree with all its trades at their gateways, no trade may be
//! left open, every second payment must be one `duplicate_payment` anomaly (held: the run
//! keeps the default `hold` policy), every order decided once and announced once, and no
//! order left unsettled past its schedule by more than [`LATENESS_BOUND`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use diesel_async::RunQueryDsl;
use order_closer::broker::topology::header_text;
use order_closer::closer::Closer;
use order_closer::db::{self, schema::anomalies, schema::decisions, schema::orders};
use order_closer::order::{Order, OrderStatus};
use order_closer::sim::{FaultPlan, SimTradeStatus, SimTradeView};
use order_closer::trade::{Trade, TradeStatus};
use order_closer_testkit::stats::percentile;

use crate::common::pg_node::PgNode;
use crate::common::{TestEnv, eventually};
use crate::disruptions::{Broker, Disruption, Stage};
use crate::workers::{WORKER_APP_NAME, WorkerProcess, count_in_logs, trail};
use crate::workload::{
    self, Buyer, PARKED_ON_PURPOSE, Plan, Refused, TWO_TRADES_EVERY, trade_numbers,
};

/// How long past its schedule (deadline, or a retry's `not_before`) an order may stay NEW
/// under chaos: kills, broker downtime, reconnect back-off, and the janitor's own bound.
const LATENESS_BOUND: Duration = Duration::from_secs(120);
/// Orders past their schedule by more than the bound, parked ones excepted (they wait for
/// an operator, with a message saying why): NEW ones, and PAID ones with a trade still
/// open (the janitor re-drives both).
const OVERDUE: &str = "GREATEST(deadline, recheck_at) < now() - interval '120 seconds'";
/// Orders not settled yet: NEW, or with a trade still open at its gateway as far as we know.
const UNSETTLED: &str = "(status = 'NEW' OR open_trades > 0)";
/// Orders not parked for an operator.
const NOT_PARKED: &str = "recheck_at IS DISTINCT FROM 'infinity'";

/// What a run is made of.
pub struct Scenario<'a> {
    /// Its name in the figures.
    pub name: &'static str,
    /// The broker.
    pub broker: Broker<'a>,
    /// A database server of the run's own (to restart), or None for the tests' own.
    pub database: Option<&'a PgNode>,
    /// How many worker processes run.
    pub workers: usize,
    /// The queue type, when the scenario fixes it (else `TEST_QUEUE_TYPE` or the default).
    pub queue_type: Option<&'static str>,
    /// The disruptions, each at its second of the run.
    pub schedule: Vec<(u64, Disruption)>,
}

/// What one round found.
#[derive(Debug, Default)]
pub struct Round {
    pub seed: u64,
    pub orders: usize,
    pub lost: usize,
    pub decided_twice: usize,
    pub disagreements: usize,
    pub parked_before_requeue: usize,
    pub redriven: usize,
    pub duplicate_events: usize,
    pub failures: Vec<String>,
}

/// Runs `scenario` once with `total` orders due over `spread`, drawn from `seed`.
pub async fn chaos_round(
    scenario: &Scenario<'_>,
    total: usize,
    spread: Duration,
    seed: u64,
) -> Round {
    let url = scenario.broker.amqp_url();
    let mut overrides = vec![("AMQP_URL", url.as_str())];
    if let Some(kind) = scenario.queue_type {
        overrides.push(("ORDER_CLOSER_QUEUE_TYPE", kind));
    }
    let database_url = scenario
        .database
        .map(|pg| pg.plain_url("order_closer_chaos"));
    let mut env = match &database_url {
        Some(url) => TestEnv::on_database(url, &overrides).await,
        None => TestEnv::new(&overrides).await,
    };
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
        ("ORDER_CLOSER_DB_POOL_SIZE", "16"),
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
    let workers = (1..=scenario.workers)
        .map(|i| WorkerProcess::new(format!("worker{i}"), vars.clone(), dir.clone()))
        .collect();
    let mut stage = Stage::new(
        scenario.broker,
        scenario.database,
        env.database_url.clone(),
        env.topology.close_queue(),
        workers,
    );
    for worker in &mut stage.workers {
        worker.start();
    }

    // Orders, created by eight concurrent "shops" through the library (connected as a
    // shop's backend is, following the broker's addresses), and their buyers.
    let started = stage.started();
    let (plans, parked_on_purpose) = workload::draw(&env, total, spread, seed).await;
    let plans = Arc::new(plans);
    let refused: Arc<Refused> = Arc::default();
    let closer = Closer::connect(&env.settings, order_closer::gateway::rules::CHANNELS)
        .await
        .expect("the library connects");
    let mut shops = workload::spawn_shops(&closer, &env.buyers, Arc::clone(&plans), &refused);
    let channels = env.sim().channels();

    stage.run(&scenario.schedule).await;

    while shops.join_next().await.is_some() {}
    println!(
        "chaos: all {total} orders created and buyers done at {:.1}s",
        started.elapsed().as_secs_f64()
    );

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
    for worker in &mut stage.workers {
        worker.terminate().await;
    }
    closer.shutdown().await;

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
        "\n===== {} (seed {seed}, {:?} queues): {total} orders over {spread:?}, finished in {:.1}s =====",
        scenario.name,
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
        "worker processes             {} (starts {:?})",
        stage.workers.len(),
        stage.workers.iter().map(|w| w.starts).collect::<Vec<_>>()
    );
    println!("disruptions                  {:?}", stage.log);
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
