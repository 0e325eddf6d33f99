//! Identifiers and validated names: entities, apps, labels, integration and account ids.

use std::fmt;
use std::str::FromStr;

use chrono::Utc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// The longest entity id accepted.
pub const ENTITY_ID_MAX_LEN: usize = 128;
/// The longest app slug accepted.
pub const APP_SLUG_MAX_LEN: usize = 64;
/// The longest label accepted, in characters.
pub const LABEL_MAX_LEN: usize = 64;
/// The most labels an account may carry, and so the most a listing may filter by
/// (an account must carry all of them).
pub const LABELS_MAX_COUNT: usize = 32;

fn invalid(field: &'static str, reason: String) -> Error {
    Error::InvalidInput {
        field: field.into(),
        reason,
    }
}

/// Shows a user-supplied value in an error message without letting a huge or
/// multi-line value flood the log: at most 40 characters, escaped.
pub(crate) fn preview(value: &str) -> String {
    let mut out: String = value.chars().take(40).collect();
    if value.chars().count() > 40 {
        out.push('…');
    }
    format!("{out:?}")
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $validate:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, Error> {
                let value = value.into();
                $validate(&value)?;
                Ok(Self(value))
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::new(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn validate_entity(value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > ENTITY_ID_MAX_LEN {
        return Err(invalid(
            "entity_id",
            format!(
                "{} must be 1 to {ENTITY_ID_MAX_LEN} characters long",
                preview(value)
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@:+-".contains(*c)))
    {
        return Err(invalid(
            "entity_id",
            format!(
                "{} contains {bad:?}; use only letters, digits and . _ @ : + -",
                preview(value)
            ),
        ));
    }
    Ok(())
}

fn validate_slug(value: &str) -> Result<(), Error> {
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    let ok_ends = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !value.ends_with(['-', '_']);
    if value.len() > APP_SLUG_MAX_LEN || !ok_chars || !ok_ends {
        return Err(invalid(
            "app",
            format!(
                "{} is not an app slug: use 1 to {APP_SLUG_MAX_LEN} lowercase letters, digits, '-' or '_', starting with a letter or digit (for example \"gmail\")",
                preview(value)
            ),
        ));
    }
    Ok(())
}

fn validate_label(value: &str) -> Result<(), Error> {
    if value.is_empty()
        || value.chars().count() > LABEL_MAX_LEN
        || value.chars().any(|c| c.is_control() || c == ',')
    {
        return Err(invalid(
            "labels",
            format!(
                "{} is not a label: use 1 to {LABEL_MAX_LEN} characters, no commas or control characters",
                preview(value)
            ),
        ));
    }
    Ok(())
}

string_newtype!(
    /// One end user of the app. `"default"` when none is given; 1 to 128
    /// characters of `[A-Za-z0-9._@:+-]`.
    EntityId,
    validate_entity
);

string_newtype!(
    /// A service in the catalogue, such as `gmail`, `github` or `openai`.
    AppSlug,
    validate_slug
);

string_newtype!(
    /// A free-form tag on a connected account, used to filter listings.
    Label,
    validate_label
);

impl EntityId {
    /// The entity used when none is given.
    pub const DEFAULT: &'static str = "default";
}

impl Default for EntityId {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

/// Fills a buffer with random bytes from the operating system.
///
/// # Errors
/// Fails only when the operating system has no randomness to give, which
/// keyhaven treats as fatal for the operation at hand.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(buf)
}

/// Bytes as lowercase hex digits.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `N` random bytes as `2N` lowercase hex digits: tokens, keys, event ids.
///
/// # Errors
/// The system's random source fails.
pub fn random_hex<const N: usize>() -> Result<String, Error> {
    Ok(to_hex(&random_bytes::<N>()?))
}

/// A time-ordered, unguessable id body: 48 bits of milliseconds since the
/// epoch, a 16-bit sequence that orders ids made in the same millisecond by
/// this process, and 64 random bits; 32 lowercase hex digits in all. Ids made
/// later sort after ids made earlier, which gives cursor pagination a stable
/// order; the 64 random bits make them unguessable.
fn new_id_body() -> Result<String, Error> {
    static LAST: std::sync::Mutex<(u64, u16)> = std::sync::Mutex::new((0, 0));
    let now = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let (millis, seq) = {
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *last = if now > last.0 {
            (now, 0)
        } else if last.1 == u16::MAX {
            (last.0 + 1, 0)
        } else {
            (last.0, last.1 + 1)
        };
        *last
    };
    let random = u64::from_le_bytes(random_bytes()?);
    Ok(format!("{millis:012x}{seq:04x}{random:016x}"))
}

macro_rules! prefixed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A new random, time-ordered id.
            ///
            /// # Errors
            /// Only when the operating system has no randomness to give.
            pub fn generate() -> Result<Self, Error> {
                Ok(Self(format!("{}{}", $prefix, new_id_body()?)))
            }

            /// Parses an id given by a user, checking its prefix and shape.
            pub fn parse(value: &str) -> Result<Self, Error> {
                let body = value.strip_prefix($prefix);
                let ok = body.is_some_and(|b| {
                    (8..=64).contains(&b.len())
                        && b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                });
                if ok {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(Error::InvalidInput {
                        field: stringify!($name).into(),
                        reason: format!(
                            "{} is not a valid id: ids look like {}0190a7…",
                            preview(value),
                            $prefix
                        ),
                    })
                }
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// The id of an [`Integration`](crate::Integration): `int_` and 32 hex digits.
    IntegrationId,
    "int_"
);

prefixed_id!(
    /// The id of a [`ConnectedAccount`](crate::ConnectedAccount): `ca_` and 32 hex digits.
    ConnectedAccountId,
    "ca_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(to_hex(&[0, 15, 171, 255]), "000fabff");
        let a = random_hex::<16>().unwrap();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, random_hex::<16>().unwrap());
    }

    #[test]
    fn entity_ids_are_validated() {
        assert_eq!(EntityId::default().as_str(), "default");
        assert!(EntityId::new("alice@example.com").is_ok());
        assert!(EntityId::new("user:42+test-a_b.c").is_ok());
        assert!(EntityId::new("").is_err());
        assert!(EntityId::new("a".repeat(129)).is_err());
        assert!(EntityId::new("a".repeat(128)).is_ok());
        let err = EntityId::new("bad id").unwrap_err().to_string();
        assert!(err.contains("entity_id"), "{err}");
        assert!(err.contains("' '"), "{err}");
    }

    #[test]
    fn slugs_are_lowercase() {
        assert!(AppSlug::new("gmail").is_ok());
        assert!(AppSlug::new("google-drive").is_ok());
        assert!(AppSlug::new("Gmail").is_err());
        assert!(AppSlug::new("").is_err());
        assert!(AppSlug::new("-x").is_err());
        assert!(AppSlug::new("x-").is_err());
    }

    #[test]
    fn ids_sort_by_time_and_differ() {
        let a = ConnectedAccountId::generate().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ConnectedAccountId::generate().unwrap();
        assert!(a < b);
        assert!(a.as_str().starts_with("ca_"));
        assert_eq!(a.as_str().len(), 3 + 32);
        assert_eq!(ConnectedAccountId::parse(a.as_str()).unwrap(), a);
        assert!(ConnectedAccountId::parse("int_0123456789abcdef").is_err());
        assert!(ConnectedAccountId::parse("ca_../../etc").is_err());
        let many: std::collections::HashSet<_> = (0..1000)
            .map(|_| IntegrationId::generate().unwrap())
            .collect();
        assert_eq!(many.len(), 1000);
    }

    #[test]
    fn labels_reject_commas() {
        assert!(Label::new("team:sales").is_ok());
        assert!(Label::new("a,b").is_err());
        assert!(Label::new("").is_err());
    }
}
