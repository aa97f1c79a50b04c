//! Several broker addresses: `AMQP_URL` may list the nodes of a cluster, comma-separated
//! (`amqp://u:p@node1:5672/%2f,amqp://u:p@node2:5672/%2f`). lapin connects to one URI, and
//! its own recovery is not trusted (it has an open report of never reconnecting), so
//! failover is ours: [`super::connect_with`] tries the addresses in turn, and every
//! process reconnects on its own (the worker's session loop, the library's
//! [`super::link::Link`]).
//!
//! Which address is tried first is kept by a [`Failover`] cursor shared by a process's
//! connections: the first connection tries the list in order; each later one starts at
//! the address after the one the previous connection got. A process whose node went away
//! so tries another node first instead of waiting on the dead one, and the connections of
//! one process spread over the nodes (on a cluster every node serves every queue).
//!
//! The list is split only where a new `amqp://` or `amqps://` URL starts, so a comma in a
//! password is read as part of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::uri::AMQPUri;

/// Most addresses one `AMQP_URL` may list (a cluster has a handful of nodes; more is a
/// mistake, and every reconnect may try them all).
pub const MAX_ADDRESSES: usize = 16;

/// One address of the list, parsed.
#[derive(Debug, Clone)]
pub struct Address {
    /// As the client reads it.
    pub uri: AMQPUri,
    /// `host:port`, for messages (never a user or password).
    pub shown: String,
}

/// Splits `AMQP_URL` into its addresses and parses each; the error names the address by
/// its place in the list (and never shows a password).
pub fn parse(list: &str) -> Result<Vec<Address>, String> {
    let parts = split(list);
    if parts.len() > MAX_ADDRESSES {
        return Err(format!(
            "lists {} addresses; at most {MAX_ADDRESSES}",
            parts.len()
        ));
    }
    let many = parts.len() > 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let place = |reason: String| {
                if many {
                    format!("address {} of {}: {reason}", i + 1, parts.len())
                } else {
                    reason
                }
            };
            if part.is_empty() {
                return Err(place("is empty".into()));
            }
            if !(part.starts_with("amqp://") || part.starts_with("amqps://")) {
                return Err(place("must start with amqp:// or amqps://".into()));
            }
            crate::url_secret::check_userinfo(part).map_err(&place)?;
            let uri: AMQPUri = part
                .parse()
                .map_err(|e: String| place(crate::url_secret::redact(&e)))?;
            if uri.authority.host.contains(',') {
                return Err(place(
                    "its host holds a ',': write each address as a whole amqp:// URL \
                     (amqp://u:p@node1/%2f,amqp://u:p@node2/%2f)"
                        .into(),
                ));
            }
            let shown = format!("{}:{}", uri.authority.host, uri.authority.port);
            Ok(Address { uri, shown })
        })
        .collect()
}

/// The list's parts, trimmed: split at each comma that a new `amqp://` or `amqps://` URL
/// (spaces allowed around it) or the end follows, so a comma anywhere else stays where
/// it is.
fn split(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in list.match_indices(',') {
        let next = list[i + 1..].trim_start();
        if next.is_empty() || next.starts_with("amqp://") || next.starts_with("amqps://") {
            parts.push(list[start..i].trim());
            start = i + 1;
        }
    }
    parts.push(list[start..].trim());
    parts
}

/// Which address a process's next connection tries first (see the module's doc). Clones
/// share the cursor.
#[derive(Debug, Clone, Default)]
pub struct Failover {
    /// One past the index of the address the last connection got; 0 before any.
    after_last: Arc<AtomicUsize>,
}

impl Failover {
    /// The order to try `n` addresses in.
    pub fn order(&self, n: usize) -> impl Iterator<Item = usize> {
        let start = match n {
            0 => 0,
            _ => self.after_last.load(Ordering::Relaxed) % n,
        };
        (0..n).map(move |k| (start + k) % n)
    }

    /// A connection got the address at `index`.
    pub fn got(&self, index: usize) {
        self.after_last.store(index + 1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_where_a_url_starts() {
        let list = "amqp://u:p@a:5672/%2f, amqps://u:p,q@b:5671/v ,amqp://c";
        let shown: Vec<String> = parse(list).unwrap().into_iter().map(|a| a.shown).collect();
        assert_eq!(shown, ["a:5672", "b:5671", "c:5672"]);
        // The comma in the second password stayed in it.
        assert_eq!(
            split(list),
            [
                "amqp://u:p@a:5672/%2f",
                "amqps://u:p,q@b:5671/v",
                "amqp://c"
            ]
        );
        assert_eq!(parse("amqp://h").unwrap().len(), 1);
    }

    #[test]
    fn a_bad_address_is_named_by_its_place_without_its_password() {
        for (list, why) in [
            (
                "amqp://g:SeCrEt123@a/%2f,amqp://g:SeCrEt123@b:99999/%2f",
                "address 2 of 2",
            ),
            ("amqp://g:SeCrEt123@a/%2f,", "address 2 of 2: is empty"),
            (
                "amqp://g:SeCrEt123@a/%2f,amqp://g:S@SeCrEt123@b/%2f",
                "percent-encode",
            ),
            ("http://g:SeCrEt123@a/", "must start with amqp://"),
            ("amqp://g:SeCrEt123@a,b:5672/%2f", "whole amqp:// URL"),
            ("", "is empty"),
        ] {
            let err = parse(list).unwrap_err();
            assert!(err.contains(why), "{list}: {err}");
            assert!(!err.contains("SeCrEt123"), "{list}: {err}");
        }
        let many = vec!["amqp://h"; MAX_ADDRESSES + 1].join(",");
        assert!(parse(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn each_connection_starts_after_the_address_the_last_one_got() {
        let failover = Failover::default();
        assert_eq!(failover.order(3).collect::<Vec<_>>(), [0, 1, 2]);
        failover.got(0);
        assert_eq!(failover.order(3).collect::<Vec<_>>(), [1, 2, 0]);
        failover.got(2);
        assert_eq!(failover.order(3).collect::<Vec<_>>(), [0, 1, 2]);
        // A clone shares the cursor; one address is always tried first.
        failover.clone().got(1);
        assert_eq!(failover.order(3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(failover.order(1).collect::<Vec<_>>(), [0]);
        assert_eq!(failover.order(0).count(), 0);
    }
}
