//! The integration tests that run in parallel, as one binary (rust-lang/crates.io's
//! `tests/all.rs` pattern: one binary links once, where thirty took minutes and gigabytes
//! to link). One module per concern; each test stands alone (its own schema, queue prefix
//! and simulator) and cleans up after itself. `docs/testing.md` says what each covers.

// The shared harness (a sandbox per test: its own schema, queue prefix and simulator),
// from the test kit's crate. It runs the binary and the simulator: only with the full
// build (`--features tooling`, the default).
#[cfg(feature = "tooling")]
use order_closer_testkit::harness as common;

/// The binary under test.
#[cfg(feature = "tooling")]
const BIN: &str = env!("CARGO_BIN_EXE_order-closer");

mod alerts;
mod alipay_sdk;
mod bill;
mod cancel_e2e;
mod cli;
mod config_extremes;
mod create_orders;
mod db_groups;
mod decisions_e2e;
mod delivery_e2e;
mod delivery_limits;
mod docs;
mod failover;
mod faults_e2e;
mod gateway_faults;
mod gateway_quota;
mod harness;
mod health;
mod janitor_e2e;
mod notify_abuse;
mod notify_e2e;
mod prometheus_scrape;
mod publish_races;
#[cfg(feature = "tooling")]
mod python_sdk;
mod quick_retries;
mod reconcile_bill;
mod reconcile_e2e;
mod refund_e2e;
mod sim_notify;
mod trades_e2e;
mod trades_upgrade;
mod wechat_sdk;
