//! The shared store: PostgreSQL through sqlx, for many keyhaven instances on one
//! database. Refresh locks are transaction-scoped advisory locks (released when the
//! holders commit, roll back or their connection dies), held on a small pool of their
//! own so that a refresh storm cannot take the connections its own reads and writes
//! need; changes are announced with NOTIFY so that every instance's cache drops what
//! another instance changed. Under load, refresh locks, refreshes' writes and reads
//! with credentials are taken in groups, one statement for many callers
//! ([`groups`]).

mod groups;
mod lane;
mod locks;
mod notices;
mod outbox;
mod reads;
mod refreshes;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountEvent, AccountFilter, AccountLock, AppSlug, ChangeSink, ConnectedAccount,
    ConnectedAccountId, Credentials, CredentialsUpdate, Delivery, DeliveryFilter, DeliveryOutcome,
    EntityId, Integration, IntegrationId, Page, PendingState, Store, StoreChange, StoreError,
    WebhookTarget,
};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use crate::crypto::KeyRing;
use crate::outbox::EventRow;
use crate::rotate::{MissingKeys, RotationReport, Table};
use crate::rows::{
    ACCOUNT_COLUMNS, AccountRow, Arg, INTEGRATION_COLUMNS, IntegrationRow, PreparedUpdate,
    account_and_credentials, count_query, encode_credentials, encode_pending, list_query, micros,
    page, pending_state, prepare_update, state_hash, update_refused,
};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_credentials_key_index.sql"),
    ),
    (
        3,
        include_str!("../migrations/postgres/0003_integration_disabled.sql"),
    ),
    (4, include_str!("../migrations/postgres/0004_audit_log.sql")),
    (5, include_str!("../migrations/postgres/0005_events.sql")),
    (
        6,
        include_str!("../migrations/postgres/0006_credentials_header_column.sql"),
    ),
];
/// The NOTIFY channel of account changes.
const CHANNEL: &str = "keyhaven_account_changes";
/// The channel events of status changes go to, as JSON, for the other instances.
const EVENT_CHANNEL: &str = "keyhaven_events";
/// The advisory lock key that serialises migrations.
const MIGRATION_LOCK: i64 = 0x6b65_7968_6176_656e; // "keyhaven"

/// Marks SQL built from this module's constants and numbered placeholders (never
/// from input) as audited for sqlx.
fn safe(sql: impl Into<String>) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.into())
}

/// The same error again, for each caller of a group whose statement failed.
fn copy_of(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Missing { kind, id } => StoreError::Missing {
            kind,
            id: id.clone(),
        },
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        other => StoreError::Backend(other.to_string().into()),
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("23505") => StoreError::Conflict(db.message().to_owned()),
            Some("23503") => StoreError::Missing {
                kind: "referenced row",
                id: db.message().to_owned(),
            },
            // Connection exceptions, operator intervention (shutdown, terminated),
            // insufficient resources, and a database that no longer exists.
            Some(code)
                if code.starts_with("08")
                    || code.starts_with("57")
                    || code.starts_with("53")
                    || code == "3D000" =>
            {
                StoreError::Unavailable(format!("PostgreSQL: {}", db.message()))
            }
            _ => StoreError::Backend(Box::new(e)),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(format!("PostgreSQL: {e}")),
        _ => StoreError::Backend(Box::new(e)),
    }
}

fn account_row(r: &PgRow) -> Result<AccountRow, StoreError> {
    let get = |e: sqlx::Error| map_err(e);
    Ok(AccountRow {
        id: r.try_get(0).map_err(get)?,
        entity_id: r.try_get(1).map_err(get)?,
        integration_id: r.try_get(2).map_err(get)?,
        app: r.try_get(3).map_err(get)?,
        auth_scheme: r.try_get(4).map_err(get)?,
        status: r.try_get(5).map_err(get)?,
        status_reason: r.try_get(6).map_err(get)?,
        labels: r.try_get(7).map_err(get)?,
        params: r.try_get(8).map_err(get)?,
        redirect_url: r.try_get(9).map_err(get)?,
        expires_at: r.try_get(10).map_err(get)?,
        version: r.try_get(11).map_err(get)?,
        created_at: r.try_get(12).map_err(get)?,
        updated_at: r.try_get(13).map_err(get)?,
    })
}

fn integration_row(r: &PgRow) -> Result<IntegrationRow, StoreError> {
    let get = |e: sqlx::Error| map_err(e);
    Ok(IntegrationRow {
        id: r.try_get(0).map_err(get)?,
        app: r.try_get(1).map_err(get)?,
        name: r.try_get(2).map_err(get)?,
        auth_scheme: r.try_get(3).map_err(get)?,
        scopes: r.try_get(4).map_err(get)?,
        config: r.try_get(5).map_err(get)?,
        secrets: r.try_get(6).map_err(get)?,
        created_at: r.try_get(7).map_err(get)?,
        updated_at: r.try_get(8).map_err(get)?,
        disabled: r.try_get(9).map_err(get)?,
    })
}

/// The shared [`Store`]: PostgreSQL, credentials and secrets encrypted with a [`KeyRing`].
#[derive(Clone)]
pub struct PostgresStore {
    /// The hot statements' connections: see [`lane`].
    lane: lane::Lane,
    /// The other statements' (and migrations', the change listener's).
    pool: PgPool,
    /// The refresh locks: see [`locks`].
    locks: locks::RefreshLocks,
    /// The connections the refresh locks are taken on (also in `locks`).
    lock_pool: PgPool,
    /// Refreshes' writes: see [`refreshes`].
    refreshes: refreshes::RefreshWrites,
    /// Reads of accounts with their credentials: see [`reads`].
    reads: reads::AccountReads,
    keys: Arc<RwLock<Arc<KeyRing>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool_size", &self.pool.size())
            .field("lane_size", &self.lane.size())
            .field("lock_pool_size", &self.lock_pool.size())
            .finish_non_exhaustive()
    }
}

/// The compare-and-set account update of [`Store::update_account`] in one
/// statement: the row (and its credentials when `$16`), its labels (those no longer
/// there deleted, new ones added) and the change notice, all only when the stored
/// version is still `$15`. Answers how many rows it updated, and the version that
/// was stored before (to say why an update was refused). Refreshes are written in
/// groups instead, when they can be ([`refreshes`]).
const UPDATE_ACCOUNT: &str = "WITH upd AS ( \
    UPDATE connected_accounts SET entity_id = $2, integration_id = $3, app = $4, auth_scheme = $5, \
        status = $6, status_reason = $7, labels = $8, params = $9, redirect_url = $10, \
        expires_at = $11, version = $12, created_at = $13, updated_at = $14, \
        credentials = CASE WHEN $16 THEN $17 ELSE credentials END, \
        credentials_expires_at = CASE WHEN $16 THEN $18 ELSE credentials_expires_at END \
    WHERE id = $1 AND version = $15 RETURNING id, entity_id), \
was AS (SELECT entity_id FROM connected_accounts WHERE id = $1), \
gone AS (DELETE FROM account_labels WHERE account_id IN (SELECT id FROM upd) AND label <> ALL($19::text[])), \
added AS (INSERT INTO account_labels (label, account_id) \
    SELECT DISTINCT l, upd.id FROM upd CROSS JOIN unnest($19::text[]) AS l ON CONFLICT DO NOTHING), \
told AS (SELECT pg_notify($20, upd.id || ' ' || was.entity_id || ' ' || upd.entity_id) FROM upd, was) \
SELECT (SELECT COUNT(*) FROM told), (SELECT version FROM connected_accounts WHERE id = $1)";

async fn insert_labels(
    tx: &mut Transaction<'static, Postgres>,
    account: &ConnectedAccount,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM account_labels WHERE account_id = $1")
        .bind(account.id.as_str())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    for label in &account.labels {
        sqlx::query(
            "INSERT INTO account_labels (label, account_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(label.as_str())
        .bind(account.id.as_str())
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

/// Tells the other instances that account `id` of `entity` was added or deleted
/// (see [`change_of`]).
async fn notify(
    tx: &mut Transaction<'static, Postgres>,
    id: &str,
    entity: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2 || ' ' || $3)")
        .bind(CHANNEL)
        .bind(id)
        .bind(entity)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// The change a notice on [`CHANNEL`] tells: the account's id, then the entities
/// it belonged to before and after, separated by spaces (which neither holds). A
/// notice of an older keyhaven carries the id alone: any listing may have changed.
/// One that cannot be read: anything may have.
fn change_of(payload: &str) -> StoreChange {
    let mut words = payload.split(' ');
    let Some(Ok(id)) = words.next().map(ConnectedAccountId::parse) else {
        return StoreChange::Everything;
    };
    let entities: Result<Vec<EntityId>, _> = words.map(EntityId::new).collect();
    match entities {
        Ok(entities) if entities.is_empty() => StoreChange::Account { id, entities: None },
        Ok(mut entities) => {
            entities.dedup();
            StoreChange::Account {
                id,
                entities: Some(entities),
            }
        }
        Err(_) => StoreChange::Everything,
    }
}

impl PostgresStore {
    /// The rows of `sql` (built by this crate: constants and numbered placeholders)
    /// with `args` bound in order.
    async fn rows(&self, sql: String, args: Vec<Arg>) -> Result<Vec<PgRow>, StoreError> {
        let mut q = sqlx::query(safe(sql));
        for a in args {
            q = match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            };
        }
        self.lane.run(async |c| q.fetch_all(c).await).await
    }

    /// The row `sql` (built by this crate, one placeholder) finds for `id`, if any.
    async fn row_by_id(&self, sql: String, id: &str) -> Result<Option<PgRow>, StoreError> {
        let sql = safe(sql);
        self.lane
            .run(async |c| sqlx::query(sql).bind(id).fetch_optional(c).await)
            .await
    }

    /// The pending state `sql` (a query by `state_hash` answering account id, data and
    /// expiry) finds for `state`.
    async fn pending_by(
        &self,
        sql: &'static str,
        state: &str,
    ) -> Result<Option<PendingState>, StoreError> {
        let hash = state_hash(state);
        let row: Option<(String, Vec<u8>, i64)> = sqlx::query_as(sql)
            .bind(&hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        let Some((account, blob, expires)) = row else {
            return Ok(None);
        };
        pending_state(&self.key_ring(), state, &hash, &account, &blob, expires)
    }

    /// Connects to `url` (`postgres://user@host/db`) with a pool of
    /// [`PostgresStore::DEFAULT_POOL_SIZE`] connections, runs the migrations (one
    /// instance at a time), and encrypts with `keys`.
    ///
    /// # Errors
    /// PostgreSQL cannot be reached or migrated; or the database holds values
    /// encrypted under keys that `keys` lacks ([`KeyError::NotConfigured`](crate::KeyError),
    /// in [`StoreError::Backend`]): then nothing is written.
    ///
    /// The pools' other connections are opened in the background once it has
    /// connected, and stay open: the first burst of work (1,000 refreshes at once)
    /// does not wait for connections to open. That matters here: sqlx 0.9.0 leaves
    /// Nagle's algorithm on, and opening a connection over TLS takes about 90 ms on
    /// loopback (3 ms without TLS) as the handshake waits for delayed ACKs. A
    /// process that runs one command and exits should use
    /// [`PostgresStore::connect_cold`].
    pub async fn connect(url: &str, keys: KeyRing) -> Result<Self, StoreError> {
        Self::connect_with_pool_size(url, keys, Self::DEFAULT_POOL_SIZE).await
    }

    /// [`PostgresStore::connect`] without opening more connections than it uses:
    /// for a process that runs one command and exits (the CLI's), which would
    /// otherwise leave PostgreSQL a log line for each connection it dropped while
    /// being opened.
    ///
    /// # Errors
    /// As [`PostgresStore::connect`].
    pub async fn connect_cold(url: &str, keys: KeyRing) -> Result<Self, StoreError> {
        Self::open(
            url,
            keys,
            Self::DEFAULT_POOL_SIZE,
            Self::DEFAULT_LOCK_CONNECTIONS,
            false,
        )
        .await
    }

    /// Connections per instance by default, besides the lock connections. A third
    /// of them, at least 3, serve the change listener and the statements that are
    /// not hot; the rest (at least 2) are the lane's, for the hot statements
    /// (account and integration reads, listings, counts, the account update of a
    /// refresh). Many instances share one server (whose `max_connections` is 100 by
    /// default), and a point read holds a connection for well under a millisecond,
    /// so a few go a long way.
    pub const DEFAULT_POOL_SIZE: u32 = 10;

    /// Connections per instance kept for refresh locks, besides the request pools:
    /// as many lock transactions at once in one instance, each holding the locks
    /// of up to 64 accounts (see [`locks`]); more wait their turn. Four instances
    /// with the defaults use 4 x (10 + 8) = 72 of the server's 100 connections.
    pub const DEFAULT_LOCK_CONNECTIONS: u32 = 8;

    /// [`PostgresStore::connect`] with `max_connections` for statements (see
    /// [`PostgresStore::DEFAULT_POOL_SIZE`]) and
    /// [`PostgresStore::DEFAULT_LOCK_CONNECTIONS`] for refresh locks.
    pub async fn connect_with_pool_size(
        url: &str,
        keys: KeyRing,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        Self::connect_with_pools(url, keys, max_connections, Self::DEFAULT_LOCK_CONNECTIONS).await
    }

    /// [`PostgresStore::connect`] with `max_connections` for statements (see
    /// [`PostgresStore::DEFAULT_POOL_SIZE`]) and `lock_connections` connections
    /// for refresh locks (at most that many lock transactions at once in this
    /// instance, each of up to 64 accounts' locks).
    /// One connection of each pool is opened at once, the others in the background
    /// (see [`PostgresStore::connect`]).
    ///
    /// # Errors
    /// As [`PostgresStore::connect`].
    pub async fn connect_with_pools(
        url: &str,
        keys: KeyRing,
        max_connections: u32,
        lock_connections: u32,
    ) -> Result<Self, StoreError> {
        Self::open(url, keys, max_connections, lock_connections, true).await
    }

    /// Connects, migrates and checks the keys; then, when `warm`, opens the pools'
    /// other connections in the background.
    async fn open(
        url: &str,
        keys: KeyRing,
        max_connections: u32,
        lock_connections: u32,
        warm: bool,
    ) -> Result<Self, StoreError> {
        let unavailable =
            |e: sqlx::Error| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}"));
        let options: PgConnectOptions = url.parse().map_err(unavailable)?;
        let lock_connections = lock_connections.max(1);
        let other_connections = (max_connections / 3).max(3);
        let lane = lane::Lane::new(
            options.clone(),
            max_connections.saturating_sub(other_connections).max(2) as usize,
            ACQUIRE_TIMEOUT,
        )?;
        // The pools open their first connection now, at once: the first read or
        // refresh after start does not wait for a connection to be opened (with
        // TLS, sqlx 0.9.0 takes about 100 ms to open one here: it leaves Nagle's
        // algorithm on, and the handshake waits for delayed ACKs).
        let others = pool_options()
            .max_connections(other_connections)
            // A statement holds a connection for well under a millisecond: a caller
            // still waiting after this long is waiting for a server that is down,
            // and gets a clear `Unavailable` instead of a longer hang.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone());
        let locks = pool_options()
            .max_connections(lock_connections)
            // One kept open: see above. Those opened later stay open too (as the
            // lane's do): a burst of refreshes after a quiet minute would otherwise
            // wait for them to open again.
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(None)
            // The lock may be held by another instance: a lock connection gives up
            // after LOCK_WAIT rather than wait forever behind a stuck holder (set
            // once per connection, not per lock).
            .connect_with(options.options([("lock_timeout", format!("{}s", LOCK_WAIT.as_secs()))]));
        let (pool, lock_pool, ()) = tokio::try_join!(
            async { others.await.map_err(unavailable) },
            async { locks.await.map_err(unavailable) },
            async { lane.open_one().await.map_err(unavailable) },
        )?;
        let locks = locks::RefreshLocks::new(
            lock_pool.clone(),
            pool.clone(),
            lock_connections as usize,
            LOCK_WAIT,
        );
        let store = Self {
            reads: reads::AccountReads::new(lane.clone()),
            refreshes: refreshes::RefreshWrites::new(
                lane.clone(),
                Arc::new(notices::Deferred::new(pool.clone())),
            ),
            pool,
            locks,
            lock_pool,
            lane,
            keys: Arc::new(RwLock::new(Arc::new(keys))),
        };
        let checked = match store.migrate().await {
            Ok(()) => {
                let keys = store.key_ring();
                store.missing_keys(&keys).await.and_then(|m| m.check(&keys))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            store.lane.close();
            store.pool.close().await;
            return Err(e);
        }
        if warm {
            tokio::spawn(store.clone().warm_up());
        }
        Ok(store)
    }

    /// Opens every connection the lane and the lock pool may hold, side by side;
    /// those that cannot be opened now are opened when needed, as without this.
    async fn warm_up(self) {
        // As the lane's `open_all`: every connection had at once, then given back.
        let locks = async {
            let max = self.lock_pool.options().get_max_connections();
            let had = futures::future::join_all((0..max).map(|_| self.lock_pool.acquire())).await;
            drop(had.into_iter().collect::<Result<Vec<_>, _>>()?);
            Ok(self.lock_pool.size())
        };
        match tokio::join!(self.lane.open_all(), locks) {
            (Ok(lane), Ok(locks)) => {
                tracing::debug!(lane, locks, "PostgreSQL connections opened");
            }
            // The store was closed meanwhile: nothing to open for.
            (Err(sqlx::Error::PoolClosed), _) | (_, Err(sqlx::Error::PoolClosed)) => {}
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "could not open every PostgreSQL connection ahead of need; the rest open when needed");
            }
        }
    }

    /// The key ids the stored values are encrypted with that `keys` lacks, with how
    /// many values each: a loose scan of the distinct blob headers of each secret
    /// column (an index seek per key id in use on `connected_accounts`), then a count
    /// for each missing key only. Expired pending states are left out.
    async fn missing_keys(&self, keys: &KeyRing) -> Result<MissingKeys, StoreError> {
        let now = micros(Utc::now());
        let mut missing = MissingKeys::default();
        for table in Table::ALL {
            let header = table.postgres_header.map_or_else(
                || crate::rotate::postgres_header(table.column),
                str::to_owned,
            );
            let live = match table.expires {
                Some(column) => format!(" AND {column} >= $2"),
                None => " AND $2::BIGINT IS NOT NULL".to_owned(),
            };
            let t = table.table;
            let next = format!(
                "SELECT {header} FROM {t} WHERE {header} > $1{live} ORDER BY {header} LIMIT 1"
            );
            let count = format!("SELECT COUNT(*) FROM {t} WHERE {header} = $1{live}");
            let mut last: Vec<u8> = Vec::new();
            while let Some(found) = sqlx::query_scalar::<_, Vec<u8>>(safe(next.as_str()))
                .bind(&last)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?
            {
                if let Some(id) = MissingKeys::lacked(keys, &found) {
                    let n: i64 = sqlx::query_scalar(safe(count.as_str()))
                        .bind(&found)
                        .bind(now)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(map_err)?;
                    missing.add(id, n);
                }
                last = found;
            }
        }
        Ok(missing)
    }

    /// The connection pool, for callers that need their own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The key ring in use.
    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.keys.read().clone()
    }

    /// Replaces the key ring (after adding a key); new writes use its primary.
    pub fn set_key_ring(&self, keys: KeyRing) {
        *self.keys.write() = Arc::new(keys);
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = begin(&self.pool).await.map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS keyhaven_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for (version, sql) in MIGRATIONS {
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM keyhaven_migrations WHERE version = $1)",
            )
            .bind(version)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            if !done {
                sqlx::raw_sql(safe(*sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO keyhaven_migrations (version, applied_at) VALUES ($1, $2)",
                )
                .bind(version)
                .bind(micros(Utc::now()))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                tracing::info!(version, "PostgreSQL migration applied");
            }
        }
        tx.commit().await.map_err(map_err)
    }

    /// Re-encrypts every secret under the primary key, in batches, while other
    /// reads and writes go on; resumable (rows under the primary are skipped).
    pub async fn rotate(&self, batch: usize) -> Result<RotationReport, StoreError> {
        let mut report = RotationReport::default();
        for table in Table::ALL {
            let mut cursor = String::new();
            loop {
                let sql = format!(
                    "SELECT {key}, {col} FROM {t} WHERE {key} > $1 AND {col} IS NOT NULL ORDER BY {key} LIMIT $2",
                    key = table.key,
                    col = table.column,
                    t = table.table
                );
                let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(safe(sql))
                    .bind(&cursor)
                    .bind(batch as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)?;
                let Some(last) = rows.last().map(|r| r.0.clone()) else {
                    break;
                };
                let changes = crate::rotate::reencrypt(&self.key_ring(), table, rows, &mut report)?;
                let update = format!(
                    "UPDATE {t} SET {col} = $1 WHERE {key} = $2 AND {col} = $3",
                    key = table.key,
                    col = table.column,
                    t = table.table
                );
                let mut tx = begin(&self.pool).await.map_err(map_err)?;
                for (key, old, new) in &changes {
                    let n = sqlx::query(safe(update.as_str()))
                        .bind(new)
                        .bind(key)
                        .bind(old)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    if n.rows_affected() == 0 {
                        report.changed_meanwhile += 1;
                    } else {
                        report.reencrypted += 1;
                    }
                }
                tx.commit().await.map_err(map_err)?;
                cursor = last;
            }
        }
        Ok(report)
    }
}

/// A pooled connection idle for longer than this is pinged before it is handed
/// out (one round trip), and replaced if the server does not answer: it may have
/// been closed meanwhile (a restart, a failover, an idle timeout on the way). One
/// in use more recently is handed out as it is: sqlx's default, a ping before every
/// acquire, made every query three round trips with the ping sqlx makes when a
/// connection goes back to its pool (the lane, see [`lane`], makes neither). A
/// connection that broke within this time fails its next query, which then returns
/// `Unavailable`, and is replaced.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The options both pools share: [`PING_IF_IDLE_FOR`].
fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    use sqlx::Connection;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A transaction on `pool`. Boxed: sqlx's `begin` holds the pool's
/// connection-opening future inline (about 14 KiB), and awaited inline it made the
/// future of every method that may begin one as large, allocated and copied on
/// each call although a connection is opened rarely.
async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    Box::pin(pool.begin()).await
}

/// How long a query waits for a pooled connection before `Unavailable`. A burst of
/// load queues for connections rather than failing (1,000 refreshes at once through
/// one debug-built server on a busy 2-core machine saw a wait above 10 s); a query
/// whose connection breaks fails at once, and while PostgreSQL is down new
/// connections are retried until this runs out.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Store::lock_account`] waits, for a slot and then for the lock itself
/// (held by another instance), before it gives up with `Unavailable`.
const LOCK_WAIT: Duration = Duration::from_secs(120);

#[async_trait]
impl Store for PostgresStore {
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        let r = IntegrationRow::encode(integration, &self.key_ring())?;
        sqlx::query(safe(format!("INSERT INTO integrations ({INTEGRATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")))
            .bind(r.id).bind(r.app).bind(r.name).bind(r.auth_scheme).bind(r.scopes).bind(r.config)
            .bind(r.secrets).bind(r.created_at).bind(r.updated_at).bind(r.disabled)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn find_or_insert_integration(
        &self,
        candidate: &Integration,
    ) -> Result<Integration, StoreError> {
        let r = IntegrationRow::encode(candidate, &self.key_ring())?;
        let mut tx = begin(&self.pool).await.map_err(map_err)?;
        let key = {
            let d = Sha256::digest(format!("integration:{}:{}", r.app, r.auth_scheme).as_bytes());
            i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        };
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let existing = sqlx::query(safe(format!(
            "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE app = $1 AND auth_scheme = $2 ORDER BY created_at, id LIMIT 1"
        )))
        .bind(&r.app)
        .bind(&r.auth_scheme)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if let Some(row) = existing {
            let row = integration_row(&row)?;
            tx.commit().await.map_err(map_err)?;
            return row.decode(&self.key_ring());
        }
        sqlx::query(safe(format!("INSERT INTO integrations ({INTEGRATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")))
            .bind(r.id).bind(r.app).bind(r.name).bind(r.auth_scheme).bind(r.scopes).bind(r.config)
            .bind(r.secrets).bind(r.created_at).bind(r.updated_at).bind(r.disabled)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(candidate.clone())
    }

    async fn get_integration(&self, id: &IntegrationId) -> Result<Option<Integration>, StoreError> {
        let row = self
            .row_by_id(
                format!("SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE id = $1"),
                id.as_str(),
            )
            .await?;
        row.map(|r| integration_row(&r)?.decode(&self.key_ring()))
            .transpose()
    }

    async fn list_integrations(
        &self,
        app: Option<&AppSlug>,
    ) -> Result<Vec<Integration>, StoreError> {
        let rows = match app {
            Some(a) => sqlx::query(safe(format!("SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE app = $1 ORDER BY created_at, id")))
                .bind(a.as_str())
                .fetch_all(&self.pool)
                .await,
            None => sqlx::query(safe(format!("SELECT {INTEGRATION_COLUMNS} FROM integrations ORDER BY created_at, id")))
                .fetch_all(&self.pool)
                .await,
        }
        .map_err(map_err)?;
        let keys = self.key_ring();
        rows.iter()
            .map(|r| integration_row(r)?.decode(&keys))
            .collect()
    }

    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        let r = IntegrationRow::encode(integration, &self.key_ring())?;
        let done = sqlx::query(
            "UPDATE integrations SET name = $2, scopes = $3, config = $4, secrets = $5, updated_at = $6, disabled = $7 WHERE id = $1",
        )
        .bind(r.id).bind(r.name).bind(r.scopes).bind(r.config).bind(r.secrets)
        .bind(r.updated_at).bind(r.disabled)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn append_audit(&self, lines: &[keyhaven_core::AuditLine]) -> Result<(), StoreError> {
        let at: Vec<i64> = lines.iter().map(|l| micros(l.at)).collect();
        let accounts: Vec<&str> = lines.iter().map(|l| l.account.as_str()).collect();
        let text: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        sqlx::query(
            "INSERT INTO audit_log (at, account_id, line) SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])",
        )
        .bind(at)
        .bind(accounts)
        .bind(text)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn audit_lines(
        &self,
        account: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut lines: Vec<String> = sqlx::query_scalar(
            "SELECT line FROM audit_log WHERE account_id = $1 AND at >= $2 AND at < $3 ORDER BY at DESC, seq DESC LIMIT $4",
        )
        .bind(account)
        .bind(since.map_or(i64::MIN, micros))
        .bind(until.map_or(i64::MAX, micros))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        lines.reverse();
        Ok(lines)
    }

    async fn delete_integration(&self, id: &IntegrationId) -> Result<bool, StoreError> {
        let mut tx = begin(&self.pool).await.map_err(map_err)?;
        sqlx::query("SELECT id FROM integrations WHERE id = $1 FOR UPDATE")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let used: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM connected_accounts WHERE integration_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "integration {id} is used by {used} connected account(s); delete them first"
            )));
        }
        let n = sqlx::query("DELETE FROM integrations WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(n.rows_affected() > 0)
    }

    async fn insert_account(
        &self,
        account: &ConnectedAccount,
        credentials: Option<&Credentials>,
        events: &[AccountEvent],
    ) -> Result<(), StoreError> {
        let r = AccountRow::encode(account)?;
        let events = EventRow::encode_all(events)?;
        let (blob, blob_expiry) = match credentials
            .map(|c| encode_credentials(&self.key_ring(), &account.id, c))
            .transpose()?
        {
            Some((b, e)) => (Some(b), e),
            None => (None, None),
        };
        let mut tx = begin(&self.pool).await.map_err(map_err)?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM integrations WHERE id = $1)")
                .bind(&r.integration_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        if !exists {
            return Err(StoreError::Missing {
                kind: "integration",
                id: r.integration_id,
            });
        }
        sqlx::query(safe(format!("INSERT INTO connected_accounts ({ACCOUNT_COLUMNS}, credentials, credentials_expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)")))
            .bind(&r.id).bind(r.entity_id).bind(r.integration_id).bind(r.app).bind(r.auth_scheme)
            .bind(r.status).bind(r.status_reason).bind(r.labels).bind(r.params).bind(r.redirect_url)
            .bind(r.expires_at).bind(r.version).bind(r.created_at).bind(r.updated_at).bind(blob).bind(blob_expiry)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_labels(&mut tx, account).await?;
        outbox::append(&mut tx, &events).await?;
        notify(&mut tx, account.id.as_str(), account.entity_id.as_str()).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn get_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<ConnectedAccount>, StoreError> {
        let row = self
            .row_by_id(
                format!("SELECT {ACCOUNT_COLUMNS} FROM connected_accounts WHERE id = $1"),
                id.as_str(),
            )
            .await?;
        row.map(|r| account_row(&r)?.decode()).transpose()
    }

    async fn get_account_and_credentials(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<(ConnectedAccount, Option<Credentials>)>, StoreError> {
        let Some(row) = self.reads.read(id.as_str()).await? else {
            return Ok(None);
        };
        let account = account_row(&row)?;
        let blob: Option<Vec<u8>> = row.try_get(14).map_err(map_err)?;
        let expiry: Option<i64> = row.try_get(15).map_err(map_err)?;
        account_and_credentials(&self.key_ring(), account, blob, expiry).map(Some)
    }

    async fn update_account(
        &self,
        account: &ConnectedAccount,
        credentials: CredentialsUpdate<'_>,
        events: &[AccountEvent],
    ) -> Result<ConnectedAccount, StoreError> {
        let PreparedUpdate {
            next,
            row: r,
            expected,
            credentials: creds,
        } = prepare_update(&self.key_ring(), account, credentials)?;
        let events = EventRow::encode_all(events)?;
        // A refresh's write joins the next group (see `refreshes`); one the group
        // could not write is written alone below, which says why or writes it.
        if let (CredentialsUpdate::Refreshed(_), Some((Some(blob), expiry)), true) =
            (credentials, &creds, events.is_empty())
            && self
                .refreshes
                .write(r.clone(), expected, blob.clone(), *expiry)
                .await?
        {
            return Ok(next);
        }
        let labels: Vec<&str> = next.labels.iter().map(|l| l.as_str()).collect();
        let (set_credentials, blob, expiry) = match creds {
            Some((blob, expiry)) => (true, blob, expiry),
            None => (false, None, None),
        };
        // One statement, one round trip, for the update, its labels and the change
        // notice (a refresh stores its tokens this way: it used to be six round
        // trips in a transaction). Without events it is its own transaction.
        let update = sqlx::query_as::<_, (i64, Option<i64>)>(UPDATE_ACCOUNT)
            .bind(&r.id)
            .bind(r.entity_id)
            .bind(r.integration_id)
            .bind(r.app)
            .bind(r.auth_scheme)
            .bind(r.status)
            .bind(r.status_reason)
            .bind(r.labels)
            .bind(r.params)
            .bind(r.redirect_url)
            .bind(r.expires_at)
            .bind(r.version)
            .bind(r.created_at)
            .bind(r.updated_at)
            .bind(expected)
            .bind(set_credentials)
            .bind(blob)
            .bind(expiry)
            .bind(&labels)
            .bind(CHANNEL);
        let (n, current) = if events.is_empty() {
            self.lane.run(async |c| update.fetch_one(c).await).await?
        } else {
            let mut tx = begin(&self.pool).await.map_err(map_err)?;
            let done = update.fetch_one(&mut *tx).await.map_err(map_err)?;
            if done.0 > 0 {
                outbox::append(&mut tx, &events).await?;
                tx.commit().await.map_err(map_err)?;
            }
            done
        };
        if n == 0 {
            return Err(update_refused(&r.id, current, expected));
        }
        Ok(next)
    }

    async fn delete_account(
        &self,
        id: &ConnectedAccountId,
        events: &[AccountEvent],
    ) -> Result<bool, StoreError> {
        let events = EventRow::encode_all(events)?;
        let mut tx = begin(&self.pool).await.map_err(map_err)?;
        let entity: Option<String> =
            sqlx::query_scalar("DELETE FROM connected_accounts WHERE id = $1 RETURNING entity_id")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let Some(entity) = entity else {
            return Ok(false);
        };
        outbox::append(&mut tx, &events).await?;
        notify(&mut tx, id.as_str(), &entity).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn put_pending_state(&self, pending: &PendingState) -> Result<(), StoreError> {
        let hash = state_hash(&pending.state);
        let blob = encode_pending(&self.key_ring(), &hash, pending)?;
        sqlx::query("INSERT INTO pending_states (state_hash, account_id, data, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(&hash)
            .bind(pending.account_id.as_str())
            .bind(blob)
            .bind(micros(pending.expires_at))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn get_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError> {
        self.pending_by(
            "SELECT account_id, data, expires_at FROM pending_states WHERE state_hash = $1",
            state,
        )
        .await
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        let found: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM keyhaven_migrations")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        crate::rows::schema_is(found, MIGRATIONS.len())
    }

    async fn append_events(&self, events: &[AccountEvent]) -> Result<(), StoreError> {
        let events = EventRow::encode_all(events)?;
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = begin(&self.pool).await.map_err(map_err)?;
        outbox::append(&mut tx, &events).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<AccountEvent>>, StoreError> {
        self.events_after_id(after, limit).await
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
        self.deliveries(filter).await
    }

    async fn redeliver(&self, id: i64, now: DateTime<Utc>) -> Result<Option<Delivery>, StoreError> {
        self.redeliver_now(id, now).await
    }

    async fn count_deliveries(
        &self,
        state: keyhaven_core::DeliveryState,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE state = $1")
            .bind(state.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn take_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError> {
        self.pending_by(
            "DELETE FROM pending_states WHERE state_hash = $1 RETURNING account_id, data, expires_at",
            state,
        )
        .await
    }

    async fn purge_expired_pending_states(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let n = sqlx::query("DELETE FROM pending_states WHERE expires_at < $1")
            .bind(micros(now))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(n.rows_affected())
    }

    async fn lock_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Box<dyn AccountLock>, StoreError> {
        self.locks.lock(id).await
    }

    fn subscribe(&self, sink: ChangeSink) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: caches will not see changes made by other instances");
            return;
        };
        let pool = self.pool.clone();
        handle.spawn(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(_) if pool.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for account changes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen_all([CHANNEL, EVENT_CHANNEL]).await {
                    tracing::warn!(error = %e, "cannot listen for account changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // Anything may have changed while nobody listened.
                sink(StoreChange::Everything);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) if n.channel() == EVENT_CHANNEL => {
                            match serde_json::from_str::<AccountEvent>(n.payload()) {
                                Ok(event) => sink(StoreChange::Event(event)),
                                Err(e) => {
                                    tracing::warn!(error = %e, "an event from another instance could not be read; ignored");
                                }
                            }
                        }
                        Ok(Some(n)) => sink(change_of(n.payload())),
                        // The connection dropped; it is re-established on the next call.
                        Ok(None) => sink(StoreChange::Everything),
                        Err(_) => {
                            sink(StoreChange::Everything);
                            if pool.is_closed() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                    }
                }
            }
        });
    }

    async fn count_accounts(&self, filter: &AccountFilter) -> Result<u64, StoreError> {
        let (sql, args) = count_query(filter, &|n| format!("${n}"));
        let mut q = sqlx::query_scalar::<_, i64>(safe(sql));
        for a in args {
            q = match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            };
        }
        let n = self.lane.run(async |c| q.fetch_one(c).await).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_accounts(
        &self,
        filter: &AccountFilter,
    ) -> Result<Page<ConnectedAccount>, StoreError> {
        let (sql, args) = list_query(filter, &|n| format!("${n}"));
        let rows = self.rows(sql, args).await?;
        let items = rows
            .iter()
            .map(|r| account_row(r)?.decode())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page(items, filter))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[cfg(feature = "conformance")]
    /// Polls until the lane and the lock pool hold `lane` and `locks` connections,
    /// for at most 20 s; what they held at the end.
    async fn sizes_reach(store: &PostgresStore, lane: usize, locks: u32) -> (usize, u32) {
        let started = std::time::Instant::now();
        loop {
            let now = (store.lane.size(), store.lock_pool.size());
            if now == (lane, locks) || started.elapsed() > Duration::from_secs(20) {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[cfg(feature = "conformance")]
    fn ring() -> KeyRing {
        KeyRing::new(crate::MasterKey::generate().unwrap(), [])
    }

    /// `connect` fills the lane and the lock pool in the background; `connect_cold`
    /// opens one connection of each and no more.
    #[cfg(feature = "conformance")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_opens_every_connection_ahead_of_need_and_connect_cold_does_not() {
        let Some(url) = crate::conformance::fresh_postgres_database().await else {
            return;
        };
        let warm = PostgresStore::connect_with_pools(&url, ring(), 9, 3)
            .await
            .unwrap();
        // 9 connections: 3 for the other statements, 6 for the lane.
        assert_eq!(sizes_reach(&warm, 6, 3).await, (6, 3));
        // And they serve: a read on the lane, a lock on the lock pool.
        let id = ConnectedAccountId::generate().unwrap();
        assert!(warm.get_account(&id).await.unwrap().is_none());
        warm.lock_account(&id)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        drop(warm);

        let cold = PostgresStore::connect_cold(&url, ring()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!((cold.lane.size(), cold.lock_pool.size()), (1, 1));
    }

    /// The futures of the store's statements stay small: each is allocated (the
    /// trait's futures are boxed) and copied on every call. sqlx's opening of a
    /// connection, when awaited inline where a connection may be opened, made them
    /// 10–15 KiB.
    #[cfg(feature = "conformance")]
    #[tokio::test]
    async fn statement_futures_stay_small() {
        use crate::conformance::{account, credentials, integration, unique_app};
        let Some(url) = crate::conformance::fresh_postgres_database().await else {
            return;
        };
        let store = PostgresStore::connect_cold(&url, ring()).await.unwrap();
        let int = integration(&unique_app("sizes"), "OAUTH2");
        let acc = account(&int, "sizes", &[]);
        let creds = credentials("token");
        let filter = AccountFilter::default();
        let event = AccountEvent::new(
            keyhaven_core::EventKind::Created,
            &acc,
            None,
            Utc::now(),
            "kh_test",
        )
        .unwrap();
        let sizes = [
            (
                "get_account",
                std::mem::size_of_val(&*store.get_account(&acc.id)),
            ),
            (
                "get_account_and_credentials",
                std::mem::size_of_val(&*store.get_account_and_credentials(&acc.id)),
            ),
            (
                "get_integration",
                std::mem::size_of_val(&*store.get_integration(&int.id)),
            ),
            (
                "update_account",
                std::mem::size_of_val(&*store.update_account(
                    &acc,
                    CredentialsUpdate::Refreshed(&creds),
                    std::slice::from_ref(&event),
                )),
            ),
            (
                "insert_account",
                std::mem::size_of_val(&*store.insert_account(&acc, Some(&creds), &[])),
            ),
            (
                "list_accounts",
                std::mem::size_of_val(&*store.list_accounts(&filter)),
            ),
            (
                "lock_account",
                std::mem::size_of_val(&*store.lock_account(&acc.id)),
            ),
        ];
        for (method, size) in sizes {
            assert!(size <= 4096, "{method}'s future is {size} bytes");
        }
    }

    #[test]
    fn notices_name_the_account_and_its_entities() {
        let id = ConnectedAccountId::generate().unwrap();
        let entity = |e: &str| EntityId::new(e).unwrap();
        // An insert or delete, and an update that keeps the entity.
        for payload in [format!("{id} ann"), format!("{id} ann ann")] {
            assert_eq!(
                change_of(&payload),
                StoreChange::Account {
                    id: id.clone(),
                    entities: Some(vec![entity("ann")]),
                }
            );
        }
        // A move.
        assert_eq!(
            change_of(&format!("{id} ann bea")),
            StoreChange::Account {
                id: id.clone(),
                entities: Some(vec![entity("ann"), entity("bea")]),
            }
        );
        // An older keyhaven's notice: the id alone.
        assert_eq!(
            change_of(id.as_str()),
            StoreChange::Account {
                id: id.clone(),
                entities: None,
            }
        );
        // What cannot be read drops everything.
        for payload in [
            "",
            "not-an-id ann",
            &format!("{id} not an entity!"),
            &format!("{id}  ann"),
        ] {
            assert_eq!(change_of(payload), StoreChange::Everything, "{payload:?}");
        }
    }
}
