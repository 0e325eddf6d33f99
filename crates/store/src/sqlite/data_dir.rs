//! The data directory and the database file, private to their owner.

use std::path::Path;

use keyhaven_core::StoreError;

/// Makes the data directory, owner-only.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    crate::files::create_private_dir(dir).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot create the data directory {}: {e}",
            dir.display()
        ))
    })
}

/// Makes the database file, empty, with mode 0600 before SQLite opens it (SQLite
/// would make it 0644 less the umask); SQLite gives the `-wal` and `-shm` files the
/// database file's mode. An existing file is left as it is, with a warning when
/// others may read it.
pub(super) fn create_db_file(path: &Path) -> Result<(), StoreError> {
    match crate::files::create_new_private_file(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Some(mode) = crate::files::open_to_others(path) {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "the database file can be read by others; run `chmod 600` on it (and on its -wal and -shm files)"
                );
            }
            Ok(())
        }
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}
