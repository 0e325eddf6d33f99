//! What one client may ask of the server: a rate limit per client address on the
//! routes anyone can call (the OAuth callback, the connect form) and on failed key
//! checks, and a deadline on every request but the event streams and the long-poll
//! wait. The connection-level limits (header, body and idle timeouts, the number of
//! connections) are in `listen.rs`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Requests per second and burst allowed to one client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second, sustained. 0 turns the limit off.
    pub per_second: u32,
    /// Requests allowed at once before the sustained rate applies. 0 turns the
    /// limit off.
    pub burst: u32,
}

impl Default for RateLimit {
    /// 20 per second, bursts of 60: far above what a person's browser does, far
    /// below what a flood does.
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 60,
        }
    }
}

/// Routes that are not cut by the request deadline: their answers take as long as
/// the client asked (the long-poll wait, up to 120 s) or for ever (event streams,
/// which end when the server stops).
pub(crate) const UNBOUNDED_ROUTES: [&str; 3] = [
    "/api/v1/connectedAccounts/{id}/wait",
    "/api/v1/connectedAccounts/{id}/events",
    "/api/v1/events",
];

/// How often the limiter forgets addresses that have been quiet long enough to
/// have a full bucket again.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Addresses remembered before a sweep is made early.
const SWEEP_ABOVE: usize = 100_000;

/// A token bucket per client address (GCRA, from `governor`). IPv6 clients are
/// counted per /64, the block one subscriber usually holds; IPv4-mapped IPv6
/// addresses count as the IPv4 address.
#[derive(Debug)]
pub(crate) struct IpLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// When the last sweep was made, in milliseconds since `started`.
    last_sweep: AtomicU64,
    started: Instant,
}

impl IpLimiter {
    /// A limiter for `limit`, or none when it is off (a zero rate or burst).
    pub(crate) fn new(limit: Option<RateLimit>) -> Option<Arc<Self>> {
        let limit = limit?;
        let per_second = NonZeroU32::new(limit.per_second)?;
        let burst = NonZeroU32::new(limit.burst)?;
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Some(Arc::new(Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            last_sweep: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// Counts one request from `ip`: `Err(wait)` when it is over its rate, with the
    /// time until the next request would be allowed.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.sweep();
        self.limiter
            .check_key(&bucket_of(ip))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets addresses whose buckets are full again, at most once a minute, or
    /// sooner when very many addresses are remembered, so memory stays bounded.
    fn sweep(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep.load(Ordering::Relaxed);
        let due = Duration::from_millis(now.saturating_sub(last));
        let crowded = due >= Duration::from_secs(1) && self.limiter.len() > SWEEP_ABOVE;
        if (due >= SWEEP_EVERY || crowded)
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

/// The key an address is counted under.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// The client's address, from the connection. Requests made in-process (tests with
/// `oneshot`) have none and share one bucket.
pub(crate) fn client_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// `Retry-After`: whole seconds, at least 1.
fn retry_after(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// The answer to a request refused for its key when its address is over its rate
/// of refused requests: 429 (logged); `None` under the rate, or with no limit.
pub(crate) fn over_refused_rate(
    limiter: Option<&IpLimiter>,
    request: &Request,
) -> Option<Response> {
    let limiter = limiter?;
    let ip = client_ip(request);
    let wait = limiter.check(ip).err()?;
    tracing::warn!(%ip, path = crate::request_log::loggable_path(request.uri().path()), "rate limited: refused keys");
    Some(too_many_json(wait))
}

/// 429 as JSON, for the API (failed key checks).
pub(crate) fn too_many_json(wait: Duration) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests with a missing or wrong key from this address; wait for the seconds in Retry-After, and check the x-api-key header",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, retry_after(wait));
    response
}

/// 429 as a page, for the routes browsers visit.
fn too_many_page(wait: Duration) -> Response {
    let mut response = crate::pages::page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "Too many requests from your network",
        "Wait a few seconds, then reload this page.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, retry_after(wait));
    response
}

/// Middleware of the callback and the connect form: a request over its address's
/// rate is answered 429 with `Retry-After`, before any work is done.
pub(crate) async fn limit_pages(
    State(limiter): State<Option<Arc<IpLimiter>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(limiter) = &limiter {
        let ip = client_ip(&request);
        if let Err(wait) = limiter.check(ip) {
            tracing::warn!(%ip, path = crate::request_log::loggable_path(request.uri().path()), "rate limited");
            return too_many_page(wait);
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_mapped_addresses_are_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket_of(a), bucket_of(b));
        assert_ne!(bucket_of(a), bucket_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(bucket_of(mapped), IpAddr::from([192, 0, 2, 7]));
    }

    #[test]
    fn the_burst_is_allowed_then_refused_with_a_wait() {
        let limiter = IpLimiter::new(Some(RateLimit {
            per_second: 1,
            burst: 3,
        }))
        .unwrap();
        let ip = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..3 {
            assert!(limiter.check(ip).is_ok());
        }
        let wait = limiter.check(ip).err();
        assert!(
            wait.is_some_and(|w| w <= Duration::from_secs(1)),
            "{wait:?}"
        );
        assert!(limiter.check(IpAddr::from([192, 0, 2, 2])).is_ok());
        assert!(
            IpLimiter::new(Some(RateLimit {
                per_second: 0,
                burst: 3
            }))
            .is_none()
        );
    }

    #[test]
    fn unbounded_routes_exist() {
        let doc = serde_json::to_value(crate::openapi()).unwrap();
        for route in UNBOUNDED_ROUTES {
            assert!(doc["paths"][route].is_object(), "{route} is not a route");
        }
    }
}
