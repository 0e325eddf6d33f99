//! This process's copies of listings by one entity: the pages and counts the
//! server answers `GET /api/v1/connectedAccounts?user_uuid=...` and its v3 peer
//! with (see [`crate::ConnectedAccounts::list_cached`]). An SDK lists an entity's
//! connections far more often than they change.
//!
//! Kept by entity, so that a change drops only the listings of the entity it
//! touched: each account change names the entities the account belonged to before
//! and after (this process's writes, through [`crate::metered`]; other instances'
//! through the store's feed). A change that names none (a delete here, a store that
//! cannot say) drops every listing. Bounded by the accounts the pages hold; an
//! entity's listings go whole when room is needed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven_core::{AccountFilter, ConnectedAccount, ConnectedAccountId, EntityId, Page};

/// A listing's copy, with when it was read.
type Copy<T> = (Instant, T);

/// One entity's listings, by their whole filter.
#[derive(Default)]
struct Entity {
    pages: HashMap<AccountFilter, Copy<Arc<Page<ConnectedAccount>>>>,
    counts: HashMap<AccountFilter, Copy<u64>>,
}

impl Entity {
    /// The room its copies take: one per listing, and one per account listed.
    fn weight(&self) -> usize {
        self.counts.len()
            + self
                .pages
                .values()
                .map(|p| page_weight(&p.1))
                .sum::<usize>()
    }
}

fn page_weight(page: &Page<ConnectedAccount>) -> usize {
    page.items.len() + 1
}

/// The listings, behind one lock (held for a lookup or an insert, never across a
/// read of the store).
pub(crate) struct Listings {
    capacity: usize,
    inner: parking_lot::Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_entity: HashMap<EntityId, Entity>,
    /// The entity under which each account in a kept page was listed: a change of
    /// the account drops that entity's listings too, should it have moved.
    listed_under: HashMap<ConnectedAccountId, EntityId>,
    /// The room all copies take (see [`Entity::weight`]), at most `capacity`.
    held: usize,
}

/// The one entity `filter` lists, if it lists exactly one: only those are kept.
pub(crate) fn entity_of(filter: &AccountFilter) -> Option<&EntityId> {
    match filter.entity_ids.as_slice() {
        [entity] => Some(entity),
        _ => None,
    }
}

impl Listings {
    /// Listings holding at most `capacity` accounts and counts in all.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: parking_lot::Mutex::default(),
        }
    }

    /// The page `filter` lists, if read less than `ttl` ago.
    pub(crate) fn page(
        &self,
        filter: &AccountFilter,
        ttl: Duration,
    ) -> Option<Arc<Page<ConnectedAccount>>> {
        let entity = entity_of(filter)?;
        let inner = self.inner.lock();
        let copy = inner.by_entity.get(entity)?.pages.get(filter)?;
        (copy.0.elapsed() < ttl).then(|| copy.1.clone())
    }

    /// The count of `filter`, if read less than `ttl` ago.
    pub(crate) fn count(&self, filter: &AccountFilter, ttl: Duration) -> Option<u64> {
        let entity = entity_of(filter)?;
        let inner = self.inner.lock();
        let copy = inner.by_entity.get(entity)?.counts.get(filter)?;
        (copy.0.elapsed() < ttl).then_some(copy.1)
    }

    /// Keeps `page`, read for `filter`, if `still` holds under the lock (no change
    /// came while it was read: see [`super::CredentialCache::generation`]).
    pub(crate) fn put_page(
        &self,
        filter: &AccountFilter,
        page: Arc<Page<ConnectedAccount>>,
        still: impl FnOnce() -> bool,
    ) {
        let Some(entity) = entity_of(filter) else {
            return;
        };
        let weight = page_weight(&page);
        let mut inner = self.inner.lock();
        if !still() || !inner.make_room(weight, self.capacity) {
            return;
        }
        for account in &page.items {
            inner
                .listed_under
                .insert(account.id.clone(), entity.clone());
        }
        let held = inner.by_entity.entry(entity.clone()).or_default();
        let before = held.weight();
        held.pages.insert(filter.clone(), (Instant::now(), page));
        let after = held.weight();
        inner.held = inner.held + after - before;
    }

    /// Keeps the count of `filter`, as [`Listings::put_page`].
    pub(crate) fn put_count(
        &self,
        filter: &AccountFilter,
        count: u64,
        still: impl FnOnce() -> bool,
    ) {
        let Some(entity) = entity_of(filter) else {
            return;
        };
        let mut inner = self.inner.lock();
        if !still() || !inner.make_room(1, self.capacity) {
            return;
        }
        let held = inner.by_entity.entry(entity.clone()).or_default();
        if held
            .counts
            .insert(filter.clone(), (Instant::now(), count))
            .is_none()
        {
            inner.held += 1;
        }
    }

    /// Drops the listings of `entities`, and those `id` was listed in.
    pub(crate) fn forget(&self, id: &ConnectedAccountId, entities: &[EntityId]) {
        let mut inner = self.inner.lock();
        if let Some(under) = inner.listed_under.get(id).cloned() {
            inner.drop_entity(&under);
        }
        for entity in entities {
            inner.drop_entity(entity);
        }
    }

    /// Drops the listings of `entity`.
    pub(crate) fn forget_entity(&self, entity: &EntityId) {
        self.inner.lock().drop_entity(entity);
    }

    /// Drops every listing.
    pub(crate) fn clear(&self) {
        *self.inner.lock() = Inner::default();
    }

    /// How much room the copies take (tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner.lock().held
    }
}

impl Inner {
    fn drop_entity(&mut self, entity: &EntityId) {
        let Some(gone) = self.by_entity.remove(entity) else {
            return;
        };
        self.held -= gone.weight();
        for page in gone.pages.values() {
            for account in &page.1.items {
                if self.listed_under.get(&account.id) == Some(entity) {
                    self.listed_under.remove(&account.id);
                }
            }
        }
    }

    /// Drops whole entities' listings (whichever come first) until `weight` more
    /// fits in `capacity`; false when it never can.
    fn make_room(&mut self, weight: usize, capacity: usize) -> bool {
        if weight > capacity {
            return false;
        }
        while self.held + weight > capacity {
            let Some(entity) = self.by_entity.keys().next().cloned() else {
                break;
            };
            self.drop_entity(&entity);
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn filter(entity: &str) -> AccountFilter {
        AccountFilter {
            entity_ids: vec![EntityId::new(entity).unwrap()],
            ..AccountFilter::default()
        }
    }

    fn account(entity: &str) -> ConnectedAccount {
        ConnectedAccount::new(
            ConnectedAccountId::generate().unwrap(),
            EntityId::new(entity).unwrap(),
            keyhaven_core::IntegrationId::generate().unwrap(),
            keyhaven_core::AppSlug::new("openai").unwrap(),
            "API_KEY",
            keyhaven_core::ConnectionStatus::Active,
            chrono::Utc::now(),
        )
    }

    fn page(entity: &str, n: usize) -> Arc<Page<ConnectedAccount>> {
        let items = (0..n).map(|_| account(entity)).collect();
        Arc::new(Page::new(items, None))
    }

    #[test]
    fn a_change_drops_its_entities_listings_and_no_other() {
        let l = Listings::new(100);
        let (a, b) = (filter("alice"), filter("bob"));
        let alices = page("alice", 2);
        l.put_page(&a, alices.clone(), || true);
        l.put_count(&a, 2, || true);
        l.put_page(&b, page("bob", 1), || true);
        assert_eq!(l.held(), 3 + 1 + 2);
        assert_eq!(l.page(&a, TTL).unwrap().items.len(), 2);
        assert_eq!(l.count(&a, TTL), Some(2));

        // A new account of bob's: alice's listings stay.
        l.forget(&account("bob").id, &[EntityId::new("bob").unwrap()]);
        assert!(l.page(&b, TTL).is_none());
        assert_eq!(l.page(&a, TTL).unwrap().items.len(), 2);
        assert_eq!(l.held(), 4);

        // One of alice's accounts, said to be carol's now: alice's listings go too.
        l.forget(&alices.items[0].id, &[EntityId::new("carol").unwrap()]);
        assert!(l.page(&a, TTL).is_none());
        assert!(l.count(&a, TTL).is_none());
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn what_is_read_while_something_changes_is_not_kept() {
        let l = Listings::new(100);
        let a = filter("alice");
        l.put_page(&a, page("alice", 1), || false);
        l.put_count(&a, 1, || false);
        assert!(l.page(&a, TTL).is_none());
        assert!(l.count(&a, TTL).is_none());
    }

    #[test]
    fn old_copies_are_not_served() {
        let l = Listings::new(100);
        let a = filter("alice");
        l.put_page(&a, page("alice", 1), || true);
        assert!(l.page(&a, Duration::ZERO).is_none());
        assert!(l.page(&a, TTL).is_some());
    }

    #[test]
    fn room_is_bounded_and_made_by_dropping_whole_entities() {
        let l = Listings::new(10);
        for i in 0..20 {
            let entity = format!("e{i}");
            l.put_page(&filter(&entity), page(&entity, 3), || true);
            assert!(l.held() <= 10, "{} held", l.held());
            assert!(l.page(&filter(&entity), TTL).is_some());
        }
        // A page that can never fit is not kept, and drops nothing.
        l.put_page(&filter("big"), page("big", 10), || true);
        assert!(l.page(&filter("big"), TTL).is_none());
        assert!(l.page(&filter("e19"), TTL).is_some());
        l.clear();
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn listings_of_several_entities_or_none_are_not_kept() {
        let l = Listings::new(100);
        let mut two = filter("alice");
        two.entity_ids.push(EntityId::new("bob").unwrap());
        l.put_page(&two, page("alice", 1), || true);
        l.put_page(&AccountFilter::default(), page("alice", 1), || true);
        assert!(l.page(&two, TTL).is_none());
        assert_eq!(l.held(), 0);
    }
}
