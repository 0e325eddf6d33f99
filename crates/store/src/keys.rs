//! Where master keys come from: configuration or the environment (base64), or, for
//! the embedded default, a key file in the data directory, created with mode 0600.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use keyhaven_core::StoreError;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{KeyRing, MasterKey};

/// The environment variable holding the primary master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "KEYHAVEN_MASTER_KEY";
/// The environment variable holding older keys still needed to read (comma-separated).
pub const OLD_KEYS_ENV: &str = "KEYHAVEN_OLD_MASTER_KEYS";
/// The key file's name in a data directory.
pub const KEY_FILE: &str = "master.key";

fn key_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string().into())
}

/// A key ring from base64 keys: the primary, then older ones.
pub fn ring_from_base64(primary: &str, older: &[&str]) -> Result<KeyRing, StoreError> {
    let primary = MasterKey::from_base64(primary).map_err(key_error)?;
    let older = older
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| MasterKey::from_base64(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(key_error)?;
    Ok(KeyRing::new(primary, older))
}

/// The key ring of `KEYHAVEN_MASTER_KEY` and `KEYHAVEN_OLD_MASTER_KEYS`, if the first is set.
pub fn ring_from_env() -> Result<Option<KeyRing>, StoreError> {
    let Ok(primary) = std::env::var(MASTER_KEY_ENV) else {
        return Ok(None);
    };
    let primary = Zeroizing::new(primary);
    let older = Zeroizing::new(std::env::var(OLD_KEYS_ENV).unwrap_or_default());
    let older: Vec<&str> = older.split(',').collect();
    ring_from_base64(&primary, &older)
        .map(Some)
        .map_err(|e| StoreError::Backend(format!("{MASTER_KEY_ENV}: {e}").into()))
}

/// The environment variable naming a command that prints the master key.
pub const MASTER_KEY_COMMAND_ENV: &str = "KEYHAVEN_MASTER_KEY_COMMAND";

/// The key ring a command prints (run with `sh -c`): the primary key in base64 on
/// its first line, older keys still needed to read on the following ones. For
/// keys kept in Vault, 1Password, a TPM: `vault kv get -field=key secret/keyhaven`.
///
/// # Errors
/// The command cannot be run, fails, or prints no valid key. The error never
/// holds what it printed.
pub fn ring_from_command(command: &str) -> Result<KeyRing, StoreError> {
    let out = std::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| key_error(format!("cannot run the master key command: {e}")))?;
    let printed = Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
    if !out.status.success() {
        return Err(key_error(format!(
            "the master key command failed ({}); run it by hand to see why",
            out.status
        )));
    }
    let mut lines = printed.lines().map(str::trim).filter(|l| !l.is_empty());
    let primary = lines.next().ok_or_else(|| {
        key_error("the master key command printed nothing; it must print the key in base64")
    })?;
    let older: Vec<&str> = lines.collect();
    ring_from_base64(primary, &older).map_err(|e| {
        key_error(format!(
            "the master key command did not print keys in base64 (32 bytes each): {e}"
        ))
    })
}

#[derive(Serialize, Deserialize)]
struct KeyFileContent {
    primary: String,
    /// Every key, base64, by id.
    keys: std::collections::BTreeMap<String, String>,
}

impl Drop for KeyFileContent {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for v in self.keys.values_mut() {
            v.zeroize();
        }
    }
}

/// A key file: the keys of an embedded store, readable by its owner only.
#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// The key file of a data directory.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join(KEY_FILE),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the key ring, creating the file with a new key (mode 0600) when absent.
    ///
    /// This knows nothing of a database: [`SqliteStore::open_dir`](crate::SqliteStore::open_dir)
    /// does not call it, and refuses to make a new key when the database already
    /// holds values encrypted under another.
    ///
    /// # Errors
    /// A file that others can read or write, or that does not parse.
    pub fn load_or_create(&self) -> Result<KeyRing, StoreError> {
        if !self.path.exists() {
            return self.create(&MasterKey::generate()?);
        }
        self.load()
    }

    /// Creates the file holding `key` alone, unless it exists; returns the key ring
    /// the file then holds (another process's, when it made the file first).
    ///
    /// # Errors
    /// The file cannot be written, or the existing one cannot be read.
    pub fn create(&self, key: &MasterKey) -> Result<KeyRing, StoreError> {
        let mut keys = std::collections::BTreeMap::new();
        keys.insert(key.id().to_owned(), key.to_base64().to_string());
        let content = KeyFileContent {
            primary: key.id().to_owned(),
            keys,
        };
        if self.write(&content, true)? {
            tracing::info!(path = %self.path.display(), key = key.id(), "created a new master key file");
        }
        self.load()
    }

    /// Reads the key ring.
    pub fn load(&self) -> Result<KeyRing, StoreError> {
        self.check_mode()?;
        let text = Zeroizing::new(fs::read_to_string(&self.path).map_err(|e| {
            key_error(format!(
                "cannot read the key file {}: {e}",
                self.path.display()
            ))
        })?);
        let content: KeyFileContent = serde_json::from_str(&text)
            .map_err(|_| key_error(format!("the key file {} is not valid", self.path.display())))?;
        let primary = content.keys.get(&content.primary).ok_or_else(|| {
            key_error(format!(
                "the key file {} has no key {}",
                self.path.display(),
                content.primary
            ))
        })?;
        let older: Vec<&str> = content
            .keys
            .iter()
            .filter(|(id, _)| **id != content.primary)
            .map(|(_, k)| k.as_str())
            .collect();
        ring_from_base64(primary, &older)
    }

    /// The file's only key, for moving it elsewhere (into a KMS envelope). A file
    /// that still holds older keys is refused: finish the rotation first.
    #[cfg(feature = "kms")]
    pub(crate) fn only_key(&self) -> Result<MasterKey, StoreError> {
        self.check_mode()?;
        let text = Zeroizing::new(fs::read_to_string(&self.path).map_err(key_error)?);
        let content: KeyFileContent = serde_json::from_str(&text)
            .map_err(|_| key_error(format!("the key file {} is not valid", self.path.display())))?;
        if content.keys.len() != 1 {
            return Err(key_error(format!(
                "the key file {} holds {} keys; finish the rotation first (keyhaven keys rotate --retire-old), then move the one key",
                self.path.display(),
                content.keys.len()
            )));
        }
        let key = content.keys.get(&content.primary).ok_or_else(|| {
            key_error(format!("the key file {} is not valid", self.path.display()))
        })?;
        MasterKey::from_base64(key).map_err(key_error)
    }

    /// Adds a new primary key, keeping the old ones for reading; returns the new ring.
    pub fn add_primary(&self) -> Result<KeyRing, StoreError> {
        self.check_mode()?;
        let text = Zeroizing::new(fs::read_to_string(&self.path).map_err(key_error)?);
        let mut content: KeyFileContent = serde_json::from_str(&text).map_err(key_error)?;
        let key = MasterKey::generate()?;
        content
            .keys
            .insert(key.id().to_owned(), key.to_base64().to_string());
        content.primary = key.id().to_owned();
        self.write(&content, false)?;
        self.load()
    }

    /// Drops every key but the primary (after a completed rotation).
    pub fn retire_old_keys(&self) -> Result<(), StoreError> {
        self.check_mode()?;
        let text = Zeroizing::new(fs::read_to_string(&self.path).map_err(key_error)?);
        let mut content: KeyFileContent = serde_json::from_str(&text).map_err(key_error)?;
        let primary = content.primary.clone();
        content.keys.retain(|id, _| *id == primary);
        self.write(&content, false).map(drop)
    }

    fn check_mode(&self) -> Result<(), StoreError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(&self.path).map_err(|e| {
                key_error(format!(
                    "cannot read the key file {}: {e}",
                    self.path.display()
                ))
            })?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(key_error(format!(
                    "the key file {} can be read or written by others (mode {mode:o}); run `chmod 600 {}`",
                    self.path.display(),
                    self.path.display()
                )));
            }
        }
        Ok(())
    }

    /// Writes atomically: a new file with mode 0600 (whatever the umask), then a
    /// rename over the old one, or, with `create_new`, a link that fails when the
    /// file exists (two processes creating it at once: one wins, the other reads its
    /// key). Returns whether the file was written.
    fn write(&self, content: &KeyFileContent, create_new: bool) -> Result<bool, StoreError> {
        let text = Zeroizing::new(serde_json::to_string_pretty(content).map_err(key_error)?);
        let suffix = keyhaven_core::random_hex::<8>().map_err(key_error)?;
        let tmp = self.path.with_extension(format!("key.{suffix}.tmp"));
        let written = crate::files::create_new_private_file(&tmp).and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(key_error(format!("cannot write {}: {e}", tmp.display())));
        }
        let placed = if create_new {
            match fs::hard_link(&tmp, &self.path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&tmp);
                    return Ok(false);
                }
                Ok(()) => {
                    let _ = fs::remove_file(&tmp);
                    Ok(())
                }
                // A file system without hard links: check, then rename (not atomic).
                Err(_) if self.path.exists() => {
                    let _ = fs::remove_file(&tmp);
                    return Ok(false);
                }
                Err(_) => fs::rename(&tmp, &self.path).inspect_err(|_| {
                    let _ = fs::remove_file(&tmp);
                }),
            }
        } else {
            fs::rename(&tmp, &self.path).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        };
        placed
            .map(|()| true)
            .map_err(|e| key_error(format!("cannot write {}: {e}", self.path.display())))
    }
}

/// How often a store that follows its key file looks whether the file changed, at
/// most (a `stat`), besides each time a value names a key it lacks. A store that
/// writes looks at least this often, so a key made primary in the file is in use
/// everywhere this long after (`keyhaven keys rotate` waits twice as long before it
/// re-encrypts).
pub const KEY_FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What tells one version of a key file from another: every write of it is a new
/// file renamed into place, so a new inode (and usually a new size and time).
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// The inode's change time and mode: a `chmod 600` that makes an unusable
    /// version usable is a change too.
    changed: (i64, i64),
    mode: u32,
}

#[cfg(feature = "sqlite")]
impl FileStamp {
    /// The version of the file at `path` now; `None` when it cannot be looked at.
    pub(crate) fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        #[cfg(unix)]
        let (dev, ino, changed, mode) = {
            use std::os::unix::fs::MetadataExt;
            (
                meta.dev(),
                meta.ino(),
                (meta.ctime(), meta.ctime_nsec()),
                meta.mode(),
            )
        };
        #[cfg(not(unix))]
        let (dev, ino, changed, mode) = (0, 0, (0, 0), 0);
        Some(Self {
            dev,
            ino,
            len: meta.len(),
            modified: meta.modified().ok(),
            changed,
            mode,
        })
    }
}

/// A key file followed by the store that was opened with it, so that a running
/// process takes up what `keyhaven keys rotate` (another process) wrote to it: the
/// new primary key for its writes, within [`KEY_FILE_CHECK`], and the key of a value
/// re-encrypted under it as soon as that value is read.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub(crate) struct KeyFileWatch {
    file: KeyFile,
    /// The version of the file last read.
    stamp: parking_lot::Mutex<Option<FileStamp>>,
    /// When the file is next looked at, in milliseconds after `since`.
    next_check: std::sync::atomic::AtomicU64,
    since: std::time::Instant,
}

#[cfg(feature = "sqlite")]
impl KeyFileWatch {
    /// Follows `file`, whose version `stamp` was taken before the keys in use were
    /// read from it (a change made in between is then read again, harmlessly,
    /// rather than missed).
    pub(crate) fn new(file: KeyFile, stamp: Option<FileStamp>) -> Self {
        Self {
            file,
            stamp: parking_lot::Mutex::new(stamp),
            next_check: std::sync::atomic::AtomicU64::new(0),
            since: std::time::Instant::now(),
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    /// Whether it is time to look at the file again (once per [`KEY_FILE_CHECK`]).
    pub(crate) fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_check.load(Ordering::Relaxed);
        now >= next
            && self
                .next_check
                .compare_exchange(
                    next,
                    now.saturating_add(KEY_FILE_CHECK.as_millis() as u64),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Takes the file's version now as read (the caller just read it).
    pub(crate) fn read_now(&self) {
        *self.stamp.lock() = FileStamp::of(self.file.path());
    }

    /// Makes the next look read the file, changed or not (it could not be used).
    pub(crate) fn look_again(&self) {
        *self.stamp.lock() = None;
    }

    /// The key ring the file holds, when it changed since it was last read. A
    /// version of the file that cannot be read (not valid, open to others) is said
    /// once, and the keys in use kept.
    pub(crate) fn changed(&self) -> Option<KeyRing> {
        let mut last = self.stamp.lock();
        let now = FileStamp::of(self.file.path());
        if now == *last {
            return None;
        }
        *last = now;
        if now.is_none() {
            tracing::warn!(path = %self.file.path().display(), "the key file is gone; the keys in use are kept (put it back before this process restarts)");
            return None;
        }
        match self.file.load() {
            Ok(ring) => Some(ring),
            Err(e) => {
                tracing::warn!(path = %self.file.path().display(), error = %e, "the key file changed but cannot be read; the keys in use are kept");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_and_refused_when_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::in_dir(dir.path());
        let ring = file.load_or_create().unwrap();
        let again = file.load_or_create().unwrap();
        assert_eq!(
            ring.primary_id(),
            again.primary_id(),
            "an existing file is reused"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            fs::set_permissions(file.path(), fs::Permissions::from_mode(0o644)).unwrap();
            let err = file.load().unwrap_err().to_string();
            assert!(err.contains("chmod 600") && err.contains("644"), "{err}");
            fs::set_permissions(file.path(), fs::Permissions::from_mode(0o600)).unwrap();
        }
        let rotated = file.add_primary().unwrap();
        assert_ne!(rotated.primary_id(), ring.primary_id());
        assert_eq!(rotated.key_ids().count(), 2);
        file.retire_old_keys().unwrap();
        assert_eq!(file.load().unwrap().key_ids().count(), 1);
    }
}
