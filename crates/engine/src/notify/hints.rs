//! The budget of gateway queries that untrusted notifications may cause: forged traffic
//! must not spend the gateway's quota or our signing CPU. A query is asked only about an
//! order we have, named by a notification addressed to our merchant (the caller checks
//! both), at most one at a time per order, no sooner than [`HintBudget::spacing`] after
//! the last one about the same order ended, at most [`HintBudget::concurrent`] at once in
//! all, and at most [`HintBudget::rate`] a second in all. That last bound is what keeps
//! forged forms naming many real order numbers (each order once) from spending the
//! gateway's rate limit, which the workers' deadline queries share: 2,000 of them made
//! 4,034 queries in 20 s before it. Memory is bounded: at most
//! [`MAX_TRACKED`] orders are remembered, and a full table refuses new hints until old
//! entries age out.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use order_closer_gateway::rate_limit::Limiter;

/// Most orders remembered at once.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
enum Entry {
    InFlight,
    Ended(Instant),
}

/// Why an untrusted notification did not become a gateway query (the label of
/// `order_closer_hints_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// It does not name our merchant (checked by the gateway's verifier).
    NotOurMerchant,
    /// A query about this order runs, or ended less than the spacing ago.
    TooSoon,
    /// The concurrent budget, or the table, is full.
    Busy,
    /// The per-second budget of hint queries is spent.
    RateLimited,
}

impl Refusal {
    /// Every refusal (metrics start them at 0).
    pub const ALL: [Self; 4] = [
        Self::NotOurMerchant,
        Self::TooSoon,
        Self::Busy,
        Self::RateLimited,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOurMerchant => "not_our_merchant",
            Self::TooSoon => "too_soon",
            Self::Busy => "busy",
            Self::RateLimited => "rate_limited",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The budget.
#[derive(Debug)]
pub struct HintBudget {
    entries: Mutex<HashMap<String, Entry>>,
    queries: Arc<Semaphore>,
    per_second: Limiter,
    spacing: Duration,
    concurrent: usize,
    rate: NonZeroU32,
}

/// A granted query; dropping it records its end.
#[derive(Debug)]
pub struct Grant {
    budget: Arc<HintBudget>,
    order: String,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.budget.entries.lock() {
            entries.insert(
                std::mem::take(&mut self.order),
                Entry::Ended(Instant::now()),
            );
        }
    }
}

impl HintBudget {
    /// At most one query per order every `spacing`, `concurrent` at once in all, and
    /// `rate` a second in all (as many at once after a pause).
    pub fn new(spacing: Duration, concurrent: usize, rate: NonZeroU32) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            queries: Arc::new(Semaphore::new(concurrent.max(1))),
            per_second: Limiter::new(rate, rate),
            spacing,
            concurrent: concurrent.max(1),
            rate,
        })
    }

    /// The time between two queries about one order.
    pub fn spacing(&self) -> Duration {
        self.spacing
    }

    /// Queries in flight at most.
    pub fn concurrent(&self) -> usize {
        self.concurrent
    }

    /// Queries a second at most.
    pub fn rate(&self) -> NonZeroU32 {
        self.rate
    }

    /// Asks to query the gateway about `order`.
    pub fn try_begin(self: &Arc<Self>, order: &str) -> Result<Grant, Refusal> {
        let mut entries = self.entries.lock().map_err(|_| Refusal::Busy)?;
        match entries.get(order) {
            Some(Entry::InFlight) => return Err(Refusal::TooSoon),
            Some(Entry::Ended(at)) if at.elapsed() < self.spacing => {
                return Err(Refusal::TooSoon);
            }
            _ => {}
        }
        if entries.len() >= MAX_TRACKED && !entries.contains_key(order) {
            let spacing = self.spacing;
            entries.retain(|_, e| match e {
                Entry::InFlight => true,
                Entry::Ended(at) => at.elapsed() < spacing,
            });
            if entries.len() >= MAX_TRACKED {
                return Err(Refusal::Busy);
            }
        }
        let permit = self
            .queries
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)?;
        // Last: a token is spent only on a query that goes out.
        if !self.per_second.try_acquire() {
            return Err(Refusal::RateLimited);
        }
        entries.insert(order.to_owned(), Entry::InFlight);
        Ok(Grant {
            budget: Arc::clone(self),
            order: order.to_owned(),
            _permit: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLENTY: NonZeroU32 = NonZeroU32::new(1000).unwrap();

    #[test]
    fn one_in_flight_per_order_then_a_pause_and_a_cap_in_all() {
        let budget = HintBudget::new(Duration::from_millis(200), 2, PLENTY);
        let a = budget.try_begin("A").unwrap();
        assert_eq!(budget.try_begin("A").unwrap_err(), Refusal::TooSoon);
        let b = budget.try_begin("B").unwrap();
        assert_eq!(budget.try_begin("C").unwrap_err(), Refusal::Busy);
        drop(a);
        // Ended just now: still too soon for A, but C may go.
        assert_eq!(budget.try_begin("A").unwrap_err(), Refusal::TooSoon);
        let c = budget.try_begin("C").unwrap();
        drop((b, c));
        std::thread::sleep(Duration::from_millis(250));
        assert!(budget.try_begin("A").is_ok());
    }

    /// Forms naming many orders, each once, are bounded in all per second; a
    /// refused hint spends no token, and the budget refills with time (the clock is
    /// tokio's, paused: nothing here depends on the machine's speed).
    #[tokio::test(start_paused = true)]
    async fn many_orders_each_once_are_bounded_per_second_in_all() {
        let rate = NonZeroU32::new(3).unwrap();
        let budget = HintBudget::new(Duration::from_secs(5), 100, rate);
        let granted: Vec<_> = (0..10)
            .filter_map(|i| budget.try_begin(&format!("O{i}")).ok())
            .collect();
        assert_eq!(granted.len(), 3, "a second's worth at once, then none");
        assert_eq!(budget.try_begin("O7").unwrap_err(), Refusal::RateLimited);
        drop(granted);
        tokio::time::advance(Duration::from_millis(340)).await;
        assert!(
            budget.try_begin("O8").is_ok(),
            "a third of a second later: one"
        );
        assert_eq!(budget.try_begin("O9").unwrap_err(), Refusal::RateLimited);
        // Refused for the rate, an order was not marked as asked about.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.try_begin("O9").is_ok());
    }
}
