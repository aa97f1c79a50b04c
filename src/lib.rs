//! # order-closer
//!
//! Closes unpaid orders when their payment deadline passes, after asking the payment
//! gateway, and reconciles what the gateway says with the database. A paid order is never
//! cancelled: the trade is closed at the gateway first, so no payment can land on an
//! order we cancelled.
//!
//! The binary's package. Every part of the product is a crate of the workspace (see
//! docs/architecture.md, "Crates"), re-exported here under the names the binary, the
//! examples and the tests use:
//! - `order-closer-core`, the shop's library: [`closer`], the [`message`] and [`events`]
//!   contract, [`db`] (migrations included), [`broker`], [`config`];
//! - `order-closer-app`, the composition root: the one list of gateways ([`gateway`], each
//!   gateway's crate by name and its order rules in [`gateway::rules`]) and, with
//!   `worker`, `App`, which wires the engine;
//! - `order-closer-gateway`, the port (`gateway`, `bill`);
//! - `order-closer-engine`: `decide`, `worker`, `relay`, `janitor`, `notify`,
//!   `reconcile`, `health`, `metrics`;
//! - with `tooling`: the simulator (`sim`) and the sandbox (`sandbox`).
//!
//! Features:
//! - none (`default-features = false`): the shop's library, the core crate and every
//!   gateway's order rules, with no HTTP, CLI or server crate;
//! - `worker`: the engine and every gateway's client;
//! - `cli`: the deployable `order-closer` binary (migrate, worker, notify, orders,
//!   reconcile, keygen), without the simulator and the benchmark;
//! - `tooling` (default): the `gateway-sim`, `demo` and `bench` commands too.

// The shop's library (always built), from its own crate.
pub use order_closer_core::{
    broker, closer, config, db, events, files, invalid, message, money, order, retry, text, time,
    tls, trade, url_secret,
};
pub mod gateway;

// `worker`: the composition root and the engine.
#[cfg(feature = "worker")]
pub use order_closer_app::{App, AppError};
#[cfg(feature = "worker")]
pub use order_closer_engine::{decide, health, janitor, metrics, notify, reconcile, relay, worker};
#[cfg(feature = "worker")]
pub use order_closer_gateway::bill;
#[cfg(feature = "worker")]
pub use order_closer_http_server as http_server;

// `tooling`: the gateway simulator, and the isolated environment the demo, the benchmark
// and the tests stand on.
#[cfg(feature = "tooling")]
pub use order_closer_sim as sim;
#[cfg(feature = "tooling")]
pub use order_closer_testkit::sandbox;

// `cli`: logging set-up for the binary.
#[cfg(feature = "cli")]
pub mod telemetry;
