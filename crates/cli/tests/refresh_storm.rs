//! Refresh storms through the server: 1,000 distinct accounts whose access tokens
//! have expired, each asked for at once with `GET
//! /api/v1/connectedAccounts/{id}/credentials`, on one `keyhaven serve` and on four
//! sharing the store, on PostgreSQL (default pool) and SQLite. Every call answers
//! 200 with a fresh token, and the token endpoint sees each account refreshed
//! exactly once. Also 1,000 reads of one expired account through one server:
//! exactly one token request. Times are printed (`STORM {json}`, run with
//! `--nocapture`, read by `cargo xtask bench`); nothing here asserts a duration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

/// The allocator of the `keyhaven` binary the servers run, for the bare reference
/// measured in this process too (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CREDS, Server, key, serve};
use keyhaven::{Keyhaven, PostgresStore, SqliteStore, Store};
use keyhaven_tests::storm::{
    ACCOUNTS, Figures, TokenEndpoint, assert_each_refreshed_once, is_fresh, seed, total_refreshes,
};

/// Asks every server for every account at once; all must answer 200 with a fresh
/// token. Returns how long it took.
async fn storm(servers: &[Server], ids: &[String]) -> Duration {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for server in servers {
        for id in ids {
            let url = server.url(&format!("/api/v1/connectedAccounts/{id}/credentials"));
            let http = http.clone();
            tasks.push(tokio::spawn(async move {
                let r = http
                    .get(url)
                    .header("x-api-key", CREDS)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
                if status != 200 {
                    return Err(format!("{status}: {body}"));
                }
                let token = body["credentials"]["access_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if is_fresh(&token) {
                    Ok(())
                } else {
                    Err("not a fresh token".to_owned())
                }
            }));
        }
    }
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            errors.push(e);
        }
    }
    let took = started.elapsed();
    assert!(
        errors.is_empty(),
        "{} of {} calls failed, e.g. {:?}",
        errors.len(),
        servers.len() * ids.len(),
        &errors[..errors.len().min(3)]
    );
    took
}

/// The two storms: every account once (`distinct accounts`), or one account asked
/// for by every caller (`one token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Distinct,
    OneToken,
}

/// Seeds the accounts, starts `instances` servers on the store (`store_args`, the
/// data directory `data`), and storms them.
async fn run(
    store: Arc<dyn Store>,
    store_args: &[&str],
    data: &std::path::Path,
    key_b64: &str,
    instances: usize,
    label: &'static str,
    kind: Kind,
) {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let kh = Keyhaven::builder()
        .shared_store(store.clone())
        .build()
        .unwrap();
    let accounts = if kind == Kind::OneToken { 1 } else { ACCOUNTS };
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, accounts).await;
    let ids: Vec<String> = (0..ACCOUNTS)
        .map(|i| ids[i % accounts].to_string())
        .collect();
    let servers: Vec<Server> = (0..instances)
        .map(|_| serve(store_args, data, key_b64))
        .collect();
    let took = storm(&servers, &ids).await;
    assert_each_refreshed_once(&endpoint, accounts);
    let bare = if kind == Kind::Distinct && instances == 1 {
        Some(keyhaven_tests::storm::bare_token_requests(ACCOUNTS).await)
    } else {
        None
    };
    Figures {
        place: "server",
        store: label,
        storm: if kind == Kind::OneToken {
            "one token"
        } else {
            "distinct accounts"
        },
        instances,
        calls: instances * ACCOUNTS,
        token_requests: total_refreshes(&endpoint),
        took,
        bare,
        judged: true,
    }
    .record();
}

async fn on_postgres(instances: usize, kind: Kind) {
    let _turn = keyhaven_tests::storm::postgres_turn().await;
    let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
        return;
    };
    let (ring, b64) = key();
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url, ring).await.unwrap());
    let data = tempfile::tempdir().unwrap();
    let args = ["--database-url", url.as_str()];
    run(
        store,
        &args,
        data.path(),
        &b64,
        instances,
        "PostgreSQL",
        kind,
    )
    .await;
}

async fn on_sqlite(instances: usize, kind: Kind) {
    // The servers' data directory holds the database the test seeds.
    let data = tempfile::tempdir().unwrap();
    let (ring, b64) = key();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(data.path().join("keyhaven.db"), ring).unwrap());
    run(store, &[], data.path(), &b64, instances, "SQLite", kind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_through_one_server_on_postgres() {
    on_postgres(1, Kind::Distinct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_through_four_servers_on_postgres() {
    on_postgres(4, Kind::Distinct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_through_one_server_on_sqlite() {
    on_sqlite(1, Kind::Distinct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_through_four_servers_on_sqlite() {
    on_sqlite(4, Kind::Distinct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reads_of_one_expired_account_through_one_server_on_postgres() {
    on_postgres(1, Kind::OneToken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reads_of_one_expired_account_through_one_server_on_sqlite() {
    on_sqlite(1, Kind::OneToken).await;
}
