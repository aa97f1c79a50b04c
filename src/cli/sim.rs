//! `order-closer gateway-sim`: the gateway simulator as a standalone server, speaking
//! every gateway it knows on one port. Each gateway keeps its keys in a folder of
//! `--keys-dir` (made there on first start); `client.env` beside them says how to
//! configure a worker to reach and trust it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use order_closer::sim::{self, FaultPlan, NotifyPlan, SimConfig};
use order_closer::worker::shutdown_on_signal;

/// Flags of `gateway-sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where each gateway's keys are kept, one folder per gateway (`alipay/`): the
    /// merchant's key pair and the simulator's own, made on first start and reused after.
    /// A merchant that keeps its own key puts only its public key there
    /// (`alipay/app_public.pem`). `client.env` in it lists the variables a worker needs.
    #[arg(
        long,
        env = "SIM_KEYS_DIR",
        hide_env_values = true,
        default_value = "sim-keys"
    )]
    keys_dir: PathBuf,
    /// Start with this fault plan (JSON, for example '{"http_502":0.05,"latency_ms":100}');
    /// change it at run time with PUT /sim/faults.
    #[arg(long)]
    faults: Option<String>,
    /// Send payment notifications to this notify endpoint, each gateway's to
    /// `{url}/{channel}` (for example http://127.0.0.1:8081/notify); change with
    /// PUT /sim/notify.
    // The URL may hold a password: `--help` must not show the variable's value.
    #[arg(long, env = "SIM_NOTIFY_URL", hide_env_values = true)]
    notify_url: Option<String>,
    // Its help lists every gateway's schedule, from the simulator's own list.
    #[arg(long, default_value_t = 1.0, help = notify_time_factor_help())]
    notify_time_factor: f64,
}

/// `--notify-time-factor`'s help: every gateway's resend intervals, which it scales.
fn notify_time_factor_help() -> String {
    let schedules: Vec<String> = sim::GATEWAYS
        .iter()
        .map(|plugin| {
            let steps: Vec<String> = plugin
                .resend_schedule
                .iter()
                .map(|d| humantime::format_duration(*d).to_string())
                .collect();
            format!("{}: {}", plugin.channel, steps.join(", "))
        })
        .collect();
    format!(
        "Multiplies every gateway's resend intervals ({}); 0.01 runs them a hundred times \
         faster",
        schedules.join("; ")
    )
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let keys_dir = args.keys_dir.clone();
    let gateways = tokio::task::spawn_blocking(move || {
        sim::GATEWAYS
            .iter()
            .map(|plugin| {
                (plugin.from_dir)(&keys_dir.join(plugin.channel))
                    .with_context(|| format!("--keys-dir: the {} keys", plugin.channel))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await
    .context("loading the keys")??;
    let running = sim::start(SimConfig {
        listen: args.listen,
        gateways,
        notify: NotifyPlan {
            url: args.notify_url.clone(),
            time_factor: args.notify_time_factor,
            ..NotifyPlan::default()
        },
    })
    .await?;
    if let Some(json) = &args.faults {
        let plan =
            FaultPlan::from_json(json.as_bytes()).map_err(|e| anyhow::anyhow!("--faults: {e}"))?;
        running
            .state()
            .set_faults(plan)
            .map_err(|e| anyhow::anyhow!("--faults: {e}"))?;
    }
    let env_file = write_client_env(&args.keys_dir, &running.client_vars())?;
    println!(
        "gateway simulator listening on {} ({})",
        running.base_url(),
        running.channels().join(", ")
    );
    println!(
        "configure a worker with the variables in {} (key files, never the keys themselves)",
        env_file.display()
    );
    let stop = shutdown_on_signal();
    running.run_until(stop.cancelled_owned()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `client.env` (`NAME=value` lines) into the keys folder; returns its path.
fn write_client_env(dir: &Path, vars: &[(String, String)]) -> anyhow::Result<PathBuf> {
    let path = dir.join("client.env");
    let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
