//! When a publisher confirm can be believed, on a confirm-mode channel that many tasks
//! publish on at once.
//!
//! lapin 4.12 has two races there (reproduced by `tests/publish_races.rs`):
//!
//! 1. **Numbering.** A publish takes its confirm number under one lock and queues its
//!    frames under another, so two concurrent publishes can reach the wire in the
//!    opposite order to their numbers, and the broker's confirm for one is reported to
//!    the other. [`ConfirmWindow::numbered`] closes it: the publish's first poll (which
//!    both numbers it and queues its frames, before any await) runs under our lock, so
//!    numbers follow wire order. Confirms are still awaited concurrently.
//! 2. **Returns.** A `basic.return` is attached to whichever confirm completes next, not
//!    to the publish it belongs to, so the returned publish can read as a clean ack while
//!    another one carries its return. The window therefore trusts a clean ack only when
//!    no return (or any other uncertainty) was seen on the channel while it was in
//!    flight, and only once every publish sent before it was confirmed has been seen:
//!    - a return seen on any publish *poisons* every publish then in flight, and fails
//!      every clean ack still held back;
//!    - a clean ack is held back until every publish numbered at or below the highest
//!      number issued when the ack arrived has been seen (the return of the publish, if
//!      any, travels with one of those).
//!
//!    A publish failed this way was possibly fine: its caller retries it (a duplicate
//!    close message is harmless, a lost one is not).
//!
//! Both races were reported upstream with the reproduction in `tests/publish_races.rs`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use tokio::sync::oneshot;

/// How a publish's confirm came back, as seen by its own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A positive confirm with no returned message attached.
    Clean,
    /// A returned message was attached (maybe another publish's).
    Returned,
    /// A negative confirm, or a channel error: this publish failed, nothing more is known.
    Failed,
    /// The outcome was never seen (timeout, cancelled): a return may have been missed.
    Unknown,
}

/// The publishes of one channel whose confirms are outstanding.
#[derive(Debug, Default)]
pub struct ConfirmWindow {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The number the next publish gets (ours; it follows lapin's, see the module doc).
    next: u64,
    /// Publishes sent whose confirm was not seen yet.
    unresolved: BTreeSet<u64>,
    /// A publish numbered below this that is confirmed cleanly is not believed.
    poisoned_below: u64,
    /// Clean acks waiting for the publishes before them.
    held: Vec<Held>,
}

#[derive(Debug)]
struct Held {
    /// Believed once every publish up to this number has been seen.
    up_to: u64,
    verdict: oneshot::Sender<bool>,
}

impl State {
    fn poison(&mut self) {
        self.poisoned_below = self.next;
        for held in self.held.drain(..) {
            let _ = held.verdict.send(false);
        }
    }

    /// Believes the held acks that no unseen publish precedes.
    fn release(&mut self) {
        let lowest = self.unresolved.first().copied();
        self.held.retain_mut(|held| {
            if lowest.is_none_or(|l| l > held.up_to) {
                // Replace the sender to move it out; the entry is dropped right after.
                let (tx, _) = oneshot::channel();
                let _ = std::mem::replace(&mut held.verdict, tx).send(true);
                false
            } else {
                true
            }
        });
    }
}

/// One numbered publish; must be resolved with [`Ticket::seen`]. Dropped unresolved (a
/// cancelled publish) it counts as [`Seen::Unknown`].
#[derive(Debug)]
pub struct Ticket {
    window: Arc<ConfirmWindow>,
    number: u64,
    resolved: bool,
}

impl ConfirmWindow {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent at every await-free step, so a poisoned lock (a
        // panic elsewhere while holding it) is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls `publish` once under the window's lock and numbers it: lapin numbers a publish
    /// and queues its frames in its first poll, so numbers follow the order on the wire.
    /// Returns the first poll's result (if it finished) and the publish's ticket.
    pub async fn numbered<F: Future>(
        self: &Arc<Self>,
        mut publish: Pin<&mut F>,
    ) -> (Option<F::Output>, Ticket) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            let first = match publish.as_mut().poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            };
            let number = state.next;
            state.next += 1;
            state.unresolved.insert(number);
            Poll::Ready((
                first,
                Ticket {
                    window: self.clone(),
                    number,
                    resolved: false,
                },
            ))
        })
        .await
    }

    fn resolve(&self, number: u64, seen: Seen) -> Verdict {
        let mut state = self.lock();
        state.unresolved.remove(&number);
        let verdict = match seen {
            Seen::Returned | Seen::Unknown => {
                state.poison();
                Verdict::Now(false)
            }
            Seen::Failed => Verdict::Now(false),
            Seen::Clean if number < state.poisoned_below => Verdict::Now(false),
            Seen::Clean => {
                let up_to = state.next.saturating_sub(1);
                if state.unresolved.range(..=up_to).next().is_none() {
                    Verdict::Now(true)
                } else {
                    let (tx, rx) = oneshot::channel();
                    state.held.push(Held { up_to, verdict: tx });
                    Verdict::Later(rx)
                }
            }
        };
        state.release();
        verdict
    }
}

enum Verdict {
    Now(bool),
    Later(oneshot::Receiver<bool>),
}

impl Ticket {
    /// Records how the confirm came back; returns whether the publish may be believed
    /// delivered. A clean ack may wait here for the confirms of earlier publishes.
    pub async fn seen(mut self, seen: Seen) -> bool {
        self.resolved = true;
        match self.window.resolve(self.number, seen) {
            Verdict::Now(ok) => ok,
            // A held ack is always answered: every publish before it is resolved, or
            // dropped (which resolves it), or the window is poisoned.
            Verdict::Later(rx) => rx.await.unwrap_or(false),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.resolved {
            let _ = self.window.resolve(self.number, Seen::Unknown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ticket(window: &Arc<ConfirmWindow>) -> Ticket {
        let mut ready = std::pin::pin!(async {});
        window.numbered(ready.as_mut()).await.1
    }

    #[tokio::test]
    async fn a_lone_clean_ack_is_believed_at_once() {
        let w = Arc::new(ConfirmWindow::default());
        let t = ticket(&w).await;
        assert!(t.seen(Seen::Clean).await);
    }

    #[tokio::test]
    async fn a_clean_ack_waits_for_earlier_publishes_and_fails_if_one_carries_a_return() {
        let w = Arc::new(ConfirmWindow::default());
        let (a, b) = (ticket(&w).await, ticket(&w).await);
        // b's clean ack comes first; the return that is really b's arrives on a.
        let held = tokio::spawn(b.seen(Seen::Clean));
        tokio::task::yield_now().await;
        assert!(!held.is_finished(), "b must wait for a");
        assert!(!a.seen(Seen::Returned).await);
        assert!(!held.await.unwrap(), "b was in flight beside a return");
    }

    #[tokio::test]
    async fn a_clean_ack_also_waits_for_later_publishes_issued_before_it_arrived() {
        let w = Arc::new(ConfirmWindow::default());
        let (a, b) = (ticket(&w).await, ticket(&w).await);
        let held = tokio::spawn(a.seen(Seen::Clean));
        tokio::task::yield_now().await;
        assert!(
            !held.is_finished(),
            "a must wait for b, sent before a's ack arrived"
        );
        assert!(b.seen(Seen::Clean).await);
        assert!(held.await.unwrap());
    }

    #[tokio::test]
    async fn a_return_poisons_every_publish_in_flight_but_not_later_ones() {
        let w = Arc::new(ConfirmWindow::default());
        let (a, b) = (ticket(&w).await, ticket(&w).await);
        assert!(!a.seen(Seen::Returned).await);
        assert!(
            !b.seen(Seen::Clean).await,
            "b was in flight when a return was seen"
        );
        let c = ticket(&w).await;
        assert!(c.seen(Seen::Clean).await, "c was sent after the return");
    }

    #[tokio::test]
    async fn a_nack_fails_only_its_own_publish() {
        let w = Arc::new(ConfirmWindow::default());
        let (a, b) = (ticket(&w).await, ticket(&w).await);
        assert!(!a.seen(Seen::Failed).await);
        assert!(b.seen(Seen::Clean).await);
    }

    #[tokio::test]
    async fn a_cancelled_publish_counts_as_unknown_and_releases_what_waited_for_it() {
        let w = Arc::new(ConfirmWindow::default());
        let (a, b) = (ticket(&w).await, ticket(&w).await);
        let held = tokio::spawn(b.seen(Seen::Clean));
        tokio::task::yield_now().await;
        drop(a);
        assert!(!held.await.unwrap(), "a's return, if any, was never seen");
        let c = ticket(&w).await;
        assert!(c.seen(Seen::Clean).await);
    }
}
