//! Connections per source address: one host (or one IPv6 /64, what one subscriber is
//! usually given) may hold at most [`Sources::limit`] of a server's connections, so that a
//! single client opening slow connections cannot take every slot. A connection
//! over its source's bound is closed at once, before a byte of it is read; the closures
//! are logged at most once every [`WARN_EVERY`], with their count, so that an attack does
//! not also flood the log.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most one warning about closed connections per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The connections each source holds now.
#[derive(Debug)]
pub(super) struct Sources {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
    closed: AtomicU64,
    warned: Mutex<Option<Instant>>,
}

/// One connection counted against its source; dropping it gives the slot back.
#[derive(Debug)]
pub(super) struct SourceSlot {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        // Every update is a whole count: a poisoned lock still holds valid numbers.
        let mut held = self
            .sources
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
}

impl Sources {
    /// At most `limit` connections per source (at least one).
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            held: Mutex::new(HashMap::new()),
            closed: AtomicU64::new(0),
            warned: Mutex::new(None),
        })
    }

    /// A slot for a connection from `peer`, or `None` when its source holds its bound
    /// already (the caller closes the connection; it is counted and logged here).
    pub(super) fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<SourceSlot> {
        let source = source(peer);
        let admitted = {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let n = held.entry(source).or_insert(0);
            if *n < self.limit {
                *n += 1;
                true
            } else {
                false
            }
        };
        if admitted {
            return Some(SourceSlot {
                sources: Arc::clone(self),
                source,
            });
        }
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.warn(source);
        None
    }

    /// Logs the connections closed since the last warning, at most every [`WARN_EVERY`].
    fn warn(&self, source: IpAddr) {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *warned = Some(Instant::now());
        let closed = self.closed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            closed,
            %source,
            limit = self.limit,
            "closed connections from sources that hold their bound of connections already"
        );
    }
}

/// What one client is: its IPv4 address, or the /64 of its IPv6 address (one host or
/// subscriber is given a whole /64); an IPv4-mapped IPv6 address is its IPv4 address.
fn source(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_its_bound_and_gets_slots_back() {
        let sources = Sources::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = sources.enter(a).unwrap();
        let _second = sources.enter(a).unwrap();
        assert!(sources.enter(a).is_none(), "a third from the same source");
        assert!(sources.enter(b).is_some(), "another source is not affected");
        drop(first);
        assert!(
            sources.enter(a).is_some(),
            "a slot given back is free again"
        );
    }

    #[test]
    fn an_ipv6_host_is_its_64_and_a_mapped_address_is_ipv4() {
        let sources = Sources::new(1);
        let _one = sources.enter("2001:db8::1".parse().unwrap()).unwrap();
        assert!(
            sources.enter("2001:db8::2:3".parse().unwrap()).is_none(),
            "the same /64"
        );
        assert!(sources.enter("2001:db8:0:1::1".parse().unwrap()).is_some());
        let _v4 = sources.enter("192.0.2.7".parse().unwrap()).unwrap();
        assert!(sources.enter("::ffff:192.0.2.7".parse().unwrap()).is_none());
        assert!(sources.held.lock().unwrap().len() <= 3);
    }
}
