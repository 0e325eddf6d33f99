//! Encryption at rest: AES-256-GCM with a fresh random nonce per write, the key id
//! in the blob's header, and the row's identity as associated data, so a blob
//! copied to another row (or column) fails to decrypt.
//!
//! Blob layout: `b"KH1"`, key id length (1 byte), key id (ASCII), 12-byte nonce,
//! ciphertext with its 16-byte tag.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use keyhaven_core::{StoreError, random_bytes};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

const MAGIC: &[u8; 3] = b"KH1";
const NONCE_LEN: usize = 12;

/// Why a key or a blob cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key is not base64 of 32 bytes.
    #[error(
        "a master key must be 32 bytes in base64 (for example from `openssl rand -base64 32`): {0}"
    )]
    BadKey(String),
    /// The key ring is empty or its primary is missing.
    #[error("the key ring has no primary key {0:?}")]
    NoPrimary(String),
    /// The store holds values encrypted with keys that are not in the key ring: it is
    /// not opened, so that nothing is written under another key while those values
    /// stay unreadable.
    #[error(
        "the store holds {rows} encrypted value(s) under key(s) that are not configured: {} (configured: {}); it was not opened and nothing was written. Give it the old key: put back the master.key that holds it, or set KEYHAVEN_OLD_MASTER_KEYS to the old key (base64, comma-separated for several) next to KEYHAVEN_MASTER_KEY; once it opens, `keyhaven keys rotate` re-encrypts everything under the primary key",
        list_counts(.missing),
        .configured.join(", ")
    )]
    NotConfigured {
        /// Each key id missing from the ring, with how many values it encrypts.
        missing: Vec<(String, u64)>,
        /// How many values in all are encrypted under missing keys.
        rows: u64,
        /// The ids of the keys in the ring.
        configured: Vec<String>,
    },
    /// A data directory's key file is gone while its database holds encrypted values:
    /// no new key is made in its place.
    #[error(
        "the key file {} is missing, but the database next to it holds {rows} encrypted value(s) under key(s) {}; no new key was made and nothing was written. Put back the master.key that holds that key (from a backup), or set KEYHAVEN_MASTER_KEY to it (base64); once it opens, `keyhaven keys rotate` moves everything to a new key",
        .path.display(),
        list_counts(.missing)
    )]
    KeyFileMissing {
        /// Where the key file should be.
        path: std::path::PathBuf,
        /// Each key id the database needs, with how many values it encrypts.
        missing: Vec<(String, u64)>,
        /// How many values in all.
        rows: u64,
    },
}

/// `k1 (3 values), k2 (1 value)`.
fn list_counts(counts: &[(String, u64)]) -> String {
    counts
        .iter()
        .map(|(id, n)| format!("{id} ({n} value{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One AES-256 key and its id.
pub struct MasterKey {
    id: String,
    bytes: Zeroizing<[u8; 32]>,
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Result<Self, StoreError> {
        let bytes: [u8; 32] = random_bytes().map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Self::from_bytes(bytes))
    }

    /// A key from its 32 bytes; its id is derived from them.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"keyhaven key id\0")
            .chain_update(bytes)
            .finalize();
        let id = format!("k{}", keyhaven_core::to_hex(&digest[..4]));
        let key = Self {
            id,
            bytes: Zeroizing::new(bytes),
        };
        bytes.zeroize();
        key
    }

    /// A key from base64 (standard alphabet, padding optional).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
        let mut raw = Zeroizing::new(
            engine
                .decode(text.trim().trim_end_matches('='))
                .map_err(|e| KeyError::BadKey(e.to_string()))?,
        );
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::BadKey(format!("it decodes to {} bytes", raw.len())))?;
        raw.zeroize();
        Ok(Self::from_bytes(bytes))
    }

    /// The key in base64. Security: a secret.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*self.bytes))
    }

    /// Its id, as written in the blobs it encrypts.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, [redacted])", self.id)
    }
}

/// The keys a store can decrypt with, and the primary one it encrypts with.
#[derive(Clone)]
pub struct KeyRing {
    primary: String,
    ciphers: BTreeMap<String, Aes256Gcm>,
}

impl KeyRing {
    /// A ring that encrypts with `primary` and also decrypts with `older`.
    pub fn new(primary: MasterKey, older: impl IntoIterator<Item = MasterKey>) -> Self {
        let mut ciphers = BTreeMap::new();
        for key in older
            .into_iter()
            .chain(std::iter::once(primary.clone_key()))
        {
            ciphers.insert(key.id.clone(), Aes256Gcm::new((&*key.bytes).into()));
        }
        Self {
            primary: primary.id,
            ciphers,
        }
    }

    /// A ring of this one's primary key alone: what is left once the older keys are
    /// retired.
    pub fn only_primary(&self) -> Self {
        Self {
            primary: self.primary.clone(),
            ciphers: self
                .ciphers
                .iter()
                .filter(|(id, _)| **id == self.primary)
                .map(|(id, cipher)| (id.clone(), cipher.clone()))
                .collect(),
        }
    }

    /// This ring, also decrypting with the keys of `older` that it lacks: what a
    /// running store keeps when its key file changes, so that nothing it could read
    /// becomes unreadable to it.
    #[cfg(feature = "sqlite")]
    pub(crate) fn keeping(mut self, older: &Self) -> Self {
        for (id, cipher) in &older.ciphers {
            self.ciphers
                .entry(id.clone())
                .or_insert_with(|| cipher.clone());
        }
        self
    }

    /// The id of the key new writes use.
    pub fn primary_id(&self) -> &str {
        &self.primary
    }

    /// The ids of every key in the ring.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.ciphers.keys().map(String::as_str)
    }

    /// Encrypts `plaintext` for the row named by `aad`.
    pub fn encrypt(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let cipher = self.ciphers.get(&self.primary).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the primary key {} is not in the key ring",
                self.primary
            ))
        })?;
        let nonce: [u8; NONCE_LEN] =
            random_bytes().map_err(|e| StoreError::Backend(Box::new(e)))?;
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Corrupt("encryption failed".into()))?;
        let mut out =
            Vec::with_capacity(MAGIC.len() + 1 + self.primary.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.push(self.primary.len() as u8);
        out.extend_from_slice(self.primary.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Whether the key `blob` names is in the ring (a blob naming none is not ours:
    /// decrypting it says so).
    #[cfg(feature = "sqlite")]
    pub(crate) fn knows(&self, blob: &[u8]) -> bool {
        Self::key_id_of(blob).is_none_or(|id| self.ciphers.contains_key(id))
    }

    /// The key id written in a blob's header.
    pub fn key_id_of(blob: &[u8]) -> Option<&str> {
        let rest = blob.strip_prefix(MAGIC)?;
        let (&len, rest) = rest.split_first()?;
        rest.get(..len as usize)
            .and_then(|id| std::str::from_utf8(id).ok())
    }

    /// Decrypts a blob written for the row named by `aad`.
    ///
    /// # Errors
    /// A blob that is not ours, a key id not in the ring, or a blob that fails
    /// authentication (wrong key, another row's blob, tampering): each says which
    /// key id it concerns, never garbage.
    pub fn decrypt(&self, aad: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let id = Self::key_id_of(blob)
            .ok_or_else(|| StoreError::Corrupt(format!("{aad}: not a keyhaven encrypted value")))?;
        let cipher = self.ciphers.get(id).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{aad} is encrypted with key {id}, which is not configured (configured: {}); add that key to the key ring",
                self.key_ids().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let start = MAGIC.len() + 1 + id.len();
        let nonce = blob.get(start..start + NONCE_LEN).ok_or_else(|| {
            StoreError::Corrupt(format!("{aad}: the encrypted value is truncated"))
        })?;
        let sealed = &blob[start + NONCE_LEN..];
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
            .map(Zeroizing::new)
            .map_err(|_| {
                StoreError::Corrupt(format!(
                    "{aad} cannot be decrypted with key {id}: the key is wrong or the value belongs to another row"
                ))
            })
    }
}

impl MasterKey {
    pub(crate) fn clone_key(&self) -> Self {
        Self {
            id: self.id.clone(),
            bytes: Zeroizing::new(*self.bytes),
        }
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("primary", &self.primary)
            .field("keys", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let ring = KeyRing::new(MasterKey::generate().unwrap(), []);
        let blob = ring.encrypt("accounts:ca_1", b"secret").unwrap();
        assert_eq!(&*ring.decrypt("accounts:ca_1", &blob).unwrap(), b"secret");
        assert_eq!(KeyRing::key_id_of(&blob), Some(ring.primary_id()));
        let err = ring
            .decrypt("accounts:ca_2", &blob)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(ring.primary_id()) && err.contains("another row"),
            "{err}"
        );
        let again = ring.encrypt("accounts:ca_1", b"secret").unwrap();
        assert_ne!(blob, again, "a fresh nonce per write");
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(ring.decrypt("accounts:ca_1", &tampered).is_err());
    }

    #[test]
    fn wrong_and_missing_keys_are_named() {
        let a = MasterKey::generate().unwrap();
        let a_id = a.id().to_owned();
        let a_b64 = a.to_base64();
        let ring_a = KeyRing::new(a, []);
        let blob = ring_a.encrypt("x", b"v").unwrap();
        let ring_b = KeyRing::new(MasterKey::generate().unwrap(), []);
        let err = ring_b.decrypt("x", &blob).unwrap_err().to_string();
        assert!(
            err.contains(&a_id) && err.contains("not configured"),
            "{err}"
        );
        // After rotation the ring holds both: old blobs still read, new ones use the new key.
        let a_again = MasterKey::from_base64(&a_b64).unwrap();
        let new = MasterKey::generate().unwrap();
        let new_id = new.id().to_owned();
        let rotated = KeyRing::new(new, [a_again]);
        assert_eq!(&*rotated.decrypt("x", &blob).unwrap(), b"v");
        assert_eq!(
            KeyRing::key_id_of(&rotated.encrypt("x", b"v").unwrap()),
            Some(new_id.as_str())
        );
    }

    #[test]
    fn keys_parse_from_base64() {
        let k = MasterKey::generate().unwrap();
        let again = MasterKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(k.id(), again.id());
        assert!(
            MasterKey::from_base64("dG9vIHNob3J0")
                .unwrap_err()
                .to_string()
                .contains("32 bytes")
        );
        assert!(MasterKey::from_base64("!!!").is_err());
        assert!(!format!("{k:?}").contains(&*k.to_base64()));
    }
}
