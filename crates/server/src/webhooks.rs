//! Webhooks: each status change this instance makes is posted as JSON to the
//! configured URLs, signed, and retried with back-off until the receiver answers 2xx.
//!
//! The signature header is `keyhaven-signature: t=<unix seconds>,v1=<hex>`, where
//! `hex` is HMAC-SHA256 with the webhook's secret over `"<t>.<body>"` (the timestamp,
//! a dot, the raw body). Receivers recompute it, compare in constant time, and refuse
//! old timestamps (replays); [`verify`] does all three. The event id (`keyhaven-event-id`,
//! also `id` in the body) is the same on every retry, for deduplication.
//!
//! With several instances sharing a store, the instance that made the change
//! delivers its webhooks, so each event is posted once. Deliveries in flight are
//! kept in memory: a retry pending when the process stops is lost.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use keyhaven::secrecy::{ExposeSecret, SecretString};
use keyhaven::url::Url;
use keyhaven::{AccountEvent, EventKind};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "keyhaven-signature";

/// The longest wait between two tries.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(3600);

/// One receiver of events.
#[derive(Clone)]
pub struct Webhook {
    /// Where events are posted.
    pub url: Url,
    /// The key of the signature.
    pub secret: SecretString,
    /// The kinds posted; empty: all.
    pub events: Vec<EventKind>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL's query may hold the receiver's token: never shown.
        f.debug_struct("Webhook")
            .field("url", &shown(&self.url))
            .field("secret", &"[redacted]")
            .field("events", &self.events)
            .finish()
    }
}

/// A webhook URL as logs show it: without its query or user name.
fn shown(url: &Url) -> String {
    keyhaven::request::rules::shown(url)
}

impl Webhook {
    fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Whether `header` is a valid signature of `body` with `secret`, made at most
/// `tolerance` seconds away from `now` (Unix seconds; a negative tolerance accepts
/// nothing). Compares in constant time.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance: i64) -> bool {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => tags.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    // `abs_diff`, not `(now - timestamp).abs()`: a timestamp far from now (anyone
    // can send `t=-9223372036854775808`) must not overflow.
    let Ok(tolerance) = u64::try_from(tolerance) else {
        return false;
    };
    if now.abs_diff(timestamp) > tolerance {
        return false;
    }
    let expected = mac(secret, timestamp, body).finalize().into_bytes();
    tags.iter()
        .any(|tag| bool::from(tag.as_slice().ct_eq(expected.as_slice())))
}

/// Starts delivering this instance's events to the configured webhooks.
pub(crate) fn spawn(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let mut events = state.kh.events();
    tokio::spawn(async move {
        if state.config.webhooks.is_empty() {
            return;
        }
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the webhook HTTP client; webhooks are off");
                return;
            }
        };
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "webhook delivery fell behind; events were not posted"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if event.origin != state.kh.instance_id() {
                continue;
            }
            for hook in state.config.webhooks.iter().filter(|h| h.wants(event.kind)) {
                tokio::spawn(deliver(
                    client.clone(),
                    hook.clone(),
                    event.clone(),
                    state.config.webhook_attempts.max(1),
                    state.config.webhook_first_retry,
                ));
            }
        }
    })
}

/// Posts one event to one webhook, retrying on network errors, 5xx, 408 and 429.
async fn deliver(
    client: reqwest::Client,
    hook: Webhook,
    event: AccountEvent,
    attempts: u32,
    first_retry: Duration,
) {
    let body = match serde_json::to_vec(&event) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event");
            return;
        }
    };
    let mut wait = first_retry;
    for attempt in 1..=attempts {
        let timestamp = keyhaven::chrono::Utc::now().timestamp();
        let signature = sign(hook.secret.expose_secret(), timestamp, &body);
        let url = shown(&hook.url);
        let sent = client
            .post(hook.url.clone())
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("keyhaven/", env!("CARGO_PKG_VERSION")),
            )
            .header("keyhaven-event-id", &event.id)
            .header("keyhaven-event-type", event.kind.as_str())
            .header("keyhaven-attempt", attempt.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(url, event = %event.id, attempt, "webhook delivered");
                return;
            }
            Ok(r) => {
                let status = r.status();
                let retry = status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                tracing::warn!(url, event = %event.id, attempt, status = status.as_u16(), "webhook refused");
                retry
            }
            Err(e) => {
                tracing::warn!(url, event = %event.id, attempt, error = %e.without_url(), "webhook not delivered");
                true
            }
        };
        if !retry {
            tracing::warn!(url = shown(&hook.url), event = %event.id, "the receiver refused the event; not retried");
            return;
        }
        if attempt < attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY_WAIT);
        }
    }
    tracing::error!(url = shown(&hook.url), event = %event.id, attempts, "webhook given up after every try");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_refuse_tampering_and_replays() {
        let body = br#"{"type":"connection.active"}"#;
        let header = sign("whsec", 1_700_000_000, body);
        assert!(verify("whsec", &header, body, 1_700_000_010, 300));
        assert!(!verify("other", &header, body, 1_700_000_010, 300));
        assert!(!verify("whsec", &header, b"{}", 1_700_000_010, 300));
        assert!(
            !verify("whsec", &header, body, 1_700_001_000, 300),
            "too old"
        );
        let moved = header.replace("t=1700000000", "t=1700000900");
        assert!(
            !verify("whsec", &moved, body, 1_700_000_900, 300),
            "the timestamp is signed"
        );
        assert!(!verify("whsec", "v1=00", body, 1_700_000_000, 300));
    }
}
