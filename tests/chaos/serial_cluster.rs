//! Scale-out: a three-node RabbitMQ cluster with quorum queues and three worker processes,
//! each given all three addresses, through the chaos workload (`round.rs`: thousands of
//! orders, mixed outcomes, about 10% gateway faults, every invariant checked).
//!
//! - The cluster run: the node leading the close queue is killed with SIGKILL; it is
//!   started again, then the other two nodes are restarted one at a time. Workers and the
//!   library move to another address each time theirs goes away.
//! - The Postgres run: the same cluster and workers, and the database server (a throwaway
//!   one of the test's own) is stopped for about 10 s part-way through, and started again.
//!
//! The nodes are the test's own (`crate::common::rabbit_cluster`): the machine's broker is
//! never touched. Kills processes and restarts servers: runs alone, in its own step of
//! `scripts/test.sh`. Size: `CLUSTER_ORDERS` (default 3000), `CLUSTER_SPREAD_SECS` (45);
//! seed `CHAOS_SEED` (2026).

use std::time::Duration;

use crate::common::pg_node::PgNode;
use crate::common::rabbit_cluster::RabbitCluster;
use crate::disruptions::{Broker, Disruption};
use crate::round::{Scenario, chaos_round};
use crate::workload::env_number;

/// Nodes in the cluster, and worker processes.
const NODES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serial_cluster_runs() {
    let total = env_number("CLUSTER_ORDERS", 3000) as usize;
    let spread = Duration::from_secs(env_number("CLUSTER_SPREAD_SECS", 45));
    let seed = env_number("CHAOS_SEED", 2026);
    let cluster = tokio::task::spawn_blocking(|| RabbitCluster::start(NODES))
        .await
        .unwrap();

    let node_loss = Scenario {
        name: "cluster run (a node lost)",
        broker: Broker::Cluster(&cluster),
        database: None,
        workers: NODES,
        queue_type: Some("quorum"),
        schedule: vec![
            (15, Disruption::KillCloseQueueLeader),
            (30, Disruption::RestartKilledNode),
            (40, Disruption::RestartOtherNodes),
        ],
    };
    let first = chaos_round(&node_loss, total, spread, seed).await;

    let postgres = tokio::task::spawn_blocking(PgNode::start_plain)
        .await
        .unwrap();
    let db_restart = Scenario {
        name: "cluster run (Postgres restarted)",
        broker: Broker::Cluster(&cluster),
        database: Some(&postgres),
        workers: NODES,
        queue_type: Some("quorum"),
        schedule: vec![(20, Disruption::RestartPostgres(Duration::from_secs(10)))],
    };
    let second = chaos_round(&db_restart, total, spread, seed + 1).await;

    assert!(
        first.failures.is_empty() && second.failures.is_empty(),
        "node lost: {:?}; Postgres restarted: {:?}",
        first.failures,
        second.failures
    );
}
