//! A separate process for the refresh-storm tests: opens the shared store, waits
//! for the go file, asks for the credentials of every account listed in the ids
//! file at once, and prints one JSON line: how many calls succeeded, the errors,
//! and whether every token it got was a fresh one.
//!
//! Usage: `storm-worker STORE IDS_FILE GO_FILE`, STORE `sqlite:PATH` or
//! `postgres:URL`; the key ring comes from `KEYHAVEN_MASTER_KEY`.
//!
//! `storm-worker hold STORE ACCOUNT_ID` instead takes the account's refresh lock,
//! prints `locked`, and sleeps until killed (the SIGKILL tests).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keyhaven::{ConnectedAccountId, Keyhaven, PostgresStore, SqliteStore, Store};

async fn open(spec: &str) -> Arc<dyn Store> {
    let keys = keyhaven_store::ring_from_env()
        .unwrap()
        .expect("KEYHAVEN_MASTER_KEY is set");
    match spec.split_once(':') {
        Some(("sqlite", path)) => Arc::new(SqliteStore::open(path, keys).unwrap()),
        Some(("postgres", url)) => Arc::new(PostgresStore::connect(url, keys).await.unwrap()),
        _ => panic!("STORE is sqlite:PATH or postgres:URL"),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [hold, store, id] = args.as_slice()
        && hold == "hold"
    {
        let store = open(store).await;
        let id = ConnectedAccountId::parse(id).unwrap();
        let _lock = store.lock_account(&id).await.unwrap();
        println!("locked");
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        return;
    }
    let [store, ids, go] = args.as_slice() else {
        panic!("usage: storm-worker STORE IDS_FILE GO_FILE | storm-worker hold STORE ACCOUNT_ID");
    };
    let kh = Keyhaven::builder()
        .shared_store(open(store).await)
        .build()
        .unwrap();
    let ids: Vec<String> = serde_json::from_str(&std::fs::read_to_string(ids).unwrap()).unwrap();
    while !std::path::Path::new(go).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let tasks: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let kh = kh.clone();
            tokio::spawn(async move {
                kh.credentials(&id)
                    .await
                    .map(|c| c.get_str("access_token").unwrap_or_default().to_owned())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let (mut ok, mut stale, mut errors) = (0_usize, 0_usize, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(token) if keyhaven_tests::storm::is_fresh(&token) => ok += 1,
            Ok(_) => stale += 1,
            Err(e) => errors.push(e),
        }
    }
    println!(
        "{}",
        serde_json::json!({"ok": ok, "stale": stale, "errors": errors})
    );
}
