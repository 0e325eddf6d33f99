//! Secret values: credential fields that are redacted in `Debug`, never `Display`ed or
//! serialized by accident, and wiped from memory when dropped.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::{CloneableSecret, ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use zeroize::Zeroize;

use crate::error::Error;

/// A JSON object whose values are secret: API keys, passwords, tokens.
///
/// `Debug` shows the keys and hides every value. There is no `Display` and no
/// `Serialize`; the only way to the values is [`SecretFields::expose`], whose
/// callers take responsibility for not leaking them. Strings are zeroized on
/// drop.
#[derive(Clone, Default, PartialEq)]
pub struct SecretFields(Map<String, Value>);

fn zeroize_value(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(zeroize_value),
        Value::Object(map) => zeroize_map(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn zeroize_map(map: &mut Map<String, Value>) {
    for (mut key, mut value) in std::mem::take(map) {
        key.zeroize();
        zeroize_value(&mut value);
    }
}

impl Zeroize for SecretFields {
    fn zeroize(&mut self) {
        zeroize_map(&mut self.0);
    }
}

impl CloneableSecret for SecretFields {}

impl Drop for SecretFields {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl SecretFields {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps a JSON object.
    pub fn from_map(map: Map<String, Value>) -> Self {
        Self(map)
    }

    /// Parses a JSON text that must hold an object. The error never quotes the text.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(Error::invalid("secret fields", "must be a JSON object")),
            Err(e) => Err(Error::invalid(
                "secret fields",
                format!(
                    "are not valid JSON ({:?} error at line {}, column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )),
        }
    }

    /// The JSON text of the object, itself kept secret.
    pub fn to_json(&self) -> SecretString {
        // Serializing a Map of Values cannot fail.
        SecretString::from(serde_json::to_string(&self.0).unwrap_or_default())
    }

    /// Security: the values are secrets. Do not log, display or serialize them.
    pub fn expose(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The string value of `key`, if present and a string.
    ///
    /// Security: the value is a secret.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        if let Some(mut old) = self.0.insert(key.into(), value.into()) {
            zeroize_value(&mut old);
        }
    }

    /// Removes `key`, returning whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.0.remove(key) {
            Some(mut old) => {
                zeroize_value(&mut old);
                true
            }
            None => false,
        }
    }

    /// The keys, which are not secret.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for k in self.0.keys() {
            m.entry(k, &format_args!("[redacted]"));
        }
        m.finish()
    }
}

impl<'de> Deserialize<'de> for SecretFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through Value, so that a wrong shape is reported without quoting the secret.
        match Value::deserialize(d)? {
            Value::Object(map) => Ok(Self(map)),
            Value::Null => Ok(Self::default()),
            mut other => {
                zeroize_value(&mut other);
                Err(serde::de::Error::custom("expected a JSON object of fields"))
            }
        }
    }
}

/// The credentials of a connected account: a secret JSON object plus its expiry.
///
/// The object is open so that third-party schemes can keep what they need;
/// each scheme crate reads it through typed views. Kept in a [`SecretBox`]:
/// redacted `Debug`, no `Display`, no `Serialize`, zeroized when the last clone
/// is dropped. Clones share one copy (cloning is a reference count), so handing
/// out cached credentials costs no allocation.
#[derive(Clone)]
pub struct Credentials {
    fields: Arc<SecretBox<SecretFields>>,
    expires_at: Option<DateTime<Utc>>,
}

impl Credentials {
    /// Credentials from secret fields, expiring at `expires_at` (`None`: never).
    pub fn new(fields: SecretFields, expires_at: Option<DateTime<Utc>>) -> Self {
        Self {
            fields: Arc::new(SecretBox::new(Box::new(fields))),
            expires_at,
        }
    }

    /// Credentials that never expire.
    pub fn without_expiry(fields: SecretFields) -> Self {
        Self::new(fields, None)
    }

    /// Security: the fields are secrets. Do not log, display or serialize them.
    pub fn expose(&self) -> &SecretFields {
        self.fields.expose_secret()
    }

    /// The string field `key`, if present. Security: the value is a secret.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.expose().get_str(key)
    }

    /// When these credentials stop working, if they do.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// Whether they expire within `margin` of `now`.
    pub fn expires_within(&self, now: DateTime<Utc>, margin: chrono::Duration) -> bool {
        self.expires_at.is_some_and(|at| at - margin <= now)
    }

    /// The names of the fields, which are not secret.
    pub fn field_names(&self) -> Vec<String> {
        self.expose().keys().map(str::to_owned).collect()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("fields", self.expose())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        self.expires_at == other.expires_at && self.expose() == other.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_values() {
        let mut f = SecretFields::new();
        f.insert("api_key", "sk-very-secret");
        let c = Credentials::without_expiry(f);
        let dbg = format!("{c:?}");
        assert!(dbg.contains("api_key"), "{dbg}");
        assert!(!dbg.contains("sk-very-secret"), "{dbg}");
        assert_eq!(c.get_str("api_key"), Some("sk-very-secret"));
    }

    #[test]
    fn zeroize_empties() {
        let mut f = SecretFields::from_json(r#"{"a":"x","b":{"c":["y"]}}"#).unwrap();
        f.zeroize();
        assert!(f.is_empty());
    }

    #[test]
    fn json_round_trip() {
        let f = SecretFields::from_json(r#"{"token":"t","n":3}"#).unwrap();
        let text = f.to_json();
        let back = SecretFields::from_json(text.expose_secret()).unwrap();
        assert_eq!(back, f);
        for bad in ["\"sk-leak\"", "{\"a\": sk-leak}", "[\"sk-leak\"]"] {
            let err = SecretFields::from_json(bad).unwrap_err().to_string();
            assert!(!err.contains("sk-leak"), "{err}");
        }
        let err = serde_json::from_str::<SecretFields>("\"sk-leak\"")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-leak"), "{err}");
    }
}
