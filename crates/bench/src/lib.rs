//! `order-closer bench`: measures the real pipeline on this machine.
//!
//! One command drives local PostgreSQL (`DATABASE_URL`), local RabbitMQ (`AMQP_URL`) and
//! the gateway simulator, started in this process with a configurable round-trip delay,
//! and runs the worker as a child process (`order-closer worker`). Everything lives in
//! a fresh schema (`bench_<tag>`) and under a fresh queue prefix (`bench-<tag>`), both
//! removed at the end, so a run never touches anything else.
//!
//! Measurements, one file each:
//! - `ceilings`: what the machine can do at all (RSA signs, broker publish/consume,
//!   one-decision transactions);
//! - `create`: `Closer::create_order` against a raw insert of the same rows;
//! - `pipeline`: N orders due at the same moment, decided by the worker;
//! - `pipeline_two_trades`: the same with two trades per order, one at Alipay and one at
//!   WeChat Pay, both gateways asked at the deadline;
//! - `classic`: the same with `--concurrency 1 --prefetch 1`;
//! - `sustained`: a steady arrival rate, lateness per 10 s window;
//! - `pending`: a million close schedules left in the outbox, scheduled by the worker's
//!   relay, with the worker's memory sampled throughout;
//! - `notifications`: payments at a steady rate announced to `order-closer notify`,
//!   payment to PAID;
//! - `scale_out`: the pipeline batch decided by 1, 2 and 3 worker processes at their
//!   default concurrency, with the machine's CPU use.
//!
//! Results go to a JSON file, a table on stdout (`report`) and a PNG chart (`chart`).

mod ceilings;
mod chart;
mod classic;
mod create;
mod notifications;
mod pending;
mod pipeline;
mod queue_types;
mod report;
mod scale_out;
mod stats;
mod sustained;
mod worker_proc;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use order_closer_core::broker::topology::QueueType;
use order_closer_core::config::BrokerSettings;
use order_closer_core::db::{self, DbPool};
use order_closer_sim::{FaultPlan, SimState};
use order_closer_testkit::sandbox::Sandbox;
use rand::Rng;
use serde::Serialize;
use tokio::task::JoinSet;

/// Measure throughput, lateness and cost per decision against this machine's ceilings.
///
/// Drives the real pipeline: local PostgreSQL and RabbitMQ, the gateway simulator in
/// process, the worker as a child process. Counts left unset take their default, or the
/// `--quick` value.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Orders in the pipeline run, all due at the same moment, and in its two-trade run
    /// [default: 20000; quick: 2000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=2_000_000))]
    orders: Option<u32>,
    /// Share of the orders paid at the simulator (the rest: half scanned and left
    /// waiting, half never scanned).
    #[arg(long, default_value_t = 0.3)]
    paid_share: f64,
    /// Orders in the classic (`--concurrency 1 --prefetch 1`) run [default: 200; quick: 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    classic_orders: Option<u32>,
    /// Worker `--concurrency` for the pipeline and sustained runs (with a 100 ms gateway,
    /// about 1,000 in flight are needed for several thousand decisions a second).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Worker `--prefetch` for the pipeline and sustained runs.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: u16,
    /// Round-trip delay the simulator adds to every gateway answer.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    gateway_latency: Duration,
    /// Share of gateway requests answered with a transient fault (0 to 1), drawn at
    /// random with a fixed seed: half an HTTP 502, half a busy answer (`20000`). For the
    /// lateness under faults and the gateway requests per decision; combine with
    /// `--worker-env ORDER_CLOSER_QUICK_RETRIES=0` to see the delay tiers alone.
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// How long each ceiling is measured [default: 2s; quick: 500ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    ceiling_time: Option<Duration>,
    /// Orders per side in the create measurement [default: 5000; quick: 1000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    create_orders: Option<u32>,
    /// Concurrent tasks in the create measurement.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    create_tasks: u32,
    /// Time from the start of creation to the pipeline runs' common deadline (one and two
    /// trades per order) [default: planned from the measured create rate].
    #[arg(long, value_parser = humantime::parse_duration)]
    lead: Option<Duration>,
    /// Length of the sustained run (0 skips it), for example `3m`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    sustained: Duration,
    /// Orders per second in the sustained run [default: half the pipeline's peak].
    #[arg(long)]
    rate: Option<f64>,
    /// Close schedules left pending for the worker's relay to schedule, with its memory
    /// watched; 0 skips the run [default: 1000000; quick: 20000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pending: Option<u32>,
    /// Payments in the notification run, announced to `order-closer notify`; 0 skips it
    /// [default: 20000; quick: 2000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    notify_payments: Option<u32>,
    /// Payments per second in the notification run.
    #[arg(long, default_value_t = 1000.0)]
    notify_rate: f64,
    /// The gateway the orders go through [default: the first gateway order-closer
    /// speaks].
    #[arg(long, value_parser = |t: &str| order_closer_app::gateways::parse_channel(t, false))]
    channel: Option<String>,
    /// Where the JSON results go (the chart goes next to it as `chart.png`).
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Where the PNG chart goes [default: `chart.png` next to `--out`].
    #[arg(long)]
    chart: Option<PathBuf>,
    /// A TrueType font for the chart's text, or `none` for a chart without text
    /// [default: the first of a few common system fonts, else none].
    #[arg(long)]
    chart_font: Option<String>,
    /// Small and fast: 2000 orders, 50 classic, 1000 created per side, ceilings 0.5 s,
    /// 20000 pending.
    #[arg(long)]
    quick: bool,
    /// Leave out measurements (repeatable): ceilings, create, classic, two-trades,
    /// scale-out.
    #[arg(long, value_enum)]
    skip: Vec<Skip>,
    /// Run the pipeline once more on each of these queue types (`classic,quorum`), each
    /// in a fresh environment with the broker's CPU measured, and compare them.
    #[arg(long, value_delimiter = ',', value_enum)]
    queue_types: Vec<QueueTypeArg>,
    /// Worker process counts of the scale-out run, each deciding the pipeline batch at
    /// the worker's default concurrency [default: 1,2,3; `--skip scale-out` leaves it out].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=16))]
    scale_out: Vec<u32>,
    /// Extra environment for the worker child process (repeatable), for experiments:
    /// `--worker-env ORDER_CLOSER_DB_POOL_SIZE=32`.
    #[arg(long, value_name = "KEY=VALUE")]
    worker_env: Vec<String>,
}

/// A queue type to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueTypeArg {
    /// Classic queues.
    Classic,
    /// Quorum queues.
    Quorum,
}

impl From<QueueTypeArg> for QueueType {
    fn from(arg: QueueTypeArg) -> Self {
        match arg {
            QueueTypeArg::Classic => Self::Classic,
            QueueTypeArg::Quorum => Self::Quorum,
        }
    }
}

/// A measurement that can be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// The machine ceilings.
    Ceilings,
    /// `create_order` against raw inserts.
    Create,
    /// The one-at-a-time consumer.
    Classic,
    /// The pipeline with two trades per order.
    TwoTrades,
    /// The scale-out run (1, 2, 3 worker processes).
    ScaleOut,
}

/// The parameters of a run, resolved from the flags (recorded in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Orders in the pipeline run (and in its two-trade run).
    pub orders: u32,
    /// Share paid at the simulator.
    pub paid_share: f64,
    /// Orders in the classic run.
    pub classic_orders: u32,
    /// Worker concurrency (pipeline, sustained).
    pub concurrency: u32,
    /// Worker prefetch (pipeline, sustained).
    pub prefetch: u16,
    /// Simulator round-trip delay, milliseconds.
    pub gateway_latency_ms: u64,
    /// Share of gateway requests answered with a transient fault.
    pub fault_rate: f64,
    /// Seconds per ceiling.
    pub ceiling_seconds: f64,
    /// Orders per side in the create measurement.
    pub create_orders: u32,
    /// Tasks in the create measurement.
    pub create_tasks: u32,
    /// Pipeline deadline lead asked for, seconds (None: planned).
    pub lead_seconds: Option<f64>,
    /// Sustained run length in seconds (0: skipped).
    pub sustained_seconds: f64,
    /// Sustained arrival rate asked for (None: half the pipeline's peak).
    pub rate: Option<f64>,
    /// Close schedules in the pending run (0: skipped).
    pub pending: u32,
    /// Payments in the notification run (0: skipped).
    pub notify_payments: u32,
    /// Their rate per second.
    pub notify_rate: f64,
    /// The gateway the orders go through.
    pub channel: &'static str,
    /// Quick mode.
    pub quick: bool,
    /// Measurements left out.
    pub skip: Vec<Skip>,
    /// JSON output path.
    pub out: PathBuf,
    /// Chart output path.
    pub chart: PathBuf,
    /// Chart font choice as given.
    #[serde(skip)]
    pub chart_font: Option<String>,
    /// Extra worker environment.
    pub worker_env: Vec<(String, String)>,
    /// Queue types the pipeline is compared on.
    pub queue_types: Vec<QueueTypeArg>,
    /// Worker process counts of the scale-out run (empty: skipped).
    pub scale_out: Vec<u32>,
}

impl Plan {
    fn resolve(args: BenchArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&args.paid_share),
            "--paid-share must be between 0 and 1, got {}",
            args.paid_share
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&args.fault_rate),
            "--fault-rate must be between 0 and 1, got {}",
            args.fault_rate
        );
        anyhow::ensure!(
            args.notify_rate.is_finite() && args.notify_rate > 0.0,
            "--notify-rate must be positive, got {}",
            args.notify_rate
        );
        if let Some(rate) = args.rate {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--rate must be positive, got {rate}"
            );
        }
        let pick = |value: Option<u32>, full: u32, quick: u32| {
            value.unwrap_or(if args.quick { quick } else { full })
        };
        let ceiling = args.ceiling_time.unwrap_or(if args.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        });
        anyhow::ensure!(!ceiling.is_zero(), "--ceiling-time must be positive");
        let mut worker_env = Vec::new();
        for pair in &args.worker_env {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--worker-env {pair:?}: expected KEY=VALUE"))?;
            worker_env.push((k.to_owned(), v.to_owned()));
        }
        let scale_out = if args.skip.contains(&Skip::ScaleOut) {
            Vec::new()
        } else if args.scale_out.is_empty() {
            vec![1, 2, 3]
        } else {
            args.scale_out.clone()
        };
        let chart = args
            .chart
            .clone()
            .unwrap_or_else(|| args.out.with_file_name("chart.png"));
        Ok(Self {
            orders: pick(args.orders, 20_000, 2_000),
            paid_share: args.paid_share,
            classic_orders: pick(args.classic_orders, 200, 50),
            concurrency: args.concurrency,
            prefetch: args.prefetch,
            gateway_latency_ms: args.gateway_latency.as_millis() as u64,
            fault_rate: args.fault_rate,
            ceiling_seconds: ceiling.as_secs_f64(),
            create_orders: pick(args.create_orders, 5_000, 1_000),
            create_tasks: args.create_tasks,
            lead_seconds: args.lead.map(|d| d.as_secs_f64()),
            sustained_seconds: args.sustained.as_secs_f64(),
            rate: args.rate,
            pending: pick(args.pending, 1_000_000, 20_000),
            notify_payments: pick(args.notify_payments, 20_000, 2_000),
            notify_rate: args.notify_rate,
            channel: order_closer_app::gateways::channels()
                .find(|c| args.channel.as_deref().is_none_or(|one| one == *c))
                .context("no gateway is compiled in")?,
            quick: args.quick,
            skip: args.skip,
            out: args.out,
            chart,
            chart_font: args.chart_font,
            worker_env,
            queue_types: args.queue_types.clone(),
            scale_out,
        })
    }

    fn skips(&self, what: Skip) -> bool {
        self.skip.contains(&what)
    }

    fn lead(&self) -> Option<Duration> {
        self.lead_seconds.map(Duration::from_secs_f64)
    }

    fn ceiling_time(&self) -> Duration {
        Duration::from_secs_f64(self.ceiling_seconds)
    }
}

/// Runs the benchmark against the broker `broker` configures (its queue type; its
/// address, to find the broker's process); the exit code is success when every
/// measurement completed (targets missed are reported, not failed).
pub async fn run(broker: &BrokerSettings, args: BenchArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::resolve(args)?;
    let tag = format!("{:08x}", rand::rng().random::<u32>());
    eprintln!("order-closer bench, run {tag}: preparing schema bench_{tag}, queues bench-{tag}.*");
    let env = BenchEnv::open(&tag, broker.topology.queue_type(), &plan)
        .await
        .context("preparing the benchmark environment")?;
    let started_at = chrono::Utc::now();
    let measured = tokio::select! {
        result = measure(broker, &env, &plan) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    env.close().await;
    let results = measured?;
    let report = report::Report::new(&plan, &tag, started_at, results);
    write_outputs(&plan, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// Every measurement's results.
pub struct Results {
    /// Machine ceilings.
    pub ceilings: Option<ceilings::Ceilings>,
    /// Create measurement.
    pub create: Option<create::CreateResult>,
    /// The pipeline run.
    pub pipeline: pipeline::BatchResult,
    /// The pipeline run with two trades per order.
    pub pipeline_two_trades: Option<pipeline::BatchResult>,
    /// The classic run.
    pub classic: Option<pipeline::BatchResult>,
    /// The sustained run.
    pub sustained: Option<sustained::SustainedResult>,
    /// The pending-closes run.
    pub pending: Option<pending::PendingResult>,
    /// The notification run.
    pub notifications: Option<notifications::NotifyResult>,
    /// The pipeline once per compared queue type.
    pub queue_types: Vec<queue_types::QueueTypeRun>,
    /// The scale-out run.
    pub scale_out: Vec<scale_out::ScaleOutRun>,
}

async fn measure(broker: &BrokerSettings, env: &BenchEnv, plan: &Plan) -> anyhow::Result<Results> {
    let ceilings = if plan.skips(Skip::Ceilings) {
        None
    } else {
        eprintln!("measuring ceilings ({:.1} s each)", plan.ceiling_seconds);
        Some(ceilings::run(env, plan.ceiling_time()).await?)
    };
    let create = if plan.skips(Skip::Create) {
        None
    } else {
        eprintln!(
            "measuring create_order against raw inserts ({} orders each, {} tasks)",
            plan.create_orders, plan.create_tasks
        );
        Some(create::run(env, plan.create_orders as usize, plan.create_tasks as usize).await?)
    };
    let create_hint = create.as_ref().map(|c| c.create_order_per_second);
    eprintln!(
        "pipeline run: {} orders, concurrency {}, prefetch {}",
        plan.orders, plan.concurrency, plan.prefetch
    );
    let pipeline = pipeline::run(env, plan, create_hint).await?;
    let pipeline_two_trades = if plan.skips(Skip::TwoTrades) {
        None
    } else {
        eprintln!(
            "pipeline run, two trades per order (alipay and wechat): {} orders, concurrency {}, prefetch {}",
            plan.orders, plan.concurrency, plan.prefetch
        );
        Some(pipeline::run_two_trades(env, plan).await?)
    };
    let classic = if plan.skips(Skip::Classic) {
        None
    } else {
        eprintln!(
            "classic run: {} orders, concurrency 1, prefetch 1",
            plan.classic_orders
        );
        Some(classic::run(env, plan, create_hint).await?)
    };
    let sustained = if plan.sustained_seconds > 0.0 {
        let rate = plan
            .rate
            .unwrap_or((pipeline.decisions_per_second / 2.0).max(1.0));
        eprintln!(
            "sustained run: {rate:.0} orders/s for {:.0} s",
            plan.sustained_seconds
        );
        Some(
            sustained::run(
                env,
                plan,
                rate,
                Duration::from_secs_f64(plan.sustained_seconds),
            )
            .await?,
        )
    } else {
        None
    };
    let pending = if plan.pending > 0 {
        eprintln!(
            "pending run: {} close schedules for the worker's relay",
            plan.pending
        );
        Some(pending::run(env, plan, plan.pending as usize).await?)
    } else {
        None
    };
    let notifications = if plan.notify_payments > 0 {
        eprintln!(
            "notification run: {} payments at {:.0}/s to order-closer notify",
            plan.notify_payments, plan.notify_rate
        );
        Some(notifications::run(env, plan.notify_payments, plan.notify_rate).await?)
    } else {
        None
    };
    let scale_out = scale_out::run(env, plan, create_hint).await?;
    let mut compared = Vec::new();
    for queue_type in &plan.queue_types {
        let queue_type = QueueType::from(*queue_type);
        eprintln!(
            "queue type comparison: pipeline on {} queues",
            queue_types::name(queue_type)
        );
        compared.push(queue_types::run(broker, plan, queue_type, create_hint).await?);
    }
    Ok(Results {
        ceilings,
        create,
        pipeline,
        pipeline_two_trades,
        classic,
        sustained,
        pending,
        notifications,
        queue_types: compared,
        scale_out,
    })
}

fn write_outputs(plan: &Plan, report: &report::Report) -> anyhow::Result<()> {
    for path in [&plan.out, &plan.chart] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
    }
    let json = serde_json::to_string_pretty(report).context("encoding the results")?;
    std::fs::write(&plan.out, json + "\n")
        .with_context(|| format!("writing {}", plan.out.display()))?;
    println!("{}", report.table());
    match chart::draw(&plan.chart, plan.chart_font.as_deref(), report) {
        Ok(with_text) => println!(
            "results: {}  chart: {}{}",
            plan.out.display(),
            plan.chart.display(),
            if with_text {
                ""
            } else {
                " (no font: without text)"
            }
        ),
        Err(e) => {
            println!("results: {}", plan.out.display());
            eprintln!("warning: could not draw the chart: {e:#}");
        }
    }
    Ok(())
}

/// The isolated environment of one run: a [`Sandbox`] (schema, queues, simulator, keys,
/// teardown), the bench's own larger pool, a work directory and the worker's variables.
pub struct BenchEnv {
    sandbox: Sandbox,
    /// A pool for the bench's own work (larger than a worker's).
    pub pool: DbPool,
    /// The simulator's trades (buyers act on it directly).
    pub sim_state: SimState,
    /// A temporary directory for worker logs.
    pub work_dir: PathBuf,
    /// Environment for worker child processes: every variable of the sandbox.
    pub worker_env: Vec<(String, String)>,
    /// The gateway the orders go through.
    pub channel: &'static str,
}

impl std::ops::Deref for BenchEnv {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl BenchEnv {
    /// The simulator's payment notifier.
    pub fn notifier(&self) -> &std::sync::Arc<order_closer_sim::SimNotifier> {
        self.sandbox.sim().notifier()
    }
}

/// How many connections the bench's own pool holds.
const BENCH_POOL: usize = 64;

/// The seed of `--fault-rate`'s draws: runs meet faults alike (as far as their requests
/// come in the same order).
const FAULT_SEED: u64 = 22;

impl BenchEnv {
    /// A sandbox named `bench_{tag}`, on `queue_type` queues, with the plan's gateway
    /// latency and worker variables.
    async fn open(tag: &str, queue_type: QueueType, plan: &Plan) -> anyhow::Result<Self> {
        let queue_type = match queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        };
        let mut overrides: Vec<(&str, &str)> = vec![
            ("ORDER_CLOSER_QUEUE_TYPE", queue_type),
            ("ORDER_CLOSER_OUTBOX_INTERVAL", "100ms"),
            ("ORDER_CLOSER_RETRY_STEPS", "1s,1s,1s"),
            ("ORDER_CLOSER_HTTP_LISTEN", "off"),
        ];
        // No gateway's rate limit is what is measured.
        overrides.extend(
            order_closer_app::gateways::ALL
                .iter()
                .map(|plugin| (plugin.common.rate_limit, "100000")),
        );
        overrides.extend(
            plan.worker_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let mut sandbox =
            Sandbox::start_tagged("bench", tag, std::env::vars().collect(), &overrides).await?;
        let rest = async {
            let pool = db::pool(&sandbox.database_url, BENCH_POOL)?;
            let sim_state = sandbox.sim().state();
            sim_state
                .set_faults(FaultPlan {
                    latency_ms: plan.gateway_latency_ms,
                    http_502: plan.fault_rate / 2.0,
                    busy_20000: plan.fault_rate / 2.0,
                    seed: (plan.fault_rate > 0.0).then_some(FAULT_SEED),
                    ..FaultPlan::default()
                })
                .map_err(|e| anyhow::anyhow!("--gateway-latency, --fault-rate: {e}"))?;
            let work_dir = std::env::temp_dir().join(format!("order-closer-bench-{tag}"));
            std::fs::create_dir_all(&work_dir)
                .with_context(|| format!("creating {}", work_dir.display()))?;
            Ok::<_, anyhow::Error>((pool, sim_state, work_dir))
        }
        .await;
        match rest {
            Ok((pool, sim_state, work_dir)) => {
                let worker_env = sandbox
                    .vars
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Ok(Self {
                    sandbox,
                    pool,
                    sim_state,
                    work_dir,
                    worker_env,
                    channel: plan.channel,
                })
            }
            Err(e) => {
                sandbox.cleanup().await;
                Err(e)
            }
        }
    }

    /// Removes the queues, the schema and the temporary directory; stops the simulator.
    async fn close(mut self) {
        // Normally deleted by the ceiling measurement already; first, because a broker
        // that refuses the delete closes the channel.
        let _ = ceilings::delete_ceiling_queue(&self).await;
        self.pool.close();
        self.sandbox.cleanup().await;
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Runs `job(0..count)` on `tasks` spawned tasks, each taking the next index until none
/// is left; returns every result (in no particular order). The first error stops the
/// others and is returned.
pub async fn fan_out<T, F, Fut>(
    tasks: usize,
    count: usize,
    bar: &ProgressBar,
    job: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..tasks.clamp(1, count.max(1)) {
        let job = job.clone();
        let next = next.clone();
        let bar = bar.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(out);
                }
                match job(i).await {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        next.store(count, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                bar.inc(1);
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(part)) => all.extend(part),
            Ok(Err(e)) => {
                set.abort_all();
                return Err(e);
            }
            Err(e) => {
                set.abort_all();
                return Err(anyhow::anyhow!("a bench task failed: {e}"));
            }
        }
    }
    Ok(all)
}

/// The last `bytes` of a file, for error messages about a worker that died.
pub fn tail(path: &Path, bytes: usize) -> String {
    match std::fs::read(path) {
        Ok(data) => {
            let start = data.len().saturating_sub(bytes);
            String::from_utf8_lossy(&data[start..]).into_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
