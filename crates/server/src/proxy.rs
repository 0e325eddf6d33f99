//! Authenticated requests through keyhaven: the caller names an account and a path
//! under its API's base URL; keyhaven adds the credentials (fresh) and sends it. The
//! credentials never reach the caller. Used by the server's proxy route and by the
//! CLI's `request` on a local data directory.
//!
//! What may be sent is decided by the pure rules of [`rules`] (the path stays under
//! the base URL, ordinary methods, no `Host` or hop-by-hop headers) and by
//! [`keyhaven::egress`] (a host filled from the account's parameters must be public;
//! here it is also resolved, and the request pinned to the checked addresses).
//! Answers are read up to [`ProxyLimits::max_response_bytes`]; redirects are answered
//! as they are, never followed. No message shows a URL's query or user name.

pub mod rules;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyhaven::http::{HeaderMap, HeaderValue};
use keyhaven::url::{Host, Url};
use keyhaven::{ConnectedAccount, Error, Keyhaven, OutgoingRequest, egress};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ApiError, AppState};

/// A request to send with an account's credentials.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ProxyRequest {
    /// `GET` when absent; GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS, in any
    /// case (others, such as TRACE, are refused with 400).
    #[serde(default)]
    #[schema(value_type = Option<crate::views::shapes::HttpMethod>)]
    pub method: Option<String>,
    /// A path under the account's API base URL (`/user/repos?per_page=5`), or a full
    /// URL under it. Also `endpoint`, Composio's name. Anything outside the base URL
    /// is refused (400).
    #[serde(alias = "endpoint")]
    #[schema(value_type = crate::views::shapes::ProxyPath)]
    pub path: String,
    /// Extra headers. The credentials' own headers cannot be replaced; `Host`,
    /// hop-by-hop headers (`connection`, `te`, `proxy-*` ...), `x-api-key` and
    /// `content-length` are refused.
    #[serde(default)]
    #[schema(schema_with = crate::views::shapes::header_map)]
    pub headers: BTreeMap<String, String>,
    /// The body: a JSON value is sent as JSON, a string as it is.
    #[serde(default)]
    pub body: Option<Value>,
}

/// What the API answered.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ProxyResponse {
    /// Its status.
    pub status: u16,
    /// Its headers (the last value of each).
    pub headers: BTreeMap<String, String>,
    /// Its body: JSON when it is JSON, else text.
    pub body: Value,
}

/// A parameter of a Composio proxy call: a header, or a query parameter added to the
/// endpoint.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ComposioProxyParameter {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// `header` or `query` (also `in`, the JS SDK 0.5's name).
    #[serde(rename = "type", alias = "in")]
    #[schema(pattern = "^(header|query)$")]
    pub kind: String,
}

/// What a Composio proxy call answers: the API's status, headers and body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComposioProxyAnswer {
    /// The API's body: JSON when it is JSON, else text.
    pub data: Value,
    /// The API's status (whatever it is: keyhaven answers 200 when it got an answer).
    pub status: u16,
    /// The API's headers (the last value of each).
    pub headers: BTreeMap<String, String>,
}

impl From<ProxyResponse> for ComposioProxyAnswer {
    fn from(r: ProxyResponse) -> Self {
        Self {
            data: r.body,
            status: r.status,
            headers: r.headers,
        }
    }
}

impl ProxyRequest {
    /// The request of a Composio proxy call: its `endpoint` (a path under the
    /// account's API, or a URL under it), with the `query` parameters added to it
    /// and the `header` ones as headers.
    ///
    /// # Errors
    /// A parameter that is neither a header nor a query parameter (invalid input).
    pub fn composio(
        endpoint: String,
        method: Option<String>,
        body: Option<Value>,
        parameters: Vec<ComposioProxyParameter>,
    ) -> Result<Self, Error> {
        let mut path = endpoint;
        let mut headers = BTreeMap::new();
        let mut query = keyhaven::url::form_urlencoded::Serializer::new(String::new());
        let mut any_query = false;
        for p in parameters {
            match p.kind.as_str() {
                "header" => {
                    headers.insert(p.name, p.value);
                }
                "query" => {
                    query.append_pair(&p.name, &p.value);
                    any_query = true;
                }
                other => {
                    return Err(Error::invalid(
                        "parameters.type",
                        format!("{other:?} is not a parameter type: give header or query"),
                    ));
                }
            }
        }
        if any_query {
            let joiner = if path.contains('?') { '&' } else { '?' };
            path = format!("{path}{joiner}{}", query.finish());
        }
        Ok(Self {
            method,
            path,
            headers,
            body,
        })
    }
}

/// The account's API base URL: its integration's `base_url`, templates filled with
/// the account's parameters.
pub fn base_url_of(
    integration: &keyhaven::Integration,
    account: &ConnectedAccount,
) -> Option<String> {
    integration
        .config_str("base_url")
        .map(|u| keyhaven::fill_template(u, &account.params))
}

/// The largest API answer the proxy reads by default: 10 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;

/// How long an API may take to answer, body included.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting, and resolving a host name, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// The largest answer read from an API, in bytes (default
    /// [`DEFAULT_MAX_RESPONSE_BYTES`]). A larger one is refused with a 502 as soon as
    /// it is seen to be larger: no more than this (and the chunk being read) is ever
    /// held in memory.
    pub max_response_bytes: u64,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// Why a proxied request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Refused input, an unknown or inactive account, an unreachable API ...: a
    /// keyhaven error, with its kind.
    #[error(transparent)]
    Keyhaven(#[from] Error),
    /// The API's answer is larger than [`ProxyLimits::max_response_bytes`]; nothing
    /// of it is returned.
    #[error(
        "the API's answer is larger than the proxy's limit of {limit} bytes{}; ask the API for less (a smaller page or range), or raise the limit (keyhaven serve --proxy-max-response-bytes or KEYHAVEN_PROXY_MAX_RESPONSE_BYTES; ServerConfig.proxy.max_response_bytes in a program)",
        announced.map(|n| format!(" (it announced {n} bytes)")).unwrap_or_default()
    )]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The size the API announced (`content-length`), when it did.
        announced: Option<u64>,
    },
}

fn unavailable(message: String) -> Error {
    Error::Scheme(keyhaven::SchemeError::Unavailable { message })
}

/// What a transport error says, without any URL: the client's words and their
/// causes, with the query values of `sent` (which may hold credentials) scrubbed out
/// in case a cause quotes them.
fn transport_reason(e: reqwest::Error, sent: &Url) -> String {
    if e.is_timeout() {
        return format!(
            "timed out (the proxy waits {} s to connect and {} s for the whole answer)",
            CONNECT_TIMEOUT.as_secs(),
            TIMEOUT.as_secs()
        );
    }
    rules::scrub(&http_error_reason(e), sent)
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

/// Where an account's requests go.
#[derive(Debug)]
struct Destination {
    /// The API base URL, filled in.
    base: Url,
    /// The integration's `base_url` template, when its host is filled from the
    /// connection's parameters (typed by an end user) and must be a public one.
    guarded: Option<String>,
}

impl Destination {
    /// The account's API base URL, and whether its host must be checked.
    async fn of(kh: &Keyhaven, account: &ConnectedAccount) -> Result<Self, Error> {
        let integration = kh
            .integrations()
            .get(account.integration_id.as_str())
            .await?;
        // The request may be fine; the account's integration cannot serve it (409).
        let template = integration.config_str("base_url").ok_or_else(|| {
            Error::Conflict(format!(
                "app {} has no API base URL; set base_url on its integration",
                account.app
            ))
        })?;
        let filled = keyhaven::fill_template(template, &account.params);
        let missing = keyhaven::template_names(&filled);
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
        let from_params = !egress::host_param_names(template).is_empty();
        let guarded = (from_params && !egress::allows_private_hosts(&integration))
            .then(|| template.to_owned());
        if let Some(template) = &guarded
            && let Some(kind) = egress::private_url_kind(&base)
        {
            return Err(egress::private_host_error(
                "connected_account_params",
                template,
                "auth_config.base_url",
                base.host_str().unwrap_or_default(),
                kind,
            ));
        }
        Ok(Self { base, guarded })
    }

    /// The client to send with: `shared`, or for a host name filled from parameters,
    /// a client pinned to the addresses it resolves to now, each checked to be public
    /// (so that a name cannot lead to this machine or its network, even by resolving
    /// differently a moment later).
    async fn client(&self, shared: &reqwest::Client) -> Result<reqwest::Client, Error> {
        let (Some(template), Some(Host::Domain(name))) = (&self.guarded, self.base.host()) else {
            return Ok(shared.clone());
        };
        let port = self.base.port_or_known_default().unwrap_or(443);
        let found = resolve_public(name, port, template).await?;
        client_builder()
            .resolve_to_addrs(name, &found)
            .build()
            .map_err(|e| Error::Internal(format!("cannot make an HTTP client: {e}")))
    }
}

/// The addresses `name` resolves to, when every one is public.
///
/// # Errors
/// A name that does not resolve (unavailable), or resolves to any private or local
/// address (invalid, naming the parameter of `template` that filled it in).
async fn resolve_public(name: &str, port: u16, template: &str) -> Result<Vec<SocketAddr>, Error> {
    let found: Vec<SocketAddr> =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host((name, port)))
            .await
            .map_err(|_| unavailable(format!("resolving {name} took too long")))?
            .map_err(|e| unavailable(format!("cannot resolve {name}: {e}")))?
            .collect();
    if found.is_empty() {
        return Err(unavailable(format!("{name} resolves to no address")));
    }
    for addr in &found {
        if let Some(kind) = egress::private_address_kind(addr.ip()) {
            return Err(egress::private_host_error(
                "connected_account_params",
                template,
                "auth_config.base_url",
                &format!("{name} (which resolves to {})", addr.ip()),
                kind,
            ));
        }
    }
    Ok(found)
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        // A redirect is answered to the caller as it is: the credentials are never
        // sent on to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyhaven/", env!("CARGO_PKG_VERSION")))
}

/// Reads an answer's body, refusing it as soon as it is seen to be over `limit`
/// bytes (announced, or counted while it streams in), so that no more than `limit`
/// bytes (and one chunk) are held.
async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
    sent: &Url,
) -> Result<Vec<u8>, ProxyError> {
    let announced = response.content_length();
    if let Some(size) = announced.filter(|size| *size > limit) {
        return Err(ProxyError::TooLarge {
            limit,
            announced: Some(size),
        });
    }
    let capacity = announced.unwrap_or(0).min(limit).min(1024 * 1024);
    let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            unavailable(format!(
                "the answer of the API at {} was cut: {}",
                rules::shown(sent),
                transport_reason(e, sent)
            ))
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX) > limit {
            return Err(ProxyError::TooLarge {
                limit,
                announced: None,
            });
        }
        body.extend_from_slice(&chunk);
    }
}

/// Sends requests to accounts' APIs with their credentials: one HTTP client (no
/// redirects followed, timeouts) and the limits. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Proxy {
    client: reqwest::Client,
    limits: ProxyLimits,
}

impl Proxy {
    /// A proxy with `limits`.
    ///
    /// # Errors
    /// The HTTP client cannot be made (no TLS backend).
    pub fn new(limits: ProxyLimits) -> Result<Self, Error> {
        let client = client_builder()
            .build()
            .map_err(|e| Error::Internal(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self { client, limits })
    }

    /// Its limits.
    pub fn limits(&self) -> ProxyLimits {
        self.limits
    }

    /// Sends `request` with the credentials of account `id`.
    ///
    /// # Errors
    /// An unknown or inactive account, an app without a base URL, a path outside it,
    /// a refused method or header, a host from the account's parameters that is
    /// private, the API unreachable or its answer over the size limit.
    pub async fn send(
        &self,
        kh: &Keyhaven,
        id: &str,
        request: &ProxyRequest,
    ) -> Result<ProxyResponse, ProxyError> {
        // Everything about the request is checked before the credentials are read.
        let method = rules::method(request.method.as_deref())?;
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            let (name, value) = rules::header(name, value)?;
            headers.insert(name, value);
        }
        let account = kh.connected_accounts().get(id).await?;
        let destination = Destination::of(kh, &account).await?;
        let url = rules::target(&destination.base, &request.path)?;
        let client = destination.client(&self.client).await?;
        let mut outgoing = OutgoingRequest::new(method, url.clone());
        outgoing.headers = headers;
        match &request.body {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => outgoing.body = text.clone().into_bytes(),
            Some(json) => {
                outgoing.body = serde_json::to_vec(json).unwrap_or_default();
                outgoing
                    .headers
                    .entry(keyhaven::http::header::CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static("application/json"));
            }
        }
        // The credentials go on last: the caller's headers cannot replace them.
        let outgoing = kh.authorize(id, outgoing).await?;
        if !rules::is_under(&outgoing.url, &destination.base) {
            return Err(Error::Internal(format!(
                "auth scheme {} moved a request away from the account's API",
                account.auth_scheme
            ))
            .into());
        }
        let sent = outgoing.url.clone();
        let response = client
            .request(outgoing.method, outgoing.url)
            .headers(outgoing.headers)
            .body(outgoing.body)
            .send()
            .await
            .map_err(|e| {
                unavailable(format!(
                    "the API at {} could not be reached: {}",
                    rules::shown(&url),
                    transport_reason(e, &sent)
                ))
            })?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_owned())))
            .collect();
        let bytes = read_capped(response, self.limits.max_response_bytes, &sent).await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(ProxyResponse {
            status,
            headers,
            body,
        })
    }
}

/// `POST /api/v1/connectedAccounts/{id}/proxy`: sends a request to the account's API
/// with its credentials, and answers what the API answered.
#[utoipa::path(post, path = "/api/v1/connectedAccounts/{id}/proxy", tag = "connectedAccounts",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
    request_body = ProxyRequest,
    responses((status = 200, description = "The API's answer (whatever its status)", body = ProxyResponse),
        (status = 400, description = "A path outside the API, a refused method or header, a private host from the account's parameters", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody),
        (status = 409, description = "The account is not ACTIVE, its integration has no base_url, or it lacks a parameter of it", body = crate::views::v1::ErrorBody),
        (status = 422, description = "A refresh was due and the provider refused it", body = crate::views::v1::ErrorBody),
        (status = 502, description = "The API's answer is over the size limit", body = crate::views::v1::ErrorBody),
        (status = 503, description = "The API could not be reached", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn proxy(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> crate::api::Result<Json<ProxyResponse>> {
    let request: ProxyRequest = crate::api::body(&raw)?;
    Ok(Json(s.proxy()?.send(&s.kh, &id, &request).await?))
}

/// A proxy call in Composio's shapes (v2's `actions/proxy`, v3.1's
/// `tools/execute/proxy`): the request made from its parameters, sent by the one
/// proxy with account `id`'s credentials, the answer as `{data, status, headers}`.
pub(crate) async fn composio(
    s: &AppState,
    id: &str,
    endpoint: String,
    method: Option<String>,
    body: Option<Value>,
    parameters: Vec<ComposioProxyParameter>,
) -> crate::api::Result<Json<ComposioProxyAnswer>> {
    let request = ProxyRequest::composio(endpoint, method, body, parameters)?;
    Ok(Json(s.proxy()?.send(&s.kh, id, &request).await?.into()))
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Keyhaven(e) => e.into(),
            too_large @ ProxyError::TooLarge { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "response_too_large",
                too_large.to_string(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_that_resolve_to_private_addresses_are_refused() {
        // localhost passes no name check here: only what it resolves to is judged.
        let err = resolve_public("localhost", 80, "http://{host}/api")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), keyhaven::ErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(text.contains("connected_account_params.host"), "{text}");
        assert!(text.contains("which resolves to"), "{text}");
        assert!(text.contains("loopback"), "{text}");
    }
}
