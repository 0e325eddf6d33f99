//! The admin API key: generated on first start, shown once, kept only as a SHA-256
//! hash (file mode 0600, in a directory made 0700 when missing), compared in
//! constant time.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The hash of the admin API key.
#[derive(Clone)]
pub struct AdminKey([u8; 32]);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey([hash redacted])")
    }
}

/// The file that holds the admin key's hash in a data directory.
pub const ADMIN_KEY_FILE: &str = "admin-key.sha256";
/// The file that holds the credentials key's hash in a data directory.
pub const CREDENTIALS_KEY_FILE: &str = "credentials-key.sha256";

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl AdminKey {
    /// The hash of a key given in configuration.
    pub fn from_plain(key: &str) -> Self {
        Self(hash(key))
    }

    /// Whether `given` is the key, in constant time.
    pub fn matches(&self, given: &str) -> bool {
        hash(given).ct_eq(&self.0).into()
    }

    /// Reads the key's hash from `dir`, or makes a new key, stores its hash (mode
    /// 0600) and returns the key too, to be shown once.
    ///
    /// # Errors
    /// The directory or file cannot be read or written, or the file is not a hash.
    pub fn load_or_create(dir: &Path) -> Result<(Self, Option<String>), String> {
        Self::load_or_create_file(dir, ADMIN_KEY_FILE, "kh_")
    }

    /// As [`AdminKey::load_or_create`], for the key kept in `file` whose text starts
    /// with `prefix` (`kh_` for the admin key, `khc_` for the credentials key).
    ///
    /// # Errors
    /// As [`AdminKey::load_or_create`].
    pub fn load_or_create_file(
        dir: &Path,
        file: &str,
        prefix: &str,
    ) -> Result<(Self, Option<String>), String> {
        let path = dir.join(file);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let hash: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| {
                    format!(
                        "{} is not a SHA-256 hash; delete it to make a new admin key",
                        path.display()
                    )
                })?;
            return Ok((Self(hash), None));
        }
        keyhaven::files::create_private_dir(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let key = format!(
            "{prefix}{}",
            keyhaven::random_hex::<32>().map_err(|e| e.to_string())?
        );
        let digest = hash(&key);
        let text = keyhaven::to_hex(&digest);
        use std::io::Write;
        keyhaven::files::create_new_private_file(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok((Self(digest), Some(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_in_constant_time_and_persist_as_hashes() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("data");
        let (key, shown) = AdminKey::load_or_create(&dir).unwrap();
        let shown = shown.expect("a new key is shown once");
        assert!(key.matches(&shown));
        assert!(!key.matches("kh_wrong"));
        let (again, none) = AdminKey::load_or_create(&dir).unwrap();
        assert!(none.is_none(), "never shown again");
        assert!(again.matches(&shown));
        let stored = std::fs::read_to_string(dir.join(ADMIN_KEY_FILE)).unwrap();
        assert!(!stored.contains(&shown[3..]), "only the hash is stored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700, "a new directory is private");
            assert_eq!(mode(&dir.join(ADMIN_KEY_FILE)), 0o600);
        }
    }
}
