//! The change notices of refreshes, sent after the refresh's write has committed, in
//! batches, in transactions that do not wait for the disk.
//!
//! A notice sent in its change's transaction is delivered exactly when the change
//! commits, and that is what every other write does. But PostgreSQL serialises the
//! commits of transactions that notify (one lock on the notice queue, held until
//! the commit is flushed to disk), so 1,000 refreshes committed one disk flush
//! after another instead of sharing flushes. A refresh's write
//! ([`CredentialsUpdate::Refreshed`](keyhaven_core::CredentialsUpdate::Refreshed))
//! commits on its own, durable, and queues its notice here; one task sends what
//! is queued in one statement with `synchronous_commit` off. A notice lost on the
//! way (the process died in between) leaves other instances serving the older,
//! still valid token until it is due; see that variant's doc.

use std::time::Duration;

use parking_lot::Mutex;
use sqlx::postgres::PgPool;
use tokio::sync::mpsc;

use super::CHANNEL;

/// At most this many notices per statement.
const BATCH: usize = 512;
/// Tries of one batch before its notices are given up (logged).
const TRIES: u32 = 3;

/// The queue of notices waiting to be sent, and the task sending them.
pub(super) struct Deferred {
    pool: PgPool,
    queue: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl Deferred {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            queue: Mutex::new(None),
        }
    }

    /// Queues `payload` (see `change_of`) for [`CHANNEL`]. Starts the sending task
    /// on the current runtime when there is none yet, or when the runtime the last
    /// one ran on has ended.
    pub(super) fn send(&self, mut payload: String) {
        let mut queue = self.queue.lock();
        if let Some(q) = queue.as_ref() {
            match q.send(payload) {
                Ok(()) => return,
                Err(unsent) => payload = unsent.0,
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if tx.send(payload).is_ok() {
            tokio::spawn(send_queued(self.pool.clone(), rx));
            *queue = Some(tx);
        }
    }
}

/// Sends what is queued, a batch per statement, until the queue is dropped.
async fn send_queued(pool: PgPool, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for attempt in 1..=TRIES {
            // `set_config(.., true)` is local to this statement's transaction.
            let sent = sqlx::query(
                "SELECT pg_notify($1, p) FROM (SELECT set_config('synchronous_commit', 'off', true)) AS s, unnest($2::text[]) AS p",
            )
            .bind(CHANNEL)
            .bind(&batch)
            .execute(&pool)
            .await;
            match sent {
                Ok(_) => break,
                Err(e) if attempt == TRIES => {
                    tracing::warn!(error = %e, notices = batch.len(), "could not tell other instances of refreshed accounts; they serve the older tokens until those are due");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await,
            }
        }
        batch.clear();
    }
}
