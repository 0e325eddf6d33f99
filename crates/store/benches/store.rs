//! Cold reads and listings through the `Store` trait, each against a bare query
//! measured in the same run, on a table of 1,000,000 accounts of about 1 KiB.
//!
//! - SQLite: `get_account_and_credentials` vs a bare rusqlite point lookup (the same
//!   SQL, columns read as plain values) plus one AES-256-GCM decrypt (target: at most
//!   1.5x);
//! - PostgreSQL: the same vs a bare sqlx point query (the same SQL, a raw row) plus
//!   the decrypt (target: at most 1.2x);
//!
//! Besides criterion's report, each pair is also timed interleaved (batches of 25,
//! alternating) and printed as `paired ...: ratio`, so that load on the machine
//! during the run hits both sides alike.
//! - both: a listing by entity and label (target: under 1 ms).
//!
//! `cargo bench -p keyhaven-store --bench store --features sqlite,postgres`
//! The databases are built once (a minute or two) and kept: the SQLite file under
//! `target/bench-data`, PostgreSQL in the database `keyhaven_bench_v2` of
//! `KEYHAVEN_BENCH_DATABASE_URL` (default `postgres://postgres@127.0.0.1/postgres`'s server).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    clippy::print_stderr
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use chrono::{Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use keyhaven_core::{
    AccountFilter, AppSlug, ConnectedAccount, ConnectedAccountId, ConnectionStatus, Credentials,
    EntityId, Integration, IntegrationId, Label, SecretFields, Store,
};
use keyhaven_store::{KeyRing, MasterKey, PostgresStore, SqliteStore, ring_from_base64};
use rand::Rng;

const TOTAL: i64 = 1_000_000;
const REAL: usize = 2_000;
const ENTITIES: usize = 40;
/// A fixed bench key, so that the kept databases stay readable between runs.
const KEY_B64: &str = "a2V5aGF2ZW4tYmVuY2gta2V5LTMyLWJ5dGVzLWxvbmc=";

fn ring() -> KeyRing {
    ring_from_base64(KEY_B64, &[]).unwrap()
}

fn cipher() -> Aes256Gcm {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(KEY_B64)
        .unwrap();
    Aes256Gcm::new_from_slice(&bytes).unwrap()
}

/// What a bare reader does with a blob: split the header, decrypt.
fn bare_decrypt(cipher: &Aes256Gcm, id: &str, blob: &[u8]) -> Vec<u8> {
    let id_len = blob[3] as usize;
    let start = 4 + id_len;
    let aad = format!("connected_accounts.credentials:{id}");
    cipher
        .decrypt(
            Nonce::from_slice(&blob[start..start + 12]),
            Payload {
                msg: &blob[start + 12..],
                aad: aad.as_bytes(),
            },
        )
        .unwrap()
}

fn kib_credentials(n: usize) -> Credentials {
    let mut f = SecretFields::new();
    f.insert("access_token", format!("{n:08}-{}", "a".repeat(600)));
    f.insert("refresh_token", format!("{n:08}-{}", "r".repeat(250)));
    f.insert("token_type", "bearer");
    f.insert("scope", "openid profile email offline_access");
    Credentials::new(f, Some(Utc::now() + Duration::days(365)))
}

/// The real accounts, written through the store; their ids are returned.
async fn seed(store: &dyn Store) -> Vec<ConnectedAccountId> {
    let now = Utc::now();
    let int = Integration::new(
        IntegrationId::generate().unwrap(),
        AppSlug::new("bench").unwrap(),
        "bench",
        "OAUTH2",
        now,
    );
    store.insert_integration(&int).await.unwrap();
    let mut ids = Vec::with_capacity(REAL);
    for n in 0..REAL {
        let acc = {
            let mut account = ConnectedAccount::new(
                ConnectedAccountId::generate().unwrap(),
                EntityId::new(format!("bench-e{}", n % ENTITIES)).unwrap(),
                int.id.clone(),
                int.app.clone(),
                "OAUTH2",
                ConnectionStatus::Active,
                now,
            );
            account.labels = vec![
                Label::new(format!("l{}", (n / ENTITIES) % 5)).unwrap(),
                Label::new("common").unwrap(),
            ];
            account
        };
        store
            .insert_account(&acc, Some(&kib_credentials(n)), &[])
            .await
            .unwrap();
        ids.push(acc.id);
    }
    ids
}

const FILL_SQL: &str = "INSERT INTO connected_accounts SELECT {ID}, 'filler-' || (x % 50000), t.integration_id, t.app, t.auth_scheme, t.status, t.status_reason, t.labels, t.params, t.redirect_url, t.expires_at, t.version, t.created_at, t.updated_at, t.credentials, t.credentials_expires_at FROM {SERIES}, (SELECT * FROM connected_accounts ORDER BY id LIMIT 1) t";

fn real_ids_sqlite(path: &PathBuf) -> Vec<String> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut st = c
        .prepare("SELECT id FROM connected_accounts WHERE id NOT LIKE 'ca_f%'")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn sqlite_store(rt: &tokio::runtime::Runtime) -> (SqliteStore, PathBuf, Vec<String>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store-1m-v2.db");
    let ready = path.exists()
        && rusqlite::Connection::open(&path)
            .and_then(|c| {
                c.query_row("SELECT COUNT(*) FROM connected_accounts", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .is_ok_and(|n| n == TOTAL);
    if !ready {
        eprintln!("building {} ({TOTAL} accounts, once)", path.display());
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let store = SqliteStore::open(&path, ring()).unwrap();
        rt.block_on(seed(&store));
        drop(store);
        let c = rusqlite::Connection::open(&path).unwrap();
        let fill = FILL_SQL
            .replace("{ID}", "printf('ca_f%031x', x)")
            .replace("{SERIES}", &format!("(WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {}) SELECT x FROM s)", TOTAL - REAL as i64));
        c.execute_batch(&format!(
            "BEGIN; {fill}; INSERT INTO account_labels SELECT 'common', id FROM connected_accounts WHERE id LIKE 'ca_f%'; COMMIT; ANALYZE;"
        ))
        .unwrap();
    }
    let store = SqliteStore::open(&path, ring()).unwrap();
    let ids = real_ids_sqlite(&path);
    (store, path, ids)
}

async fn postgres_store() -> Option<(PostgresStore, Vec<String>)> {
    let server = std::env::var("KEYHAVEN_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/postgres".into());
    use sqlx::Connection;
    let Ok(mut admin) = sqlx::PgConnection::connect(&server).await else {
        eprintln!("SKIPPED: no PostgreSQL at {server}");
        return None;
    };
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'keyhaven_bench_v2')",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    if !exists {
        sqlx::query("CREATE DATABASE keyhaven_bench_v2")
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let base = server.rsplit_once('/').unwrap().0;
    let url = format!("{base}/keyhaven_bench_v2");
    let store = PostgresStore::connect(&url, ring()).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connected_accounts")
        .fetch_one(store.pool())
        .await
        .unwrap();
    if count != TOTAL {
        eprintln!("building PostgreSQL keyhaven_bench_v2 ({TOTAL} accounts, once)");
        sqlx::query("TRUNCATE connected_accounts, account_labels, integrations CASCADE")
            .execute(store.pool())
            .await
            .unwrap();
        seed(&store).await;
        let fill = FILL_SQL
            .replace("{ID}", "'ca_f' || lpad(to_hex(x), 31, '0')")
            .replace(
                "{SERIES}",
                &format!("generate_series(1, {}) x", TOTAL - REAL as i64),
            );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "{fill}; INSERT INTO account_labels SELECT 'common', id FROM connected_accounts WHERE id LIKE 'ca_f%'; ANALYZE;"
        )))
        .execute(store.pool())
        .await
        .unwrap();
    }
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM connected_accounts WHERE id NOT LIKE 'ca_f%'")
            .fetch_all(store.pool())
            .await
            .unwrap();
    Some((store, ids))
}

/// The same query the store runs (every account column and the blob), read into
/// plain values without any decoding, plus one AES-GCM decrypt.
fn bare_sqlite(conn: &rusqlite::Connection, cipher: &Aes256Gcm, id: &str) -> Vec<u8> {
    let mut st = conn.prepare_cached(ROW_SQL_SQLITE).unwrap();
    let values: Vec<rusqlite::types::Value> = st
        .query_row([id], |r| {
            (0..16)
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect()
        })
        .unwrap();
    let rusqlite::types::Value::Blob(blob) = &values[14] else {
        panic!("credentials")
    };
    bare_decrypt(cipher, id, blob)
}

/// The same query the store runs, fetched as a raw row, plus one AES-GCM decrypt.
async fn bare_postgres(pg: &PostgresStore, id: &str) -> usize {
    use sqlx::Row;
    let row = sqlx::query(ROW_SQL_PG)
        .bind(id)
        .fetch_one(pg.pool())
        .await
        .unwrap();
    let blob: &[u8] = row.try_get(14).unwrap();
    bare_decrypt(&cipher(), id, blob).len()
}

const ROW_SQL_SQLITE: &str = "SELECT id, entity_id, integration_id, app, auth_scheme, status, status_reason, labels, params, redirect_url, expires_at, version, created_at, updated_at, credentials, credentials_expires_at FROM connected_accounts WHERE id = ?1";
const ROW_SQL_PG: &str = "SELECT id, entity_id, integration_id, app, auth_scheme, status, status_reason, labels, params, redirect_url, expires_at, version, created_at, updated_at, credentials, credentials_expires_at FROM connected_accounts WHERE id = $1";

/// Times `store` and `bare` interleaved (so that load on the machine hits both alike)
/// and prints both medians and their ratio.
fn paired(name: &str, mut store: impl FnMut(usize), mut bare: impl FnMut(usize)) {
    const ROUNDS: usize = 400;
    const BATCH: usize = 25;
    let (mut s, mut b) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    let mut i = 0usize;
    for round in 0..ROUNDS {
        let time = |f: &mut dyn FnMut(usize), i: &mut usize| {
            let start = std::time::Instant::now();
            for _ in 0..BATCH {
                *i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                f(*i >> 33);
            }
            start.elapsed().as_nanos() as f64 / BATCH as f64
        };
        if round % 2 == 0 {
            s.push(time(&mut store, &mut i));
            b.push(time(&mut bare, &mut i));
        } else {
            b.push(time(&mut bare, &mut i));
            s.push(time(&mut store, &mut i));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ms, mb) = (median(&mut s), median(&mut b));
    eprintln!(
        "paired {name}: Store median {:.2} µs, bare median {:.2} µs, ratio {:.2}",
        ms / 1000.0,
        mb / 1000.0,
        ms / mb
    );
}

/// One entity (50 accounts) and a label that 10 of them carry.
fn list_filter() -> AccountFilter {
    AccountFilter {
        entity_ids: vec![EntityId::new("bench-e7").unwrap()],
        labels: vec![Label::new("l2").unwrap()],
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cipher = cipher();

    let (store, path, ids) = sqlite_store(&rt);
    let parsed: Vec<ConnectedAccountId> = ids
        .iter()
        .map(|i| ConnectedAccountId::parse(i).unwrap())
        .collect();
    let bare = rusqlite::Connection::open(&path).unwrap();
    let mut group = c.benchmark_group("sqlite 1M accounts");
    group.bench_function("Store::get_account_and_credentials", |b| {
        let mut rng = rand::rng();
        b.iter(|| {
            let id = &parsed[rng.random_range(0..parsed.len())];
            black_box(
                store
                    .get_account_and_credentials(id)
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            )
        })
    });
    group.bench_function("bare rusqlite lookup + AES-GCM decrypt", |b| {
        let mut rng = rand::rng();
        b.iter(|| {
            black_box(bare_sqlite(
                &bare,
                &cipher,
                &ids[rng.random_range(0..ids.len())],
            ))
        })
    });
    paired(
        "sqlite",
        |i| {
            black_box(
                store
                    .get_account_and_credentials(&parsed[i % parsed.len()])
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            );
        },
        |i| {
            black_box(bare_sqlite(&bare, &cipher, &ids[i % ids.len()]));
        },
    );
    let filter = list_filter();
    assert!(
        !store
            .list_accounts(&filter)
            .now_or_never()
            .unwrap()
            .unwrap()
            .items
            .is_empty()
    );
    group.bench_function("Store::list_accounts by entity and label", |b| {
        b.iter(|| {
            black_box(
                store
                    .list_accounts(&filter)
                    .now_or_never()
                    .unwrap()
                    .unwrap(),
            )
        })
    });
    group.finish();

    let Some((pg, pg_ids)) = rt.block_on(postgres_store()) else {
        return;
    };
    let pg = Arc::new(pg);
    let pg_parsed: Vec<ConnectedAccountId> = pg_ids
        .iter()
        .map(|i| ConnectedAccountId::parse(i).unwrap())
        .collect();
    let mut group = c.benchmark_group("postgres 1M accounts");
    group.bench_function("Store::get_account_and_credentials", |b| {
        let mut rng = rand::rng();
        b.iter(|| {
            let id = &pg_parsed[rng.random_range(0..pg_parsed.len())];
            black_box(rt.block_on(pg.get_account_and_credentials(id)).unwrap())
        })
    });
    group.bench_function("bare sqlx point query", |b| {
        let mut rng = rand::rng();
        b.iter(|| {
            black_box(rt.block_on(bare_postgres(
                &pg,
                &pg_ids[rng.random_range(0..pg_ids.len())],
            )))
        })
    });
    paired(
        "postgres",
        |i| {
            black_box(
                rt.block_on(pg.get_account_and_credentials(&pg_parsed[i % pg_parsed.len()]))
                    .unwrap(),
            );
        },
        |i| {
            black_box(rt.block_on(bare_postgres(&pg, &pg_ids[i % pg_ids.len()])));
        },
    );
    group.bench_function("Store::list_accounts by entity and label", |b| {
        b.iter(|| black_box(rt.block_on(pg.list_accounts(&filter)).unwrap()))
    });
    group.finish();
    let _ = MasterKey::generate;
}

criterion_group! {
    name = store;
    config = Criterion::default().sample_size(60).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(store);
