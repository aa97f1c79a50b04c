//! A throwaway three-node RabbitMQ cluster for the scale-out run: nodes started from the
//! Debian package's scripts ([`RabbitNode`]: own names, ports, data directories), sharing
//! one Erlang cookie of their own, clustered with `join_cluster`, and stopped (directories
//! removed) when dropped or when the test process dies. The machine's broker on 5672 is
//! never touched.

use std::time::{Duration, Instant};

use rand::Rng;

use super::rabbit_node::RabbitNode;

/// How many nodes run, as a node sees it (`list_running` from 3.13 and 4.x,
/// `all_running` before).
const RUNNING_NODES: &str = "try length(rabbit_nodes:list_running()) \
                             catch _:_ -> length(rabbit_nodes:all_running()) end.";

/// A running cluster.
pub struct RabbitCluster {
    /// Its nodes; the first is the one the others joined.
    pub nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts `n` nodes and clusters them (about 10 s a node). Blocks.
    pub fn start(n: usize) -> Self {
        assert!(n >= 1, "a cluster has a node at least");
        let tag = format!("{:08x}", rand::rng().random::<u32>());
        let cookie = format!("OCCLUSTER{tag}");
        let nodes: Vec<RabbitNode> = (1..=n)
            .map(|i| {
                RabbitNode::create(
                    &format!("oc-{tag}-{i}"),
                    &cookie,
                    |port| {
                        format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n")
                    },
                    "[]",
                )
            })
            .collect();
        for node in &nodes {
            node.launch();
            node.watch_this_process();
        }
        for node in &nodes {
            node.await_startup();
        }
        let cluster = Self { nodes };
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            node.ctl_ok(&["stop_app"]);
            node.ctl_ok(&["join_cluster", &first]);
            node.ctl_ok(&["start_app"]);
        }
        cluster.await_members(n, Duration::from_secs(60));
        cluster
    }

    /// `AMQP_URL` naming every node, in order.
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(RabbitNode::amqp_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until `running` nodes are up in the cluster, as a running node sees it.
    pub fn await_members(&self, running: usize, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            let seen = self.nodes.iter().find_map(|node| {
                let out = node.ctl(&["eval", RUNNING_NODES]);
                out.status
                    .success()
                    .then(|| {
                        String::from_utf8_lossy(&out.stdout)
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .flatten()
            });
            if seen == Some(running) {
                return;
            }
            assert!(
                Instant::now() < until,
                "the cluster did not reach {running} running nodes (saw {seen:?})"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The index of the node that leads quorum queue `queue` (in vhost `/`), as any
    /// running node reports it; None while no leader is known.
    pub fn leader_of(&self, queue: &str) -> Option<usize> {
        self.nodes.iter().find_map(|node| {
            let out = node.ctl(&["list_queues", "-q", "--no-table-headers", "name", "leader"]);
            if !out.status.success() {
                return None;
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let leader = text.lines().find_map(|line| {
                let mut cols = line.split_whitespace();
                (cols.next() == Some(queue)).then(|| cols.next().map(str::to_owned))?
            })?;
            self.nodes.iter().position(|n| n.name == leader)
        })
    }
}
