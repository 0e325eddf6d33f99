//! keyhaven: a connection broker. Connect your users' accounts on other
//! services (API keys, OAuth tokens, logins that return a JWT), keep the
//! credentials encrypted and fresh, and use them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyhaven::Error> {
//! use keyhaven::{ConnectionRequest, Keyhaven, MemoryStore};
//!
//! let kh = Keyhaven::builder().store(MemoryStore::new()).build()?;
//! let out = kh
//!     .entity("alice")?
//!     .initiate_connection(
//!         ConnectionRequest::for_app("openai").scheme("API_KEY").param("api_key", "sk-..."),
//!     )
//!     .await?;
//! let account = kh.connected_accounts().get(out.connected_account_id.as_str()).await?;
//! assert_eq!(account.status, keyhaven::ConnectionStatus::Active);
//! # Ok(()) }
//! ```
//!
//! Cargo features pick the built-in auth schemes: `api-key` (on by default:
//! `API_KEY`, `BEARER_TOKEN`, `BASIC`, `NO_AUTH`). Any other scheme, your own
//! included, is registered on the [`KeyhavenBuilder`].

mod accounts;
mod connect;
mod integrations;
mod registry;

use std::sync::Arc;

pub use accounts::ConnectedAccounts;
pub use connect::Entity;
pub use integrations::{Integrations, NewIntegration};
pub use keyhaven_core::{
    AccountContext, AccountFilter, AppSlug, AuthScheme, Clock, ConnectedAccount,
    ConnectedAccountId, ConnectionRequest, ConnectionRequestOutput, ConnectionStatus, Credentials,
    CredentialsUpdate, EntityId, Error, ErrorKind, FieldKind, FieldSpec, InitiateContext,
    Initiated, Integration, IntegrationId, Label, ManualClock, OutgoingRequest, Page, SchemeError,
    SchemeSpec, SecretFields, Store, StoreError, SystemClock, ValidatedFields,
};
pub use keyhaven_store::MemoryStore;
pub use registry::SchemeRegistry;

/// Re-exported so that users need no direct dependency on these.
pub use keyhaven_core::{async_trait, chrono, http, secrecy, serde_json, url};

/// The keyhaven library: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Keyhaven {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    registry: SchemeRegistry,
    clock: Arc<dyn Clock>,
}

impl Keyhaven {
    /// Starts building a keyhaven.
    pub fn builder() -> KeyhavenBuilder {
        KeyhavenBuilder::default()
    }

    /// A keyhaven that keeps everything in memory, with the default schemes.
    pub fn in_memory() -> Self {
        Self {
            inner: Arc::new(Inner {
                store: Arc::new(MemoryStore::new()),
                registry: SchemeRegistry::with_defaults(),
                clock: Arc::new(SystemClock),
            }),
        }
    }

    /// The registered auth schemes.
    pub fn schemes(&self) -> &SchemeRegistry {
        &self.inner.registry
    }

    /// The store behind this keyhaven.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Integrations: create, get, list, delete.
    pub fn integrations(&self) -> Integrations<'_> {
        Integrations::new(self)
    }

    /// Connected accounts: get, list, delete, enable, disable.
    pub fn connected_accounts(&self) -> ConnectedAccounts<'_> {
        ConnectedAccounts::new(self)
    }

    pub(crate) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.clock.now()
    }
}

impl std::fmt::Debug for Keyhaven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyhaven")
            .field("schemes", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Keyhaven`]: a store, the schemes, a clock.
pub struct KeyhavenBuilder {
    store: Option<Arc<dyn Store>>,
    registry: SchemeRegistry,
    clock: Arc<dyn Clock>,
    error: Option<Error>,
}

impl Default for KeyhavenBuilder {
    fn default() -> Self {
        Self {
            store: None,
            registry: SchemeRegistry::with_defaults(),
            clock: Arc::new(SystemClock),
            error: None,
        }
    }
}

impl std::fmt::Debug for KeyhavenBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyhavenBuilder")
            .field("has_store", &self.store.is_some())
            .field("schemes", &self.registry)
            .finish_non_exhaustive()
    }
}

impl KeyhavenBuilder {
    /// Uses `store`.
    #[must_use]
    pub fn store(self, store: impl Store) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// Uses a store shared with other code.
    #[must_use]
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Registers a scheme, replacing a built-in or earlier one of the same name.
    #[must_use]
    pub fn register(self, scheme: impl AuthScheme) -> Self {
        self.register_shared(Arc::new(scheme))
    }

    /// Registers a shared scheme, replacing one of the same name.
    #[must_use]
    pub fn register_shared(mut self, scheme: Arc<dyn AuthScheme>) -> Self {
        if let Err(e) = self.registry.register(scheme) {
            self.error.get_or_insert(e);
        }
        self
    }

    /// Drops the built-in schemes, so that only those registered after this call exist.
    #[must_use]
    pub fn without_default_schemes(mut self) -> Self {
        self.registry = SchemeRegistry::empty();
        self
    }

    /// Uses another clock (tests of expiry).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds it.
    ///
    /// # Errors
    /// A scheme with an invalid name was registered, or no store was given.
    pub fn build(self) -> Result<Keyhaven, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let store = self.store.ok_or_else(|| {
            Error::invalid(
                "store",
                "no store was given: call .store(MemoryStore::new()) or another store on the builder",
            )
        })?;
        Ok(Keyhaven {
            inner: Arc::new(Inner {
                store,
                registry: self.registry,
                clock: self.clock,
            }),
        })
    }
}
