//! The budget of gateway queries that untrusted notifications may cause: forged traffic
//! must not spend the gateway's quota or our signing CPU. A query is asked only about an
//! order we have (the caller checks), at most one at a time per order, no sooner than
//! [`HintBudget::spacing`] after the last one about the same order ended, and at most
//! [`HintBudget::concurrent`] at once in all. Memory is bounded: at most
//! [`MAX_TRACKED`] orders are remembered, and a full table refuses new hints until old
//! entries age out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most orders remembered at once.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
enum Entry {
    InFlight,
    Ended(Instant),
}

/// Why a hint query was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A query about this order runs, or ended less than the spacing ago.
    TooSoon,
    /// The concurrent budget, or the table, is full.
    Busy,
}

/// The budget.
#[derive(Debug)]
pub struct HintBudget {
    entries: Mutex<HashMap<String, Entry>>,
    queries: Arc<Semaphore>,
    spacing: Duration,
    concurrent: usize,
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
    /// At most one query per order every `spacing`, `concurrent` in all.
    pub fn new(spacing: Duration, concurrent: usize) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            queries: Arc::new(Semaphore::new(concurrent.max(1))),
            spacing,
            concurrent: concurrent.max(1),
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

    #[test]
    fn one_in_flight_per_order_then_a_pause_and_a_cap_in_all() {
        let budget = HintBudget::new(Duration::from_millis(200), 2);
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
}
