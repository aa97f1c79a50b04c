//! Publishing with publisher confirms and `mandatory`, so that "published" means "the
//! broker routed it to a queue and stored it".

use std::sync::Arc;

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::confirms::{ConfirmWindow, Seen};
use super::tiers::Route;
use super::topology::{DUE_KEY, PARKED_KEY, Topology};
use super::{BrokerError, timed};
use crate::message::CloseMessage;

/// A confirm-mode channel shared by the tasks of one process.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    topology: Arc<Topology>,
    window: Arc<ConfirmWindow>,
}

impl Publisher {
    /// Opens a channel in confirm mode.
    pub async fn open(
        connection: &Connection,
        topology: Arc<Topology>,
    ) -> Result<Self, BrokerError> {
        let channel = timed("open channel", connection.create_channel()).await?;
        timed(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Self {
            channel,
            topology,
            window: Arc::default(),
        })
    }

    /// The topology this publisher routes by.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The underlying channel (for declarations).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes one persistent, mandatory message and waits for its confirm. A returned
    /// (unroutable) or nacked message is an error, and so is a clean confirm that cannot
    /// be believed because a return was seen beside it (see [`super::confirms`]).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut publish = std::pin::pin!(self.channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            payload,
            properties,
        ));
        let (first, ticket) = self.window.numbered(publish.as_mut()).await;
        let sent = match first {
            Some(done) => done.map_err(|source| BrokerError::Amqp {
                op: "publish",
                source,
            }),
            None => timed("publish", publish).await,
        };
        let confirm = match sent {
            Ok(confirm) => confirm,
            Err(e) => {
                ticket.seen(Seen::Failed).await;
                return Err(e);
            }
        };
        let confirmation = match timed("publish confirm", confirm).await {
            Ok(c) => c,
            Err(e @ BrokerError::Timeout { .. }) => {
                ticket.seen(Seen::Unknown).await;
                return Err(e);
            }
            Err(e) => {
                ticket.seen(Seen::Failed).await;
                return Err(e);
            }
        };
        match confirmation {
            Confirmation::Ack(None) => {
                if ticket.seen(Seen::Clean).await {
                    Ok(())
                } else {
                    Err(BrokerError::Returned {
                        exchange: exchange.to_owned(),
                        routing_key: routing_key.to_owned(),
                        reply: "a message published beside it was returned; not believed"
                            .to_owned(),
                    })
                }
            }
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                ticket.seen(Seen::Returned).await;
                Err(BrokerError::Returned {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                    reply: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => {
                ticket.seen(Seen::Failed).await;
                Err(BrokerError::Nacked {
                    routing_key: routing_key.to_owned(),
                })
            }
            Confirmation::NotRequested => {
                ticket.seen(Seen::Failed).await;
                Err(BrokerError::Nacked {
                    routing_key: format!("{routing_key} (confirms not enabled)"),
                })
            }
        }
    }

    /// Sends a close message on its way: through the delay tier that fits the time left
    /// until it is due, or straight to the close queue. Returns the route taken.
    pub async fn schedule(
        &self,
        message: &CloseMessage,
        now: DateTime<Utc>,
    ) -> Result<Route, BrokerError> {
        let remaining = (message.due_at() - now).to_std().unwrap_or_default();
        let route = self.topology.tiers().route(remaining);
        let body = message.encode();
        match route {
            Route::Due => {
                self.publish(
                    &self.topology.close_exchange(),
                    DUE_KEY,
                    &body,
                    FieldTable::default(),
                )
                .await?
            }
            Route::Tier(index) => {
                let queue = self
                    .topology
                    .delay_queue(self.topology.tiers().all()[index]);
                self.publish("", &queue, &body, FieldTable::default())
                    .await?
            }
        }
        Ok(route)
    }

    /// Publishes an event on the events exchange.
    pub async fn event(&self, routing_key: &str, payload: &[u8]) -> Result<(), BrokerError> {
        self.publish(
            &self.topology.events_exchange(),
            routing_key,
            payload,
            FieldTable::default(),
        )
        .await
    }

    /// Parks a message for an operator, with headers saying why.
    pub async fn park(&self, payload: &[u8], note: &ParkNote<'_>) -> Result<(), BrokerError> {
        self.publish(
            &self.topology.close_exchange(),
            PARKED_KEY,
            payload,
            note.headers(),
        )
        .await
    }
}

/// Why a message is parked; travels as `oc-*` headers (never `x-*`, which the broker owns).
#[derive(Debug, Clone)]
pub struct ParkNote<'a> {
    /// Short reason code (`malformed`, `attempts_exhausted`, a gateway code, ...).
    pub reason: &'a str,
    /// The last error, in words.
    pub last_error: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt happened.
    pub first_seen: DateTime<Utc>,
}

/// Header: reason code.
pub const HEADER_REASON: &str = "oc-park-reason";
/// Header: last error.
pub const HEADER_LAST_ERROR: &str = "oc-last-error";
/// Header: attempts.
pub const HEADER_ATTEMPTS: &str = "oc-attempts";
/// Header: first seen (RFC 3339).
pub const HEADER_FIRST_SEEN: &str = "oc-first-seen";
/// Header: parked at (RFC 3339).
pub const HEADER_PARKED_AT: &str = "oc-parked-at";

impl ParkNote<'_> {
    fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(HEADER_REASON.into(), text(self.reason));
        headers.insert(HEADER_LAST_ERROR.into(), text(self.last_error));
        headers.insert(
            HEADER_ATTEMPTS.into(),
            AMQPValue::LongLongInt(i64::from(self.attempts)),
        );
        headers.insert(
            HEADER_FIRST_SEEN.into(),
            text(&self.first_seen.to_rfc3339()),
        );
        headers.insert(HEADER_PARKED_AT.into(), text(&Utc::now().to_rfc3339()));
        headers
    }
}
