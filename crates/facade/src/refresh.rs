//! Refresh bookkeeping: one refresh at a time per account in this process, and
//! back-off after a provider failed.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use keyhaven_core::{ConnectedAccount, ConnectedAccountId, Credentials};
use parking_lot::Mutex;

/// The longest wait between two refresh attempts after failures.
const MAX_BACKOFF_SECS: i64 = 300;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    pub(crate) failures: u32,
    pub(crate) until: DateTime<Utc>,
    pub(crate) last_error: String,
}

/// The lock callers of one account queue on to read it after a cache miss or to
/// refresh it, with what the last read or refresh under it gave.
pub(crate) type Flight = Arc<FlightState>;

/// What a read or refresh under a flight lock gave: the credentials, and the
/// account as read or written with them (the callers queued behind get both, so
/// that none of them reads the account again for its own use: the server's audit
/// line names the account's entity and app).
pub(crate) type Got = (Credentials, ConnectedAccount);

/// See [`Flight`].
#[derive(Default)]
pub(crate) struct FlightState {
    /// Reads and refreshes ended under this lock: a caller that sees it move while
    /// it waits knows one ended meanwhile.
    pub(crate) ended: std::sync::atomic::AtomicU64,
    /// The lock, holding what the last read or refresh gave (none after a failure).
    pub(crate) last: tokio::sync::Mutex<Option<Got>>,
}

impl FlightState {
    /// Takes the lock, and says whether a read or refresh ended under it while this
    /// caller waited (then what it gave, in the guard, is as fresh as a read now).
    pub(crate) async fn wait(&self) -> (tokio::sync::MutexGuard<'_, Option<Got>>, bool) {
        let seen = self.ended.load(std::sync::atomic::Ordering::Acquire);
        let last = self.last.lock().await;
        let ended = self.ended.load(std::sync::atomic::Ordering::Acquire) != seen;
        (last, ended)
    }

    /// Ends a read or refresh made holding the lock (`last`, its guard): leaves what
    /// it gave for the callers queued behind, and tells them that it ended.
    pub(crate) fn end(&self, last: &mut Option<Got>, got: Option<Got>) {
        *last = got;
        self.ended
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// Per-account refresh locks and back-off state.
#[derive(Default)]
pub(crate) struct Refresher {
    locks: Mutex<HashMap<ConnectedAccountId, Flight>>,
    backoff: Mutex<HashMap<ConnectedAccountId, Backoff>>,
}

impl Refresher {
    /// The lock callers of one account queue on, so that one of them refreshes
    /// and the others reuse its result.
    pub(crate) fn lock_for(&self, id: &ConnectedAccountId) -> Flight {
        self.locks.lock().entry(id.clone()).or_default().clone()
    }

    /// Forgets the lock of `id` when no one else holds or waits for it.
    pub(crate) fn release(&self, id: &ConnectedAccountId, lock: Flight) {
        let mut locks = self.locks.lock();
        // Ours and the map's: nobody else has it.
        if Arc::strong_count(&lock) <= 2 {
            locks.remove(id);
        }
    }

    /// The back-off in force for `id` at `now`, if any.
    pub(crate) fn backoff(&self, id: &ConnectedAccountId, now: DateTime<Utc>) -> Option<Backoff> {
        self.backoff
            .lock()
            .get(id)
            .filter(|b| b.until > now)
            .cloned()
    }

    /// Records a failed refresh: waits 1 s, 2 s, 4 s ... up to 5 minutes before the next try.
    pub(crate) fn failed(
        &self,
        id: &ConnectedAccountId,
        now: DateTime<Utc>,
        error: String,
    ) -> Backoff {
        let mut map = self.backoff.lock();
        let failures = map.get(id).map_or(0, |b| b.failures).saturating_add(1);
        let secs = 1_i64
            .checked_shl(failures.saturating_sub(1).min(20))
            .unwrap_or(MAX_BACKOFF_SECS);
        let entry = Backoff {
            failures,
            until: now + Duration::seconds(secs.min(MAX_BACKOFF_SECS)),
            last_error: error,
        };
        map.insert(id.clone(), entry.clone());
        entry
    }

    /// Forgets past failures of `id`.
    pub(crate) fn succeeded(&self, id: &ConnectedAccountId) {
        self.backoff.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let r = Refresher::default();
        let id = ConnectedAccountId::generate().unwrap();
        let now = Utc::now();
        let waits: Vec<i64> = (0..12)
            .map(|_| (r.failed(&id, now, "x".into()).until - now).num_seconds())
            .collect();
        assert_eq!(&waits[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(*waits.last().unwrap(), 300);
        assert!(r.backoff(&id, now).is_some());
        assert!(r.backoff(&id, now + Duration::seconds(301)).is_none());
        r.succeeded(&id);
        assert!(r.backoff(&id, now).is_none());
    }
}
