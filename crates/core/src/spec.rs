//! What an auth scheme asks for: its fields, which are secret and which required,
//! and the validation every scheme gets for free.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::ids::preview;
use crate::secret::SecretFields;

/// The type of a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "values", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FieldKind {
    /// Any non-empty string.
    String,
    /// An absolute `http` or `https` URL.
    Url,
    /// `true` or `false` (the strings `"true"`/`"false"` are accepted too).
    Bool,
    /// A whole number (a numeric string is accepted too).
    Integer,
    /// One of the listed strings.
    OneOf(Vec<String>),
    /// A list of strings, or one string with items separated by commas or spaces.
    StringList,
    /// A JSON object.
    Object,
}

/// One field a scheme reads from `connected_account_params` or `auth_config`.
///
/// Made with [`FieldSpec::required`] or [`FieldSpec::optional`] and the builder
/// methods; new properties may be added without breaking scheme crates.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct FieldSpec {
    /// Its key.
    pub name: String,
    /// What it is, for a person filling a form.
    pub description: String,
    /// Its type.
    pub kind: FieldKind,
    /// Whether it is a secret (kept encrypted, never shown).
    pub secret: bool,
    /// Whether it must be given.
    pub required: bool,
    /// The value used when it is not given.
    pub default: Option<Value>,
    /// Given by each deployment, never by a catalogue entry (an OAuth client id and
    /// secret): from the request's `auth_config`, the library's per-app settings, or
    /// the environment as `KEYHAVEN_<APP>_<FIELD>` (`KEYHAVEN_GITHUB_CLIENT_ID`).
    pub per_deployment: bool,
}

impl FieldSpec {
    /// A required, non-secret string field.
    pub fn required(name: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            kind: FieldKind::String,
            secret: false,
            required: true,
            default: None,
            per_deployment: false,
        }
    }

    /// An optional, non-secret string field.
    pub fn optional(name: &str, description: &str) -> Self {
        Self {
            required: false,
            ..Self::required(name, description)
        }
    }

    /// Marks the field secret.
    #[must_use]
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Marks the field as given by each deployment, not by a catalogue entry (see
    /// [`FieldSpec::per_deployment`]).
    #[must_use]
    pub fn per_deployment(mut self) -> Self {
        self.per_deployment = true;
        self
    }

    /// Sets its type.
    #[must_use]
    pub fn kind(mut self, kind: FieldKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets its default (and makes it optional).
    #[must_use]
    pub fn default_value(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self.required = false;
        self
    }

    /// Checks `value` and returns it normalised (booleans and numbers given as strings
    /// are converted, string lists split). `place` names where the field came from.
    pub fn check(&self, place: &str, value: &Value) -> Result<Value, Error> {
        let field = format!("{place}.{}", self.name);
        let shown = |v: &str| {
            if self.secret {
                "the value".to_owned()
            } else {
                preview(v)
            }
        };
        let empty = match value {
            Value::Null => true,
            // A listed value is never empty, even a space (a scope separator).
            Value::String(s) => {
                s.trim().is_empty()
                    && !matches!(&self.kind, FieldKind::OneOf(allowed) if allowed.contains(s))
            }
            Value::Array(a) => a.is_empty(),
            _ => false,
        };
        if empty {
            return Err(Error::invalid(
                field,
                "is empty; give a value or leave the field out",
            ));
        }
        match (&self.kind, value) {
            (FieldKind::String, Value::String(_)) | (FieldKind::Object, Value::Object(_)) => {
                Ok(value.clone())
            }
            (FieldKind::Url, Value::String(s)) => match url::Url::parse(s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                    Ok(value.clone())
                }
                _ => Err(Error::invalid(
                    field,
                    format!("{} is not an absolute http(s) URL", shown(s)),
                )),
            },
            (FieldKind::Bool, Value::Bool(_)) => Ok(value.clone()),
            (FieldKind::Bool, Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(Error::invalid(
                    field,
                    format!("{} is not true or false", shown(s)),
                )),
            },
            (FieldKind::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value.clone()),
            (FieldKind::Integer, Value::String(s)) => {
                s.trim().parse::<i64>().map(Value::from).map_err(|_| {
                    Error::invalid(field, format!("{} is not a whole number", shown(s)))
                })
            }
            (FieldKind::OneOf(allowed), Value::String(s)) => {
                if allowed.iter().any(|a| a == s) {
                    Ok(value.clone())
                } else {
                    Err(Error::invalid(
                        field,
                        format!("{} is not one of: {}", shown(s), allowed.join(", ")),
                    ))
                }
            }
            (FieldKind::StringList, Value::String(s)) => Ok(Value::Array(
                s.split([',', ' '])
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.to_owned()))
                    .collect(),
            )),
            (FieldKind::StringList, Value::Array(items))
                if items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
            {
                Ok(value.clone())
            }
            (kind, _) => Err(Error::invalid(
                field,
                format!("has the wrong type; expected {}", kind_name(kind)),
            )),
        }
    }
}

fn kind_name(kind: &FieldKind) -> &'static str {
    match kind {
        FieldKind::String => "a string",
        FieldKind::Url => "a URL string",
        FieldKind::Bool => "a boolean",
        FieldKind::Integer => "a whole number",
        FieldKind::OneOf(_) => "one of the allowed strings",
        FieldKind::StringList => "a list of non-empty strings",
        FieldKind::Object => "a JSON object",
    }
}

/// What a scheme needs: the fields of the connection (`connected_account_params`)
/// and of the integration (`auth_config`), and how it takes part in the catalogue.
///
/// Made with [`SchemeSpec::new`] and the `with_*` methods; new properties may be added
/// without breaking scheme crates.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SchemeSpec {
    /// A person-readable name: "API key".
    pub display_name: String,
    /// The fields each connection gives.
    pub params: Vec<FieldSpec>,
    /// The fields the integration gives.
    pub config: Vec<FieldSpec>,
    /// Whether the user must take part in a browser (a redirect to the provider),
    /// rather than the fields being typed in.
    pub interactive: bool,
    /// The table of a catalogue entry that holds this scheme's settings for an app
    /// (`oauth2`, `api_key`): its keys are this scheme's `config` fields that are not
    /// [`FieldSpec::per_deployment`], plus `default_scopes` (the scopes an
    /// integration of the app asks for). Schemes that read the same settings name
    /// the same table. `None`: the scheme has no per-app settings.
    pub catalog_table: Option<String>,
}

impl SchemeSpec {
    /// A spec with no fields, not interactive, with no catalogue table.
    pub fn new(display_name: impl Into<String>) -> Self {
        Self {
            display_name: display_name.into(),
            ..Self::default()
        }
    }

    /// Sets the fields each connection gives.
    #[must_use]
    pub fn with_params(mut self, params: Vec<FieldSpec>) -> Self {
        self.params = params;
        self
    }

    /// Sets the fields the integration gives.
    #[must_use]
    pub fn with_config(mut self, config: Vec<FieldSpec>) -> Self {
        self.config = config;
        self
    }

    /// Marks the scheme as needing the user in a browser (a redirect).
    #[must_use]
    pub fn with_user_in_browser(mut self) -> Self {
        self.interactive = true;
        self
    }

    /// Names the catalogue table that holds this scheme's per-app settings.
    #[must_use]
    pub fn with_catalog_table(mut self, table: impl Into<String>) -> Self {
        self.catalog_table = Some(table.into());
        self
    }

    /// The config field `name`, if the scheme has one.
    pub fn config_field(&self, name: &str) -> Option<&FieldSpec> {
        self.config.iter().find(|f| f.name == name)
    }
}

/// Fields checked against a spec, split into the public and the secret ones.
#[derive(Debug, Clone, Default)]
pub struct ValidatedFields {
    /// The non-secret fields, defaults applied.
    pub public: Map<String, Value>,
    /// The secret fields.
    pub secret: SecretFields,
}

impl ValidatedFields {
    /// A field's string value, public or secret. Security: may be a secret.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.public
            .get(key)
            .and_then(Value::as_str)
            .or_else(|| self.secret.get_str(key))
    }
}

/// Checks `input` against `fields`: every key known, every required one present,
/// none empty, each of its type. `place` is how the input is named in errors
/// (`connected_account_params`, `auth_config`). Errors name the field, never a
/// secret value.
pub fn validate_fields(
    fields: &[FieldSpec],
    place: &str,
    input: &SecretFields,
) -> Result<ValidatedFields, Error> {
    let mut out = ValidatedFields::default();
    for key in input.keys() {
        if !fields.iter().any(|f| f.name == key) {
            let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            return Err(Error::invalid(
                format!("{place}.{key}"),
                if known.is_empty() {
                    "is not a known field: this scheme takes no fields here".to_owned()
                } else {
                    format!(
                        "is not a known field; the known fields are: {}",
                        known.join(", ")
                    )
                },
            ));
        }
    }
    for spec in fields {
        let value = match (input.expose().get(&spec.name), &spec.default) {
            (Some(v), _) => spec.check(place, v)?,
            (None, Some(default)) => default.clone(),
            (None, None) if spec.required => {
                return Err(Error::invalid(
                    format!("{place}.{}", spec.name),
                    format!("is required: {}", spec.description),
                ));
            }
            (None, None) => continue,
        };
        if spec.secret {
            out.secret.insert(spec.name.clone(), value);
        } else {
            out.public.insert(spec.name.clone(), value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<FieldSpec> {
        vec![
            FieldSpec::required("api_key", "The key").secret(),
            FieldSpec::optional("region", "Region").default_value("eu"),
            FieldSpec::optional("verbose", "x").kind(FieldKind::Bool),
        ]
    }

    fn input(json: &str) -> SecretFields {
        SecretFields::from_json(json).unwrap()
    }

    #[test]
    fn splits_and_defaults() {
        let v =
            validate_fields(&specs(), "p", &input(r#"{"api_key":"k","verbose":"true"}"#)).unwrap();
        assert_eq!(v.secret.get_str("api_key"), Some("k"));
        assert_eq!(v.public.get("region"), Some(&Value::from("eu")));
        assert_eq!(v.public.get("verbose"), Some(&Value::Bool(true)));
    }

    #[test]
    fn errors_name_the_field() {
        let e = validate_fields(&specs(), "p", &input("{}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.api_key") && e.contains("required"), "{e}");
        let e = validate_fields(&specs(), "p", &input(r#"{"api_key":" "}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.api_key") && e.contains("empty"), "{e}");
        let e = validate_fields(&specs(), "p", &input(r#"{"api_key":"k","nope":1}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.nope") && e.contains("api_key, region"), "{e}");
        let e = validate_fields(&specs(), "p", &input(r#"{"api_key":5}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong type") && !e.contains('5'), "{e}");
    }
}
