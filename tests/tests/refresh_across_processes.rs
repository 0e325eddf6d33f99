//! Four processes with 250 concurrent callers each, on one expired OAuth account in
//! one shared store, make exactly one token request, counted at the real OAuth
//! server: with PostgreSQL (advisory locks) and with SQLite (leases).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use keyhaven::chrono::{Duration, Utc};
use keyhaven::{
    ConnectionRequest, Credentials, CredentialsUpdate, Keyhaven, PostgresStore, SqliteStore, Store,
};
use keyhaven_tests::{CALLBACK_URL, Decision, OidcProvider, UserAgent};

const PROCESSES: usize = 4;
const CALLERS: usize = 250;

async fn run(store: Arc<dyn Store>, spec: String, key_b64: String, server: &OidcProvider) {
    let kh = Keyhaven::builder()
        .shared_store(store.clone())
        .callback_url(CALLBACK_URL)
        .build()
        .unwrap();
    let integration = kh
        .integrations()
        .create(server.integration("kh-basic"))
        .await
        .unwrap();
    let out = kh
        .initiate_connection(ConnectionRequest::for_integration(integration.id.as_str()))
        .await
        .unwrap();
    let query = UserAgent::new()
        .authorize(
            out.redirect_url.as_deref().unwrap(),
            "alice",
            Decision::Approve,
        )
        .await;
    assert!(kh.handle_callback(&query).await.unwrap().succeeded());
    let id = out.connected_account_id;

    // Expire the access token in real time (the processes use the system clock).
    let (mut account, creds) = store
        .get_account_and_credentials(&id)
        .await
        .unwrap()
        .unwrap();
    let creds = creds.unwrap();
    let old_token = creds.get_str("access_token").unwrap().to_owned();
    let past = Utc::now() - Duration::minutes(1);
    let expired = Credentials::new(creds.expose().clone(), Some(past));
    account.expires_at = Some(past);
    store
        .update_account(&account, CredentialsUpdate::Set(&expired), &[])
        .await
        .unwrap();
    assert_eq!(server.token_requests("refresh_token").await, 0);

    let dir = tempfile_dir();
    let go = dir.join("go");
    let mut children = Vec::new();
    for _ in 0..PROCESSES {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_refresh-worker"))
                .args([
                    spec.as_str(),
                    id.as_str(),
                    &CALLERS.to_string(),
                    go.to_str().unwrap(),
                ])
                .env("KEYHAVEN_MASTER_KEY", &key_b64)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    // Let them open the store, then start them together.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    std::fs::write(&go, b"go").unwrap();
    let mut all = BTreeSet::new();
    for child in children {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            child.wait_with_output(),
        )
        .await
        .expect("a worker finishes")
        .unwrap();
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let tokens: BTreeSet<String> = serde_json::from_slice(&out.stdout).unwrap();
        all.extend(tokens);
    }
    assert_eq!(
        all.len(),
        1,
        "all {} callers got the same token",
        PROCESSES * CALLERS
    );
    assert!(!all.contains(&old_token), "a fresh token");
    assert_eq!(
        server.token_requests("refresh_token").await,
        1,
        "exactly one token request"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kh-xproc-{}",
        keyhaven::ConnectedAccountId::generate().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_on_postgres_make_one_token_request() {
    let Some(server) = OidcProvider::start(600).await else {
        return;
    };
    let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
        return;
    };
    let (ring, b64) = keyhaven_tests::new_key();
    let store = Arc::new(PostgresStore::connect(&url, ring).await.unwrap());
    run(store, format!("postgres:{url}"), b64, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_on_sqlite_make_one_token_request() {
    let Some(server) = OidcProvider::start(600).await else {
        return;
    };
    let dir = tempfile_dir();
    let path = dir.join("kh.db");
    let (ring, b64) = keyhaven_tests::new_key();
    let store = Arc::new(SqliteStore::open(&path, ring).unwrap());
    run(store, format!("sqlite:{}", path.display()), b64, &server).await;
}
