//! Command-line interface: argument parsing and dispatch to one module per command.

mod bench;
mod demo;
mod keygen;
mod notify;
mod orders;
mod reconcile;
mod sim;
mod worker;

use secrecy::ExposeSecret;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use order_closer::config::Settings;
use order_closer::{db, telemetry};

/// Closes unpaid orders at their deadline after asking the payment gateway.
///
/// Configuration comes from environment variables (see docs/operations.md); flags override
/// the ones they name.
#[derive(Debug, Parser)]
#[command(name = "order-closer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if missing and run the embedded migrations.
    Migrate,
    /// Consume the close queue and decide orders (runs the outbox relay too).
    Worker(worker::WorkerArgs),
    /// Serve the gateways' payment notifications (POST /notify/{channel}).
    Notify(notify::NotifyArgs),
    /// Run the Alipay gateway simulator.
    GatewaySim(sim::SimArgs),
    /// Generate an RSA-2048 application key pair (PEM files).
    Keygen(keygen::KeygenArgs),
    /// Create or inspect orders.
    #[command(subcommand)]
    Orders(orders::OrdersCommand),
    /// Reconcile the database with the gateway (overdue orders, parked messages, anomalies).
    #[command(subcommand)]
    Reconcile(reconcile::ReconcileCommand),
    /// Run the whole product end to end against a simulator and report.
    Demo(demo::DemoArgs),
    Bench(bench::BenchArgs),
}

/// The audit rows' actor for this process: `<role>:<HOSTNAME>:<pid>`.
fn actor(role: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{role}:{host}:{}", std::process::id())
}

/// Runs a command; the exit code is the command's verdict.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env().context("invalid configuration")?;
    // The demo prints its own progress and summary; keep the worker's logs to warnings.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info,lapin=warn",
    };
    telemetry::init(settings.log_format, default_filter)?;
    match cli.command {
        Command::Migrate => {
            let applied = db::migrate(settings.database_url.expose_secret())
                .await
                .context("migrating the database")?;
            println!("migrations applied: {applied}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => worker::run(settings, args).await,
        Command::Notify(args) => notify::run(settings, args).await,
        Command::GatewaySim(args) => sim::run(args).await,
        Command::Keygen(args) => keygen::run(args),
        Command::Orders(cmd) => orders::run(settings, cmd).await,
        Command::Reconcile(cmd) => reconcile::run(settings, cmd).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(&settings, args).await,
    }
}

/// Parses a channel flag: one of the gateways order-closer speaks, or `all` when
/// `all_too`; the error lists the choices.
fn parse_channel(text: &str, all_too: bool) -> Result<String, String> {
    let known: Vec<&str> = order_closer::gateway::rules::channels().collect();
    if (all_too && text == "all") || known.contains(&text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a gateway: give {}{}",
            if all_too { "all or one of " } else { "one of " },
            known.join(", ")
        ))
    }
}
