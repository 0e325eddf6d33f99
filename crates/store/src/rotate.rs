//! Keys and the SQL stores: which columns hold secrets, the re-encryption of one
//! batch (rotation), and the census of key ids in use that a store takes when it
//! opens, to refuse a key ring that lacks some of them.

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
}

impl Table {
    pub(crate) const ALL: [Table; 3] = [
        Table {
            table: "integrations",
            key: "id",
            column: "secrets",
            aad: crate::rows::AAD_SECRETS,
            expires: None,
        },
        Table {
            table: "connected_accounts",
            key: "id",
            column: "credentials",
            aad: crate::rows::AAD_CREDENTIALS,
            expires: None,
        },
        Table {
            table: "pending_states",
            key: "state_hash",
            column: "data",
            aad: crate::rows::AAD_PENDING,
            expires: Some("expires_at"),
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

/// How many stored values each key id encrypts, from the blobs' headers.
#[derive(Debug, Default)]
pub(crate) struct KeyCensus {
    by_key: BTreeMap<String, u64>,
    unreadable: u64,
}

impl KeyCensus {
    /// Counts `n` values whose blobs start with `head` (the magic, the key id's length
    /// and the key id; `None` when the blob is too short to hold them).
    pub(crate) fn add(&mut self, head: Option<&[u8]>, n: i64) {
        let n = u64::try_from(n).unwrap_or(0);
        match head.and_then(KeyRing::key_id_of) {
            Some(id) => *self.by_key.entry(id.to_owned()).or_default() += n,
            None => self.unreadable += n,
        }
    }

    /// The key ids `keys` lacks, each with its count.
    pub(crate) fn missing(&self, keys: &KeyRing) -> Vec<(String, u64)> {
        let configured: Vec<&str> = keys.key_ids().collect();
        self.by_key
            .iter()
            .filter(|(id, _)| !configured.contains(&id.as_str()))
            .map(|(id, n)| (id.clone(), *n))
            .collect()
    }

    /// Refuses `keys` when it lacks a key some value is encrypted with.
    ///
    /// # Errors
    /// [`KeyError::NotConfigured`], boxed in [`StoreError::Backend`].
    pub(crate) fn check(&self, keys: &KeyRing) -> Result<(), StoreError> {
        if self.unreadable > 0 {
            tracing::warn!(
                values = self.unreadable,
                "some stored secrets are not keyhaven encrypted values; reading them will fail"
            );
        }
        let missing = self.missing(keys);
        if missing.is_empty() {
            return Ok(());
        }
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
    fn census_names_missing_keys_with_counts() {
        let old = KeyRing::new(MasterKey::generate().unwrap(), []);
        let new = KeyRing::new(MasterKey::generate().unwrap(), []);
        let blob = old.encrypt("x", b"v").unwrap();
        let mut census = KeyCensus::default();
        census.add(Some(&blob[..4 + old.primary_id().len()]), 3);
        census.add(None, 1);
        assert!(census.check(&old).is_ok());
        let err = census.check(&new).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{} (3 values)", old.primary_id()))
                && err.contains(new.primary_id())
                && err.contains("KEYHAVEN_OLD_MASTER_KEYS")
                && err.contains("keyhaven keys rotate"),
            "{err}"
        );
    }
}
