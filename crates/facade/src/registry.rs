//! The registry of auth schemes: the built-in ones chosen by cargo features,
//! plus any the user registers.

use std::collections::BTreeMap;
use std::sync::Arc;

use keyhaven_core::{AuthScheme, Error, SchemeSpec};

/// The auth schemes a [`Keyhaven`](crate::Keyhaven) knows, by name.
#[derive(Clone, Default)]
pub struct SchemeRegistry {
    schemes: BTreeMap<String, Registered>,
}

/// A registered scheme, with the spec it gave when it was registered (a scheme's
/// `spec()` is asked once; everything after reads this copy).
#[derive(Clone)]
pub struct Registered {
    scheme: Arc<dyn AuthScheme>,
    spec: Arc<SchemeSpec>,
}

impl Registered {
    /// What the scheme reads and how it takes part in the catalogue.
    pub fn spec(&self) -> &SchemeSpec {
        &self.spec
    }

    /// The scheme, shared.
    pub fn shared(&self) -> &Arc<dyn AuthScheme> {
        &self.scheme
    }
}

impl std::ops::Deref for Registered {
    type Target = dyn AuthScheme;

    fn deref(&self) -> &Self::Target {
        self.scheme.as_ref()
    }
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthScheme({})", self.scheme.name())
    }
}

impl SchemeRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in schemes of the enabled cargo features.
    pub fn with_defaults() -> Self {
        #[allow(unused_mut)]
        let mut registry = Self::empty();
        #[cfg(feature = "api-key")]
        for scheme in keyhaven_api_key::all() {
            registry.insert(scheme);
        }
        #[cfg(feature = "oauth2")]
        for scheme in keyhaven_oauth2::all() {
            registry.insert(scheme);
        }
        #[cfg(feature = "basic-jwt")]
        for scheme in keyhaven_basic_jwt::all() {
            registry.insert(scheme);
        }
        registry
    }

    /// Adds a scheme, replacing a registered one of the same name.
    ///
    /// # Errors
    /// When the name is not SCREAMING_SNAKE_CASE (`A-Z`, `0-9`, `_`, 1 to 64 characters).
    pub fn register(&mut self, scheme: Arc<dyn AuthScheme>) -> Result<(), Error> {
        let name = scheme.name();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_uppercase())
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::invalid(
                "auth scheme name",
                format!(
                    "{name:?} must be 1 to 64 characters of A-Z, 0-9 and _, starting with a letter"
                ),
            ));
        }
        self.insert(scheme);
        Ok(())
    }

    /// Adds a scheme under its name, asking its spec once.
    fn insert(&mut self, scheme: Arc<dyn AuthScheme>) {
        let spec = Arc::new(scheme.spec());
        self.schemes
            .insert(scheme.name().to_owned(), Registered { scheme, spec });
    }

    /// The scheme called `name` (case-insensitive).
    ///
    /// # Errors
    /// [`Error::UnknownScheme`], listing the registered names.
    pub fn get(&self, name: &str) -> Result<&Registered, Error> {
        self.schemes
            .get(&name.to_ascii_uppercase())
            .ok_or_else(|| Error::UnknownScheme {
                name: name.to_owned(),
                available: if self.schemes.is_empty() {
                    "none".to_owned()
                } else {
                    self.names().collect::<Vec<_>>().join(", ")
                },
            })
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.schemes.keys().map(String::as_str)
    }

    /// Every registered scheme's name and spec, sorted by name: what the catalogue
    /// validates its entries and builds integrations with.
    pub fn specs(&self) -> Vec<(&str, &SchemeSpec)> {
        self.schemes
            .iter()
            .map(|(name, scheme)| (name.as_str(), scheme.spec()))
            .collect()
    }

    /// The registered schemes, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Registered> {
        self.schemes.values()
    }
}

impl std::fmt::Debug for SchemeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
