//! `keyhaven serve` killed with SIGKILL in the middle of its work, on PostgreSQL and
//! on SQLite, then started again on the same store:
//! - during a refresh storm: afterwards every account is still `ACTIVE`, its
//!   credentials decrypt, and one more read of each is served with a fresh token
//!   (a refresh whose answer was lost is made again, once);
//! - during writes: every connection whose creation was acknowledged (200) is
//!   there, whole, after the restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    ADMIN, CREDS, Server, api_key_integration, assert_acknowledged_whole, http, key, serve,
};
use keyhaven::{Keyhaven, PostgresStore, SqliteStore, Store};
use keyhaven_tests::storm::{TokenEndpoint, is_fresh, seed};
use serde_json::json;

const ACCOUNTS: usize = 300;

/// Reads every account's credentials once; returns how many were served fresh.
async fn read_all(server: &Server, ids: &[String], strict: bool) -> usize {
    let http = http();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (http, url) = (
                http.clone(),
                server.url(&format!("/api/v1/connectedAccounts/{id}/credentials")),
            );
            tokio::spawn(async move {
                let r = http.get(url).header("x-api-key", CREDS).send().await.ok()?;
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.ok()?;
                (status == 200).then(|| {
                    body["credentials"]["access_token"]
                        .as_str()
                        .map(is_fresh)
                        .unwrap_or(false)
                })
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(true) => fresh += 1,
            other if strict => panic!("a read after the restart failed: {other:?}"),
            _ => {}
        }
    }
    fresh
}

async fn killed_during_a_refresh_storm(
    store: Arc<dyn Store>,
    store_args: &[&str],
    data: &std::path::Path,
    key_b64: &str,
) {
    // A provider with some latency, so that the kill lands among refreshes.
    let endpoint = TokenEndpoint::start(Duration::from_millis(20)).await;
    let kh = Keyhaven::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, ACCOUNTS).await;
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();

    let mut server = serve(store_args, data, key_b64);
    let storm = {
        let (ids, url) = (ids.clone(), server.url(""));
        tokio::spawn(async move {
            let http = http();
            let tasks: Vec<_> = ids
                .iter()
                .map(|id| {
                    let req = http
                        .get(format!("{url}/api/v1/connectedAccounts/{id}/credentials"))
                        .header("x-api-key", CREDS);
                    tokio::spawn(async move { req.send().await.is_ok() })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    // Kill it once part of the refreshes reached the provider.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while endpoint.refreshes().len() < ACCOUNTS / 5 {
        assert!(tokio::time::Instant::now() < deadline, "refreshes began");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    let _ = storm.await;
    let before = endpoint.refreshes().len();
    assert!(
        before < ACCOUNTS,
        "the kill landed during the storm ({before} refreshed)"
    );

    // Started again: everything is served fresh, nothing is EXPIRED or FAILED.
    let server = serve(store_args, data, key_b64);
    assert_eq!(read_all(&server, &ids, true).await, ACCOUNTS);
    for id in &ids {
        let account = kh.connected_accounts().get(id).await.unwrap();
        assert_eq!(account.status, keyhaven::ConnectionStatus::Active, "{id}");
    }
    let counts = endpoint.refreshes();
    assert_eq!(counts.len(), ACCOUNTS);
    assert!(
        counts.values().all(|n| *n <= 2),
        "at most one refresh repeated per account, for an answer lost in the kill"
    );
}

async fn killed_during_writes(store_args: &[&str], data: &std::path::Path, key_b64: &str) {
    let mut server = serve(store_args, data, key_b64);
    let http = http();
    let integration_id = api_key_integration(&http, &server).await;
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (http, url, acknowledged, integration_id) = (
            http.clone(),
            server.url("/api/v1/connectedAccounts"),
            acknowledged.clone(),
            integration_id.clone(),
        );
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let api_key = format!("sk-crash-{w}-{n}");
                let body = json!({
                    "integrationId": integration_id,
                    "entityId": format!("writer-{w}"),
                    "labels": [format!("n{n}")],
                    "data": {"api_key": api_key},
                });
                let Ok(r) = http
                    .post(&url)
                    .header("x-api-key", ADMIN)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if !r.status().is_success() {
                    return;
                }
                let Ok(out) = r.json::<serde_json::Value>().await else {
                    return;
                };
                let id = out["connectedAccountId"].as_str().unwrap().to_owned();
                acknowledged.lock().unwrap().push((id, api_key));
            }
        }));
    }
    // Let writes pile up, then kill in the middle of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes are acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let server = serve(store_args, data, key_b64);
    assert_acknowledged_whole(&http, &server, &acknowledged).await;
    println!(
        "CRASH: {} acknowledged writes, 0 lost across SIGKILL",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_refresh_storm_on_postgres() {
    let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
        return;
    };
    let (ring, b64) = key();
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url, ring).await.unwrap());
    let data = tempfile::tempdir().unwrap();
    killed_during_a_refresh_storm(store, &["--database-url", &url], data.path(), &b64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_refresh_storm_on_sqlite() {
    let data = tempfile::tempdir().unwrap();
    let (ring, b64) = key();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(data.path().join("keyhaven.db"), ring).unwrap());
    killed_during_a_refresh_storm(store, &[], data.path(), &b64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_on_postgres() {
    let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
        return;
    };
    let (_, b64) = key();
    let data = tempfile::tempdir().unwrap();
    killed_during_writes(&["--database-url", &url], data.path(), &b64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_on_sqlite() {
    let data = tempfile::tempdir().unwrap();
    let (_, b64) = key();
    killed_during_writes(&[], data.path(), &b64).await;
}
