//! Refresh locks: `pg_advisory_xact_lock` on connections of their own, taken in
//! groups.
//!
//! A refresh holds its account's lock for as long as it talks to the provider, and
//! needs the request connections meanwhile for its re-read and its write. Were the
//! lock held on a request connection, as many simultaneous refreshes as the pool has
//! connections would hold them all and wait for each other until the acquire
//! timeout. The locks live on connections of their own instead (`lock_connections`
//! of them, admitted by a semaphore with as many permits), and a holder borrows a
//! request connection only for single statements, never while it waits for a lock.
//!
//! **Groups.** One transaction per lock cost four round trips (`BEGIN`, the lock,
//! `COMMIT`, and the pool's ping when the connection came back) on top of the
//! refresh's own statements. Now callers queue for their lock ([`super::groups`]),
//! and whenever a lock connection is free one transaction tries up to
//! [`GROUP_MAX`] of the queued accounts in one statement
//! (`pg_try_advisory_xact_lock` of each). Each lock taken goes to its caller at
//! once; the transaction commits, releasing the group's locks, when every holder
//! of the group has released or dropped its lock. A lock the statement could not
//! take (another instance holds it, or another group of this process) is waited
//! for on a transaction of its own, as before, so a group never waits holding
//! locks and no two waiters can deadlock. 1,000 locks taken and released at once:
//! about 6 ms on this 2-core machine.
//!
//! The price: a lock is held until the last holder of its group is done, so another
//! instance asking for the same account waits for the group's slowest refresh (in a
//! storm, the refreshes of one group run side by side). A caller whose account is
//! already queued waits for a later group, since a transaction's advisory locks are
//! re-entrant: two holders in one group would not exclude each other.
//!
//! **Versions.** Once a group's locks are taken, one statement reads the version
//! of each of its accounts (on a request connection, so in a snapshot taken after
//! the locks were), and each lock carries its account's
//! ([`AccountLock::version`]): a holder that read the account before locking and
//! finds the same version skips its re-read. A lock waited for alone reads its
//! version the same way. Should that read fail, the locks carry none and their
//! holders re-read, as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keyhaven_core::{AccountLock, ConnectedAccountId, StoreError};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::groups::{Groups, Member};
use super::{copy_of, map_err};

/// How many accounts one lock transaction tries at most. With the default 8 lock
/// connections, 1,024 refreshes hold their locks at once. With 64, a storm of 1,000
/// went in two waves: the second could only lock once the first wave's groups had
/// committed, each waiting for its slowest refresh. Measured with the library storm on
/// PostgreSQL (old and new in turns, six each, medians): 218 ms with 64, 167 ms
/// with 128. 256 measured no better than 128 and holds each group's locks for the
/// slowest of more refreshes.
pub(super) const GROUP_MAX: usize = 128;

/// The advisory lock key of an account: the first 8 bytes of SHA-256 of its id.
pub(super) fn lock_key(id: &ConnectedAccountId) -> i64 {
    let d = Sha256::digest(id.as_str().as_bytes());
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

type Answer = oneshot::Sender<Result<Box<dyn AccountLock>, StoreError>>;

/// A caller waiting for its account's lock.
struct Waiter {
    id: ConnectedAccountId,
    key: i64,
    answer: Answer,
}

impl Member for Waiter {
    type Key = i64;
    fn key(&self) -> i64 {
        self.key
    }
    fn gave_up(&self) -> bool {
        self.answer.is_closed()
    }
}

/// Where the locks are taken: the lock connections, and how long a caller waits.
#[derive(Clone)]
struct Connections {
    pool: PgPool,
    /// Where the locked accounts' versions are read: not on the lock connections,
    /// whose transactions began before their locks were taken.
    versions: PgPool,
    /// One per lock transaction open at once (a group's or a lone waiter's).
    slots: Arc<Semaphore>,
    /// How long a caller waits for its lock, for a connection and then for the lock
    /// itself (held by another instance), before `Unavailable`.
    wait: Duration,
}

/// The refresh locks of one store.
#[derive(Clone)]
pub(super) struct RefreshLocks {
    groups: Groups<Waiter>,
    wait: Duration,
}

impl RefreshLocks {
    /// Locks on `pool`'s connections, at most `connections` transactions at once;
    /// the locked accounts' versions read on `versions`.
    pub(super) fn new(pool: PgPool, versions: PgPool, connections: usize, wait: Duration) -> Self {
        let slots = Arc::new(Semaphore::new(connections.max(1)));
        let on = Connections {
            pool,
            versions,
            slots: slots.clone(),
            wait,
        };
        Self {
            groups: Groups::new(slots, GROUP_MAX, move |group, slot| {
                hold_group(on.clone(), group, slot)
            }),
            wait,
        }
    }

    /// Waits for the lock of `id`: see the module's doc.
    pub(super) async fn lock(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Box<dyn AccountLock>, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.groups.push(Waiter {
            id: id.clone(),
            key: lock_key(id),
            answer,
        });
        match tokio::time::timeout(self.wait, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::Unavailable("the store is closing".into())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the refresh lock of {id} was not taken within {:?}: held by another instance, or every lock connection was busy; the provider may be answering slowly, try again later",
                self.wait
            ))),
        }
    }
}

/// Tries the group's locks in one transaction, hands out those it took, sends the
/// others to wait on transactions of their own, and commits once every holder of
/// the group is done.
async fn hold_group(on: Connections, group: Vec<Waiter>, slot: OwnedSemaphorePermit) {
    let keys: Vec<i64> = group.iter().map(|w| w.key).collect();
    let tried = async {
        let mut tx = super::begin(&on.pool).await?;
        let taken: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(k) FROM unnest($1::int8[]) WITH ORDINALITY AS t(k, n) ORDER BY n",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        Ok::<_, sqlx::Error>((tx, taken))
    }
    .await;
    let (tx, taken) = match tried {
        Ok((tx, taken)) if taken.len() == group.len() => (tx, taken),
        Ok(_) => {
            for w in group {
                let _ = w.answer.send(Err(StoreError::Backend(
                    "PostgreSQL answered the group lock with the wrong number of rows".into(),
                )));
            }
            return;
        }
        Err(e) => {
            let e = map_err(e);
            for w in group {
                let _ = w.answer.send(Err(copy_of(&e)));
            }
            return;
        }
    };
    let locked: Vec<&str> = group
        .iter()
        .zip(&taken)
        .filter(|&(_, &taken)| taken)
        .map(|(w, _)| w.id.as_str())
        .collect();
    let versions = read_versions(&on.versions, &locked).await;
    let (held, mut all_done) = mpsc::channel::<()>(1);
    for (w, taken) in group.into_iter().zip(taken) {
        if taken {
            let _ = w.answer.send(Ok(Box::new(GroupLock {
                _held: held.clone(),
                version: versions.get(w.id.as_str()).copied(),
            })));
        } else {
            tokio::spawn(wait_alone(on.clone(), w));
        }
    }
    drop(held);
    // `None` once every holder's sender is gone: released or dropped.
    let _ = all_done.recv().await;
    if let Err(e) = tx.commit().await {
        // The locks go with the connection, which the pool now drops.
        tracing::warn!(error = %e, "a group of refresh locks could not be committed; they were released with its connection");
    }
    drop(slot);
}

/// Waits for one lock held elsewhere, on a transaction of its own. A caller that
/// gave up while this waited for a lock connection is not waited for further: the
/// connection goes to the next. (Once the statement is sent, it ends within the
/// lock timeout, which is the caller's own wait.)
async fn wait_alone(on: Connections, mut w: Waiter) {
    let result = async {
        let slot = tokio::select! {
            slot = on.slots.clone().acquire_owned() => {
                slot.map_err(|_| StoreError::Unavailable("the store is closing".into()))?
            }
            () = w.answer.closed() => return Err(gave_up()),
        };
        if w.gave_up() {
            return Err(gave_up());
        }
        let mut tx = super::begin(&on.pool).await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(w.key)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                    StoreError::Unavailable(format!(
                        "the refresh lock of {} was held by another instance for more than {:?}",
                        w.id, on.wait
                    ))
                }
                _ => map_err(e),
            })?;
        let version = read_versions(&on.versions, &[w.id.as_str()])
            .await
            .remove(w.id.as_str());
        Ok(Box::new(AdvisoryLock {
            tx: Some(tx),
            _slot: slot,
            version,
        }) as Box<dyn AccountLock>)
    }
    .await;
    // A caller that gave up drops what it would have got: the lock is released.
    let _ = w.answer.send(result);
}

/// What a waiter whose caller gave up is answered (nobody reads it).
fn gave_up() -> StoreError {
    StoreError::Unavailable("the caller stopped waiting for the refresh lock".into())
}

/// The stored versions of the accounts `ids` that exist, read in one statement;
/// none when the read fails (their holders then re-read the accounts).
async fn read_versions(pool: &PgPool, ids: &[&str]) -> HashMap<String, u64> {
    if ids.is_empty() {
        return HashMap::new();
    }
    let rows: Result<Vec<(String, i64)>, _> =
        sqlx::query_as("SELECT id, version FROM connected_accounts WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await;
    match rows {
        Ok(rows) => rows
            .into_iter()
            .filter_map(|(id, version)| Some((id, u64::try_from(version).ok()?)))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %map_err(e), "the locked accounts' versions could not be read; their holders re-read them");
            HashMap::new()
        }
    }
}

/// A lock of a group: releasing or dropping it lets the group's transaction end
/// once the group's other holders are done.
struct GroupLock {
    _held: mpsc::Sender<()>,
    version: Option<u64>,
}

#[async_trait]
impl AccountLock for GroupLock {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }

    fn version(&self) -> Option<u64> {
        self.version
    }
}

/// A lock waited for alone: its transaction ends at release (commit) or drop
/// (rolled back when the connection goes back to the pool).
struct AdvisoryLock {
    tx: Option<Transaction<'static, Postgres>>,
    _slot: OwnedSemaphorePermit,
    version: Option<u64>,
}

#[async_trait]
impl AccountLock for AdvisoryLock {
    async fn release(mut self: Box<Self>) -> Result<(), StoreError> {
        match self.tx.take() {
            Some(tx) => tx.commit().await.map_err(map_err),
            None => Ok(()),
        }
    }

    fn version(&self) -> Option<u64> {
        self.version
    }
}
