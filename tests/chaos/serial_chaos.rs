//! The chaos run: thousands of orders, buyers paying at random moments (some during the
//! close), about 10% gateway faults, the worker killed with SIGKILL twice, the broker
//! application restarted, the worker's database connections terminated (`round.rs` says
//! what is checked).
//!
//! The broker is a throwaway RabbitMQ node of the test's own (`crate::common::rabbit_node`), so
//! the machine's broker is never restarted. Kills processes and restarts a broker: runs
//! alone (`scripts/test.sh` gives it its own step), on classic queues and, with
//! `TEST_QUEUE_TYPE=quorum`, on quorum queues.
//!
//! One order in five has two trades (payment attempts), one at each gateway, added while
//! the buyer acts: the buyer pays neither, one (switching gateway first, or not) or both,
//! each before the deadline, during the close or just after the deadline.
//!
//! Size and pace: `CHAOS_ORDERS` (default 5000), `CHAOS_SPREAD_SECS` (default 60).
//! Seeds: `CHAOS_SEED` (default 2026) drives the buyers and the faults. Soak:
//! `CHAOS_ROUNDS=N` repeats the run N times with seeds `CHAOS_SEED`, `CHAOS_SEED + 1`, ...
//! and prints the totals and the seed of every failed round.

use std::time::Duration;

use crate::common::rabbit_node::RabbitNode;
use crate::disruptions::{Broker, Disruption};
use crate::round::{Round, Scenario, chaos_round};
use crate::workload::env_number;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serial_chaos_run() {
    let total = env_number("CHAOS_ORDERS", 5000) as usize;
    let spread = Duration::from_secs(env_number("CHAOS_SPREAD_SECS", 60));
    let first_seed = env_number("CHAOS_SEED", 2026);
    let rounds = env_number("CHAOS_ROUNDS", 1).max(1);
    let node = tokio::task::spawn_blocking(|| RabbitNode::start("[]"))
        .await
        .unwrap();
    let scenario = Scenario {
        name: "chaos run",
        broker: Broker::Node(&node),
        database: None,
        workers: 1,
        queue_type: None,
        schedule: vec![
            (15, Disruption::KillWorker(0)),
            (25, Disruption::RestartBrokerApp),
            (40, Disruption::KillWorker(0)),
            (50, Disruption::TerminateBackends),
        ],
    };
    let mut results = Vec::new();
    for seed in first_seed..first_seed + rounds {
        let round = chaos_round(&scenario, total, spread, seed).await;
        if !round.failures.is_empty() {
            println!("ROUND FAILED (seed {seed}): {:?}", round.failures);
        }
        results.push(round);
    }
    let failed: Vec<&Round> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    if rounds > 1 {
        let sum = |f: fn(&Round) -> usize| results.iter().map(f).sum::<usize>();
        println!("\n===== soak: {rounds} rounds of {total} orders, seeds {first_seed}.. =====");
        println!("orders                       {}", sum(|r| r.orders));
        println!("lost                         {}", sum(|r| r.lost));
        println!("decided twice                {}", sum(|r| r.decided_twice));
        println!("disagree after the requeue   {}", sum(|r| r.disagreements));
        println!(
            "parked before the requeue    {}",
            sum(|r| r.parked_before_requeue)
        );
        println!("re-driven by the janitor     {}", sum(|r| r.redriven));
        println!(
            "duplicate events             {}",
            sum(|r| r.duplicate_events)
        );
        println!(
            "failed rounds                {} {:?}",
            failed.len(),
            failed.iter().map(|r| r.seed).collect::<Vec<_>>()
        );
    }
    assert!(
        failed.is_empty(),
        "chaos rounds failed: {:?}",
        failed
            .iter()
            .map(|r| (r.seed, &r.failures))
            .collect::<Vec<_>>()
    );
}
