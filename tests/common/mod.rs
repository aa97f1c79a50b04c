//! Test harness: each test gets its own Postgres schema, its own queue prefix, its own
//! gateway simulator and keys, and cleans them up. Tests therefore run in parallel.
#![allow(dead_code)]

pub mod certs;
pub mod gateway;
pub mod pg_node;
pub mod rabbit_node;
pub mod tcp_proxy;

use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use order_closer::broker::publisher::Publisher;
use order_closer::broker::{self, topology::Topology};
use order_closer::closer::{Closer, Due, NewOrder};
use order_closer::config::Settings;
use order_closer::db::schema::decisions;
use order_closer::db::{self, DbPool, orders};
use order_closer::decide::{Decider, Gateways};
use order_closer::notify::Notifier;
use order_closer::order::{Order, OrderStatus};
use order_closer::sim::{self, BuyerClient, RunningSim};
use order_closer::worker::{Worker, WorkerConfig};
use rand::Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The server-level URL the test databases live under.
pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/order_closer_test".into())
}

/// The broker.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn random_tag() -> String {
    format!("{:08x}", rand::rng().random::<u32>())
}

/// What a test can watch of a running worker.
pub struct Observed {
    pub metrics: Arc<order_closer::metrics::Metrics>,
    pub readiness: Arc<order_closer::health::Readiness>,
}

/// One isolated environment.
pub struct TestEnv {
    pub tag: String,
    pub schema: String,
    pub database_url: String,
    pub settings: Settings,
    pub pool: DbPool,
    pub connection: Connection,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    pub sim: Option<RunningSim>,
    pub sim_url: String,
    pub buyers: BuyerClient,
    /// Every variable this environment is configured by (the simulator's gateway
    /// variables included): what a child process gets.
    pub vars: HashMap<String, String>,
    pub closer: Closer,
    /// Stops the notify endpoint, when one runs.
    notify_stop: CancellationToken,
    workers: Vec<(CancellationToken, JoinHandle<()>)>,
    /// Set by `cleanup`; otherwise `Drop` cleans up.
    cleaned: bool,
}

impl TestEnv {
    /// A fresh environment with default settings plus `overrides`.
    pub async fn new(overrides: &[(&str, &str)]) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,order_closer=info".into()),
            )
            .with_test_writer()
            .try_init();
        let tag = random_tag();
        let schema = format!("t_{tag}");
        let base = base_database_url();
        db::ensure_database(&base).await.expect("test database");
        let mut admin = db::connect(&base)
            .await
            .expect("connect to the test database");
        diesel::sql_query(format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .await
            .expect("create schema");
        let database_url = db::with_search_path(&base, &schema);

        let mut vars: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".into(), database_url.clone()),
            ("AMQP_URL".into(), amqp_url()),
            ("ORDER_CLOSER_QUEUE_PREFIX".into(), format!("t-{tag}")),
            ("ORDER_CLOSER_OUTBOX_INTERVAL".into(), "100ms".into()),
            ("ORDER_CLOSER_OUTBOX_GRACE".into(), "1s".into()),
            ("ORDER_CLOSER_RETRY_STEPS".into(), "1s,1s,1s".into()),
            ("ORDER_CLOSER_SHUTDOWN_GRACE".into(), "10s".into()),
            ("ORDER_CLOSER_DB_POOL_SIZE".into(), "8".into()),
        ]);
        if let Ok(kind) = std::env::var("TEST_QUEUE_TYPE") {
            vars.insert("ORDER_CLOSER_QUEUE_TYPE".into(), kind);
        }
        let running = sim::start_local().await.expect("simulator");
        vars.extend(running.client_vars());
        for (k, v) in overrides {
            vars.insert((*k).into(), (*v).into());
        }
        let sim_url = running.base_url();
        let settings = settings_of(&vars, &[]);
        db::migrate(&database_url).await.expect("migrate");
        let pool = db::pool(&database_url, settings.db_pool_size).expect("pool");

        let topology = Arc::new(settings.topology.clone());
        let (connection, publisher) = declared(settings.amqp_url.expose_secret(), &topology).await;
        let buyers = BuyerClient::new(sim_url.clone()).expect("buyer client");
        let closer = Closer::new(pool.clone(), Some(publisher.clone()));
        Self {
            tag,
            schema,
            database_url,
            settings,
            pool,
            connection,
            publisher,
            topology,
            sim: Some(running),
            sim_url,
            buyers,
            vars,
            closer,
            notify_stop: CancellationToken::new(),
            workers: Vec::new(),
            cleaned: false,
        }
    }

    /// A decider like the worker's, trusting the simulator.
    pub fn decider(&self, actor: &str) -> Decider {
        self.decider_with(&[], actor)
    }

    /// The settings with some variables changed.
    pub fn settings_with(&self, overrides: &[(&str, &str)]) -> Settings {
        settings_of(&self.vars, overrides)
    }

    /// The gateways the environment's settings (with `overrides`) configure.
    pub fn gateways_with(&self, overrides: &[(&str, &str)]) -> Gateways {
        Gateways::from_settings(&self.settings_with(overrides)).expect("gateways")
    }

    /// The gateways, trusting the simulator.
    pub fn gateways(&self) -> Gateways {
        self.gateways_with(&[])
    }

    /// The gateway of one channel.
    pub fn gateway(&self, channel: &str) -> Arc<dyn order_closer::gateway::Gateway> {
        Arc::clone(
            self.gateways()
                .get(channel)
                .expect("a gateway for the channel"),
        )
    }

    /// The Alipay client itself, trusting the simulator (for the tests of Alipay's own
    /// calls, such as the bill download).
    pub fn alipay_client(&self) -> order_closer::gateway::alipay::AlipayClient {
        let vars = order_closer::config::Vars::from_map(self.vars.clone());
        let settings = order_closer::gateway::alipay::AlipaySettings::from_vars(&vars)
            .expect("alipay settings")
            .expect("alipay is configured");
        order_closer::gateway::alipay::AlipayClient::new(settings.client).expect("alipay client")
    }

    /// A decider whose gateways are configured with `overrides` (a wrong key, another app).
    pub fn decider_with(&self, overrides: &[(&str, &str)], actor: &str) -> Decider {
        Decider::configured(
            self.pool.clone(),
            self.gateways_with(overrides),
            &self.settings,
            actor,
        )
    }

    /// Starts an in-process worker.
    pub fn start_worker(&mut self, concurrency: usize, prefetch: u16) -> Observed {
        let mut config = WorkerConfig::from_settings(&self.settings);
        config.concurrency = concurrency;
        config.prefetch = prefetch;
        let n = self.workers.len();
        self.run_worker(self.decider(&format!("test-worker-{n}")), config)
    }

    /// Starts `decider` as a worker; returns its metrics and readiness handles.
    pub fn run_worker(&mut self, decider: Decider, config: WorkerConfig) -> Observed {
        let token = CancellationToken::new();
        let token_for_run = token.clone();
        let worker = Worker::new(decider, config);
        let view = Observed {
            metrics: worker.metrics(),
            readiness: worker.readiness(),
        };
        let handle = tokio::spawn(async move {
            worker.run(token_for_run).await.expect("the worker stopped");
        });
        self.workers.push((token, handle));
        view
    }

    /// Stops every in-process worker gracefully.
    pub async fn stop_workers(&mut self) {
        for (token, handle) in self.workers.drain(..) {
            token.cancel();
            let _ = handle.await;
        }
    }

    /// Creates an Alipay order due after `after`.
    pub async fn create(&self, no: &str, amount_minor: i64, after: Duration) -> Order {
        self.closer
            .create_order(NewOrder::new("alipay", no, amount_minor, Due::After(after)))
            .await
            .expect("create order")
            .order
    }

    /// A unique order number for this test.
    pub fn no(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }

    /// Reads an order.
    pub async fn order(&self, no: &str) -> Order {
        let mut conn = db::conn(&self.pool).await.unwrap();
        orders::find_by_out_trade_no(&mut conn, no)
            .await
            .unwrap()
            .expect("order exists")
    }

    /// Waits until the order leaves NEW (or panics after `limit`).
    pub async fn settled(&self, no: &str, limit: Duration) -> Order {
        let pool = self.pool.clone();
        let no = no.to_owned();
        eventually(limit, || {
            let pool = pool.clone();
            let no = no.clone();
            async move {
                let mut conn = db::conn(&pool).await.ok()?;
                let order = orders::find_by_out_trade_no(&mut conn, &no).await.ok()??;
                (order.status() != OrderStatus::New).then_some(order)
            }
        })
        .await
        .unwrap_or_else(|| panic!("order {no} was not decided within {limit:?}"))
    }

    /// Decisions recorded for an order: (outcome, detail).
    pub async fn decisions(&self, order_id: i64) -> Vec<(String, String)> {
        let mut conn = db::conn(&self.pool).await.unwrap();
        decisions::table
            .filter(decisions::order_id.eq(order_id))
            .order(decisions::id.asc())
            .select((decisions::outcome, decisions::detail))
            .load(&mut conn)
            .await
            .unwrap()
    }

    /// Rows left in the outbox.
    pub async fn outbox_backlog(&self) -> i64 {
        let mut conn = db::conn(&self.pool).await.unwrap();
        db::outbox::backlog(&mut conn).await.unwrap()
    }

    /// Waits for the outbox to drain, then takes every event from the audit queue.
    pub async fn drain_events(&self) -> Vec<serde_json::Value> {
        let drained = eventually(Duration::from_secs(15), || async {
            (self.outbox_backlog().await == 0).then_some(())
        })
        .await;
        assert!(drained.is_some(), "outbox did not drain");
        self.get_all(&self.topology.events_audit_queue())
            .await
            .into_iter()
            .map(|(body, _)| serde_json::from_slice(&body).expect("event JSON"))
            .collect()
    }

    /// Takes every message from a queue (acking them): (body, headers).
    pub async fn get_all(&self, queue: &str) -> Vec<(Vec<u8>, FieldTable)> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(msg) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let headers = msg
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            out.push((msg.delivery.data.clone(), headers));
        }
        out
    }

    /// Waits up to `limit` for at least `count` parked messages, then takes every parked
    /// message (body, headers); None if they did not arrive.
    pub async fn wait_parked(
        &self,
        count: u32,
        limit: Duration,
    ) -> Option<Vec<(Vec<u8>, FieldTable)>> {
        let queue = self.topology.parked_queue();
        eventually(limit, || async {
            (self.queue_len(&queue).await >= count).then_some(())
        })
        .await?;
        Some(self.get_all(&queue).await)
    }

    /// Messages waiting in a queue.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        ready_count(&channel, queue).await.expect("queue exists")
    }

    /// Publishes raw bytes straight to the close queue (as a foreign publisher would).
    pub async fn publish_raw(&self, body: &[u8]) {
        let channel = self.connection.create_channel().await.unwrap();
        channel
            .basic_publish(
                self.topology.close_exchange().into(),
                "due".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Environment variables for running the binary against this environment.
    pub fn binary_env(&self, _dir: &std::path::Path) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.push(("RUST_LOG".into(), "info".into()));
        vars
    }

    /// Replaces the broker connection (after a broker restart killed it).
    pub async fn reconnect(&mut self) {
        self.connection = broker::connect(self.settings.amqp_url.expose_secret(), "test")
            .await
            .expect("broker");
        self.publisher = Publisher::open(&self.connection, self.topology.clone())
            .await
            .expect("publisher");
        self.closer = Closer::new(self.pool.clone(), Some(self.publisher.clone()));
    }

    /// Removes the schema, the queues and the simulator.
    pub async fn cleanup(mut self) {
        self.notify_stop.cancel();
        self.stop_workers().await;
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
        let _ = self.topology.delete(self.publisher.channel()).await;
        let _ = self.connection.close(200, "test done".into()).await;
        drop_schema(&self.schema).await;
        self.cleaned = true;
    }
}

async fn drop_schema(schema: &str) {
    if let Ok(mut admin) = db::connect(&base_database_url()).await {
        let _ = diesel::sql_query(format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut admin)
            .await;
    }
}

/// A test that failed (panicked) before `cleanup` still removes its schema and queues:
/// on a thread of its own with a runtime of its own, since the test's runtime may be
/// unwinding.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.notify_stop.cancel();
        for (token, _) in &self.workers {
            token.cancel();
        }
        let schema = self.schema.clone();
        let topology = self.topology.clone();
        let amqp_url = self.settings.amqp_url.expose_secret().to_owned();
        let cleaner = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(connection) = broker::connect(&amqp_url, "test cleanup").await
                    && let Ok(channel) = connection.create_channel().await
                {
                    let _ = topology.delete(&channel).await;
                    let _ = connection.close(200, "test cleanup".into()).await;
                }
                drop_schema(&schema).await;
            });
        });
        let _ = cleaner.join();
    }
}

/// A connection to `amqp_url`, a publisher on it, and `topology` declared.
pub async fn declared(amqp_url: &str, topology: &Arc<Topology>) -> (Connection, Publisher) {
    let connection = broker::connect(amqp_url, "test").await.expect("broker");
    let publisher = Publisher::open(&connection, topology.clone())
        .await
        .expect("publisher");
    topology
        .declare(publisher.channel())
        .await
        .expect("declare");
    (connection, publisher)
}

/// Messages ready in a queue (a passive declare), or None if the broker cannot say (the
/// queue is missing, the channel is gone).
pub async fn ready_count(channel: &lapin::Channel, queue: &str) -> Option<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .ok()
        .map(|q| q.message_count())
}

/// Runs the `order-closer` binary with `vars` and `args` and collects its output.
pub async fn run_binary(vars: &[(String, String)], args: &[&str]) -> std::process::Output {
    // The test process's own connection settings (scripts/test.sh exports them) must not
    // leak into the binary: `vars` says everything it gets.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_order-closer"));
    for inherited in [
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "AMQP_URL",
        "AMQP_URL_FILE",
    ] {
        command.env_remove(inherited);
    }
    command
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("ORDER_CLOSER_CONCURRENCY")
        .output()
        .await
        .expect("run the binary")
}

/// Settings from `vars` with `overrides` set over them.
fn settings_of(vars: &HashMap<String, String>, overrides: &[(&str, &str)]) -> Settings {
    let mut all = vars.clone();
    for (k, v) in overrides {
        all.insert((*k).to_owned(), (*v).to_owned());
    }
    Settings::from_lookup(move |k| all.get(k).cloned()).expect("settings")
}

/// Polls `check` every 100 ms until it returns Some or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A notify endpoint running in the test process.
pub struct NotifyEndpoint {
    pub notifier: Arc<Notifier>,
    /// `http://127.0.0.1:<port>/notify`: what the simulator's notifications are sent to.
    pub base: String,
    /// `http://127.0.0.1:<port>/notify/alipay`.
    pub url: String,
}

impl TestEnv {
    /// A notifier like `order-closer notify`'s, over `pool`, trusting the simulator.
    pub fn notifier_over(&self, pool: DbPool) -> Notifier {
        Notifier::new(Decider::configured(
            pool,
            self.gateways(),
            &self.settings,
            "notify:test",
        ))
    }

    /// Serves `notifier` on a free port and points the simulator's notifications at it,
    /// resending on Alipay's schedule times `time_factor`.
    pub async fn serve_notify(&self, notifier: Notifier, time_factor: f64) -> NotifyEndpoint {
        let notifier = Arc::new(notifier);
        let bound = order_closer::notify::http::serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&notifier),
            self.notify_stop.clone(),
        )
        .await
        .expect("notify endpoint");
        let url = format!("http://{bound}/notify/alipay");
        if let Some(sim) = &self.sim {
            sim.notifier()
                .set_plan(sim::NotifyPlan::to(
                    format!("http://{bound}/notify"),
                    time_factor,
                ))
                .expect("notify plan");
        }
        NotifyEndpoint {
            notifier,
            url,
            base: format!("http://{bound}/notify"),
        }
    }

    /// The simulator sends no notifications (a test sends its own).
    pub fn quiet_notifications(&self) {
        if let Some(sim) = &self.sim {
            sim.notifier()
                .set_plan(sim::NotifyPlan::default())
                .expect("notify plan");
        }
    }

    /// Every decision about an order, oldest first.
    pub async fn trail(&self, order_id: i64) -> Vec<db::decisions::Decision> {
        let mut conn = db::conn(&self.pool).await.unwrap();
        db::decisions::for_order(&mut conn, order_id).await.unwrap()
    }

    /// The notify endpoint over the test's own pool, the simulator notifying it.
    pub async fn start_notify(&self) -> NotifyEndpoint {
        self.serve_notify(self.notifier_over(self.pool.clone()), 0.001)
            .await
    }

    /// The form the simulator would send about the trade now, signed with its key.
    pub fn notification(&self, trade: &sim::SimTradeView) -> String {
        self.forged_notification(trade, sim::Forge::genuine())
    }

    /// The notification the trade's gateway would send, made as `forge` says (its body).
    pub fn forged_notification(&self, trade: &sim::SimTradeView, forge: sim::Forge) -> String {
        self.sim
            .as_ref()
            .expect("the simulator runs")
            .notification(trade, "test-notify", forge)
            .expect("a paid or closed trade")
            .body
    }

    /// Starts an in-process worker whose gateways are configured with `overrides`.
    pub fn start_worker_with(&mut self, overrides: &[(&str, &str)]) -> Observed {
        let config = WorkerConfig::from_settings(&self.settings);
        self.run_worker(self.decider_with(overrides, "test-worker-custom"), config)
    }
}

impl TestEnv {
    /// Starts an in-process worker whose gateway calls go through a [`gateway::HeldGateway`]
    /// the test can stop at any one call.
    pub fn start_held_worker(&mut self) -> (Observed, Arc<gateway::HeldGateway>) {
        let gateways = self.gateways();
        let channel = "alipay";
        let held = gateway::HeldGateway::new(Arc::clone(
            gateways.get(channel).expect("the alipay gateway"),
        ));
        let decider = Decider::configured(
            self.pool.clone(),
            gateways.with(channel, held.clone()),
            &self.settings,
            "test-worker-held",
        );
        let config = WorkerConfig::from_settings(&self.settings);
        (self.run_worker(decider, config), held)
    }
}
