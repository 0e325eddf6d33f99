//! `keyhaven serve` itself (the release binary, its own process) against a bare axum
//! handler in the same run, on a small SQLite store and on one million accounts in
//! SQLite and in PostgreSQL: the time from start until `/readyz` answers 200, the
//! resident memory idle and at its peak under load, and the throughput of the
//! account read, the listing by entity, the listing by entity and label and the
//! audited credentials read, each as a ratio to the bare handler answering the
//! account read's very bytes behind the same key check.
//!
//! ```sh
//! cargo bench -p keyhaven-cli --bench serve
//! ```
//!
//! The million-account stores are built once and kept (SQLite under
//! `target/bench-data/serve-sqlite-1m`, PostgreSQL in the database
//! `keyhaven_bench_serve` of `KEYHAVEN_BENCH_DATABASE_URL`'s server, default
//! `postgres://postgres@127.0.0.1:5432/postgres`): 2,000 accounts made through the
//! library (1,000 entities, labels), the rest copied rows with their own ids and
//! entities. Results go to stdout and `target/bench-results/serve.json`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyhaven::{ConnectionRequest, KeyRing, Keyhaven, PostgresStore, SqliteStore, Store};
use keyhaven_tests::load::{
    Once, Settings, bare_handler, get, get_each, measure, only, rows_json, write_results,
};

/// The allocator `keyhaven serve` uses, for the bare handler too: the comparison
/// is of the work done, not of the allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "kh-bench-admin";
const CREDS: &str = "khc-bench-credentials";
const MILLION: i64 = 1_000_000;
/// Accounts made through the library in a big store; the rest are copies.
const REAL: usize = 2_000;
/// A fixed key, so that the kept stores stay readable between runs.
const KEY_B64: &str = "a2V5aGF2ZW4tc2VydmUtYmVuY2gta2V5LTMyYnl0ZXM=";

fn ring() -> KeyRing {
    keyhaven_store::ring_from_base64(KEY_B64, &[]).unwrap()
}

/// Where a store is.
enum Place {
    Sqlite(PathBuf),
    Postgres { url: String, data: PathBuf },
}

/// Makes `n` API-key accounts through the library: entity `e{i % (n/2)}`, labels
/// `l{i % 5}` and `common`.
async fn seed(store: std::sync::Arc<dyn Store>, n: usize) {
    let kh = Keyhaven::builder().shared_store(store).build().unwrap();
    for i in 0..n {
        kh.entity(&format!("e{}", i % (n / 2)))
            .unwrap()
            .initiate_connection(
                ConnectionRequest::for_app("openai")
                    .scheme("API_KEY")
                    .param("api_key", format!("sk-bench-{i}"))
                    .label(format!("l{}", i % 5))
                    .label("common"),
            )
            .await
            .unwrap();
    }
}

/// Copies of the first account, with their own ids and entities, up to a million.
const FILL_SQL: &str = "INSERT INTO connected_accounts SELECT {ID}, 'filler-' || (x % 499000), t.integration_id, t.app, t.auth_scheme, t.status, t.status_reason, t.labels, t.params, t.redirect_url, t.expires_at, t.version, t.created_at, t.updated_at, t.credentials, t.credentials_expires_at FROM {SERIES}, (SELECT * FROM connected_accounts ORDER BY id LIMIT 1) t";

fn bench_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data")
}

fn sqlite_count(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM connected_accounts", [], |r| r.get(0)))
        .unwrap_or(0)
}

/// The million-account SQLite data directory, built once.
fn sqlite_million(rt: &tokio::runtime::Runtime) -> PathBuf {
    let dir = bench_data().join("serve-sqlite-1m");
    let db = dir.join("keyhaven.db");
    if db.exists() && sqlite_count(&db) == MILLION {
        return dir;
    }
    eprintln!("building {} ({MILLION} accounts, once)", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&db, ring()).unwrap();
    rt.block_on(seed(std::sync::Arc::new(store), REAL));
    let c = rusqlite::Connection::open(&db).unwrap();
    let fill = FILL_SQL
        .replace("{ID}", "printf('ca_f%031x', x)")
        .replace("{SERIES}", &format!("(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {}) SELECT x FROM s)", MILLION - REAL as i64));
    c.execute_batch(&format!(
        "BEGIN; {fill}; INSERT INTO account_labels SELECT 'common', id FROM connected_accounts WHERE id LIKE 'ca_f%'; COMMIT; ANALYZE;"
    ))
    .unwrap();
    dir
}

/// The million-account PostgreSQL database, built once; `None` without a server.
fn postgres_million(rt: &tokio::runtime::Runtime) -> Option<String> {
    let server = std::env::var("KEYHAVEN_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    rt.block_on(async {
        use sqlx::Connection;
        let Ok(mut admin) = sqlx::PgConnection::connect(&server).await else {
            eprintln!("SKIPPED PostgreSQL: no server at {server}");
            return None;
        };
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'keyhaven_bench_serve')",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if !exists {
            sqlx::query("CREATE DATABASE keyhaven_bench_serve")
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let url = format!("{}/keyhaven_bench_serve", server.rsplit_once('/').unwrap().0);
        let store = PostgresStore::connect(&url, ring()).await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connected_accounts")
            .fetch_one(store.pool())
            .await
            .unwrap();
        if count != MILLION {
            eprintln!("building PostgreSQL keyhaven_bench_serve ({MILLION} accounts, once)");
            sqlx::raw_sql(
                "TRUNCATE connected_accounts, account_labels, integrations, events, webhook_deliveries, webhook_cursors CASCADE",
            )
            .execute(store.pool())
            .await
            .unwrap();
            let pool = store.pool().clone();
            seed(std::sync::Arc::new(store), REAL).await;
            let fill = FILL_SQL
                .replace("{ID}", "'ca_f' || lpad(to_hex(x), 31, '0')")
                .replace(
                    "{SERIES}",
                    &format!("generate_series(1, {}) x", MILLION - REAL as i64),
                );
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "{fill}; INSERT INTO account_labels SELECT 'common', id FROM connected_accounts WHERE id LIKE 'ca_f%'; ANALYZE;"
            )))
            .execute(&pool)
            .await
            .unwrap();
        }
        Some(url)
    })
}

/// A `/proc/PID/status` field, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Starts `keyhaven serve` on `place`; returns it, its base URL and how long it took
/// until `/readyz` answered 200.
fn start(rt: &tokio::runtime::Runtime, place: &Place, audit: &Path) -> (Child, String, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyhaven"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("KEYHAVEN_API_KEY", KEY)
        .env("KEYHAVEN_CREDENTIALS_KEY", CREDS)
        .env("KEYHAVEN_AUDIT_LOG", audit)
        .env("KEYHAVEN_MASTER_KEY", KEY_B64)
        // The default log: `info`, one JSON line per request.
        .env_remove("KEYHAVEN_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match place {
        Place::Sqlite(dir) => {
            cmd.env("KEYHAVEN_DATA_DIR", dir);
        }
        Place::Postgres { url, data } => {
            cmd.env("KEYHAVEN_DATA_DIR", data)
                .env("KEYHAVEN_DATABASE_URL", url);
        }
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let port = keyhaven_tests::serve_port(&mut child, "http");
    let base = format!("http://127.0.0.1:{port}");
    let ready = format!("{base}/readyz");
    rt.block_on(async {
        let client = reqwest::Client::new();
        loop {
            if client
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "keyhaven serve is not ready after 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (child, base, started.elapsed())
}

/// One store: start, idle memory, the ways under load, peak memory.
fn run(
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &str,
    place: &Place,
    settings: Settings,
) -> serde_json::Value {
    let scratch = tempfile::tempdir().unwrap();
    let (mut child, base, took) = start(rt, place, &scratch.path().join("audit.log"));
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(1));
    let idle = status_mib(pid, "VmRSS:");
    let client = reqwest::Client::new();
    // A real account of entity e77 (the listing's), and what the server says of it.
    let page: serde_json::Value = rt.block_on(async {
        client
            .get(format!("{base}/api/v1/connectedAccounts?user_uuid=e77"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let id = page["items"][0]["id"].as_str().unwrap().to_owned();
    let accounts: i64 = match place {
        Place::Sqlite(dir) => sqlite_count(&dir.join("keyhaven.db")),
        Place::Postgres { url, .. } => rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar("SELECT COUNT(*) FROM connected_accounts")
                .fetch_one(&mut c)
                .await
                .unwrap()
        }),
    };
    let account_url = format!("{base}/api/v1/connectedAccounts/{id}");
    let body = rt.block_on(async {
        client
            .get(&account_url)
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let bare = bare_handler(KEY, body);
    let mut ways: Vec<(String, Once)> = vec![
        (
            "bare axum handler, same bytes, same key check".into(),
            get(&client, format!("{bare}/account"), KEY),
        ),
        (
            "GET /api/v1/connectedAccounts/{id}".into(),
            get(&client, account_url.clone(), KEY),
        ),
        (
            "GET /api/v1/connectedAccounts?user_uuid=e77".into(),
            get(
                &client,
                format!("{base}/api/v1/connectedAccounts?user_uuid=e77"),
                KEY,
            ),
        ),
        (
            "GET /api/v1/connectedAccounts?user_uuid=e77&labels=common".into(),
            get(
                &client,
                format!("{base}/api/v1/connectedAccounts?user_uuid=e77&labels=common"),
                KEY,
            ),
        ),
        (
            "GET /api/v1/connectedAccounts/{id}/credentials (audited)".into(),
            get(&client, format!("{account_url}/credentials"), CREDS),
        ),
    ];
    // The listings above are of one entity, again and again (an SDK polling its
    // user's connections): after the first, from the server's copy. On a million
    // accounts, the same listing of a different entity each time, which the server
    // must read from the store: 499,000 entities, each listed once a round.
    if accounts >= 1_000_000 {
        let urls = (0..499_000)
            .map(|i| format!("{base}/api/v1/connectedAccounts?user_uuid=filler-{i}"))
            .collect();
        ways.push((
            "GET /api/v1/connectedAccounts?user_uuid=..., a different entity each time (no copy)"
                .into(),
            get_each(&client, urls, KEY),
        ));
    }
    let rows = rt.block_on(measure(&only(ways), settings, 1000));
    let peak = status_mib(pid, "VmHWM:");
    let after = status_mib(pid, "VmRSS:");
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "SERVE {name}: {store}, {accounts} accounts: ready in {:.0} ms; RSS idle {idle:.1} MiB, peak {peak:.1} MiB, after the load {after:.1} MiB",
        took.as_secs_f64() * 1000.0
    );
    keyhaven_tests::load::report(&format!("serve-{name}"), &rows, settings);
    let mut out = serde_json::json!({
        "name": name, "store": store, "accounts": accounts,
        "start_ms": took.as_secs_f64() * 1000.0, "rss_idle_mib": idle,
        "rss_peak_mib": peak, "rss_after_mib": after,
    });
    let table = rows_json(&rows, settings);
    out["rows"] = table["rows"].clone();
    out["settings"] = table;
    out["settings"].as_object_mut().map(|o| o.remove("rows"));
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("serve: bench");
        return;
    }
    let settings = Settings::from_env(32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut runs = Vec::new();

    // A small store, made fresh: 200 accounts.
    let small = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(small.path().join("keyhaven.db"), ring()).unwrap();
    rt.block_on(seed(std::sync::Arc::new(store), 200));
    runs.push(run(
        &rt,
        "sqlite-200",
        "SQLite",
        &Place::Sqlite(small.path().to_path_buf()),
        settings,
    ));

    let dir = sqlite_million(&rt);
    runs.push(run(
        &rt,
        "sqlite-1m",
        "SQLite",
        &Place::Sqlite(dir),
        settings,
    ));

    if let Some(url) = postgres_million(&rt) {
        let data = tempfile::tempdir().unwrap();
        runs.push(run(
            &rt,
            "postgres-1m",
            "PostgreSQL",
            &Place::Postgres {
                url,
                data: data.path().to_path_buf(),
            },
            settings,
        ));
    }
    write_results("serve", &serde_json::json!({ "runs": runs }));
    std::process::exit(0);
}
