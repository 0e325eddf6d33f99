//! An API on 127.0.0.1 for requests sent with an account's credentials: it shows
//! what reached it, accepts only fresh OAuth tokens, streams large answers, counts
//! uploads, and keeps traps beside its base path that must never be reached.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;

/// The counters of an [`Upstream`].
#[derive(Debug, Default)]
pub struct Hits {
    /// Requests to `/api/me` (accepted or not).
    pub me: AtomicU64,
    /// Requests to the traps beside the base path (`/apiother/...`, `/api-internal/...`).
    pub traps: AtomicU64,
    /// Bytes received by `/api/upload`.
    pub uploaded: AtomicU64,
}

/// The API: base URL `{url}/api`.
#[derive(Debug)]
pub struct Upstream {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// What it counted.
    pub hits: Arc<Hits>,
    _server: tokio::task::JoinHandle<()>,
}

/// Whether a request carries an access token the storm endpoint issued.
fn fresh(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(crate::storm::is_fresh)
}

/// `ANY /api/echo`: what arrived: method, path, query, headers, body size.
async fn echo(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Json<serde_json::Value> {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// `ANY /api/me`: 200 with a fresh OAuth token, else 401 (the body is drained).
async fn me(State(hits): State<Arc<Hits>>, headers: HeaderMap, body: Body) -> Response {
    hits.me.fetch_add(1, Ordering::SeqCst);
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
    if fresh(&headers) {
        Json(json!({"ok": true})).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_token"})),
        )
            .into_response()
    }
}

/// `GET /api/big?bytes=N`: N bytes, streamed in 64 KiB chunks, with their length.
async fn big(Query(q): Query<BTreeMap<String, u64>>) -> Response {
    let total = q.get("bytes").copied().unwrap_or(0);
    let chunk = Bytes::from(vec![b'k'; 64 * 1024]);
    let chunks = total.div_ceil(chunk.len() as u64);
    let body = futures::stream::iter((0..chunks).map(move |i| {
        let left = total - i * chunk.len() as u64;
        let part = chunk.slice(..usize::try_from(left.min(chunk.len() as u64)).unwrap());
        Ok::<_, std::convert::Infallible>(part)
    }));
    (
        [(axum::http::header::CONTENT_LENGTH, total.to_string())],
        Body::from_stream(body),
    )
        .into_response()
}

/// `POST /api/upload`: counts what it receives, answers the count.
async fn upload(State(hits): State<Arc<Hits>>, body: Body) -> Json<serde_json::Value> {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        n += chunk.len() as u64;
    }
    hits.uploaded.fetch_add(n, Ordering::SeqCst);
    Json(json!({"bytes": n}))
}

/// What `/api/fixed` answers: 322 bytes of JSON, as a small API answer.
pub const FIXED_ANSWER: &str = r#"{"id":"1296269","name":"Hello-World","full_name":"octocat/Hello-World","private":false,"owner":{"login":"octocat","id":1,"type":"User"},"description":"This your first repo!","fork":false,"language":"Rust","forks_count":9,"stargazers_count":80,"watchers_count":80,"size":108,"default_branch":"master","open_issues_count":0}"#;

/// `GET /api/fixed`: [`FIXED_ANSWER`] when a key came (an `authorization` or `x-key`
/// header, or a `key` query parameter), else 401.
async fn fixed(uri: Uri, headers: HeaderMap) -> Response {
    let keyed = headers.contains_key("authorization")
        || headers.contains_key("x-key")
        || uri.query().is_some_and(|q| q.contains("key="));
    if keyed {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            FIXED_ANSWER,
        )
            .into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

/// A trap: counts, and answers 200 so that a test sees it was reached.
async fn trap(State(hits): State<Arc<Hits>>) -> &'static str {
    hits.traps.fetch_add(1, Ordering::SeqCst);
    "trap reached"
}

impl Upstream {
    /// Starts one on an OS-chosen port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Serves on `listener` (on the current runtime).
    pub fn serve(listener: tokio::net::TcpListener) -> Self {
        let hits = Arc::new(Hits::default());
        let app = Router::new()
            .route("/api/echo", any(echo))
            .route("/api/echo/{*rest}", any(echo))
            .route("/api/me", any(me))
            .route("/api/big", get(big))
            .route("/api/fixed", get(fixed))
            .route("/api/upload", any(upload))
            .route(
                "/api/redirect",
                get(|| async { axum::response::Redirect::temporary("/apiother/x") }),
            )
            .route("/apiother/{*rest}", any(trap))
            .route("/api-internal/{*rest}", any(trap))
            .route("/internal", any(trap))
            .with_state(hits.clone());
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            hits,
            _server: server,
        }
    }

    /// Its API base URL: `{url}/api`.
    pub fn base(&self) -> String {
        format!("{}/api", self.url)
    }

    /// Requests that reached a trap.
    pub fn traps(&self) -> u64 {
        self.hits.traps.load(Ordering::SeqCst)
    }

    /// Requests to `/api/me`.
    pub fn me(&self) -> u64 {
        self.hits.me.load(Ordering::SeqCst)
    }
}
