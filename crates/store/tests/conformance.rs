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

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    let Some(url) = conformance::fresh_postgres_database().await else {
        return;
    };
    let store = Arc::new(
        keyhaven_store::PostgresStore::connect(&url, ring())
            .await
            .unwrap(),
    );
    conformance::run(store.clone()).await;
    conformance::locks_give_versions(store).await;
}
