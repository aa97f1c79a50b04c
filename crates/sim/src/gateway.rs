//! One gateway as the simulator speaks it: its wire protocol's routes, its keys and how a
//! client is configured to trust them, its payment notifications and their resend
//! schedule, its trade numbers. Everything else (the trades, the faults, the buyer API,
//! the notifier's scheduling) is shared by every gateway; each gateway is a folder under
//! `src/sim/` implementing [`SimGateway`], listed in [`super::GATEWAYS`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chrono::{DateTime, Utc};

use super::SimError;
pub use super::faults::SimMethod;
use super::shared::Shared;
use super::state::SimTradeView;
pub use super::state::TradeRules;

/// How a notification is made: as the gateway sends it, or wrong on purpose (a test's
/// forgeries and replays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forge {
    /// When it says it was sent.
    pub sent_at: DateTime<Utc>,
    /// It names another merchant (app id, mchid).
    pub other_merchant: bool,
    /// It is signed with a key that is not the gateway's.
    pub stranger_key: bool,
    /// It carries no signature at all.
    pub unsigned: bool,
}

impl Forge {
    /// A genuine notification, sent now.
    pub fn genuine() -> Self {
        Self::sent_at(Utc::now())
    }

    /// A genuine notification, sent at `at` (a replay when long ago).
    pub fn sent_at(at: DateTime<Utc>) -> Self {
        Self {
            sent_at: at,
            other_merchant: false,
            stranger_key: false,
            unsigned: false,
        }
    }
}

/// A notification to POST: its headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Other headers (the gateway's signature headers).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// One gateway's protocol in the simulator (what the trade store needs of it is its
/// [`TradeRules`]).
pub trait SimGateway: TradeRules {
    /// The routes of its wire protocol (served beside the shared `/sim/` API).
    fn routes(self: Arc<Self>, shared: Arc<Shared>) -> Router;
    /// The variables that configure a client to reach and trust it at `base_url` (its
    /// URL, its merchant ids, its public key, and the merchant's private key when the
    /// simulator made the merchant's keys).
    fn client_vars(&self, base_url: &str) -> Vec<(String, String)>;
    /// The notification the gateway would send about `trade` as it is now (paid, or
    /// fully refunded); None when it has nothing to announce.
    fn notification(&self, trade: &SimTradeView, notify_id: &str, forge: Forge)
    -> Option<Outgoing>;
    /// Whether a notify endpoint's reply acknowledges the notification.
    fn acknowledged(&self, status: u16, body: &[u8]) -> bool;
    /// The intervals between a notification's sends when it is not acknowledged.
    fn resend_schedule(&self) -> &'static [Duration];
}

/// A gateway the simulator can speak, before it runs.
#[derive(Debug)]
pub struct SimPlugin {
    /// Its channel name.
    pub channel: &'static str,
    /// With fresh keys of its own and of the merchant (the demo, the benchmark, tests).
    pub generate: fn() -> Result<Arc<dyn SimGateway>, SimError>,
    /// With the keys in `dir` (made and written there when missing): `gateway-sim
    /// --keys-dir`; its client variables name the key files instead of holding keys.
    pub from_dir: fn(&Path) -> Result<Arc<dyn SimGateway>, SimError>,
    /// The intervals between a notification's sends (its
    /// [`SimGateway::resend_schedule`]), for `gateway-sim --help`.
    pub resend_schedule: &'static [Duration],
}
