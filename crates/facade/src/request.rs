//! Requests to an account's API with its credentials: [`Keyhaven::request`].
//!
//! One HTTP client, owned by the [`Keyhaven`] and shared by every request (and by
//! the built-in schemes' token calls), keeps connections to each API open. A request
//! names a path under the account's API base URL (its integration's `base_url`, the
//! catalogue's when the integration has none); the scheme puts the credentials on
//! it, fresh; the catalogue's `request_headers` are added. On a 401 the credentials
//! are refreshed once (one refresh for every request that saw them refused, across
//! processes sharing the store) and the request is sent again, when its body can be
//! sent twice. Bodies stream both ways: the answer is a [`reqwest::Response`].
//!
//! What may be sent is decided by the pure rules of [`rules`] (the path stays under
//! the base URL, ordinary methods, no `Host` or hop-by-hop headers) and by
//! [`crate::egress`] (a host filled from the account's parameters must be public; it
//! is also resolved, and the request pinned to the checked addresses). Redirects are
//! answered as they are, never followed with the credentials. No message shows a
//! URL's query or user name. Every request is recorded in the audit log.

pub mod rules;
mod silence;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use keyhaven_core::{
    AccountContext, ConnectedAccount, ConnectedAccountId, Error, Integration, OutgoingRequest,
    SchemeError,
};
use url::{Host, Url};

use crate::accounts::{Due, fixed_headers};
use crate::audit::{AuditAction, AuditCaller, AuditEntry};
use crate::integrations::effective_integration;
use crate::{Keyhaven, egress};

/// How long connecting, and resolving a host name, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an API may stay silent while answering (between two reads).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle connection to an API is kept for reuse.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// How long a request target (account, integration, base URL) is reused before it is
/// read again: changes made by this process apply at once, changes made by another
/// process sharing the store within this time.
pub(crate) const TARGET_TTL: Duration = Duration::from_secs(30);

/// The HTTP client keyhaven uses unless given one: connections kept open and reused,
/// 10 s to connect, no redirects followed (an API's redirect is answered as it is:
/// the credentials never follow it elsewhere), `TCP_NODELAY`. How long an API may
/// stay silent while it answers is not the client's: [`ApiRequest::send`] watches
/// that itself ([`READ_TIMEOUT`] unless set otherwise), more cheaply than reqwest's
/// per-request timers, and the schemes give each of their calls a deadline.
pub fn default_client() -> reqwest::Client {
    client_with(None)
}

/// [`default_client`], resolving host names with `resolver` when given.
pub(crate) fn client_with(resolver: Option<&Resolver>) -> reqwest::Client {
    client_builder(resolver)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

fn client_builder(resolver: Option<&Resolver>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyhaven/", env!("CARGO_PKG_VERSION")));
    match resolver {
        Some(r) => builder.dns_resolver(r.0.clone()),
        None => builder,
    }
}

/// The host name resolver given to [`crate::KeyhavenBuilder::dns_resolver`].
#[derive(Clone)]
pub(crate) struct Resolver(pub(crate) Arc<dyn reqwest::dns::Resolve>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// The addresses of `name` (port 0: the URL's own port is used).
    async fn lookup(&self, name: &str) -> std::io::Result<Vec<SocketAddr>> {
        use std::str::FromStr;
        let parsed = reqwest::dns::Name::from_str(name)
            .map_err(|_| std::io::Error::other("not a host name"))?;
        let found = self
            .0
            .resolve(parsed)
            .await
            .map_err(std::io::Error::other)?;
        Ok(found.collect())
    }
}

/// A host name typed by an end user (it fills `template`, the URL of config
/// `field`), which must resolve to public addresses only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GuardedName {
    name: String,
    template: String,
    field: String,
}

/// The resolver of a client that sends to hosts typed by end users: names resolve
/// as with the builder's resolver (else the system's), and a guarded name that
/// resolves to any private or local address does not resolve at all. The addresses
/// checked are the ones connected to, for every new connection: a name cannot lead
/// to this machine or its network by resolving differently a moment later.
struct Guarding {
    inner: Option<Resolver>,
    names: Vec<GuardedName>,
}

/// A guarded name that resolved to a private address: the cause of the transport
/// error, from which [`guard_refusal`] gets the error to answer.
#[derive(Debug)]
struct Refused {
    guarded: GuardedName,
    address: std::net::IpAddr,
    kind: &'static str,
}

impl Refused {
    fn error(&self) -> Error {
        let g = &self.guarded;
        egress::private_host_error(
            "connected_account_params",
            &g.template,
            &g.field,
            &format!("{} (which resolves to {})", g.name, self.address),
            self.kind,
        )
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error().fmt(f)
    }
}

impl std::error::Error for Refused {}

/// The error to answer when a request failed because a guarded name resolved to a
/// private address (invalid input, naming the parameter), rather than as a
/// transport failure.
fn guard_refusal(e: &reqwest::Error) -> Option<Error> {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused.error());
        }
        source = cause.source();
    }
    None
}

impl reqwest::dns::Resolve for Guarding {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guarded = self
            .names
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(name.as_str()))
            .cloned();
        let inner = self.inner.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let found = match &inner {
                Some(r) => r.lookup(&name).await?,
                None => tokio::net::lookup_host((name.as_str(), 0)).await?.collect(),
            };
            if let Some(guarded) = guarded {
                for addr in &found {
                    if let Some(kind) = egress::private_address_kind(addr.ip()) {
                        return Err(Box::new(Refused {
                            guarded,
                            address: addr.ip(),
                            kind,
                        })
                            as Box<dyn std::error::Error + Send + Sync>);
                    }
                }
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The clients made for hosts typed by end users, by the names each guards: a
/// refresh or request to such a host reuses its client and connections instead of
/// making a client (and its TLS setup) each time. At most [`GUARDING_CLIENTS`];
/// past that, all are dropped and made again as needed.
#[derive(Default)]
pub(crate) struct GuardingClients(parking_lot::Mutex<HashMap<Vec<GuardedName>, reqwest::Client>>);

/// How many clients [`GuardingClients`] keeps.
const GUARDING_CLIENTS: usize = 256;

impl std::fmt::Debug for GuardingClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GuardingClients({})", self.0.lock().len())
    }
}

impl Keyhaven {
    /// The shared client, or for `guarded` names (hosts typed by end users) a
    /// client that resolves them only to public addresses ([`Guarding`]), kept for
    /// the next call with the same names.
    fn guarding_client(&self, guarded: Vec<GuardedName>) -> Result<reqwest::Client, Error> {
        if guarded.is_empty() {
            return Ok(self.inner.http.clone());
        }
        let kept = &self.inner.guarding.0;
        if let Some(client) = kept.lock().get(&guarded) {
            return Ok(client.clone());
        }
        // Never through a proxy (HTTPS_PROXY ...): the proxy would resolve the name,
        // and what is connected to would not be what was checked.
        let client = client_builder(None)
            .no_proxy()
            .dns_resolver(Arc::new(Guarding {
                inner: self.inner.settings.resolver.clone(),
                names: guarded.clone(),
            }))
            .build()
            .map_err(|e| Error::Internal(format!("cannot make an HTTP client: {e}")))?;
        let mut kept = kept.lock();
        if kept.len() >= GUARDING_CLIENTS {
            kept.clear();
        }
        kept.insert(guarded, client.clone());
        Ok(client)
    }

    /// The client for a scheme's calls to the provider (login, code exchange,
    /// refresh, revocation) for a connection with `params`: the shared one, unless a
    /// URL of `integration` (as stored, with its templates) takes its host from the
    /// parameters, typed by an end user. Then a client that connects to those hosts
    /// only at public addresses, checked as they are resolved for each connection,
    /// as [`Keyhaven::request`]'s are: a name that passed the connect checks as
    /// written cannot lead to this machine or its network by what it resolves to.
    /// Nothing is resolved until a call is made (an OAuth redirect makes none).
    ///
    /// # Errors
    /// Such a host, as written, is a private or local one (invalid, naming the
    /// parameter).
    pub(crate) fn provider_client(
        &self,
        integration: &Integration,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<reqwest::Client, Error> {
        let urls = egress::checked_param_host_urls(integration, params)?;
        self.guarding_client(guarded_names(urls))
    }

    /// Why a call to the provider with [`Keyhaven::provider_client`] failed, when it
    /// was because a host typed by an end user resolves to a private address: that
    /// error (invalid input, naming the parameter), to answer instead of the
    /// scheme's "could not connect". Asked only after a call failed (it resolves
    /// the names again).
    pub(crate) async fn refused_host(
        &self,
        integration: &Integration,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Error> {
        use reqwest::dns::Resolve;
        let names = guarded_names(egress::param_host_urls(integration, params));
        let guarding = Guarding {
            inner: self.inner.settings.resolver.clone(),
            names: names.clone(),
        };
        for guarded in names {
            let name = guarded.name.parse().ok()?;
            let lookup = tokio::time::timeout(CONNECT_TIMEOUT, guarding.resolve(name));
            if let Ok(Err(e)) = lookup.await
                && let Some(refused) = e.downcast_ref::<Refused>()
            {
                return Some(refused.error());
            }
        }
        None
    }
}

/// The host names of `urls` (an integration's URLs whose hosts end users typed, as
/// [`egress::param_host_urls`] gives them).
fn guarded_names<'a>(urls: impl IntoIterator<Item = (String, &'a str, Url)>) -> Vec<GuardedName> {
    urls.into_iter()
        .filter_map(|(field, template, url)| match url.host() {
            Some(Host::Domain(name)) => Some(GuardedName {
                name: name.to_owned(),
                template: template.to_owned(),
                field,
            }),
            _ => None,
        })
        .collect()
}

/// Where an account's requests go, and with what: read once, reused until the
/// account or an integration changes (or [`TARGET_TTL`] passes).
pub(crate) struct Target {
    made: Instant,
    /// The same moment on the process's fast clock, when it has one: a request
    /// checks the target's age with an atomic read rather than a clock read.
    made_fast: Option<quanta::Instant>,
    account: ConnectedAccount,
    /// The integration, its templates filled with the account's parameters.
    integration: Integration,
    scheme: crate::Registered,
    /// The API base URL, filled in.
    base: Url,
    /// The client to send with: the shared one, or when the base URL's host is
    /// filled from the connection's parameters (typed by an end user), one that
    /// connects to it only at public addresses ([`Guarding`]).
    client: reqwest::Client,
    /// The integration's fixed request headers.
    headers: HeaderMap,
    /// The last few paths asked for and the URLs [`rules::target`] made of them
    /// (see [`Target::url`]).
    urls: parking_lot::Mutex<Vec<(String, Arc<Url>)>>,
}

/// How many paths a target keeps the URLs of, and the longest path it keeps: at
/// most about 2 KiB per cached target (10,000 targets by default).
const KEPT_URLS: usize = 4;
const KEPT_PATH_BYTES: usize = 256;

fn unavailable(message: String) -> Error {
    Error::Scheme(SchemeError::Unavailable { message })
}

impl Target {
    async fn read(kh: &Keyhaven, id: &ConnectedAccountId) -> Result<Self, Error> {
        let account = kh.connected_accounts().get(id.as_str()).await?;
        let integration = kh.integration_of(&account).await?;
        let scheme = kh.schemes().get(&integration.auth_scheme)?.clone();
        // The request may be fine; the account's integration cannot serve it (409).
        let template = integration
            .config_str("base_url")
            .map(str::to_owned)
            .or_else(|| {
                kh.catalog()
                    .get(account.app.as_str())
                    .map(|entry| entry.api_base_url.clone())
                    .filter(|url| !url.is_empty())
            })
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "app {} has no API base URL; set base_url on its integration",
                    account.app
                ))
            })?;
        let filled = keyhaven_catalog::fill_template(&template, &account.params);
        let missing = keyhaven_catalog::template_names(&filled);
        if !missing.is_empty() {
            return Err(Error::Conflict(format!(
                "the account's API base URL {template:?} needs the connection parameters {} that the account lacks; connect it again with them",
                missing.join(", ")
            )));
        }
        let base = Url::parse(&filled).map_err(|e| {
            Error::Conflict(format!(
                "the account's API base URL {filled:?} is not a URL ({e}); fix base_url on integration {}, or connect the account again with every parameter",
                integration.id
            ))
        })?;
        let from_params = !egress::host_param_names(&template).is_empty();
        let mut guarded = Vec::new();
        if from_params && !egress::allows_private_hosts(&integration) {
            let field = "auth_config.base_url";
            if let Some(kind) = egress::private_url_kind(&base) {
                return Err(egress::private_host_error(
                    "connected_account_params",
                    &template,
                    field,
                    base.host_str().unwrap_or_default(),
                    kind,
                ));
            }
            if let Some(Host::Domain(name)) = base.host() {
                guarded.push(GuardedName {
                    name: name.to_owned(),
                    template: template.clone(),
                    field: field.to_owned(),
                });
            }
        }
        let client = kh.guarding_client(guarded)?;
        let effective = effective_integration(&integration, &account.params).into_owned();
        let headers = fixed_headers(&effective);
        Ok(Self {
            made: Instant::now(),
            made_fast: kh
                .inner
                .fast_clock
                .as_ref()
                .map(crate::cache::FastClock::now),
            account,
            integration: effective,
            scheme,
            base,
            client,
            headers,
            urls: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// The URL a request for `path` goes to: [`rules::target`] of the base URL and
    /// `path`, which depends on nothing else, kept for the last few paths. Making it
    /// (setting and checking the path) was the largest share of keyhaven's own work
    /// per request, about 3,700 instructions (callgrind, BENCHMARKS.md); a kept one
    /// costs a comparison and a reference count. A refused path is refused each time.
    fn url(&self, path: &str) -> Result<Arc<Url>, Error> {
        if let Some((_, url)) = self.urls.lock().iter().find(|(kept, _)| kept == path) {
            return Ok(url.clone());
        }
        let url = Arc::new(rules::target(&self.base, path)?);
        if path.len() <= KEPT_PATH_BYTES {
            let mut urls = self.urls.lock();
            if !urls.iter().any(|(kept, _)| kept == path) {
                if urls.len() >= KEPT_URLS {
                    urls.remove(0);
                }
                urls.push((path.to_owned(), url.clone()));
            }
        }
        Ok(url)
    }
}

/// What an HTTP client's error says, with its causes and without the URL (whose
/// query may hold credentials, a filter or a token).
pub fn http_error_reason(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a transport error says, without any URL, with the query values of `sent`
/// (which may hold credentials) scrubbed out in case a cause quotes them. `sent`
/// may be left out for a URL without a query: there is nothing to scrub then.
pub fn transport_reason(e: reqwest::Error, sent: Option<&Url>) -> String {
    if e.is_timeout() {
        return format!(
            "timed out (keyhaven's client waits {} s to connect)",
            CONNECT_TIMEOUT.as_secs()
        );
    }
    let reason = http_error_reason(e);
    match sent {
        Some(sent) => rules::scrub(&reason, sent),
        None => reason,
    }
}

/// A request body: bytes, which can be sent again after a refresh, or a stream,
/// which cannot.
#[derive(Debug)]
enum Body {
    Bytes(Bytes),
    Stream(reqwest::Body),
}

/// A request to send with an account's credentials: made by [`Keyhaven::request`],
/// sent by [`ApiRequest::send`].
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct ApiRequest {
    kh: Keyhaven,
    /// The account's id, parsed when the request is made (its error is answered
    /// when sent, after the caller's own mistakes).
    account: Result<ConnectedAccountId, Error>,
    method: Method,
    /// `None`: the base URL itself (`/`).
    path: Option<String>,
    headers: HeaderMap,
    body: Body,
    /// `None`: the library (`key: "library"` in the audit log).
    caller: Option<AuditCaller>,
    error: Option<Error>,
}

impl Keyhaven {
    /// A request to the API of account `account_id` (`GET` of its base URL until
    /// told otherwise), with its credentials.
    ///
    /// ```no_run
    /// # async fn demo(kh: keyhaven::Keyhaven) -> Result<(), keyhaven::Error> {
    /// let answer = kh.request("ca_...").get("/user/repos?per_page=5").send().await?;
    /// let repos: keyhaven::serde_json::Value = answer.json().await.unwrap_or_default();
    /// # Ok(()) }
    /// ```
    pub fn request(&self, account_id: &str) -> ApiRequest {
        ApiRequest {
            kh: self.clone(),
            account: ConnectedAccountId::parse(account_id),
            method: Method::GET,
            path: None,
            headers: HeaderMap::new(),
            body: Body::Bytes(Bytes::new()),
            caller: None,
            error: None,
        }
    }

    /// The HTTP client shared by requests and the built-in schemes.
    pub fn http_client(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// Where the account's requests go and with what, cached.
    async fn target(&self, id: &ConnectedAccountId) -> Result<Arc<Target>, Error> {
        if let Some(hit) = self.inner.cache.target(id.as_str()) {
            let age = match (&self.inner.fast_clock, hit.made_fast) {
                (Some(clock), Some(made)) => clock.now().saturating_duration_since(made),
                _ => hit.made.elapsed(),
            };
            if age < TARGET_TTL {
                return Ok(hit);
            }
        }
        let generation = self.inner.cache.generation();
        let target = Arc::new(Target::read(self, id).await?);
        self.inner.cache.put_target(id, target.clone(), generation);
        Ok(target)
    }
}

impl ApiRequest {
    /// Sends with `method` (GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS; others
    /// are refused when sent).
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// To `path` under the account's API base URL (`/user/repos?per_page=5`), or to
    /// a full URL under it. Anything outside it is refused when sent.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// `GET path`.
    pub fn get(self, path: impl Into<String>) -> Self {
        self.method(Method::GET).path(path)
    }

    /// `POST path`.
    pub fn post(self, path: impl Into<String>) -> Self {
        self.method(Method::POST).path(path)
    }

    /// `PUT path`.
    pub fn put(self, path: impl Into<String>) -> Self {
        self.method(Method::PUT).path(path)
    }

    /// `PATCH path`.
    pub fn patch(self, path: impl Into<String>) -> Self {
        self.method(Method::PATCH).path(path)
    }

    /// `DELETE path`.
    pub fn delete(self, path: impl Into<String>) -> Self {
        self.method(Method::DELETE).path(path)
    }

    /// Adds a header. `Host`, hop-by-hop headers, `x-api-key` (keyhaven's own key)
    /// and `content-length` are refused; the credentials' own headers are put on last
    /// and cannot be replaced.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match rules::header(name, value) {
            Ok((name, value)) => {
                self.headers.append(name, value);
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Adds every header of `headers`, each checked as [`ApiRequest::header`] does.
    pub fn headers(mut self, headers: &HeaderMap) -> Self {
        for (name, value) in headers {
            match value.to_str() {
                Ok(text) => self = self.header(name.as_str(), text),
                Err(_) => {
                    self.error.get_or_insert(Error::invalid(
                        format!("headers.{name}"),
                        "has a value that is not visible ASCII text",
                    ));
                }
            }
        }
        self
    }

    /// A body that can be sent again (after a refresh on a 401).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Body::Bytes(body.into());
        self
    }

    /// A JSON body (and `content-type: application/json` unless set).
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => {
                self.headers
                    .entry(http::header::CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static("application/json"));
                self.body = Body::Bytes(bytes.into());
            }
            Err(e) => {
                self.error
                    .get_or_insert(Error::invalid("body", format!("cannot be JSON: {e}")));
            }
        }
        self
    }

    /// A streamed body (an upload of any size): sent as it comes, so it is not sent
    /// again after a 401; the 401 is answered.
    pub fn body_stream(mut self, body: reqwest::Body) -> Self {
        self.body = match body.as_bytes() {
            Some(bytes) => Body::Bytes(Bytes::copy_from_slice(bytes)),
            None => Body::Stream(body),
        };
        self
    }

    /// Who asks, for the audit log (the server names the key and address).
    pub fn caller(mut self, caller: AuditCaller) -> Self {
        self.caller = Some(caller);
        self
    }

    /// Sends it: the answer, whatever its status, with its body still to read
    /// (stream it with `chunk()` or `bytes_stream()`).
    ///
    /// # Errors
    /// A malformed or unknown account, one not `ACTIVE`, an app without a base URL,
    /// a path outside it, a refused method or header, a host from the account's
    /// parameters that is private, a refresh that was due and failed, the API
    /// unreachable, or the audit log that cannot be written (nothing is sent then).
    pub async fn send(self) -> Result<reqwest::Response, Error> {
        let Self {
            kh,
            account,
            method,
            path,
            mut headers,
            body,
            caller,
            error,
        } = self;
        if let Some(e) = error {
            return Err(e);
        }
        // Everything about the request is checked before the credentials are read.
        let method = rules::sendable(method)?;
        let id = account?;
        let account = id.as_str();
        let audit = &kh.inner.audit;
        audit.ready()?;
        let target = kh.target(&id).await?;
        let url = target.url(path.as_deref().unwrap_or("/"))?;
        let client = target.client.clone();
        for (name, value) in &target.headers {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        let mut body = Some(body);
        let mut used = kh.credentials(account).await?;
        let mut retried = false;
        let limit = kh.inner.settings.read_timeout;
        let watch = silence::Guard::new(limit)
            .map_err(|e| Error::Internal(format!("cannot send a request: {e}")))?;
        loop {
            let mut outgoing = OutgoingRequest::new(method.clone(), Url::clone(&url));
            outgoing.headers = headers.clone();
            let replayable = match &body {
                Some(Body::Bytes(bytes)) => {
                    outgoing.body = bytes.to_vec();
                    true
                }
                _ => false,
            };
            // The credentials go on last: the caller's headers cannot replace them.
            let cx = AccountContext::new(&target.integration, &target.account, &used, kh.now())
                .with_http(&kh.inner.http);
            target.scheme.authorize(&cx, &mut outgoing)?;
            if !rules::is_under(&outgoing.url, &target.base) {
                return Err(Error::Internal(format!(
                    "auth scheme {} moved a request away from the account's API",
                    target.account.auth_scheme
                )));
            }
            // Kept to scrub an error's text of the query's values (credentials in a
            // query parameter); a URL without a query has none to scrub.
            let sent = outgoing.url.query().is_some().then(|| outgoing.url.clone());
            // Made whole here, not through a builder, which would merge the headers
            // into an empty map one by one.
            let mut request = reqwest::Request::new(outgoing.method, outgoing.url);
            *request.headers_mut() = outgoing.headers;
            *request.body_mut() = match (replayable, body.take()) {
                (true, Some(Body::Bytes(bytes))) => {
                    body = Some(Body::Bytes(bytes.clone()));
                    (!bytes.is_empty()).then(|| bytes.into())
                }
                (_, Some(Body::Stream(stream))) => Some(stream),
                _ => None,
            };
            let entry = |outcome: &str, status: Option<u16>| {
                let caller = caller.clone().unwrap_or_else(|| AuditCaller {
                    key: Some("library".to_owned()),
                    ..AuditCaller::default()
                });
                let mut entry = AuditEntry::new(kh.now(), AuditAction::Request, account, outcome)
                    .of(&target.account)
                    .by(caller);
                entry.method = Some(method.to_string());
                entry.host = url.host_str().map(|host| match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                });
                entry.path = Some(url.path().to_owned());
                entry.status = status;
                entry
            };
            // Entries are made only when something takes them.
            let audited = audit.is_kept()
                || tracing::enabled!(target: "keyhaven::audit", tracing::Level::INFO);
            let record = |outcome: &str, status: Option<u16>| {
                if audited {
                    let _ = audit.record_queued(&entry(outcome, status));
                }
            };
            watch.alive();
            // From here the credentials may be out: a caller that gives up (a
            // dropped future: a server's deadline, a client gone) leaves a line.
            let abandoned = OnDrop::new(|| record("abandoned", None));
            let answer = match watch.until(client.execute(request)).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(e)) => {
                    if let Some(refused) = guard_refusal(&e) {
                        // Never connected: the host resolved where it may not.
                        abandoned.disarm();
                        record("unreachable", None);
                        return Err(refused);
                    }
                    Err(format!(
                        "could not be reached: {}",
                        transport_reason(e, sent.as_ref())
                    ))
                }
                Err(silent) => Err(format!(
                    "did not answer: it sent nothing for {} s",
                    silent.0
                )),
            };
            abandoned.disarm();
            let response = answer.map_err(|reason| {
                record("unreachable", None);
                unavailable(format!("the API at {} {reason}", rules::shown(&url)))
            })?;
            let status = response.status();
            if status == http::StatusCode::UNAUTHORIZED && replayable && !retried {
                retried = true;
                // The request went out with the credentials: it is recorded as
                // refused when the refresh fails, when it gives credentials to try,
                // and when the caller gives up meanwhile.
                let refused = OnDrop::new(|| record("refused", Some(status.as_u16())));
                let fresh = kh
                    .refresh_credentials(&id, Due::IfStill(used.clone()))
                    .await?;
                if fresh != used {
                    drop(refused);
                    used = fresh;
                    continue;
                }
                // Nothing new to try: the API's 401 is the answer.
                refused.disarm();
            }
            // Sent already: a line that cannot be queued now is logged, and the next
            // request is refused up front.
            record("sent", Some(status.as_u16()));
            return Ok(watch.watch_body(response));
        }
    }
}

/// Runs its closure when dropped, unless disarmed first: what is owed when a
/// future is dropped at an `await` (an audit line for a request that went out).
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    fn new(f: F) -> Self {
        Self(Some(f))
    }

    /// Dropped without running the closure.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn guarded_names_that_resolve_to_private_addresses_do_not_resolve() {
        use reqwest::dns::Resolve;
        // localhost passes no name check here: only what it resolves to is judged.
        let guarding = Guarding {
            inner: None,
            names: vec![GuardedName {
                name: "localhost".into(),
                template: "http://{host}/api".into(),
                field: "auth_config.base_url".into(),
            }],
        };
        let Err(e) = guarding.resolve("localhost".parse().unwrap()).await else {
            panic!("localhost resolved")
        };
        let err = e.downcast_ref::<Refused>().unwrap().error();
        assert_eq!(err.kind(), keyhaven_core::ErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(text.contains("connected_account_params.host"), "{text}");
        assert!(text.contains("localhost (which resolves to"), "{text}");
        assert!(text.contains("loopback"), "{text}");
        // A name the end user did not type resolves as it is.
        let unguarded = Guarding {
            inner: None,
            names: Vec::new(),
        };
        let Ok(found) = unguarded.resolve("localhost".parse().unwrap()).await else {
            panic!("localhost did not resolve")
        };
        assert!(found.into_iter().all(|a| a.ip().is_loopback()));
    }
}
