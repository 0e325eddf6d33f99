//! The conformance suite against every store: memory, SQLite, PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keyhaven_store::{KeyRing, MasterKey, MemoryStore, conformance};

fn ring() -> KeyRing {
    KeyRing::new(MasterKey::generate().unwrap(), [])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    let store = Arc::new(MemoryStore::new());
    conformance::run(store.clone()).await;
    conformance::locks_give_versions(store).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(keyhaven_store::SqliteStore::open(dir.path().join("kh.db"), ring()).unwrap());
    conformance::run(store.clone()).await;
    conformance::locks_give_versions(store).await;
}

/// A store on a fresh PostgreSQL database, and the database's URL; `None` (after
/// saying why) without PostgreSQL.
#[cfg(feature = "postgres")]
async fn postgres() -> Option<(Arc<keyhaven_store::PostgresStore>, String)> {
    let url = conformance::fresh_postgres_database().await?;
    let store = keyhaven_store::PostgresStore::connect(&url, ring())
        .await
        .unwrap();
    Some((Arc::new(store), url))
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    let Some((store, _)) = postgres().await else {
        return;
    };
    conformance::run(store.clone()).await;
    conformance::locks_give_versions(store).await;
}

/// Events become visible in the order of their sequence numbers: a reader that saw
/// an event and asks for those after it (a stream resumed with `Last-Event-ID`)
/// never misses one numbered before it that committed later. The first append is
/// held between taking its number and committing (a trigger sleeps on its row); the
/// second, started meanwhile, must not be visible before it.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_events_become_visible_in_sequence_order() {
    use keyhaven_core::{
        AccountEvent, AppSlug, ConnectedAccountId, ConnectionStatus, EntityId, EventKind,
        IntegrationId, Store,
    };
    use sqlx::Connection;

    let Some((store, url)) = postgres().await else {
        return;
    };
    let event = |account: &ConnectedAccountId| AccountEvent {
        id: format!(
            "evt_{}",
            &ConnectedAccountId::generate().unwrap().as_str()[3..]
        ),
        kind: EventKind::RefreshFailed,
        connected_account_id: account.clone(),
        entity_id: EntityId::new("default").unwrap(),
        app_name: AppSlug::new("github").unwrap(),
        integration_id: IntegrationId::generate().unwrap(),
        status: ConnectionStatus::Active,
        reason: None,
        at: chrono::Utc::now(),
        origin: "kh_test".into(),
    };
    let slow = ConnectedAccountId::generate().unwrap();
    let fast = ConnectedAccountId::generate().unwrap();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION slow_event() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.account_id = '{slow}' THEN PERFORM pg_sleep(1.5); END IF; RETURN NEW; END $$; \
         CREATE TRIGGER slow_event AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_event();"
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    let (first, second) = (event(&slow), event(&fast));
    let held = tokio::spawn({
        let (store, first) = (store.clone(), first.clone());
        async move { store.append_events(&[first]).await }
    });
    // The first has its number and sleeps in the trigger.
    let sleeping = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database())";
    let started = std::time::Instant::now();
    while !sqlx::query_scalar::<_, bool>(sleeping)
        .fetch_one(&mut admin)
        .await
        .unwrap()
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the first append never reached its trigger"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    store
        .append_events(std::slice::from_ref(&second))
        .await
        .unwrap();
    // A reader now: everything visible, then (resumed from the last it saw)
    // everything after that once the first has committed.
    let seen = store.events_after(None, 100).await.unwrap().unwrap();
    held.await.unwrap().unwrap();
    let last = seen.last().map(|e| e.id.clone());
    let later = store
        .events_after(last.as_deref(), 100)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = seen.iter().chain(&later).map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [first.id.as_str(), second.id.as_str()],
        "read {:?} at first, then {:?}",
        seen.iter().map(|e| &e.id).collect::<Vec<_>>(),
        later.iter().map(|e| &e.id).collect::<Vec<_>>()
    );
}

/// A caller that stops waiting for a refresh lock held by another instance does not
/// keep a lock connection: here the only one, which its wait would have held for
/// as long as the other instance keeps the lock. The next caller gets it.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_lock_waiter_that_gave_up_leaves_its_connection_to_the_next() {
    use keyhaven_core::{ConnectedAccountId, Store};
    use std::time::Duration;

    // Nothing encrypted is written: each instance may have a key of its own.
    let Some((other, url)) = postgres().await else {
        return;
    };
    let store = keyhaven_store::PostgresStore::connect_with_pools(&url, ring(), 10, 1)
        .await
        .unwrap();
    let [w, x, y, z] = [(); 4].map(|()| ConnectedAccountId::generate().unwrap());

    // Another instance holds x's lock. Here, x and y are asked for while the only
    // lock connection is busy (w's), so that both are tried in one group once it is
    // free: y is taken, and x goes to wait on a transaction of its own, for a
    // connection, which y's group holds.
    let x_elsewhere = other.lock_account(&x).await.unwrap();
    let w_held = store.lock_account(&w).await.unwrap();
    let ask = |id: &ConnectedAccountId, limit: Duration| {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { tokio::time::timeout(limit, store.lock_account(&id)).await })
    };
    let x_asked = ask(&x, Duration::from_millis(800));
    let y_asked = ask(&y, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(200)).await;
    w_held.release().await.unwrap();
    let y_held = y_asked.await.unwrap().unwrap().unwrap();
    // x's caller gives up while its wait has no connection yet.
    assert!(x_asked.await.unwrap().is_err(), "x is held elsewhere");
    y_held.release().await.unwrap();
    // The connection is free now; the next caller comes a moment later, and gets
    // it: the wait for x, whose caller is gone, did not take it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let z_held = tokio::time::timeout(Duration::from_secs(5), store.lock_account(&z))
        .await
        .expect("the lock connection was left to the next caller")
        .unwrap();
    z_held.release().await.unwrap();
    x_elsewhere.release().await.unwrap();
}
