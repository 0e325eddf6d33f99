//! The embedded store: one SQLite file (WAL), through rusqlite.
//!
//! Why rusqlite and not sqlx's SQLite driver: on these machines a point lookup took
//! 9.8 µs with rusqlite and 82 µs with sqlx's driver, whose every query hops to a
//! worker thread (BENCHMARKS.md). Reads here run on the calling task — a point read
//! from SQLite's page cache takes microseconds, less than a hand-off to a blocking
//! pool would — on a connection from a small pool of readers; writes, which may wait
//! for the disk, go to a writer thread of their own with the one writer connection,
//! which commits those queued together in one transaction (`writer.rs`).
//!
//! By job: this file holds the store and its `Store` implementation; `schema.rs` the
//! connections' settings and the migrations; `rotate.rs` re-encryption under a new
//! key; `watch.rs` the feed of other processes' commits; `data_dir.rs` the private
//! data directory and database file; the refresh lease is `crate::lease`.

mod data_dir;
mod outbox;
mod rotate;
mod schema;
mod watch;
mod writer;

use data_dir::{create_db_file, create_private_dir};
use schema::{migrate, open_connection};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountEvent, AccountFilter, AccountLock, AppSlug, ChangeSink, ConnectedAccount,
    ConnectedAccountId, Credentials, CredentialsUpdate, Delivery, DeliveryFilter, DeliveryOutcome,
    Integration, IntegrationId, Page, PendingState, Store, StoreError, WebhookTarget,
};
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::crypto::KeyRing;
use crate::keys::{FileStamp, KeyFileWatch};
use crate::outbox::EventRow;
use crate::rotate::{MissingKeys, Table};
use crate::rows::{
    ACCOUNT_COLUMNS, AccountRow, Arg, INTEGRATION_COLUMNS, IntegrationRow, PreparedUpdate,
    account_and_credentials, count_query, encode_credentials, encode_pending, list_query, micros,
    page, pending_state, prepare_update, state_hash, update_refused,
};

/// The hot read, built once.
static ACCOUNT_WITH_CREDENTIALS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {ACCOUNT_COLUMNS}, credentials, credentials_expires_at FROM connected_accounts WHERE id = ?1"
    )
});

/// The file name of the database in a data directory.
pub const DB_FILE: &str = "keyhaven.db";
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::ConstraintViolation => StoreError::Conflict(e.to_string()),
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::CannotOpen
            | C::SystemIoFailure
            | C::DiskFull
            | C::ReadOnly
            | C::NotADatabase
            | C::DatabaseCorrupt
            | C::FileLockingProtocolFailed => StoreError::Unavailable(format!("SQLite: {e}")),
            _ => StoreError::Backend(Box::new(e)),
        },
        _ => StoreError::Backend(Box::new(e)),
    }
}

struct Inner {
    path: PathBuf,
    writer: writer::Writer,
    readers: Mutex<Vec<Connection>>,
    keys: RwLock<Arc<KeyRing>>,
    /// The data directory's key file, when the keys came from it: followed, so that
    /// a rotation by another process (`keyhaven keys rotate`) is taken up.
    key_file: Option<crate::keys::KeyFileWatch>,
    lease: crate::lease::LeaseTime,
}

/// The embedded [`Store`]: a SQLite file, credentials and secrets encrypted with a
/// [`KeyRing`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn row_to_account(r: &rusqlite::Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        id: r.get(0)?,
        entity_id: r.get(1)?,
        integration_id: r.get(2)?,
        app: r.get(3)?,
        auth_scheme: r.get(4)?,
        status: r.get(5)?,
        status_reason: r.get(6)?,
        labels: r.get(7)?,
        params: r.get(8)?,
        redirect_url: r.get(9)?,
        expires_at: r.get(10)?,
        version: r.get(11)?,
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

/// A listing's value as SQLite takes it.
fn sql_value(a: &Arg) -> rusqlite::types::Value {
    match a {
        Arg::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Arg::Int(i) => rusqlite::types::Value::Integer(*i),
    }
}

fn row_to_integration(r: &rusqlite::Row<'_>) -> rusqlite::Result<IntegrationRow> {
    Ok(IntegrationRow {
        id: r.get(0)?,
        app: r.get(1)?,
        name: r.get(2)?,
        auth_scheme: r.get(3)?,
        scopes: r.get(4)?,
        config: r.get(5)?,
        secrets: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        disabled: r.get(9)?,
    })
}

fn write_labels(conn: &Connection, account: &ConnectedAccount) -> Result<(), StoreError> {
    execute_cached(
        conn,
        "DELETE FROM account_labels WHERE account_id = ?1",
        [account.id.as_str()],
    )?;
    for label in &account.labels {
        execute_cached(
            conn,
            "INSERT OR IGNORE INTO account_labels (label, account_id) VALUES (?1, ?2)",
            params![label.as_str(), account.id.as_str()],
        )?;
    }
    Ok(())
}

/// `conn.execute`, with the statement prepared once per connection: for the
/// statements of the writes that run most (a refresh's).
fn execute_cached(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute(params))
        .map_err(map_err)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, runs the migrations, and
    /// encrypts with `keys`. A new database file is made with mode 0600 (SQLite gives
    /// its `-wal` and `-shm` files the same mode).
    ///
    /// # Errors
    /// The file cannot be opened or migrated; or it holds values encrypted under
    /// keys that `keys` lacks ([`KeyError::NotConfigured`](crate::KeyError), in
    /// [`StoreError::Backend`]): then nothing is written.
    pub fn open(path: impl AsRef<Path>, keys: KeyRing) -> Result<Self, StoreError> {
        Self::open_following(path.as_ref(), keys, None)
    }

    /// [`SqliteStore::open`], following `key_file` when the keys came from it.
    fn open_following(
        path: &Path,
        keys: KeyRing,
        key_file: Option<crate::keys::KeyFileWatch>,
    ) -> Result<Self, StoreError> {
        let store = Self::open_unchecked(path, keys, key_file)?;
        let keys = store.key_ring();
        store.missing_keys(&keys)?.check(&keys)?;
        Ok(store)
    }

    fn open_unchecked(
        path: &Path,
        keys: KeyRing,
        key_file: Option<crate::keys::KeyFileWatch>,
    ) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        create_db_file(&path)?;
        let mut writer = open_connection(&path)?;
        migrate(&mut writer)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: writer::Writer::start(writer)?,
                readers: Mutex::new(Vec::new()),
                keys: RwLock::new(Arc::new(keys)),
                key_file,
                lease: crate::lease::LeaseTime::default(),
            }),
        })
    }

    /// Opens the store of a data directory: `keyhaven.db` in it, the key ring from
    /// `KEYHAVEN_MASTER_KEY` when set, else from the directory's `master.key`. The
    /// directory is created (mode 0700) when absent. Without a key file, one is made
    /// (mode 0600) with a new key, unless the database already holds encrypted values:
    /// their key is missing then, and the store is not opened.
    ///
    /// # Errors
    /// As [`SqliteStore::open`]; [`KeyError::KeyFileMissing`](crate::KeyError) when
    /// the key file is gone but the database holds encrypted values.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        create_private_dir(dir)?;
        let path = dir.join(DB_FILE);
        if let Some(ring) = crate::keys::ring_from_env()? {
            return Self::open(path, ring);
        }
        let file = crate::keys::KeyFile::in_dir(dir);
        if file.path().exists() {
            let stamp = FileStamp::of(file.path());
            let keys = file.load()?;
            return Self::open_following(&path, keys, Some(KeyFileWatch::new(file, stamp)));
        }
        // No key file: a new key, kept only if nothing is encrypted under another.
        let key = crate::crypto::MasterKey::generate()?;
        let store = Self::open_unchecked(
            &path,
            KeyRing::new(key.clone_key(), []),
            Some(KeyFileWatch::new(file.clone(), None)),
        )?;
        let missing = store.missing_keys(&store.key_ring())?.into_vec();
        if !missing.is_empty() {
            let rows = missing.iter().map(|(_, n)| n).sum();
            return Err(StoreError::Backend(Box::new(
                crate::crypto::KeyError::KeyFileMissing {
                    path: file.path().to_owned(),
                    missing,
                    rows,
                },
            )));
        }
        // Another process may have made the file meanwhile: then its key is used.
        store.set_key_ring(file.create(&key)?);
        if let Some(watch) = &store.inner.key_file {
            watch.read_now();
        }
        Ok(store)
    }

    /// Opens the store of a data directory with `keys` given (from a key command or
    /// a KMS envelope) instead of its key file: the directory is created (mode
    /// 0700) when absent; `keyhaven.db` in it is opened as [`SqliteStore::open`]
    /// does.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub fn open_dir_with(dir: impl AsRef<Path>, keys: KeyRing) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        create_private_dir(dir)?;
        Self::open(dir.join(DB_FILE), keys)
    }

    /// Whether every stored value can be read with `keys`: before keys are retired,
    /// the check that no value was written under them meanwhile (by a process still
    /// running with them).
    ///
    /// # Errors
    /// A key the values need that `keys` lacks (named, with how many values), or the
    /// database cannot be read.
    pub fn check_keys(&self, keys: &KeyRing) -> Result<(), StoreError> {
        self.missing_keys(keys)?.check(keys)
    }

    /// The key ids the stored values are encrypted with that `keys` lacks, with how
    /// many values each: a loose scan of the distinct blob headers of each secret
    /// column (an index seek per key id in use on `connected_accounts`), then a count
    /// for each missing key only. Expired pending states are left out.
    fn missing_keys(&self, keys: &KeyRing) -> Result<MissingKeys, StoreError> {
        let now = micros(Utc::now());
        self.read(|c| {
            let mut missing = MissingKeys::default();
            for table in Table::ALL {
                let header = crate::rotate::sqlite_header(table.column);
                let live = match table.expires {
                    Some(column) => format!(" AND {column} >= ?2"),
                    None => " AND ?2 IS NOT NULL".to_owned(),
                };
                let t = table.table;
                let next = format!(
                    "SELECT {header} FROM {t} WHERE {header} > ?1{live} ORDER BY {header} LIMIT 1"
                );
                let count = format!("SELECT COUNT(*) FROM {t} WHERE {header} = ?1{live}");
                let mut last: Vec<u8> = Vec::new();
                while let Some(found) = c
                    .query_row(&next, params![last, now], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(map_err)?
                {
                    if let Some(id) = MissingKeys::lacked(keys, &found) {
                        let n: i64 = c
                            .query_row(&count, params![found, now], |r| r.get(0))
                            .map_err(map_err)?;
                        missing.add(id, n);
                    }
                    last = found;
                }
            }
            Ok(missing)
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The key ring in use. A store opened on a data directory's key file takes up
    /// the file's new keys once they are written (looked at once a second, at most).
    pub fn key_ring(&self) -> Arc<KeyRing> {
        if self.inner.key_file.as_ref().is_some_and(KeyFileWatch::due) {
            self.reload_keys();
        }
        self.inner.keys.read().clone()
    }

    /// Reads the key file again when it changed (another process rotated the keys):
    /// its primary key is used from now on, and every key held so far is kept for
    /// reading. Whether the keys changed. A file whose keys lack this process's
    /// primary key is taken up only when they read every stored value (a rotation
    /// that ended with `--retire-old`); a file replaced by another key is not, and
    /// said, as opening the store would refuse it.
    fn reload_keys(&self) -> bool {
        let Some(watch) = &self.inner.key_file else {
            return false;
        };
        // Held while the file's keys are checked and put in place: no write takes
        // the keys in use meanwhile.
        let mut keys = self.inner.keys.write();
        let Some(ring) = watch.changed() else {
            return false;
        };
        let retired = !ring.key_ids().any(|id| id == keys.primary_id());
        if retired && let Err(e) = self.check_keys(&ring) {
            let missing = matches!(&e, StoreError::Backend(b) if b.is::<crate::KeyError>());
            if missing {
                tracing::error!(path = %watch.path().display(), error = %e, "the key file changed to keys that cannot read every stored value; this process goes on with the keys it has. Put back the key file that holds them");
            } else {
                tracing::warn!(path = %watch.path().display(), error = %e, "the key file changed, and the stored values could not be checked against it; looked at again later");
                watch.look_again();
            }
            return false;
        }
        let in_use = Arc::new(ring.clone().keeping(&keys));
        tracing::info!(
            primary = in_use.primary_id(),
            "the key file changed: its keys are in use"
        );
        *keys = in_use;
        drop(keys);
        if retired {
            self.reencrypt_stragglers(ring);
        }
        true
    }

    /// After this process took up a key file that retired its previous primary key:
    /// a write that took the keys just before they were replaced may commit under
    /// that key, which no key file holds any more (a restart could not read it).
    /// Such values are re-encrypted under the new primary key, by this process,
    /// which still holds the old one, a moment later (on a task of its own).
    fn reencrypt_stragglers(&self, file: KeyRing) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(crate::keys::KEY_FILE_CHECK).await;
            if store.check_keys(&file).is_ok() {
                return;
            }
            match store.rotate(256).await {
                Ok(report) => tracing::warn!(
                    reencrypted = report.reencrypted,
                    "values written under the retired key while the key file changed were re-encrypted under the new one"
                ),
                Err(e) => tracing::error!(error = %e, "values written under the retired key while the key file changed could not be re-encrypted; run keyhaven keys rotate while this process runs"),
            }
        });
    }

    /// The keys to read the values `blobs` with: those in use, or when a value names a
    /// key they lack (a value re-encrypted by a rotation in another process), the key
    /// file's as it is now.
    fn keys_for<'b>(&self, blobs: impl IntoIterator<Item = &'b [u8]>) -> Arc<KeyRing> {
        let keys = self.key_ring();
        if blobs.into_iter().all(|b| keys.knows(b)) || !self.reload_keys() {
            return keys;
        }
        self.key_ring()
    }

    /// Replaces the key ring (after adding a key); new writes use its primary.
    pub fn set_key_ring(&self, keys: KeyRing) {
        *self.inner.keys.write() = Arc::new(keys);
    }

    /// How long a refresh lease taken by this store lasts when its holder dies
    /// where it cannot be seen to have died (see the `lease` module; a holder
    /// process on this machine that is gone is seen at once). Default
    /// [`DEFAULT_LEASE`](crate::DEFAULT_LEASE), 60 s: set it above the longest a
    /// refresh can take, or two processes may refresh one account.
    pub fn set_refresh_lease(&self, lease: Duration) {
        self.inner.lease.set(lease);
    }

    /// The refresh lease time, see [`SqliteStore::set_refresh_lease`].
    pub fn refresh_lease(&self) -> Duration {
        self.inner.lease.get()
    }

    /// Queues `f` for the writer thread without waiting for it; a failure is
    /// logged with `what` it was. For drops, which cannot wait.
    pub(crate) fn write_detached(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<(), StoreError> + Send + 'static,
    ) {
        self.inner.writer.detach(what, f);
    }

    /// Runs `f` on a reader connection, on the calling thread.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.inner.readers.lock().pop();
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.inner.path)?,
        };
        let result = f(&conn);
        let mut readers = self.inner.readers.lock();
        if readers.len() < 8 {
            readers.push(conn);
        }
        result
    }

    /// Runs `f` in the writer thread, committed with the other writes queued at the
    /// same time (see the `writer` module); its result once committed. `f` runs in a
    /// savepoint of its own: what it wrote is kept whole when it returns `Ok`, and
    /// rolled back whole when it returns an error, so it opens no transaction.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &KeyRing) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let keys = self.key_ring();
        self.inner.writer.run(move |conn| f(conn, &keys)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        let row = IntegrationRow::encode(integration, &self.key_ring())?;
        self.write(move |conn, _| {
            conn.execute(
                &format!("INSERT INTO integrations ({INTEGRATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![row.id, row.app, row.name, row.auth_scheme, row.scopes, row.config, row.secrets, row.created_at, row.updated_at, row.disabled],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn find_or_insert_integration(
        &self,
        candidate: &Integration,
    ) -> Result<Integration, StoreError> {
        let row = IntegrationRow::encode(candidate, &self.key_ring())?;
        let found = self
            .write(move |conn, _| {
                let existing = conn
                    .query_row(
                        &format!("SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE app = ?1 AND auth_scheme = ?2 ORDER BY created_at, id LIMIT 1"),
                        params![row.app, row.auth_scheme],
                        row_to_integration,
                    )
                    .optional()
                    .map_err(map_err)?;
                if existing.is_none() {
                    conn.execute(
                        &format!("INSERT INTO integrations ({INTEGRATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                        params![row.id, row.app, row.name, row.auth_scheme, row.scopes, row.config, row.secrets, row.created_at, row.updated_at, row.disabled],
                    )
                    .map_err(map_err)?;
                }
                Ok(existing)
            })
            .await?;
        match found {
            Some(row) => {
                let keys = self.keys_for(row.secrets.as_deref());
                row.decode(&keys)
            }
            None => Ok(candidate.clone()),
        }
    }

    async fn get_integration(&self, id: &IntegrationId) -> Result<Option<Integration>, StoreError> {
        let row = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE id = ?1"
            ))
            .and_then(|mut st| st.query_row([id.as_str()], row_to_integration).optional())
            .map_err(map_err)
        })?;
        row.map(|r| {
            let keys = self.keys_for(r.secrets.as_deref());
            r.decode(&keys)
        })
        .transpose()
    }

    async fn list_integrations(
        &self,
        app: Option<&AppSlug>,
    ) -> Result<Vec<Integration>, StoreError> {
        let rows = self.read(|c| {
            let (sql, args): (String, Vec<String>) = match app {
                Some(a) => (
                    format!("SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE app = ?1 ORDER BY created_at, id"),
                    vec![a.to_string()],
                ),
                None => (format!("SELECT {INTEGRATION_COLUMNS} FROM integrations ORDER BY created_at, id"), vec![]),
            };
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            let rows = st
                .query_map(params_from_iter(args), row_to_integration)
                .map_err(map_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(map_err)?;
            Ok(rows)
        })?;
        let keys = self.keys_for(rows.iter().filter_map(|r| r.secrets.as_deref()));
        rows.into_iter().map(|r| r.decode(&keys)).collect()
    }

    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        let row = IntegrationRow::encode(integration, &self.key_ring())?;
        self.write(move |conn, _| {
            let changed = conn
                .execute(
                    "UPDATE integrations SET name = ?2, scopes = ?3, config = ?4, secrets = ?5, updated_at = ?6, disabled = ?7 WHERE id = ?1",
                    params![row.id, row.name, row.scopes, row.config, row.secrets, row.updated_at, row.disabled],
                )
                .map_err(map_err)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn delete_integration(&self, id: &IntegrationId) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |conn, _| {
            let used: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM connected_accounts WHERE integration_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            if used > 0 {
                return Err(StoreError::Conflict(format!(
                    "integration {id} is used by {used} connected account(s); delete them first"
                )));
            }
            let n = conn
                .execute("DELETE FROM integrations WHERE id = ?1", [&id])
                .map_err(map_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_account(
        &self,
        account: &ConnectedAccount,
        credentials: Option<&Credentials>,
        events: &[AccountEvent],
    ) -> Result<(), StoreError> {
        let row = AccountRow::encode(account)?;
        let events = EventRow::encode_all(events)?;
        let creds = credentials
            .map(|c| encode_credentials(&self.key_ring(), &account.id, c))
            .transpose()?;
        let account = account.clone();
        self.write(move |conn, _| {
            let exists: bool = conn
                .query_row("SELECT EXISTS (SELECT 1 FROM integrations WHERE id = ?1)", [&row.integration_id], |r| r.get(0))
                .map_err(map_err)?;
            if !exists {
                return Err(StoreError::Missing { kind: "integration", id: row.integration_id.clone() });
            }
            let (blob, blob_expiry) = match creds {
                Some((b, e)) => (Some(b), e),
                None => (None, None),
            };
            conn.execute(
                &format!("INSERT INTO connected_accounts ({ACCOUNT_COLUMNS}, credentials, credentials_expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
                params![row.id, row.entity_id, row.integration_id, row.app, row.auth_scheme, row.status, row.status_reason, row.labels, row.params, row.redirect_url, row.expires_at, row.version, row.created_at, row.updated_at, blob, blob_expiry],
            )
            .map_err(map_err)?;
            write_labels(conn, &account)?;
            outbox::append(conn, &events)?;
            Ok(())
        })
        .await
    }

    async fn get_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<ConnectedAccount>, StoreError> {
        let row = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM connected_accounts WHERE id = ?1"
            ))
            .and_then(|mut st| st.query_row([id.as_str()], row_to_account).optional())
            .map_err(map_err)
        })?;
        row.map(AccountRow::decode).transpose()
    }

    async fn get_account_and_credentials(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<(ConnectedAccount, Option<Credentials>)>, StoreError> {
        let row = self.read(|c| {
            c.prepare_cached(&ACCOUNT_WITH_CREDENTIALS)
                .and_then(|mut st| {
                    st.query_row([id.as_str()], |r| {
                        Ok((
                            row_to_account(r)?,
                            r.get::<_, Option<Vec<u8>>>(14)?,
                            r.get::<_, Option<i64>>(15)?,
                        ))
                    })
                    .optional()
                })
                .map_err(map_err)
        })?;
        let Some((row, blob, expiry)) = row else {
            return Ok(None);
        };
        let keys = self.keys_for(blob.as_deref());
        account_and_credentials(&keys, row, blob, expiry).map(Some)
    }

    async fn update_account(
        &self,
        account: &ConnectedAccount,
        credentials: CredentialsUpdate<'_>,
        events: &[AccountEvent],
    ) -> Result<ConnectedAccount, StoreError> {
        let PreparedUpdate {
            next,
            row,
            expected,
            credentials: creds,
        } = prepare_update(&self.key_ring(), account, credentials)?;
        let events = EventRow::encode_all(events)?;
        let stored = next.clone();
        self.write(move |conn, _| {
            // A refresh changes the credentials, their expiry, the version and the
            // time, nothing else: one narrow statement then, matching only when every
            // other column already holds what the full update below would write. It
            // sets none of the columns of the entity, app, status and integration
            // indexes, so their entries and the account's label rows are left alone
            // (BENCHMARKS.md: the writer's share of a storm, a quarter → a fifth).
            if let Some((blob, expiry)) = &creds {
                let n = execute_cached(
                    conn,
                    "UPDATE connected_accounts SET expires_at = ?11, version = ?12, updated_at = ?14, credentials = ?16, credentials_expires_at = ?17 WHERE id = ?1 AND version = ?15 AND entity_id = ?2 AND integration_id = ?3 AND app = ?4 AND auth_scheme = ?5 AND status = ?6 AND status_reason IS ?7 AND labels = ?8 AND params = ?9 AND redirect_url IS ?10 AND created_at = ?13",
                    params![row.id, row.entity_id, row.integration_id, row.app, row.auth_scheme, row.status, row.status_reason, row.labels, row.params, row.redirect_url, row.expires_at, row.version, row.created_at, row.updated_at, expected, blob, expiry],
                )?;
                if n == 1 {
                    outbox::append(conn, &events)?;
                    return Ok(());
                }
                // Something else changes too, or the account changed or went since
                // it was read: the full update says which.
            }
            let n = execute_cached(
                conn,
                "UPDATE connected_accounts SET entity_id = ?2, integration_id = ?3, app = ?4, auth_scheme = ?5, status = ?6, status_reason = ?7, labels = ?8, params = ?9, redirect_url = ?10, expires_at = ?11, version = ?12, created_at = ?13, updated_at = ?14 WHERE id = ?1 AND version = ?15",
                params![row.id, row.entity_id, row.integration_id, row.app, row.auth_scheme, row.status, row.status_reason, row.labels, row.params, row.redirect_url, row.expires_at, row.version, row.created_at, row.updated_at, expected],
            )?;
            if n == 0 {
                let current: Option<i64> = conn
                    .query_row("SELECT version FROM connected_accounts WHERE id = ?1", [&row.id], |r| r.get(0))
                    .optional()
                    .map_err(map_err)?;
                return Err(update_refused(&row.id, current, expected));
            }
            if let Some((blob, expiry)) = creds {
                execute_cached(
                    conn,
                    "UPDATE connected_accounts SET credentials = ?2, credentials_expires_at = ?3 WHERE id = ?1",
                    params![row.id, blob, expiry],
                )?;
            }
            write_labels(conn, &next)?;
            outbox::append(conn, &events)?;
            Ok(())
        })
        .await?;
        Ok(stored)
    }

    async fn delete_account(
        &self,
        id: &ConnectedAccountId,
        events: &[AccountEvent],
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        let events = EventRow::encode_all(events)?;
        self.write(move |conn, _| {
            let n = conn
                .execute("DELETE FROM connected_accounts WHERE id = ?1", [&id])
                .map_err(map_err)?;
            if n > 0 {
                outbox::append(conn, &events)?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn put_pending_state(&self, pending: &PendingState) -> Result<(), StoreError> {
        let hash = state_hash(&pending.state);
        let blob = encode_pending(&self.key_ring(), &hash, pending)?;
        let (account, expires) = (pending.account_id.to_string(), micros(pending.expires_at));
        self.write(move |conn, _| {
            conn.execute(
                "INSERT INTO pending_states (state_hash, account_id, data, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![hash, account, blob, expires],
            )
            .map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn get_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError> {
        let hash = state_hash(state);
        let row = self.read(|conn| {
            conn.query_row(
                "SELECT account_id, data, expires_at FROM pending_states WHERE state_hash = ?1",
                [&hash],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(map_err)
        })?;
        let Some((account, blob, expires)) = row else {
            return Ok(None);
        };
        let keys = self.keys_for([blob.as_slice()]);
        pending_state(&keys, state, &hash, &account, &blob, expires)
    }

    async fn take_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError> {
        let hash = state_hash(state);
        let taken = self
            .write({
                let hash = hash.clone();
                move |conn, _| {
                    conn.query_row(
                        "DELETE FROM pending_states WHERE state_hash = ?1 RETURNING account_id, data, expires_at",
                        [&hash],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?)),
                    )
                    .optional()
                    .map_err(map_err)
                }
            })
            .await?;
        let Some((account, blob, expires)) = taken else {
            return Ok(None);
        };
        let keys = self.keys_for([blob.as_slice()]);
        pending_state(&keys, state, &hash, &account, &blob, expires)
    }

    async fn purge_expired_pending_states(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let now = micros(now);
        self.write(move |conn, _| {
            let n = conn
                .execute("DELETE FROM pending_states WHERE expires_at < ?1", [now])
                .map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn lock_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Box<dyn AccountLock>, StoreError> {
        crate::lease::Lease::acquire(self, id).await
    }

    fn subscribe(&self, sink: ChangeSink) {
        Self::watch(Arc::downgrade(&self.inner), self.inner.path.clone(), sink);
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        let found: i64 = self.read(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM keyhaven_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(map_err)
        })?;
        crate::rows::schema_is(found, schema::MIGRATIONS.len())
    }

    async fn append_events(&self, events: &[AccountEvent]) -> Result<(), StoreError> {
        let events = EventRow::encode_all(events)?;
        if events.is_empty() {
            return Ok(());
        }
        self.write(move |conn, _| {
            outbox::append(conn, &events)?;
            Ok(())
        })
        .await
    }

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<AccountEvent>>, StoreError> {
        self.events_after_id(after, limit)
    }

    async fn purge_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.purge(before).await
    }

    async fn claim_deliveries(
        &self,
        targets: &[WebhookTarget],
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.claim(targets, now, lease, limit).await
    }

    async fn finish_delivery(
        &self,
        id: i64,
        claim: &str,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.finish(id, claim, outcome, now).await
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        self.deliveries(filter)
    }

    async fn redeliver(&self, id: i64, now: DateTime<Utc>) -> Result<Option<Delivery>, StoreError> {
        self.redeliver_now(id, now).await
    }

    async fn count_deliveries(
        &self,
        state: keyhaven_core::DeliveryState,
    ) -> Result<u64, StoreError> {
        let n: i64 = self.read(|c| {
            c.prepare_cached("SELECT COUNT(*) FROM webhook_deliveries WHERE state = ?1")
                .and_then(|mut st| st.query_row([state.as_str()], |r| r.get(0)))
                .map_err(map_err)
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn append_audit(&self, lines: &[keyhaven_core::AuditLine]) -> Result<(), StoreError> {
        let rows: Vec<(i64, String, String)> = lines
            .iter()
            .map(|l| (micros(l.at), l.account.clone(), l.line.clone()))
            .collect();
        self.write(move |conn, _| {
            {
                let mut st = conn
                    .prepare_cached(
                        "INSERT INTO audit_log (at, account_id, line) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(map_err)?;
                for (at, account, line) in &rows {
                    st.execute(rusqlite::params![at, account, line])
                        .map_err(map_err)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn audit_lines(
        &self,
        account: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut lines: Vec<String> = self.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT line FROM audit_log WHERE account_id = ?1 AND at >= ?2 AND at < ?3 ORDER BY at DESC, seq DESC LIMIT ?4",
                )
                .map_err(map_err)?;
            st.query_map(
                rusqlite::params![
                    account,
                    since.map_or(i64::MIN, micros),
                    until.map_or(i64::MAX, micros),
                    limit
                ],
                |r| r.get(0),
            )
            .map_err(map_err)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(map_err)
        })?;
        lines.reverse();
        Ok(lines)
    }

    async fn count_accounts(&self, filter: &AccountFilter) -> Result<u64, StoreError> {
        let (sql, args) = count_query(filter, &|n| format!("?{n}"));
        let n: i64 = self.read(|c| {
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            st.query_row(params_from_iter(args.iter().map(sql_value)), |r| r.get(0))
                .map_err(map_err)
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_accounts(
        &self,
        filter: &AccountFilter,
    ) -> Result<Page<ConnectedAccount>, StoreError> {
        let (sql, args) = list_query(filter, &|n| format!("?{n}"));
        let rows = self.read(|c| {
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            let rows = st
                .query_map(params_from_iter(args.iter().map(sql_value)), row_to_account)
                .map_err(map_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(map_err)?;
            Ok(rows)
        })?;
        let items = rows
            .into_iter()
            .map(AccountRow::decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(items, filter))
    }
}
