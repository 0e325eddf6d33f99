//! The credentials cache: decrypted credentials of ACTIVE accounts, kept in this
//! process (bounded, still secret types) so that fresh credentials are served
//! without touching the database. Dropped when this process changes the account,
//! and when the store reports that another process or instance did.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyhaven_core::chrono::{DateTime, Utc};
use keyhaven_core::{ConnectedAccountId, Credentials, StoreChange};

/// One cached account.
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) credentials: Credentials,
    /// When these credentials are due for a refresh (expiry less the margin).
    pub(crate) refresh_at: Option<DateTime<Utc>>,
}

/// The cache, shared with the store's change feed.
pub(crate) struct CredentialCache {
    entries: Option<quick_cache::sync::Cache<ConnectedAccountId, Cached>>,
    /// Bumped by every invalidation, so that a read that started before one does
    /// not put what it read into the cache afterwards.
    generation: AtomicU64,
}

impl CredentialCache {
    /// A cache of at most `capacity` accounts; 0 turns caching off.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            entries: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
            generation: AtomicU64::new(0),
        })
    }

    /// The credentials of `id` if cached and not due for a refresh at `now`.
    #[inline]
    pub(crate) fn fresh(&self, id: &str, now: DateTime<Utc>) -> Option<Credentials> {
        let hit = self.entries.as_ref()?.get(id)?;
        match hit.refresh_at {
            Some(at) if at <= now => None,
            _ => Some(hit.credentials),
        }
    }

    /// The generation to pass to [`CredentialCache::put`] for a read starting now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches what a read that began at `generation` found, unless something was
    /// invalidated since.
    pub(crate) fn put(&self, id: &ConnectedAccountId, value: Cached, generation: u64) {
        let Some(entries) = &self.entries else { return };
        if self.generation.load(Ordering::Acquire) == generation {
            entries.insert(id.clone(), value);
            // An invalidation may have slipped in between the check and the insert.
            if self.generation.load(Ordering::Acquire) != generation {
                entries.remove(id.as_str());
            }
        }
    }

    /// Forgets one account.
    pub(crate) fn forget(&self, id: &ConnectedAccountId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.remove(id.as_str());
        }
    }

    /// Applies a change reported by the store.
    pub(crate) fn apply(&self, change: StoreChange) {
        match change {
            StoreChange::Account(id) => self.forget(&id),
            StoreChange::Everything => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                if let Some(entries) = &self.entries {
                    entries.clear();
                }
            }
        }
    }
}
