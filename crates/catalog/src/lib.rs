//! The app catalogue of keyhaven: for each service, how to authenticate to it —
//! supported schemes, OAuth endpoints and scopes, how an API key is sent, the API's
//! base URL, and the parameters a user gives when connecting (`{subdomain}` ...).
//!
//! The entries are data (`apps/<slug>.toml`, see `FORMAT.md`), embedded at build
//! time. Users add or override apps with files of the same format in a directory
//! of their own ([`Catalog::load_dir`]); the same validation applies.
//! Depends on `keyhaven-core` alone among keyhaven's crates.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use keyhaven_core::url::Url;
use keyhaven_core::{AppSlug, SecretFields};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/apps.rs"));
}

/// The categories an entry may use.
pub const CATEGORIES: &[&str] = &[
    "accounting",
    "ai",
    "analytics",
    "calendar",
    "cloud",
    "communication",
    "crm",
    "databases",
    "design",
    "developer-tools",
    "documents",
    "ecommerce",
    "education",
    "email",
    "finance",
    "forms",
    "hr",
    "identity",
    "marketing",
    "monitoring",
    "payments",
    "productivity",
    "project-management",
    "sales",
    "scheduling",
    "security",
    "social",
    "storage",
    "support",
    "video",
    "music",
    "other",
];

/// The integration config key that declares an integration's connection parameters
/// (`{name: description}`), which fill the `{templates}` of its URLs.
pub const CONNECTION_PARAMS: &str = "connection_params";

/// Why the catalogue or an entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A file does not parse.
    #[error("catalogue file {file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// An entry breaks the rules.
    #[error("catalogue entry {slug}: {}", problems.join("; "))]
    Invalid {
        /// The entry.
        slug: String,
        /// Every rule it breaks.
        problems: Vec<String>,
    },
    /// A directory cannot be read.
    #[error("cannot read the catalogue directory {path}: {message}")]
    Io {
        /// The directory.
        path: String,
        /// What failed.
        message: String,
    },
}

/// OAuth details of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthEntry {
    /// The authorization endpoint (required for `OAUTH2`).
    pub authorize_url: Option<String>,
    /// The token endpoint.
    pub token_url: String,
    /// The RFC 7009 revocation endpoint, when documented.
    pub revocation_url: Option<String>,
    /// Who the user is, when documented.
    pub userinfo_url: Option<String>,
    /// The scopes asked for by default.
    pub default_scopes: Vec<String>,
    /// What joins scopes (a space unless the provider wants a comma).
    pub scope_separator: Option<String>,
    /// Whether to send a PKCE challenge (default true).
    pub pkce: Option<bool>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    pub token_auth_method: Option<String>,
    /// Extra authorization parameters.
    #[serde(default)]
    pub authorize_params: BTreeMap<String, String>,
    /// Extra token parameters.
    #[serde(default)]
    pub token_params: BTreeMap<String, String>,
}

/// How an app takes an API key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// The header (default `Authorization`).
    pub header_name: Option<String>,
    /// The header's value with `{api_key}` (default `Bearer {api_key}`).
    pub header_format: Option<String>,
    /// Send the key as this query parameter instead.
    pub query_param: Option<String>,
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
}

/// One app of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// OAuth details.
    pub oauth2: Option<OAuthEntry>,
    /// API key details.
    pub api_key: Option<ApiKeyEntry>,
    /// Connection parameters.
    #[serde(default)]
    pub params: Vec<ParamEntry>,
    /// Headers every request to the API needs besides the credentials (an API
    /// version, ...); values may use `{templates}`.
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
}

/// The `{names}` a template uses.
pub fn template_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            out.push(name.to_owned());
        }
        rest = &after[end + 1..];
    }
    out
}

/// Fills `{name}` in `text` with `values`; unknown names stay as they are.
pub fn fill_template(text: &str, values: &Map<String, Value>) -> String {
    let mut out = text.to_owned();
    for (name, value) in values {
        if let Some(v) = value.as_str() {
            out = out.replace(&format!("{{{name}}}"), v);
        }
    }
    out
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

    /// Every URL of the entry, by field name.
    pub fn urls(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            ("docs_url", self.docs_url.as_str()),
            ("api_base_url", self.api_base_url.as_str()),
        ];
        if let Some(o) = &self.oauth2 {
            out.push(("oauth2.token_url", o.token_url.as_str()));
            for (k, v) in [
                ("oauth2.authorize_url", &o.authorize_url),
                ("oauth2.revocation_url", &o.revocation_url),
                ("oauth2.userinfo_url", &o.userinfo_url),
            ] {
                if let Some(u) = v {
                    out.push((k, u.as_str()));
                }
            }
        }
        out
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

    /// Checks the entry: `file_slug` is the file's name when it came from a file;
    /// `known_schemes` the registered scheme names.
    ///
    /// # Errors
    /// [`CatalogError::Invalid`] listing every problem.
    pub fn validate(
        &self,
        file_slug: Option<&str>,
        known_schemes: &[&str],
    ) -> Result<(), CatalogError> {
        let mut problems = Vec::new();
        if AppSlug::new(self.slug.as_str()).is_err() {
            problems.push(format!("slug {:?} is not a valid slug", self.slug));
        }
        if let Some(f) = file_slug.filter(|f| *f != self.slug) {
            problems.push(format!(
                "slug {:?} differs from the file name {f:?}",
                self.slug
            ));
        }
        if self.name.trim().is_empty() {
            problems.push("name is empty".into());
        }
        if self.categories.is_empty() {
            problems.push("no category".into());
        }
        for c in self
            .categories
            .iter()
            .filter(|c| !CATEGORIES.contains(&c.as_str()))
        {
            problems.push(format!("unknown category {c:?}"));
        }
        if self.schemes.is_empty() {
            problems.push("no scheme".into());
        }
        for s in self
            .schemes
            .iter()
            .filter(|s| !known_schemes.contains(&s.as_str()))
        {
            problems.push(format!("scheme {s} is not registered"));
        }
        let declared: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
        for p in &self.params {
            if template_names(&format!("{{{}}}", p.name)).is_empty() {
                problems.push(format!(
                    "param name {:?} must be lowercase letters, digits and _",
                    p.name
                ));
            }
            if p.description.trim().is_empty() {
                problems.push(format!("param {} has no description", p.name));
            }
        }
        let examples = self.example_params();
        let mut used = std::collections::BTreeSet::new();
        for (field, url) in self.urls() {
            for name in template_names(url) {
                if !declared.contains(&name.as_str()) {
                    problems.push(format!(
                        "{field} uses {{{name}}}, which is not a declared param"
                    ));
                }
                used.insert(name);
            }
            match Url::parse(&fill_template(url, &examples)) {
                Ok(u) if u.scheme() == "https" && u.has_host() => {}
                _ => problems.push(format!("{field} is not a well-formed https URL: {url}")),
            }
        }
        for (name, value) in &self.request_headers {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                problems.push(format!(
                    "request header name {name:?} is not a valid HTTP header name"
                ));
            }
            if name.eq_ignore_ascii_case("authorization") {
                problems.push("request_headers may not set Authorization: the scheme does".into());
            }
            if value.chars().any(char::is_control) {
                problems.push(format!("request header {name} has a control character"));
            }
            for t in template_names(value) {
                if !declared.contains(&t.as_str()) {
                    problems.push(format!(
                        "request header {name} uses {{{t}}}, which is not a declared param"
                    ));
                }
                used.insert(t);
            }
        }
        for name in declared.iter().filter(|n| !used.contains(**n)) {
            problems.push(format!("param {name} is declared but no URL uses it"));
        }
        let wants_oauth = self.schemes.iter().any(|s| s.starts_with("OAUTH2"));
        match (&self.oauth2, wants_oauth) {
            (None, true) => problems.push("an OAuth scheme without an [oauth2] table".into()),
            (Some(_), false) => problems.push("an [oauth2] table without an OAuth scheme".into()),
            (Some(o), true) => {
                if self.schemes.iter().any(|s| s == "OAUTH2") && o.authorize_url.is_none() {
                    problems.push("OAUTH2 needs oauth2.authorize_url".into());
                }
                if let Some(m) = o
                    .token_auth_method
                    .as_deref()
                    .filter(|m| !["client_secret_basic", "client_secret_post"].contains(m))
                {
                    problems.push(format!("oauth2.token_auth_method {m:?} is not client_secret_basic or client_secret_post"));
                }
                if o.scope_separator.as_deref().is_some_and(str::is_empty) {
                    problems.push("oauth2.scope_separator is empty".into());
                }
                if o.default_scopes
                    .iter()
                    .any(|s| s.is_empty() || s.contains(char::is_whitespace))
                {
                    problems.push("a default scope is empty or has spaces".into());
                }
            }
            (None, false) => {}
        }
        if self.schemes.iter().any(|s| s == "API_KEY") {
            match &self.api_key {
                None => problems.push("API_KEY without an [api_key] table".into()),
                Some(a)
                    if a.query_param.is_none()
                        && !a
                            .header_format
                            .as_deref()
                            .unwrap_or("Bearer {api_key}")
                            .contains("{api_key}") =>
                {
                    problems.push("api_key.header_format lacks {api_key}".into());
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CatalogError::Invalid {
                slug: self.slug.clone(),
                problems,
            })
        }
    }

    /// The scheme to use when a request names none: OAUTH2 where the app supports it
    /// and it is registered, else the app's first registered scheme.
    pub fn preferred_scheme(&self, registered: impl Fn(&str) -> bool) -> Option<&str> {
        self.schemes
            .iter()
            .find(|s| *s == "OAUTH2" && registered(s))
            .or_else(|| self.schemes.iter().find(|s| registered(s)))
            .map(String::as_str)
    }

    /// Whether the app supports `scheme`.
    pub fn supports(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    }

    /// The auth config of an integration of this app with `scheme` (the non-secret
    /// part; client id and secret come from elsewhere), including its base URL and
    /// connection parameters.
    pub fn auth_config(&self, scheme: &str) -> SecretFields {
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
        }
        match (scheme, &self.oauth2, &self.api_key) {
            ("OAUTH2" | "OAUTH2_CLIENT_CREDENTIALS", Some(o), _) => {
                if scheme == "OAUTH2" {
                    if let Some(u) = &o.authorize_url {
                        c.insert("authorize_url", u.clone());
                    }
                    if let Some(p) = o.pkce {
                        c.insert("pkce", p);
                    }
                    if !o.authorize_params.is_empty() {
                        c.insert(
                            "authorize_params",
                            serde_json::to_value(&o.authorize_params).unwrap_or_default(),
                        );
                    }
                }
                c.insert("token_url", o.token_url.clone());
                if let Some(u) = &o.revocation_url {
                    c.insert("revocation_url", u.clone());
                }
                if let Some(s) = &o.scope_separator {
                    c.insert("scope_separator", s.clone());
                }
                if let Some(m) = &o.token_auth_method {
                    c.insert("token_auth_method", m.clone());
                }
                if !o.token_params.is_empty() {
                    c.insert(
                        "token_params",
                        serde_json::to_value(&o.token_params).unwrap_or_default(),
                    );
                }
            }
            ("API_KEY", _, Some(a)) => {
                if let Some(h) = &a.header_name {
                    c.insert("header_name", h.clone());
                }
                if let Some(f) = &a.header_format {
                    c.insert("header_format", f.clone());
                }
                if let Some(q) = &a.query_param {
                    c.insert("query_param", q.clone());
                }
            }
            _ => {}
        }
        c
    }

    /// The scopes an integration with `scheme` asks for.
    pub fn scopes(&self, scheme: &str) -> Vec<String> {
        match (&self.oauth2, scheme.starts_with("OAUTH2")) {
            (Some(o), true) => o.default_scopes.clone(),
            _ => Vec::new(),
        }
    }
}

/// The catalogue: every app by slug.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    apps: BTreeMap<String, Arc<AppEntry>>,
}

impl Catalog {
    /// An empty catalogue.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The embedded entries, parsed (checked against a registry by [`Catalog::validate`]).
    ///
    /// # Errors
    /// An embedded file that does not parse (the tests catch it before release).
    pub fn builtin() -> Result<Self, CatalogError> {
        // Parsed once per process; each caller gets a cheap copy of the map.
        static PARSED: std::sync::OnceLock<Result<Catalog, String>> = std::sync::OnceLock::new();
        let parsed = PARSED.get_or_init(|| {
            let mut catalog = Self::empty();
            for (file, text) in embedded::EMBEDDED {
                let entry = AppEntry::parse(file, text).map_err(|e| e.to_string())?;
                catalog.apps.insert(entry.slug.clone(), Arc::new(entry));
            }
            Ok(catalog)
        });
        parsed.clone().map_err(|message| CatalogError::Parse {
            file: "the built-in catalogue".into(),
            message,
        })
    }

    /// The embedded files: (file name, TOML).
    pub fn builtin_files() -> &'static [(&'static str, &'static str)] {
        embedded::EMBEDDED
    }

    /// Adds or replaces the apps of every `*.toml` in `dir`, each checked as the
    /// embedded ones are. Returns how many were loaded; nothing changes when one fails.
    ///
    /// # Errors
    /// An unreadable directory, or a file that does not parse or is invalid.
    pub fn load_dir(&mut self, dir: &Path, known_schemes: &[&str]) -> Result<usize, CatalogError> {
        let io = |e: std::io::Error| CatalogError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let mut loaded = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let entry = AppEntry::parse(&path.display().to_string(), &text)?;
            entry.validate(path.file_stem().and_then(|s| s.to_str()), known_schemes)?;
            loaded.push(entry);
        }
        let n = loaded.len();
        for entry in loaded {
            self.apps.insert(entry.slug.clone(), Arc::new(entry));
        }
        Ok(n)
    }

    /// Adds or replaces one app.
    pub fn insert(&mut self, entry: AppEntry) {
        self.apps.insert(entry.slug.clone(), Arc::new(entry));
    }

    /// One app.
    pub fn get(&self, slug: &str) -> Option<&Arc<AppEntry>> {
        self.apps.get(slug)
    }

    /// Every app, by slug.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<AppEntry>> {
        self.apps.values()
    }

    /// How many apps.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The apps whose slug, name or a category contains `query` (case-insensitive),
    /// the exact slug first, then slugs starting with it.
    pub fn search(&self, query: &str) -> Vec<&Arc<AppEntry>> {
        let q = query.trim().to_lowercase();
        let mut hits: Vec<&Arc<AppEntry>> = self
            .apps
            .values()
            .filter(|a| {
                q.is_empty()
                    || a.slug.contains(&q)
                    || a.name.to_lowercase().contains(&q)
                    || a.categories.iter().any(|c| c.contains(&q))
            })
            .collect();
        hits.sort_by_key(|a| (a.slug != q, !a.slug.starts_with(&q), a.slug.clone()));
        hits
    }

    /// Every problem of every entry.
    pub fn validate(&self, known_schemes: &[&str]) -> Vec<String> {
        self.apps
            .values()
            .filter_map(|a| a.validate(None, known_schemes).err().map(|e| e.to_string()))
            .collect()
    }
}
