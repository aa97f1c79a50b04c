//! The chaos runs: thousands of orders through killed workers, restarted brokers and
//! databases and gateway faults, with their figures printed. `scripts/test.sh` runs them
//! alone: the single-node run once on classic and once on quorum queues, then the
//! three-node cluster runs (`serial_cluster.rs`).

// The shared harness (a sandbox per test: its own schema, queue prefix and simulator),
// from the test kit's crate. It runs the binary and the simulator: only with the full
// build (`--features tooling`, the default).
#[cfg(feature = "tooling")]
use order_closer_testkit::harness as common;

/// The binary under test.
#[cfg(feature = "tooling")]
const BIN: &str = env!("CARGO_BIN_EXE_order-closer");

#[cfg(feature = "tooling")]
mod disruptions;
#[cfg(feature = "tooling")]
mod round;
#[cfg(feature = "tooling")]
mod serial_chaos;
#[cfg(feature = "tooling")]
mod serial_cluster;
#[cfg(feature = "tooling")]
mod workers;
#[cfg(feature = "tooling")]
mod workload;
