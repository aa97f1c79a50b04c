//! # order-closer
//!
//! Closes unpaid orders when their payment deadline passes, after asking the payment
//! gateway, and reconciles what the gateway says with the database. A paid order is never
//! cancelled: the trade is closed at the gateway first, so no payment can land on an
//! order we cancelled.
//!
//! The binary's library: the one list of gateways ([`gateway`]), the isolated sandbox
//! the demo, the benchmark and the tests stand on, and logging; every other part is a
//! crate of the workspace, re-exported here under the names the binary and the tests use:
//! - `order-closer-core`, the shop's library: [`closer`], the [`message`] and [`events`]
//!   contract, [`db`] (migrations included), [`broker`], [`config`];
//! - `order-closer-gateway`, the port ([`gateway`], [`bill`]), and one crate per gateway
//!   (`gateway::alipay`, `gateway::wechat`);
//! - `order-closer-engine`: [`decide`] (the pure decision table in [`decide::table`]),
//!   [`worker`], [`relay`], [`janitor`], [`notify`], [`reconcile`], [`health`],
//!   [`metrics`];
//! - `order-closer-sim`: the gateway simulator ([`sim`]).
//!
//! With `default-features = false` only the shop's part is built: the core crate and each
//! gateway's order rules ([`gateway::rules`]), without any gateway's client. The features
//! `worker`, `sim` and `cli` add the rest (all on by default).

// The shop's library (always built), from its own crate: the create API, the contract,
// the database and the broker at the edges. Re-exported under the names the rest of the
// binary and the tests use.
pub use order_closer_core::{
    broker, closer, config, db, events, files, message, money, order, retry, text, time, tls,
    url_secret,
};
pub mod gateway;

// `worker`: everything that decides orders, from the engine's crate.
#[cfg(feature = "worker")]
pub use order_closer_engine::{decide, health, janitor, metrics, notify, reconcile, relay, worker};
#[cfg(feature = "worker")]
pub use order_closer_gateway::bill;
#[cfg(feature = "worker")]
pub use order_closer_http_server as http_server;

// `sim`: the gateway simulator, and the isolated environment the demo, the benchmark and
// the tests stand on.
#[cfg(feature = "sim")]
pub mod sandbox;
#[cfg(feature = "sim")]
pub use order_closer_sim as sim;

// `cli`: logging set-up for the binary.
#[cfg(feature = "cli")]
pub mod telemetry;
