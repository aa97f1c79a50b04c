//! `order-closer orders create|show`: the library call from the shell, and an order's
//! status with its decision history.

use secrecy::ExposeSecret;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use order_closer::closer::{Closer, Due, NewOrder};
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
    #[arg(long, value_parser = parse_wait, conflicts_with = "deadline", required_unless_present = "deadline")]
    close_after: Option<Duration>,
    /// Payment deadline as RFC 3339, for example 2026-11-22T10:00:00+08:00.
    #[arg(long)]
    deadline: Option<DateTime<Utc>>,
    /// The gateway.
    #[arg(long, default_value = "alipay")]
    channel: String,
    /// Currency code.
    #[arg(long, default_value = "CNY")]
    currency: String,
}

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

fn parse_wait(text: &str) -> Result<Duration, String> {
    parse_duration("--close-after", text).map_err(|e| e.to_string())
}

/// Runs an `orders` subcommand.
pub async fn run(settings: Settings, cmd: OrdersCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        OrdersCommand::Create(args) => create(settings, args).await,
        OrdersCommand::Show(args) => show(settings, args).await,
    }
}

async fn create(settings: Settings, args: CreateArgs) -> anyhow::Result<ExitCode> {
    let due = match (args.close_after, args.deadline) {
        (Some(after), _) => Due::After(after),
        (None, Some(at)) => Due::At(at),
        (None, None) => anyhow::bail!("give --close-after or --deadline"),
    };
    let closer = match Closer::connect(&settings).await {
        Ok(closer) => closer,
        Err(order_closer::closer::ConnectError::Broker(e)) => {
            eprintln!(
                "warning: broker unavailable ({e}); the worker's relay will schedule the close"
            );
            Closer::without_broker(db::pool(settings.database_url.expose_secret(), 2)?)
        }
        Err(e) => return Err(e).context("connecting"),
    };
    let created = closer
        .create_order(NewOrder {
            out_trade_no: args.out_trade_no,
            amount_minor: args.amount,
            currency: args.currency,
            channel: args.channel,
            due,
        })
        .await?;
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
    let mut conn = db::connect(settings.database_url.expose_secret()).await?;
    let Some(order) = orders::find_by_out_trade_no(&mut conn, &args.out_trade_no).await? else {
        eprintln!("no order with out_trade_no {:?}", args.out_trade_no);
        return Ok(ExitCode::from(2));
    };
    let history = decisions::for_order(&mut conn, order.id).await?;
    match args.format {
        Format::Json => {
            let value = serde_json::json!({ "order": order, "decisions": history });
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
            println!("channel      {}", order.channel);
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
