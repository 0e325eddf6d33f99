//! Authenticated requests through keyhaven: the caller names an account and a path
//! under its API's base URL; keyhaven adds the credentials (fresh) and sends it. The
//! credentials never reach the caller. Used by the server's proxy route and by the
//! CLI's `request` on a local data directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use keyhaven::http::{HeaderName, HeaderValue, Method};
use keyhaven::url::Url;
use keyhaven::{ConnectedAccount, Error, Keyhaven, OutgoingRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::api::Result;

/// A request to send with an account's credentials.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ProxyRequest {
    /// `GET` (default), `POST`, ...
    #[serde(default)]
    pub method: Option<String>,
    /// A path under the account's API base URL (`/user/repos?per_page=5`), or a full
    /// URL under it. Also `endpoint`, Composio's name.
    #[serde(alias = "endpoint")]
    pub path: String,
    /// Extra headers. The credentials' own headers cannot be replaced.
    #[serde(default)]
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

/// [`base_url_of`] the account's integration.
pub async fn base_url(kh: &Keyhaven, account: &ConnectedAccount) -> Option<String> {
    kh.integrations()
        .get(account.integration_id.as_str())
        .await
        .ok()
        .and_then(|i| base_url_of(&i, account))
}

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::invalid(field, reason)
}

/// The URL of `path` under `base`; refuses anything that would leave it.
fn target(base: &str, path: &str) -> std::result::Result<Url, Error> {
    let base_url = Url::parse(base)
        .map_err(|e| Error::Internal(format!("the account's base URL {base:?} is invalid: {e}")))?;
    let url = if path.starts_with("http://") || path.starts_with("https://") {
        Url::parse(path).map_err(|e| invalid("path", format!("is not a URL: {e}")))?
    } else if path.starts_with('/') && !path.starts_with("//") {
        Url::parse(&format!("{}{path}", base.trim_end_matches('/')))
            .map_err(|e| invalid("path", format!("does not make a URL: {e}")))?
    } else {
        return Err(invalid(
            "path",
            format!("give a path starting with / under {base}, such as /user"),
        ));
    };
    let under = url.scheme() == base_url.scheme()
        && url.host_str() == base_url.host_str()
        && url.port_or_known_default() == base_url.port_or_known_default()
        && url
            .path()
            .starts_with(base_url.path().trim_end_matches('/'));
    if !under {
        return Err(invalid(
            "path",
            format!(
                "{url} is not under the account's API at {base}: credentials are only sent there"
            ),
        ));
    }
    Ok(url)
}

/// Sends `request` with the credentials of account `id`.
///
/// # Errors
/// An unknown or inactive account, an app without a base URL, a path outside it,
/// an invalid method or header, or the API unreachable.
pub async fn send(
    kh: &Keyhaven,
    id: &str,
    request: &ProxyRequest,
) -> std::result::Result<ProxyResponse, Error> {
    let account = kh.connected_accounts().get(id).await?;
    // The request may be fine; the account's integration cannot serve it (409).
    let base = base_url(kh, &account).await.ok_or_else(|| {
        Error::Conflict(format!(
            "app {} has no API base URL; set base_url on its integration",
            account.app
        ))
    })?;
    let url = target(&base, &request.path)?;
    let method = request
        .method
        .as_deref()
        .unwrap_or("GET")
        .to_ascii_uppercase();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| invalid("method", format!("{method:?} is not an HTTP method")))?;
    let mut outgoing = OutgoingRequest::new(method, url);
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid("headers", format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            invalid(
                "headers",
                format!("the value of {name} is not a header value"),
            )
        })?;
        outgoing.headers.insert(name, value);
    }
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
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::Internal(format!("cannot make an HTTP client: {e}")))?;
    let response = client
        .request(outgoing.method, outgoing.url)
        .headers(outgoing.headers)
        .body(outgoing.body)
        .send()
        .await
        .map_err(|e| {
            Error::Scheme(keyhaven::SchemeError::Unavailable {
                message: format!("the API could not be reached: {e}"),
            })
        })?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_owned())))
        .collect();
    let bytes = response.bytes().await.map_err(|e| {
        Error::Scheme(keyhaven::SchemeError::Unavailable {
            message: format!("the API's answer was cut: {e}"),
        })
    })?;
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
    params(("id" = crate::openapi::AccountId, Path, description = "ca_...")),
    request_body = crate::openapi::ProxyRequestBody,
    responses((status = 200, description = "The API's answer (whatever its status)", body = ProxyResponse),
        (status = 400, description = "A path outside the API, a bad method or header", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such account", body = crate::openapi::ErrorBody),
        (status = 409, description = "The account is not ACTIVE, or its integration has no base_url", body = crate::openapi::ErrorBody),
        (status = 422, description = "A refresh was due and the provider refused it", body = crate::openapi::ErrorBody),
        (status = 503, description = "The API could not be reached", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn proxy(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<ProxyResponse>> {
    let request: ProxyRequest = crate::api::body(&raw)?;
    Ok(Json(send(&s.kh, &id, &request).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_base_url() {
        let base = "https://api.example.com/v1";
        assert_eq!(
            target(base, "/user?x=1").unwrap().as_str(),
            "https://api.example.com/v1/user?x=1"
        );
        assert!(target(base, "https://api.example.com/v1/me").is_ok());
        for bad in [
            "user",
            "//evil.example/x",
            "https://evil.example/v1/user",
            "https://api.example.com/v2/user",
            "http://api.example.com/v1/user",
        ] {
            assert!(target(base, bad).is_err(), "{bad} must be refused");
        }
        // '@' after the host is part of the path, never a new host.
        assert_eq!(
            target(base, "/@evil.example").unwrap().host_str(),
            Some("api.example.com")
        );
    }
}
