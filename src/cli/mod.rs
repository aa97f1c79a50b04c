//! Command-line interface: argument parsing and dispatch to one module per command.

#[cfg(feature = "tooling")]
mod demo;
mod keygen;
mod notify;
mod orders;
mod reconcile;
#[cfg(feature = "tooling")]
mod sim;
mod worker;

use secrecy::ExposeSecret;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use order_closer::config::{Settings, Vars};
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
    /// Run the gateway simulator: every payment gateway order-closer speaks, on one port.
    #[cfg(feature = "tooling")]
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
    #[cfg(feature = "tooling")]
    Demo(demo::DemoArgs),
    #[cfg(feature = "tooling")]
    Bench(Box<order_closer_bench::BenchArgs>),
}

/// Parses the command line. A refused one is printed with every secret-looking argument
/// hidden: clap repeats the argument it refuses, and a key pasted as one (a PEM starts
/// with `-`, so it reads as an unknown flag) would otherwise be printed.
pub fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help`, `--version`: printed as they are.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // A refused URL argument is shown without its password, too.
            let message = order_closer::url_secret::redact(&e.render().to_string());
            eprint!("{}", scrub(&message));
            std::process::exit(e.exit_code());
        }
    }
}

/// Arguments longer than this are never repeated in a message (an order number has at
/// most 64 characters; a bare base64 RSA key some 1,600).
const MAX_SHOWN_ARG: usize = 100;

/// `message` (about this process's command line) with every line of every argument that
/// looks like a secret (a PEM, several lines, or over [`MAX_SHOWN_ARG`] characters)
/// hidden, in whole or cut at an `=` as clap cuts `--flag=value`.
pub fn scrub(message: &str) -> String {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    scrub_args(message, &args)
}

fn scrub_args(message: &str, args: &[String]) -> String {
    let mut out = message.to_owned();
    let secret = |value: &&str| {
        value.contains("-----BEGIN") || value.contains(['\n', '\r']) || value.len() > MAX_SHOWN_ARG
    };
    for value in args.iter().map(|a| flag_value(a)).filter(secret) {
        for piece in value.split(['\n', '\r', '=']).map(str::trim) {
            // Shorter pieces (a PEM's last line) cannot be told from words.
            if piece.len() >= 8 {
                out = out.replace(piece, "<not shown>");
            }
        }
    }
    out
}

/// Of `--flag=value`, the value (the flag's name stays readable); any other argument
/// whole.
fn flag_value(arg: &str) -> &str {
    match arg.split_once('=') {
        Some((flag, value))
            if flag.len() > 2
                && flag.starts_with("--")
                && flag[2..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            value
        }
        _ => arg,
    }
}

/// The audit rows' actor for this process: `<role>:<HOSTNAME>:<pid>`.
fn actor(role: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{role}:{host}:{}", std::process::id())
}

/// The log filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,lapin=warn";

/// Runs a command; the exit code is the command's verdict. Each reads what it needs and
/// no more, so that a bad variable of a part it does not use cannot stop it: `keygen`
/// reads no variable, `gateway-sim` only the log format, the rest the whole [`Settings`].
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let vars = Vars::from_env();
    match cli.command {
        // It writes two files and logs nothing.
        Command::Keygen(args) => keygen::run(args),
        // The simulator is not the product: its flags are its configuration.
        #[cfg(feature = "tooling")]
        Command::GatewaySim(args) => {
            let format = order_closer::config::LogFormat::from_vars(&vars)
                .context("invalid configuration")?;
            telemetry::init(format, DEFAULT_FILTER)?;
            sim::run(args).await
        }
        Command::Migrate => {
            let settings = configured(vars, DEFAULT_FILTER)?;
            let applied = db::migrate(settings.database.url.expose_secret())
                .await
                .context("migrating the database")?;
            println!("migrations applied: {applied}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => worker::run(configured(vars, DEFAULT_FILTER)?, args).await,
        Command::Notify(args) => notify::run(configured(vars, DEFAULT_FILTER)?, args).await,
        Command::Orders(cmd) => orders::run(configured(vars, DEFAULT_FILTER)?, cmd).await,
        Command::Reconcile(cmd) => reconcile::run(configured(vars, DEFAULT_FILTER)?, cmd).await,
        // The demo prints its own progress and summary; keep the worker's logs to
        // warnings. Its sandbox reads the same variables again, over its own database
        // schema and queue prefix; read here, a bad one stops it before anything starts.
        #[cfg(feature = "tooling")]
        Command::Demo(args) => {
            configured(vars, "warn")?;
            demo::run(args).await
        }
        #[cfg(feature = "tooling")]
        Command::Bench(args) => {
            let settings = configured(vars, DEFAULT_FILTER)?;
            order_closer_bench::run(&settings.broker, *args).await
        }
    }
}

/// The settings, each section read and checked, with logging set up in their format
/// (`default_filter` when `RUST_LOG` is unset).
fn configured(vars: Vars, default_filter: &str) -> anyhow::Result<Settings> {
    let settings = Settings::from_vars(vars).context("invalid configuration")?;
    telemetry::init(settings.log_format, default_filter)?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const PEM: &str =
        "-----BEGIN PRIVATE KEY-----\nU2VDckV0S2V5TWF0ZXJpYWw=\n-----END PRIVATE KEY-----";

    /// A PEM given as an argument was repeated by clap's error.
    #[test]
    fn a_refused_argument_that_looks_secret_is_not_repeated() {
        let base64 =
            "TUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFD".repeat(3);
        for args in [
            vec!["order-closer", "keygen", PEM],
            vec!["order-closer", "keygen", "--out", PEM],
            vec![
                "order-closer",
                "gateway-sim",
                &format!("--private-key={PEM}"),
            ],
            vec!["order-closer", "keygen", "--out", "x", &base64],
            vec![
                "order-closer",
                "orders",
                "show",
                "X",
                "--key",
                "amqp://u:SeCrEt@h/v",
            ],
        ] {
            let err = Cli::try_parse_from(&args).unwrap_err();
            let raw = err.render().to_string();
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            let shown = scrub_args(&order_closer::url_secret::redact(&raw), &args);
            for secret in [
                "U2VDckV0S2V5TWF0ZXJpYWw",
                "BEGIN PRIVATE",
                "SeCrEt",
                &base64[..40],
            ] {
                assert!(!shown.contains(secret), "{args:?}: {shown}");
            }
            assert!(shown.contains("error:"), "{shown}");
        }
        // Ordinary arguments are still named, and a flag given a long value.
        let args = ["order-closer", "orders", "show", "X", "--bogus"];
        let err = Cli::try_parse_from(args).unwrap_err().render().to_string();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        assert!(scrub_args(&err, &args).contains("--bogus"));
        let faults = format!("--faults={}", "x".repeat(200));
        let shown = scrub_args("--faults: not JSON", &["gateway-sim".into(), faults]);
        assert_eq!(shown, "--faults: not JSON");
    }

    /// clap shows an `env` flag's current value in `--help`; no flag
    /// backed by a variable may (a notify URL may hold a password).
    #[test]
    fn no_help_shows_a_variables_value() {
        fn walk(cmd: &clap::Command) {
            for arg in cmd.get_arguments() {
                if arg.get_env().is_some() {
                    assert!(
                        arg.is_hide_env_values_set(),
                        "{} --{}",
                        cmd.get_name(),
                        arg.get_id()
                    );
                }
            }
            cmd.get_subcommands().for_each(walk);
        }
        walk(&Cli::command());
    }
}
