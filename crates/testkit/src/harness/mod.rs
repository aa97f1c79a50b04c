//! Test harness: each test gets its own Postgres schema, its own queue prefix, its own
//! gateway simulator and keys, and cleans them up. Tests therefore run in parallel.
#![allow(dead_code)]

pub mod certs;
pub mod gateway;
pub mod migrations;
pub mod notices;
pub mod pg_node;
pub mod rabbit_cluster;
pub mod rabbit_node;
pub mod slow_clients;
pub mod tcp_proxy;
pub mod worker_process;

use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::sandbox::Sandbox;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use order_closer_app::App;
use order_closer_core::broker;
use order_closer_core::broker::publisher::Publisher;
use order_closer_core::broker::topology::{DeliveryLimits, Topology};
use order_closer_core::closer::{Closer, Due, NewOrder};
use order_closer_core::db::schema::decisions;
use order_closer_core::db::{self, DbPool, orders};
use order_closer_core::order::{Order, OrderStatus};
use order_closer_engine::decide::{Decider, Gateways};
use order_closer_engine::notify::Notifier;
use order_closer_engine::worker::{Worker, WorkerConfig};
use order_closer_sim as sim;
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
    /// The worker's metrics.
    pub metrics: Arc<order_closer_engine::metrics::Metrics>,
    /// The worker's readiness.
    pub readiness: Arc<order_closer_engine::health::Readiness>,
}

/// One isolated environment: a [`Sandbox`] (schema, queue prefix, simulator, variables,
/// teardown) with the test's workers and notify endpoint.
pub struct TestEnv {
    /// The sandbox the environment stands on.
    pub sandbox: Sandbox,
    /// The library's entry point, publishing with the sandbox's publisher.
    pub closer: Closer,
    /// Stops the notify endpoint, when one runs.
    notify_stop: CancellationToken,
    workers: Vec<(CancellationToken, JoinHandle<()>)>,
}

impl std::ops::Deref for TestEnv {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl std::ops::DerefMut for TestEnv {
    fn deref_mut(&mut self) -> &mut Sandbox {
        &mut self.sandbox
    }
}

impl TestEnv {
    /// A fresh environment with the tests' settings plus `overrides`.
    pub async fn new(overrides: &[(&str, &str)]) -> Self {
        Self::on_database(&base_database_url(), overrides).await
    }

    /// [`TestEnv::new`] with its schema in the database at `database_url` (a server of
    /// the test's own) instead of the tests' `DATABASE_URL`.
    pub async fn on_database(database_url: &str, overrides: &[(&str, &str)]) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,order_closer=info".into()),
            )
            .with_test_writer()
            .try_init();
        let mut base: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".into(), database_url.to_owned()),
            ("AMQP_URL".into(), amqp_url()),
            ("ORDER_CLOSER_OUTBOX_INTERVAL".into(), "100ms".into()),
            ("ORDER_CLOSER_OUTBOX_GRACE".into(), "1s".into()),
            ("ORDER_CLOSER_RETRY_STEPS".into(), "1s,1s,1s".into()),
            ("ORDER_CLOSER_SHUTDOWN_GRACE".into(), "10s".into()),
            ("ORDER_CLOSER_DB_POOL_SIZE".into(), "8".into()),
        ]);
        if let Ok(kind) = std::env::var("TEST_QUEUE_TYPE") {
            base.insert("ORDER_CLOSER_QUEUE_TYPE".into(), kind);
        }
        let sandbox = Sandbox::start("t", base, overrides)
            .await
            .expect("the test sandbox");
        let closer = sandbox.closer();
        Self {
            sandbox,
            closer,
            notify_stop: CancellationToken::new(),
            workers: Vec::new(),
        }
    }

    /// A decider like the worker's, trusting the simulator.
    pub fn decider(&self, actor: &str) -> Decider {
        self.decider_with(&[], actor)
    }

    /// The gateways the environment's settings (with `overrides`) configure.
    pub fn gateways_with(&self, overrides: &[(&str, &str)]) -> Gateways {
        let settings = self.sandbox.settings_with(overrides).expect("settings");
        App::build(settings).gateways().expect("gateways")
    }

    /// The gateways, trusting the simulator.
    pub fn gateways(&self) -> Gateways {
        self.gateways_with(&[])
    }

    /// The gateway of one channel.
    pub fn gateway(&self, channel: &str) -> Arc<dyn order_closer_gateway::Gateway> {
        Arc::clone(
            self.gateways()
                .get(channel)
                .expect("a gateway for the channel"),
        )
    }

    /// The Alipay client itself, trusting the simulator (for the tests of Alipay's own
    /// calls, such as the bill download).
    pub fn alipay_client(&self) -> order_closer_app::gateways::alipay::AlipayClient {
        let vars = order_closer_core::config::Vars::from_map(self.vars.clone());
        let settings = order_closer_app::gateways::alipay::AlipaySettings::from_vars(&vars)
            .expect("alipay settings")
            .expect("alipay is configured");
        order_closer_app::gateways::alipay::AlipayClient::new(settings.client)
            .expect("alipay client")
    }

    /// A decider whose gateways are configured with `overrides` (a wrong key, another app).
    pub fn decider_with(&self, overrides: &[(&str, &str)], actor: &str) -> Decider {
        self.sandbox
            .app()
            .decider_over(self.pool.clone(), self.gateways_with(overrides), actor)
    }

    /// Starts an in-process worker.
    pub fn start_worker(&mut self, concurrency: usize, prefetch: u16) -> Observed {
        let mut config = WorkerConfig::from_settings(&self.settings);
        config.worker.concurrency = concurrency;
        config.worker.prefetch = prefetch;
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

    /// Creates an order at `channel`'s gateway due after `after`.
    pub async fn create_at(
        &self,
        channel: &str,
        no: &str,
        amount_minor: i64,
        after: Duration,
    ) -> Order {
        self.closer
            .create_order(NewOrder::new(channel, no, amount_minor, Due::After(after)))
            .await
            .expect("create order")
            .order
    }

    /// An order at `channel` due after `after` whose trade the buyer has scanned: waiting
    /// for payment at the gateway.
    pub async fn create_waiting(
        &self,
        channel: &str,
        no: &str,
        amount_minor: i64,
        after: Duration,
    ) -> Order {
        let order = self.create_at(channel, no, amount_minor, after).await;
        self.buyers
            .at(channel)
            .buyer(no)
            .scans(amount_minor)
            .send()
            .await
            .expect("the buyer scans");
        order
    }

    /// The test's database URL through a proxy the test can switch off and on (`on`: how
    /// it starts): the proxy, and the URL through it.
    pub async fn database_through_proxy(&self, on: bool) -> (tcp_proxy::TcpProxy, String) {
        let proxy =
            tcp_proxy::TcpProxy::start("127.0.0.1:5432".parse().expect("an address"), on).await;
        let via_proxy = self
            .database_url
            .replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
        assert_ne!(
            via_proxy, self.database_url,
            "the test database is on 127.0.0.1:5432"
        );
        (proxy, via_proxy)
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

    /// The first trade of an order (the one the one-call form makes with it).
    pub async fn trade(&self, no: &str) -> order_closer_core::trade::Trade {
        let order = self.order(no).await;
        let mut conn = db::conn(&self.pool).await.unwrap();
        db::trades::for_order(&mut conn, order.id)
            .await
            .unwrap()
            .into_iter()
            .next()
            .expect("the order has a trade")
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
        self.connection = broker::connect(self.settings.broker.url.expose_secret(), "test")
            .await
            .expect("broker");
        self.publisher = Publisher::open(&self.connection, self.topology.clone())
            .await
            .expect("publisher");
        self.closer = self
            .sandbox
            .app()
            .closer_on(self.pool.clone(), Some(self.publisher.clone()));
    }

    /// Re-creates the environment's queues with other delivery limits (small ones, to see
    /// the broker dead-letter or drop a message after a few returns): same names, so the
    /// teardown removes them; the publisher, the closer and the workers started afterwards
    /// use them. Call it before starting any worker.
    pub async fn with_delivery_limits(&mut self, limits: DeliveryLimits) {
        assert!(self.workers.is_empty(), "workers use the old queues");
        let topology = Arc::new((*self.topology).clone().with_delivery_limits(limits));
        let channel = self.connection.create_channel().await.expect("channel");
        self.topology.delete(&channel).await.expect("delete queues");
        let publisher = declared_on(&self.connection, &topology).await;
        self.sandbox.settings.broker.topology = (*topology).clone();
        self.sandbox.topology = topology;
        self.sandbox.publisher = publisher;
        self.closer = self.sandbox.closer();
    }

    /// Stops the workers and the notify endpoint, and removes the schema, the queues and
    /// the simulator.
    pub async fn cleanup(mut self) {
        self.notify_stop.cancel();
        self.stop_workers().await;
        self.sandbox.cleanup().await;
    }
}

/// A test that failed (panicked) before `cleanup` stops its workers; the sandbox removes
/// its schema and queues as it drops.
impl Drop for TestEnv {
    fn drop(&mut self) {
        self.notify_stop.cancel();
        for (token, _) in &self.workers {
            token.cancel();
        }
    }
}

/// A connection to `amqp_url`, a publisher on it, and `topology` declared.
pub async fn declared(amqp_url: &str, topology: &Arc<Topology>) -> (Connection, Publisher) {
    let connection = broker::connect(amqp_url, "test").await.expect("broker");
    let publisher = declared_on(&connection, topology).await;
    (connection, publisher)
}

/// A publisher on `connection`, and `topology` declared.
async fn declared_on(connection: &Connection, topology: &Arc<Topology>) -> Publisher {
    let publisher = Publisher::open(connection, Arc::clone(topology))
        .await
        .expect("publisher");
    topology
        .declare(publisher.channel())
        .await
        .expect("declare");
    publisher
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

/// Runs the binary `bin` (the test's `env!("CARGO_BIN_EXE_order-closer")`) with `vars`
/// and `args` and collects its output.
pub async fn run_binary(
    bin: &str,
    vars: &[(String, String)],
    args: &[&str],
) -> std::process::Output {
    // The test process's own connection settings (scripts/test.sh exports them) must not
    // leak into the binary: `vars` says everything it gets.
    let mut command = tokio::process::Command::new(bin);
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

/// What a notify endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
    /// The gateway takes the reply as "handled" (it will not send again).
    pub acknowledged: bool,
}

/// A notify endpoint running in the test process.
pub struct NotifyEndpoint {
    /// The handler it serves.
    pub notifier: Arc<Notifier>,
    /// `http://127.0.0.1:<port>/notify`: what the simulator's notifications are sent to.
    pub base: String,
    /// `http://127.0.0.1:<port>/notify/alipay`.
    pub url: String,
}

impl TestEnv {
    /// A notifier like `order-closer notify`'s, over `pool`, trusting the simulator.
    pub fn notifier_over(&self, pool: DbPool) -> Notifier {
        Notifier::new(
            self.sandbox
                .app()
                .decider(pool, "notify:test")
                .expect("decider"),
        )
    }

    /// Serves `notifier` on a free port and points the simulator's notifications at it,
    /// resending on Alipay's schedule times `time_factor`.
    pub async fn serve_notify(&self, notifier: Notifier, time_factor: f64) -> NotifyEndpoint {
        let notifier = Arc::new(notifier);
        let bound = order_closer_engine::notify::http::serve(
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

    /// The notification the trade's gateway would send, made as `forge` says.
    pub fn notice(&self, trade: &sim::SimTradeView, forge: sim::Forge) -> sim::Outgoing {
        self.sim()
            .notification(trade, "test-notify", forge)
            .expect("a paid or refunded trade")
    }

    /// POSTs a notification to the endpoint's `channel` path, as the gateway would; says
    /// whether the gateway would take the reply as handled.
    pub async fn deliver(
        &self,
        endpoint: &NotifyEndpoint,
        channel: &str,
        outgoing: &sim::Outgoing,
    ) -> Sent {
        let mut request = reqwest::Client::new()
            .post(format!("{}/{channel}", endpoint.base))
            .header(reqwest::header::CONTENT_TYPE, outgoing.content_type)
            .body(outgoing.body.clone());
        for (name, value) in &outgoing.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.expect("the endpoint answers");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let acknowledged = self
            .sim()
            .gateway(channel)
            .is_some_and(|g| g.acknowledged(status, body.as_bytes()));
        Sent {
            status,
            body,
            acknowledged,
        }
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
    pub fn start_held_worker(&mut self, channel: &str) -> (Observed, Arc<gateway::HeldGateway>) {
        let gateways = self.gateways();
        let held = gateway::HeldGateway::new(Arc::clone(
            gateways.get(channel).expect("a gateway for the channel"),
        ));
        let decider = self.sandbox.app().decider_over(
            self.pool.clone(),
            gateways.with(channel, held.clone()),
            "test-worker-held",
        );
        let config = WorkerConfig::from_settings(&self.settings);
        (self.run_worker(decider, config), held)
    }
}
