//! # order-closer-engine
//!
//! Everything that decides orders, behind the gateway port: this crate depends on
//! `order-closer-gateway` and on no gateway's crate, so the compiler keeps "nothing else
//! names a gateway" (the binary hands it the configured gateways).
//!
//! - [`decide`]: deciding an order: the pure decision table and deadline protocol
//!   ([`decide::table`], no I/O), run against the database and a gateway; refunds;
//! - [`worker`]: the close-queue consumer; [`relay`]: the outbox publisher; [`janitor`]:
//!   re-drives orders whose close message was lost;
//! - [`notify`]: the payment notifications' endpoint;
//! - [`reconcile`]: the operator's tools (overdue orders, parked messages, daily bills,
//!   refunds);
//! - [`health`] and [`metrics`]: what the orchestrator and Prometheus read.

pub mod decide;
pub mod health;
pub mod janitor;
pub mod metrics;
pub mod notify;
pub mod reconcile;
pub mod relay;
pub mod worker;
