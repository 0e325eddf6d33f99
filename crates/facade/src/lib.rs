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
//! Cargo features pick the built-in auth schemes, all on by default: `api-key`
//! (`API_KEY`, `BEARER_TOKEN`, `BASIC`, `NO_AUTH`), `oauth2` (`OAUTH2`,
//! `OAUTH2_CLIENT_CREDENTIALS`) and `basic-jwt` (`BASIC_WITH_JWT`,
//! `SERVICE_ACCOUNT`, `GOOGLE_SERVICE_ACCOUNT`). Any other scheme, your own included,
//! is registered on the [`KeyhavenBuilder`]. Stores: `sqlite` (default; the embedded
//! store in `./keyhaven-data` or `KEYHAVEN_DATA_DIR` when no store is given) and
//! `postgres` ([`PostgresStore`], for many instances on one database).

mod accounts;
pub mod audit;
mod cache;
mod callback;
mod connect;
pub mod egress;
mod events;
mod form;
mod integrations;
mod link;
mod metered;
mod refresh;
mod registry;
pub mod request;

use std::sync::Arc;
use std::time::Duration;

use keyhaven_core::StoreChange;
use url::Url;

pub use accounts::ConnectedAccounts;
pub use audit::{AuditAction, AuditCaller, AuditEntry, AuditError, AuditLog, AuditQuery};
pub use callback::CallbackOutcome;
pub use connect::Entity;
pub use form::ConnectForm;
pub use integrations::{IntegrationUpdate, Integrations, NewIntegration};
pub use keyhaven_catalog::{
    AppEntry, CONNECTION_PARAMS, Catalog, CatalogError, fill_template, template_names,
};
pub use keyhaven_core::{
    AccountContext, AccountEvent, AccountFilter, AppSlug, AuditLine, AuthScheme, Clock,
    ConnectedAccount, ConnectedAccountId, ConnectionRequest, ConnectionRequestOutput,
    ConnectionStatus, Credentials, CredentialsUpdate, Delivery, DeliveryFilter, DeliveryOutcome,
    DeliveryState, EntityId, Error, ErrorKind, EventKind, FieldKind, FieldSpec, InitiateContext,
    Initiated, Integration, IntegrationId, LABELS_MAX_COUNT, Label, ManualClock, OutgoingRequest,
    Page, SchemeError, SchemeSpec, SecretFields, Store, StoreError, SystemClock, ValidatedFields,
    WebhookTarget,
};
#[cfg(feature = "postgres")]
pub use keyhaven_store::PostgresStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use keyhaven_store::RotationReport;
#[cfg(feature = "kms")]
pub use keyhaven_store::kms;
#[cfg(feature = "sqlite")]
pub use keyhaven_store::{DB_FILE, SqliteStore};
pub use keyhaven_store::{
    KEY_FILE_CHECK, KeyError, KeyFile, KeyRing, MASTER_KEY_COMMAND_ENV, MASTER_KEY_ENV, MasterKey,
    MemoryStore, OLD_KEYS_ENV, files, ring_from_base64, ring_from_command, ring_from_env,
};
pub use link::{ConnectionLink, LinkPage};
pub use registry::{Registered, SchemeRegistry};
pub use request::ApiRequest;

/// The environment variable naming a directory of extra catalogue entries.
pub const CATALOG_DIR_ENV: &str = "KEYHAVEN_CATALOG_DIR";

/// Re-exported so that users need no direct dependency on these: the crates whose
/// types keyhaven's API uses, in the versions it was built with.
pub use keyhaven_core::{async_trait, random_bytes, random_hex, to_hex};
pub use {bytes, chrono, http, reqwest, secrecy, serde_json, url};

/// The keyhaven library: cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Keyhaven {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    registry: SchemeRegistry,
    clock: Arc<dyn Clock>,
    settings: Settings,
    refresher: refresh::Refresher,
    cache: Arc<cache::CredentialCache>,
    /// Set when the clock is the system clock: cached reads are timed by it.
    fast_clock: Option<cache::FastClock>,
    /// When expired pending states were last purged (Unix seconds).
    last_purge: std::sync::atomic::AtomicI64,
    catalog: Arc<Catalog>,
    events: events::EventBus,
    /// The HTTP client of requests (and of the built-in schemes).
    http: reqwest::Client,
    /// The clients for hosts typed by end users, by the names they guard (see
    /// `request::Guarding`), so that each such host keeps its connections.
    guarding: request::GuardingClients,
    /// Where uses of credentials are recorded.
    audit: AuditLog,
}

/// Where keyhaven's OAuth callback is, when no other is configured: the server's
/// default address.
pub const DEFAULT_CALLBACK_URL: &str = "http://127.0.0.1:9210/api/v1/oauth/callback";

/// Reads served from the cache (`hits`) and not (`misses`), see
/// [`Keyhaven::credential_cache_counts`] and [`Keyhaven::listing_cache_counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheCounts {
    /// Served from memory.
    pub hits: u64,
    /// Read from the store, or refreshed.
    pub misses: u64,
}

/// How many days events are kept by default ([`KeyhavenBuilder::event_retention`]).
pub const DEFAULT_EVENT_RETENTION_DAYS: i64 = 7;

/// The tunable parts of a [`Keyhaven`].
#[derive(Debug, Clone)]
struct Settings {
    callback_url: Url,
    refresh_margin: chrono::Duration,
    pending_ttl: chrono::Duration,
    event_retention: chrono::Duration,
    redirect_allowlist: Vec<Url>,
    connect_form_url: Option<Url>,
    cache_capacity: usize,
    /// The HTTP client, when the builder was given one.
    http: Option<reqwest::Client>,
    /// The host name resolver, when the builder was given one.
    resolver: Option<request::Resolver>,
    /// How long an API may stay silent while it answers a request.
    read_timeout: Duration,
    /// The audit log.
    audit: AuditLog,
    /// Client id and secret per app, for integrations created from the catalogue.
    app_credentials: std::collections::BTreeMap<String, (String, Option<secrecy::SecretString>)>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            callback_url: default_callback_url(),
            refresh_margin: chrono::Duration::minutes(5),
            pending_ttl: chrono::Duration::minutes(10),
            event_retention: chrono::Duration::days(DEFAULT_EVENT_RETENTION_DAYS),
            redirect_allowlist: Vec::new(),
            connect_form_url: None,
            cache_capacity: 10_000,
            http: None,
            resolver: None,
            read_timeout: request::READ_TIMEOUT,
            audit: AuditLog::log_only(),
            app_credentials: std::collections::BTreeMap::new(),
        }
    }
}

#[allow(clippy::expect_used)]
fn default_callback_url() -> Url {
    // A constant, checked by a test: it cannot fail.
    Url::parse(DEFAULT_CALLBACK_URL).expect("DEFAULT_CALLBACK_URL parses")
}

impl Keyhaven {
    /// Starts building a keyhaven.
    pub fn builder() -> KeyhavenBuilder {
        KeyhavenBuilder::default()
    }

    /// A keyhaven that keeps everything in memory, with the default schemes and settings.
    pub fn in_memory() -> Self {
        Self::assemble(
            Arc::new(MemoryStore::new()),
            SchemeRegistry::with_defaults(),
            None,
            Settings::default(),
            Arc::new(Catalog::builtin().unwrap_or_default()),
        )
    }

    /// The app catalogue.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// A per-deployment setting of `app` (a field marked
    /// [`FieldSpec::per_deployment`](keyhaven_core::FieldSpec::per_deployment), such
    /// as an OAuth client): the builder's [`KeyhavenBuilder::app_credentials`] for
    /// `client_id` and `client_secret`, else the environment's
    /// `KEYHAVEN_<APP>_<FIELD>` (`KEYHAVEN_GITHUB_CLIENT_ID`).
    pub(crate) fn app_setting(&self, app: &str, field: &str) -> Option<String> {
        use secrecy::ExposeSecret;
        if let Some((id, secret)) = self.inner.settings.app_credentials.get(app) {
            match field {
                "client_id" => return Some(id.clone()),
                "client_secret" => return secret.as_ref().map(|s| s.expose_secret().to_owned()),
                _ => {}
            }
        }
        std::env::var(app_setting_var(app, field))
            .ok()
            .filter(|v| !v.is_empty())
    }

    /// `clock`: `None` for the system clock.
    fn assemble(
        store: Arc<dyn Store>,
        registry: SchemeRegistry,
        clock: Option<Arc<dyn Clock>>,
        mut settings: Settings,
        catalog: Arc<Catalog>,
    ) -> Self {
        let cache = cache::CredentialCache::new(settings.cache_capacity);
        let store: Arc<dyn Store> = Arc::new(metered::Metered {
            store,
            cache: cache.clone(),
        });
        let fast_clock = clock.is_none().then(cache::FastClock::new);
        let clock = clock.unwrap_or_else(|| Arc::new(SystemClock));
        let feed = cache.clone();
        let events = events::EventBus::new();
        let bus = events.clone();
        // Kept once, in `Inner`, not also in its settings.
        let http = settings
            .http
            .take()
            .unwrap_or_else(|| request::client_with(settings.resolver.as_ref()));
        let audit = std::mem::take(&mut settings.audit);
        store.subscribe(Arc::new(move |change| match change {
            StoreChange::Event(event) => bus.relay_foreign(event),
            change => feed.apply(change),
        }));
        Self {
            inner: Arc::new(Inner {
                store,
                registry,
                clock,
                settings,
                refresher: refresh::Refresher::default(),
                cache,
                fast_clock,
                last_purge: std::sync::atomic::AtomicI64::new(0),
                catalog,
                events,
                http,
                guarding: request::GuardingClients::default(),
                audit,
            }),
        }
    }

    /// The OAuth callback URL that redirects name.
    pub fn callback_url(&self) -> &Url {
        &self.inner.settings.callback_url
    }

    /// The registered auth schemes.
    pub fn schemes(&self) -> &SchemeRegistry {
        &self.inner.registry
    }

    /// How many credential reads ([`ConnectedAccounts::credentials`]) this keyhaven
    /// served from its cache, and how many it read from the store (or refreshed),
    /// since it was built.
    pub fn credential_cache_counts(&self) -> CacheCounts {
        let (hits, misses) = self.inner.cache.reads.totals();
        CacheCounts { hits, misses }
    }

    /// How many listings by one entity ([`ConnectedAccounts::list_cached`],
    /// [`ConnectedAccounts::count_cached`]) this keyhaven served from its copies,
    /// and how many it read from the store, since it was built.
    pub fn listing_cache_counts(&self) -> CacheCounts {
        let (hits, misses) = self.inner.cache.listing_reads.totals();
        CacheCounts { hits, misses }
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

    /// The time by this keyhaven's clock (the system's, unless the builder was given
    /// another): the time its events, expiries and deliveries are stamped with.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.clock.now()
    }

    /// Where uses of credentials are recorded: every [`Keyhaven::request`], and what
    /// the server and the CLI record (credential reads, tokens printed).
    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
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
    clock: Option<Arc<dyn Clock>>,
    settings: Settings,
    catalog: Option<Catalog>,
    catalog_dirs: Vec<std::path::PathBuf>,
    error: Option<Error>,
}

impl Default for KeyhavenBuilder {
    fn default() -> Self {
        Self {
            store: None,
            registry: SchemeRegistry::with_defaults(),
            clock: None,
            settings: Settings::default(),
            catalog: None,
            catalog_dirs: Vec::new(),
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
        self.clock = Some(clock);
        self
    }

    /// Where providers send users back after an OAuth redirect: keyhaven's callback
    /// route as the world reaches it. Default: [`DEFAULT_CALLBACK_URL`].
    #[must_use]
    pub fn callback_url(mut self, url: &str) -> Self {
        match parse_http_url("callback_url", url) {
            Ok(u) => self.settings.callback_url = u,
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Where keyhaven's hosted connect form is, as the world reaches it (the server's
    /// `/connect` page). With it, initiating a non-OAuth connection (API key, login)
    /// without the fields the user must type answers with a `redirectUrl` to that form
    /// instead of an error: the end user types the secret there, never the app.
    #[must_use]
    pub fn connect_form_url(mut self, url: &str) -> Self {
        match parse_http_url("connect_form_url", url) {
            Ok(u) => self.settings.connect_form_url = Some(u),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Allows `redirect_url`s under `prefix` (same scheme, host and port; path under
    /// the prefix's path) for every integration. Integrations may allow more with their
    /// `redirect_allowlist`. Once any allowlist is configured (here or on the
    /// integration), a `redirect_url` that none covers is refused; with none at all,
    /// the caller (the app itself) is trusted with any http(s) URL.
    #[must_use]
    pub fn allow_redirect_url(mut self, prefix: &str) -> Self {
        match parse_http_url("redirect allowlist entry", prefix) {
            Ok(u) => self.settings.redirect_allowlist.push(u),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// How long before expiry credentials are refreshed. Default: 5 minutes.
    #[must_use]
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.settings.refresh_margin =
            chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX);
        self
    }

    /// How long a user has to finish an OAuth redirect. Default: 10 minutes.
    #[must_use]
    pub fn pending_ttl(mut self, ttl: Duration) -> Self {
        self.settings.pending_ttl =
            chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        self
    }

    /// How long events stay in the store's event log (replayable by id, and the
    /// source of webhook deliveries); events with a delivery still pending stay
    /// until it ends. Default: 7 days.
    #[must_use]
    pub fn event_retention(mut self, retention: Duration) -> Self {
        self.settings.event_retention =
            chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        self
    }

    /// How many accounts' decrypted credentials to keep in memory, so that fresh
    /// credentials are served without a database read. Default 10,000; 0 turns the
    /// cache off.
    #[must_use]
    pub fn credential_cache(mut self, capacity: usize) -> Self {
        self.settings.cache_capacity = capacity;
        self
    }

    /// Sends requests (and the built-in schemes' calls) with this client instead of
    /// [`request::default_client`]. Turn redirects off on it: a redirect followed
    /// would carry the credentials. Calls to a host typed by an end user (a
    /// connection parameter, such as a shop's or an instance's name) go out on a
    /// client of keyhaven's own instead, which checks every address the name
    /// resolves to and never goes through a proxy.
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.settings.http = Some(client);
        self
    }

    /// Resolves host names with `resolver` (a DNS client of your choice, a fixed
    /// table) instead of the system's: in keyhaven's own HTTP client (unless given one
    /// with [`KeyhavenBuilder::http_client`]), and where a host typed by an end user
    /// (a connection parameter) is resolved to check that every address is public
    /// before credentials are sent there.
    #[must_use]
    pub fn dns_resolver(mut self, resolver: Arc<dyn reqwest::dns::Resolve>) -> Self {
        self.settings.resolver = Some(request::Resolver(resolver));
        self
    }

    /// How long an API may stay silent while it answers a request sent with
    /// [`Keyhaven::request`]: before the head of its answer, and between two parts of
    /// its body (counted from when the body is first read). Such a request fails as
    /// unavailable; such a body, with an I/O error of kind `TimedOut`. Default
    /// [`request::READ_TIMEOUT`] (60 s); noticed up to half a second late.
    #[must_use]
    pub fn read_timeout(mut self, limit: Duration) -> Self {
        self.settings.read_timeout = limit;
        self
    }

    /// Records every use of a credential there (default: the tracing log only).
    #[must_use]
    pub fn audit_log(mut self, audit: AuditLog) -> Self {
        self.settings.audit = audit;
        self
    }

    /// Uses this catalogue instead of the built-in one.
    #[must_use]
    pub fn catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Adds or overrides apps with the `*.toml` files of `dir` (the format of the
    /// built-in catalogue, checked the same way). `KEYHAVEN_CATALOG_DIR` does the same.
    #[must_use]
    pub fn catalog_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.catalog_dirs.push(dir.into());
        self
    }

    /// The OAuth client of `app` for integrations created from the catalogue when a
    /// request gives none (else `KEYHAVEN_<APP>_CLIENT_ID` / `_CLIENT_SECRET`).
    #[must_use]
    pub fn app_credentials(
        mut self,
        app: &str,
        client_id: &str,
        client_secret: Option<&str>,
    ) -> Self {
        self.settings.app_credentials.insert(
            app.to_owned(),
            (
                client_id.to_owned(),
                client_secret.map(|s| secrecy::SecretString::from(s.to_owned())),
            ),
        );
        self
    }

    /// Builds it. Without a store, the embedded SQLite store of the data directory
    /// (`KEYHAVEN_DATA_DIR`, else `./keyhaven-data`) is opened (feature `sqlite`).
    ///
    /// # Errors
    /// A scheme with an invalid name was registered, or no store was given.
    pub fn build(self) -> Result<Keyhaven, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let store = match self.store {
            Some(store) => store,
            None => default_store()?,
        };
        let mut catalog = match self.catalog {
            Some(c) => c,
            None => Catalog::builtin().map_err(|e| Error::Internal(e.to_string()))?,
        };
        let specs = self.registry.specs();
        let mut dirs = self.catalog_dirs;
        if let Some(dir) = std::env::var_os(CATALOG_DIR_ENV).filter(|d| !d.is_empty()) {
            dirs.push(dir.into());
        }
        for dir in dirs {
            let n = catalog
                .load_dir(&dir, &specs)
                .map_err(|e| Error::invalid("catalog directory", e.to_string()))?;
            tracing::info!(dir = %dir.display(), apps = n, "catalogue entries loaded");
        }
        Ok(Keyhaven::assemble(
            store,
            self.registry,
            self.clock,
            self.settings,
            Arc::new(catalog),
        ))
    }
}

/// The environment variable of a per-deployment setting of an app:
/// `KEYHAVEN_<APP>_<FIELD>`, upper case, `-` as `_`.
pub fn app_setting_var(app: &str, field: &str) -> String {
    format!("KEYHAVEN_{app}_{field}")
        .to_ascii_uppercase()
        .replace('-', "_")
}

/// Parses an absolute http(s) URL given in configuration.
pub(crate) fn parse_http_url(what: &str, raw: &str) -> Result<Url, Error> {
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(u),
        _ => Err(Error::invalid(
            what,
            format!("{raw:?} is not an absolute http(s) URL"),
        )),
    }
}

/// The environment variable naming the embedded store's data directory.
pub const DATA_DIR_ENV: &str = "KEYHAVEN_DATA_DIR";
/// The data directory used when `KEYHAVEN_DATA_DIR` is not set.
pub const DEFAULT_DATA_DIR: &str = "keyhaven-data";

/// The data directory of the embedded store.
pub fn data_dir() -> std::path::PathBuf {
    std::env::var_os(DATA_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(DEFAULT_DATA_DIR))
}

#[cfg(feature = "sqlite")]
fn default_store() -> Result<Arc<dyn Store>, Error> {
    let dir = data_dir();
    let store = SqliteStore::open_dir(&dir)?;
    tracing::info!(dir = %dir.display(), "opened the embedded store");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
fn default_store() -> Result<Arc<dyn Store>, Error> {
    Err(Error::invalid(
        "store",
        "no store was given: call .store(...) on the builder, or enable the sqlite feature for the embedded default",
    ))
}
