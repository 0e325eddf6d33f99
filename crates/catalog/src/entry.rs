//! One app of the catalogue, and what an integration of it is made from.

use std::collections::BTreeMap;

use keyhaven_core::{SchemeSpec, SecretFields};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{CONNECTION_PARAM_VALUES, CONNECTION_PARAMS, CatalogError};

/// The key of a scheme table that lists the scopes an integration asks for by
/// default (the integration's `scopes`, not a config field).
pub const DEFAULT_SCOPES: &str = "default_scopes";

/// One app of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppEntry {
    /// Its slug, equal to the file name.
    pub slug: String,
    /// Its display name.
    pub name: String,
    /// Its categories.
    pub categories: Vec<String>,
    /// The API's auth documentation.
    pub docs_url: String,
    /// Supported schemes, most preferred first.
    pub schemes: Vec<String>,
    /// The API's base URL, perhaps with `{templates}`.
    pub api_base_url: String,
    /// Connection parameters.
    #[serde(default)]
    pub params: Vec<ParamEntry>,
    /// Headers every request to the API needs besides the credentials (an API
    /// version, ...); values may use `{templates}`.
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// The schemes' per-app settings, one table each, named by the schemes'
    /// [`SchemeSpec::catalog_table`] (`oauth2`, `api_key` ...): config fields of the
    /// schemes that read the table, and [`DEFAULT_SCOPES`]. Checked by
    /// [`AppEntry::validate`] against those specs.
    #[serde(flatten)]
    pub settings: BTreeMap<String, Map<String, Value>>,
}

/// A parameter the user gives when connecting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamEntry {
    /// Its name, as used in `{templates}`.
    pub name: String,
    /// What to type, for a person.
    pub description: String,
    /// An example value.
    pub example: Option<String>,
    /// The values it may take, when the provider has a fixed list of them (such as
    /// data centres); any value of the allowed characters when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

impl AppEntry {
    /// Parses one file's TOML.
    ///
    /// # Errors
    /// [`CatalogError::Parse`] naming the file.
    pub fn parse(file: &str, text: &str) -> Result<Self, CatalogError> {
        toml::from_str(text).map_err(|e| CatalogError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })
    }

    /// The settings table a scheme with `spec` reads, if the entry has it.
    pub fn table(&self, spec: &SchemeSpec) -> Option<&Map<String, Value>> {
        spec.catalog_table
            .as_deref()
            .and_then(|t| self.settings.get(t))
    }

    /// A string setting of the table a scheme with `spec` reads.
    pub fn setting(&self, spec: &SchemeSpec, key: &str) -> Option<&str> {
        self.table(spec)
            .and_then(|t| t.get(key))
            .and_then(Value::as_str)
    }

    /// Example values of the parameters, for checks and previews.
    pub fn example_params(&self) -> Map<String, Value> {
        self.params
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Value::from(p.example.clone().unwrap_or_else(|| "example".into())),
                )
            })
            .collect()
    }

    /// The scheme to use when a request names none: the first of the entry's
    /// schemes (listed most preferred first) that is registered.
    pub fn preferred_scheme(&self, registered: impl Fn(&str) -> bool) -> Option<&str> {
        self.schemes
            .iter()
            .find(|s| registered(s))
            .map(String::as_str)
    }

    /// Whether the app supports `scheme`.
    pub fn supports(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    }

    /// The auth config of an integration of this app with a scheme of `spec`: the
    /// base URL, request headers and connection parameters every integration takes,
    /// and the settings of the scheme's table that are its config fields (the
    /// per-deployment ones, such as an OAuth client, come from elsewhere).
    pub fn auth_config(&self, spec: &SchemeSpec) -> SecretFields {
        let mut c = SecretFields::new();
        c.insert("base_url", self.api_base_url.clone());
        if !self.request_headers.is_empty() {
            c.insert(
                "request_headers",
                serde_json::to_value(&self.request_headers).unwrap_or_default(),
            );
        }
        if !self.params.is_empty() {
            let params: Map<String, Value> = self
                .params
                .iter()
                .map(|p| (p.name.clone(), Value::from(p.description.clone())))
                .collect();
            c.insert(CONNECTION_PARAMS, Value::Object(params));
            let values: Map<String, Value> = self
                .params
                .iter()
                .filter(|p| !p.allowed.is_empty())
                .map(|p| (p.name.clone(), Value::from(p.allowed.clone())))
                .collect();
            if !values.is_empty() {
                c.insert(CONNECTION_PARAM_VALUES, Value::Object(values));
            }
        }
        for (key, value) in self.table(spec).into_iter().flatten() {
            if spec.config_field(key).is_some_and(|f| !f.per_deployment) {
                c.insert(key.clone(), value.clone());
            }
        }
        c
    }

    /// The scopes an integration with a scheme of `spec` asks for by default.
    pub fn scopes(&self, spec: &SchemeSpec) -> Vec<String> {
        self.table(spec)
            .and_then(|t| t.get(DEFAULT_SCOPES))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}
