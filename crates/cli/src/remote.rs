//! The server backend: the same commands through a keyhaven server's REST API.

use std::time::Duration;

use keyhaven::url::Url;
use serde_json::Value;

use crate::{CliError, Exit};

/// A keyhaven server and the keys to use with it.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    base: Url,
    api_key: Option<String>,
    credentials_key: Option<String>,
    client: reqwest::Client,
}

impl Remote {
    pub(crate) fn new(
        server: &str,
        api_key: Option<String>,
        credentials_key: Option<String>,
    ) -> Result<Self, CliError> {
        let base = Url::parse(server.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                CliError::usage(format!(
                    "--server {server:?} is not an http(s) URL such as http://127.0.0.1:9210"
                ))
            })?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(150))
            .user_agent(concat!("keyhaven-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::other(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            base,
            api_key,
            credentials_key,
            client,
        })
    }

    /// The error of a request that did not reach the server.
    fn unreachable(&self, e: reqwest::Error) -> CliError {
        CliError::new(
            Exit::Unavailable,
            format!(
                "cannot reach the keyhaven server at {}: {}",
                self.base,
                keyhaven::request::http_error_reason(e)
            ),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.as_str().trim_end_matches('/'))
    }

    /// Sends a request with the admin key (or, for credentials, the credentials key).
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        credentials: bool,
    ) -> Result<Value, CliError> {
        let key = if credentials {
            self.credentials_key.as_ref().or(self.api_key.as_ref())
        } else {
            self.api_key.as_ref()
        };
        let key = key.ok_or_else(|| {
            CliError::new(
                Exit::Unauthorized,
                if credentials {
                    "give the server's credentials key (--credentials-key or KEYHAVEN_CREDENTIALS_KEY)"
                } else {
                    "give the server's admin key (--api-key or KEYHAVEN_API_KEY)"
                },
            )
        })?;
        let mut request = self
            .client
            .request(method, self.url(path))
            .header("x-api-key", key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| {
            CliError::new(
                Exit::Unavailable,
                format!(
                    "the server's answer was cut: {}",
                    keyhaven::request::http_error_reason(e)
                ),
            )
        })?;
        decode(status, &text)
    }
}

impl Remote {
    /// Sends `request` through the server's passthrough route
    /// (`/api/v1/proxy/{id}/{path}`): the API's answer, or keyhaven's error.
    pub(crate) async fn passthrough(
        &self,
        id: &str,
        request: crate::backend::CliRequest,
    ) -> Result<reqwest::Response, CliError> {
        let key = self.api_key.as_ref().ok_or_else(|| {
            CliError::new(
                Exit::Unauthorized,
                "give the server's admin key (--api-key or KEYHAVEN_API_KEY)",
            )
        })?;
        if !request.path.starts_with('/') {
            return Err(CliError::new(
                Exit::Invalid,
                format!(
                    "{:?} is not a path under the account's API: with --server give a path starting with /, such as /user",
                    // Never its query, which may carry a secret.
                    request.path.split(['?', '#']).next().unwrap_or_default()
                ),
            ));
        }
        // The server refuses dot segments and encoded tricks, but it never sees
        // them: the URL parser here would resolve `/../other/x` (also `%2e%2e`, `\`)
        // first, onto another account's route or keyhaven's own API. So the path is
        // held to the server's rules before it is put in a URL (under any base: the
        // rules do not depend on it for a path starting with /).
        keyhaven::request::rules::target(&self.base, &request.path)?;
        let url = self.url(&format!("/api/v1/proxy/{}{}", enc(id), request.path));
        let mut outgoing = self
            .client
            .request(request.method, url)
            .headers(request.headers)
            .header("x-api-key", key)
            // Answers stream for as long as they take.
            .timeout(Duration::from_secs(24 * 3600));
        if let Some(body) = request.body {
            outgoing = outgoing.body(body);
        }
        let response = outgoing.send().await.map_err(|e| self.unreachable(e))?;
        if response
            .headers()
            .contains_key(keyhaven_server::proxy::UPSTREAM_HEADER)
        {
            return Ok(response);
        }
        // keyhaven's own answer: an error (or a server too old for this route).
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        decode(status, &text)?;
        Err(CliError::other(
            "the server did not pass the request on; is it a keyhaven older than the passthrough route?",
        ))
    }
}

/// An answer of the API, from a server or in-process: its JSON on success, else
/// an error with the exit code of its status and the API's message.
pub(crate) fn decode(status: u16, text: &str) -> Result<Value, CliError> {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
    if (200..300).contains(&status) {
        return Ok(value);
    }
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the server answered {status}"));
    let exit = match status {
        400 => Exit::Invalid,
        401 | 403 => Exit::Unauthorized,
        404 => Exit::NotFound,
        409 | 422 => Exit::Failed,
        502 | 503 => Exit::Unavailable,
        504 => Exit::TimedOut,
        _ => Exit::Error,
    };
    Err(CliError::new(exit, message))
}

/// Percent-encodes a query value or path segment.
pub(crate) fn enc(text: &str) -> String {
    keyhaven::url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
