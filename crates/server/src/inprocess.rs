//! The API called in-process: the same router, the same handlers and views, with no
//! socket. The CLI's local mode runs every command through it, so that it answers
//! exactly what a server answers, from one code path.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use keyhaven::Keyhaven;
use tower::ServiceExt as _;

use crate::{AdminKey, AppState, ServerConfig};

/// Which of the API's keys a call presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The admin key: every route but credentials.
    Admin,
    /// The credentials key: reading credentials.
    Credentials,
}

/// The API of a [`Keyhaven`] as an in-process service.
#[derive(Debug, Clone)]
pub struct InProcess {
    router: Router,
    admin_key: String,
    credentials_key: String,
}

/// An answer of the API.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: axum::body::Bytes,
}

impl InProcess {
    /// The API over `kh`, with keys made for this process only (no one else can
    /// use them), no rate limit, and provider revocations awaited when an account is
    /// deleted (a short-lived process would end before a background one ran).
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn new(kh: Keyhaven, mut config: ServerConfig) -> Result<Self, keyhaven::Error> {
        let admin_key = keyhaven::random_hex::<32>()?;
        let credentials_key = keyhaven::random_hex::<32>()?;
        config.rate_limit = None;
        config.revoke_in_background = false;
        let mut state = AppState::new(kh, AdminKey::from_plain(&admin_key));
        state.credentials_key = Some(AdminKey::from_plain(&credentials_key));
        state.config = config;
        Ok(Self {
            router: crate::router(Arc::new(state)),
            admin_key,
            credentials_key,
        })
    }

    /// Calls `method path_and_query` with a JSON `body` and the `key`, and waits
    /// for the whole answer.
    ///
    /// # Errors
    /// The answer's body could not be read (a handler's stream failed).
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        key: KeyKind,
    ) -> Result<Answer, keyhaven::Error> {
        let key = match key {
            KeyKind::Admin => &self.admin_key,
            KeyKind::Credentials => &self.credentials_key,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("x-api-key", key.as_str());
        if body.is_some() {
            request = request.header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .map_err(|e| keyhaven::Error::invalid("path", format!("not a request path: {e}")))?;
        let response = match self.router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_err(|e| keyhaven::Error::Internal(format!("reading an answer: {e}")))?;
        Ok(Answer { status, body })
    }
}
