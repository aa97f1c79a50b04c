//! An isolated order-closer: a Postgres schema and a queue prefix of its own, the gateway
//! simulator with fresh keys for every gateway, the variables that point everything at
//! them, and the teardown of all of it, also when its owner panics (on drop). The demo,
//! the benchmark and the tests all stand on one, so that none of them sees or leaves
//! anything in the database and broker it runs against, and each is configured exactly as
//! a deployment would be: through variables ([`Sandbox::vars`]), which a child process
//! (`order-closer worker`) can be given as they are.

use std::collections::HashMap;
use std::sync::Arc;

use lapin::Connection;
use rand::Rng as _;
use secrecy::ExposeSecret;
use thiserror::Error;

use order_closer_app::{App, AppError};
use order_closer_core::broker::publisher::Publisher;
use order_closer_core::broker::topology::Topology;
use order_closer_core::broker::{self, BrokerError};
use order_closer_core::closer::Closer;
use order_closer_core::config::{BrokerSettings, ConfigError, Settings, Vars};
use order_closer_core::db::{self, DbError, DbPool};
use order_closer_engine::decide::{Decider, Gateways};
use order_closer_sim::{self as sim, BuyerClient, RunningSim, SimError};

/// Why a sandbox could not be set up.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// A variable is wrong (the error names it).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Postgres could not be used (is it running? see `DATABASE_URL`).
    #[error("preparing the database (is PostgreSQL running? see DATABASE_URL): {0}")]
    Db(#[from] DbError),
    /// RabbitMQ could not be used (is it running? see `AMQP_URL`).
    #[error("preparing the broker (is RabbitMQ running? see AMQP_URL): {0}")]
    Broker(#[from] BrokerError),
    /// The simulator could not start.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The simulator's buyer client could not be built.
    #[error("the simulator's buyer client: {0}")]
    Buyer(String),
}

/// One isolated environment.
pub struct Sandbox {
    /// The random part of its names (`{name}_{tag}`, `{name}-{tag}`).
    pub tag: String,
    /// Its Postgres schema.
    pub schema: String,
    /// The database URL with the schema as its search path.
    pub database_url: String,
    /// Every variable it is configured by: the base given, its own database URL and
    /// queue prefix, the simulator's gateway variables, and the overrides given.
    pub vars: HashMap<String, String>,
    /// The settings those variables make.
    pub settings: Settings,
    /// A pool on its schema.
    pub pool: DbPool,
    /// A broker connection.
    pub connection: Connection,
    /// A publisher on it, its topology declared.
    pub publisher: Publisher,
    /// Its queues and exchanges.
    pub topology: Arc<Topology>,
    /// The simulator (taken by [`Sandbox::cleanup`]).
    pub sim: Option<RunningSim>,
    /// The simulator's buyer API.
    pub buyers: BuyerClient,
    /// The server-level database URL the schema was made under.
    base_url: String,
    cleaned: bool,
}

impl Sandbox {
    /// Sets up a sandbox named `name` (`t`, `demo`, `bench`) over `base` (what the
    /// process was given: `DATABASE_URL`, `AMQP_URL`, tuning), with `overrides` set last.
    pub async fn start(
        name: &str,
        base: HashMap<String, String>,
        overrides: &[(&str, &str)],
    ) -> Result<Self, SandboxError> {
        let tag: String = format!("{:08x}", rand::rng().random::<u32>());
        Self::start_tagged(name, &tag, base, overrides).await
    }

    /// [`Sandbox::start`] with the random part of its names given (`[0-9a-f]`).
    pub async fn start_tagged(
        name: &str,
        tag: &str,
        base: HashMap<String, String>,
        overrides: &[(&str, &str)],
    ) -> Result<Self, SandboxError> {
        let tag = tag.to_owned();
        let given = Settings::from_vars(Vars::from_map(base.clone()))?;
        let base_url = given.database.url.expose_secret().to_owned();
        db::ensure_database(&base_url).await?;
        let schema = format!("{name}_{tag}");
        db::create_schema(&base_url, &schema).await?;
        let database_url = db::with_search_path(&base_url, &schema);
        let prefix = format!("{name}-{tag}");
        match Self::fill(&schema, &database_url, &prefix, base, overrides).await {
            Ok(parts) => Ok(Self {
                base_url,
                tag,
                schema,
                database_url,
                vars: parts.vars,
                settings: parts.settings,
                pool: parts.pool,
                connection: parts.connection,
                publisher: parts.publisher,
                topology: parts.topology,
                sim: Some(parts.sim),
                buyers: parts.buyers,
                cleaned: false,
            }),
            Err(e) => {
                // Undo what was made before the failure.
                let _ = db::drop_schema(&base_url, &schema).await;
                Err(e)
            }
        }
    }

    async fn fill(
        schema: &str,
        database_url: &str,
        prefix: &str,
        base: HashMap<String, String>,
        overrides: &[(&str, &str)],
    ) -> Result<Parts, SandboxError> {
        let sim = sim::start_local().await?;
        let mut vars = base;
        vars.insert("DATABASE_URL".into(), database_url.to_owned());
        vars.remove("DATABASE_URL_FILE");
        vars.insert("ORDER_CLOSER_QUEUE_PREFIX".into(), prefix.to_owned());
        vars.extend(sim.client_vars());
        for (k, v) in overrides {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let settings = Settings::from_vars(Vars::from_map(vars.clone()))?;
        db::migrate(database_url).await?;
        let pool = db::pool(database_url, settings.database.pool_size)?;
        let topology = Arc::new(settings.broker.topology.clone());
        let connection =
            broker::connect_configured(&settings.broker, &format!("sandbox {schema}")).await?;
        let publisher = Publisher::open(&connection, Arc::clone(&topology)).await?;
        topology.declare(publisher.channel()).await?;
        let buyers =
            BuyerClient::new(sim.base_url()).map_err(|e| SandboxError::Buyer(e.to_string()))?;
        Ok(Parts {
            vars,
            settings,
            pool,
            connection,
            publisher,
            topology,
            sim,
            buyers,
        })
    }

    /// The simulator.
    pub fn sim(&self) -> &RunningSim {
        // Only `cleanup`, which consumes the sandbox, takes it.
        self.sim
            .as_ref()
            .unwrap_or_else(|| unreachable!("the simulator runs until cleanup"))
    }

    /// The settings with some variables changed (a wrong key, another app id).
    pub fn settings_with(&self, overrides: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut vars = self.vars.clone();
        for (k, v) in overrides {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        Settings::from_vars(Vars::from_map(vars))
    }

    /// The product as the sandbox's settings configure it: what a deployment would run.
    pub fn app(&self) -> App {
        App::build(self.settings.clone())
    }

    /// The gateways the settings configure: every gateway, trusting the simulator.
    pub fn gateways(&self) -> Result<Gateways, AppError> {
        self.app().gateways()
    }

    /// A decider as the worker builds it, signing its audit rows as `actor`.
    pub fn decider(&self, actor: &str) -> Result<Decider, AppError> {
        self.app().decider(self.pool.clone(), actor)
    }

    /// The library's entry point, publishing with the sandbox's publisher.
    pub fn closer(&self) -> Closer {
        self.app()
            .closer_on(self.pool.clone(), Some(self.publisher.clone()))
    }

    /// Removes the queues, the schema and the simulator (once; the sandbox is of no use
    /// afterwards).
    pub async fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
        // The publisher's channel may be gone (a test broke it on purpose): then on a
        // connection of its own.
        if self
            .topology
            .delete(self.publisher.channel())
            .await
            .is_err()
        {
            delete_topology(&self.settings.broker, &self.topology).await;
        }
        let _ = self.connection.close(200, "sandbox done".into()).await;
        self.pool.close();
        drop_schema(&self.base_url, &self.schema).await;
        self.cleaned = true;
    }
}

/// What [`Sandbox::fill`] makes.
struct Parts {
    vars: HashMap<String, String>,
    settings: Settings,
    pool: DbPool,
    connection: Connection,
    publisher: Publisher,
    topology: Arc<Topology>,
    sim: RunningSim,
    buyers: BuyerClient,
}

/// Deletes the topology's queues and exchanges over a connection of its own.
async fn delete_topology(settings: &BrokerSettings, topology: &Topology) {
    let deleted = async {
        let connection = broker::connect_configured(settings, "sandbox cleanup").await?;
        let channel = broker::timed("open channel", connection.create_channel()).await?;
        topology.delete(&channel).await?;
        let _ = connection.close(200, "sandbox cleanup".into()).await;
        Ok::<_, BrokerError>(())
    }
    .await;
    if let Err(e) = deleted {
        tracing::warn!(error = %e, prefix = topology.prefix(), "could not delete the sandbox queues");
    }
}

/// Drops the schema (through the server-level URL).
async fn drop_schema(base_url: &str, schema: &str) {
    if let Err(e) = db::drop_schema(base_url, schema).await {
        tracing::warn!(error = %e, schema, "could not drop the sandbox schema");
    }
}

/// A sandbox dropped without `cleanup` (its owner panicked) still removes its schema and
/// queues: on a thread of its own with a runtime of its own, since the owner's runtime
/// may be unwinding.
impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let schema = self.schema.clone();
        let topology = Arc::clone(&self.topology);
        let settings = self.settings.broker.clone();
        let base_url = self.base_url.clone();
        let cleaner = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(connection) =
                    broker::connect_configured(&settings, "sandbox cleanup").await
                    && let Ok(channel) = connection.create_channel().await
                {
                    let _ = topology.delete(&channel).await;
                    let _ = connection.close(200, "sandbox cleanup".into()).await;
                }
                drop_schema(&base_url, &schema).await;
            });
        });
        let _ = cleaner.join();
    }
}
