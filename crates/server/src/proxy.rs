//! Authenticated requests through keyhaven: the caller names an account and a path
//! under its API's base URL; keyhaven adds the credentials (fresh) and sends it. The
//! credentials never reach the caller. Used by the server's proxy route and by the
//! CLI's `request` on a local data directory.
//!
//! Every route sends through the library's one request path ([`keyhaven::request`]:
//! its rules, DNS pinning, refresh-and-retry and audit). The JSON routes read answers
//! up to [`ProxyLimits::max_response_bytes`]; the passthrough streams them. Redirects
//! are answered as they are, never followed. No message shows a URL's query or user
//! name.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use keyhaven::{AuditCaller, ConnectedAccount, Error, Keyhaven};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use keyhaven::request::rules;

use crate::api::Caller;
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
            // Before a fragment, if the endpoint has one: what follows `#` is never
            // sent, and neither would the parameters be.
            let (before, fragment) = match path.find('#') {
                Some(at) => path.split_at(at),
                None => (path.as_str(), ""),
            };
            let joiner = if before.contains('?') { '&' } else { '?' };
            path = format!("{before}{joiner}{}{fragment}", query.finish());
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

/// The largest API answer the JSON proxy routes read by default: 10 MiB (the
/// passthrough route streams answers of any size).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 10 * 1024 * 1024;

/// The proxy's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// The largest answer the JSON proxy routes read from an API, in bytes (default
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
        "the API's answer is larger than the proxy's limit of {limit} bytes{}; ask the API for less (a smaller page or range), use the streaming route (ANY /api/v1/proxy/{{account_id}}/{{path}}), or raise the limit (keyhaven serve --proxy-max-response-bytes or KEYHAVEN_PROXY_MAX_RESPONSE_BYTES; ServerConfig.proxy.max_response_bytes in a program)",
        announced.map(|n| format!(" (it announced {n} bytes)")).unwrap_or_default()
    )]
    TooLarge {
        /// The limit.
        limit: u64,
        /// The size the API announced (`content-length`), when it did.
        announced: Option<u64>,
    },
}

/// The error of an answer from the API at `url` that stopped before its end (the URL
/// shown without its query).
fn cut(url: &keyhaven::url::Url, e: reqwest::Error) -> Error {
    Error::Scheme(keyhaven::SchemeError::Unavailable {
        message: format!(
            "the answer of the API at {} was cut: {}",
            rules::shown(url),
            keyhaven::request::http_error_reason(e)
        ),
    })
}

/// Reads an answer's body, refusing it as soon as it is seen to be over `limit`
/// bytes (announced, or counted while it streams in), so that no more than `limit`
/// bytes (and one chunk) are held.
async fn read_capped(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, ProxyError> {
    let announced = response.content_length();
    if let Some(size) = announced.filter(|size| *size > limit) {
        return Err(ProxyError::TooLarge {
            limit,
            announced: Some(size),
        });
    }
    let url = response.url().clone();
    let capacity = announced.unwrap_or(0).min(limit).min(1024 * 1024);
    let mut body = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    loop {
        let chunk = response.chunk().await.map_err(|e| cut(&url, e))?;
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

/// Sends `request` with the credentials of account `id`, through the library's one
/// request path, and reads the answer (at most `limits.max_response_bytes`).
///
/// # Errors
/// An unknown or inactive account, an app without a base URL, a path outside it,
/// a refused method or header, a host from the account's parameters that is
/// private, the API unreachable or its answer over the size limit.
pub async fn send(
    kh: &Keyhaven,
    id: &str,
    request: &ProxyRequest,
    caller: AuditCaller,
    limits: ProxyLimits,
) -> Result<ProxyResponse, ProxyError> {
    let method = keyhaven::request::rules::method(request.method.as_deref())?;
    let mut outgoing = kh
        .request(id)
        .method(method)
        .path(request.path.clone())
        .caller(caller);
    for (name, value) in &request.headers {
        outgoing = outgoing.header(name, value);
    }
    outgoing = match &request.body {
        None | Some(Value::Null) => outgoing,
        Some(Value::String(text)) => outgoing.body(text.clone()),
        Some(json) => outgoing.json(json),
    };
    let response = outgoing.send().await?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_owned())))
        .collect();
    let bytes = read_capped(response, limits.max_response_bytes).await?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(ProxyResponse {
        status,
        headers,
        body,
    })
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
    caller: Caller,
    raw: Bytes,
) -> crate::api::Result<Json<ProxyResponse>> {
    let request: ProxyRequest = crate::api::body(&raw)?;
    Ok(Json(
        send(&s.kh, &id, &request, caller.0, s.config.proxy).await?,
    ))
}

/// A proxy call in Composio's shapes (v2's `actions/proxy`, v3.1's
/// `tools/execute/proxy`): the request made from its parameters, sent by the one
/// proxy with account `id`'s credentials, the answer as `{data, status, headers}`.
pub(crate) async fn composio(
    s: &AppState,
    caller: Caller,
    id: &str,
    endpoint: String,
    method: Option<String>,
    body: Option<Value>,
    parameters: Vec<ComposioProxyParameter>,
) -> crate::api::Result<Json<ComposioProxyAnswer>> {
    let request = ProxyRequest::composio(endpoint, method, body, parameters)?;
    Ok(Json(
        send(&s.kh, id, &request, caller.0, s.config.proxy)
            .await?
            .into(),
    ))
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

/// Request bodies up to this size are read before they are sent, so that they can
/// be sent again after a refresh on a 401; larger ones (and those of unknown size)
/// stream through, and a 401 to them is answered as it is.
const REPLAYABLE_BODY_BYTES: usize = 1024 * 1024;

/// Answers of known length up to this size are read whole before they are passed on
/// (one write with the headers); larger ones stream.
const SMALL_ANSWER_BYTES: u64 = 64 * 1024;

/// The header set on every answer of the passthrough route that comes from the API,
/// so that a client tells them from keyhaven's own errors (which lack it).
pub const UPSTREAM_HEADER: &str = "x-keyhaven-upstream";

/// The prefix of the passthrough route.
pub const PASSTHROUGH_PREFIX: &str = "/api/v1/proxy/";

/// `ANY /api/v1/proxy/{account_id}/{*path}`: the request as it came (method, query,
/// headers, body) sent to the account's API at `path` with its credentials, and the
/// API's answer as it comes (status, headers, body streamed both ways). `Host`,
/// hop-by-hop headers and keyhaven's own key are never forwarded. Not in the OpenAPI
/// document: its answers are the API's.
pub(crate) async fn passthrough(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    request: axum::extract::Request,
) -> axum::response::Response {
    match passthrough_inner(&s, caller, request).await {
        Ok(response) => response,
        Err(e) => axum::response::IntoResponse::into_response(ApiError::from(e)),
    }
}

async fn passthrough_inner(
    s: &AppState,
    caller: Caller,
    request: axum::extract::Request,
) -> Result<axum::response::Response, Error> {
    use axum::http::header;
    let (parts, body) = request.into_parts();
    // The path as written (not decoded), so that the rules see encoded tricks.
    let rest = parts
        .uri
        .path()
        .strip_prefix(PASSTHROUGH_PREFIX)
        .unwrap_or_default();
    let (id, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut target = format!("/{path}");
    if let Some(query) = parts.uri.query() {
        target.push('?');
        target.push_str(query);
    }
    let mut forwarded = keyhaven::http::HeaderMap::new();
    // Looked up once, not for every header: most requests have no `Connection`.
    let hop_listed = parts.headers.contains_key(header::CONNECTION);
    for (name, value) in &parts.headers {
        if rules::refusal(name.as_str()).is_some()
            || (hop_listed && rules::named_by_connection(&parts.headers, name.as_str()))
        {
            continue;
        }
        forwarded.append(name.clone(), value.clone());
    }
    // A body of no length: `Content-Length: 0`, or none at all (a request without
    // `Content-Length` or `Transfer-Encoding`, as `curl -X DELETE` sends): nothing
    // to stream, so the request stays replayable after a 401.
    let size = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .or_else(|| http_body::Body::is_end_stream(&body).then_some(0));
    let mut outgoing =
        s.kh.request(id)
            .method(parts.method.clone())
            .path(target)
            .caller(caller.0)
            .headers(&forwarded);
    outgoing = match size {
        Some(0) => outgoing,
        Some(n) if n <= REPLAYABLE_BODY_BYTES => {
            let bytes = axum::body::to_bytes(body, REPLAYABLE_BODY_BYTES)
                .await
                .map_err(|e| Error::invalid("body", format!("could not be read: {e}")))?;
            outgoing.body(bytes)
        }
        _ if parts.method == axum::http::Method::GET
            || parts.method == axum::http::Method::HEAD =>
        {
            outgoing
        }
        _ => outgoing.body_stream(keyhaven::reqwest::Body::wrap_stream(
            body.into_data_stream(),
        )),
    };
    let answer = outgoing.send().await?;
    let mut response = axum::response::Response::builder().status(answer.status());
    if let Some(headers) = response.headers_mut() {
        let hop_listed = answer.headers().contains_key(header::CONNECTION);
        for (name, value) in answer.headers() {
            if !rules::is_hop_by_hop(name.as_str())
                && (!hop_listed || !rules::named_by_connection(answer.headers(), name.as_str()))
            {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(UPSTREAM_HEADER, axum::http::HeaderValue::from_static("1"));
    }
    // A small answer of known length is read whole and sent in one write with its
    // headers; anything else streams.
    let body = match answer.content_length() {
        Some(n) if n <= SMALL_ANSWER_BYTES => {
            let url = answer.url().clone();
            let bytes = answer.bytes().await.map_err(|e| cut(&url, e))?;
            axum::body::Body::from(bytes)
        }
        _ => axum::body::Body::from_stream(answer.bytes_stream()),
    };
    response
        .body(body)
        .map_err(|e| Error::Internal(format!("cannot pass the API's answer on: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(kind: &str, name: &str, value: &str) -> ComposioProxyParameter {
        serde_json::from_value(serde_json::json!({"type": kind, "name": name, "value": value}))
            .expect("a parameter")
    }

    #[test]
    fn query_parameters_go_into_the_query_before_any_fragment() {
        for (endpoint, expected) in [
            ("/x", "/x?a=1+2&b=%26"),
            ("/x?c=3", "/x?c=3&a=1+2&b=%26"),
            ("/x#top", "/x?a=1+2&b=%26#top"),
            ("/x?c=3#t?op", "/x?c=3&a=1+2&b=%26#t?op"),
        ] {
            let request = ProxyRequest::composio(
                endpoint.to_owned(),
                None,
                None,
                vec![
                    param("query", "a", "1 2"),
                    param("header", "x-h", "v"),
                    param("query", "b", "&"),
                ],
            )
            .expect("valid parameters");
            assert_eq!(request.path, expected, "{endpoint}");
            assert_eq!(request.headers.get("x-h").map(String::as_str), Some("v"));
        }
        let none = ProxyRequest::composio("/x#f".to_owned(), None, None, vec![]).expect("valid");
        assert_eq!(none.path, "/x#f");
        assert!(
            ProxyRequest::composio("/x".to_owned(), None, None, vec![param("cookie", "a", "b")])
                .is_err()
        );
    }
}
