//! # order-closer
//!
//! Closes unpaid orders when their payment deadline passes, after asking the payment
//! gateway, and reconciles what the gateway says with the database. A paid order is never
//! cancelled: the trade is closed at the gateway first, so no payment can land on an
//! order we cancelled.
//!
//! Layout:
//! - [`closer`]: the library call on order creation (order + outbox in one transaction);
//! - [`decision`]: the pure decision table; [`decide`]: running it against the database
//!   and a [`gateway`];
//! - [`worker`]: the close-queue consumer; [`relay`]: the outbox publisher; [`janitor`]:
//!   re-drives orders whose close message was lost;
//! - [`broker`], [`db`]: RabbitMQ and PostgreSQL at the edges;
//! - [`sim`]: a gateway simulator speaking Alipay's signed protocol.

pub mod bill;
pub mod broker;
pub mod closer;
pub mod config;
pub mod db;
pub mod decide;
pub mod decision;
pub mod events;
pub mod files;
pub mod gateway;
pub mod health;
pub mod http_server;
pub mod janitor;
pub mod message;
pub mod metrics;
pub mod money;
pub mod order;
pub mod reconcile;
pub mod relay;
pub mod retry;
pub mod sim;
pub mod telemetry;
pub mod time;
pub mod worker;
