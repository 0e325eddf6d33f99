//! A separate process for the cross-process refresh test: opens the shared store,
//! waits for the go file, then makes N concurrent `credentials()` calls on one
//! account and prints the distinct access tokens it got as one JSON line.
//!
//! Usage: `refresh-worker STORE ACCOUNT_ID CALLERS GO_FILE`, where STORE is
//! `sqlite:PATH` or `postgres:URL`; the key ring comes from `KEYHAVEN_MASTER_KEY`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use keyhaven::{Keyhaven, PostgresStore, SqliteStore, Store};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, id, callers, go] = args.as_slice() else {
        panic!("usage: refresh-worker STORE ACCOUNT_ID CALLERS GO_FILE");
    };
    let keys = keyhaven_store::ring_from_env()
        .unwrap()
        .expect("KEYHAVEN_MASTER_KEY is set");
    let store: Arc<dyn Store> = match store.split_once(':') {
        Some(("sqlite", path)) => Arc::new(SqliteStore::open(path, keys).unwrap()),
        Some(("postgres", url)) => Arc::new(PostgresStore::connect(url, keys).await.unwrap()),
        _ => panic!("STORE is sqlite:PATH or postgres:URL"),
    };
    let kh = Keyhaven::builder().shared_store(store).build().unwrap();
    let callers: usize = callers.parse().unwrap();
    while !std::path::Path::new(go).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (kh, id) = (kh.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let creds = kh.credentials(&id).await.unwrap();
            creds.get_str("access_token").unwrap().to_owned()
        }));
    }
    let mut tokens = BTreeSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap());
    }
    println!("{}", serde_json::to_string(&tokens).unwrap());
}
