//! Acknowledging deliveries in runs. A finished delivery is not acknowledged on its own:
//! every few milliseconds one `basic.ack(multiple)` covers the longest run of finished
//! deliveries that no unfinished one precedes, and a finished delivery held up behind a
//! slow one for longer than [`HOLD`] is acknowledged singly, so a slow decision never
//! holds the prefetch window.
//!
//! `multiple` acknowledges every outstanding delivery up to a tag, so a delivery stays
//! "open" (blocking the run) until it is finished, or until it has been handed back with
//! a nack; a delivery being handed back is therefore never covered by an ack.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use order_closer_core::broker::timed;

/// How often finished deliveries are acknowledged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// Longest a finished delivery waits behind an unfinished one before it is acknowledged
/// on its own.
pub const HOLD: Duration = Duration::from_millis(50);

/// The acknowledgement state of one consumer channel.
pub struct Acks {
    channel: Channel,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// Delivered and neither finished nor handed back.
    open: BTreeSet<u64>,
    /// Finished, not yet acknowledged, with the moment it finished.
    finished: BTreeMap<u64, Instant>,
}

/// What one flush sends.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Acknowledge every outstanding delivery up to this tag.
    up_to: Option<u64>,
    /// Acknowledge these one by one.
    singles: Vec<u64>,
}

impl State {
    /// Takes what can be acknowledged now (everything finished when `all`).
    fn plan(&mut self, now: Instant, all: bool) -> Plan {
        let first_open = self.open.first().copied();
        let up_to = match first_open {
            Some(open) => self.finished.range(..open).next_back().map(|(t, _)| *t),
            None => self.finished.keys().next_back().copied(),
        };
        if let Some(tag) = up_to {
            self.finished = self.finished.split_off(&(tag + 1));
        }
        let singles: Vec<u64> = self
            .finished
            .iter()
            .filter(|(_, at)| all || now.duration_since(**at) >= HOLD)
            .map(|(t, _)| *t)
            .collect();
        for tag in &singles {
            self.finished.remove(tag);
        }
        Plan { up_to, singles }
    }
}

impl Acks {
    /// Acknowledges on `channel` (the channel the deliveries came from).
    pub fn new(channel: Channel) -> Arc<Self> {
        Arc::new(Self {
            channel,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a task panicked mid-update of plain sets.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A delivery arrived (call in delivery order, before it can finish).
    pub fn delivered(&self, tag: u64) {
        self.state().open.insert(tag);
    }

    /// The delivery is done with (decided and its follow-up published): acknowledge it.
    pub fn finished(&self, tag: u64) {
        {
            let mut state = self.state();
            state.open.remove(&tag);
            state.finished.insert(tag, Instant::now());
        }
        self.wake.notify_one();
    }

    /// The delivery was handed back to the broker (nacked): never acknowledge it.
    pub fn handed_back(&self, tag: u64) {
        self.state().open.remove(&tag);
        self.wake.notify_one();
    }

    /// Acknowledges finished deliveries until `stop`, then everything finished.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            if self.state().finished.is_empty() {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => break,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(FLUSH_EVERY) => {}
                () = stop.cancelled() => break,
            }
            self.flush(false).await;
        }
        self.flush(true).await;
    }

    async fn flush(&self, all: bool) {
        let plan = self.state().plan(Instant::now(), all);
        if let Some(tag) = plan.up_to {
            self.ack(tag, true).await;
        }
        for tag in plan.singles {
            self.ack(tag, false).await;
        }
    }

    async fn ack(&self, tag: u64, multiple: bool) {
        let sent = timed(
            "basic.ack",
            self.channel.basic_ack(tag, BasicAckOptions { multiple }),
        )
        .await;
        if let Err(e) = sent {
            warn!(error = %e, tag, multiple, "ack failed; the broker will redeliver (decided once anyway)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(open: &[u64], finished: &[(u64, u64)], now: Instant) -> State {
        State {
            open: open.iter().copied().collect(),
            finished: finished
                .iter()
                .map(|(t, ms_ago)| (*t, now - Duration::from_millis(*ms_ago)))
                .collect(),
        }
    }

    #[test]
    fn a_run_of_finished_deliveries_is_one_multiple_ack() {
        let now = Instant::now();
        let mut s = state(&[], &[(1, 1), (2, 1), (3, 1)], now);
        assert_eq!(
            s.plan(now, false),
            Plan {
                up_to: Some(3),
                singles: vec![]
            }
        );
        assert!(s.finished.is_empty());
    }

    #[test]
    fn an_unfinished_delivery_bounds_the_run_and_holds_the_rest_briefly() {
        let now = Instant::now();
        let mut s = state(&[3], &[(1, 1), (2, 1), (4, 1), (5, 60)], now);
        let plan = s.plan(now, false);
        // 1-2 as a run; 5 waited longer than HOLD behind 3; 4 waits a little more.
        assert_eq!(
            plan,
            Plan {
                up_to: Some(2),
                singles: vec![5]
            }
        );
        assert_eq!(s.finished.keys().copied().collect::<Vec<_>>(), vec![4]);
        // Nothing finished before the open one: no multiple ack at all.
        let mut s = state(&[1], &[(2, 1)], now);
        assert_eq!(s.plan(now, false), Plan::default());
        // At the end, everything finished goes.
        assert_eq!(
            s.plan(now, true),
            Plan {
                up_to: None,
                singles: vec![2]
            }
        );
    }

    #[test]
    fn a_multiple_ack_never_covers_an_open_delivery() {
        let now = Instant::now();
        for open in 1..=6u64 {
            let finished: Vec<(u64, u64)> =
                (1..=6).filter(|t| *t != open).map(|t| (t, 100)).collect();
            let mut s = state(&[open], &finished, now);
            let plan = s.plan(now, true);
            if let Some(up_to) = plan.up_to {
                assert!(up_to < open, "ack up to {up_to} covers open {open}");
            }
            assert!(!plan.singles.contains(&open));
        }
    }
}
