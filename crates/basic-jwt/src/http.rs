//! HTTP with login and token endpoints: send, classify failures, read messages.

use keyhaven_core::SchemeError;

/// The default client: 30 s timeout, 10 s to connect, no redirects
/// ([`keyhaven_core::scheme_client`], the same for every scheme).
pub fn default_client() -> reqwest::Client {
    keyhaven_core::scheme_client()
}

/// A scheme's HTTP client: one it was given (used as it is: its timeouts, its proxy),
/// or none of its own, in which case the keyhaven's shared client from the context is
/// used (with a 30 s deadline per call), else [`default_client`].
#[derive(Debug, Clone, Default)]
pub(crate) struct SchemeHttp {
    given: Option<reqwest::Client>,
}

impl SchemeHttp {
    /// A client given by the scheme's user.
    pub(crate) fn given(client: reqwest::Client) -> Self {
        Self {
            given: Some(client),
        }
    }

    /// The client for one call, `shared` being the context's.
    pub(crate) fn pick(&self, shared: Option<&reqwest::Client>) -> Picked {
        match (&self.given, shared) {
            (Some(own), _) => Picked {
                client: own.clone(),
                deadline: None,
            },
            (None, Some(shared)) => Picked {
                client: shared.clone(),
                deadline: Some(keyhaven_core::SCHEME_CALL_TIMEOUT),
            },
            (None, None) => Picked {
                client: default_client(),
                deadline: None,
            },
        }
    }
}

/// The client picked for a call, and the deadline to give each request on it.
#[derive(Debug, Clone)]
pub(crate) struct Picked {
    client: reqwest::Client,
    deadline: Option<std::time::Duration>,
}

impl Picked {
    fn timed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.deadline {
            Some(d) => request.timeout(d),
            None => request,
        }
    }

    /// `POST url`.
    pub(crate) fn post(&self, url: url::Url) -> reqwest::RequestBuilder {
        self.timed(self.client.post(url))
    }

    /// `GET url`.
    pub(crate) fn get(&self, url: url::Url) -> reqwest::RequestBuilder {
        self.timed(self.client.get(url))
    }
}

/// Sends `request`; returns the status and body. Transport failures, 5xx and 429
/// are [`SchemeError::Unavailable`].
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<(u16, Vec<u8>), SchemeError> {
    let response = request.send().await.map_err(|e| SchemeError::Unavailable {
        message: if e.is_timeout() {
            format!("{what}: timed out")
        } else if e.is_connect() {
            format!("{what}: {}", keyhaven_core::connect_failure(&e))
        } else {
            format!("{what}: {}", e.without_url())
        },
    })?;
    let status = response.status().as_u16();
    if status >= 500 || status == 429 {
        return Err(SchemeError::Unavailable {
            message: format!("{what} answered HTTP {status}"),
        });
    }
    let body = read_capped(response)
        .await
        .map_err(|reason| SchemeError::Unavailable {
            message: format!("{what}: {reason}"),
        })?;
    Ok((status, body))
}

/// The most a login or token endpoint's answer may hold; more is cut off, not
/// buffered.
pub(crate) const MAX_ANSWER_BYTES: usize = 1 << 20;

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let too_big = || format!("answered more than {} KiB", MAX_ANSWER_BYTES / 1024);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The server's own words about a refusal: `message`, `error_description`, `error`
/// or `detail` of a JSON body, else its text; at most 200 characters, one line.
pub(crate) fn provider_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["message", "error_description", "error", "detail"]
                .iter()
                .find_map(|k| v.get(k).and_then(|m| m.as_str().map(str::to_owned)))
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if out.is_empty() {
        out = "no message".into();
    }
    out
}
