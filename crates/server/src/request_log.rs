//! The outermost layer of every route: the request's id, its deadline, its log line
//! and its metrics, as a tower service with a future of its own.
//!
//! One log line per request: method, path (never the query, which may carry an
//! OAuth code, a state or a form's token; a connection link's token is masked, see
//! [`loggable_path`]), status and time taken; every line logged
//! while the request is served carries its request id, which the response returns.
//! The request runs within its deadline (the server's request timeout, except on
//! the routes of [`limits::UNBOUNDED_ROUTES`]): past it, its work is dropped
//! (cancelled) and it is answered 503.
//!
//! *Why a service of its own:* as an `axum::middleware::from_fn` it cloned the
//! boxed route and boxed its future on every request; here the route is called as
//! it is and its future is wrapped in place.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use crate::error::ApiError;
use crate::{REQUEST_ID_HEADER, given_request_id, limits, made_request_id, metrics};

/// The layer: requests get `timeout` as their deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLog {
    pub(crate) timeout: Duration,
}

impl<S> Layer<S> for RequestLog {
    type Service = Logged<S>;

    fn layer(&self, inner: S) -> Logged<S> {
        Logged {
            inner,
            timeout: self.timeout,
        }
    }
}

/// A route behind [`RequestLog`].
#[derive(Debug, Clone)]
pub(crate) struct Logged<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Logged<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = LoggedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let id = given_request_id(&request).unwrap_or_else(made_request_id);
        request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
        // Visible ASCII (checked, or made so): no copy needed to log it.
        let span = tracing::info_span!("request", request_id = %id.to_str().unwrap_or_default());
        // The route's template, not the path: a bounded label.
        let route = request.extensions().get::<MatchedPath>().cloned();
        let unbounded = route
            .as_ref()
            .is_some_and(|p| limits::UNBOUNDED_ROUTES.contains(&p.as_str()));
        let seen = Seen {
            method: request.method().clone(),
            // A cheap clone (the request's bytes are shared); only its path is logged.
            uri: request.uri().clone(),
            route,
            id,
            started: Instant::now(),
            timeout: self.timeout,
        };
        // The route was polled ready in `poll_ready`: it is called as it is.
        let answer = span.in_scope(|| self.inner.call(request));
        let deadline = if unbounded {
            Deadline::Unbounded { answer }
        } else {
            Deadline::Bounded {
                answer: tokio::time::timeout(self.timeout, answer),
            }
        };
        LoggedFuture {
            answer: deadline.instrument(span),
            seen: Some(seen),
        }
    }
}

/// `path` as it may be logged: a connection link's path (`/link/{token}`) carries
/// the link's token, which connects an account for its entity until it is used, so
/// its token is masked.
pub(crate) fn loggable_path(path: &str) -> &str {
    match path.strip_prefix("/link/") {
        Some(_) => "/link/{token}",
        None => path,
    }
}

/// What the log line and the metrics need of the request.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    route: Option<MatchedPath>,
    id: HeaderValue,
    started: Instant,
    timeout: Duration,
}

impl Seen {
    /// The response of a request whose route answered `answer` (`None`: past its
    /// deadline), logged, counted and named with the request's id.
    fn finish(self, answer: Option<Response>) -> Response {
        let mut response = answer.unwrap_or_else(|| {
            tracing::warn!(
                path = loggable_path(self.uri.path()),
                seconds = self.timeout.as_secs_f64(),
                "request timed out; cancelled"
            );
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timed_out",
                format!(
                    "the server did not finish this request within {} s (its request timeout); try again later",
                    self.timeout.as_secs_f64()
                ),
            )
            .into_response()
        });
        let status = response.status().as_u16();
        let took = self.started.elapsed().as_secs_f64();
        metrics::http_request(
            &self.method,
            self.route.as_ref().map_or("unmatched", MatchedPath::as_str),
            status,
            took,
        );
        tracing::info!(
            method = %self.method,
            path = loggable_path(self.uri.path()),
            status,
            ms = took * 1000.0,
            "request"
        );
        response.headers_mut().insert(REQUEST_ID_HEADER, self.id);
        response
    }
}

pin_project! {
    /// The route's future within its deadline, or without one.
    #[project = DeadlineProj]
    enum Deadline<F> {
        Bounded { #[pin] answer: tokio::time::Timeout<F> },
        Unbounded { #[pin] answer: F },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Deadline<F> {
    /// The response, or `None` past the deadline.
    type Output = Option<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Response>> {
        Poll::Ready(match self.project() {
            DeadlineProj::Bounded { answer } => match ready!(answer.poll(cx)) {
                Ok(Ok(response)) => Some(response),
                Ok(Err(never)) => match never {},
                Err(_elapsed) => None,
            },
            DeadlineProj::Unbounded { answer } => match ready!(answer.poll(cx)) {
                Ok(response) => Some(response),
                Err(never) => match never {},
            },
        })
    }
}

pin_project! {
    /// The future of [`Logged`]: the route's, in the request's span and within its
    /// deadline, then logged.
    pub(crate) struct LoggedFuture<F> {
        #[pin]
        answer: Instrumented<Deadline<F>>,
        seen: Option<Seen>,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for LoggedFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let answer = ready!(this.answer.as_mut().poll(cx));
        let Some(seen) = this.seen.take() else {
            panic!("a request's future was polled after it answered");
        };
        let _in_span = this.answer.span().enter();
        Poll::Ready(Ok(seen.finish(answer)))
    }
}
