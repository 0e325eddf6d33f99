//! The key checks in front of the API's routes, as a tower layer.
//!
//! A request with the right key goes on to its route with the key's name in its
//! extensions ([`api::KeyUsed`]); one without is answered here: 429 when its address
//! is over the rate of refused requests, else 401 or 403 (a refused credentials read
//! is audited). The check is synchronous, so the layer calls the route at once and
//! answers with the route's own future: no boxed future and no clone of the route
//! per request, which `axum::middleware::from_fn` makes (a profile of the
//! passthrough route put its per-request allocations in those layers).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::{AppState, api, api_key, limits};

/// Which key a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    /// The admin key (`x-api-key`).
    Admin,
    /// The credentials key: it alone reads credentials.
    Credentials,
}

/// What the key checks need: the state, and the rate limit of refused requests.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    state: Arc<AppState>,
    limiter: Option<Arc<limits::IpLimiter>>,
}

impl Guard {
    pub(crate) fn new(state: Arc<AppState>, limiter: Option<Arc<limits::IpLimiter>>) -> Self {
        Self { state, limiter }
    }

    /// The layer that lets through only requests with `key`.
    pub(crate) fn require(&self, key: Key) -> RequireKey {
        RequireKey {
            guard: self.clone(),
            key,
        }
    }

    /// The answer to `request` when it lacks `key`; `None` lets it through, marked
    /// with the key it used.
    fn refusal(&self, key: Key, request: &mut Request) -> Option<Response> {
        match key {
            Key::Admin => self.refusal_of_admin(request),
            Key::Credentials => self.refusal_of_credentials(request),
        }
    }

    fn refusal_of_admin(&self, request: &mut Request) -> Option<Response> {
        match api_key(request) {
            Some(key) if self.state.admin_key.matches(key) => {
                request.extensions_mut().insert(api::KeyUsed("admin"));
                None
            }
            _ => Some(
                self.over_rate(request)
                    .unwrap_or_else(|| ApiError::unauthorized().into_response()),
            ),
        }
    }

    fn refusal_of_credentials(&self, request: &mut Request) -> Option<Response> {
        let s = &self.state;
        if api_key(request)
            .is_some_and(|key| s.credentials_key.as_ref().is_some_and(|k| k.matches(key)))
        {
            request.extensions_mut().insert(api::KeyUsed("credentials"));
            return None;
        }
        let key = api_key(request);
        if let Some(refused) = self.over_rate(request) {
            return Some(refused);
        }
        // Refused reads are audited too, under the account as the route reads it
        // (decoded: `%63a_...` is `ca_...`, and must be found under it).
        let account = percent_encoding::percent_decode_str(
            request
                .uri()
                .path()
                .split('/')
                .rev()
                .nth(1)
                .unwrap_or_default(),
        )
        .decode_utf8_lossy()
        .into_owned();
        let (outcome, response) = if key.is_some_and(|key| s.admin_key.matches(key)) {
            (
                "forbidden",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the admin key cannot read credentials; use the credentials key (KEYHAVEN_CREDENTIALS_KEY, shown once when the server first started)",
                ),
            )
        } else if s.credentials_key.is_none() {
            (
                "unauthorized",
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this server has no credentials key, so no one may read credentials through it; start it with one (KEYHAVEN_CREDENTIALS_KEY)",
                ),
            )
        } else {
            ("unauthorized", ApiError::unauthorized_credentials())
        };
        let entry = keyhaven::AuditEntry::new(
            keyhaven::chrono::Utc::now(),
            keyhaven::AuditAction::CredentialsRead,
            &account,
            outcome,
        )
        .by(api::caller_of(request.headers(), request.extensions()));
        // A refusal gives nothing away, so it stands even when its line cannot be
        // written (the writer logs that failure); it is not waited for.
        let _ = s.kh.audit().record_queued(&entry);
        Some(response.into_response())
    }

    /// A request without a good key from an address over its rate: 429.
    fn over_rate(&self, request: &Request) -> Option<Response> {
        limits::over_refused_rate(self.limiter.as_deref(), request)
    }
}

/// The layer of [`Guard::require`].
#[derive(Debug, Clone)]
pub(crate) struct RequireKey {
    guard: Guard,
    key: Key,
}

impl<S> Layer<S> for RequireKey {
    type Service = KeyChecked<S>;

    fn layer(&self, inner: S) -> KeyChecked<S> {
        KeyChecked {
            inner,
            guard: self.guard.clone(),
            key: self.key,
        }
    }
}

/// A route behind a key check.
#[derive(Debug, Clone)]
pub(crate) struct KeyChecked<S> {
    inner: S,
    guard: Guard,
    key: Key,
}

impl<S> Service<Request> for KeyChecked<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.guard.refusal(self.key, &mut request) {
            // The route was polled ready in `poll_ready`: it is called as it is.
            None => Either::Right(self.inner.call(request)),
            Some(refused) => Either::Left(ready(Ok(refused))),
        }
    }
}
