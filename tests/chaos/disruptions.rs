//! What a chaos run does to the system while orders flow, each at its second of the run:
//! killing workers, restarting a broker or one of a cluster's nodes, cutting or
//! restarting the database.

use std::time::{Duration, Instant};

use crate::common::pg_node::PgNode;
use crate::common::rabbit_cluster::RabbitCluster;
use crate::common::rabbit_node::RabbitNode;
use crate::workers::{WorkerProcess, terminate_worker_backends};

/// Where the run's broker is.
#[derive(Clone, Copy)]
pub enum Broker<'a> {
    /// One node.
    Node(&'a RabbitNode),
    /// A cluster: every worker is given all its addresses.
    Cluster(&'a RabbitCluster),
}

impl Broker<'_> {
    /// `AMQP_URL` for the run.
    pub fn amqp_url(&self) -> String {
        match self {
            Self::Node(node) => node.amqp_url(),
            Self::Cluster(cluster) => cluster.amqp_urls(),
        }
    }
}

/// One disruption.
#[derive(Debug, Clone, Copy)]
pub enum Disruption {
    /// SIGKILL worker `n`, and start it again a second later.
    KillWorker(usize),
    /// `rabbitmqctl stop_app`, 3 s, `start_app` (one node).
    RestartBrokerApp,
    /// SIGKILL the cluster node that leads the close queue.
    KillCloseQueueLeader,
    /// Start the killed node again.
    RestartKilledNode,
    /// Restart every other node, one at a time, each back in the cluster before the next.
    RestartOtherNodes,
    /// Terminate the workers' Postgres connections.
    TerminateBackends,
    /// Stop the (throwaway) Postgres server, keep it down this long, start it again.
    RestartPostgres(Duration),
}

/// The state disruptions act on.
pub struct Stage<'a> {
    /// The broker.
    pub broker: Broker<'a>,
    /// The database server when the run has its own (to restart).
    pub database: Option<&'a PgNode>,
    /// The workers' database URL (for terminating their connections).
    pub database_url: String,
    /// The queue whose leader is killed.
    pub close_queue: String,
    /// The worker processes.
    pub workers: Vec<WorkerProcess>,
    /// The node killed, if any.
    killed: Option<usize>,
    /// The close queue's leader, looked up before the run's first disruption (a node's
    /// command-line tool can take many seconds on a loaded machine: looked up at the
    /// moment, the kill would come late).
    leader: Option<usize>,
    started: Instant,
    /// What was done, for the figures.
    pub log: Vec<String>,
}

impl<'a> Stage<'a> {
    /// A stage whose clock starts now.
    pub fn new(
        broker: Broker<'a>,
        database: Option<&'a PgNode>,
        database_url: String,
        close_queue: String,
        workers: Vec<WorkerProcess>,
    ) -> Self {
        Self {
            broker,
            database,
            database_url,
            close_queue,
            workers,
            killed: None,
            leader: None,
            started: Instant::now(),
            log: Vec::new(),
        }
    }

    /// When the run started.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn say(&mut self, what: String) {
        let line = format!("{what} at {:.1}s", self.started.elapsed().as_secs_f64());
        println!("chaos: {line}");
        self.log.push(line);
    }

    /// Runs `schedule`: each disruption at its second of the run.
    pub async fn run(&mut self, schedule: &[(u64, Disruption)]) {
        if schedule
            .iter()
            .any(|(_, d)| matches!(d, Disruption::KillCloseQueueLeader))
        {
            let cluster = self.cluster();
            let queue = self.close_queue.clone();
            self.leader = tokio::task::block_in_place(|| cluster.leader_of(&queue));
        }
        for (at, disruption) in schedule {
            tokio::time::sleep_until((self.started + Duration::from_secs(*at)).into()).await;
            self.apply(*disruption).await;
        }
    }

    async fn apply(&mut self, disruption: Disruption) {
        match disruption {
            Disruption::KillWorker(n) => {
                self.workers[n].kill().await;
                self.say(format!("SIGKILL worker {}", n + 1));
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.workers[n].start();
            }
            Disruption::RestartBrokerApp => {
                let Broker::Node(node) = self.broker else {
                    panic!("RestartBrokerApp needs a single node");
                };
                self.say("rabbitmqctl stop_app".into());
                tokio::task::block_in_place(|| node.ctl_ok(&["stop_app"]));
                tokio::time::sleep(Duration::from_secs(3)).await;
                tokio::task::block_in_place(|| node.ctl_ok(&["start_app"]));
                self.say("rabbitmqctl start_app".into());
            }
            Disruption::KillCloseQueueLeader => {
                let cluster = self.cluster();
                let queue = self.close_queue.clone();
                // The leader looked up at the start, unless a node has stopped since
                // (which clears it).
                let leader = self
                    .leader
                    .take()
                    .or_else(|| tokio::task::block_in_place(|| cluster.leader_of(&queue)))
                    .unwrap_or_else(|| panic!("no leader known for {queue}"));
                tokio::task::block_in_place(|| cluster.nodes[leader].kill());
                self.killed = Some(leader);
                self.say(format!(
                    "SIGKILL node {} ({}), the close queue's leader",
                    leader + 1,
                    cluster.nodes[leader].name
                ));
            }
            Disruption::RestartKilledNode => {
                self.leader = None;
                let cluster = self.cluster();
                let killed = self.killed.expect("a node killed before");
                tokio::task::block_in_place(|| {
                    cluster.nodes[killed].restart();
                    cluster.await_members(cluster.nodes.len(), Duration::from_secs(120));
                });
                self.say(format!("node {} back", killed + 1));
            }
            Disruption::RestartOtherNodes => {
                self.leader = None;
                let cluster = self.cluster();
                let killed = self.killed;
                for (i, node) in cluster.nodes.iter().enumerate() {
                    if Some(i) == killed {
                        continue;
                    }
                    tokio::task::block_in_place(|| node.stop());
                    self.say(format!("node {} stopped", i + 1));
                    tokio::task::block_in_place(|| {
                        node.restart();
                        cluster.await_members(cluster.nodes.len(), Duration::from_secs(120));
                    });
                    self.say(format!("node {} back", i + 1));
                }
            }
            Disruption::TerminateBackends => {
                let n = terminate_worker_backends(&self.database_url).await;
                self.say(format!("terminated {n} worker Postgres backends"));
            }
            Disruption::RestartPostgres(down) => {
                let database = self.database.expect("a database server of the run's own");
                tokio::task::block_in_place(|| database.stop());
                self.say("Postgres stopped".into());
                tokio::time::sleep(down).await;
                tokio::task::block_in_place(|| database.start());
                self.say("Postgres started".into());
            }
        }
    }

    fn cluster(&self) -> &'a RabbitCluster {
        match self.broker {
            Broker::Cluster(cluster) => cluster,
            Broker::Node(_) => panic!("this disruption needs a cluster"),
        }
    }
}
