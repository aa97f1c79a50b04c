//! The worker processes of a chaos run (the real binary, each with its own log files), and
//! what a run reads from their logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use order_closer::db;

use crate::BIN;
use crate::common::worker_process::{sigterm, spawn_worker};

/// The workers' `application_name` in Postgres (for terminating their connections).
pub const WORKER_APP_NAME: &str = "oc-chaos-worker";

pub struct WorkerProcess {
    /// `worker1`, `worker2`, ...: names its log files.
    name: String,
    vars: Vec<(String, String)>,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
    /// How many times it was started.
    pub starts: u32,
}

impl WorkerProcess {
    /// A worker process with these variables, logging into `dir` (not started yet).
    pub fn new(name: String, vars: Vec<(String, String)>, dir: PathBuf) -> Self {
        Self {
            name,
            vars,
            dir,
            child: None,
            starts: 0,
        }
    }

    /// Starts it (again).
    pub fn start(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        self.child = Some(spawn_worker(BIN, &self.vars, &log));
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap(); // SIGKILL
        }
    }

    /// SIGTERM, and waits up to 30 s for it to exit.
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            assert!(sigterm(&child), "SIGTERM to a running worker");
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        }
    }
}

/// The worker log lines that mention an order: its trail through the broker (received,
/// forwarded to a tier, retried, decided), for telling a message the broker dropped from
/// one that was forwarded and acknowledged.
pub fn trail(dir: &Path, order_id: i64, out_trade_no: &str) -> Vec<String> {
    let id = format!("order_id={order_id}");
    let mut lines = Vec::new();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.sort();
    for log in logs
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let name = log
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Ok(text) = std::fs::read_to_string(log) {
            lines.extend(
                text.lines()
                    .filter(|l| l.contains(&id) || l.contains(out_trade_no))
                    .map(|l| format!("    {name}: {l}")),
            );
        }
    }
    lines
}

/// Lines in the worker logs containing `needle`.
pub fn count_in_logs(dir: &Path, needle: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|text| text.lines().filter(|l| l.contains(needle)).count())
                .sum()
        })
        .unwrap_or(0)
}

/// Terminates the worker's Postgres connections (by application name); returns how many.
pub async fn terminate_worker_backends(database_url: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db::connect(database_url).await.unwrap();
    let count: Count = diesel::sql_query(
        "SELECT count(pg_terminate_backend(pid))::bigint AS n FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind::<diesel::sql_types::Text, _>(WORKER_APP_NAME)
    .get_result(&mut conn)
    .await
    .unwrap();
    count.n
}
