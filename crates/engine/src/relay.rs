//! The outbox relay: publishes committed outbox rows with confirms, then deletes them.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED` inside a transaction that stays open
//! while they are published, so two processes never publish the same row at once; a row
//! is deleted only after the broker confirmed it. When the delete cannot commit (the
//! database connection dropped after the broker confirmed), the relay remembers the
//! confirmed ids and deletes them on its next pass instead of publishing them again. The
//! remaining duplicates are a process dying between a confirm and its commit, and a
//! confirm lost with the broker connection: publishing is at-least-once, and every event
//! carries an `event_id` for consumers to drop a copy (close messages are idempotent).

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::future::join_all;
use thiserror::Error;

use order_closer_core::broker::BrokerError;
use order_closer_core::broker::publisher::{ParkNote, Publisher};
use order_closer_core::db::outbox::{self, Claim, KIND_CLOSE, KIND_EVENT, OutboxRow};
use order_closer_core::message::CloseMessage;

/// Publishes in flight at once.
pub const PUBLISH_WINDOW: usize = 500;

/// A relay failure.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    /// The broker failed; the unpublished rows stay in the outbox.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Publishes outbox rows through one publisher.
pub struct Relay {
    publisher: Publisher,
    /// Rows the broker confirmed whose delete has not committed yet.
    confirmed: Mutex<BTreeSet<i64>>,
}

impl Relay {
    /// A relay publishing with `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Self {
            publisher,
            confirmed: Mutex::new(BTreeSet::new()),
        }
    }

    /// The publisher.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn confirmed(&self) -> std::sync::MutexGuard<'_, BTreeSet<i64>> {
        // A poisoned lock only means another task panicked mid-insert; the set is usable.
        self.confirmed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the claimed rows ([`PUBLISH_WINDOW`] at a time, each window's confirms
    /// awaited together) and deletes the ones the broker confirmed. Returns how many were published; when some
    /// publishes fail, the confirmed ones are still deleted and the first error returned.
    pub async fn flush(
        &self,
        conn: &mut AsyncPgConnection,
        which: Claim,
    ) -> Result<usize, RelayError> {
        let leftovers: Vec<i64> = self.confirmed().iter().copied().collect();
        let (done, failure) = conn
            .transaction::<_, RelayError, _>(async |tx| {
                if !leftovers.is_empty() {
                    outbox::delete(tx, &leftovers).await?;
                }
                let rows = outbox::claim(tx, which).await?;
                // A window of publishes in flight at once: one wait for all their confirms.
                let mut published = Vec::with_capacity(rows.len());
                for window in rows.chunks(PUBLISH_WINDOW) {
                    let confirms = window.iter().map(|row| publish_row(&self.publisher, row));
                    published.extend(join_all(confirms).await);
                }
                let mut done = Vec::with_capacity(rows.len());
                let mut failure = None;
                for (row, result) in rows.iter().zip(published) {
                    match result {
                        Ok(()) => {
                            self.confirmed().insert(row.id);
                            done.push(row.id);
                        }
                        Err(e) => {
                            failure.get_or_insert(e);
                        }
                    }
                }
                if !done.is_empty() {
                    outbox::delete(tx, &done).await?;
                }
                Ok((done, failure))
            })
            .await?;
        {
            let mut confirmed = self.confirmed();
            for id in leftovers.iter().chain(&done) {
                confirmed.remove(id);
            }
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(done.len()),
        }
    }
}

async fn publish_row(publisher: &Publisher, row: &OutboxRow) -> Result<(), BrokerError> {
    match row.kind.as_str() {
        KIND_CLOSE => match CloseMessage::decode(row.payload.as_bytes()) {
            Ok(message) => publisher.schedule(&message, Utc::now()).await.map(|_| ()),
            Err(e) => {
                // Only a hand-edited row can get here; park it rather than lose it.
                tracing::error!(outbox_id = row.id, error = %e, "outbox row holds an invalid close message; parking it");
                let error = e.to_string();
                publisher
                    .park(row.payload.as_bytes(), &outbox_park_note(&error))
                    .await
            }
        },
        KIND_EVENT => {
            publisher
                .event(&row.routing_key, row.payload.as_bytes())
                .await
        }
        other => {
            tracing::error!(
                outbox_id = row.id,
                kind = other,
                "unknown outbox kind; parking it"
            );
            publisher
                .park(row.payload.as_bytes(), &outbox_park_note(other))
                .await
        }
    }
}

fn outbox_park_note(error: &str) -> ParkNote<'_> {
    ParkNote {
        reason: "invalid_outbox_row",
        last_error: error,
        attempts: 0,
        first_seen: Utc::now(),
    }
}

/// Inserts an event row (inside the caller's decision transaction).
pub async fn enqueue_event(
    conn: &mut AsyncPgConnection,
    routing_key: &str,
    payload: &str,
) -> diesel::QueryResult<i64> {
    outbox::insert(
        conn,
        &outbox::NewOutboxRow {
            kind: KIND_EVENT,
            routing_key,
            payload,
        },
    )
    .await
}
