//! # order-closer-testkit
//!
//! What the demo, the benchmark and the tests stand on, kept out of the deployable
//! binary (`publish = false`, and only the binary's `tooling` feature and its tests pull
//! it in):
//! - [`sandbox`]: an isolated order-closer (a Postgres schema, a queue prefix and a
//!   gateway simulator of its own, configured through variables as a deployment is, and
//!   removed afterwards, also when its owner panics);
//! - [`harness`]: the integration tests' environment over a sandbox (`TestEnv`), and the
//!   throwaway services some tests start (a Postgres cluster with TLS, a RabbitMQ node), a
//!   TCP proxy that can cut connections, slow clients and test certificates;
//! - [`stats`]: the one percentile of every printed figure.
//!
//! Both build their parts through the composition root (`order_closer_app::App`), so a
//! test runs what a deployment runs.

pub mod harness;
pub mod sandbox;
pub mod stats;

pub use sandbox::{Sandbox, SandboxError};
