//! Refresh storms through the library: 1,000 distinct accounts whose access tokens
//! have expired, all asked for at once, on one instance and on four processes
//! sharing the store, on PostgreSQL (default pool) and SQLite. Every call is served
//! with a fresh token, and the token endpoint sees each account refreshed exactly
//! once. The one-instance storms run twice: cold, then warm (every token expired
//! again, on the connections the first storm opened); so does the same storm on the
//! in-memory store (no database: what the refresh path itself costs). Also 1,000
//! callers on one expired token: exactly one token request. The time each storm took is printed
//! (`STORM {json}` lines, run with `--nocapture`, read by `cargo xtask bench`);
//! nothing here asserts a duration.
//!
//! Also: a process killed with SIGKILL while it holds a refresh lock does not keep
//! the account locked (PostgreSQL: its connection dies and the lock with it;
//! SQLite: its lease names a process that is gone).

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The allocator of the `keyhaven` binary (and of the other benchmarks), for
/// keyhaven and for the bare reference alike: the system allocator's locks cost
/// keyhaven's refresh path, which allocates more than a bare request, a third more
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven::chrono::Utc;
use keyhaven::{Keyhaven, ManualClock, MemoryStore, PostgresStore, SqliteStore, Store};
use keyhaven_tests::storm::{
    ACCOUNTS, Figures, TokenEndpoint, assert_each_refreshed, assert_each_refreshed_once,
    every_account_at_once, is_fresh, seed, settle, total_refreshes,
};
use tokio::io::{AsyncBufReadExt, BufReader};

const PROCESSES: usize = 4;

/// A fresh database's store, its spec for the worker processes, its key, and this
/// test's turn at PostgreSQL (see [`keyhaven_tests::storm::postgres_turn`]).
async fn postgres() -> Option<(Arc<dyn Store>, String, String, PostgresTurn)> {
    let turn = keyhaven_tests::storm::postgres_turn().await;
    let url = keyhaven_store::conformance::fresh_postgres_database().await?;
    let (ring, b64) = keyhaven_tests::new_key();
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url, ring).await.unwrap());
    Some((store, format!("postgres:{url}"), b64, turn))
}

type PostgresTurn = tokio::sync::MutexGuard<'static, ()>;

fn sqlite(dir: &tempfile::TempDir) -> (Arc<dyn Store>, String, String) {
    let path = dir.path().join("kh.db");
    let (ring, b64) = keyhaven_tests::new_key();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path, ring).unwrap());
    (store, format!("sqlite:{}", path.display()), b64)
}

fn keyhaven(store: Arc<dyn Store>) -> Keyhaven {
    Keyhaven::builder().shared_store(store).build().unwrap()
}

/// One instance: every account's credentials asked for at once, on a new
/// `Keyhaven` (its connections to the token endpoint opened as the refreshes go),
/// against bare requests on a new client: the storm held to the target when the
/// store is a `database` (whose changes are reported: they are let settle first;
/// the in-memory store reports none). Then once more when every token has expired again (the clock moved two
/// hours), on the connections the first storm left open, against bare requests on
/// a client that has sent as many before: the steady state of a running instance,
/// where the store's share shows (never held to the target; BENCHMARKS.md).
async fn one_instance(store: Arc<dyn Store>, label: &'static str, database: bool) {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let kh = Keyhaven::builder()
        .shared_store(store.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, ACCOUNTS).await;
    if database {
        settle(&kh, store.as_ref(), &ids[ACCOUNTS - 1]).await;
    }
    let figures = |storm, token_requests, took, bare, judged| Figures {
        place: "library",
        store: label,
        storm,
        instances: 1,
        calls: ACCOUNTS,
        token_requests,
        took,
        bare: Some(bare),
        judged,
    };
    let took = every_account_at_once(&kh, &ids).await;
    assert_each_refreshed_once(&endpoint, ACCOUNTS);
    let first = total_refreshes(&endpoint);
    let bare = keyhaven_tests::storm::bare_token_requests(ACCOUNTS).await;
    figures("distinct accounts", first, took, bare, database).record();
    clock.advance(keyhaven::chrono::Duration::hours(2));
    let took = every_account_at_once(&kh, &ids).await;
    assert_each_refreshed(&endpoint, ACCOUNTS, 2);
    let again = total_refreshes(&endpoint) - first;
    let bare = keyhaven_tests::storm::bare_token_requests_warm(ACCOUNTS).await;
    figures("distinct accounts, again (warm)", again, took, bare, false).record();
}

/// The same storm with no database: the in-memory store, to show what the refresh
/// path itself costs. Not held to the target: the stores' rows are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_without_a_database_cold_then_warm() {
    one_instance(Arc::new(MemoryStore::new()), "memory (no database)", false).await;
}

/// One instance: 1,000 callers on one expired token; exactly one token request.
async fn one_token(store: Arc<dyn Store>, label: &'static str) {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let kh = keyhaven(store.clone());
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, 1).await;
    settle(&kh, store.as_ref(), &ids[0]).await;
    let id = ids[0].to_string();
    let started = Instant::now();
    let tasks: Vec<_> = (0..ACCOUNTS)
        .map(|_| {
            let (kh, id) = (kh.clone(), id.clone());
            tokio::spawn(async move { kh.credentials(&id).await.map_err(|e| e.to_string()) })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let c = t.await.unwrap().unwrap();
        tokens.insert(c.get_str("access_token").unwrap().to_owned());
    }
    let took = started.elapsed();
    assert_eq!(
        tokens.len(),
        1,
        "every caller got the same token: {tokens:?}"
    );
    assert!(tokens.iter().all(|t| is_fresh(t)));
    assert_each_refreshed_once(&endpoint, 1);
    Figures {
        place: "library",
        store: label,
        storm: "one token",
        instances: 1,
        calls: ACCOUNTS,
        token_requests: total_refreshes(&endpoint),
        took,
        bare: None,
        judged: true,
    }
    .record();
}

/// Four processes, each asking for every account at once.
async fn four_processes(store: Arc<dyn Store>, spec: &str, key_b64: &str, label: &'static str) {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let kh = keyhaven(store.clone());
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, ACCOUNTS).await;
    let dir = tempfile::tempdir().unwrap();
    let ids_file = dir.path().join("ids.json");
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    std::fs::write(&ids_file, serde_json::to_vec(&ids).unwrap()).unwrap();
    let go = dir.path().join("go");
    let mut children = Vec::new();
    for _ in 0..PROCESSES {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_storm-worker"))
                .args([spec, ids_file.to_str().unwrap(), go.to_str().unwrap()])
                .env("KEYHAVEN_MASTER_KEY", key_b64)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    // Let them open the store, then start them together.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    std::fs::write(&go, b"go").unwrap();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
            .await
            .expect("a worker finishes")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "worker failed: {text}");
        let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            report["ok"], ACCOUNTS,
            "every call served with a fresh token: {report}"
        );
    }
    let took = started.elapsed();
    assert_each_refreshed_once(&endpoint, ACCOUNTS);
    Figures {
        place: "library",
        store: label,
        storm: "distinct accounts",
        instances: PROCESSES,
        calls: PROCESSES * ACCOUNTS,
        token_requests: total_refreshes(&endpoint),
        took,
        bare: None,
        judged: true,
    }
    .record();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_on_postgres_one_instance() {
    let Some((store, _, _, _turn)) = postgres().await else {
        return;
    };
    one_instance(store, "PostgreSQL", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_on_postgres_four_processes() {
    let Some((store, spec, key, _turn)) = postgres().await else {
        return;
    };
    four_processes(store, &spec, &key, "PostgreSQL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_one_token_on_postgres() {
    let Some((store, _, _, _turn)) = postgres().await else {
        return;
    };
    one_token(store, "PostgreSQL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_one_token_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = sqlite(&dir);
    one_token(store, "SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_on_sqlite_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = sqlite(&dir);
    one_instance(store, "SQLite", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_accounts_on_sqlite_four_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, spec, key) = sqlite(&dir);
    four_processes(store, &spec, &key, "SQLite").await;
}

/// A process holding the lock of an account is killed with SIGKILL; the lock is
/// free again long before the lease time (immediately, in practice).
async fn killed_holder_releases(store: Arc<dyn Store>, spec: &str, key_b64: &str, label: &str) {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let kh = keyhaven(store.clone());
    let (_, ids) = seed(&kh, store.as_ref(), &endpoint, 1).await;
    let id = ids[0].clone();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_storm-worker"))
        .args(["hold", spec, id.as_str()])
        .env("KEYHAVEN_MASTER_KEY", key_b64)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the holder takes the lock")
        .unwrap();
    assert_eq!(first.as_deref(), Some("locked"));
    // Held: another taker waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), store.lock_account(&id))
            .await
            .is_err(),
        "the lock is held while its holder lives"
    );
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    let killed = Instant::now();
    let lock = tokio::time::timeout(keyhaven_store::DEFAULT_LEASE, store.lock_account(&id))
        .await
        .expect("the lock of a killed holder lapses within the documented lease")
        .unwrap();
    let took = killed.elapsed();
    lock.release().await.unwrap();
    // And the account refreshes normally afterwards.
    let creds = kh.credentials(id.as_str()).await.unwrap();
    assert!(is_fresh(creds.get_str("access_token").unwrap()));
    println!("LOCK {label}: the lock of a SIGKILLed holder was taken again after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lock_holder_does_not_block_postgres() {
    let Some((store, spec, key, _turn)) = postgres().await else {
        return;
    };
    killed_holder_releases(store, &spec, &key, "PostgreSQL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lock_holder_does_not_block_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (store, spec, key) = sqlite(&dir);
    killed_holder_releases(store, &spec, &key, "SQLite").await;
}
