//! The credentials cache: decrypted credentials of ACTIVE accounts, kept in this
//! process (bounded, still secret types) so that fresh credentials are served
//! without touching the database; beside them, the accounts themselves (no
//! credentials), integrations and request targets as read for the server's views.
//! Dropped when this process changes the account (every write through the
//! facade's store: see [`crate::metered`]), and when the store reports that another
//! process or instance did. Listings by entity are kept too ([`listings`]).

mod listings;
mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountFilter, ConnectedAccount, ConnectedAccountId, Credentials, EntityId, Error, Integration,
    IntegrationId, Page, StoreChange,
};

/// One cached account.
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) credentials: Credentials,
    /// When these credentials are due for a refresh (expiry less the margin).
    pub(crate) refresh_at: Option<DateTime<Utc>>,
    /// The same moment on the fast monotonic clock, when the system clock is in use.
    pub(crate) refresh_deadline: Option<quanta::Instant>,
}

/// Reading the wall clock costs about 70 ns on these machines, more than the rest
/// of a cached read: with the system clock, freshness is checked against `quanta`'s
/// recent time instead, an atomic that one background thread per process advances
/// every 5 ms (a margin of minutes does not mind 5 ms). Without that thread, it reads
/// the TSC (about 14 ns).
pub(crate) struct FastClock(quanta::Clock);

/// The upkeep thread of `quanta`'s recent time, started once per process.
static UPKEEP: std::sync::OnceLock<Option<quanta::Handle>> = std::sync::OnceLock::new();

impl FastClock {
    pub(crate) fn new() -> Self {
        UPKEEP.get_or_init(|| match quanta::Upkeep::new(std::time::Duration::from_millis(5)).start() {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::debug!(error = %e, "no clock upkeep thread; cached reads read the TSC");
                None
            }
        });
        Self(quanta::Clock::new())
    }

    /// The fast-clock instant of the wall-clock moment `at`, seen from `now`.
    pub(crate) fn deadline(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> quanta::Instant {
        let ahead = (at - now).to_std().unwrap_or_default();
        self.0.now() + ahead
    }

    #[inline]
    pub(crate) fn now(&self) -> quanta::Instant {
        self.0.recent()
    }
}

/// Counts of credential reads, split in shards (one cache line each) so that
/// readers on different cores do not contend for one counter.
pub(crate) struct ReadCounts {
    shards: [Shard; SHARDS],
}

const SHARDS: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct Shard {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The shard of the current thread, given round-robin on its first read.
fn shard() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static SHARD: usize = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS;
    }
    SHARD.with(|s| *s)
}

impl ReadCounts {
    fn new() -> Self {
        Self {
            shards: std::array::from_fn(|_| Shard::default()),
        }
    }

    #[inline]
    pub(crate) fn hit(&self) {
        self.shards[shard()].hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn miss(&self) {
        self.shards[shard()].misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Hits and misses so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(h, m), s| {
            (
                h + s.hits.load(Ordering::Relaxed),
                m + s.misses.load(Ordering::Relaxed),
            )
        })
    }
}

/// Copies of what was read from the store, each with when it was read.
type Copies<K, V> = quick_cache::sync::Cache<K, Arc<(std::time::Instant, V)>>;

/// The cache, shared with the store's change feed.
pub(crate) struct CredentialCache {
    /// Reads served from the cache and not.
    pub(crate) reads: ReadCounts,
    /// Listings served from their copies and not (by one entity only: see
    /// [`listings`]).
    pub(crate) listing_reads: ReadCounts,
    entries: Option<quick_cache::sync::Cache<ConnectedAccountId, Cached>>,
    /// Where each account's requests go, with what (see [`crate::request`]).
    targets: Option<quick_cache::sync::Cache<ConnectedAccountId, Arc<crate::request::Target>>>,
    /// Integrations as read, with when (see [`crate::Integrations::get_cached`], and
    /// [`CredentialCache::integration_or_read_shared`] for refreshes).
    integrations: Option<Copies<IntegrationId, Arc<Integration>>>,
    /// Accounts as read, with when (see [`crate::ConnectedAccounts::get_cached`]).
    accounts: Option<Copies<ConnectedAccountId, ConnectedAccount>>,
    /// Listings by one entity, as read (see [`crate::ConnectedAccounts::list_cached`]).
    listings: Option<listings::Listings>,
    /// Reads of integrations from the store in flight, shared by those who ask
    /// meanwhile (see [`CredentialCache::integration_read`]); on even when caching
    /// is off, as it keeps nothing.
    integration_reads: shared::SharedReads<IntegrationId, Arc<Integration>>,
    /// Bumped by every invalidation, so that a read that started before one does
    /// not put what it read into the cache afterwards.
    generation: AtomicU64,
    /// The same for integrations alone: bumped when an integration changes (or
    /// everything may have), not by the accounts' changes. In a refresh storm
    /// every refresh writes its account; were integration copies judged by
    /// [`CredentialCache::generation`], none read during one would be kept.
    integration_generation: AtomicU64,
}

impl CredentialCache {
    /// A cache of at most `capacity` accounts; 0 turns caching off.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            reads: ReadCounts::new(),
            listing_reads: ReadCounts::new(),
            entries: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
            targets: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
            integrations: (capacity > 0).then(|| quick_cache::sync::Cache::new(1024)),
            accounts: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
            listings: (capacity > 0).then(|| listings::Listings::new(capacity)),
            integration_reads: shared::SharedReads::default(),
            generation: AtomicU64::new(0),
            integration_generation: AtomicU64::new(0),
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

    /// The same, timed by the fast clock (only for entries put with a deadline).
    #[inline]
    pub(crate) fn fresh_fast(&self, id: &str, now: quanta::Instant) -> Option<Credentials> {
        let hit = self.entries.as_ref()?.get(id)?;
        match (hit.refresh_at, hit.refresh_deadline) {
            (Some(_), Some(deadline)) if deadline <= now => None,
            (Some(_), None) => None,
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
        let since = (&self.generation, generation);
        self.insert_since(self.entries.as_ref(), id.clone(), value, since);
    }

    /// The cached request target of `id`.
    pub(crate) fn target(&self, id: &str) -> Option<Arc<crate::request::Target>> {
        self.targets.as_ref()?.get(id)
    }

    /// Caches a request target read since `generation`, as [`CredentialCache::put`].
    pub(crate) fn put_target(
        &self,
        id: &ConnectedAccountId,
        target: Arc<crate::request::Target>,
        generation: u64,
    ) {
        let since = (&self.generation, generation);
        self.insert_since(self.targets.as_ref(), id.clone(), target, since);
    }

    /// The integration `id`: the copy read less than `ttl` ago, else what `read`
    /// gives (see [`CredentialCache::copy_or_read`]).
    pub(crate) async fn integration_or_read(
        &self,
        id: &str,
        ttl: std::time::Duration,
        read: impl Future<Output = Result<Integration, Error>>,
    ) -> Result<Integration, Error> {
        let map = self.integrations.as_ref();
        let read = async { read.await.map(Arc::new) };
        let generation = &self.integration_generation;
        self.copy_or_read(map, generation, id, ttl, |i| i.id.clone(), read)
            .await
            .map(|(integration, _)| Arc::unwrap_or_clone(integration))
    }

    /// The integration `id`: the copy read less than `ttl` ago (and `true`), else
    /// what `read` gives, or the read of `id` already in flight (and `false`), kept
    /// as the copy. For refreshes, which re-read the store when a refresh with a
    /// copy fails (see `Keyhaven::refresh_locked`).
    pub(crate) async fn integration_or_read_shared<F>(
        &self,
        id: &IntegrationId,
        ttl: std::time::Duration,
        read: impl FnOnce() -> F,
    ) -> Result<(Arc<Integration>, bool), Error>
    where
        F: Future<Output = Result<Arc<Integration>, Error>>,
    {
        let map = self.integrations.as_ref();
        let generation = &self.integration_generation;
        let read = self.integration_reads.read(id, read);
        self.copy_or_read(map, generation, id.as_str(), ttl, |i| i.id.clone(), read)
            .await
    }

    /// The integration `id` as stored: what `read` (a read of the store) gives, or
    /// what the read of `id` already in flight gives. Nothing is kept once the
    /// read has ended, so each caller gets what was stored while it waited.
    pub(crate) async fn integration_read<F>(
        &self,
        id: &IntegrationId,
        read: impl FnOnce() -> F,
    ) -> Result<Arc<Integration>, Error>
    where
        F: Future<Output = Result<Arc<Integration>, Error>>,
    {
        self.integration_reads.read(id, read).await
    }

    /// The account `id`: the copy read less than `ttl` ago, else what `read` gives
    /// (see [`CredentialCache::copy_or_read`]).
    pub(crate) async fn account_or_read(
        &self,
        id: &str,
        ttl: std::time::Duration,
        read: impl Future<Output = Result<ConnectedAccount, Error>>,
    ) -> Result<ConnectedAccount, Error> {
        let map = self.accounts.as_ref();
        self.copy_or_read(map, &self.generation, id, ttl, |a| a.id.clone(), read)
            .await
            .map(|(account, _)| account)
    }

    /// The copy of `id` in `map` when it was read less than `ttl` ago (and `true`);
    /// else what `read` gives (and `false`), kept as the copy (stamped now, under
    /// `key_of` of it) unless something was invalidated (`generation` moved) while
    /// it read. `read` must not have started: the generation is taken before it is
    /// first polled.
    async fn copy_or_read<K, V>(
        &self,
        map: Option<&Copies<K, V>>,
        generation: &AtomicU64,
        id: &str,
        ttl: std::time::Duration,
        key_of: impl FnOnce(&V) -> K,
        read: impl Future<Output = Result<V, Error>>,
    ) -> Result<(V, bool), Error>
    where
        K: Eq + std::hash::Hash + Clone + std::borrow::Borrow<str>,
        V: Clone,
    {
        if let Some(hit) = map
            .and_then(|m| m.get(id))
            .filter(|hit| hit.0.elapsed() < ttl)
        {
            return Ok((hit.1.clone(), true));
        }
        let started = generation.load(Ordering::Acquire);
        let value = read.await?;
        let copy = Arc::new((std::time::Instant::now(), value.clone()));
        self.insert_since(map, key_of(&value), copy, (generation, started));
        Ok((value, false))
    }

    /// Inserts `key` into `map` (when caching is on) unless an invalidation came
    /// after the read began (`since`: the generation counter and what it was then),
    /// checked again after the insert: one may slip in between.
    fn insert_since<K, V>(
        &self,
        map: Option<&quick_cache::sync::Cache<K, V>>,
        key: K,
        value: V,
        since: (&AtomicU64, u64),
    ) where
        K: Eq + std::hash::Hash + Clone,
        V: Clone,
    {
        let Some(map) = map else { return };
        let (counter, generation) = since;
        if counter.load(Ordering::Acquire) == generation {
            map.insert(key.clone(), value);
            if counter.load(Ordering::Acquire) != generation {
                map.remove(&key);
            }
        }
    }

    /// The page `filter` lists, if this process read it less than `ttl` ago and
    /// nothing it lists changed since (counted in `listing_reads`).
    pub(crate) fn listed_page(
        &self,
        filter: &AccountFilter,
        ttl: std::time::Duration,
    ) -> Option<Arc<Page<ConnectedAccount>>> {
        let hit = self.listings.as_ref()?.page(filter, ttl);
        self.count_listing(filter, hit.is_some());
        hit
    }

    /// The count of `filter`, as [`CredentialCache::listed_page`].
    pub(crate) fn listed_count(
        &self,
        filter: &AccountFilter,
        ttl: std::time::Duration,
    ) -> Option<u64> {
        let hit = self.listings.as_ref()?.count(filter, ttl);
        self.count_listing(filter, hit.is_some());
        hit
    }

    fn count_listing(&self, filter: &AccountFilter, hit: bool) {
        if listings::entity_of(filter).is_some() {
            if hit {
                self.listing_reads.hit();
            } else {
                self.listing_reads.miss();
            }
        }
    }

    /// Keeps the page read for `filter` since `generation`, unless something
    /// changed since.
    pub(crate) fn put_page(
        &self,
        filter: &AccountFilter,
        page: Arc<Page<ConnectedAccount>>,
        generation: u64,
    ) {
        if let Some(listings) = &self.listings {
            listings.put_page(filter, page, || self.generation() == generation);
        }
    }

    /// Keeps the count read for `filter`, as [`CredentialCache::put_page`].
    pub(crate) fn put_count(&self, filter: &AccountFilter, count: u64, generation: u64) {
        if let Some(listings) = &self.listings {
            listings.put_count(filter, count, || self.generation() == generation);
        }
    }

    /// Forgets the listings of `entity` (an account of it was added).
    pub(crate) fn forget_listings_of(&self, entity: &EntityId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(listings) = &self.listings {
            listings.forget_entity(entity);
        }
    }

    /// Forgets one account, and the listings of `entities` (those it belonged to
    /// before and after its change) and any it was listed in; every listing when
    /// `entities` is `None` (not known).
    pub(crate) fn forget(&self, id: &ConnectedAccountId, entities: Option<&[EntityId]>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(listings) = &self.listings {
            match entities {
                Some(entities) => listings.forget(id, entities),
                None => listings.clear(),
            }
        }
        if let Some(entries) = &self.entries {
            entries.remove(id.as_str());
        }
        if let Some(targets) = &self.targets {
            targets.remove(id.as_str());
        }
        if let Some(accounts) = &self.accounts {
            accounts.remove(id.as_str());
        }
    }

    /// Forgets every request target and cached integration (an integration
    /// changed).
    pub(crate) fn forget_integrations(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.integration_generation.fetch_add(1, Ordering::AcqRel);
        self.integration_reads.forget();
        if let Some(targets) = &self.targets {
            targets.clear();
        }
        if let Some(integrations) = &self.integrations {
            integrations.clear();
        }
    }

    /// Applies a change reported by the store.
    pub(crate) fn apply(&self, change: StoreChange) {
        match change {
            StoreChange::Account { id, entities } => self.forget(&id, entities.as_deref()),
            // The change itself is reported as an Account change too.
            StoreChange::Event(_) => {}
            StoreChange::Everything => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.integration_generation.fetch_add(1, Ordering::AcqRel);
                self.integration_reads.forget();
                if let Some(entries) = &self.entries {
                    entries.clear();
                }
                if let Some(targets) = &self.targets {
                    targets.clear();
                }
                if let Some(integrations) = &self.integrations {
                    integrations.clear();
                }
                if let Some(accounts) = &self.accounts {
                    accounts.clear();
                }
                if let Some(listings) = &self.listings {
                    listings.clear();
                }
            }
        }
    }
}
