//! A store never opens on a key ring that lacks the keys its values are encrypted
//! with: a deleted `master.key` (no new one is made in its place), a replaced one,
//! a PostgreSQL instance started with another key. The refusal names the missing key
//! ids and how many values they encrypt, and writes nothing; giving the old key back
//! opens the store again. And every file of a data directory is owner-only (0600),
//! whatever the directory's mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, Utc};
use keyhaven_core::{ConnectedAccountId, PendingState, SecretFields, Store, StoreError};
use keyhaven_store::conformance::{
    account, credentials, fresh_postgres_database, integration, unique_app,
};
use keyhaven_store::{
    DB_FILE, KEY_FILE, KeyError, KeyFile, KeyRing, MasterKey, PostgresStore, SqliteStore,
    ring_from_base64,
};

/// Writes one value into each encrypted column: an integration's secrets, an
/// account's credentials, a pending state (3 values); returns the account.
async fn write_secrets(store: &dyn Store) -> ConnectedAccountId {
    let int = integration(&unique_app("keys"), "OAUTH2");
    store.insert_integration(&int).await.unwrap();
    let acc = account(&int, "kim", &["l"]);
    store
        .insert_account(&acc, Some(&credentials("tok-KEYS")), &[])
        .await
        .unwrap();
    let mut data = SecretFields::new();
    data.insert("code_verifier", "v");
    store
        .put_pending_state(&PendingState::new(
            format!("state-{}", acc.id),
            acc.id.clone(),
            data,
            Utc::now() + Duration::minutes(10),
        ))
        .await
        .unwrap();
    acc.id
}

/// The [`KeyError`] inside a store error.
fn key_error(e: &StoreError) -> &KeyError {
    match e {
        StoreError::Backend(b) => b.downcast_ref::<KeyError>().expect("a KeyError"),
        other => panic!("not a key error: {other:?}"),
    }
}

/// Every row of every table, as text: what "nothing was written" compares.
fn sqlite_rows(path: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut out = Vec::new();
    for table in [
        "integrations",
        "connected_accounts",
        "account_labels",
        "pending_states",
        "keyhaven_migrations",
    ] {
        let mut st = c
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .unwrap();
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        r.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        for row in rows {
            out.push(format!("{table}: {}", row.unwrap().join(", ")));
        }
    }
    out
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_refuses_a_missing_or_replaced_key_file() {
    assert!(
        std::env::var(keyhaven_store::MASTER_KEY_ENV).is_err(),
        "this test needs KEYHAVEN_MASTER_KEY unset"
    );
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    let db = dir.join(DB_FILE);
    let key_path = dir.join(KEY_FILE);

    // A directory that exists already, open to all: the files are still owner-only.
    std::fs::create_dir(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let store = SqliteStore::open_dir(&dir).unwrap();
    let old_id = store.key_ring().primary_id().to_owned();
    let id = write_secrets(&store).await;
    #[cfg(unix)]
    for name in [DB_FILE, "keyhaven.db-wal", "keyhaven.db-shm", KEY_FILE] {
        let path = dir.join(name);
        assert!(path.exists(), "{name} exists while the store is open");
        assert_eq!(mode(&path), 0o600, "{name}");
    }
    drop(store);
    let old_key_file = std::fs::read(&key_path).unwrap();
    let before = sqlite_rows(&db);
    assert!(before.len() > 4, "{before:?}");

    // The key file deleted: refused, and no new key is made in its place.
    std::fs::remove_file(&key_path).unwrap();
    let err = SqliteStore::open_dir(&dir).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{old_id} (3 values)"))
            && text.contains("master.key is missing")
            && text.contains("Put back the master.key"),
        "{text}"
    );
    assert!(
        matches!(key_error(&err), KeyError::KeyFileMissing { rows: 3, missing, .. } if missing[0].0 == old_id)
    );
    assert!(!key_path.exists(), "no new key file");
    assert_eq!(sqlite_rows(&db), before, "nothing written");

    // Replaced by another valid key: refused too, the file left as it is.
    let other = MasterKey::generate().unwrap();
    let other_id = other.id().to_owned();
    KeyFile::in_dir(&dir).create(&other).unwrap();
    let replaced = std::fs::read(&key_path).unwrap();
    let err = SqliteStore::open_dir(&dir).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{old_id} (3 values)"))
            && text.contains(&format!("configured: {other_id}"))
            && text.contains("KEYHAVEN_OLD_MASTER_KEYS")
            && text.contains("keyhaven keys rotate"),
        "{text}"
    );
    assert!(
        matches!(key_error(&err), KeyError::NotConfigured { rows: 3, missing, .. } if missing[0].0 == old_id)
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), replaced);
    assert_eq!(sqlite_rows(&db), before, "nothing written");

    // The old key given back beside the new one (as KEYHAVEN_OLD_MASTER_KEYS does):
    // it opens and reads.
    let old_b64 = {
        let v: serde_json::Value = serde_json::from_slice(&old_key_file).unwrap();
        v["keys"][&old_id].as_str().unwrap().to_owned()
    };
    let both = ring_from_base64(&other.to_base64(), &[&old_b64]).unwrap();
    let store = SqliteStore::open(&db, both).unwrap();
    let (_, c) = store
        .get_account_and_credentials(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.unwrap().get_str("token"), Some("tok-KEYS"));
    drop(store);

    // The old master.key put back: it opens and reads.
    std::fs::remove_file(&key_path).unwrap();
    std::fs::write(&key_path, &old_key_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let store = SqliteStore::open_dir(&dir).unwrap();
    assert_eq!(store.key_ring().primary_id(), old_id);
    let (_, c) = store
        .get_account_and_credentials(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.unwrap().get_str("token"), Some("tok-KEYS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_takes_a_new_key_and_expired_pending_states_do_not_count() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("data");
    // A database with no encrypted value: a new key file is made for it.
    let store = SqliteStore::open_dir(&dir).unwrap();
    let first = store.key_ring().primary_id().to_owned();
    drop(store);
    std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
    let store = SqliteStore::open_dir(&dir).unwrap();
    assert_ne!(store.key_ring().primary_id(), first);
    // A pending state that has expired can never be used: it does not hold the
    // store back when its key is gone.
    let int = integration(&unique_app("exp"), "API_KEY");
    let acc = account(&int, "e", &[]);
    let mut data = SecretFields::new();
    data.insert("x", "y");
    store
        .put_pending_state(&PendingState::new(
            "expired",
            acc.id.clone(),
            data,
            Utc::now() - Duration::minutes(1),
        ))
        .await
        .unwrap();
    drop(store);
    std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
    SqliteStore::open_dir(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_key_ring_without_the_old_key() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let old = MasterKey::generate().unwrap();
    let (old_id, old_b64) = (old.id().to_owned(), old.to_base64());
    let store = PostgresStore::connect(&url, KeyRing::new(old, []))
        .await
        .unwrap();
    let id = write_secrets(&store).await;
    let rows = || async {
        let mut all = Vec::new();
        for table in [
            "integrations",
            "connected_accounts",
            "account_labels",
            "pending_states",
            "keyhaven_migrations",
        ] {
            let r: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT t::text FROM {table} t ORDER BY 1"
            )))
            .fetch_all(store.pool())
            .await
            .unwrap();
            all.extend(r);
        }
        all
    };
    let before = rows().await;

    // Another key (a new KEYHAVEN_MASTER_KEY, the old one forgotten): refused.
    let new = MasterKey::generate().unwrap();
    let new_b64 = new.to_base64();
    let err = PostgresStore::connect(&url, KeyRing::new(new, []))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{old_id} (3 values)"))
            && text.contains("KEYHAVEN_OLD_MASTER_KEYS")
            && text.contains("nothing was written"),
        "{text}"
    );
    assert!(matches!(
        key_error(&err),
        KeyError::NotConfigured { rows: 3, .. }
    ));
    assert_eq!(rows().await, before, "nothing written");

    // The old key given back (KEYHAVEN_OLD_MASTER_KEYS): it opens and reads.
    let both = PostgresStore::connect(&url, ring_from_base64(&new_b64, &[&old_b64]).unwrap())
        .await
        .unwrap();
    let (_, c) = both
        .get_account_and_credentials(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.unwrap().get_str("token"), Some("tok-KEYS"));
    // Rotated under the new key, the old one is no longer needed.
    both.rotate(100).await.unwrap();
    let only_new = PostgresStore::connect(&url, ring_from_base64(&new_b64, &[]).unwrap())
        .await
        .unwrap();
    let (_, c) = only_new
        .get_account_and_credentials(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.unwrap().get_str("token"), Some("tok-KEYS"));
}

/// Reads every value `write_secrets` wrote for account `id` (its integration's
/// secrets, its credentials, its pending state) through `store`.
async fn read_secrets(store: &dyn Store, id: &ConnectedAccountId) {
    let (account, credentials) = store
        .get_account_and_credentials(id)
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"))
        .unwrap();
    assert_eq!(credentials.unwrap().get_str("token"), Some("tok-KEYS"));
    let integration = store
        .get_integration(&account.integration_id)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", account.integration_id))
        .unwrap();
    assert!(!integration.secrets.is_empty());
    assert!(
        store
            .get_pending_state(&format!("state-{id}"))
            .await
            .unwrap()
            .is_some()
    );
}

/// A store opened on a data directory follows its key file, so that `keyhaven keys
/// rotate` in another process does not leave a running server unable to read what
/// it re-encrypted: the new key is taken up at the first value that needs it, and
/// for writes within `KEY_FILE_CHECK`; the old keys retired, it goes on. A key
/// file replaced by an unrelated key is not taken up (opening would refuse it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_store_takes_up_a_rotation_made_by_another_process() {
    // A store that made the key file and reads first, and one opened on it
    // afterwards that writes first.
    for reopened in [false, true] {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        if reopened {
            drop(SqliteStore::open_dir(&dir).unwrap());
        }
        takes_up_a_rotation(&dir, reopened).await;
    }
}

/// `writes_first`: the running store writes before the rotation, and reads
/// nothing: it takes the new key up when its write looks at the file (due once a
/// second); else it takes it up reading a value the rotation rewrote.
async fn takes_up_a_rotation(dir: &std::path::Path, writes_first: bool) {
    let running = SqliteStore::open_dir(dir).unwrap();
    let old_id = running.key_ring().primary_id().to_owned();
    let first = write_secrets(&running).await;

    // The other process, as `keyhaven keys rotate` does it.
    let file = KeyFile::in_dir(dir);
    let rotating = SqliteStore::open(dir.join(DB_FILE), file.load().unwrap()).unwrap();
    let ring = file.add_primary().unwrap();
    let new_id = ring.primary_id().to_owned();
    rotating.set_key_ring(ring);
    if writes_first {
        tokio::time::sleep(keyhaven_store::KEY_FILE_CHECK * 3 / 2).await;
        write_secrets(&running).await;
    }
    let report = rotating.rotate(100).await.unwrap();
    assert_eq!(
        report.reencrypted, 3,
        "what was written under the old key only: {report:?}"
    );

    // Read at once, under the new key.
    read_secrets(&running, &first).await;
    assert_eq!(running.key_ring().primary_id(), new_id, "writes take it up");
    let second = write_secrets(&running).await;
    rotating
        .check_keys(&rotating.key_ring().only_primary())
        .unwrap();
    file.retire_old_keys().unwrap();
    drop(rotating);
    tokio::time::sleep(keyhaven_store::KEY_FILE_CHECK * 3 / 2).await;
    read_secrets(&running, &first).await;
    read_secrets(&running, &second).await;
    assert_eq!(running.key_ring().primary_id(), new_id);

    // A file replaced by another key: not taken up, everything still read.
    std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
    KeyFile::in_dir(dir)
        .create(&MasterKey::generate().unwrap())
        .unwrap();
    tokio::time::sleep(keyhaven_store::KEY_FILE_CHECK * 3 / 2).await;
    read_secrets(&running, &first).await;
    assert_eq!(running.key_ring().primary_id(), new_id, "not taken up");
    assert_ne!(new_id, old_id);
}
