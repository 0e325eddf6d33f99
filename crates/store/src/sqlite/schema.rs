//! The SQLite connections' settings and the schema's migrations.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use keyhaven_core::StoreError;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::map_err;
use crate::rows::micros;

/// The migrations, in order: each runs once, in a transaction, recorded with its
/// version.
pub(super) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_credentials_key_index.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_integration_disabled.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_audit_log.sql"),
    ),
    (5, include_str!("../../migrations/sqlite/0005_events.sql")),
];

/// Opens a connection with keyhaven's settings (WAL, busy timeout, foreign keys).
pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(map_err)?;
    // The query planner stability guarantee: a statement keeps its plan whatever
    // values are bound. Without it SQLite plans a bound `LIMIT ?` (and, with STAT4
    // statistics, an indexed `= ?`) by the value and so prepares the statement again
    // at every bind: that was about 100 µs of every account listing.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(map_err)?;
    // Room for every statement the store prepares with `prepare_cached` (the
    // default of 16 made the busiest ones evict each other).
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .map_err(map_err)?;
    Ok(conn)
}

/// Applies the migrations this database lacks.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS keyhaven_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(map_err)?;
    for (version, sql) in MIGRATIONS {
        let done: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM keyhaven_migrations WHERE version = ?1)",
                [version],
                |r| r.get(0),
            )
            .map_err(map_err)?;
        if !done {
            tx.execute_batch(sql).map_err(map_err)?;
            tx.execute(
                "INSERT INTO keyhaven_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, micros(Utc::now())],
            )
            .map_err(map_err)?;
            tracing::info!(version, "SQLite migration applied");
        }
    }
    tx.commit().map_err(map_err)
}
