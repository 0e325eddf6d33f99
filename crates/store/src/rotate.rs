//! Key rotation shared by the SQL stores: which columns hold secrets, and the
//! re-encryption of one batch.

use keyhaven_core::StoreError;

use crate::crypto::KeyRing;

/// A column holding encrypted values, with the key its associated data names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Table {
    pub(crate) table: &'static str,
    pub(crate) key: &'static str,
    pub(crate) column: &'static str,
    pub(crate) aad: &'static str,
}

impl Table {
    pub(crate) const ALL: [Table; 3] = [
        Table {
            table: "integrations",
            key: "id",
            column: "secrets",
            aad: crate::rows::AAD_SECRETS,
        },
        Table {
            table: "connected_accounts",
            key: "id",
            column: "credentials",
            aad: crate::rows::AAD_CREDENTIALS,
        },
        Table {
            table: "pending_states",
            key: "state_hash",
            column: "data",
            aad: crate::rows::AAD_PENDING,
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
