//! What the notify tests read back: counters from the endpoint's metrics, the
//! simulator's query count, and the "paid" a forger would claim.

use chrono::{DateTime, Utc};
use order_closer_engine::notify::NotifyOutcome;
use order_closer_engine::notify::hints::Refusal;
use order_closer_sim::{SimTradeStatus, SimTradeView};

use super::TestEnv;

/// The value of `order_closer_{name}{{{label}="{value}"}}` in the metrics text (0 when
/// absent).
pub fn counter(metrics: &str, name: &str, label: &str, value: &str) -> u64 {
    let needle = format!("order_closer_{name}{{{label}=\"{value}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Notifications counted with `outcome`.
pub fn outcomes(metrics: &str, outcome: NotifyOutcome) -> u64 {
    counter(metrics, "notifications_total", "outcome", outcome.as_str())
}

/// Untrusted notifications that did not become a query, for `refusal`.
pub fn refused_hints(metrics: &str, refusal: Refusal) -> u64 {
    counter(metrics, "hints_refused_total", "reason", refusal.as_str())
}

/// Queries the simulator has answered, every gateway together.
pub async fn queries(env: &TestEnv) -> u64 {
    env.buyers.stats().await.unwrap().queries
}

/// A paid trade as the buyer would claim it (a forgery's content).
pub fn claimed_paid(waiting: SimTradeView, at: DateTime<Utc>) -> SimTradeView {
    SimTradeView {
        status: SimTradeStatus::TradeSuccess,
        paid_at: Some(at),
        ..waiting
    }
}
