//! The accept loop: HTTP/1.1 on hyper, with deadlines on every connection so that a
//! client that connects and then sends slowly, or nothing, holds a file descriptor
//! for seconds, not for ever, and with at most `max_connections` connections at
//! once, so the process keeps descriptors for its database, its log and the
//! providers it calls.
//!
//! Each connection is in one of three phases, each with its own deadline:
//!
//! - *reading a head*: from the connection's start, or from the first byte of a
//!   later request, the request line and headers must arrive within
//!   `header_read_timeout`, else the connection is dropped;
//! - *busy*: a request is in flight, until its response's last byte is written. The
//!   body must arrive within `body_read_timeout` of the handler starting to read
//!   it (else 408), and the response must start within `request_timeout`
//!   (`limits.rs`, except event streams and the long-poll wait);
//! - *idle*: kept alive between requests; after `idle_timeout` the connection is
//!   closed.
//!
//! hyper's own `header_read_timeout` is not used: its clock also runs while a
//! kept-alive connection waits for its next request, which would make the idle
//! timeout the header timeout.
//!
//! An [`Accept`] turns each TCP connection into the stream hyper reads: [`PlainTcp`]
//! hands it over as it is; a TLS acceptor would do its handshake there, within the
//! header timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::IntoResponse;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::ServerConfig;
use crate::error::ApiError;

/// Turns an accepted TCP connection into the byte stream HTTP is read from: the
/// place for a TLS handshake.
pub trait Accept: Send + Sync + 'static {
    /// The stream hyper reads requests from and writes responses to.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Makes the stream (a TLS acceptor shakes hands here). It runs within the
    /// header read timeout: a client that stalls here is dropped like one that
    /// stalls in its headers.
    fn accept(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain HTTP: the TCP stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Accept for PlainTcp {
    type Stream = TcpStream;

    async fn accept(&self, tcp: TcpStream) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// The connection deadlines and limit, from [`ServerConfig`], and the proxies
/// whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone)]
struct Limits {
    header: Duration,
    body: Duration,
    idle: Duration,
    connections: usize,
    trusted: Arc<[ipnet::IpNet]>,
}

impl Limits {
    fn of(config: &ServerConfig) -> Self {
        Self {
            header: config.header_read_timeout,
            body: config.body_read_timeout,
            idle: config.idle_timeout,
            connections: config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            trusted: config.trusted_proxies.clone().into(),
        }
    }
}

/// The client's address: the peer's; or, when the peer is one of the `trusted`
/// proxies, the nearest address in `X-Forwarded-For` (read from the right) that is
/// not itself a trusted proxy. An entry that is not an address ends the walk: what
/// lies left of it cannot be trusted. Anyone else's `X-Forwarded-For` is ignored.
pub(crate) fn client_address(
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> SocketAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = SocketAddr::new(ip, 0);
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// The default connection limit: 10,000, or the process's open-file limit less 256
/// (for the database, logs, and connections to providers and webhooks) when that is
/// lower, and at least 64.
pub fn default_max_connections() -> usize {
    const CAP: usize = 10_000;
    const RESERVE: u64 = 256;
    #[cfg(unix)]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(current) = limit.current {
            let usable = usize::try_from(current.saturating_sub(RESERVE)).unwrap_or(CAP);
            return usable.clamp(64, CAP);
        }
    }
    CAP
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head, since the instant.
    Head(Instant),
    /// Requests in flight.
    Busy(usize),
    /// Nothing in flight, since the instant.
    Idle(Instant),
}

/// What a connection is doing, shared by its stream (which sees bytes arrive), its
/// service (which sees requests start and responses end) and its watchdog.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        })
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        let next = f(*phase);
        if next != *phase {
            *phase = next;
            self.changed.notify_one();
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: an idle connection is now reading a head.
    fn bytes_arrived(&self) {
        self.update(|p| match p {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    fn request_started(&self) {
        self.update(|p| match p {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
    }

    fn response_finished(&self) {
        self.update(|p| match p {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// When the current phase runs out.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match self.phase() {
            Phase::Head(since) => Some(since + limits.header),
            Phase::Idle(since) => Some(since + limits.idle),
            Phase::Busy(_) => None,
        }
    }
}

/// The connection's stream, telling its [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// The client sent it too slowly.
    #[error("the request body did not arrive within {0:?}; send it faster")]
    TimedOut(Duration),
    /// The connection failed while it was read.
    #[error("the request body could not be read: {0}")]
    Read(#[from] hyper::Error),
}

/// A request body that must be read whole within a time, counted from the first
/// read: a client trickling bytes cannot hold a handler for long.
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
    done: bool,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        let expired = sleep.as_mut().poll(cx).is_ready();
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyError::from))),
            Poll::Pending if expired => {
                self.done = true;
                self.timed_out.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyError::TimedOut(timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// Marks the request finished when dropped: when hyper has written the response's
/// last byte, or the connection was lost.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.response_finished();
    }
}

/// A response body that keeps its request in flight until it is dropped, so that
/// an event stream is never mistaken for an idle connection.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// 408: the body came too slowly. The connection is closed after it, since the
/// rest of the body may still be on its way.
fn body_too_slow(timeout: Duration) -> axum::response::Response {
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} s (the body read timeout); send it faster or check the network",
            timeout.as_secs_f64()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves `app` on `listener` until `shutdown` resolves, as `crate::serve` describes.
pub(crate) async fn run<A: Accept>(
    listener: TcpListener,
    acceptor: A,
    app: Router,
    config: &ServerConfig,
    closing: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limits = Limits::of(config);
    let acceptor = Arc::new(acceptor);
    let permits = Arc::new(Semaphore::new(limits.connections));
    let mut failures = AcceptFailures::default();
    tokio::pin!(shutdown);
    loop {
        // At the limit, the loop waits here: new connections queue in the kernel's
        // backlog until one of ours ends.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, remote)) => {
                failures.succeeded();
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(
                    tcp,
                    remote,
                    acceptor.clone(),
                    app.clone(),
                    limits.clone(),
                    closing.subscribe(),
                    permit,
                ));
            }
            Err(e) => {
                drop(permit);
                let wait = failures.failed(&e);
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(wait) => {},
                }
            }
        }
    }
    // Stop: event streams end, idle connections close, requests in flight finish.
    closing.send_replace(true);
    drop(listener);
    let all = u32::try_from(limits.connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Accept errors in a row, so that a run of them is logged once, not a thousand
/// times a second.
#[derive(Debug, Default)]
struct AcceptFailures {
    in_a_row: u64,
}

impl AcceptFailures {
    /// How long to wait after `e` before accepting again.
    fn failed(&mut self, e: &io::Error) -> Duration {
        // The client gave up before we took its connection: nothing to wait for.
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            return Duration::ZERO;
        }
        // Out of file descriptors (EMFILE, ENFILE) or memory: connections that end
        // free some, so wait a little and try again rather than spin.
        if self.in_a_row == 0 {
            tracing::error!(
                error = %e,
                "cannot accept connections (out of file descriptors? lower --max-connections or raise `ulimit -n`); retrying every 100 ms"
            );
        }
        self.in_a_row += 1;
        Duration::from_millis(100)
    }

    fn succeeded(&mut self) {
        if self.in_a_row > 0 {
            tracing::warn!(failures = self.in_a_row, "accepting connections again");
            self.in_a_row = 0;
        }
    }
}

/// One connection, from handshake to close, holding `permit` throughout.
async fn connection<A: Accept>(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: Arc<A>,
    app: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let activity = Activity::new();
    let handshake_deadline = Instant::now() + limits.header;
    let stream = match tokio::time::timeout_at(handshake_deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "connection handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "connection handshake timed out");
            return;
        }
    };
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    let trusted = limits.trusted.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        service_activity.request_started();
        let in_flight = InFlight(service_activity.clone());
        let timed_out = Arc::new(AtomicBool::new(false));
        let mut request = request.map(|inner| {
            Body::new(DeadlineBody {
                inner,
                timeout: limits.body,
                sleep: None,
                timed_out: timed_out.clone(),
                done: false,
            })
        });
        let client = client_address(remote, request.headers(), &trusted);
        request.extensions_mut().insert(ConnectInfo(client));
        let app = app.clone();
        async move {
            let response = match app.oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let response = if timed_out.load(Ordering::Relaxed) {
                body_too_slow(limits.body)
            } else {
                response
            };
            Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(&limits);
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            _ = closing.wait_for(|c| *c), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = expired => match activity.phase() {
                Phase::Head(_) => {
                    tracing::debug!(%remote, "request head not received in time; connection dropped");
                    return;
                }
                Phase::Idle(_) if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                Phase::Idle(_) => return,
                Phase::Busy(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 4000);
        let with = |xff: &[&str]| {
            let mut h = axum::http::HeaderMap::new();
            for v in xff {
                h.append("x-forwarded-for", v.parse().unwrap());
            }
            h
        };
        let ip = |a: SocketAddr| a.ip().to_string();
        // Anyone else's header is ignored.
        let forged = with(&["1.2.3.4"]);
        assert_eq!(
            ip(client_address(peer("203.0.113.9"), &forged, &trusted)),
            "203.0.113.9"
        );
        assert_eq!(
            ip(client_address(peer("10.1.1.1"), &forged, &[])),
            "10.1.1.1"
        );
        // From a trusted proxy: the nearest untrusted hop, read from the right.
        let chain = with(&["6.6.6.6, 198.51.100.7", "10.2.2.2"]);
        assert_eq!(
            ip(client_address(peer("10.1.1.1"), &chain, &trusted)),
            "198.51.100.7"
        );
        // Garbage ends the walk at the last good hop.
        let garbage = with(&["198.51.100.7, not-an-ip, 10.2.2.2"]);
        assert_eq!(
            ip(client_address(peer("10.1.1.1"), &garbage, &trusted)),
            "10.2.2.2"
        );
        // No header: the proxy itself.
        assert_eq!(
            ip(client_address(peer("10.1.1.1"), &with(&[]), &trusted)),
            "10.1.1.1"
        );
    }

    #[test]
    fn the_default_connection_limit_is_below_the_file_limit() {
        let limit = default_max_connections();
        assert!((64..=10_000).contains(&limit), "{limit}");
        #[cfg(unix)]
        if let Some(files) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current
            && files > 512
        {
            assert!((limit as u64) < files);
        }
    }

    #[tokio::test]
    async fn phases_move_with_bytes_requests_and_responses() {
        let limits = Limits {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            connections: 1,
            trusted: Arc::new([]),
        };
        let a = Activity::new();
        assert!(matches!(a.phase(), Phase::Head(_)));
        a.request_started();
        assert_eq!(a.phase(), Phase::Busy(1));
        assert_eq!(a.deadline(&limits), None);
        a.bytes_arrived();
        assert_eq!(a.phase(), Phase::Busy(1), "pipelined bytes keep it busy");
        a.response_finished();
        assert!(matches!(a.phase(), Phase::Idle(_)));
        let idle_until = a.deadline(&limits).unwrap();
        a.bytes_arrived();
        assert!(matches!(a.phase(), Phase::Head(_)));
        assert!(a.deadline(&limits).unwrap() < idle_until);
    }
}
