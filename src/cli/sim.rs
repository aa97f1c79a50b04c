//! `order-closer gateway-sim`: the Alipay simulator as a standalone server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use order_closer::config::key_material;
use order_closer::gateway::alipay::config::DEFAULT_APP_ID;
use order_closer::gateway::rsa::{RsaPrivateKey, RsaPublicKey};
use order_closer::sim::{self, FaultPlan, NotifyPlan, SimConfig};
use order_closer::worker::shutdown_on_signal;
use secrecy::{ExposeSecret, SecretString};

/// Flags of `gateway-sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The app's public key (PEM, bare base64, or a file path): requests must be signed
    /// with the matching private key (ALIPAY_APP_PRIVATE_KEY of the worker).
    #[arg(long, env = "SIM_APP_PUBLIC_KEY", allow_hyphen_values = true)]
    app_public_key: String,
    /// The app id the simulator accepts.
    #[arg(long, env = "ALIPAY_APP_ID", default_value = DEFAULT_APP_ID)]
    app_id: String,
    /// The simulator's own private key ("Alipay's" key: PEM, bare base64, or a file
    /// path); generated when absent. Never printed.
    #[arg(
        long,
        env = "SIM_PRIVATE_KEY",
        hide_env_values = true,
        allow_hyphen_values = true,
        value_parser = secret
    )]
    private_key: Option<SecretString>,
    /// Write the simulator's public key (what the worker's ALIPAY_PUBLIC_KEY must be) here.
    #[arg(long)]
    public_key_out: Option<PathBuf>,
    /// Start with this fault plan (JSON, for example '{"http_502":0.05,"latency_ms":100}');
    /// change it at run time with PUT /sim/faults.
    #[arg(long)]
    faults: Option<String>,
    /// Send payment notifications here, as Alipay does (for example
    /// http://127.0.0.1:8081/notify/alipay); change with PUT /sim/notify.
    #[arg(long, env = "SIM_NOTIFY_URL")]
    notify_url: Option<String>,
    /// Multiplies Alipay's resend intervals (4m, 10m, 10m, 1h, 2h, 6h, 15h); 0.01 runs
    /// them a hundred times faster.
    #[arg(long, default_value_t = 1.0)]
    notify_time_factor: f64,
}

/// A secret flag value: held so that no `Debug` or error prints it.
fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let app_public_key = RsaPublicKey::parse(&key_material(
        "--app-public-key",
        Some(&args.app_public_key),
        "",
    )?)
    .context("--app-public-key")?;
    let sim_private_key = match &args.private_key {
        Some(text) => Some(
            RsaPrivateKey::parse(&key_material(
                "--private-key",
                Some(text.expose_secret()),
                "",
            )?)
            .context("--private-key")?,
        ),
        None => None,
    };
    let running = sim::start(SimConfig {
        listen: args.listen,
        app_id: args.app_id,
        app_public_key,
        sim_private_key,
        notify: NotifyPlan {
            url: args.notify_url.clone(),
            time_factor: args.notify_time_factor,
            ..NotifyPlan::default()
        },
        app_private_key: None,
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
    let pem = running.public_key().to_spki_pem();
    if let Some(path) = &args.public_key_out {
        std::fs::write(path, &pem).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("gateway simulator listening on {}", running.base_url());
    println!("its public key (set ALIPAY_PUBLIC_KEY to this, or GET /sim/public-key):\n{pem}");
    let stop = shutdown_on_signal();
    running.run_until(stop.cancelled_owned()).await?;
    Ok(ExitCode::SUCCESS)
}
