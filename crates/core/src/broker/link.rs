//! The library's way to the broker: a confirm-mode [`Publisher`] that is re-established
//! when its connection goes away (a node of the cluster stopped, a network cut), on the
//! next address of `AMQP_URL` ([`super::addresses`]).
//!
//! A shop's `create_order` must never wait on a broker that is gone: the order and its
//! close schedule are committed before anything is published, and a schedule that is not
//! published stays in the outbox for the worker's relay. So a call that finds the
//! connection broken tries to re-establish it only if no other call is doing so and the
//! last try is at least [`REDIAL_PAUSE`] old; every other call fails at once with
//! [`BrokerError::Reconnecting`], leaving its schedule to the relay.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lapin::Connection;

use super::publisher::Publisher;
use super::{BrokerError, connect_configured};
use crate::config::BrokerSettings;

/// Least time between two attempts to re-establish the connection.
pub const REDIAL_PAUSE: Duration = Duration::from_secs(1);

/// A publisher, re-established on demand (or a fixed one a caller handed over).
#[derive(Clone)]
pub struct Link {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// Handed over by the caller, who owns its connection.
    Fixed(Publisher),
    /// Dialed from the settings, and re-dialed when it breaks.
    Dialed(Arc<Dialer>),
}

struct Dialer {
    settings: BrokerSettings,
    name: String,
    /// The live connection and its publisher (held briefly, never across an await).
    live: Mutex<Option<Live>>,
    /// Held by the one call that is re-establishing the connection; the time of the last
    /// attempt.
    dialing: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    publisher: Publisher,
}

impl Live {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.channel().status().connected()
    }
}

impl Link {
    /// Connects now (an error if no address answers) and declares the topology.
    pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Self, BrokerError> {
        let live = dial(settings, name).await?;
        Ok(Self {
            kind: Kind::Dialed(Arc::new(Dialer {
                settings: settings.clone(),
                name: name.to_owned(),
                live: Mutex::new(Some(live)),
                dialing: tokio::sync::Mutex::new(Some(Instant::now())),
            })),
        })
    }

    /// A link over a publisher the caller keeps connected.
    pub fn fixed(publisher: Publisher) -> Self {
        Self {
            kind: Kind::Fixed(publisher),
        }
    }

    /// A publisher on a live connection: the current one, or a new one if the current
    /// connection is gone and no other call is re-establishing it (see the module's doc).
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        let dialer = match &self.kind {
            Kind::Fixed(publisher) => return Ok(publisher.clone()),
            Kind::Dialed(dialer) => dialer,
        };
        if let Some(live) = dialer.current() {
            return Ok(live.publisher);
        }
        let Ok(mut last) = dialer.dialing.try_lock() else {
            return Err(BrokerError::Reconnecting);
        };
        // Another call may have re-established it while this one looked.
        if let Some(live) = dialer.current() {
            return Ok(live.publisher);
        }
        if last.is_some_and(|at| at.elapsed() < REDIAL_PAUSE) {
            return Err(BrokerError::Reconnecting);
        }
        *last = Some(Instant::now());
        dialer.retire();
        let live = dial(&dialer.settings, &dialer.name).await?;
        tracing::info!("broker connection re-established");
        let publisher = live.publisher.clone();
        *dialer.live.lock().unwrap_or_else(PoisonError::into_inner) = Some(live);
        Ok(publisher)
    }
}

impl Dialer {
    /// Closes the broken connection, if any, in the background (a channel can break
    /// while its connection still runs).
    fn retire(&self) {
        let old = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            tokio::spawn(async move {
                let _ = old.connection.close(200, "replaced".into()).await;
            });
        }
    }

    /// The live connection, if it still works.
    fn current(&self) -> Option<Live> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|live| live.usable())
            .cloned()
    }
}

/// Connects, opens a confirm-mode publisher and declares the topology.
async fn dial(settings: &BrokerSettings, name: &str) -> Result<Live, BrokerError> {
    let connection = connect_configured(settings, name).await?;
    let topology = Arc::new(settings.topology.clone());
    let publisher = Publisher::open(&connection, Arc::clone(&topology)).await?;
    topology.declare(publisher.channel()).await?;
    Ok(Live {
        connection: Arc::new(connection),
        publisher,
    })
}
