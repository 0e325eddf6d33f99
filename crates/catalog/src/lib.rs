//! The app catalogue of keyhaven: for each service, how to authenticate to it —
//! supported schemes, the API's base URL, the parameters a user gives when connecting
//! (`{subdomain}` ...), and one table of settings per scheme family (`[oauth2]`:
//! endpoints and scopes; `[api_key]`: how the key is sent).
//!
//! The entries are data (`apps/<slug>.toml`, see `FORMAT.md`), embedded at build
//! time. Users add or override apps with files of the same format in a directory
//! of their own ([`Catalog::load_dir`]); the same validation applies.
//!
//! This crate knows no scheme by name: a scheme's table, and what it may hold, come
//! from the scheme's own [`SchemeSpec`] (`catalog_table`, its `config` fields), which
//! the caller passes in ([`Specs`]). A third-party scheme takes part the same way.
//! Depends on `keyhaven-core` alone among keyhaven's crates.

mod catalog;
mod entry;
mod template;
mod validate;

pub use catalog::Catalog;
pub use entry::{AppEntry, DEFAULT_SCOPES, ParamEntry};
pub use template::{fill_template, template_names};

use keyhaven_core::SchemeSpec;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/apps.rs"));
}

/// The registered schemes, by name, as validation and translation need them.
pub type Specs<'a> = [(&'a str, &'a SchemeSpec)];

/// The spec of `name` in `specs`.
pub(crate) fn spec_of<'a>(specs: &Specs<'a>, name: &str) -> Option<&'a SchemeSpec> {
    specs.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
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

/// The integration config key that lists the values connection parameters may take
/// (`{name: [values]}`), for those the provider has a fixed list of.
pub const CONNECTION_PARAM_VALUES: &str = "connection_param_values";

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
