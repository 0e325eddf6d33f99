//! What the SQL stores promise beyond the conformance suite: no secret in the raw
//! bytes, blobs bound to their row, wrong keys named, rotation that loses nothing
//! under traffic, idempotent migrations, and clear errors with nothing half-written
//! when PostgreSQL goes away.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use keyhaven_core::{
    ConnectionStatus, Credentials, CredentialsUpdate, PendingState, SecretFields, Store, StoreError,
};

use chrono::{Duration, Utc};
use keyhaven_store::conformance::{account, fresh_postgres_database, integration, unique_app};
use keyhaven_store::{KeyRing, MasterKey, PostgresStore, SqliteStore};

const SECRETS: [&str; 4] = [
    "client-secret-Q7Z",
    "access-token-SECRET-93",
    "refresh-token-SECRET-94",
    "pkce-verifier-SECRET-95",
];

fn creds(token: &str) -> Credentials {
    let mut f = SecretFields::new();
    f.insert("access_token", token);
    f.insert("refresh_token", SECRETS[2]);
    Credentials::new(f, Some(Utc::now() + Duration::hours(1)))
}

/// Writes one of everything that holds a secret; returns the account id.
async fn write_secrets(store: &dyn Store) -> keyhaven_core::ConnectedAccountId {
    let app = unique_app("raw");
    let mut int = integration(&app, "OAUTH2");
    int.secrets = SecretFields::new();
    int.secrets.insert("client_secret", SECRETS[0]);
    store.insert_integration(&int).await.unwrap();
    let acc = account(&int, "alice", &["l1"]);
    store
        .insert_account(&acc, Some(&creds(SECRETS[1])), &[])
        .await
        .unwrap();
    let mut data = SecretFields::new();
    data.insert("code_verifier", SECRETS[3]);
    store
        .put_pending_state(&PendingState::new(
            "state-that-is-secret-too",
            acc.id.clone(),
            data,
            Utc::now() + Duration::minutes(10),
        ))
        .await
        .unwrap();
    acc.id
}

fn assert_no_secret(bytes: &[u8], place: &str) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    for s in SECRETS.iter().chain(&["state-that-is-secret-too"]) {
        let needle = s.as_bytes();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{s} found in {place}"
        );
        let hex_needle: String = needle.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !hex.contains(&hex_needle),
            "{s} found hex-encoded in {place}"
        );
    }
}

/// The pending state `write_secrets` wrote (for `owner`) is bound to its row: moved
/// to `other` or given a longer life in the database, it is refused, and taking it
/// then uses it up. `sql` runs a statement on the store's database.
async fn pending_state_is_bound_to_its_row(
    store: &dyn Store,
    owner: &keyhaven_core::ConnectedAccountId,
    other: &keyhaven_core::ConnectedAccountId,
    sql: impl AsyncFn(String),
) {
    const STATE: &str = "state-that-is-secret-too";
    let refused = |e: StoreError| {
        assert!(
            matches!(&e, StoreError::Corrupt(m) if m.contains("changed outside keyhaven")),
            "{e}"
        );
    };
    sql(format!(
        "UPDATE pending_states SET account_id = '{}'",
        other.as_str()
    ))
    .await;
    refused(store.get_pending_state(STATE).await.unwrap_err());
    sql(format!(
        "UPDATE pending_states SET account_id = '{}'",
        owner.as_str()
    ))
    .await;
    let pending = store.get_pending_state(STATE).await.unwrap().unwrap();
    assert_eq!(&pending.account_id, owner);
    assert_eq!(pending.data.get_str("code_verifier"), Some(SECRETS[3]));

    sql("UPDATE pending_states SET expires_at = expires_at + 3600000000".into()).await;
    refused(store.get_pending_state(STATE).await.unwrap_err());
    refused(store.take_pending_state(STATE).await.unwrap_err());
    assert!(
        store.get_pending_state(STATE).await.unwrap().is_none(),
        "taken"
    );
}

fn ring() -> KeyRing {
    KeyRing::new(MasterKey::generate().unwrap(), [])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_holds_no_secret_and_blobs_are_bound_to_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kh.db");
    let key = MasterKey::generate().unwrap();
    let key_b64 = key.to_base64();
    let key_id = key.id().to_owned();
    let store = SqliteStore::open(&path, KeyRing::new(key, [])).unwrap();
    let id = write_secrets(&store).await;
    let other = {
        let int = store.list_integrations(None).await.unwrap().remove(0);
        let acc = account(&int, "bob", &[]);
        store
            .insert_account(&acc, Some(&creds("other-token")), &[])
            .await
            .unwrap();
        acc.id
    };
    // The store reads its own secrets back.
    let (_, c) = store
        .get_account_and_credentials(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.unwrap().get_str("access_token"), Some(SECRETS[1]));

    // Every byte on disk: the database, its WAL and shared memory.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        assert_no_secret(&std::fs::read(&p).unwrap(), &p.display().to_string());
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    assert_no_secret(&std::fs::read(&path).unwrap(), "the checkpointed database");

    // A blob copied to another row does not decrypt there; the error names the key.
    raw.execute(
        "UPDATE connected_accounts SET credentials = (SELECT credentials FROM connected_accounts WHERE id = ?1) WHERE id = ?2",
        [id.as_str(), other.as_str()],
    )
    .unwrap();
    let err = store.get_account_and_credentials(&other).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)));
    assert!(
        err.to_string().contains(&key_id) && err.to_string().contains("another row"),
        "{err}"
    );
    pending_state_is_bound_to_its_row(&store, &id, &other, async |q: String| {
        raw.execute(&q, []).unwrap();
    })
    .await;

    // A wrong key is a clear error naming the key id, never garbage: at open...
    drop(store);
    let err = SqliteStore::open(&path, ring()).unwrap_err().to_string();
    assert!(
        err.contains(&key_id) && err.contains("not configured"),
        "{err}"
    );
    let right = SqliteStore::open(
        &path,
        keyhaven_store::ring_from_base64(&key_b64, &[]).unwrap(),
    )
    .unwrap();
    assert!(
        right
            .get_account_and_credentials(&id)
            .await
            .unwrap()
            .unwrap()
            .1
            .is_some()
    );
    // ... and at a read, should the ring change afterwards.
    right.set_key_ring(ring());
    let err = right
        .get_account_and_credentials(&id)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&key_id) && err.contains("not configured"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrations_run_from_empty_and_again_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kh.db");
    let schema = || {
        let c = rusqlite::Connection::open(&path).unwrap();
        let mut st = c
            .prepare("SELECT type, name, sql FROM sqlite_master ORDER BY name")
            .unwrap();
        st.query_map([], |r| {
            Ok(format!(
                "{:?}",
                (
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?
                )
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
    };
    drop(SqliteStore::open(&path, ring()).unwrap());
    let first = schema();
    assert!(first.iter().any(|s| s.contains("connected_accounts")));
    drop(SqliteStore::open(&path, ring()).unwrap());
    assert_eq!(schema(), first, "a second open changes nothing");
    let c = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM keyhaven_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5, "every migration (five), once each");
}

async fn rotation_under_traffic(
    store: Arc<dyn Store>,
    rotate: impl AsyncFnOnce() -> keyhaven_store::RotationReport,
) {
    let app = unique_app("rot");
    let int = integration(&app, "OAUTH2");
    store.insert_integration(&int).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..120 {
        let acc = account(&int, "rot", &[]);
        store
            .insert_account(&acc, Some(&creds(&format!("v0-{n}"))), &[])
            .await
            .unwrap();
        ids.push(acc.id);
    }
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    // Writers: each owns a slice of the accounts and records its last write.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (store, ids, stop) = (store.clone(), ids.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut last: HashMap<String, String> = HashMap::new();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) || round < 2 {
                round += 1;
                for id in ids.iter().skip(w).step_by(4) {
                    let (acc, _) = store
                        .get_account_and_credentials(id)
                        .await
                        .unwrap()
                        .unwrap();
                    let value = format!("w{w}-r{round}-{id}");
                    store
                        .update_account(&acc, CredentialsUpdate::Set(&creds(&value)), &[])
                        .await
                        .unwrap();
                    last.insert(id.to_string(), value);
                }
            }
            last
        }));
    }
    // Readers: every read decrypts.
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (store, ids, stop) = (store.clone(), ids.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            // At least one whole pass, however soon the rotation ends (it can end
            // before this task is first polled on a busy machine), as the writers do.
            let mut passes = 0;
            while !stop.load(Ordering::Relaxed) || passes < 1 {
                passes += 1;
                for id in ids.iter() {
                    let (_, c) = store
                        .get_account_and_credentials(id)
                        .await
                        .unwrap()
                        .unwrap();
                    assert!(c.unwrap().get_str("access_token").is_some());
                    reads += 1;
                }
            }
            reads
        }));
    }
    let report = rotate().await;
    stop.store(true, Ordering::Relaxed);
    let mut expected: HashMap<String, String> = HashMap::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    assert!(
        report.reencrypted + report.changed_meanwhile + report.already_current >= 120,
        "{report:?}"
    );
    for id in ids.iter() {
        let (acc, c) = store
            .get_account_and_credentials(id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(acc.status, ConnectionStatus::Active);
        assert_eq!(
            c.unwrap().get_str("access_token"),
            Some(expected[id.as_str()].as_str()),
            "the last write survives"
        );
    }
}

/// Retiring the old keys after a rotation is held back while a value needs them:
/// one written under them meanwhile by a process still running with them.
#[tokio::test]
async fn old_keys_are_not_retired_while_a_value_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kh.db");
    let old = MasterKey::generate().unwrap();
    let old_b64 = old.to_base64();
    let rotating = SqliteStore::open(&path, KeyRing::new(old, [])).unwrap();
    let id = write_secrets(&rotating).await;
    // Another process, still on the old key.
    let running = SqliteStore::open(
        &path,
        keyhaven_store::ring_from_base64(&old_b64, &[]).unwrap(),
    )
    .unwrap();
    let new = MasterKey::generate().unwrap();
    let new_id = new.id().to_owned();
    rotating.set_key_ring(KeyRing::new(
        new,
        [MasterKey::from_base64(&old_b64).unwrap()],
    ));
    rotating.rotate(16).await.unwrap();
    // The pending state reads back after its rotation, bound to its account still.
    let pending = rotating
        .get_pending_state("state-that-is-secret-too")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.account_id, id);
    assert_eq!(pending.data.get_str("code_verifier"), Some(SECRETS[3]));
    let only_new = rotating.key_ring().only_primary();
    assert_eq!(only_new.key_ids().collect::<Vec<_>>(), [new_id.as_str()]);
    rotating.check_keys(&only_new).unwrap();
    // It writes after the rotation passed: the old key is needed again.
    // (It cannot read the rewritten values; its write needs only the account.)
    let (acc, _) = rotating
        .get_account_and_credentials(&id)
        .await
        .unwrap()
        .unwrap();
    running
        .update_account(
            &acc,
            CredentialsUpdate::Set(&creds("written-meanwhile")),
            &[],
        )
        .await
        .unwrap();
    let err = rotating.check_keys(&only_new).unwrap_err().to_string();
    let old_id = MasterKey::from_base64(&old_b64).unwrap().id().to_owned();
    assert!(err.contains(&old_id), "{err}");
    // Rotated again, nothing needs it.
    rotating.rotate(16).await.unwrap();
    rotating.check_keys(&only_new).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_rotation_under_traffic_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kh.db");
    let old = MasterKey::generate().unwrap();
    let old_b64 = old.to_base64();
    let store = SqliteStore::open(&path, KeyRing::new(old, [])).unwrap();
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let new = MasterKey::generate().unwrap();
    let new_b64 = new.to_base64();
    let rotating = store.clone();
    rotation_under_traffic(shared, async move || {
        rotating.set_key_ring(KeyRing::new(
            new,
            [MasterKey::from_base64(&old_b64).unwrap()],
        ));
        rotating.rotate(16).await.unwrap()
    })
    .await;
    // Every value now reads with the new key alone.
    let only_new = SqliteStore::open(
        &path,
        keyhaven_store::ring_from_base64(&new_b64, &[]).unwrap(),
    )
    .unwrap();
    let page = only_new.list_accounts(&Default::default()).await.unwrap();
    for acc in page.items {
        only_new.get_account_and_credentials(&acc.id).await.unwrap();
    }
    // Run again: nothing left to do.
    let again = store.rotate(16).await.unwrap();
    assert_eq!(again.reencrypted, 0, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_tables_hold_no_secret_and_rotation_loses_nothing() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let key = MasterKey::generate().unwrap();
    let key_b64 = key.to_base64();
    let key_id = key.id().to_owned();
    let store = PostgresStore::connect(&url, KeyRing::new(key, []))
        .await
        .unwrap();
    let id = write_secrets(&store).await;

    // Every table's rows, as text (bytea as hex).
    for table in [
        "integrations",
        "connected_accounts",
        "pending_states",
        "account_labels",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {table} t"
        )))
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert!(!rows.is_empty() || table == "account_labels");
        assert_no_secret(rows.join("\n").as_bytes(), table);
    }

    // A blob moved to another row fails to decrypt.
    let int = store.list_integrations(None).await.unwrap().remove(0);
    let other = account(&int, "bob", &[]);
    store
        .insert_account(&other, Some(&creds("other")), &[])
        .await
        .unwrap();
    sqlx::query("UPDATE connected_accounts SET credentials = (SELECT credentials FROM connected_accounts WHERE id = $1) WHERE id = $2")
        .bind(id.as_str())
        .bind(other.id.as_str())
        .execute(store.pool())
        .await
        .unwrap();
    let err = store
        .get_account_and_credentials(&other.id)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&key_id) && err.contains("another row"),
        "{err}"
    );
    pending_state_is_bound_to_its_row(&store, &id, &other.id, async |q: String| {
        sqlx::query(sqlx::AssertSqlSafe(q))
            .execute(store.pool())
            .await
            .unwrap();
    })
    .await;
    store.delete_account(&other.id, &[]).await.unwrap();

    // A wrong key names the key id.
    let err = PostgresStore::connect(&url, ring())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&key_id) && err.contains("not configured"),
        "{err}"
    );
    let right = || keyhaven_store::ring_from_base64(&key_b64, &[]).unwrap();

    // Migrations again change nothing.
    let columns = || async {
        sqlx::query_scalar::<_, String>("SELECT table_name || '.' || column_name || ':' || data_type FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1")
            .fetch_all(store.pool())
            .await
            .unwrap()
    };
    let before = columns().await;
    drop(PostgresStore::connect(&url, right()).await.unwrap());
    assert_eq!(columns().await, before);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keyhaven_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 6, "every migration (six), once each");

    // Rotation under concurrent reads and writes.
    let new = MasterKey::generate().unwrap();
    let rotating = store.clone();
    rotation_under_traffic(Arc::new(store.clone()), async move || {
        rotating.set_key_ring(KeyRing::new(
            new,
            [MasterKey::from_base64(&key_b64).unwrap()],
        ));
        rotating.rotate(16).await.unwrap()
    })
    .await;
    assert_eq!(store.rotate(16).await.unwrap().reencrypted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_going_away_gives_clear_errors_and_nothing_half_written() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let key = MasterKey::generate().unwrap().to_base64();
    let ring = || keyhaven_store::ring_from_base64(&key, &[]).unwrap();
    let store = Arc::new(PostgresStore::connect(&url, ring()).await.unwrap());
    let app = unique_app("away");
    let int = integration(&app, "API_KEY");
    store.insert_integration(&int).await.unwrap();
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let admin_url = std::env::var("KEYHAVEN_TEST_DATABASE_URL").unwrap();

    // Writes of accounts with labels, back to back from 32 tasks, while every connection
    // is cut, again and again: at least 20 times, and on until some write has failed
    // (a write that fails is what this test is about; 30 s without one fails it).
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..32 {
        let (store, int) = (store.clone(), int.clone());
        let (stop, failures) = (stop.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let acc = account(&int, "away", &["a", "b", "c"]);
                let r = store
                    .insert_account(&acc, Some(&creds(&format!("t{task}-{n}"))), &[])
                    .await;
                if let Err(e) = &r {
                    failures.fetch_add(1, Ordering::Relaxed);
                    let msg = e.to_string();
                    assert!(
                        msg.contains("PostgreSQL") || msg.contains("store"),
                        "a clear error: {msg}"
                    );
                }
                done.push((acc.id, r.is_ok()));
            }
            done
        }));
    }
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut cuts = 0;
        while cuts < 20 || failures.load(Ordering::Relaxed) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "cutting connections for 30 s made no write fail"
            );
            sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
                .bind(&db)
                .execute(&mut admin)
                .await
                .unwrap();
            cuts += 1;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    let failed = failures.load(Ordering::Relaxed);
    // Whatever was written is whole: an account with its three labels and credentials;
    // whatever failed left nothing.
    let check = PostgresStore::connect(&url, ring()).await.ok();
    let pool = match &check {
        Some(s) => s.pool().clone(),
        None => store.pool().clone(),
    };
    for (id, ok) in &results {
        let labels: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM account_labels WHERE account_id = $1")
                .bind(id.as_str())
                .fetch_one(&pool)
                .await
                .unwrap();
        let rows: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM connected_accounts WHERE id = $1 AND credentials IS NOT NULL",
        )
        .bind(id.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
        match (ok, rows) {
            (true, 1) => assert_eq!(labels, 3, "a written account has all its labels"),
            (false, 0) => assert_eq!(labels, 0, "a failed write left no labels"),
            // The commit may reach the server just as the connection is cut: then the
            // caller sees an error although the row is whole.
            (false, 1) => assert_eq!(labels, 3),
            (true, _) => panic!("a successful write is missing"),
            _ => unreachable!(),
        }
    }
    assert!(failed > 0, "cutting connections made some writes fail");
    eprintln!(
        "{failed} of {} writes failed while connections were cut",
        results.len()
    );

    // The database dropped outright: every call is a clear Unavailable error.
    {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    let err = store.get_account(&results[0].0).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
}
