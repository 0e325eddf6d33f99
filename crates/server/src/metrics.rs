//! Metrics in Prometheus's text format at `GET /metrics`: with the metrics key
//! (`--metrics-key`) or the admin key, or with no key on a listener of its own
//! (`--metrics-listen`, for a network only the scraper reaches).
//!
//! The process-wide recorder is installed on first use: the library (`keyhaven`)
//! records store latency, refreshes and provider calls through the `metrics` facade;
//! this crate adds the HTTP requests and the webhook deliveries, and, when scraped,
//! reads the accounts by status, the webhook backlog and the credential cache's
//! counts. Labels are bounded: routes are templates (`/api/v1/connectedAccounts/{id}`),
//! methods the standard ones (any other is `OTHER`), apps the integrations' apps.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyhaven::{AccountFilter, ConnectionStatus, DeliveryState};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppState;
use crate::error::ApiError;

/// Histogram buckets, in seconds: from half a millisecond to ten seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long a scrape waits for the store's counts.
const COUNT_WAIT: Duration = Duration::from_secs(2);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on the first call. `None` when
/// another recorder was installed first (a program embedding the server with its own
/// metrics): its exporter has keyhaven's metrics then.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|e| e.to_string())
                .and_then(|b| b.install_recorder().map_err(|e| e.to_string()));
            match built {
                Ok(handle) => {
                    metrics::gauge!("keyhaven_build_info", "version" => env!("CARGO_PKG_VERSION"))
                        .set(1.0);
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed; /metrics answers 503");
                    None
                }
            }
        })
        .as_ref()
}

/// The method as a label: the standard ones by name, any other as `OTHER` (a client
/// may send any token as a method; labels stay bounded).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::TRACE, "TRACE"),
        (Method::CONNECT, "CONNECT"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("OTHER", |(_, name)| name)
}

/// A series of the HTTP metrics: method, route template, status.
#[derive(PartialEq, Eq, Hash)]
struct Series {
    method: &'static str,
    route: Box<str>,
    status: u16,
}

/// A series as a request has it, to look one up without making its key.
struct SeriesRef<'a> {
    method: &'static str,
    route: &'a str,
    status: u16,
}

// Hashed as `Series` hashes (field by field, a `Box<str>` as its `str`).
impl std::hash::Hash for SeriesRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.method.hash(state);
        self.route.hash(state);
        self.status.hash(state);
    }
}

impl quick_cache::Equivalent<Series> for SeriesRef<'_> {
    fn equivalent(&self, key: &Series) -> bool {
        self.method == key.method && self.route == &*key.route && self.status == key.status
    }
}

type Handles = (metrics::Counter, metrics::Histogram);

/// The handles of the series seen so far: a request records through them without
/// building its labels and looking them up in the recorder. Bounded: the routes are
/// the router's templates and the methods bounded by [`method_label`]; a series
/// dropped from here is only looked up again. A handle is the recorder's that was
/// installed when its series was first seen: [`crate::router`] installs keyhaven's
/// (or finds a program's own) before the first request.
fn seen() -> &'static quick_cache::sync::Cache<Series, Handles> {
    static SEEN: OnceLock<quick_cache::sync::Cache<Series, Handles>> = OnceLock::new();
    SEEN.get_or_init(|| quick_cache::sync::Cache::new(512))
}

/// The handles of one series, from [`seen`] or made (and kept there).
fn handles(method: &Method, route: &str, status: u16) -> Handles {
    let seen = seen();
    let method = method_label(method);
    let wanted = SeriesRef {
        method,
        route,
        status,
    };
    if let Some(found) = seen.get(&wanted) {
        return found;
    }
    let made = (
        metrics::counter!(
            "keyhaven_http_requests_total",
            "method" => method,
            "route" => route.to_owned(),
            "status" => status.to_string()
        ),
        metrics::histogram!(
            "keyhaven_http_request_seconds",
            "method" => method,
            "route" => route.to_owned()
        ),
    );
    seen.insert(
        Series {
            method,
            route: route.into(),
            status,
        },
        made.clone(),
    );
    made
}

/// Records one HTTP request: `keyhaven_http_requests_total{method, route, status}`
/// and `keyhaven_http_request_seconds{method, route}`. Methods other than the
/// standard ones are counted as `OTHER`.
pub(crate) fn http_request(method: &Method, route: &str, status: u16, seconds: f64) {
    let (requests, seconds_taken) = handles(method, route, status);
    requests.increment(1);
    seconds_taken.record(seconds);
}

/// Records one webhook try: `keyhaven_webhook_deliveries_total{outcome}`
/// (`delivered`, `retry`, `failed`) and `keyhaven_webhook_seconds`.
pub(crate) fn webhook_try(outcome: &'static str, seconds: f64) {
    metrics::counter!("keyhaven_webhook_deliveries_total", "outcome" => outcome).increment(1);
    metrics::histogram!("keyhaven_webhook_seconds").record(seconds);
}

/// Reads what is counted at scrape time: accounts by status, the webhook backlog,
/// the credential cache's reads.
async fn read_gauges(s: &AppState) {
    let store = s.kh.store();
    for status in ConnectionStatus::ALL {
        let filter = AccountFilter {
            statuses: vec![status],
            ..AccountFilter::default()
        };
        match tokio::time::timeout(COUNT_WAIT, store.count_accounts(&filter)).await {
            Ok(Ok(n)) => {
                metrics::gauge!("keyhaven_accounts", "status" => status.as_str()).set(n as f64)
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "accounts could not be counted for /metrics"),
            Err(_) => tracing::debug!("counting accounts for /metrics took too long"),
        }
    }
    if let Ok(Ok(n)) =
        tokio::time::timeout(COUNT_WAIT, store.count_deliveries(DeliveryState::Pending)).await
    {
        metrics::gauge!("keyhaven_webhook_backlog").set(n as f64);
    }
    let cache = s.kh.credential_cache_counts();
    metrics::counter!("keyhaven_credential_cache_reads_total", "result" => "hit")
        .absolute(cache.hits);
    metrics::counter!("keyhaven_credential_cache_reads_total", "result" => "miss")
        .absolute(cache.misses);
}

/// `GET /metrics`, with no key: the route, for either listener.
pub(crate) fn route() -> axum::Router<Arc<AppState>> {
    axum::Router::new().route("/metrics", axum::routing::get(metrics))
}

/// `GET /metrics`: every metric, in Prometheus's text format (0.0.4).
async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let Some(recorder) = recorder() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "another metrics recorder is installed in this process; read keyhaven's metrics from its exporter",
        )
        .into_response();
    };
    read_gauges(&s).await;
    let mut response = recorder.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `/metrics` on the API's listener: the metrics key or the admin key. Requests
/// with neither count against their address's rate of refused keys, as on the API
/// (the admin key is taken here too, so it must not be guessed here freely).
pub(crate) async fn require_metrics_key(
    State((s, limiter)): State<(Arc<AppState>, Option<Arc<crate::limits::IpLimiter>>)>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = crate::api_key(&request).is_some_and(|key| {
        s.metrics_key.as_ref().is_some_and(|k| k.matches(key)) || s.admin_key.matches(key)
    });
    if allowed {
        next.run(request).await
    } else if let Some(refused) = crate::limits::over_refused_rate(limiter.as_deref(), &request) {
        refused
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "give the metrics key (--metrics-key) or the admin key in the x-api-key header, or scrape the metrics listener (--metrics-listen)",
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded_and_series_found_again_without_a_key() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        let made_up = Method::from_bytes(b"FROBNICATE").expect("a method token");
        assert_eq!(method_label(&made_up), "OTHER");
        let route = "/test/series/{id}";
        let wanted = SeriesRef {
            method: "OTHER",
            route,
            status: 418,
        };
        assert!(seen().get(&wanted).is_none());
        let _made = handles(&made_up, route, 418);
        // Found through the borrowed key: it hashes and compares as the stored one.
        assert!(seen().get(&wanted).is_some());
        let other_status = SeriesRef {
            status: 419,
            ..wanted
        };
        assert!(seen().get(&other_status).is_none());
    }
}
