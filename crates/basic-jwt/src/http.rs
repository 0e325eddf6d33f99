//! HTTP with login and token endpoints: send, classify failures, read messages.

use keyhaven_core::SchemeError;

/// The default client: 30 s timeout, 10 s to connect, no redirects.
pub fn default_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .connect_timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keyhaven/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Sends `request`; returns the status and body. Transport failures, 5xx and 429
/// are [`SchemeError::Unavailable`].
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<(u16, Vec<u8>), SchemeError> {
    // Each call has its own deadline, which holds on a shared client too.
    let response = request
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| SchemeError::Unavailable {
            message: if e.is_timeout() {
                format!("{what}: timed out")
            } else if e.is_connect() {
                format!("{what}: connection failed")
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
