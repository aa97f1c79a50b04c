//! # order-closer-app: the composition root
//!
//! The one place that names the payment gateways ([`gateways`]: each a crate of its own
//! behind the port) and wires the engine from the settings ([`App`]). The binary's
//! commands, the demo, the benchmark and the test sandbox all build their parts through
//! [`App`], so a deployment, a test and a benchmark run the same assembly (zero2prod's
//! `Application::build`).
//!
//! It is a crate rather than a file of the binary because the benchmark and the test kit
//! are crates of their own that need it, and no crate can depend on a binary's package.
//! Without the `engine` feature only the gateway list's order rules are built
//! ([`gateways::CHANNELS`]): what the shop's library hands its `Closer`.

pub mod gateways;

#[cfg(feature = "engine")]
mod app;
#[cfg(feature = "engine")]
pub use app::{App, AppError};
