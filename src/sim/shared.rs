//! What every simulator request handler shares: the trade store, the keys, the notifier,
//! and the shutdown signal that ends holds at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::state::SimState;
use crate::gateway::rsa::{RsaPrivateKey, RsaPublicKey};

/// Everything a request handler needs.
pub(crate) struct Shared {
    pub(crate) state: SimState,
    /// The address the server is bound to (bill URLs, when a request has no usable
    /// `Host`).
    pub(crate) addr: SocketAddr,
    pub(crate) app_id: String,
    pub(crate) app_public_key: RsaPublicKey,
    pub(crate) sim_key: Arc<RsaPrivateKey>,
    /// Cancelled when the simulator stops: ends latency and `timeout` holds at once.
    pub(crate) shutdown: CancellationToken,
    /// A key that is not the simulator's, for `bad_signature` answers; made on first use.
    pub(crate) other_key: OnceCell<RsaPrivateKey>,
    /// Sends the payment notifications.
    pub(crate) notifier: Arc<super::notifier::SimNotifier>,
}

impl Shared {
    /// Sleeps `d`, unless the simulator stops first (then `false`).
    pub(crate) async fn pause(&self, d: Duration) -> bool {
        super::pause(&self.shutdown, d).await
    }
}
