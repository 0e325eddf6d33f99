//! The credentials cache of one instance, and its copies of accounts and listings,
//! forget what another instance changed: with PostgreSQL through LISTEN/NOTIFY,
//! with SQLite through `data_version`. And a refresh with a copy of an integration
//! another instance changed is tried again with the stored one when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keyhaven::{
    AccountFilter, ConnectedAccountId, ConnectedAccounts, ConnectionRequest, ConnectionStatus,
    EntityId, ErrorKind, IntegrationUpdate, KeyRing, Keyhaven, MasterKey, PostgresStore,
    SqliteStore, Store,
};
use keyhaven_tests::storm::{
    Fault, TokenEndpoint, assert_each_refreshed_once, is_fresh, seed_with,
};

/// A's listings by entity, through its copies, noting when each entity's copy was
/// last read from the store.
struct Lister<'a> {
    kh: &'a Keyhaven,
    read_at: std::cell::RefCell<std::collections::HashMap<String, std::time::Instant>>,
}

/// One listing as A sees it: the accounts (id and status), and whether more pages
/// follow.
struct Listed {
    items: Vec<(String, ConnectionStatus)>,
    more: bool,
}

impl Lister<'_> {
    /// The accounts A lists for `entity` (`entity/N`: the first page of N), and
    /// whether from a copy.
    async fn list(&self, entity: &str) -> (Listed, bool) {
        let (name, limit) = entity.split_once('/').unwrap_or((entity, "0"));
        let filter = AccountFilter {
            entity_ids: vec![EntityId::new(name).unwrap()],
            limit: limit.parse().unwrap(),
            ..AccountFilter::default()
        };
        let started = std::time::Instant::now();
        let misses = self.kh.listing_cache_counts().misses;
        let page = self
            .kh
            .connected_accounts()
            .list_cached(&filter)
            .await
            .unwrap();
        let copied = self.kh.listing_cache_counts().misses == misses;
        if !copied {
            self.read_at.borrow_mut().insert(entity.to_owned(), started);
        }
        let items = page
            .items
            .iter()
            .map(|a| (a.id.to_string(), a.status))
            .collect();
        let more = page.next_cursor.is_some();
        (Listed { items, more }, copied)
    }

    /// Waits until A's listing of `entity` passes `check`, which must happen
    /// before the copy A held when the wait began ages (that would prove nothing).
    async fn soon(&self, what: &str, entity: &str, check: impl Fn(&Listed) -> bool) {
        self.list(entity).await;
        let copy_read = self.read_at.borrow()[entity];
        loop {
            let (listed, _) = self.list(entity).await;
            if check(&listed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            copy_read.elapsed() < ConnectedAccounts::CACHED_FOR,
            "{what}: seen only when A's copy aged, not when the change was reported"
        );
    }
}

/// Instance A's copies of listings by entity see B's new, changed and deleted
/// accounts when the store reports them. With `per_entity` (PostgreSQL's
/// notifications name the entity), a change to one entity's account leaves A's
/// copies of the others' listings.
async fn listings_across_instances(kh_a: &Keyhaven, kh_b: &Keyhaven, per_entity: bool) {
    let a = Lister {
        kh: kh_a,
        read_at: std::cell::RefCell::default(),
    };
    let connect = async |entity: &str| {
        kh_b.initiate_connection(
            ConnectionRequest::for_app("openai")
                .scheme("API_KEY")
                .param("api_key", "sk-list")
                .entity(entity),
        )
        .await
        .unwrap()
        .connected_account_id
        .to_string()
    };
    let first = connect("ann").await;
    connect("bea").await;
    a.soon("B's first account", "ann", |l| l.items.len() == 1)
        .await;

    // B adds an account of ann's in one write (an initiation writes twice).
    let mut added = kh_b.connected_accounts().get(&first).await.unwrap();
    added.id = ConnectedAccountId::generate().unwrap();
    let second = added.id.to_string();
    // Each check begins with A holding a copy: this one, of one account.
    a.list("ann").await;
    kh_b.store()
        .insert_account(&added, None, &[])
        .await
        .unwrap();
    a.soon("B's new account", "ann", |l| l.items.len() == 2)
        .await;

    kh_b.connected_accounts().disable(&first).await.unwrap();
    a.soon("B's status change", "ann", |l| {
        l.items
            .contains(&(first.clone(), ConnectionStatus::Inactive))
    })
    .await;

    kh_b.connected_accounts().delete(&second).await.unwrap();
    a.soon("B's delete", "ann", |l| l.items.len() == 1).await;

    if per_entity {
        // A change to ann's account leaves A's copy of bea's listing.
        a.list("bea").await;
        kh_b.connected_accounts().enable(&first).await.unwrap();
        a.soon("B's change of ann's account", "ann", |l| {
            l.items.contains(&(first.clone(), ConnectionStatus::Active))
        })
        .await;
        let (_, copied) = a.list("bea").await;
        if a.read_at.borrow()["bea"].elapsed() < ConnectedAccounts::CACHED_FOR {
            assert!(
                copied,
                "a change to ann's account dropped A's copy of bea's listing"
            );
        } else {
            println!("the machine stalled past the copies' age: the per-entity check is moot");
        }

        // B moves ann's second account to bea. A's first page of one of ann's
        // accounts does not hold it, but said more followed: only the entity it
        // left, told by B's change, drops that copy.
        let third = connect("ann").await;
        a.soon("B's third account", "ann/1", |l| l.more).await;
        let mut moved = kh_b.connected_accounts().get(&third).await.unwrap();
        moved.entity_id = EntityId::new("bea").unwrap();
        kh_b.store()
            .update_account(&moved, keyhaven::CredentialsUpdate::Keep, &[])
            .await
            .unwrap();
        a.soon("B's move of an account", "ann/1", |l| !l.more).await;
    }
}

async fn two_instances(a: Arc<dyn Store>, b: Arc<dyn Store>, per_entity: bool) {
    let kh_a = Keyhaven::builder().shared_store(a).build().unwrap();
    let kh_b = Keyhaven::builder().shared_store(b.clone()).build().unwrap();
    let id = kh_a
        .initiate_connection(
            ConnectionRequest::for_app("openai")
                .scheme("API_KEY")
                .param("api_key", "sk-cache"),
        )
        .await
        .unwrap()
        .connected_account_id
        .to_string();
    // Instance A reads (and caches) the credentials.
    assert_eq!(
        kh_a.credentials(&id).await.unwrap().get_str("api_key"),
        Some("sk-cache")
    );
    // And its copy of the account (the server's account reads).
    let accounts_a = kh_a.connected_accounts();
    assert_eq!(
        accounts_a.get_cached(&id).await.unwrap().status,
        ConnectionStatus::Active
    );
    // Instance B disables the account: A must stop serving them, soon.
    kh_b.connected_accounts().disable(&id).await.unwrap();
    let disabled = std::time::Instant::now();
    while accounts_a.get_cached(&id).await.unwrap().status != ConnectionStatus::Inactive {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        disabled.elapsed() < ConnectedAccounts::CACHED_FOR,
        "A's copy of the account changed only when it aged ({:?}), not when B's change was reported",
        disabled.elapsed()
    );
    let mut refused = false;
    for _ in 0..100 {
        if let Err(e) = kh_a.credentials(&id).await {
            assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
            assert!(e.to_string().contains("INACTIVE"), "{e}");
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "instance A still served credentials of an account disabled by B"
    );
    kh_b.connected_accounts().enable(&id).await.unwrap();
    let mut served = false;
    for _ in 0..100 {
        if kh_a.credentials(&id).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served);
    refreshed_across_instances(&kh_a, &kh_b, b.as_ref()).await;
    integration_changed_by_another_instance(&kh_a, &kh_b, b.as_ref()).await;
    listings_across_instances(&kh_a, &kh_b, per_entity).await;
}

/// B refreshes an account whose credentials A holds (on PostgreSQL the refresh's
/// write joins a group and its notice is sent after the commit): A serves the new
/// token soon. Without the notice A would serve the old one until it is due, in an
/// hour.
async fn refreshed_across_instances(kh_a: &Keyhaven, kh_b: &Keyhaven, store_b: &dyn Store) {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let in_an_hour = keyhaven::chrono::Utc::now() + keyhaven::chrono::Duration::hours(1);
    let (_, ids) = seed_with(kh_b, store_b, endpoint.integration(), 1, "old", in_an_hour).await;
    let id = ids[0].to_string();
    let token = async |kh: &Keyhaven| {
        kh.credentials(&id)
            .await
            .unwrap()
            .get_str("access_token")
            .map(str::to_owned)
            .unwrap()
    };
    assert_eq!(token(kh_a).await, "old-0");
    kh_b.connected_accounts().refresh(&id).await.unwrap();
    let refreshed = std::time::Instant::now();
    while !is_fresh(&token(kh_a).await) {
        assert!(
            refreshed.elapsed() < Duration::from_secs(10),
            "instance A still serves the token B refreshed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_each_refreshed_once(&endpoint, 1);
}

/// A refreshes with its copy of an integration; B changes the integration's token
/// URL (A is not told: integration changes of another instance show when A's copy
/// ages, after 30 s). While the old endpoint still answers, A's copy serves. Once the
/// old endpoint fails, A's refresh with the copy is tried again with the integration
/// as stored: the account is refreshed at the new endpoint and stays `ACTIVE`
/// (without that second try it would fail, and a refusal would mark it `EXPIRED`).
async fn integration_changed_by_another_instance(
    kh_a: &Keyhaven,
    kh_b: &Keyhaven,
    store_b: &dyn Store,
) {
    let old = TokenEndpoint::start(Duration::ZERO).await;
    let new = TokenEndpoint::start(Duration::ZERO).await;
    let past = keyhaven::chrono::Utc::now() - keyhaven::chrono::Duration::minutes(1);
    let (integration, ids) = seed_with(kh_b, store_b, old.integration(), 3, "old", past).await;
    let token = async |i: usize| {
        kh_a.credentials(ids[i].as_str())
            .await
            .map(|c| c.get_str("access_token").map(str::to_owned).unwrap())
    };
    assert!(is_fresh(&token(0).await.unwrap()));
    kh_b.integrations()
        .update(
            integration.id.as_str(),
            IntegrationUpdate::new()
                .config("token_url", new.url.clone())
                .allow_new_destinations(),
        )
        .await
        .unwrap();
    assert!(is_fresh(&token(1).await.unwrap()));
    assert_eq!(old.refreshes().get("rt-1"), Some(&1), "A's copy served");
    // The old endpoint refuses every refresh from now on.
    old.set_fault(Some(Fault::Status(400)));
    let refreshed = token(2)
        .await
        .expect("refreshed with the stored integration");
    assert!(is_fresh(&refreshed), "{refreshed}");
    assert_eq!(
        new.refreshes().get("rt-2"),
        Some(&1),
        "refreshed at the new endpoint"
    );
    let account = kh_a
        .connected_accounts()
        .get(ids[2].as_str())
        .await
        .unwrap();
    assert_eq!(account.status, ConnectionStatus::Active);
}

fn ring_pair() -> (KeyRing, KeyRing) {
    let k = MasterKey::generate().unwrap();
    let b64 = k.to_base64();
    (
        KeyRing::new(k, []),
        keyhaven_store::ring_from_base64(&b64, &[]).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_invalidate_each_other() {
    let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
        return;
    };
    let (ra, rb) = ring_pair();
    let a = Arc::new(PostgresStore::connect(&url, ra).await.unwrap());
    let b = Arc::new(PostgresStore::connect(&url, rb).await.unwrap());
    two_instances(a, b, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_processes_invalidate_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kh.db");
    let (ra, rb) = ring_pair();
    let a = Arc::new(SqliteStore::open(&path, ra).unwrap());
    let b = Arc::new(SqliteStore::open(&path, rb).unwrap());
    two_instances(a, b, false).await;
}
