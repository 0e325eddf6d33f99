//! The extension point: [`AuthScheme`], the contexts it is called with, and the
//! request it puts credentials on.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use url::Url;

use crate::error::SchemeError;
use crate::ids::{ConnectedAccountId, EntityId};
use crate::model::{ConnectedAccount, Integration};
use crate::secret::{Credentials, SecretFields};
use crate::spec::{SchemeSpec, ValidatedFields};

/// An HTTP request about to be sent to a provider's API, which a scheme
/// authorizes by adding headers, query parameters or a signature.
#[derive(Clone)]
pub struct OutgoingRequest {
    /// The method.
    pub method: Method,
    /// The full URL, query included.
    pub url: Url,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, empty for none.
    pub body: Vec<u8>,
}

impl OutgoingRequest {
    /// A request with no headers and no body.
    pub fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }

    /// Sets a header whose value is a secret: it is marked sensitive, so
    /// HTTP clients and loggers that honour the flag do not show it.
    pub fn set_secret_header(&mut self, name: &str, value: &str) -> Result<(), SchemeError> {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            SchemeError::invalid(
                "auth_config.header_name",
                format!("{name:?} is not a valid HTTP header name"),
            )
        })?;
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            SchemeError::invalid(
                "credentials",
                "contain characters that cannot be sent in an HTTP header (such as a line break); connect again with a clean value",
            )
        })?;
        value.set_sensitive(true);
        self.headers.insert(name, value);
        Ok(())
    }
}

impl fmt::Debug for OutgoingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Query values and sensitive headers may hold credentials: show names only.
        let mut url = self.url.clone();
        let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        url.set_query(None);
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| {
                if v.is_sensitive() {
                    format!("{k}: [redacted]")
                } else {
                    format!("{k}: {}", String::from_utf8_lossy(v.as_bytes()))
                }
            })
            .collect();
        f.debug_struct("OutgoingRequest")
            .field("method", &self.method)
            .field("url", &url.as_str())
            .field("query_keys", &keys)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// How long one call of a scheme to a provider (a login, a token request) may take,
/// answer included: the deadline a scheme gives each call on the keyhaven's shared
/// client (which has no overall timeout), and the overall timeout of
/// [`scheme_client`].
pub const SCHEME_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The HTTP client of a scheme called without one (no shared client in its context,
/// none given to it): [`SCHEME_CALL_TIMEOUT`] per call, 10 s to connect, no redirects
/// (a token endpoint that redirects is refused rather than followed).
pub fn scheme_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(SCHEME_CALL_TIMEOUT)
        .connect_timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyhaven/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Why a scheme's call could not connect, for its message: `connection failed: ` and
/// the innermost cause (a refused connection, a name that does not resolve, or one
/// keyhaven would not connect to: a host typed by an end user that resolves to this
/// machine). The causes of a connect error name no URL, so no query is shown.
pub fn connect_failure(e: &reqwest::Error) -> String {
    let mut last: Option<&(dyn std::error::Error + 'static)> = None;
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        last = Some(cause);
        source = cause.source();
    }
    match last {
        Some(cause) => format!("connection failed: {cause}"),
        None => "connection failed".to_owned(),
    }
}

/// What [`AuthScheme::initiate`] is given.
#[derive(Debug)]
#[non_exhaustive]
pub struct InitiateContext<'a> {
    /// The integration the account is made under (not yet stored when created by this call).
    pub integration: &'a Integration,
    /// The id the new account will have.
    pub account_id: &'a ConnectedAccountId,
    /// The end user.
    pub entity_id: &'a EntityId,
    /// The connection parameters, already checked against [`SchemeSpec::params`].
    pub params: &'a ValidatedFields,
    /// Where the user goes afterwards, if given.
    pub redirect_url: Option<&'a Url>,
    /// The single-use state to put in a redirect (at least 128 random bits), when the
    /// caller can take a callback.
    pub state: Option<&'a str>,
    /// Where the provider sends the user back (keyhaven's callback), when the caller
    /// can take a callback.
    pub callback_url: Option<&'a Url>,
    /// The current time.
    pub now: DateTime<Utc>,
    /// The HTTP client to call the provider with, shared by the whole keyhaven (see
    /// [`AccountContext::http`]).
    pub http: Option<&'a reqwest::Client>,
}

impl<'a> InitiateContext<'a> {
    /// A context; the facade builds these, and scheme authors build them in tests.
    pub fn new(
        integration: &'a Integration,
        account_id: &'a ConnectedAccountId,
        entity_id: &'a EntityId,
        params: &'a ValidatedFields,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            integration,
            account_id,
            entity_id,
            params,
            redirect_url: None,
            state: None,
            callback_url: None,
            now,
            http: None,
        }
    }

    /// Gives the scheme the keyhaven's HTTP client.
    #[must_use]
    pub fn with_http(mut self, client: &'a reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Sets the state and callback URL of a redirect flow.
    #[must_use]
    pub fn with_callback(mut self, state: &'a str, callback_url: &'a Url) -> Self {
        self.state = Some(state);
        self.callback_url = Some(callback_url);
        self
    }

    /// Sets the redirect URL.
    #[must_use]
    pub fn with_redirect_url(mut self, url: Option<&'a Url>) -> Self {
        self.redirect_url = url;
        self
    }
}

/// What [`AuthScheme::initiate`] returns. Exhaustive on purpose: the facade
/// must handle every outcome a scheme can give.
#[derive(Debug)]
pub enum Initiated {
    /// The credentials are ready: the account is `ACTIVE` at once.
    Active {
        /// The credentials to store.
        credentials: Credentials,
    },
    /// The user must go to `url`; the account is `INITIATED` until the callback,
    /// which [`AuthScheme::complete`] handles.
    Redirect {
        /// Where to send the user (the provider's authorization page).
        url: Url,
        /// What [`AuthScheme::complete`] will need (a PKCE verifier...), kept secret
        /// with the single-use state until the callback.
        pending: SecretFields,
    },
}

/// What [`AuthScheme::complete`] is given: the callback of a redirect flow.
#[derive(Debug)]
#[non_exhaustive]
pub struct CompleteContext<'a> {
    /// The integration of the account.
    pub integration: &'a Integration,
    /// The account, `INITIATED`.
    pub account: &'a ConnectedAccount,
    /// Every query parameter of the callback (`code`, `iss`, ...), `state` already checked.
    pub query: &'a BTreeMap<String, String>,
    /// What [`Initiated::Redirect`] asked to keep.
    pub pending: &'a SecretFields,
    /// The callback URL the redirect used (token requests must repeat it).
    pub callback_url: &'a Url,
    /// The current time.
    pub now: DateTime<Utc>,
    /// The HTTP client to call the provider with, shared by the whole keyhaven (see
    /// [`AccountContext::http`]).
    pub http: Option<&'a reqwest::Client>,
}

impl<'a> CompleteContext<'a> {
    /// A context; the facade builds these, and scheme authors build them in tests.
    pub fn new(
        integration: &'a Integration,
        account: &'a ConnectedAccount,
        query: &'a BTreeMap<String, String>,
        pending: &'a SecretFields,
        callback_url: &'a Url,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            integration,
            account,
            query,
            pending,
            callback_url,
            now,
            http: None,
        }
    }

    /// Gives the scheme the keyhaven's HTTP client.
    #[must_use]
    pub fn with_http(mut self, client: &'a reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }
}

/// What the other scheme operations are given: one stored account.
#[derive(Debug)]
#[non_exhaustive]
pub struct AccountContext<'a> {
    /// The integration of the account.
    pub integration: &'a Integration,
    /// The account.
    pub account: &'a ConnectedAccount,
    /// Its current credentials.
    pub credentials: &'a Credentials,
    /// The current time.
    pub now: DateTime<Utc>,
    /// The HTTP client to call the provider with, shared by the whole keyhaven
    /// (connections kept open, no redirects followed, no overall timeout: give each
    /// request its own). `None` when the caller has none (a scheme's own tests): use
    /// the scheme's own client then.
    pub http: Option<&'a reqwest::Client>,
}

impl<'a> AccountContext<'a> {
    /// A context; the facade builds these, and scheme authors build them in tests.
    pub fn new(
        integration: &'a Integration,
        account: &'a ConnectedAccount,
        credentials: &'a Credentials,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            integration,
            account,
            credentials,
            now,
            http: None,
        }
    }

    /// Gives the scheme the keyhaven's HTTP client.
    #[must_use]
    pub fn with_http(mut self, client: &'a reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }
}

/// A way of connecting an account and using its credentials: `API_KEY`, `OAUTH2`, ...
///
/// Object-safe: the registry holds `Arc<dyn AuthScheme>`. A third-party crate
/// implements it against `keyhaven-core` alone and registers it on the facade's
/// builder. Implementations must never put a secret in an error message or a log.
#[async_trait]
pub trait AuthScheme: Send + Sync + 'static {
    /// The unique name in the registry, SCREAMING_SNAKE_CASE: `API_KEY`.
    fn name(&self) -> &str;

    /// The fields the scheme reads and how it takes part in the catalogue. Asked
    /// once, when the scheme is registered (the registry keeps the answer), so it
    /// may simply build and return the spec. The facade checks
    /// `connected_account_params` and `auth_config` against it before any other
    /// call, so a scheme sees only known, non-empty, well-typed fields.
    fn spec(&self) -> SchemeSpec;

    /// Checks an integration's settings beyond what [`SchemeSpec::config`] can say
    /// (fields that depend on each other). Called when an integration is created, so
    /// that a bad one is refused then rather than at its first connection.
    fn check_integration(&self, integration: &Integration) -> Result<(), SchemeError> {
        let _ = integration;
        Ok(())
    }

    /// Starts a connection.
    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError>;

    /// Finishes a redirect flow: turns the callback into credentials. Schemes that
    /// never redirect keep this default, which refuses.
    async fn complete(&self, cx: CompleteContext<'_>) -> Result<Credentials, SchemeError> {
        let _ = cx;
        Err(SchemeError::Unsupported {
            scheme: self.name().to_owned(),
            operation: "complete",
        })
    }

    /// Renews credentials that expire. `Ok(None)`: nothing to renew, keep them.
    async fn refresh(&self, cx: AccountContext<'_>) -> Result<Option<Credentials>, SchemeError> {
        let _ = cx;
        Ok(None)
    }

    /// Puts the credentials on a request to the provider's API.
    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError>;

    /// Tells the provider to forget the credentials, best effort, when an account is deleted.
    async fn revoke(&self, cx: AccountContext<'_>) -> Result<(), SchemeError> {
        let _ = cx;
        Ok(())
    }
}

impl fmt::Debug for dyn AuthScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthScheme({})", self.name())
    }
}
