//! Stores for keyhaven, behind the [`Store`](keyhaven_core::Store) trait of
//! `keyhaven-core`:
//!
//! - [`SqliteStore`] (feature `sqlite`, default): the embedded store, one file in a
//!   data directory;
//! - [`PostgresStore`] (feature `postgres`): many keyhaven instances on one database;
//! - [`MemoryStore`]: for tests and programs that keep nothing.
//!
//! The SQL stores encrypt credentials, integration secrets and pending OAuth data at
//! rest with AES-256-GCM ([`KeyRing`]), run their embedded migrations on open, refuse
//! to open on a key ring that lacks a key their values are encrypted with
//! ([`KeyError::NotConfigured`]), and take refresh locks that hold across processes.
//! The files they make are owner-only ([`files`]). With the `conformance` feature,
//! the suite every store must pass.

mod crypto;
pub mod files;
mod keys;
#[cfg(feature = "kms")]
pub mod kms;
#[cfg(feature = "sqlite")]
mod lease;
mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod outbox;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rotate;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod rows;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use crypto::{KeyError, KeyRing, MasterKey};
pub use keys::{
    KEY_FILE, KEY_FILE_CHECK, KeyFile, MASTER_KEY_COMMAND_ENV, MASTER_KEY_ENV, OLD_KEYS_ENV,
    ring_from_base64, ring_from_command, ring_from_env,
};
#[cfg(feature = "sqlite")]
pub use lease::DEFAULT_LEASE;
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use rotate::RotationReport;
#[cfg(feature = "sqlite")]
pub use sqlite::{DB_FILE, SqliteStore};

/// A random token (128 bits, hex) naming a lock holder.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn random_token() -> Result<String, keyhaven_core::StoreError> {
    keyhaven_core::random_hex::<16>().map_err(|e| keyhaven_core::StoreError::Backend(Box::new(e)))
}
