//! The HTTP client the OAuth schemes use: reqwest, handed to the `oauth2` crate through
//! its `AsyncHttpClient` trait, with the providers' answers made regular first.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderValue, header};
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

/// Why an HTTP exchange with a provider failed. Never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The provider could not be reached or did not answer in time.
    #[error("could not reach {host}: {reason}")]
    Transport {
        /// The host asked.
        host: String,
        /// What failed (timed out, connection refused, ...).
        reason: String,
    },
    /// The provider answered with a server error or asked us to slow down.
    #[error("{host} answered HTTP {status}")]
    Status {
        /// The host asked.
        host: String,
        /// The HTTP status (5xx or 429).
        status: u16,
    },
}

/// A provider-facing HTTP client: timeouts, no redirects (a token endpoint that
/// redirects is refused rather than followed), and lenient answers: a token answer
/// sent as a form or as JSON with the wrong content type is turned into JSON.
///
/// The default client is built when first used: a scheme that always gets the
/// keyhaven's shared client from its context never builds it (building one loads
/// the system's TLS roots).
#[derive(Debug, Clone)]
pub struct ProviderHttp {
    /// The client given, or the shared one picked for a call.
    client: Option<reqwest::Client>,
    /// The default client, built at its first use.
    default: Arc<OnceLock<reqwest::Client>>,
    /// Given by the scheme's user: used as it is, never replaced by the shared one.
    given: bool,
    /// The deadline of each call (set on the keyhaven's shared client, which has no
    /// overall timeout).
    deadline: Option<Duration>,
}

impl ProviderHttp {
    /// The default client (30 s timeout, 10 s to connect, no redirects), built when a
    /// call first needs it.
    pub fn new() -> Self {
        Self {
            client: None,
            default: Arc::new(OnceLock::new()),
            given: false,
            deadline: None,
        }
    }

    /// The client to use for one call: this one when it was given
    /// ([`ProviderHttp::with_client`]), else `shared` (the keyhaven's, from the
    /// scheme's context) with a 30 s deadline per call, else this default one.
    pub fn or_shared(&self, shared: Option<&reqwest::Client>) -> Self {
        match shared {
            Some(c) if !self.given => Self {
                client: Some(c.clone()),
                default: self.default.clone(),
                given: false,
                deadline: Some(keyhaven_core::SCHEME_CALL_TIMEOUT),
            },
            _ => self.clone(),
        }
    }

    /// `request` with this client's per-call deadline, if it has one.
    pub(crate) fn timed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.deadline {
            Some(d) => request.timeout(d),
            None => request,
        }
    }

    /// Uses a client of your own (proxy, timeouts, TLS roots). Turn redirects off on it.
    pub fn with_client(client: reqwest::Client) -> Self {
        Self {
            client: Some(client),
            default: Arc::new(OnceLock::new()),
            given: true,
            deadline: None,
        }
    }

    /// The reqwest client, for other calls to the provider.
    pub fn client(&self) -> &reqwest::Client {
        match &self.client {
            Some(client) => client,
            None => self.default.get_or_init(keyhaven_core::scheme_client),
        }
    }
}

impl Default for ProviderHttp {
    fn default() -> Self {
        Self::new()
    }
}

/// The most a provider's answer may hold: a token answer is a few KiB; a provider
/// (or something posing as one) that sends more is cut off, not buffered.
pub(crate) const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Reads an answer's body, at most [`MAX_ANSWER_BYTES`].
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(format!(
            "answered more than {} KiB",
            MAX_ANSWER_BYTES / 1024
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "answered more than {} KiB",
                MAX_ANSWER_BYTES / 1024
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn host_of(uri: &http::Uri) -> String {
    uri.host().unwrap_or("the provider").to_owned()
}

/// Makes a provider's answer JSON when it is a form (`a=b&c=d`) or JSON sent with
/// another content type. Returns the new body, or `None` to keep the answer as it is.
fn normalise_body(content_type: Option<&str>, body: &[u8]) -> Option<Vec<u8>> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("application/json") {
        return None;
    }
    let trimmed = body.trim_ascii_start();
    if trimmed.starts_with(b"{") {
        return serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .map(|_| body.to_vec());
    }
    if ct.starts_with("application/x-www-form-urlencoded") || ct.starts_with("text/plain") {
        let map: serde_json::Map<String, serde_json::Value> = url_pairs(body)
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        if map.contains_key("access_token") || map.contains_key("error") {
            return serde_json::to_vec(&map).ok();
        }
    }
    None
}

fn url_pairs(body: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    url::form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let host = host_of(&parts.uri);
            let transport = |e: reqwest::Error| HttpError::Transport {
                host: host.clone(),
                reason: if e.is_timeout() {
                    "timed out".to_owned()
                } else if e.is_connect() {
                    keyhaven_core::connect_failure(&e)
                } else {
                    e.without_url().to_string()
                },
            };
            let response = self
                .timed(self.client().request(parts.method, parts.uri.to_string()))
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(transport)?;
            let status = response.status();
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(HttpError::Status {
                    host,
                    status: status.as_u16(),
                });
            }
            let mut headers = response.headers().clone();
            let body = read_capped(response)
                .await
                .map_err(|reason| HttpError::Transport {
                    host: host.clone(),
                    reason,
                })?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let body = match normalise_body(content_type, &body) {
                Some(json) => {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    json
                }
                None => body,
            };
            let mut out = HttpResponse::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ProviderHttp, normalise_body};

    #[test]
    fn the_default_client_is_built_only_when_a_call_needs_it() {
        let http = ProviderHttp::new();
        let shared = reqwest::Client::new();
        let picked = http.or_shared(Some(&shared));
        let _ = picked.client();
        assert!(http.default.get().is_none(), "the shared client served");
        let alone = http.or_shared(None);
        let _ = alone.client();
        assert!(http.default.get().is_some(), "built once, for every clone");
        let given = ProviderHttp::with_client(shared).or_shared(Some(&reqwest::Client::new()));
        let _ = given.client();
        assert!(given.default.get().is_none(), "a given client is kept");
    }

    #[test]
    fn forms_and_mislabelled_json_become_json() {
        let form = normalise_body(
            Some("application/x-www-form-urlencoded"),
            b"access_token=a%20b&scope=x,y",
        )
        .expect("a form token answer is converted");
        let v: serde_json::Value = serde_json::from_slice(&form).expect("json");
        assert_eq!(v["access_token"], "a b");
        assert_eq!(v["scope"], "x,y");
        assert!(normalise_body(Some("text/plain"), br#"{"access_token":"t"}"#).is_some());
        assert!(normalise_body(Some("application/json; charset=utf-8"), b"{}").is_none());
        assert!(normalise_body(Some("text/html"), b"<html>").is_none());
    }
}
