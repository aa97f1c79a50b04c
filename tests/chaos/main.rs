//! The chaos run: thousands of orders through killed workers, a restarted broker and
//! gateway faults, with its figures printed; `scripts/test.sh` runs it alone, once on
//! classic and once on quorum queues.

// The shared harness (a sandbox per test: its own schema, queue prefix and simulator),
// from the test kit's crate. It runs the binary and the simulator: only with the full
// build (`--features tooling`, the default).
#[cfg(feature = "tooling")]
use order_closer_testkit::harness as common;

/// The binary under test.
#[cfg(feature = "tooling")]
const BIN: &str = env!("CARGO_BIN_EXE_order-closer");

mod serial_chaos;
