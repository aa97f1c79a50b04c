//! `order-closer orders create|show|cancel|extend`: the library calls from the shell, and
//! an order's status with its decision history.

use secrecy::ExposeSecret;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use order_closer::App;
use order_closer::closer::{Cancelled, ChangeError, Closer, Due, MAX_TIME_TO_PAY, NewOrder};
use order_closer::config::{Settings, parse_duration};
use order_closer::db::{self, decisions, orders};
use order_closer::money;

/// `orders` subcommands.
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// Create an order and schedule its close (as a shop's backend would).
    Create(CreateArgs),
    /// Show an order's status and its decision history.
    Show(ShowArgs),
    /// Cancel an order now: a worker closes it at the gateway first (or finds it paid).
    /// Exit code 0 closed, 3 paid (deliver or refund), 4 not decided yet, 2 no such order.
    Cancel(CancelArgs),
    /// Give the buyer more time: move a NEW order's deadline later.
    Extend(ExtendArgs),
}

/// Flags of `orders cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The merchant order number.
    out_trade_no: String,
    /// How long to wait for the worker's decision (at most 1h).
    #[arg(long, default_value = "30s", value_parser = |t: &str| flag_duration("--wait", t, MAX_WAIT))]
    wait: Duration,
}

/// Flags of `orders extend`.
#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// The merchant order number.
    out_trade_no: String,
    /// The new deadline as RFC 3339.
    #[arg(long, conflicts_with = "by", required_unless_present = "by")]
    deadline: Option<DateTime<Utc>>,
    /// Move the deadline this much later, for example 10m.
    #[arg(long, value_parser = |t: &str| flag_duration("--by", t, MAX_TIME_TO_PAY))]
    by: Option<Duration>,
}

/// Flags of `orders create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The merchant order number.
    #[arg(long)]
    out_trade_no: String,
    /// Amount as a decimal, for example 12.34.
    #[arg(long, value_parser = parse_amount)]
    amount: i64,
    /// Time to pay, for example 30s, 15m.
    #[arg(
        long,
        value_parser = |t: &str| flag_duration("--close-after", t, MAX_TIME_TO_PAY),
        conflicts_with = "deadline",
        required_unless_present = "deadline"
    )]
    close_after: Option<Duration>,
    /// Payment deadline as RFC 3339, for example 2026-11-22T10:00:00+08:00.
    #[arg(long)]
    deadline: Option<DateTime<Utc>>,
    /// The gateway (the channel name).
    #[arg(long, default_value = DEFAULT_CHANNEL)]
    channel: String,
    /// Currency code (default: the channel's own, CNY for Alipay and WeChat Pay).
    #[arg(long)]
    currency: Option<String>,
    /// The gateway's own reference of the trade, for a gateway that finds trades by it.
    #[arg(long)]
    gateway_ref: Option<String>,
}

/// The first gateway of the registry.
const DEFAULT_CHANNEL: &str = order_closer::gateway::RULES[0].channel;

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For machines.
    Json,
}

/// Flags of `orders show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The merchant order number.
    out_trade_no: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

fn parse_amount(text: &str) -> Result<i64, String> {
    match money::parse_minor(text) {
        Ok(minor) if minor > 0 => Ok(minor),
        Ok(_) => Err("the amount must be positive".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Longest `orders cancel --wait`: a worker decides within seconds, or within the retry
/// steps (some ten minutes by default) when the gateway does not answer.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// A duration flag: above zero and at most `max`; the error names the flag.
fn flag_duration(flag: &'static str, text: &str, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(flag, text).map_err(|e| e.to_string())?;
    if d > max {
        let days = max.as_secs() / 86_400;
        let max = if days > 0 && max == Duration::from_secs(days * 86_400) {
            format!("{days} days")
        } else {
            humantime::format_duration(max).to_string()
        };
        return Err(format!("{flag}={text:?} is invalid: at most {max}"));
    }
    Ok(d)
}

/// Runs an `orders` subcommand.
pub async fn run(settings: Settings, cmd: OrdersCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OrdersCommand::Create(args) => create(settings, args).await,
        OrdersCommand::Show(args) => show(settings, args).await,
        OrdersCommand::Cancel(args) => cancel(settings, args).await,
        OrdersCommand::Extend(args) => extend(settings, args).await,
    }
}

/// A closer; without a broker, one that leaves publishing to the worker's relay.
async fn closer(settings: &Settings) -> anyhow::Result<Closer> {
    let app = App::build(settings.clone());
    match app.closer().await {
        Ok(closer) => Ok(closer),
        Err(order_closer::closer::ConnectError::Broker(e)) => {
            eprintln!(
                "warning: broker unavailable ({e}); the worker's relay will schedule the close"
            );
            Ok(app.closer_on(db::pool(settings.database.url.expose_secret(), 2)?, None))
        }
        Err(e) => Err(e).context("connecting"),
    }
}

async fn cancel(settings: Settings, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let closer = closer(&settings).await?;
    let result = closer
        .cancel_order_within(&args.out_trade_no, args.wait)
        .await;
    closer.shutdown().await;
    let no = &args.out_trade_no;
    match result {
        Ok(Cancelled::Closed) => {
            println!("{no}: CLOSED (the buyer can no longer pay)");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Cancelled::ClosedBeforeScan { qr_valid_until }) => {
            println!(
                "{no}: CLOSED; the buyer had not scanned, so a QR code already shown stays \
                 scannable until {}: a payment by then is caught as paid_after_close",
                qr_valid_until.to_rfc3339()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Cancelled::Paid) => {
            println!("{no}: PAID: the buyer had paid; deliver the goods or refund");
            Ok(ExitCode::from(3))
        }
        Ok(Cancelled::Pending) => {
            println!(
                "{no}: cancel requested; no worker decided within {:?} (a worker will: see `orders show`)",
                args.wait
            );
            Ok(ExitCode::from(4))
        }
        Err(ChangeError::NotFound(_)) => {
            eprintln!("no order with out_trade_no {no:?}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

async fn extend(settings: Settings, args: ExtendArgs) -> anyhow::Result<ExitCode> {
    let pool = db::pool(settings.database.url.expose_secret(), 2)?;
    let closer = App::build(settings.clone()).closer_on(pool.clone(), None);
    let to = match (args.deadline, args.by) {
        (Some(at), _) => at,
        (None, Some(by)) => {
            let mut conn = db::conn(&pool).await?;
            let Some(order) = orders::find_by_out_trade_no(&mut conn, &args.out_trade_no).await?
            else {
                eprintln!("no order with out_trade_no {:?}", args.out_trade_no);
                return Ok(ExitCode::from(2));
            };
            order_closer::time::later(order.deadline, by)
        }
        (None, None) => anyhow::bail!("give --deadline or --by"),
    };
    match closer.extend_deadline(&args.out_trade_no, to).await {
        Ok(order) => {
            println!(
                "{}: deadline moved to {}",
                order.out_trade_no,
                order.deadline.to_rfc3339()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(ChangeError::NotFound(no)) => {
            eprintln!("no order with out_trade_no {no:?}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

async fn create(settings: Settings, args: CreateArgs) -> anyhow::Result<ExitCode> {
    let due = match (args.close_after, args.deadline) {
        (Some(after), _) => Due::After(after),
        (None, Some(at)) => Due::At(at),
        (None, None) => anyhow::bail!("give --close-after or --deadline"),
    };
    let closer = closer(&settings).await?;
    let mut new = NewOrder::new(args.channel, args.out_trade_no, args.amount, due);
    if let Some(currency) = args.currency {
        new = new.in_currency(currency);
    }
    if let Some(gateway_ref) = args.gateway_ref {
        new = new.with_gateway_ref(gateway_ref);
    }
    let created = closer.create_order(new).await?;
    // Let the background delete of the outbox row finish before exiting, or the relay
    // would publish this close message a second time.
    closer.shutdown().await;
    println!(
        "created order {} ({}) amount {} {}, deadline {}, close {}",
        created.order.id,
        created.order.out_trade_no,
        money::format_minor(created.order.amount_minor),
        created.order.currency,
        created.order.deadline.to_rfc3339(),
        if created.published {
            "scheduled"
        } else {
            "left to the outbox relay"
        }
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(settings: Settings, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let mut conn = db::connect(settings.database.url.expose_secret()).await?;
    let Some(order) = orders::find_by_out_trade_no(&mut conn, &args.out_trade_no).await? else {
        eprintln!("no order with out_trade_no {:?}", args.out_trade_no);
        return Ok(ExitCode::from(2));
    };
    let history = decisions::for_order(&mut conn, order.id).await?;
    let trades = db::trades::for_order(&mut conn, order.id).await?;
    match args.format {
        Format::Json => {
            let value =
                serde_json::json!({ "order": order, "trades": trades, "decisions": history });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Format::Text => {
            println!("order        {} ({})", order.out_trade_no, order.id);
            println!("status       {}", order.status());
            println!(
                "amount       {} {}",
                money::format_minor(order.amount_minor),
                order.currency
            );
            println!("deadline     {}", order.deadline.to_rfc3339());
            if let Some(at) = order.paid_at {
                println!("paid at      {}", at.to_rfc3339());
            }
            if let Some(at) = order.closed_at {
                println!(
                    "closed at    {} ({})",
                    at.to_rfc3339(),
                    order.close_reason.as_deref().unwrap_or("-")
                );
            }
            if let Some(no) = &order.gateway_trade_no {
                println!("gateway no   {no}");
            }
            println!("trades       {}", trades.len());
            for t in &trades {
                println!(
                    "  #{} {} {} {}{}{}",
                    t.id,
                    t.channel,
                    t.out_trade_no,
                    t.status,
                    t.gateway_trade_no
                        .as_deref()
                        .map_or(String::new(), |no| format!(" gateway no {no}")),
                    t.close_reason
                        .as_deref()
                        .map_or(String::new(), |r| format!(" ({r})")),
                );
            }
            println!("decisions    {}", history.len());
            for d in &history {
                println!(
                    "  #{} {} attempt {} {} by {}: {}",
                    d.id,
                    d.decided_at.to_rfc3339(),
                    d.attempt,
                    d.outcome,
                    d.actor,
                    d.detail
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
