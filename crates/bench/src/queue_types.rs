//! `--queue-types classic,quorum`: the pipeline run once per queue type within one bench
//! run, each in an environment of its own (schema, queue prefix, simulator), with the
//! broker's CPU time measured around it, so the two can be compared on data
//! (quorum queues dead-letter at least once, classic ones at most once).

use anyhow::Context;
use lapin::uri::AMQPUri;
use order_closer_core::broker::topology::QueueType;
use order_closer_core::config::BrokerSettings;
use rand::Rng;
use secrecy::ExposeSecret;
use serde::Serialize;

use super::pipeline::{self, BatchResult};
use super::{BenchEnv, Plan, worker_proc};

/// One queue type's pipeline run.
#[derive(Debug, Clone, Serialize)]
pub struct QueueTypeRun {
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// The pipeline run on it.
    pub pipeline: BatchResult,
    /// The broker's CPU time during the run (when the broker runs on this machine).
    pub broker_cpu_seconds: Option<f64>,
    /// The same per decision, milliseconds.
    pub broker_cpu_ms_per_decision: Option<f64>,
}

/// The name of a queue type.
pub fn name(queue_type: QueueType) -> &'static str {
    match queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
    }
}

/// Runs the pipeline on `queue_type` in a fresh environment.
pub async fn run(
    settings: &BrokerSettings,
    plan: &Plan,
    queue_type: QueueType,
    create_rate_hint: Option<f64>,
) -> anyhow::Result<QueueTypeRun> {
    let tag = format!("{:08x}", rand::rng().random::<u32>());
    let env = BenchEnv::open(&tag, queue_type, plan)
        .await
        .with_context(|| format!("preparing the {} run", name(queue_type)))?;
    let broker = broker_pid(settings.url.expose_secret());
    let before = broker.and_then(worker_proc::cpu_seconds);
    let result = pipeline::run(&env, plan, create_rate_hint).await;
    let after = broker.and_then(worker_proc::cpu_seconds);
    env.close().await;
    let pipeline = result?;
    let broker_cpu_seconds = before.zip(after).map(|(b, a)| a - b);
    Ok(QueueTypeRun {
        queue_type: name(queue_type).to_owned(),
        broker_cpu_ms_per_decision: broker_cpu_seconds
            .filter(|_| pipeline.decided > 0)
            .map(|s| s * 1000.0 / pipeline.decided as f64),
        broker_cpu_seconds,
        pipeline,
    })
}

/// The process listening on the broker's port on this machine, if any (Linux): the
/// socket's inode from `/proc/net/tcp{,6}`, then the process holding it.
fn broker_pid(amqp_url: &str) -> Option<u32> {
    let uri: AMQPUri = amqp_url.parse().ok()?;
    let port = uri.authority.port;
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| listening_inode(line, port))
                .collect::<Vec<_>>()
        })
        .next()?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .map(|l| l.to_string_lossy() == target)
                        .unwrap_or(false)
                })
                .then_some(pid)
        })
}

/// The inode of a `/proc/net/tcp` line listening on `port`.
fn listening_inode(line: &str, port: u16) -> Option<u64> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = fields.get(1)?;
    let state = fields.get(3)?;
    let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
    // 0A is TCP_LISTEN.
    (local_port == port && *state == "0A")
        .then(|| fields.get(9)?.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listening_socket_line() {
        let line = "   0: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   109        0 23456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_inode(line, 5672), Some(23456));
        assert_eq!(listening_inode(line, 5673), None);
        let established = line.replace(" 0A ", " 01 ");
        assert_eq!(listening_inode(&established, 5672), None);
    }
}
