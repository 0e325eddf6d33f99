//! Webhooks: each status change this instance makes is posted as JSON to the
//! configured URLs, signed, and retried with back-off until the receiver answers 2xx.
//!
//! The signature header is `keyhaven-signature: t=<unix seconds>,v1=<hex>`, where
//! `hex` is HMAC-SHA256 with the webhook's secret over `"<t>.<body>"` (the timestamp,
//! a dot, the raw body). Receivers recompute it, compare in constant time, and refuse
//! old timestamps (replays); [`verify`] does all three. The event id (`keyhaven-event-id`,
//! also `id` in the body) is the same on every retry, for deduplication.
//!
//! Deliveries are durable: each event is written to the store's event log in the
//! same transaction as the status change, and a delivery per webhook is made from
//! it and kept in the store (the outbox) with its tries and outcome. A delivery
//! pending when the process stops, even by SIGKILL, is made after the restart; with
//! several instances on one store, each delivery is claimed by one of them at a time
//! (PostgreSQL's `FOR UPDATE SKIP LOCKED`), so each event is posted once. A claim
//! lasts [`LEASE`]: an instance that dies holding one delays that delivery by at
//! most that long, and a receiver that got the post but whose 2xx was not recorded
//! (the process died in between) gets it again, with the same event id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use keyhaven::chrono::Utc;
use keyhaven::secrecy::{ExposeSecret, SecretString};
use keyhaven::url::Url;
use keyhaven::{Delivery, DeliveryOutcome, EventKind, WebhookTarget};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
    /// The webhook's key in the outbox: `wh_` and 64 bits of the SHA-256 of its URL,
    /// the same on every instance and across restarts. A webhook whose URL changes
    /// is a new webhook: it gets the events from then on.
    pub fn key(&self) -> String {
        format!(
            "wh_{}",
            hex::encode(&Sha256::digest(self.url.as_str().as_bytes())[..8])
        )
    }

    fn target(&self) -> WebhookTarget {
        WebhookTarget {
            key: self.key(),
            kinds: self.events.clone(),
        }
    }
}

/// How long a claimed delivery is held by the instance that claimed it, by default
/// (`ServerConfig::webhook_lease`): longer than a try can take ([`TRY_TIMEOUT`]).
pub(crate) const LEASE: Duration = Duration::from_secs(60);
/// The longest a try waits for the receiver.
pub(crate) const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the outbox is looked at when no event wakes the worker (retries that
/// came due, deliveries made by other instances' events).
const POLL: Duration = Duration::from_millis(500);
/// Tries in flight at once per instance.
const IN_FLIGHT: usize = 32;
/// How often expired pending states and old events are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

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

/// Registers the configured webhooks in the outbox (a webhook seen for the first
/// time gets the events from then on), before the server serves: the events of its
/// first requests get their deliveries.
pub(crate) async fn register(state: &AppState) {
    let targets: Vec<WebhookTarget> = state.config.webhooks.iter().map(Webhook::target).collect();
    if targets.is_empty() {
        return;
    }
    if let Err(e) = state
        .kh
        .store()
        .claim_deliveries(&targets, state.kh.now(), state.config.webhook_lease, 0)
        .await
    {
        tracing::warn!(error = %e, "cannot register the webhooks in the outbox; events until it can be read may not be posted");
    }
}

/// Starts the delivery worker: claims due deliveries of the configured webhooks
/// from the store's outbox and posts them; also purges expired pending states and
/// old events every hour.
pub(crate) fn spawn(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder()
            .timeout(TRY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the webhook HTTP client; webhooks are off");
                return;
            }
        };
        let hooks: HashMap<String, Webhook> = state
            .config
            .webhooks
            .iter()
            .map(|h| (h.key(), h.clone()))
            .collect();
        let targets: Vec<WebhookTarget> =
            state.config.webhooks.iter().map(Webhook::target).collect();
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        // A lease shorter than a try would let another instance post it meanwhile.
        let lease = state
            .config
            .webhook_lease
            .max(TRY_TIMEOUT + Duration::from_secs(1));
        let mut wake = state.kh.events();
        let mut closing = state.closing.subscribe();
        let mut next_purge = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            if tokio::time::Instant::now() >= next_purge {
                next_purge += PURGE_EVERY;
                if let Err(e) = state.kh.purge_expired().await {
                    tracing::warn!(error = %e, "could not purge expired pending states or old events");
                }
            }
            let free = slots.available_permits();
            if !targets.is_empty() && free > 0 {
                match state
                    .kh
                    .store()
                    .claim_deliveries(&targets, state.kh.now(), lease, free)
                    .await
                {
                    Ok(batch) => {
                        if failing {
                            tracing::info!("the webhook outbox can be read again");
                            failing = false;
                        }
                        for delivery in batch {
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let Some(hook) = hooks.get(&delivery.webhook).cloned() else {
                                continue;
                            };
                            let (state, client) = (state.clone(), client.clone());
                            tokio::spawn(async move {
                                attempt(&state, &client, &hook, delivery).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot read the webhook outbox; deliveries wait until it can be read");
                            failing = true;
                        }
                    }
                }
            }
            tokio::select! {
                // An event of this process (or, heard from the store, of another):
                // its deliveries may be due now.
                _ = wake.recv() => {}
                () = tokio::time::sleep(POLL) => {}
                _ = closing.wait_for(|c| *c) => return,
            }
        }
    })
}

/// The wait before the try after `attempts` tries: `first_retry`, doubled each time,
/// at most an hour.
fn backoff(first_retry: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1));
    first_retry.saturating_mul(factor).min(MAX_RETRY_WAIT)
}

/// Posts one claimed delivery once and records the outcome: delivered on 2xx;
/// retried later on network errors, 5xx, 408 and 429 while tries remain; failed
/// otherwise.
async fn attempt(state: &AppState, client: &reqwest::Client, hook: &Webhook, delivery: Delivery) {
    let event = &delivery.event;
    let url = shown(&hook.url);
    let Some(claim) = delivery.claim.clone() else {
        return;
    };
    let body = match serde_json::to_vec(event) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event");
            return;
        }
    };
    let started = std::time::Instant::now();
    let timestamp = Utc::now().timestamp();
    let signature = sign(hook.secret.expose_secret(), timestamp, &body);
    let sent = client
        .post(hook.url.clone())
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("keyhaven/", env!("CARGO_PKG_VERSION")),
        )
        .header("keyhaven-event-id", &event.id)
        .header("keyhaven-event-type", event.kind.as_str())
        .header("keyhaven-attempt", delivery.attempts.to_string())
        .header("keyhaven-delivery-id", delivery.id.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    let attempts = delivery.attempts;
    let most = state.config.webhook_attempts.max(1);
    let (status, error, retry) = match sent {
        Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None, false),
        Ok(r) => {
            let status = r.status();
            let retry = status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
            (
                Some(status.as_u16()),
                Some(format!("the receiver answered {status}")),
                retry,
            )
        }
        // Without the URL: its query may hold the receiver's token.
        Err(e) => (None, Some(e.without_url().to_string()), true),
    };
    let now = state.kh.now();
    let outcome = match (error, status) {
        (None, Some(status)) => {
            tracing::debug!(url, event = %event.id, attempts, "webhook delivered");
            DeliveryOutcome::Delivered { status }
        }
        (error, status) => {
            let error = error.unwrap_or_default();
            if retry && attempts < most {
                let wait = backoff(state.config.webhook_first_retry, attempts);
                tracing::warn!(url, event = %event.id, attempts, error, retry_in_ms = wait.as_millis(), "webhook not delivered; will retry");
                DeliveryOutcome::Retry {
                    at: now
                        + keyhaven::chrono::TimeDelta::from_std(wait)
                            .unwrap_or(keyhaven::chrono::TimeDelta::MAX),
                    status,
                    error,
                }
            } else {
                let error = if retry {
                    format!("{error}; given up after {attempts} tries")
                } else {
                    format!("{error}; not retried")
                };
                tracing::error!(url, event = %event.id, attempts, error, "webhook not delivered");
                DeliveryOutcome::Failed { status, error }
            }
        }
    };
    crate::metrics::webhook_try(
        match &outcome {
            DeliveryOutcome::Delivered { .. } => "delivered",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::Failed { .. } => "failed",
        },
        started.elapsed().as_secs_f64(),
    );
    match state
        .kh
        .store()
        .finish_delivery(delivery.id, &claim, &outcome, now)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                delivery = delivery.id,
                "a webhook delivery's claim lapsed before its try ended; another try may follow"
            );
        }
        Err(e) => {
            tracing::warn!(delivery = delivery.id, error = %e, "the outcome of a webhook delivery could not be kept; it is tried again after its claim lapses");
        }
    }
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

    #[test]
    fn retries_back_off_to_an_hour() {
        let first = Duration::from_secs(1);
        assert_eq!(backoff(first, 1), first);
        assert_eq!(backoff(first, 4), Duration::from_secs(8));
        assert_eq!(backoff(first, 200), MAX_RETRY_WAIT);
    }
}
