//! keyhaven as a service: the REST API under `/api/v1` in the names of Composio's v1
//! connection API, the OAuth callback and the pages people see, on axum.
//!
//! Depends on the `keyhaven` facade only; HTTP statuses are chosen here, from
//! `keyhaven::ErrorKind`, and nowhere else.

mod api;
mod auth;
mod error;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyhaven::Keyhaven;

pub use auth::{ADMIN_KEY_FILE, AdminKey};
pub use error::ApiError;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The library.
    pub kh: Keyhaven,
    /// The admin key's hash.
    pub admin_key: AdminKey,
}

async fn require_admin(State(s): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok());
    match given {
        Some(key) if s.admin_key.matches(key) => next.run(request).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// The whole application: the admin API (behind `x-api-key`), the callback and
/// `/healthz` (open).
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/api/v1/client/auth/client_info", get(api::client_info))
        .route("/api/v1/apps", get(api::apps))
        .route("/api/v1/apps/{slug}", get(api::app))
        .route(
            "/api/v1/integrations",
            post(api::create_integration).get(api::integrations),
        )
        .route(
            "/api/v1/integrations/{id}",
            get(api::integration).delete(api::delete_integration),
        )
        .route(
            "/api/v1/connectedAccounts",
            post(api::initiate).get(api::accounts),
        )
        .route(
            "/api/v1/connectedAccounts/{id}",
            get(api::account).delete(api::delete_account),
        )
        .route(
            "/api/v1/connectedAccounts/{id}/{action}",
            post(api::account_action),
        )
        .route("/api/v1/connectedAccounts/{id}/wait", get(api::wait))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .merge(admin)
        .route("/api/v1/oauth/callback", get(pages::callback))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route; the API is under /api/v1",
            )
        })
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One log line per request: method, path (never the query, which may carry an OAuth
/// code or state), status and time taken.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Serves `router` on `listener` until `shutdown` resolves, finishing requests in flight.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
