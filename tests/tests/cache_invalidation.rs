//! The credentials cache of one instance, and its copies of accounts, forget what
//! another instance changed: with PostgreSQL through LISTEN/NOTIFY, with SQLite
//! through `data_version`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keyhaven::{
    ConnectedAccounts, ConnectionRequest, ConnectionStatus, ErrorKind, KeyRing, Keyhaven,
    MasterKey, PostgresStore, SqliteStore, Store,
};

async fn two_instances(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let kh_a = Keyhaven::builder().shared_store(a).build().unwrap();
    let kh_b = Keyhaven::builder().shared_store(b).build().unwrap();
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
    two_instances(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_processes_invalidate_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kh.db");
    let (ra, rb) = ring_pair();
    let a = Arc::new(SqliteStore::open(&path, ra).unwrap());
    let b = Arc::new(SqliteStore::open(&path, rb).unwrap());
    two_instances(a, b).await;
}
