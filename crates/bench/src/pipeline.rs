//! The pipeline run: N orders due at the same moment a few seconds ahead, a share of
//! them paid at the simulator, decided by a worker child process. Measures decisions
//! per second, lateness, worker CPU per decision and peak RSS. [`run_batch`] is shared
//! with the classic run and the two-trade run ([`run_two_trades`]): the same batch with
//! every order created without a trade and given two, one at each of [`TWO_TRADES`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer_core::closer::{Due, NewOrder, NewTrade, TradeError};
use order_closer_core::db::decisions::DecisionOutcome;
use order_closer_core::db::schema::{decisions, orders, trades};
use order_closer_core::db::{self, DbPool};
use order_closer_core::order::OrderStatus;
use order_closer_core::trade::TradeStatus;
use order_closer_sim::{SimState, SimTradeStatus};
use serde::Serialize;

use super::stats::{self, Percentiles};
use super::worker_proc::{ProcSample, WorkerGroup, WorkerProcess, machine_cpu_ticks};
use super::{BenchEnv, Plan, fan_out, progress};

/// Tasks creating orders at once.
pub const CREATE_TASKS: usize = 64;
/// Creation rate assumed for planning the deadline when none was measured.
const DEFAULT_CREATE_RATE: f64 = 500.0;
/// Shortest time between the start of creation and the common deadline.
const MIN_LEAD: Duration = Duration::from_secs(3);
/// The gateways of the two-trade run, each with the suffix of its trade numbers
/// (`<order>-A`, `<order>-W`: unique per gateway, and within both gateways' rules).
pub const TWO_TRADES: [(&str, &str); 2] = [("alipay", "A"), ("wechat", "W")];
/// Share of the measured creation rate a run's deadline is planned with.
const RATE_SHARE: f64 = 0.6;
/// The same for the two-trade run: less than [`RATE_SHARE`], because a trade added after
/// the deadline fails the run where a late order only delays its decision.
const TWO_TRADE_RATE_SHARE: f64 = 0.4;
/// Orders, due an hour ahead, that time two-trade creation before the run's deadline is
/// fixed: a tenth of the run, within these bounds. Never decided during the benchmark
/// (the schema and the queues are dropped at its end).
const CALIBRATION_ORDERS: (usize, usize) = (128, 1000);

/// How the orders of a batch get their trades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trades {
    /// The one-call form: `NewOrder::new` at the run's gateway, one trade numbered as the
    /// order.
    One,
    /// `NewOrder::without_trade`, then `Closer::add_trade` at each of [`TWO_TRADES`].
    Two,
}

impl Trades {
    /// Trades per order.
    pub fn per_order(self) -> u32 {
        match self {
            Self::One => 1,
            Self::Two => 2,
        }
    }
}

/// What a simulated buyer did with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Buyer {
    /// Paid before the deadline (the callback is lost): one query, then PAID.
    Paid,
    /// Scanned and left: query, close at the gateway, then CLOSED.
    Scanned,
    /// Never scanned: one query ("no such trade"), then CLOSED.
    NeverScanned,
}

impl Buyer {
    /// Order `i`'s buyer: a low-discrepancy sequence, so every prefix has the mix.
    pub fn pick(i: usize, paid_share: f64) -> Self {
        let f = (i as f64 * 0.618_033_988_749_894_9).fract();
        if f < paid_share {
            Self::Paid
        } else if f < paid_share + (1.0 - paid_share) / 2.0 {
            Self::Scanned
        } else {
            Self::NeverScanned
        }
    }

    /// The status the order must end in.
    pub fn expected(self) -> OrderStatus {
        match self {
            Self::Paid => OrderStatus::Paid,
            Self::Scanned | Self::NeverScanned => OrderStatus::Closed,
        }
    }

    /// Signed calls our side makes for this order (query; query + close).
    pub fn signed_calls(self) -> u32 {
        match self {
            Self::Paid | Self::NeverScanned => 1,
            Self::Scanned => 2,
        }
    }

    /// Acts at the simulator right after the order is created.
    pub fn act(self, sim: &SimState, channel: &str, no: &str, amount: i64) -> anyhow::Result<()> {
        match self {
            Self::Paid => {
                sim.buyer(no).at(channel).scans(amount).pays().send()?;
            }
            Self::Scanned => {
                sim.buyer(no).at(channel).scans(amount).send()?;
            }
            Self::NeverScanned => {}
        }
        Ok(())
    }

    /// Acts at the simulator on an order's two trades (channel, number) right after they
    /// are added, as [`Buyer::act`] does on one: the paying buyer scans both and pays
    /// `trades[paid]`, leaving the other waiting; the scanning buyer scans both; the other
    /// scans neither.
    pub fn act_on_two(
        self,
        sim: &SimState,
        trades: &[(&str, String); 2],
        paid: usize,
        amount: i64,
    ) -> anyhow::Result<()> {
        for (k, (channel, no)) in trades.iter().enumerate() {
            match self {
                Self::Paid if k == paid => {
                    sim.buyer(no).at(channel).scans(amount).pays().send()?;
                }
                Self::Paid | Self::Scanned => {
                    sim.buyer(no).at(channel).scans(amount).send()?;
                }
                Self::NeverScanned => {}
            }
        }
        Ok(())
    }
}

/// One created order.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    /// `orders.id`.
    pub id: i64,
    /// What its buyer did.
    pub buyer: Buyer,
}

/// The figures of one batch (pipeline, pipeline with two trades, or classic).
#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    /// `pipeline`, `pipeline_two_trades` or `classic`.
    pub label: String,
    /// Orders created.
    pub orders: usize,
    /// Trades per order (1: the one-call form; 2: one at each of [`TWO_TRADES`]).
    pub trades_per_order: u32,
    /// Orders per buyer behaviour.
    pub mix: BTreeMap<Buyer, usize>,
    /// Worker concurrency.
    pub concurrency: u32,
    /// Worker prefetch.
    pub prefetch: u16,
    /// Worker processes (the scale-out run: 1, 2, 3; else 1).
    pub worker_processes: u32,
    /// Share of the whole machine's CPU (every core) busy from the deadline to the last
    /// decision: near 1, the machine is the limit, whatever the worker count.
    pub machine_cpu_busy: Option<f64>,
    /// Seconds from the start of creation to the common deadline.
    pub deadline_lead_seconds: f64,
    /// Seconds creation took.
    pub creation_seconds: f64,
    /// Whether creation ended after the deadline (lateness then includes creation).
    pub creation_overran_deadline: bool,
    /// Orders decided (closed or paid).
    pub decided: usize,
    /// Orders still NEW when the bench stopped waiting.
    pub undecided: usize,
    /// Orders marked PAID.
    pub paid: usize,
    /// Orders closed.
    pub closed: usize,
    /// Retry decisions recorded (through the delay tiers).
    pub retries: usize,
    /// Park decisions recorded.
    pub parked: usize,
    /// Quick retries (transient errors retried in the process), from the audit rows.
    pub quick_retries: usize,
    /// Orders whose final status is not what their buyer implies.
    pub mismatches: usize,
    /// Trades whose final state disagrees with their buyer: not paid or closed as it
    /// should be in the database, or left payable at the simulator.
    pub trade_mismatches: usize,
    /// Queries the simulator answered during the batch (every gateway).
    pub gateway_queries: u64,
    /// Closes the simulator answered during the batch (every gateway).
    pub gateway_closes: u64,
    /// Queries and closes per decided order, as counted by the simulator (each one a
    /// signed request and a signed answer).
    pub gateway_calls_per_decision: f64,
    /// Queries and closes per decision the worker made about the orders (decided, retried
    /// or parked: one per delivery that asked the gateway). Under faults, what quick
    /// retries add to each delivery: the retry budget keeps it near the fault-free figure.
    pub gateway_calls_per_attempt: f64,
    /// Decisions per second, from the first to the last decision's `decided_at`.
    pub decisions_per_second: f64,
    /// Seconds from the first to the last decision.
    pub decision_span_seconds: f64,
    /// Lateness (`decided_at` minus deadline), milliseconds.
    pub lateness_ms: Percentiles,
    /// Lateness quantiles p0..p100, milliseconds.
    pub lateness_quantiles_ms: Vec<f64>,
    /// Decisions in each second after the first decision.
    pub decisions_per_second_series: Vec<u32>,
    /// Worker CPU seconds (user + system) over its whole life.
    pub worker_cpu_seconds: f64,
    /// Worker CPU milliseconds per decision.
    pub worker_cpu_ms_per_decision: f64,
    /// Worker CPU seconds until the deadline (start-up and forwarding early hops).
    pub worker_cpu_seconds_before_deadline: f64,
    /// Worker CPU milliseconds per decision after the deadline (deciding only).
    pub worker_cpu_ms_per_decision_after_deadline: f64,
    /// Worker peak RSS (VmHWM), MiB.
    pub worker_peak_rss_mib: f64,
}

/// Runs the pipeline batch with the plan's concurrency and prefetch.
pub async fn run(
    env: &BenchEnv,
    plan: &Plan,
    create_rate_hint: Option<f64>,
) -> anyhow::Result<BatchResult> {
    let count = plan.orders as usize;
    let lead = plan
        .lead()
        .unwrap_or_else(|| planned_lead(count, create_rate_hint));
    run_batch(
        env,
        "pipeline",
        Trades::One,
        count,
        plan.paid_share,
        Workers::tuned(plan.concurrency, plan.prefetch),
        lead,
    )
    .await
}

/// Runs the pipeline batch with two trades per order (same orders, buyers, concurrency
/// and prefetch). Adding a trade takes a transaction of its own, so the deadline is
/// planned from two-trade orders created first to time it (due an hour ahead), unless
/// `--lead` is given: a trade cannot be added after the deadline.
pub async fn run_two_trades(env: &BenchEnv, plan: &Plan) -> anyhow::Result<BatchResult> {
    let channels: Vec<&str> = order_closer_app::gateways::channels().collect();
    for (channel, _) in TWO_TRADES {
        anyhow::ensure!(
            channels.contains(&channel),
            "the two-trade run needs the {channel} gateway (gateways: {})",
            channels.join(", ")
        );
    }
    let count = plan.orders as usize;
    let lead = match plan.lead() {
        Some(lead) => lead,
        None => {
            let rate = two_trade_create_rate(env, count, plan.paid_share).await?;
            lead_at(count, Some(rate), TWO_TRADE_RATE_SHARE)
        }
    };
    run_batch(
        env,
        "pipeline_two_trades",
        Trades::Two,
        count,
        plan.paid_share,
        Workers::tuned(plan.concurrency, plan.prefetch),
        lead,
    )
    .await
}

/// Two-trade orders created per second, timed on a tenth of `count` (see
/// [`CALIBRATION_ORDERS`]).
async fn two_trade_create_rate(
    env: &BenchEnv,
    count: usize,
    paid_share: f64,
) -> anyhow::Result<f64> {
    let n = (count / 10).clamp(CALIBRATION_ORDERS.0, CALIBRATION_ORDERS.1);
    let bar = progress(n as u64, "pipeline_two_trades: timing creation");
    let clock = Instant::now();
    let numbers = format!("B{}-2c", env.tag);
    let due = Due::After(Duration::from_secs(3600));
    create_orders(env, &numbers, Trades::Two, n, paid_share, due, &bar).await?;
    bar.finish_and_clear();
    let seconds = clock.elapsed().as_secs_f64();
    eprintln!("  {n} two-trade orders created in {seconds:.1} s to plan the deadline");
    Ok(n as f64 / seconds.max(1e-3))
}

/// Time from the start of creation to the common deadline: creation must be over by
/// then, so it is planned from the measured creation rate (creating while the worker
/// forwards early hops is slower than the create measurement, hence the margin).
pub fn planned_lead(count: usize, create_rate_hint: Option<f64>) -> Duration {
    lead_at(count, create_rate_hint, RATE_SHARE)
}

/// The lead for creating `count` orders at `share` of `create_rate_hint`.
fn lead_at(count: usize, create_rate_hint: Option<f64>, share: f64) -> Duration {
    let create_rate = create_rate_hint
        .filter(|r| *r > 0.0)
        .unwrap_or(DEFAULT_CREATE_RATE);
    MIN_LEAD.max(Duration::from_secs_f64(
        count as f64 / (share * create_rate) + 2.0,
    ))
}

/// The worker processes of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Workers {
    /// Concurrency and prefetch, or None for the worker's defaults.
    pub tuning: Option<(u32, u16)>,
    /// How many worker processes.
    pub processes: u32,
}

impl Workers {
    /// One worker with this concurrency and prefetch.
    pub fn tuned(concurrency: u32, prefetch: u16) -> Self {
        Self {
            tuning: Some((concurrency, prefetch)),
            processes: 1,
        }
    }
}

/// Something whose death ends a wait (one worker, or several).
pub trait Watched {
    /// Fails when it has exited.
    fn ensure_alive(&mut self) -> anyhow::Result<()>;
}

impl Watched for WorkerProcess {
    fn ensure_alive(&mut self) -> anyhow::Result<()> {
        WorkerProcess::ensure_alive(self)
    }
}

impl Watched for WorkerGroup {
    fn ensure_alive(&mut self) -> anyhow::Result<()> {
        WorkerGroup::ensure_alive(self)
    }
}

/// Creates `count` orders with `trades`, all due `lead` after creation starts, lets
/// `workers` decide them, and measures.
pub async fn run_batch(
    env: &BenchEnv,
    label: &str,
    trades: Trades,
    count: usize,
    paid_share: f64,
    workers: Workers,
    lead: Duration,
) -> anyhow::Result<BatchResult> {
    let mut worker = WorkerGroup::start(env, label, workers.tuning, workers.processes).await?;
    let calls_before = env.sim_state.stats();
    let started = Utc::now();
    let deadline = started + chrono::Duration::from_std(lead)?;
    let clock = Instant::now();
    let bar = progress(count as u64, &format!("{label}: orders created"));
    // WeChat Pay takes trade numbers of at most 32 characters: the two-trade run's order
    // numbers are short (`B<tag>-2t-<i>`, its trades `B<tag>-2t-<i>-A` and `-W`).
    let numbers = match trades {
        Trades::One => format!("B{}-{label}", env.tag),
        Trades::Two => format!("B{}-2t", env.tag),
    };
    let created = create_orders(
        env,
        &numbers,
        trades,
        count,
        paid_share,
        Due::At(deadline),
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    let creation = clock.elapsed();
    let overran = Utc::now() > deadline;
    if overran {
        eprintln!(
            "warning: creating {count} orders took {:.1} s, past the common deadline ({:.1} s); \
             lateness includes creation",
            creation.as_secs_f64(),
            lead.as_secs_f64()
        );
    }
    // Until the deadline the worker only forwards early hops; sample its CPU there to
    // split forwarding from deciding.
    let until_deadline = (deadline - Utc::now()).to_std().unwrap_or_default();
    eprintln!(
        "  {count} orders created in {:.1} s; due in {:.1} s",
        creation.as_secs_f64(),
        until_deadline.as_secs_f64()
    );
    tokio::time::sleep(until_deadline).await;
    let at_deadline = worker.sample()?;
    let machine_at_deadline = machine_cpu_ticks();
    let ids: Vec<i64> = created.iter().map(|c| c.id).collect();
    let limit = lead + Duration::from_secs_f64((count as f64 / 20.0).max(120.0));
    let undecided = wait_decided(env, &mut worker, &ids, label, clock + limit).await?;
    let machine_decided = machine_cpu_ticks();
    wait_outbox(&env.pool, Duration::from_secs(60)).await;
    let sample = worker.sample()?;
    let status = worker.stop().await?;
    if !status.success() {
        eprintln!("warning: the {label} worker exited with {status}");
    }
    let calls = env.sim_state.stats();
    let mut result = analyse(env, label, &created, sample).await?;
    result.trades_per_order = trades.per_order();
    result.gateway_queries = calls.queries.saturating_sub(calls_before.queries);
    result.gateway_closes = calls.closes.saturating_sub(calls_before.closes);
    let calls = (result.gateway_queries + result.gateway_closes) as f64;
    if result.decided > 0 {
        result.gateway_calls_per_decision = calls / result.decided as f64;
    }
    let attempts = result.decided + result.retries + result.parked;
    if attempts > 0 {
        result.gateway_calls_per_attempt = calls / attempts as f64;
    }
    (result.concurrency, result.prefetch) = workers.tuning.unwrap_or_default();
    result.worker_processes = workers.processes;
    result.machine_cpu_busy = machine_at_deadline
        .zip(machine_decided)
        .filter(|((_, t0), (_, t1))| t1 > t0)
        .map(|((b0, t0), (b1, t1))| (b1 - b0) as f64 / (t1 - t0) as f64);
    result.deadline_lead_seconds = lead.as_secs_f64();
    result.creation_seconds = creation.as_secs_f64();
    result.creation_overran_deadline = overran;
    result.undecided = undecided;
    result.worker_cpu_seconds_before_deadline = at_deadline.cpu_seconds;
    if result.decided > 0 {
        result.worker_cpu_ms_per_decision_after_deadline =
            (sample.cpu_seconds - at_deadline.cpu_seconds) * 1000.0 / result.decided as f64;
    }
    Ok(result)
}

/// Creates orders concurrently with `Closer::create_order` (and, for two trades,
/// `Closer::add_trade` at each gateway of [`TWO_TRADES`]), each followed by its buyer's
/// action at the simulator. Order `i` is numbered `<numbers>-<i>`.
pub async fn create_orders(
    env: &BenchEnv,
    numbers: &str,
    trades: Trades,
    count: usize,
    paid_share: f64,
    due: Due,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<Created>> {
    let closer = env
        .app()
        .closer_on(env.pool.clone(), Some(env.publisher.clone()))
        // Deadlines of seconds: trades are taken until the deadline itself.
        .with_expiry_margin(Duration::ZERO);
    let sim = env.sim_state.clone();
    let prefix = numbers.to_owned();
    let channel = env.channel;
    fan_out(CREATE_TASKS, count, bar, move |i| {
        let closer = closer.clone();
        let sim = sim.clone();
        let no = format!("{prefix}-{i}");
        async move {
            let buyer = Buyer::pick(i, paid_share);
            let amount = 100 + (i as i64 % 9_900);
            let id = match trades {
                Trades::One => {
                    let created = closer
                        .create_order(NewOrder::new(channel, &no, amount, due))
                        .await
                        .with_context(|| format!("creating order {no}"))?;
                    buyer.act(&sim, channel, &no, amount)?;
                    created.order.id
                }
                Trades::Two => {
                    let created = closer
                        .create_order(NewOrder::without_trade(&no, amount, "CNY", due))
                        .await
                        .with_context(|| format!("creating order {no}"))?;
                    let opened =
                        TWO_TRADES.map(|(channel, suffix)| (channel, format!("{no}-{suffix}")));
                    for (channel, trade_no) in &opened {
                        closer
                            .add_trade(&no, NewTrade::new(*channel, trade_no))
                            .await
                            .map_err(|e| {
                                let late = matches!(e, TradeError::TooLate { .. });
                                anyhow::Error::new(e).context(if late {
                                    "creating the two-trade orders overran their deadline: \
                                     give a longer --lead"
                                        .to_owned()
                                } else {
                                    format!("adding trade {trade_no} at {channel} to order {no}")
                                })
                            })?;
                    }
                    // Half the paying buyers pay at each gateway.
                    buyer.act_on_two(&sim, &opened, i % 2, amount)?;
                    created.order.id
                }
            };
            Ok(Created { id, buyer })
        }
    })
    .await
}

/// Waits until none of `ids` is NEW (parked ones aside: they wait for an operator) or
/// `until` passes; returns how many are still NEW and not parked.
pub async fn wait_decided(
    env: &BenchEnv,
    worker: &mut impl Watched,
    ids: &[i64],
    label: &str,
    until: Instant,
) -> anyhow::Result<usize> {
    let bar = progress(ids.len() as u64, &format!("{label}: decided"));
    loop {
        worker.ensure_alive()?;
        let open = count_new(&env.pool, ids).await?;
        bar.set_position((ids.len() - open) as u64);
        if open == 0 {
            bar.finish_and_clear();
            return Ok(0);
        }
        if Instant::now() > until {
            bar.abandon();
            eprintln!("warning: {open} {label} orders still open; giving up waiting");
            return Ok(open);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count_new(pool: &DbPool, ids: &[i64]) -> anyhow::Result<usize> {
    let mut conn = db::conn(pool).await?;
    let parked = decisions::table
        .filter(decisions::order_id.eq(orders::id))
        .filter(decisions::outcome.eq(DecisionOutcome::Parked));
    let open: i64 = orders::table
        .filter(orders::id.eq_any(ids))
        .filter(orders::status.eq(OrderStatus::New.as_str()))
        .filter(diesel::dsl::not(diesel::dsl::exists(parked)))
        .count()
        .get_result(&mut conn)
        .await?;
    Ok(open as usize)
}

/// Waits (up to `limit`) for the relay to publish every event, so that the worker's CPU
/// time includes announcing its decisions.
pub async fn wait_outbox(pool: &DbPool, limit: Duration) {
    if !db::outbox::wait_drained(pool, limit).await {
        eprintln!("warning: the outbox did not drain within {limit:?}");
    }
}

/// One decided order: when it was due and when it was decided.
#[derive(Debug, Clone, Copy)]
pub struct Decided {
    /// The order's deadline.
    pub deadline: DateTime<Utc>,
    /// The decision's `decided_at`.
    pub at: DateTime<Utc>,
}

impl Decided {
    /// Lateness in milliseconds.
    pub fn lateness_ms(&self) -> f64 {
        (self.at - self.deadline)
            .num_microseconds()
            .map_or(f64::MAX, |us| us as f64 / 1000.0)
    }
}

/// What the database (and the simulator) says about a batch.
pub struct Outcomes {
    /// Decided orders (closed or paid decisions).
    pub decided: Vec<Decided>,
    /// Orders PAID / CLOSED.
    pub paid: usize,
    /// Orders closed.
    pub closed: usize,
    /// Retry decisions.
    pub retries: usize,
    /// Park decisions.
    pub parked: usize,
    /// Quick retries written in the decisions' audit rows.
    pub quick_retries: usize,
    /// Orders whose status disagrees with their buyer.
    pub mismatches: usize,
    /// Trades whose state, ours or the simulator's, disagrees with their buyer.
    pub trade_mismatches: usize,
}

/// Whether a trade ended as its buyer implies: paid on both sides (only for a paying
/// buyer), or closed here and not payable at the simulator (closed there, or never
/// scanned).
fn trade_agrees(buyer: Buyer, ours: TradeStatus, theirs: Option<SimTradeStatus>) -> bool {
    match (ours, theirs) {
        (TradeStatus::Paid, Some(SimTradeStatus::TradeSuccess)) => buyer == Buyer::Paid,
        (TradeStatus::Closed, None | Some(SimTradeStatus::TradeClosed)) => true,
        _ => false,
    }
}

/// Reads the batch's orders, trades and decisions, and its trades at the simulator.
pub async fn outcomes(env: &BenchEnv, created: &[Created]) -> anyhow::Result<Outcomes> {
    let ids: Vec<i64> = created.iter().map(|c| c.id).collect();
    let mut conn = db::conn(&env.pool).await?;
    let rows: Vec<(i64, String, DateTime<Utc>)> = orders::table
        .filter(orders::id.eq_any(&ids))
        .select((orders::id, orders::status, orders::deadline))
        .load(&mut conn)
        .await?;
    let history: Vec<(i64, DecisionOutcome, DateTime<Utc>)> = decisions::table
        .filter(decisions::order_id.eq_any(&ids))
        .select((
            decisions::order_id,
            decisions::outcome,
            decisions::decided_at,
        ))
        .load(&mut conn)
        .await?;
    let stored: Vec<(i64, String, TradeStatus)> = trades::table
        .filter(trades::order_id.eq_any(&ids))
        .select((trades::order_id, trades::out_trade_no, trades::status))
        .load(&mut conn)
        .await?;
    let by_id: HashMap<i64, (Option<OrderStatus>, DateTime<Utc>)> = rows
        .iter()
        .map(|(id, status, deadline)| (*id, (OrderStatus::parse(status), *deadline)))
        .collect();
    let buyers: HashMap<i64, Buyer> = created.iter().map(|c| (c.id, c.buyer)).collect();
    let mut out = Outcomes {
        decided: Vec::new(),
        paid: 0,
        closed: 0,
        retries: 0,
        parked: 0,
        quick_retries: quick_retries(&mut conn, &ids).await?,
        mismatches: 0,
        trade_mismatches: 0,
    };
    for c in created {
        match by_id.get(&c.id).map(|(s, _)| *s) {
            Some(Some(s)) if s == c.buyer.expected() => {}
            _ => out.mismatches += 1,
        }
    }
    for (order_id, no, status) in &stored {
        let theirs = env.sim_state.trade(no).map(|t| t.status);
        if !buyers
            .get(order_id)
            .is_some_and(|b| trade_agrees(*b, *status, theirs))
        {
            out.trade_mismatches += 1;
        }
    }
    for (status, _) in by_id.values() {
        match status {
            Some(OrderStatus::Paid) => out.paid += 1,
            Some(OrderStatus::Closed) => out.closed += 1,
            Some(OrderStatus::New) | None => {}
        }
    }
    for (id, outcome, at) in &history {
        match outcome {
            DecisionOutcome::Closed | DecisionOutcome::Paid => {
                if let Some((_, deadline)) = by_id.get(id) {
                    out.decided.push(Decided {
                        deadline: *deadline,
                        at: *at,
                    });
                }
            }
            DecisionOutcome::Retry => out.retries += 1,
            DecisionOutcome::Parked => out.parked += 1,
            _ => {}
        }
    }
    Ok(out)
}

/// Quick retries written in the audit rows of these orders' decisions.
async fn quick_retries(
    conn: &mut diesel_async::AsyncPgConnection,
    ids: &[i64],
) -> anyhow::Result<usize> {
    let answers: Vec<Option<String>> = decisions::table
        .filter(decisions::order_id.eq_any(ids))
        .filter(decisions::gateway_answer.like("%quick retry %"))
        .select(decisions::gateway_answer)
        .load(conn)
        .await?;
    Ok(answers
        .iter()
        .flatten()
        .map(|a| order_closer_engine::decide::quick_retry::count_in(a))
        .sum())
}

async fn analyse(
    env: &BenchEnv,
    label: &str,
    created: &[Created],
    sample: ProcSample,
) -> anyhow::Result<BatchResult> {
    let o = outcomes(env, created).await?;
    let mut lateness: Vec<f64> = o.decided.iter().map(Decided::lateness_ms).collect();
    stats::sort(&mut lateness);
    let first = o.decided.iter().map(|d| d.at).min();
    let last = o.decided.iter().map(|d| d.at).max();
    let span = match (first, last) {
        (Some(a), Some(b)) => (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
        _ => 0.0,
    };
    let mut series: Vec<u32> = Vec::new();
    if let Some(first) = first {
        for d in &o.decided {
            let second = ((d.at - first).num_milliseconds().max(0) / 1000) as usize;
            if series.len() <= second {
                series.resize(second + 1, 0);
            }
            series[second] += 1;
        }
    }
    let mut mix: BTreeMap<Buyer, usize> = BTreeMap::new();
    for c in created {
        *mix.entry(c.buyer).or_default() += 1;
    }
    let decided = o.decided.len();
    Ok(BatchResult {
        label: label.to_owned(),
        orders: created.len(),
        trades_per_order: 1,
        mix,
        concurrency: 0,
        prefetch: 0,
        worker_processes: 1,
        machine_cpu_busy: None,
        deadline_lead_seconds: 0.0,
        creation_seconds: 0.0,
        creation_overran_deadline: false,
        decided,
        undecided: 0,
        paid: o.paid,
        closed: o.closed,
        retries: o.retries,
        parked: o.parked,
        quick_retries: o.quick_retries,
        mismatches: o.mismatches,
        trade_mismatches: o.trade_mismatches,
        gateway_queries: 0,
        gateway_closes: 0,
        gateway_calls_per_decision: 0.0,
        gateway_calls_per_attempt: 0.0,
        decisions_per_second: stats::rate(decided.saturating_sub(1) as f64, span),
        decision_span_seconds: span,
        lateness_ms: Percentiles::of(&lateness),
        lateness_quantiles_ms: stats::quantiles(&lateness),
        decisions_per_second_series: series,
        worker_cpu_seconds: sample.cpu_seconds,
        worker_cpu_ms_per_decision: if decided > 0 {
            sample.cpu_seconds * 1000.0 / decided as f64
        } else {
            0.0
        },
        worker_cpu_seconds_before_deadline: 0.0,
        worker_cpu_ms_per_decision_after_deadline: 0.0,
        worker_peak_rss_mib: sample.peak_rss_mib,
    })
}

/// Signatures per decision on our side and in total (the simulator signs each answer),
/// for this mix of buyers.
pub fn signatures_per_decision(mix: &BTreeMap<Buyer, usize>) -> (f64, f64) {
    let orders: usize = mix.values().sum();
    if orders == 0 {
        return (0.0, 0.0);
    }
    let calls: u64 = mix
        .iter()
        .map(|(b, n)| u64::from(b.signed_calls()) * *n as u64)
        .sum();
    let ours = calls as f64 / orders as f64;
    (ours, 2.0 * ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buyer_mix_follows_the_paid_share() {
        let mut mix: BTreeMap<Buyer, usize> = BTreeMap::new();
        for i in 0..10_000 {
            *mix.entry(Buyer::pick(i, 0.3)).or_default() += 1;
        }
        let share = |b| mix.get(&b).copied().unwrap_or(0) as f64 / 10_000.0;
        assert!((share(Buyer::Paid) - 0.30).abs() < 0.01);
        assert!((share(Buyer::Scanned) - 0.35).abs() < 0.01);
        assert!((share(Buyer::NeverScanned) - 0.35).abs() < 0.01);
        let (ours, total) = signatures_per_decision(&mix);
        assert!((ours - 1.35).abs() < 0.01, "{ours}");
        assert!((total - 2.7).abs() < 0.02, "{total}");
    }

    #[test]
    fn trades_agree_with_their_buyer() {
        use SimTradeStatus::{TradeClosed, TradeSuccess, WaitBuyerPay};
        use TradeStatus::{Closed, Open, Paid};
        assert!(trade_agrees(Buyer::Paid, Paid, Some(TradeSuccess)));
        assert!(trade_agrees(Buyer::Paid, Closed, Some(TradeClosed)));
        assert!(trade_agrees(Buyer::Scanned, Closed, Some(TradeClosed)));
        assert!(trade_agrees(Buyer::NeverScanned, Closed, None));
        // Left payable at the gateway, or open here.
        assert!(!trade_agrees(Buyer::Paid, Closed, Some(WaitBuyerPay)));
        assert!(!trade_agrees(Buyer::Scanned, Open, Some(WaitBuyerPay)));
        assert!(!trade_agrees(Buyer::NeverScanned, Open, None));
        // Paid on one side only, or paid by a buyer who did not pay.
        assert!(!trade_agrees(Buyer::Paid, Closed, Some(TradeSuccess)));
        assert!(!trade_agrees(Buyer::Paid, Paid, Some(TradeClosed)));
        assert!(!trade_agrees(Buyer::Scanned, Paid, Some(TradeSuccess)));
    }
}
