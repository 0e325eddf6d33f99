//! The domain: integrations, connected accounts, their status, and the initiate request.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::ids::{AppSlug, ConnectedAccountId, EntityId, IntegrationId, Label};
use crate::secret::SecretFields;

/// The status of a connected account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionStatus {
    /// Waiting for the user (an OAuth redirect, a hosted form).
    Initiated,
    /// Usable: credentials are present.
    Active,
    /// The connection attempt failed (the user denied, wrong credentials).
    Failed,
    /// A refresh was refused: the user must connect again.
    Expired,
    /// Disabled by the app; can be enabled again.
    Inactive,
}

impl ConnectionStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 5] = [
        Self::Initiated,
        Self::Active,
        Self::Failed,
        Self::Expired,
        Self::Inactive,
    ];

    /// The wire name: `INITIATED`, `ACTIVE`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initiated => "INITIATED",
            Self::Active => "ACTIVE",
            Self::Failed => "FAILED",
            Self::Expired => "EXPIRED",
            Self::Inactive => "INACTIVE",
        }
    }

    /// What a user can do about an account in this status.
    pub fn hint(self) -> &'static str {
        match self {
            Self::Initiated => "the user has not finished connecting; wait for the connection",
            Self::Active => "it is usable",
            Self::Failed => "the connection attempt failed; initiate a new connection",
            Self::Expired => "the provider refused a refresh; the user must connect again",
            Self::Inactive => "it was disabled; enable it to use it again",
        }
    }

    /// Whether no further change happens without an explicit action.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Initiated)
    }
}

impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConnectionStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::invalid(
                    "status",
                    format!(
                        "{s:?} is not a status; use one of INITIATED, ACTIVE, FAILED, EXPIRED, INACTIVE"
                    ),
                )
            })
    }
}

/// The app's auth configuration for one service. Several may exist per app.
///
/// Made with [`Integration::new`], its other fields set afterwards; new fields may be
/// added without breaking store or scheme crates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Integration {
    /// Its id, `int_...`.
    pub id: IntegrationId,
    /// The service it is for.
    pub app: AppSlug,
    /// A name chosen by the app, unique or not.
    pub name: String,
    /// The registered auth scheme it uses: `OAUTH2`, `API_KEY`, ...
    pub auth_scheme: String,
    /// The OAuth scopes asked for, if any.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The non-secret part of the auth config (client id, header name, ...).
    #[serde(default)]
    pub config: Map<String, Value>,
    /// The secret part of the auth config (client secret, ...). Never serialized.
    #[serde(skip)]
    pub secrets: SecretFields,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// Disabled by the app (Composio's auth config status): no new connection is
    /// made through it until it is enabled again; its accounts keep working.
    #[serde(default)]
    pub disabled: bool,
}

impl Integration {
    /// An integration with no scopes and no settings, created and updated at `now`.
    pub fn new(
        id: IntegrationId,
        app: AppSlug,
        name: impl Into<String>,
        auth_scheme: impl Into<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            app,
            name: name.into(),
            auth_scheme: auth_scheme.into(),
            scopes: Vec::new(),
            config: Map::new(),
            secrets: SecretFields::new(),
            created_at: now,
            updated_at: now,
            disabled: false,
        }
    }

    /// A non-secret config value as a string.
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(Value::as_str)
    }

    /// The names of the secret config fields that are set (the values are not shown).
    pub fn secret_field_names(&self) -> Vec<String> {
        self.secrets.keys().map(str::to_owned).collect()
    }
}

/// One entity linked to one integration: a connection.
///
/// Holds no credentials: those are read separately, through
/// [`Store::get_account_and_credentials`](crate::Store::get_account_and_credentials).
///
/// Made with [`ConnectedAccount::new`], its other fields set afterwards; new fields
/// may be added without breaking store or scheme crates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ConnectedAccount {
    /// Its id, `ca_...`.
    pub id: ConnectedAccountId,
    /// The end user it belongs to.
    pub entity_id: EntityId,
    /// The integration it was made with.
    pub integration_id: IntegrationId,
    /// The service, copied from the integration.
    pub app: AppSlug,
    /// The scheme, copied from the integration.
    pub auth_scheme: String,
    /// Where it stands.
    pub status: ConnectionStatus,
    /// Why it is in that status, in words for a person (the provider's error, ...).
    pub status_reason: Option<String>,
    /// Tags for filtering.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Non-secret connection parameters (a shop subdomain, a region, ...).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Where the user is sent after an OAuth redirect.
    pub redirect_url: Option<String>,
    /// When the stored credentials expire, if they do.
    pub expires_at: Option<DateTime<Utc>>,
    /// Bumped by the store on every update; used for compare-and-set.
    pub version: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl ConnectedAccount {
    /// An account of version 1, created and updated at `now`, with no reason, labels,
    /// parameters, redirect URL or expiry.
    pub fn new(
        id: ConnectedAccountId,
        entity_id: EntityId,
        integration_id: IntegrationId,
        app: AppSlug,
        auth_scheme: impl Into<String>,
        status: ConnectionStatus,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            entity_id,
            integration_id,
            app,
            auth_scheme: auth_scheme.into(),
            status,
            status_reason: None,
            labels: Vec::new(),
            params: Map::new(),
            redirect_url: None,
            expires_at: None,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// Whether it carries every label of `labels`.
    pub fn has_labels(&self, labels: &[Label]) -> bool {
        labels.iter().all(|l| self.labels.contains(l))
    }
}

/// What to do with the stored credentials in an update.
#[derive(Debug, Clone, Copy)]
pub enum CredentialsUpdate<'a> {
    /// Leave them as they are.
    Keep,
    /// Replace them.
    Set(&'a crate::Credentials),
    /// Replace them with what a refresh gave: stored as [`Set`](Self::Set) is, but a
    /// shared store may tell other instances after the write has committed rather
    /// than with it (PostgreSQL does: a notice sent in the write's transaction
    /// serialised every refresh's commit behind the previous one's disk flush). A
    /// notice lost there (the process died between the two) leaves another
    /// instance serving the older token until it is due, when it re-reads under
    /// the refresh lock: an older access token, still valid, never a wrong
    /// account's. Anything else that changes credentials uses `Set`.
    Refreshed(&'a crate::Credentials),
    /// Remove them.
    Clear,
}

/// The initiate call: connect an entity to a service.
///
/// Deserializes from both spellings of every field (`integration_id` or
/// `integrationId`, `redirect_url` or `redirectUri`, `connected_account_params`
/// or `data`, ...). Values are checked when the request is used, so that every
/// problem is reported with the field it concerns.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConnectionRequest {
    /// The integration to use. Either this or `app`.
    #[serde(alias = "integrationId")]
    pub integration_id: Option<String>,
    /// The app to connect; its integration is found or created. Either this or `integration_id`.
    #[serde(alias = "appName", alias = "app_name")]
    pub app: Option<String>,
    /// The end user; `"default"` when absent.
    #[serde(alias = "entityId", alias = "userUuid", alias = "user_uuid")]
    pub entity_id: Option<String>,
    /// Tags for filtering.
    pub labels: Vec<String>,
    /// Where the user lands after an OAuth redirect.
    #[serde(alias = "redirectUri", alias = "redirect_uri", alias = "redirectUrl")]
    pub redirect_url: Option<String>,
    /// The scheme's parameters (API key, subdomain, ...). Secret.
    #[serde(alias = "data", alias = "connectedAccountParams")]
    pub connected_account_params: SecretFields,
    /// The scheme to use when the integration is created; `OAUTH2` when absent.
    #[serde(alias = "authScheme", alias = "authMode", alias = "auth_mode")]
    pub auth_scheme: Option<String>,
    /// The auth config for an integration created by this call (client id and secret...). Secret.
    #[serde(alias = "authConfig")]
    pub auth_config: SecretFields,
}

impl ConnectionRequest {
    /// The scheme used when a request names none.
    pub const DEFAULT_SCHEME: &'static str = "OAUTH2";

    /// A request for an app, its integration found or created.
    pub fn for_app(app: impl Into<String>) -> Self {
        Self {
            app: Some(app.into()),
            ..Self::default()
        }
    }

    /// A request for an existing integration.
    pub fn for_integration(id: impl Into<String>) -> Self {
        Self {
            integration_id: Some(id.into()),
            ..Self::default()
        }
    }

    /// Sets the entity.
    #[must_use]
    pub fn entity(mut self, entity_id: impl Into<String>) -> Self {
        self.entity_id = Some(entity_id.into());
        self
    }

    /// Sets the auth scheme.
    #[must_use]
    pub fn scheme(mut self, name: impl Into<String>) -> Self {
        self.auth_scheme = Some(name.into());
        self
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.labels.push(label.into());
        self
    }

    /// Sets a connected-account parameter.
    #[must_use]
    pub fn param(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.connected_account_params.insert(key, value);
        self
    }

    /// Sets an auth-config field.
    #[must_use]
    pub fn config(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.auth_config.insert(key, value);
        self
    }

    /// Sets the redirect URL.
    #[must_use]
    pub fn redirect_url(mut self, url: impl Into<String>) -> Self {
        self.redirect_url = Some(url.into());
        self
    }
}

/// The answer to an initiate call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRequestOutput {
    /// `ACTIVE` at once for static credentials, `INITIATED` when the user must act.
    pub connection_status: ConnectionStatus,
    /// The new account.
    pub connected_account_id: ConnectedAccountId,
    /// Where to send the user, when they must act.
    pub redirect_url: Option<String>,
}

/// Which connected accounts to list. Empty lists match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AccountFilter {
    /// Any of these entities.
    pub entity_ids: Vec<EntityId>,
    /// Any of these apps.
    pub apps: Vec<AppSlug>,
    /// Any of these integrations.
    pub integration_ids: Vec<IntegrationId>,
    /// Any of these statuses.
    pub statuses: Vec<ConnectionStatus>,
    /// All of these labels.
    pub labels: Vec<Label>,
    /// Only accounts after this one (the cursor of the previous page).
    pub after: Option<ConnectedAccountId>,
    /// At most this many; 0 means [`AccountFilter::DEFAULT_LIMIT`], and more than
    /// [`AccountFilter::MAX_LIMIT`] means that many.
    pub limit: usize,
    /// Newest first (ids descending; `after` then means older than that id) instead
    /// of oldest first.
    pub newest_first: bool,
}

impl AccountFilter {
    /// The page size when none is given.
    pub const DEFAULT_LIMIT: usize = 100;
    /// The largest page size.
    pub const MAX_LIMIT: usize = 1000;

    /// Refuses a filter no account can pass for its size: more distinct labels than an
    /// account may carry ([`LABELS_MAX_COUNT`](crate::LABELS_MAX_COUNT)).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] on `labels`, naming the limit.
    pub fn check(&self) -> Result<(), Error> {
        let mut distinct: Vec<&Label> = self.labels.iter().collect();
        distinct.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        distinct.dedup();
        if distinct.len() > crate::LABELS_MAX_COUNT {
            return Err(Error::invalid(
                "labels",
                format!(
                    "a listing may filter by at most {} labels, as an account carries at most that many; {} were given",
                    crate::LABELS_MAX_COUNT,
                    distinct.len()
                ),
            ));
        }
        Ok(())
    }

    /// The page size to use.
    pub fn effective_limit(&self) -> usize {
        match self.limit {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        }
    }

    /// Whether `account` passes the filter (the cursor and limit aside).
    pub fn matches(&self, account: &ConnectedAccount) -> bool {
        (self.entity_ids.is_empty() || self.entity_ids.contains(&account.entity_id))
            && (self.apps.is_empty() || self.apps.contains(&account.app))
            && (self.integration_ids.is_empty()
                || self.integration_ids.contains(&account.integration_id))
            && (self.statuses.is_empty() || self.statuses.contains(&account.status))
            && account.has_labels(&self.labels)
    }
}

/// One page of a listing, in the listing's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page.
    pub fn new(items: Vec<T>, next_cursor: Option<String>) -> Self {
        Self { items, next_cursor }
    }
}

/// A redirect flow waiting for its callback: the single-use state, bound to one
/// account, with what the scheme asked to keep (a PKCE verifier...).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PendingState {
    /// The random state sent to the provider. Secret while pending.
    pub state: String,
    /// The `INITIATED` account it completes.
    pub account_id: ConnectedAccountId,
    /// What the scheme kept for the callback.
    pub data: SecretFields,
    /// After this the state is refused.
    pub expires_at: DateTime<Utc>,
}

impl PendingState {
    /// A pending state.
    pub fn new(
        state: impl Into<String>,
        account_id: ConnectedAccountId,
        data: SecretFields,
        expires_at: DateTime<Utc>,
    ) -> Self {
        Self {
            state: state.into(),
            account_id,
            data,
            expires_at,
        }
    }
}
