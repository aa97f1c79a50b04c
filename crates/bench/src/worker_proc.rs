//! The worker under test, as a child process (`order-closer worker`; the notification run
//! starts `order-closer notify` the same way): started with the run's environment,
//! watched through `/proc/<pid>`, stopped with SIGTERM.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde::Serialize;
use tokio::process::{Child, Command};

use super::{BenchEnv, tail};

/// How long a worker may take to start consuming.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a worker may take to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(45);

/// A running worker child process.
pub struct WorkerProcess {
    child: Child,
    pid: u32,
    log: PathBuf,
    /// What it is, in messages (`worker-pipeline`, `notify`).
    name: String,
}

/// CPU and memory of the worker, read from `/proc`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// User plus system CPU time since the process started, seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// Resident set size now (`VmRSS`), MiB.
    pub rss_mib: f64,
}

impl WorkerProcess {
    /// Starts `order-closer worker --concurrency c --prefetch p` and waits until it
    /// consumes the close queue.
    pub async fn start(
        env: &BenchEnv,
        label: &str,
        concurrency: u32,
        prefetch: u16,
    ) -> anyhow::Result<Self> {
        let mut worker = Self::start_worker(env, label, Some((concurrency, prefetch)))?;
        worker.wait_consuming(env, 1).await?;
        Ok(worker)
    }

    /// Starts `order-closer worker`, with `--concurrency` and `--prefetch` when `tuning`
    /// gives them (else the defaults), without waiting.
    fn start_worker(
        env: &BenchEnv,
        label: &str,
        tuning: Option<(u32, u16)>,
    ) -> anyhow::Result<Self> {
        let mut args = vec!["worker".to_owned()];
        if let Some((concurrency, prefetch)) = tuning {
            args.extend([
                "--concurrency".to_owned(),
                concurrency.to_string(),
                "--prefetch".to_owned(),
                prefetch.to_string(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let worker = Self::spawn(env, &format!("worker-{label}"), &args)?;
        match tuning {
            Some((concurrency, prefetch)) => eprintln!(
                "  worker pid {} (concurrency {concurrency}, prefetch {prefetch})",
                worker.pid
            ),
            None => eprintln!(
                "  worker pid {} (default concurrency and prefetch)",
                worker.pid
            ),
        }
        Ok(worker)
    }

    /// Starts `order-closer <args>` with the run's environment, its output in
    /// `<work dir>/<log_name>.log`.
    pub fn spawn(env: &BenchEnv, log_name: &str, args: &[&str]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let log = env.work_dir.join(format!("{log_name}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(exe)
            .args(args)
            .envs(env.worker_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting order-closer {}", args.join(" ")))?;
        let pid = child.id().context("the child exited at once")?;
        Ok(Self {
            child,
            pid,
            log,
            name: log_name.to_owned(),
        })
    }

    /// The end of the child's log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 3000)
    }

    /// Waits until the close queue has `consumers` consumers (this worker's among them).
    async fn wait_consuming(&mut self, env: &BenchEnv, consumers: u32) -> anyhow::Result<()> {
        let channel = env.connection.create_channel().await?;
        let end = Instant::now() + START_LIMIT;
        loop {
            self.ensure_alive()?;
            let queue = channel
                .queue_declare(
                    env.topology.close_queue().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            if queue.consumer_count() >= consumers {
                let _ = channel.close(200, "worker is consuming".into()).await;
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < end,
                "the worker did not start consuming within {START_LIMIT:?}; its log ends:\n{}",
                tail(&self.log, 3000)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails (with the end of its log) when the child has exited.
    pub fn ensure_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                tail(&self.log, 3000)
            );
        }
        Ok(())
    }

    /// Reads the worker's CPU time and peak RSS now.
    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .context("reading /proc/<pid>/stat (Linux only)")?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("reading /proc/<pid>/status")?;
        let ticks = parse_cpu_ticks(&stat).context("unexpected /proc/<pid>/stat format")?;
        let hwm_kib = parse_status_kib(&status, "VmHWM:").unwrap_or(0);
        let rss_kib = parse_status_kib(&status, "VmRSS:").unwrap_or(0);
        Ok(ProcSample {
            cpu_seconds: ticks as f64 / clock_ticks_per_second(),
            peak_rss_mib: hwm_kib as f64 / 1024.0,
            rss_mib: rss_kib as f64 / 1024.0,
        })
    }

    /// Sends SIGTERM and waits for the child to exit (killing it after a grace period).
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .context("running kill -TERM")?;
        if !sent.success() {
            // Already gone, most likely; collect it.
            return Ok(self.child.wait().await?);
        }
        match tokio::time::timeout(STOP_LIMIT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                eprintln!(
                    "warning: {} did not stop within {STOP_LIMIT:?} of SIGTERM; killing it",
                    self.name
                );
                self.child.start_kill()?;
                Ok(self.child.wait().await?)
            }
        }
    }
}

/// Several worker processes of one run (the scale-out run starts 1, 2, 3), watched and
/// stopped together; one (the pipeline runs) is a group of one.
pub struct WorkerGroup {
    workers: Vec<WorkerProcess>,
}

impl WorkerGroup {
    /// Starts `processes` workers (`tuning`: concurrency and prefetch, else the defaults)
    /// and waits until all consume the close queue.
    pub async fn start(
        env: &BenchEnv,
        label: &str,
        tuning: Option<(u32, u16)>,
        processes: u32,
    ) -> anyhow::Result<Self> {
        let mut workers = Vec::new();
        for i in 1..=processes {
            let name = if processes == 1 {
                label.to_owned()
            } else {
                format!("{label}-{i}")
            };
            workers.push(WorkerProcess::start_worker(env, &name, tuning)?);
        }
        if let Some(last) = workers.last_mut() {
            last.wait_consuming(env, processes).await?;
        }
        Ok(Self { workers })
    }

    /// Fails (with the end of its log) when any has exited.
    pub fn ensure_alive(&mut self) -> anyhow::Result<()> {
        self.workers
            .iter_mut()
            .try_for_each(WorkerProcess::ensure_alive)
    }

    /// Their CPU time and memory now, summed.
    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        let mut sum = ProcSample::default();
        for worker in &self.workers {
            let s = worker.sample()?;
            sum.cpu_seconds += s.cpu_seconds;
            sum.peak_rss_mib += s.peak_rss_mib;
            sum.rss_mib += s.rss_mib;
        }
        Ok(sum)
    }

    /// Stops every one; the first failing exit status, if any.
    pub async fn stop(self) -> anyhow::Result<ExitStatus> {
        let mut first_failure = None;
        let mut last = None;
        for worker in self.workers {
            let status = worker.stop().await?;
            if !status.success() && first_failure.is_none() {
                first_failure = Some(status);
            }
            last = Some(status);
        }
        first_failure.or(last).context("a group of no workers")
    }
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, every core), in
/// clock ticks; None if it cannot be read.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The CPU time (user plus system) of any process so far, seconds; None if it cannot be
/// read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks_per_second())
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`, in clock ticks.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` line of `/proc/<pid>/status`, in KiB.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `getconf CLK_TCK` (asked once), or 100 when it cannot be asked.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(ask_clock_ticks)
}

fn ask_clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_and_peak_rss() {
        let stat = "1234 (order (closer)) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 9 0 100";
        assert_eq!(parse_cpu_ticks(stat), Some(290));
        let status = "Name:\tx\nVmPeak:\t  900 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(51200));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }
}
