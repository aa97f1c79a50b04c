//! # order-closer-core
//!
//! The shop's library: what a shop's backend links to create orders whose close is
//! scheduled in the same transaction, and to cancel or extend them. It knows no payment
//! gateway: the channels it accepts orders for, each with its gateway's order rules, are
//! handed to [`closer::Closer`] ([`rules::Channels`]), so the library checks an order the
//! way its gateway would without pulling any gateway's client (no HTTP crates).
//!
//! - [`closer`]: creating, cancelling and extending orders (order + outbox row in one
//!   transaction, published after commit);
//! - [`message`] and [`events`]: the contract with the workers and with downstream
//!   services;
//! - [`db`] (the migrations included) and [`broker`]: PostgreSQL and RabbitMQ at the
//!   edges, TLS included ([`tls`]);
//! - [`config`]: the settings every process reads from its environment;
//! - [`order`], [`money`], [`time`], [`retry`], [`rules`]: the vocabulary;
//! - [`files`], [`text`], [`url_secret`]: reading files and printing text from outside
//!   safely.

pub mod broker;
pub mod closer;
pub mod config;
pub mod db;
pub mod events;
pub mod files;
pub mod invalid;
pub mod message;
pub mod money;
pub mod order;
pub mod retry;
pub mod rules;
pub mod text;
pub mod time;
pub mod tls;
pub mod trade;
pub mod url_secret;
