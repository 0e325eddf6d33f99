//! Slow and greedy clients against the real server on 127.0.0.1 (issue 13): a
//! connection that sends half a header, or a body too slowly, or nothing after a
//! request, is closed after its (shortened) timeout; more half-open connections
//! than the connection limit, or than the process has file descriptors, do not stop
//! `/healthz` from answering once they time out; the rate limit answers 429 on the
//! callback and on wrong keys but never on requests with a good key; the request
//! timeout cuts a slow handler but not the long-poll wait or event streams; a
//! graceful stop still finishes requests in flight and ends event streams.
//!
//! Each test starts its own server on its own port with its own store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhaven::{Keyhaven, MemoryStore};
use keyhaven_server::{AdminKey, AppState, RateLimit, ServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const KEY: &str = "kh_limits_admin";

/// Settings for tests: every timeout long unless a test shortens it, no rate limit
/// unless a test sets one.
fn config() -> ServerConfig {
    ServerConfig {
        header_read_timeout: Duration::from_secs(30),
        body_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(30),
        rate_limit: None,
        ..ServerConfig::default()
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server and waits for `serve` to return, for at most `within`.
    async fn stop(mut self, within: Duration) -> Duration {
        let started = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("serve returns after the stop")
            .unwrap()
            .unwrap();
        started.elapsed()
    }
}

async fn start(config: ServerConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .app_credentials("github", "gh-id", Some("gh-secret"))
        .build()
        .unwrap();
    let mut state = AppState::new(kh, AdminKey::from_plain(KEY));
    state.config = config;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(keyhaven_server::serve(
        listener,
        Arc::new(state),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `stream`: its status
/// and body. `None` when the connection closes first.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                return Some((status, body));
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits until the server closes `stream`, for at most `limit`; how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// A connection that has sent a request line and one header, and no more.
async fn half_open(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        .await
        .unwrap();
    stream
}

/// `GET /healthz` on a new connection: its status, and how long the answer took.
async fn healthz(addr: SocketAddr, limit: Duration) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let answer = tokio::time::timeout(limit, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n")
            .await
            .ok()?;
        read_response(&mut stream).await.map(|(status, _)| status)
    })
    .await
    .ok()
    .flatten();
    (answer, started.elapsed())
}

#[tokio::test]
async fn half_a_header_or_nothing_is_dropped_after_the_header_timeout() {
    let server = start(ServerConfig {
        header_read_timeout: Duration::from_secs(1),
        ..config()
    })
    .await;
    let mut slow = half_open(server.addr).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("a half header is dropped");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(2))
            .await
            .is_some(),
        "a connection that sends nothing is dropped too"
    );
    // A whole request in time is answered as ever.
    assert_eq!(
        healthz(server.addr, Duration::from_secs(5)).await.0,
        Some(200)
    );
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn idle_connections_are_kept_until_the_idle_timeout_then_closed() {
    let server = start(ServerConfig {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..config()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut stream).await.unwrap().0, 200);
    // Longer than the header timeout, shorter than the idle timeout: the kept-alive
    // connection still takes the next request.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    stream.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut stream).await.unwrap().0, 200);
    let took = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("an idle connection is closed");
    assert!(
        took >= Duration::from_millis(1700) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_refused_with_408() {
    let server = start(ServerConfig {
        body_read_timeout: Duration::from_secs(1),
        ..config()
    })
    .await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /api/v1/connectedAccounts HTTP/1.1\r\nHost: slow\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{{\"appName\": "
    );
    write.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 200 ms: the body would take 40 s.
    let trickle = tokio::spawn(async move {
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut data = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut data)).await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&data);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "{took:?}"
    );
    trickle.abort();
    // A body sent at once is read as ever.
    let r = client()
        .post(server.url("/api/v1/connectedAccounts"))
        .header("x-api-key", KEY)
        .json(&json!({"appName": "github"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn more_half_open_connections_than_the_limit_do_not_stop_healthz() {
    let server = start(ServerConfig {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 50,
        ..config()
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..80 {
        slow.push(half_open(server.addr).await);
    }
    // The 50 served connections are all slow: the probe waits in the backlog until
    // they time out, then is answered.
    let (status, took) = healthz(server.addr, Duration::from_secs(8)).await;
    assert_eq!(status, Some(200), "healthz answers after {took:?}");
    assert!(
        took >= Duration::from_millis(500),
        "the limit held the probe back until the slow ones timed out ({took:?})"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    // Every slow connection is dropped in the end, and the server is still up.
    for stream in &mut slow {
        assert!(
            closed_within(stream, Duration::from_secs(5))
                .await
                .is_some()
        );
    }
    let (status, took) = healthz(server.addr, Duration::from_secs(2)).await;
    assert_eq!(status, Some(200));
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(!server.task.is_finished());
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_on_the_callback_and_wrong_keys_not_on_the_api() {
    let server = start(ServerConfig {
        rate_limit: Some(RateLimit {
            per_second: 1,
            burst: 5,
        }),
        ..config()
    })
    .await;
    let client = client();
    // With a good key: never limited.
    for _ in 0..40 {
        let r = client
            .get(server.url("/api/v1/connectedAccounts"))
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let callback = server.url("/api/v1/oauth/callback?state=unknown&code=x");
    for i in 0..5 {
        let r = client.get(&callback).send().await.unwrap();
        assert_eq!(r.status(), 400, "request {i} of the burst");
    }
    let r = client.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(r.text().await.unwrap().contains("Too many requests"));
    let r = client
        .post(server.url("/connect"))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        429,
        "the connect form shares the address's bucket"
    );
    // A wrong key from the same address: 429 too, as JSON.
    let r = client
        .get(server.url("/api/v1/connectedAccounts"))
        .header("x-api-key", "kh_guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // The good key still works, and health is never limited.
    let r = client
        .get(server.url("/api/v1/connectedAccounts"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..20 {
        assert_eq!(
            client
                .get(server.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // After a second, one more request is allowed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(client.get(&callback).send().await.unwrap().status(), 400);
    server.stop(Duration::from_secs(5)).await;
}

/// The statuses of GETs of `paths` with the wrong key `key`, on a server allowing
/// a burst of 3 refused requests per address, then 1 a second.
async fn statuses_with_a_wrong_key(key: &str, paths: &[&str]) -> Vec<u16> {
    let server = start(ServerConfig {
        rate_limit: Some(RateLimit {
            per_second: 1,
            burst: 3,
        }),
        ..config()
    })
    .await;
    let client = client();
    let mut statuses = Vec::new();
    for path in paths {
        let r = client
            .get(server.url(path))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    server.stop(Duration::from_secs(5)).await;
    statuses
}

#[tokio::test]
async fn wrong_keys_are_refused_401_until_the_burst_then_429() {
    let statuses = statuses_with_a_wrong_key(
        "khc_guess",
        &["/api/v1/connectedAccounts/ca_x/credentials"; 5],
    )
    .await;
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
}

/// `/metrics` takes the admin key too: wrong keys there count against the same
/// rate, so the admin key cannot be guessed there at will.
#[tokio::test]
async fn wrong_keys_on_metrics_are_refused_401_until_the_burst_then_429() {
    let statuses = statuses_with_a_wrong_key(
        "kh_guess",
        &[
            "/metrics",
            "/metrics",
            "/api/v1/integrations",
            "/metrics",
            "/metrics",
        ],
    )
    .await;
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
}

/// An upstream API that never answers in time, and an account whose base URL is it.
async fn slow_upstream_account(server: &Server) -> String {
    let upstream = axum::Router::new().route(
        "/v1/slow",
        axum::routing::any(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, upstream).await });
    let client = client();
    let integration: Value = client
        .post(server.url("/api/v1/integrations"))
        .header("x-api-key", KEY)
        .json(&json!({"appId": "slowapi", "authScheme": "BEARER_TOKEN", "authConfig": {"base_url": base}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let account: Value = client
        .post(server.url("/api/v1/connectedAccounts"))
        .header("x-api-key", KEY)
        .json(&json!({"integrationId": integration["id"], "data": {"token": "t"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    account["connectedAccountId"].as_str().unwrap().to_owned()
}

/// An account still `INITIATED` (an OAuth flow nobody finishes).
async fn initiated_account(server: &Server) -> String {
    let out: Value = client()
        .post(server.url("/api/v1/connectedAccounts"))
        .header("x-api-key", KEY)
        .json(&json!({"appName": "github"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    out["connectedAccountId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_request_timeout_cuts_slow_handlers_but_not_the_wait_or_event_streams() {
    let server = start(ServerConfig {
        request_timeout: Duration::from_secs(1),
        ..config()
    })
    .await;
    let client = client();
    // A handler stuck on a slow upstream: 503 after the request timeout.
    let slow = slow_upstream_account(&server).await;
    let started = Instant::now();
    let r = client
        .post(server.url(&format!("/api/v1/connectedAccounts/{slow}/proxy")))
        .header("x-api-key", KEY)
        .json(&json!({"path": "/slow"}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timed_out");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // The long-poll wait runs to the time the client asked for.
    let id = initiated_account(&server).await;
    let started = Instant::now();
    let r = client
        .get(server.url(&format!("/api/v1/connectedAccounts/{id}/wait?timeout=2")))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504, "the wait's own timeout, not the server's");
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // An event stream stays open past the request timeout.
    let mut events = client
        .get(server.url("/api/v1/events"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let next = tokio::time::timeout(Duration::from_millis(1800), events.chunk()).await;
    assert!(next.is_err(), "still open after 1.8 s: {next:?}");
    drop(events);
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight_and_ends_event_streams() {
    let server = start(config()).await;
    let client = client();
    let id = initiated_account(&server).await;
    let mut events = client
        .get(server.url("/api/v1/events"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    // A kept-alive idle connection, too.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.unwrap().0, 200);
    let waiting = {
        let client = client.clone();
        let url = server.url(&format!("/api/v1/connectedAccounts/{id}/wait?timeout=1.5"));
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client.get(url).header("x-api-key", KEY).send().await;
            (r.map(|r| r.status().as_u16()), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = server.addr;
    let took = server.stop(Duration::from_secs(10)).await;
    // The stop waited for the wait in flight, which was answered, not cut.
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status.unwrap(), 504);
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The event stream ended, the idle connection was closed, nothing is accepted.
    let end = tokio::time::timeout(Duration::from_secs(1), events.chunk()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    assert!(
        closed_within(&mut idle, Duration::from_secs(1))
            .await
            .is_some()
    );
    assert!(TcpStream::connect(addr).await.is_err());
}

/// Set in the child process of the next test.
const CHILD: &str = "KEYHAVEN_LIMITS_CHILD";

/// Run by `running_out_of_file_descriptors_...` in a child process: a server with
/// far fewer file descriptors than its connection limit.
#[tokio::test]
#[ignore = "run as a child process by running_out_of_file_descriptors_does_not_stop_the_server"]
async fn child_server_with_few_file_descriptors() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_ansi(false)
        .try_init();
    let files = rustix::process::Rlimit {
        current: Some(64),
        maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, files).unwrap();
    let server = start(ServerConfig {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 10_000,
        ..config()
    })
    .await;
    println!("PORT={}", server.addr.port());
    tokio::time::sleep(Duration::from_secs(15)).await;
    server.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_stop_the_server() {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_server_with_few_file_descriptors",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let port: u16 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split("PORT=").nth(1).map(|p| p.trim().parse().unwrap()))
        .expect("the child prints its port");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // 120 half-open connections, with 64 descriptors: accept fails with EMFILE.
    let mut slow = Vec::new();
    for _ in 0..120 {
        slow.push(half_open(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) = healthz(addr, Duration::from_secs(10)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server process is still running"
    );
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status, Some(200), "healthz after {took:?}; log:\n{log}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        log.contains("cannot accept connections"),
        "the descriptors really ran out:\n{log}"
    );
    assert!(log.contains("accepting connections again"), "{log}");
    let runs = log.matches("cannot accept connections").count();
    assert!(
        runs < 20,
        "each run of failures is logged once, not in a spin ({runs} runs):\n{log}"
    );
}
