//! keyhaven as a service: the REST API under `/api/v1` in the names of Composio's v1
//! connection API, the OAuth callback, the hosted connect form and the pages people
//! see, events (SSE) and signed webhooks, on axum. The OpenAPI document at
//! `/api/v1/openapi.json` is made from the same route table that serves the API.
//!
//! Depends on the `keyhaven` facade only; HTTP statuses are chosen here, from
//! `keyhaven::ErrorKind`, and nowhere else.

mod api;
mod api_v2;
mod api_v3;
mod auth;
mod deliveries;
mod error;
mod events;
mod guard;
mod inprocess;
mod limits;
mod listen;
mod metrics;
mod openapi;
mod pages;
pub mod proxy;
mod request_log;
mod tls;
mod views;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use keyhaven::Keyhaven;
use keyhaven::url::Url;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{ADMIN_KEY_FILE, AdminKey, CREDENTIALS_KEY_FILE};
pub use error::ApiError;
pub use inprocess::{Answer, InProcess, KeyKind};
pub use ipnet::IpNet;
pub use limits::RateLimit;
pub use listen::{Accept, PlainTcp, default_max_connections};
pub use metrics::recorder as metrics_recorder;
pub use tls::{Tls, TlsError};
pub use webhooks::{SIGNATURE_HEADER, Webhook, sign, verify};

/// The server's settings beyond the library's.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's address as browsers and providers reach it (links to the
    /// connect form, the callback). Default `http://127.0.0.1:9210`.
    pub public_url: Url,
    /// Origins allowed to call the API from a browser. Empty (the default): no CORS
    /// headers at all, so browsers on other origins cannot call the API.
    pub cors_origins: Vec<String>,
    /// Where status changes are posted.
    pub webhooks: Vec<Webhook>,
    /// Webhook deliveries: tries per event, and the wait before the first retry
    /// (doubled each time, at most an hour).
    pub webhook_attempts: u32,
    /// See `webhook_attempts`.
    pub webhook_first_retry: Duration,
    /// How long a delivery claimed by an instance is held before another may claim
    /// it: an instance that dies mid-try delays that delivery by at most this long.
    /// Longer than a try can take (10 s). Default 60 s.
    pub webhook_lease: Duration,
    /// The time a client has to send a request's line and headers, from the moment
    /// it connects (a TLS handshake included) or sends the first byte of a later
    /// request; then the connection is dropped. Default 10 s.
    pub header_read_timeout: Duration,
    /// The time a client has to send a request's whole body, from the moment the
    /// server starts reading it; then it is answered 408. Default 30 s.
    pub body_read_timeout: Duration,
    /// A kept-alive connection with no request in flight for this long is closed.
    /// Default 60 s.
    pub idle_timeout: Duration,
    /// A request whose response has not started within this long is cancelled and
    /// answered 503; event streams and the long-poll wait are not cut. Default 60 s.
    pub request_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's backlog until
    /// one ends. Default [`default_max_connections`].
    pub max_connections: usize,
    /// The rate allowed to one client address on the routes anyone can call (the
    /// OAuth callback, the connect form) and for requests refused for a missing or
    /// wrong key; beyond it, 429 with `Retry-After`. Requests with a good key are
    /// never limited. `None`: no limit. Default 20 per second, bursts of 60.
    pub rate_limit: Option<RateLimit>,
    /// The proxy's limits (`max_response_bytes`: the largest API answer it reads).
    pub proxy: proxy::ProxyLimits,
    /// The reverse proxies in front of this server: a request from one of these
    /// networks has its client's address read from `X-Forwarded-For` (for the rate
    /// limit and the audit log); anyone else's `X-Forwarded-For` is ignored. Empty
    /// (the default): the peer's address, always.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether deleting an account answers at once and revokes its credentials at
    /// the provider in the background (true, the default), or answers once the
    /// revocation was tried (for a process that ends soon after, such as a command).
    pub revoke_in_background: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            public_url: default_public_url(),
            cors_origins: Vec::new(),
            webhooks: Vec::new(),
            webhook_attempts: 8,
            webhook_first_retry: Duration::from_secs(1),
            webhook_lease: webhooks::LEASE,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(),
            rate_limit: Some(RateLimit::default()),
            proxy: proxy::ProxyLimits::default(),
            revoke_in_background: true,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The default address of `keyhaven serve`.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:9210";

#[allow(clippy::expect_used)]
fn default_public_url() -> Url {
    // A constant: it parses.
    Url::parse(DEFAULT_PUBLIC_URL).expect("DEFAULT_PUBLIC_URL parses")
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The library.
    pub kh: Keyhaven,
    /// The admin key's hash: every route of the API but credentials.
    pub admin_key: AdminKey,
    /// The credentials key's hash: reading credentials, and nothing else. `None`:
    /// no one may read credentials through the API.
    pub credentials_key: Option<AdminKey>,
    /// The metrics key's hash: `GET /metrics` (the admin key reads them too).
    pub metrics_key: Option<AdminKey>,
    /// The server's settings.
    pub config: ServerConfig,
    /// Turns true when the server begins to stop: event streams end then, so that
    /// a graceful shutdown does not wait for their clients.
    pub closing: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// State with the admin key and default settings: no credentials key, audit to
    /// the log only.
    pub fn new(kh: Keyhaven, admin_key: AdminKey) -> Self {
        Self {
            kh,
            admin_key,
            credentials_key: None,
            metrics_key: None,
            config: ServerConfig::default(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The link to the connect form, for [`keyhaven::KeyhavenBuilder::connect_form_url`].
    pub fn connect_form_url(public_url: &Url) -> String {
        format!("{}/connect", public_url.as_str().trim_end_matches('/'))
    }

    /// The OAuth callback, for [`keyhaven::KeyhavenBuilder::callback_url`].
    pub fn callback_url(public_url: &Url) -> String {
        format!(
            "{}/api/v1/oauth/callback",
            public_url.as_str().trim_end_matches('/')
        )
    }
}

fn api_key(request: &Request) -> Option<&str> {
    request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
}

/// The admin API: every route needs the admin key.
fn admin_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(api::client_info))
        .routes(routes!(api::apps))
        .routes(routes!(api::app))
        .routes(routes!(api::schemes))
        .routes(routes!(api::create_integration, api::integrations))
        .routes(routes!(api::integration, api::delete_integration))
        .routes(routes!(api::initiate, api::accounts))
        .routes(routes!(api_v2::initiate))
        .routes(routes!(api_v2::create_integration))
        .routes(routes!(api_v2::proxy))
        .routes(routes!(api::account, api::delete_account))
        .routes(routes!(api::refresh))
        .routes(routes!(api::enable))
        .routes(routes!(api::disable))
        .routes(routes!(api::wait))
        .routes(routes!(events::account_events))
        .routes(routes!(events::all_events))
        .routes(routes!(proxy::proxy))
        .routes(routes!(api::audit))
        .routes(routes!(deliveries::webhooks))
        .routes(routes!(deliveries::deliveries))
        .routes(routes!(deliveries::redeliver))
        .nest("/api/v3.1", api_v3::routes())
}

/// The passthrough proxy: any method, answers streamed as the API gives them (not in
/// the document, whose answers would be the API's).
fn passthrough_routes() -> Router<Arc<AppState>> {
    Router::new().route(
        "/api/v1/proxy/{account_id}/{*path}",
        axum::routing::any(proxy::passthrough),
    )
}

/// The v3.1 routes again at `/api/v3`, which Composio's v3 clients also call (not
/// in the document, which lists them once, under `/api/v3.1`).
fn v3_alias_routes() -> Router<Arc<AppState>> {
    Router::new().nest("/api/v3", api_v3::routes().split_for_parts().0)
}

/// Reading credentials: needs the credentials key.
fn credential_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new().routes(routes!(api::credentials))
}

/// Open pages: the callback and the connect form, rate-limited per client address.
fn page_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(pages::callback))
        .routes(routes!(pages::connect_form, pages::submit_connect_form))
        .routes(routes!(pages::link, pages::follow_link))
}

/// Health, never limited.
fn health_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The routes (with their access checks and rate limits) and the OpenAPI document
/// that describes exactly them: both are made from the same route tables.
fn routes_and_doc(
    state: &Arc<AppState>,
    limiter: Option<Arc<limits::IpLimiter>>,
) -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (admin, admin_doc) = admin_routes().split_for_parts();
    let (creds, creds_doc) = credential_routes().split_for_parts();
    let (pages, pages_doc) = page_routes().split_for_parts();
    let (health, health_doc) = health_routes().split_for_parts();
    let doc = openapi::document([admin_doc, creds_doc, pages_doc, health_doc]);
    let guard = guard::Guard::new(state.clone(), limiter.clone());
    let router = Router::new()
        .merge(admin.route_layer(guard.require(guard::Key::Admin)))
        .merge(v3_alias_routes().route_layer(guard.require(guard::Key::Admin)))
        .merge(passthrough_routes().route_layer(guard.require(guard::Key::Admin)))
        .merge(creds.route_layer(guard.require(guard::Key::Credentials)))
        .merge(pages.route_layer(middleware::from_fn_with_state(limiter, limits::limit_pages)))
        .merge(health);
    (router, doc)
}

/// The OpenAPI document of the API, as served at `/api/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::document([
        admin_routes().split_for_parts().1,
        credential_routes().split_for_parts().1,
        page_routes().split_for_parts().1,
        health_routes().split_for_parts().1,
    ])
}

/// `GET /healthz`: up.
#[utoipa::path(get, path = "/healthz", tag = "server",
    responses((status = 200, description = "The server is up", body = views::v1::Health)))]
async fn healthz() -> axum::Json<views::v1::Health> {
    axum::Json(views::v1::Health { status: "ok" })
}

/// How long `/readyz` waits for the store.
const READY_WAIT: Duration = Duration::from_secs(2);

/// `GET /readyz`: ready to serve: the store answers within 2 s and its schema is
/// migrated to what this build expects. For an orchestrator's readiness probe
/// (`/healthz` is the liveness probe: the process answers).
#[utoipa::path(get, path = "/readyz", tag = "server",
    responses((status = 200, description = "Ready", body = views::v1::Readiness),
        (status = 503, description = "Not ready: the store cannot be reached, or its schema is not this build's", body = views::v1::Readiness)))]
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let reason = match tokio::time::timeout(READY_WAIT, s.kh.store().check_ready()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "the store did not answer within {} s",
            READY_WAIT.as_secs()
        )),
    };
    let status = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = views::v1::Readiness {
        status: if reason.is_some() {
            "unavailable"
        } else {
            "ready"
        },
        reason,
    };
    (status, axum::Json(body)).into_response()
}

/// The whole application: the admin API (behind `x-api-key`), credentials (behind
/// the credentials key), the pages and callback, `/healthz`, the OpenAPI document,
/// with the request timeout and the rate limit of `state.config` (each router has
/// its own rate limit counts).
pub fn router(state: Arc<AppState>) -> Router {
    // Installed before the first request, so that every one is counted.
    metrics::recorder();
    let limiter = limits::IpLimiter::new(state.config.rate_limit);
    let (routes, doc) = routes_and_doc(&state, limiter.clone());
    let doc = Arc::new(doc);
    let metrics_route = metrics::route().route_layer(middleware::from_fn_with_state(
        (state.clone(), limiter),
        metrics::require_metrics_key,
    ));
    let mut app = routes
        .merge(metrics_route)
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; the API is under /api/v1 (see /api/v1/openapi.json)",
            )
        })
        .layer(request_log::RequestLog {
            timeout: state.config.request_timeout,
        })
        .with_state(state.clone());
    if !state.config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .config
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([
                    axum::http::Method::GET,
                    axum::http::Method::POST,
                    axum::http::Method::DELETE,
                ])
                .allow_headers([
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderName::from_static("x-api-key"),
                ]),
        );
    }
    app
}

/// The header that names a request: taken from the caller when it is a plain
/// token (up to 128 of `A-Z a-z 0-9 . _ : -`), else made (`req_` and 16 hex digits);
/// answered on every response and written on every log line of the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A new request id: `req_`, this process's 32 random bits, then a counter (no
/// system call per request; unique within the process, and across processes but
/// for a one-in-four-billion chance).
fn made_request_id() -> HeaderValue {
    use std::sync::atomic::{AtomicU32, Ordering};
    static PROCESS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let process =
        *PROCESS.get_or_init(|| keyhaven::random_bytes::<4>().map_or(0, u32::from_be_bytes));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("req_{process:08x}{n:08x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

/// The request id a caller gave, when it is one keyhaven keeps.
fn given_request_id(request: &Request) -> Option<HeaderValue> {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty()
                && b.len() <= 128
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
        })
        .cloned()
}

/// `GET /metrics` alone, with no key: for a listener of its own that only the
/// scraper reaches (`keyhaven serve --metrics-listen`).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    metrics::recorder();
    metrics::route().with_state(state)
}

/// Serves [`metrics_router`] on `listener` (plain HTTP) until the task is dropped.
///
/// # Errors
/// The listener fails for good.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
) -> std::io::Result<()> {
    axum::serve(listener, metrics_router(state)).await
}

/// Serves the application over plain HTTP on `listener` until `shutdown` resolves;
/// delivers webhooks meanwhile. See [`serve_with`].
///
/// # Errors
/// None today: accept errors (such as running out of file descriptors) are logged
/// and retried; the `Result` is kept for listeners that can fail for good.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, PlainTcp, state, shutdown).await
}

/// Serves the application on `listener`, each connection made into a stream by
/// `acceptor` (plain TCP, or TLS), until `shutdown` resolves; delivers webhooks
/// meanwhile. HTTP/1.1, with the connection deadlines and limit of `state.config`
/// (header, body and idle timeouts, `max_connections`); handlers see the client's
/// address as `ConnectInfo<SocketAddr>`.
///
/// When `shutdown` resolves, no new connection is accepted, event streams end,
/// idle connections close, and requests in flight finish before this returns.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with<A: Accept>(
    listener: tokio::net::TcpListener,
    acceptor: A,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    webhooks::register(&state).await;
    let deliveries = webhooks::spawn(state.clone());
    let closing = state.closing.clone();
    let config = state.config.clone();
    listen::run(
        listener,
        acceptor,
        router(state),
        &config,
        closing,
        shutdown,
    )
    .await;
    deliveries.abort();
    Ok(())
}
