//! Keys and the SQL stores: which columns hold secrets, the re-encryption of one
//! batch (rotation), and the key ids in use that a key ring lacks ([`MissingKeys`]),
//! which a store looks for when it opens, to refuse such a ring.

use std::collections::BTreeMap;

use keyhaven_core::StoreError;

use crate::crypto::{KeyError, KeyRing};

/// A column holding encrypted values, with the key its associated data names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table {
    pub(crate) table: &'static str,
    pub(crate) key: &'static str,
    pub(crate) column: &'static str,
    pub(crate) aad: &'static str,
    /// The column of the row's expiry, for rows that are useless once expired.
    pub(crate) expires: Option<&'static str>,
    /// The PostgreSQL column generated from `column` that holds its header
    /// ([`postgres_header`]), indexed; without one, queries compute the header.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) postgres_header: Option<&'static str>,
}

impl Table {
    pub(crate) const ALL: [Table; 3] = [
        Table {
            table: "integrations",
            key: "id",
            column: "secrets",
            aad: crate::rows::AAD_SECRETS,
            expires: None,
            postgres_header: None,
        },
        Table {
            table: "connected_accounts",
            key: "id",
            column: "credentials",
            aad: crate::rows::AAD_CREDENTIALS,
            expires: None,
            postgres_header: Some("credentials_header"),
        },
        Table {
            table: "pending_states",
            key: "state_hash",
            column: "data",
            aad: crate::rows::AAD_PENDING,
            expires: Some("expires_at"),
            postgres_header: None,
        },
    ];
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Values rewritten under the primary key.
    pub reencrypted: u64,
    /// Values already under the primary key.
    pub already_current: u64,
    /// Values another writer changed between read and rewrite (already under the
    /// primary key then, since every write uses it).
    pub changed_meanwhile: u64,
}

/// One value to rewrite: its row key, the blob read, the blob to write.
pub(crate) type Rewrite = (String, Vec<u8>, Vec<u8>);

/// Decrypts and re-encrypts the rows of one batch not yet under the primary key:
/// `(key, old blob, new blob)`.
pub(crate) fn reencrypt(
    keys: &KeyRing,
    table: Table,
    rows: Vec<(String, Vec<u8>)>,
    report: &mut RotationReport,
) -> Result<Vec<Rewrite>, StoreError> {
    let mut out = Vec::new();
    for (key, blob) in rows {
        if KeyRing::key_id_of(&blob) == Some(keys.primary_id()) {
            report.already_current += 1;
            continue;
        }
        let aad = crate::rows::aad(table.aad, &key);
        let plain = keys.decrypt(&aad, &blob)?;
        let fresh = keys.encrypt(&aad, &plain)?;
        out.push((key, blob, fresh));
    }
    Ok(out)
}

/// The SQL (SQLite) of a blob's header in `column`: the magic, the key id's length
/// (the 4th byte) and the key id; NULL for a blob too short to have one. SQLite has no
/// function for a byte's value, but that byte as text is one character (ASCII: key ids
/// are short) whose code `unicode` gives. The same expression is indexed on
/// `connected_accounts.credentials` (migration 2), so it must not change alone.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_header(column: &str) -> String {
    format!("substr({column}, 1, 4 + unicode(CAST(substr({column}, 4, 1) AS TEXT)))")
}

/// The same for PostgreSQL (`get_byte` reads the length). For `connected_accounts`
/// it is the generated column `credentials_header` (migration 6; migration 2 indexed
/// the expression), so it must not change alone either.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_header(column: &str) -> String {
    format!(
        "(CASE WHEN length({column}) >= 4 THEN substr({column}, 1, 4 + get_byte({column}, 3)) END)"
    )
}

/// The key ids a store's values are encrypted with that a key ring lacks, with how
/// many values each encrypts. The stores find the distinct headers of each secret
/// column with a loose index scan (one seek per key id in use, `WHERE header > last
/// ORDER BY header LIMIT 1`), and count the values of missing keys only.
#[derive(Debug, Default)]
pub(crate) struct MissingKeys(BTreeMap<String, u64>);

impl MissingKeys {
    /// The key id of a header when `keys` lacks it; `None` when `keys` has it, or when
    /// the header is not keyhaven's (reading that value fails with its own error).
    pub(crate) fn lacked(keys: &KeyRing, header: &[u8]) -> Option<String> {
        match KeyRing::key_id_of(header) {
            Some(id) if !keys.key_ids().any(|k| k == id) => Some(id.to_owned()),
            Some(_) => None,
            None => {
                tracing::warn!(
                    "a stored secret is not a keyhaven encrypted value; reading it will fail"
                );
                None
            }
        }
    }

    /// Counts `n` values under the missing key `id`.
    pub(crate) fn add(&mut self, id: String, n: i64) {
        *self.0.entry(id).or_default() += u64::try_from(n).unwrap_or(0);
    }

    /// Each missing key id with its count.
    pub(crate) fn into_vec(self) -> Vec<(String, u64)> {
        self.0.into_iter().collect()
    }

    /// Refuses `keys` when some key is missing.
    ///
    /// # Errors
    /// [`KeyError::NotConfigured`], boxed in [`StoreError::Backend`].
    pub(crate) fn check(self, keys: &KeyRing) -> Result<(), StoreError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let missing = self.into_vec();
        let rows = missing.iter().map(|(_, n)| n).sum();
        Err(StoreError::Backend(Box::new(KeyError::NotConfigured {
            missing,
            rows,
            configured: keys.key_ids().map(str::to_owned).collect(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    #[test]
    fn missing_keys_are_named_with_counts() {
        let old = KeyRing::new(MasterKey::generate().unwrap(), []);
        let new = KeyRing::new(MasterKey::generate().unwrap(), []);
        let blob = old.encrypt("x", b"v").unwrap();
        let header = &blob[..4 + old.primary_id().len()];
        assert_eq!(MissingKeys::lacked(&old, header), None);
        assert_eq!(MissingKeys::lacked(&old, b"not ours"), None);
        let mut missing = MissingKeys::default();
        let id = MissingKeys::lacked(&new, header).unwrap();
        assert_eq!(id, old.primary_id());
        missing.add(id, 3);
        let err = missing.check(&new).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{} (3 values)", old.primary_id()))
                && err.contains(new.primary_id())
                && err.contains("KEYHAVEN_OLD_MASTER_KEYS")
                && err.contains("keyhaven keys rotate"),
            "{err}"
        );
        assert!(MissingKeys::default().check(&new).is_ok());
    }
}
