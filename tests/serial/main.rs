//! The serial integration tests: they restart a broker node of their own, start a
//! Postgres cluster with TLS, kill the worker, or run the benchmark, so `scripts/test.sh`
//! runs them one at a time (`--test-threads=1`), in their own step.

// The shared harness (a sandbox per test: its own schema, queue prefix and simulator),
// from the test kit's crate. It runs the binary and the simulator: only with the full
// build (`--features tooling`, the default).
#[cfg(feature = "tooling")]
use order_closer_testkit::harness as common;

/// The binary under test.
#[cfg(feature = "tooling")]
const BIN: &str = env!("CARGO_BIN_EXE_order-closer");

mod bench_smoke;
mod serial_dead_letter;
mod serial_multi_host;
mod serial_oversized_messages;
mod serial_shared_quota;
mod serial_shutdown;
mod serial_tls;
