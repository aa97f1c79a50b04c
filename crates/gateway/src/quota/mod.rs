//! The request quota of a merchant account at a gateway, and how the processes that talk
//! to the account share it.
//!
//! A gateway limits requests per merchant account (Alipay per app, WeChat Pay per
//! merchant), not per process: three worker replicas each limited to the quota send three
//! times it, and the gateway throttles at the worst moment, a burst of deadlines. So the
//! quota is one per account ([`QuotaPlan::quota`]: the gateway's own crate says
//! what identifies the account), and by default every process books it through Postgres,
//! which every process that talks to a gateway already has ([`SharedQuota`]); a process
//! may keep a quota of its own instead ([`Limiter`], `ORDER_CLOSER_GATEWAY_QUOTA=local`).
//!
//! **Why a GCRA row per account rather than leased shares.** With leased shares each
//! process holds a part of the rate for a lease period, renews it by heartbeat, and
//! the parts are rebalanced as processes come and go: a process that dies keeps its share
//! until its lease expires (the lease period, seconds to tens of seconds, is the price of
//! few heartbeats), an idle process holds rate that busy ones cannot use, and priority
//! across processes needs the shares to be re-cut. A reservation clock in one row has none
//! of that: each booking is one short `UPDATE ... RETURNING` that moves the account's
//! theoretical arrival time past the slots it takes, the caller sleeps until its slot,
//! and nothing is held between bookings. Idle processes hold nothing, busy ones use the
//! whole rate, a process that dies holds at most what it booked (its waiting callers'
//! slots, well under a second of the quota at the default concurrency), and priority is a
//! rule of the booking itself. Its cost is a statement per booking, on one row: a
//! process books for all its waiting callers at once, one booking at a time, up to 20 ms
//! of the rate per booking ([`BATCH_SPAN`]), so a busy process makes at most about 50
//! bookings a second whatever the rate, and the default 200 requests a second cost at
//! most 200 statements a second in all. There is no central request path: each process
//! sends its own requests, and the database only keeps the clock.
//!
//! **Priority** ([`Priority`]) is a property of the process: the worker and `notify`
//! (deadline closes, the query after a refused close, notification hints) book whatever
//! comes next and wait for it; `reconcile` (bulk) books only slots that start at once
//! while half the burst stays free, and never queues ahead of deadline work.
//!
//! **Throttling**: answers by which the gateway says the account sends too fast
//! ([`crate::GatewayError::is_throttle`], set by the gateway's own crate), once they are
//! five or more and a fifth of a process's answers within 5 s ([`ThrottleSignal`]: one
//! among many is a hiccup), halve the rate for 30 s, recorded in the row so that every
//! process slows down.

mod bucket;
mod local;
mod settings;
mod shared;
mod signal;

use std::sync::Arc;

use async_trait::async_trait;

pub use bucket::{Admission, Bucket, Grant, Micros, Priority, Rate, SLOW_DOWN, SLOW_DOWN_US};
pub use local::Limiter;
pub use settings::{QuotaPlan, QuotaSettings, Sharing};
pub use shared::{BATCH_SPAN, BOOK_TIMEOUT, RETRY_SHARED, STALE, SharedQuota};
pub use signal::{MIN_SHARE_PERCENT, MIN_THROTTLES, ThrottleSignal, WINDOW};

/// A request quota: a caller waits for its turn before each request, and reports the
/// gateway's throttling answers. The in-process [`Limiter`] and the [`SharedQuota`] are
/// the two kinds.
#[async_trait]
pub trait Quota: Send + Sync + std::fmt::Debug {
    /// Waits until one more request may go out; never fails.
    async fn acquire(&self);
    /// The gateway answered a request with a throttling answer: slow down for a while.
    async fn throttled(&self);
}

#[async_trait]
impl<Q: Quota + ?Sized> Quota for Arc<Q> {
    async fn acquire(&self) {
        (**self).acquire().await;
    }

    async fn throttled(&self) {
        (**self).throttled().await;
    }
}
