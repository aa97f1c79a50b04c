//! `order-closer reconcile ...`: the operator's tools. Exit codes for cron: 0 nothing
//! needed fixing; 3 something needed fixing and was fixed (or would be, in a dry run);
//! 4 something needs an operator or a later run; 1 the command failed.

use secrecy::ExposeSecret;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use order_closer::App;
use order_closer::broker::publisher::Publisher;
use order_closer::broker::{self, timed};
use order_closer::config::{Settings, parse_duration};
use order_closer::db::outbox::Claim;
use order_closer::db::{self, anomalies};
use order_closer::decide::refund::RefundRequestResult;
use order_closer::decide::{Decider, Mode};
use order_closer::gateway::quota::Priority;
use order_closer::money;
use order_closer::reconcile::bill as bill_reconcile;
use order_closer::reconcile::overdue::{self, OverdueOptions};
use order_closer::reconcile::parked::{self, ParkedAction};
use order_closer::reconcile::refund;
use order_closer::reconcile::{Finding, Verdict};
use order_closer::relay::Relay;
use order_closer::text::printable;
use serde::Serialize;

/// `reconcile` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReconcileCommand {
    /// Decide orders still NEW past their deadline (message lost, parked, never sent).
    Overdue(OverdueArgs),
    /// List the parking queue; --requeue decides them again, --discard removes them.
    Parked(ParkedArgs),
    /// Diff the gateway's daily trade bill against the database.
    Bill(BillArgs),
    /// List recorded anomalies (paid after close, amount mismatch, ...).
    Anomalies(AnomaliesArgs),
}

/// Flags of `reconcile bill`.
#[derive(Debug, Args)]
pub struct BillArgs {
    /// The bill's day (China time), YYYY-MM-DD.
    #[arg(long)]
    date: NaiveDate,
    /// The gateway whose bill it is (its orders are compared; the others are not); may be
    /// left out when one configured gateway has a bill.
    #[arg(long)]
    channel: Option<String>,
    /// Read this downloaded bill instead of fetching it from the gateway.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Mark PAID the NEW orders the bill shows paid, once the gateway confirms each
    /// (anomalies the gateway confirms are recorded either way).
    #[arg(long)]
    apply: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A table for people.
    Text,
    /// One JSON document for machines.
    Json,
}

/// Flags of `reconcile overdue`.
#[derive(Debug, Args)]
pub struct OverdueArgs {
    /// Only orders whose deadline passed at least this long ago (the grace period).
    #[arg(long, default_value = "5m", value_parser = parse_grace)]
    older_than: Duration,
    /// Only this channel.
    #[arg(long)]
    channel: Option<String>,
    /// Stop after this many orders.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Orders decided at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    concurrency: u32,
    /// Say what would be done; only query the gateway, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Flags of `reconcile parked`.
#[derive(Debug, Args)]
pub struct ParkedArgs {
    /// Decide each parked order again; messages whose order ends settled are removed.
    #[arg(long, conflicts_with = "discard")]
    requeue: bool,
    /// Remove the parked messages (with an audit row each); needs --yes.
    #[arg(long)]
    discard: bool,
    /// Confirms --discard.
    #[arg(long)]
    yes: bool,
    /// Say what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Most messages to look at.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Flags of `reconcile anomalies`.
#[derive(Debug, Args)]
pub struct AnomaliesArgs {
    /// Refund this order's payment after close, or its second payment (its out_trade_no),
    /// instead of listing: the gateway is asked first, and only a trade it reports paid is
    /// refunded, never the trade a PAID order was paid through.
    #[arg(long, value_name = "ORDER")]
    refund: Option<String>,
    /// With --refund: ask the gateway and say what would be refunded; change nothing.
    #[arg(long, requires = "refund")]
    dry_run: bool,
    /// Only this kind (amount_mismatch, paid_after_close, paid_missing_from_bill,
    /// refunded_before_deadline, duplicate_payment).
    #[arg(long, value_parser = |s: &str| s.parse::<anomalies::AnomalyKind>())]
    kind: Option<anomalies::AnomalyKind>,
    /// Most rows to show.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    limit: i64,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" || text.trim() == "0s" {
        return Ok(Duration::ZERO);
    }
    parse_duration("--older-than", text).map_err(|e| e.to_string())
}

/// Runs a `reconcile` subcommand.
pub async fn run(settings: Settings, cmd: ReconcileCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReconcileCommand::Overdue(args) => run_overdue(&settings, args).await,
        ReconcileCommand::Parked(args) => run_parked(&settings, args).await,
        ReconcileCommand::Bill(args) => run_bill(&settings, args).await,
        ReconcileCommand::Anomalies(args) => run_anomalies(&settings, args).await,
    }
}

/// Publishes the events this run's decisions left in the outbox (the workers' relay
/// would too, later); a broker that cannot be reached only earns a warning.
async fn announce(settings: &Settings, decider: &Decider) {
    let result = async {
        let (connection, publisher) = open_publisher(settings).await?;
        let relay = Relay::new(publisher);
        let mut conn = db::conn(decider.pool()).await?;
        let claim = Claim {
            grace: settings.worker.outbox.grace,
            limit: 10_000,
        };
        let published = relay.flush(&mut conn, claim).await?;
        let _ = connection.close(200, "done".into()).await;
        anyhow::Ok(published)
    }
    .await;
    if let Err(e) = result {
        eprintln!("warning: events not published now ({e:#}); a worker's relay will publish them");
    }
}

/// A confirm-mode publisher on a connection of its own, the topology declared.
async fn open_publisher(settings: &Settings) -> anyhow::Result<(lapin::Connection, Publisher)> {
    let connection = broker::connect_configured(&settings.broker, "order-closer reconcile").await?;
    let topology = Arc::new(settings.broker.topology.clone());
    let publisher = Publisher::open(&connection, topology.clone()).await?;
    topology.declare(publisher.channel()).await?;
    Ok((connection, publisher))
}

async fn run_bill(settings: &Settings, args: BillArgs) -> anyhow::Result<ExitCode> {
    let decider = decider(settings)?;
    let gateways = decider.gateways();
    let billed: Vec<&str> = gateways
        .channels()
        .into_iter()
        .filter(|c| gateways.bill_source(c).is_some())
        .collect();
    let channel = match (&args.channel, billed.as_slice()) {
        (Some(channel), _) => channel.clone(),
        (None, [only]) => (*only).to_owned(),
        (None, _) => anyhow::bail!(
            "--channel is needed: the configured gateways with a bill are {}",
            billed.join(", ")
        ),
    };
    let Some(source) = gateways.bill_source(&channel) else {
        anyhow::bail!(
            "--channel {channel:?}: no bill comes from this channel (channels with a bill: {})",
            billed.join(", ")
        );
    };
    bill_reconcile::check_billable(args.date, chrono::Utc::now(), source.calendar())
        .map_err(|why| anyhow::anyhow!("--date: {why}"))?;
    // Read whole, checked to be ours and of that day (a bill of another merchant or day
    // would turn its payments into ours), before the database is touched.
    let bill = match &args.file {
        Some(path) => {
            let bytes = order_closer::files::read_capped(path, source.max_file_bytes())
                .context("--file")?;
            let name = path.display().to_string();
            bill_reconcile::load(source.as_ref(), args.date, Some((&bytes, &name))).await?
        }
        None => bill_reconcile::load(source.as_ref(), args.date, None).await?,
    };
    db::migrate(settings.database.url.expose_secret())
        .await
        .context("checking the database")?;
    let report = bill_reconcile::reconcile(&decider, &channel, &bill, args.apply).await?;
    announce(settings, &decider).await;
    if args.format == Format::Json {
        print_json(&report)?;
    } else {
        print!("{}", report.to_text());
    }
    Ok(exit(report.finding))
}

/// The decider the worker would use, signing audit rows as the reconcile command. Its
/// gateway requests are bulk work on the merchant accounts' quotas: they leave the burst
/// to the workers' deadlines.
fn decider(settings: &Settings) -> anyhow::Result<Decider> {
    let app = App::build(settings.clone()).with_priority(Priority::Bulk);
    Ok(app.decider(app.pool()?, super::actor("reconcile"))?)
}

fn mode(dry_run: bool) -> Mode {
    if dry_run { Mode::DryRun } else { Mode::Apply }
}

fn progress_bar(len: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos} orders {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn exit(finding: Finding) -> ExitCode {
    ExitCode::from(finding.exit_code())
}

async fn run_overdue(settings: &Settings, args: OverdueArgs) -> anyhow::Result<ExitCode> {
    let decider = decider(settings)?;
    db::migrate(settings.database.url.expose_secret())
        .await
        .context("checking the database")?;
    let options = OverdueOptions {
        older_than: args.older_than,
        channel: args.channel,
        limit: args.limit,
        concurrency: args.concurrency as usize,
        mode: mode(args.dry_run),
    };
    // An order the sweep parks needs its parked message; without a broker it is given
    // back to the janitor instead, which parks it.
    let parking = if args.dry_run {
        None
    } else {
        match open_publisher(settings).await {
            Ok(parking) => Some(parking),
            Err(e) => {
                eprintln!(
                    "warning: no broker ({e:#}); an order that must be parked is left to a worker's janitor"
                );
                None
            }
        }
    };
    let bar = progress_bar(args.limit);
    let report = overdue::sweep(&decider, &options, parking.as_ref().map(|(_, p)| p), |n| {
        bar.set_position(n)
    })
    .await?;
    bar.finish_and_clear();
    if let Some((connection, _)) = parking {
        let _ = connection.close(200, "done".into()).await;
    }
    if !args.dry_run {
        announce(settings, &decider).await;
    }
    if args.format == Format::Json {
        print_json(&report)?;
        return Ok(exit(report.finding));
    }
    println!(
        "{}overdue orders (NEW, deadline before {}): {}",
        if report.dry_run { "[dry run] " } else { "" },
        report.cutoff.to_rfc3339(),
        report.scanned
    );
    if !report.orders.is_empty() {
        println!(
            "\n{:<24} {:<25} {:<24} detail",
            "out_trade_no", "deadline", "verdict"
        );
        for line in &report.orders {
            println!(
                "{:<24} {:<25} {:<24} {}",
                printable(&line.out_trade_no),
                line.deadline.format("%Y-%m-%d %H:%M:%S%.3f"),
                verdict_text(line.verdict),
                printable(&line.detail)
            );
        }
        if report.scanned as usize > report.orders.len() {
            println!(
                "... and {} more",
                report.scanned as usize - report.orders.len()
            );
        }
    }
    println!("\nverdict                  orders");
    for (verdict, n) in &report.counts {
        println!("{:<24} {n:>7}", verdict_text(*verdict));
    }
    Ok(exit(report.finding))
}

async fn run_parked(settings: &Settings, args: ParkedArgs) -> anyhow::Result<ExitCode> {
    if args.discard && !args.yes && !args.dry_run {
        anyhow::bail!(
            "--discard removes parked messages for good: add --yes to confirm (or --dry-run to see them)"
        );
    }
    let action = match (args.requeue, args.discard) {
        (true, _) => ParkedAction::Requeue,
        (_, true) => ParkedAction::Discard,
        _ => ParkedAction::List,
    };
    let decider = decider(settings)?;
    let (connection, publisher) = open_publisher(settings)
        .await
        .context("connecting to RabbitMQ")?;
    let channel = timed("open channel", connection.create_channel()).await?;
    let actor = format!("reconcile:{}", std::process::id());
    let report = parked::run(
        &channel,
        &publisher,
        &decider,
        action,
        mode(args.dry_run),
        args.limit as usize,
        &actor,
    )
    .await?;
    let _ = connection.close(200, "done".into()).await;
    if !args.dry_run {
        announce(settings, &decider).await;
    }
    if args.format == Format::Json {
        print_json(&report)?;
        return Ok(exit(report.finding));
    }
    println!(
        "{}parked messages: {} (removed {})",
        if report.dry_run { "[dry run] " } else { "" },
        report.messages,
        report.removed
    );
    if !report.lines.is_empty() {
        println!(
            "\n{:<24} {:<22} {:>8} {:<26} {:<18} last error",
            "out_trade_no", "reason", "attempts", "first seen", "result"
        );
        for line in &report.lines {
            let result = match (line.verdict, line.removed, line.stale) {
                (_, true, _) if action == ParkedAction::Discard => "discarded".to_owned(),
                (Some(v), removed, _) => format!(
                    "{}{}",
                    verdict_text(v),
                    if removed { ", removed" } else { "" }
                ),
                (None, _, Some(status)) => format!("stale: order {status}"),
                (None, _, None) => "kept".to_owned(),
            };
            // The headers are whatever the parking publisher wrote: print them escaped.
            let cut = line
                .oversized_bytes
                .map(|n| format!(" [a body of {n} bytes, held cut]"))
                .unwrap_or_default();
            println!(
                "{:<24} {:<22} {:>8} {:<26} {:<18} {}{cut}",
                printable(line.out_trade_no.as_deref().unwrap_or("(unreadable)")),
                printable(&line.reason),
                printable(&line.attempts),
                printable(&line.first_seen),
                result,
                printable(&line.last_error)
            );
        }
    }
    Ok(exit(report.finding))
}

async fn run_anomalies(settings: &Settings, args: AnomaliesArgs) -> anyhow::Result<ExitCode> {
    if let Some(order) = &args.refund {
        return run_refund(settings, order, args.dry_run, args.format).await;
    }
    let mut conn = db::connect(settings.database.url.expose_secret()).await?;
    let rows = anomalies::list(&mut conn, args.kind, args.limit).await?;
    let open_refunds = db::refunds::open(&mut conn, args.limit).await?;
    if args.format == Format::Json {
        print_json(&serde_json::json!({ "anomalies": rows, "open_refunds": open_refunds }))?;
    } else {
        println!("anomalies: {}", rows.len());
        for a in &rows {
            println!(
                "#{:<6} {} {:<24} {:<24} {}",
                a.id,
                a.created_at.format("%Y-%m-%d %H:%M:%S"),
                a.kind,
                printable(&a.out_trade_no),
                printable(&a.detail)
            );
        }
        println!("refunds not yet succeeded: {}", open_refunds.len());
        for r in &open_refunds {
            println!(
                "{:<24} {:<10} {:>12} attempts {:<3} {}",
                printable(&r.out_trade_no),
                r.status().as_str(),
                r.amount_minor
                    .map_or_else(|| "-".to_owned(), money::format_minor),
                r.attempts,
                printable(r.last_error.as_deref().unwrap_or(""))
            );
        }
    }
    Ok(exit(if rows.is_empty() && open_refunds.is_empty() {
        Finding::Clean
    } else {
        Finding::NeedsAttention
    }))
}

/// `reconcile anomalies --refund`: exit 0 when requested (or done before), 2 when there
/// is nothing to refund, 1 when the gateway or the database could not be used.
async fn run_refund(
    settings: &Settings,
    out_trade_no: &str,
    dry_run: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let decider = decider(settings)?;
    let report = match refund::request(&decider, out_trade_no, dry_run).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: refund of {}: {e}", printable(out_trade_no));
            return Ok(ExitCode::from(if e.is_transient() { 1 } else { 2 }));
        }
    };
    if format == Format::Json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let paid = report.paid_minor.map_or_else(
        || "no payment now (the refund sent before is sent again)".to_owned(),
        |p| format!("{} paid", money::format_minor(p)),
    );
    match &report.result {
        RefundRequestResult::WouldRequest {
            amount_minor,
            out_request_no,
        } => println!(
            "dry run: the gateway reports {paid} on closed order {}; would refund {} (request {out_request_no})",
            printable(&report.out_trade_no),
            money::format_minor(*amount_minor)
        ),
        RefundRequestResult::Requested {
            amount_minor,
            out_request_no,
        } => println!(
            "refund of {} requested for order {} (request {out_request_no}); the worker sends it and announces order.refunded",
            money::format_minor(*amount_minor),
            printable(&report.out_trade_no)
        ),
        RefundRequestResult::AlreadyRefunded { out_request_no } => println!(
            "order {} was refunded before (request {out_request_no}); nothing to do",
            printable(&report.out_trade_no)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn verdict_text(v: Verdict) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{v:?}"))
}
