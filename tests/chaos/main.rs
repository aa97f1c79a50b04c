//! The chaos run: thousands of orders through killed workers, a restarted broker and
//! gateway faults, with its figures printed; `scripts/test.sh` runs it alone, once on
//! classic and once on quorum queues.

// The shared harness (a sandbox per test: its own schema, queue prefix and simulator). It
// runs the binary and the simulator: only with the full build (`--features cli`, the
// default).
#[cfg(feature = "cli")]
#[path = "../common/mod.rs"]
mod common;

mod serial_chaos;
