//! Group commit: many tasks each submit a small piece of database work (read this order,
//! write that decision); one lane per kind of work runs whatever has queued up as one
//! group, in one statement or one transaction. A burst of N decisions then costs a few
//! round trips and one commit instead of N times several.
//!
//! A group forms without waiting: a lane takes the first request, then everything
//! already queued (up to `max_group`), runs it and answers each caller. Under light load a
//! group is a single request, so nothing is delayed; under load groups grow while the
//! previous one runs. With several lanes (each on its own connection), one group can be
//! written while another waits for its commit.
//!
//! A group whose statement the server rejected wrote nothing, so each of its members runs
//! again alone and only the bad one fails. A group whose outcome is unknown (the connection
//! broke, or no answer within [`GROUP_TIMEOUT`]) is not run again: each member is told
//! [`DbError::Unavailable`] and its caller tries later (a decision is then found settled,
//! an order found created). A database outage fails each caller the same way.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{DbError, DbPool, PooledConn};

/// Longest a group may run before its callers are told the database is unavailable (the
/// connection is then discarded, never reused mid-statement).
pub const GROUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One kind of groupable work.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    /// What one caller submits.
    type Item: Send + Sync + 'static;
    /// What one caller gets back.
    type Output: Send + 'static;

    /// Runs a group; returns exactly one output per item, in the items' order.
    async fn run(
        &self,
        conn: &mut AsyncPgConnection,
        items: &[Self::Item],
    ) -> QueryResult<Vec<Self::Output>>;

    /// Items with the same key never share a group (for example two writes to one row).
    fn key(&self, _item: &Self::Item) -> Option<i64> {
        None
    }
}

type Reply<J> = oneshot::Sender<Result<<J as Job>::Output, DbError>>;

struct Request<J: Job> {
    item: J::Item,
    reply: Reply<J>,
}

/// A handle submitting work to one lane; cheap to clone. The lane task starts on the
/// first submission and ends when the last handle is dropped.
pub struct Batcher<J: Job> {
    shared: Arc<Shared<J>>,
}

impl<J: Job> Clone for Batcher<J> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<J: Job> {
    pool: DbPool,
    job: Arc<J>,
    max_group: usize,
    lanes: usize,
    /// The queue's sending end; replaced (with fresh lanes) if every lane has stopped.
    sender: StdMutex<Option<mpsc::UnboundedSender<Request<J>>>>,
}

impl<J: Job> Batcher<J> {
    /// One lane running `job` on connections from `pool`, at most `max_group` items at
    /// once (1 runs every request alone).
    pub fn new(pool: DbPool, job: J, max_group: usize) -> Self {
        Self::with_lanes(pool, job, max_group, 1)
    }

    /// `lanes` lanes taking groups from one queue. Two requests with the same key never
    /// share a group, but may run at once in two lanes: use one lane when that matters.
    pub fn with_lanes(pool: DbPool, job: J, max_group: usize, lanes: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                job: Arc::new(job),
                max_group: max_group.max(1),
                lanes: lanes.max(1),
                sender: StdMutex::new(None),
            }),
        }
    }

    /// The job this lane runs.
    pub fn job(&self) -> &J {
        &self.shared.job
    }

    /// Submits one item and waits for its output.
    pub async fn submit(&self, item: J::Item) -> Result<J::Output, DbError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request { item, reply })?;
        answer
            .await
            .map_err(|_| DbError::Unavailable("database lane dropped the request".into()))?
    }

    /// Submits one item without waiting for it, for work whose failure is harmless (a
    /// failed group is logged).
    pub fn submit_detached(&self, item: J::Item) {
        let (reply, _) = oneshot::channel();
        if let Err(e) = self.send(Request { item, reply }) {
            tracing::warn!(error = %e, "database work dropped");
        }
    }

    /// Queues a request, starting the lanes on first use, and again if they all stopped
    /// (a panic, or the runtime they ran on shut down).
    fn send(&self, request: Request<J>) -> Result<(), DbError> {
        let shared = &self.shared;
        let mut sender = shared.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let (tx, rx) = mpsc::unbounded_channel();
            let receiver = Arc::new(Mutex::new(rx));
            for _ in 0..shared.lanes {
                tokio::spawn(lane(
                    shared.pool.clone(),
                    shared.job.clone(),
                    shared.max_group,
                    receiver.clone(),
                ));
            }
            *sender = Some(tx);
        }
        sender
            .as_ref()
            .ok_or_else(|| DbError::Unavailable("database lane stopped".into()))?
            .send(request)
            .map_err(|_| DbError::Unavailable("database lane stopped".into()))
    }
}

/// Takes groups off the queue and runs them until every handle is gone.
async fn lane<J: Job>(
    pool: DbPool,
    job: Arc<J>,
    max_group: usize,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Request<J>>>>,
) {
    // Requests that could not join this lane's last group (same key as a member); they
    // start its next group, before anything new is waited for.
    let mut held: VecDeque<Request<J>> = VecDeque::new();
    loop {
        let mut group = Group::new(job.as_ref(), max_group);
        let mut deferred = VecDeque::new();
        while let Some(request) = held.pop_front() {
            group.offer(request, &mut deferred);
        }
        {
            // The queue is this lane's while it adds to a group; the other lanes wait.
            let mut queue = if group.is_empty() {
                let mut queue = receiver.lock().await;
                match queue.recv().await {
                    Some(first) => group.offer(first, &mut deferred),
                    None => return,
                }
                Some(queue)
            } else {
                // Held requests never wait on another lane's empty queue.
                receiver.try_lock().ok()
            };
            if let Some(queue) = queue.as_mut() {
                while !group.is_full() {
                    match queue.try_recv() {
                        Ok(request) => group.offer(request, &mut deferred),
                        Err(_) => break,
                    }
                }
            }
        }
        held = deferred;
        // A panicking job fails its group (its callers see the database unavailable)
        // and the lane goes on: a request queued meanwhile is never lost with the lane.
        let ran = std::panic::AssertUnwindSafe(run_group(&pool, job.as_ref(), group.members))
            .catch_unwind()
            .await;
        if ran.is_err() {
            tracing::error!("a database group panicked; its members fail as unavailable");
        }
    }
}

/// A group being formed: at most `max` members, no two with one key.
struct Group<'a, J: Job> {
    job: &'a J,
    max: usize,
    keys: HashSet<i64>,
    members: Vec<Request<J>>,
}

impl<'a, J: Job> Group<'a, J> {
    fn new(job: &'a J, max: usize) -> Self {
        Self {
            job,
            max,
            keys: HashSet::new(),
            members: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn is_full(&self) -> bool {
        self.members.len() >= self.max
    }

    /// Takes the request, or defers it when the group is full or has its key.
    fn offer(&mut self, request: Request<J>, deferred: &mut VecDeque<Request<J>>) {
        let fits = !self.is_full()
            && match self.job.key(&request.item) {
                Some(k) => self.keys.insert(k),
                None => true,
            };
        if fits {
            self.members.push(request);
        } else {
            deferred.push_back(request);
        }
    }
}

/// Runs a group and answers every member; when the server rejected it, runs each member
/// alone.
async fn run_group<J: Job>(pool: &DbPool, job: &J, group: Vec<Request<J>>) {
    let (items, replies): (Vec<J::Item>, Vec<Reply<J>>) =
        group.into_iter().map(|r| (r.item, r.reply)).unzip();
    let failure = match attempt(pool, job, &items).await {
        Ok(outputs) => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                let _ = reply.send(Ok(output));
            }
            return;
        }
        Err(e) => e,
    };
    if items.len() == 1 {
        // A group of one: its caller gets the error itself (a duplicate, say).
        if let Some(reply) = replies.into_iter().next() {
            let _ = reply.send(Err(failure));
        }
        return;
    }
    if !rejected_by_server(&failure) {
        let text = format!("outcome unknown, not written again: {failure}");
        for reply in replies {
            let _ = reply.send(Err(DbError::Unavailable(text.clone())));
        }
        return;
    }
    tracing::warn!(error = %failure, size = items.len(), "database group failed; running its members one by one");
    for (i, reply) in replies.into_iter().enumerate() {
        let alone = attempt(pool, job, &items[i..=i])
            .await
            .and_then(|mut outputs| {
                outputs
                    .pop()
                    .ok_or_else(|| DbError::Unavailable("database job returned nothing".into()))
            });
        let _ = reply.send(alone);
    }
}

/// Whether the server answered the group with an error, so that it wrote nothing (as
/// opposed to a broken connection or no answer, after which it may have committed).
fn rejected_by_server(failure: &DbError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match failure {
        DbError::Query(Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _)) => false,
        // The server's own error, or one raised before anything was sent.
        DbError::Query(
            Error::DatabaseError(..) | Error::QueryBuilderError(_) | Error::SerializationError(_),
        ) => true,
        // Anything else (an answer that could not be read, ...) may follow a commit.
        DbError::Query(_) | DbError::Unavailable(_) | DbError::Migration(_) => false,
    }
}

/// One run of the job on a pooled connection, under [`GROUP_TIMEOUT`].
async fn attempt<J: Job>(
    pool: &DbPool,
    job: &J,
    items: &[J::Item],
) -> Result<Vec<J::Output>, DbError> {
    let mut conn: PooledConn = super::conn(pool).await?;
    match tokio::time::timeout(GROUP_TIMEOUT, job.run(&mut conn, items)).await {
        Ok(Ok(outputs)) if outputs.len() == items.len() => Ok(outputs),
        Ok(Ok(outputs)) => Err(DbError::Unavailable(format!(
            "database job answered {} of {} requests",
            outputs.len(),
            items.len()
        ))),
        Ok(Err(e)) => Err(DbError::Query(e)),
        Err(_) => {
            // The statement may still be running: never hand this connection out again.
            drop(deadpool::managed::Object::take(conn));
            Err(DbError::Unavailable(format!(
                "no answer from the database within {GROUP_TIMEOUT:?}"
            )))
        }
    }
}
