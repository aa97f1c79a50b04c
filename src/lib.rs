//! # order-closer
//!
//! Closes unpaid orders when their payment deadline passes, after asking the payment
//! gateway, and reconciles what the gateway says with the database. A paid order is never
//! cancelled: the trade is closed at the gateway first, so no payment can land on an
//! order we cancelled.
//!
//! Layout:
//! - [`closer`]: the library call on order creation (order + outbox in one transaction);
//! - [`decide`]: deciding an order: the pure decision table and deadline protocol
//!   ([`decide::table`], no I/O), run against the database and a [`gateway`];
//! - [`worker`]: the close-queue consumer; [`relay`]: the outbox publisher; [`janitor`]:
//!   re-drives orders whose close message was lost;
//! - [`broker`], [`db`]: RabbitMQ and PostgreSQL at the edges;
//! - [`sim`]: a gateway simulator speaking Alipay's signed protocol.
//!
//! With `default-features = false` only the shop's part is built: [`closer`], the
//! [`message`] and [`events`] contract, [`db`] (migrations included), [`broker`],
//! [`config`] and each gateway's order rules ([`gateway::rules`]). The features `worker`, `sim` and `cli` add the rest (all on by default).

// The shop's library (always built), from its own crate: the create API, the contract,
// the database and the broker at the edges. Re-exported under the names the rest of the
// binary and the tests use.
pub use order_closer_core::{
    broker, closer, config, db, events, files, message, money, order, retry, text, time, tls,
    url_secret,
};
pub mod gateway;

// `worker`: everything that decides orders.
#[cfg(feature = "worker")]
pub use order_closer_gateway::bill;
#[cfg(feature = "worker")]
pub mod decide;
#[cfg(feature = "worker")]
pub mod health;
#[cfg(feature = "worker")]
pub use order_closer_http_server as http_server;
#[cfg(feature = "worker")]
pub mod janitor;
#[cfg(feature = "worker")]
pub mod metrics;
#[cfg(feature = "worker")]
pub mod notify;
#[cfg(feature = "worker")]
pub mod reconcile;
#[cfg(feature = "worker")]
pub mod relay;
#[cfg(feature = "worker")]
pub mod worker;

// `sim`: the gateway simulator, and the isolated environment the demo, the benchmark and
// the tests stand on.
#[cfg(feature = "sim")]
pub mod sandbox;
#[cfg(feature = "sim")]
pub use order_closer_sim as sim;

// `cli`: logging set-up for the binary.
#[cfg(feature = "cli")]
pub mod telemetry;
