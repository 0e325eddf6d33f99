//! The local backend: the library on a data directory (SQLite) or a PostgreSQL
//! database, no server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyhaven::{Keyhaven, PostgresStore, SqliteStore, Store};

use crate::CliError;

/// Where the store is.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoreArgs {
    /// The embedded store's directory.
    pub(crate) data_dir: Option<PathBuf>,
    /// A PostgreSQL URL instead.
    pub(crate) database_url: Option<String>,
    /// Where the master key comes from.
    pub(crate) keys: KeySource,
}

/// Where the master key comes from.
#[derive(Debug, Clone, Default)]
pub(crate) enum KeySource {
    /// `KEYHAVEN_MASTER_KEY`, else (SQLite) the data directory's `master.key`.
    #[default]
    Default,
    /// What a command prints (`--master-key-command`).
    Command(String),
    /// The data directory's key wrapped by a KMS key (`--kms-key-id`).
    Kms {
        key_id: String,
        endpoint: Option<String>,
    },
}

impl KeySource {
    /// The key ring of a key command or a KMS envelope; `None` for the default.
    async fn ring(&self, dir: &Path) -> Result<Option<keyhaven::KeyRing>, CliError> {
        match self {
            Self::Default => Ok(None),
            Self::Command(command) => keyhaven::ring_from_command(command)
                .map(Some)
                .map_err(CliError::from_store),
            Self::Kms { key_id, endpoint } => {
                let kms = keyhaven::kms::Kms::from_env(endpoint.as_deref())
                    .map_err(CliError::from_store)?;
                keyhaven::kms::ring_from_kms(dir, &kms, key_id)
                    .await
                    .map(Some)
                    .map_err(CliError::from_store)
            }
        }
    }
}

impl StoreArgs {
    /// The data directory (also where a server keeps its key hashes).
    pub(crate) fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(keyhaven::data_dir)
    }
}

/// How long the process that opens a store will use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// One command, then the process exits: no connection opened ahead of need.
    OneCommand,
    /// A server: PostgreSQL's pools are filled in the background at start, so that
    /// the first burst of requests does not wait for connections to open.
    Serving,
}

/// Opens the store the arguments name, for `usage`, and says which it is.
pub(crate) async fn open_store(
    args: &StoreArgs,
    usage: Use,
) -> Result<(Arc<dyn Store>, String), CliError> {
    match &args.database_url {
        Some(url) => {
            let keys = match args.keys.ring(&args.dir()).await? {
                Some(ring) => ring,
                None => keyhaven::ring_from_env()
                    .map_err(CliError::from_store)?
                    .ok_or_else(|| CliError::usage("a PostgreSQL store needs KEYHAVEN_MASTER_KEY (base64 of 32 bytes), the same on every instance, or --master-key-command, or --kms-key-id"))?,
            };
            let store = match usage {
                Use::Serving => PostgresStore::connect(url, keys).await,
                Use::OneCommand => PostgresStore::connect_cold(url, keys).await,
            }
            .map_err(CliError::from_store)?;
            Ok((Arc::new(store), "PostgreSQL store".to_owned()))
        }
        None => {
            let dir = args.dir();
            let store = match args.keys.ring(&dir).await? {
                Some(ring) => SqliteStore::open_dir_with(&dir, ring),
                None => SqliteStore::open_dir(&dir),
            }
            .map_err(CliError::from_store)?;
            Ok((
                Arc::new(store),
                format!("SQLite store in {}", dir.display()),
            ))
        }
    }
}

/// The library on the store, with the settings of `keyhaven serve` that matter to a
/// client: the public URL (for the OAuth callback) and the redirect allowlist.
pub(crate) async fn open(args: &StoreArgs) -> Result<Keyhaven, CliError> {
    let (store, _) = open_store(args, Use::OneCommand).await?;
    // The server's audit log: uses of credentials here are recorded with its own.
    let audit_path = std::env::var_os("KEYHAVEN_AUDIT_LOG")
        .filter(|p| !p.is_empty())
        .map_or_else(|| args.dir().join("audit.log"), PathBuf::from);
    // A server run with --audit-store (KEYHAVEN_AUDIT_STORE) keeps it in the store.
    let in_store = std::env::var("KEYHAVEN_AUDIT_STORE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes"));
    let audit = if in_store {
        keyhaven::AuditLog::to_store(store.clone())
    } else {
        keyhaven::AuditLog::to_file(&audit_path)
    }
    .map_err(|e| CliError::new(crate::Exit::Unavailable, e.to_string()))?;
    let mut builder = Keyhaven::builder().shared_store(store).audit_log(audit);
    // A server's setting, taken here too: `keyhaven request` waits as the server would.
    if let Some(value) = std::env::var("KEYHAVEN_API_READ_TIMEOUT")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        let secs = value.trim().parse::<f64>().map_err(|_| {
            CliError::usage(format!(
                "KEYHAVEN_API_READ_TIMEOUT must be a number of seconds, such as 60 (got {value:?})"
            ))
        })?;
        let limit = crate::serve::seconds(
            "KEYHAVEN_API_READ_TIMEOUT",
            Some(secs),
            None,
            keyhaven::request::READ_TIMEOUT,
        )?;
        builder = builder.read_timeout(limit);
    }
    if let Some(url) = std::env::var("KEYHAVEN_PUBLIC_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        let url = keyhaven::url::Url::parse(url.trim_end_matches('/'))
            .map_err(|e| CliError::usage(format!("KEYHAVEN_PUBLIC_URL: {e}")))?;
        builder = builder.callback_url(&keyhaven_server::AppState::callback_url(&url));
    }
    for prefix in std::env::var("KEYHAVEN_REDIRECT_ALLOWLIST")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        builder = builder.allow_redirect_url(prefix);
    }
    builder.build().map_err(CliError::from)
}

/// `keys rotate`: a new primary key, every secret re-encrypted under it.
pub(crate) async fn rotate_keys(
    args: &StoreArgs,
    retire_old: bool,
    batch: usize,
) -> Result<serde_json::Value, CliError> {
    let from_env = keyhaven::ring_from_env().map_err(CliError::from_store)?;
    let (report, key_id, retired) = match (&args.database_url, from_env) {
        (Some(url), Some(ring)) => {
            let id = ring.primary_id().to_owned();
            let store = PostgresStore::connect_cold(url, ring)
                .await
                .map_err(CliError::from_store)?;
            (
                store.rotate(batch).await.map_err(CliError::from_store)?,
                id,
                false,
            )
        }
        (Some(_), None) => {
            return Err(CliError::usage(
                "a PostgreSQL store needs KEYHAVEN_MASTER_KEY (the new key) and KEYHAVEN_OLD_MASTER_KEYS (the old ones) to rotate",
            ));
        }
        (None, Some(ring)) => {
            // The keys come from the environment: the new one is already primary there.
            let id = ring.primary_id().to_owned();
            let store = SqliteStore::open(args.dir().join(keyhaven::DB_FILE), ring)
                .map_err(CliError::from_store)?;
            (
                store.rotate(batch).await.map_err(CliError::from_store)?,
                id,
                false,
            )
        }
        (None, None) => {
            let dir = args.dir();
            let file = keyhaven::KeyFile::in_dir(&dir);
            if !file.path().exists() {
                return Err(CliError::not_found(format!(
                    "no key file in {}: nothing to rotate",
                    dir.display()
                )));
            }
            // Opened with the keys as they are first: a store that needs a key the file
            // lacks is refused before the file changes.
            let current = file.load().map_err(CliError::from_store)?;
            let store = SqliteStore::open(dir.join(keyhaven::DB_FILE), current)
                .map_err(CliError::from_store)?;
            let ring = file.add_primary().map_err(CliError::from_store)?;
            let id = ring.primary_id().to_owned();
            store.set_key_ring(ring);
            // Other processes on this directory take the new key up within
            // KEY_FILE_CHECK: after that, nothing more is written under the old ones.
            tokio::time::sleep(2 * keyhaven::KEY_FILE_CHECK).await;
            let report = store.rotate(batch).await.map_err(CliError::from_store)?;
            if retire_old {
                // A process still running with the old keys writes under its primary:
                // what it wrote after the rotation passed needs the old keys still.
                store
                    .check_keys(&store.key_ring().only_primary())
                    .map_err(|e| {
                        CliError::new(
                            crate::Exit::Failed,
                            format!(
                                "the old keys were not retired: values were written under them while the rotation ran, most likely by a keyhaven that cannot read the key file or takes its keys from elsewhere ({e}); give every keyhaven on this data directory the same keys, or stop the others, then run keys rotate --retire-old again"
                            ),
                        )
                    })?;
                file.retire_old_keys().map_err(CliError::from_store)?;
            }
            (report, id, retire_old)
        }
    };
    Ok(serde_json::json!({
        "primaryKey": key_id,
        "reencrypted": report.reencrypted,
        "alreadyCurrent": report.already_current,
        "changedMeanwhile": report.changed_meanwhile,
        "oldKeysRetired": retired,
    }))
}
