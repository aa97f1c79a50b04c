//! The serial integration tests: they restart a broker node of their own, start a
//! Postgres cluster with TLS, kill the worker, or run the benchmark, so `scripts/test.sh`
//! runs them one at a time (`--test-threads=1`), in their own step.

// The shared harness (a sandbox per test: its own schema, queue prefix and simulator). It
// runs the binary and the simulator: only with the full build (`--features cli`, the
// default).
#[cfg(feature = "cli")]
#[path = "../common/mod.rs"]
mod common;

mod bench_smoke;
mod serial_dead_letter;
mod serial_shutdown;
mod serial_tls;
