//! The proxy under attack (issue 13): each test starts a real HTTP upstream on
//! 127.0.0.1 that records what reaches it, and checks that the credentials go only
//! to the account's API, under its base path, with ordinary methods and headers;
//! that no error or log line shows a key sent in a query; that a huge answer is cut
//! off at the limit; that redirects are not followed; and that hosts typed by end
//! users as connection parameters cannot be private ones, at initiate or at proxy time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::BodyExt;
use keyhaven::{Keyhaven, MemoryStore};
use keyhaven_server::proxy::ProxyLimits;
use keyhaven_server::{AdminKey, AppState, ServerConfig, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "kh_attacks_admin";
const SECRET: &str = "sk-attacks-SECRET-7731";
const HUGE: u64 = 200 * 1024 * 1024;

/// What the upstream received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
}

#[derive(Clone, Default)]
struct Upstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Bytes of the huge answers produced so far.
    produced: Arc<AtomicU64>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A huge answer, made 64 KiB at a time only as fast as it is read.
fn huge_body(produced: Arc<AtomicU64>) -> Body {
    const CHUNK: usize = 64 * 1024;
    let chunks = HUGE / CHUNK as u64;
    Body::from_stream(futures::stream::iter(0..chunks).map(move |_| {
        produced.fetch_add(CHUNK as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'a'; CHUNK]))
    }))
}

async fn upstream_handler(State(up): State<Upstream>, request: Request) -> Response {
    let method = request.method().as_str().to_owned();
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers = request.headers().clone();
    up.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        target: target.clone(),
        headers: headers.clone(),
    });
    let path = request.uri().path().to_owned();
    if path == "/api/huge" {
        return huge_body(up.produced.clone()).into_response();
    }
    if path == "/api/huge-announced" {
        return (
            [("content-length", HUGE.to_string())],
            huge_body(up.produced.clone()),
        )
            .into_response();
    }
    if let Some(n) = path.strip_prefix("/api/bytes/") {
        let n: usize = n.parse().unwrap();
        return vec![b'b'; n].into_response();
    }
    if path == "/api/redirect" {
        return (StatusCode::FOUND, [("location", "/api/landing")]).into_response();
    }
    if path == "/api/redirect-away" {
        let to = request
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("to="))
            .unwrap_or("/")
            .to_owned();
        return (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response();
    }
    axum::Json(json!({
        "method": method,
        "target": target,
        "authorization": headers.get("authorization").and_then(|v| v.to_str().ok()),
        "host": headers.get("host").and_then(|v| v.to_str().ok()),
    }))
    .into_response()
}

/// Starts an upstream on 127.0.0.1; answers its address (`http://127.0.0.1:port`).
async fn upstream() -> (String, Upstream) {
    let up = Upstream::default();
    let app = axum::Router::new()
        .fallback(upstream_handler)
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), up)
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// An upstream that announces 1000 bytes, sends a few, and hangs up; answers its
/// address and what it received.
async fn cutting_upstream() -> (String, Arc<Mutex<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(String::new()));
    let keep = received.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0; 8192];
            let mut text = String::new();
            while !text.contains("\r\n\r\n") {
                let n = socket.read(&mut buffer).await.unwrap();
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
            keep.lock().unwrap().push_str(&text);
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nshort")
                .await;
            drop(socket);
        }
    });
    (format!("http://{addr}"), received)
}

fn keyhaven() -> Keyhaven {
    Keyhaven::builder()
        .store(MemoryStore::new())
        .connect_form_url("http://127.0.0.1:9210/connect")
        .build()
        .unwrap()
}

fn app_with(kh: Keyhaven, config: ServerConfig) -> axum::Router {
    let mut state = AppState::new(kh, AdminKey::from_plain(KEY));
    state.config = config;
    router(Arc::new(state))
}

fn app(kh: Keyhaven) -> axum::Router {
    app_with(kh, ServerConfig::default())
}

struct Answer {
    status: StatusCode,
    text: String,
    json: Value,
}

async fn call(app: &axum::Router, method: &str, uri: &str, body: Option<Value>) -> Answer {
    let req = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", KEY);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Answer {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Creates an integration; answers its id.
async fn integration(app: &axum::Router, scheme: &str, config: Value) -> String {
    let r = call(
        app,
        "POST",
        "/api/v1/integrations",
        Some(json!({"appId": "attacked", "authScheme": scheme, "authConfig": config})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json["id"].as_str().unwrap().to_owned()
}

/// Initiates a connection; answers the whole answer.
async fn connect(app: &axum::Router, integration: &str, data: Value) -> Answer {
    call(
        app,
        "POST",
        "/api/v1/connectedAccounts",
        Some(json!({"integrationId": integration, "data": data})),
    )
    .await
}

/// An ACTIVE bearer-token account whose API is at `base`; answers its proxy route.
async fn bearer_account(app: &axum::Router, base: &str) -> String {
    let int = integration(app, "BEARER_TOKEN", json!({"base_url": base})).await;
    let out = connect(app, &int, json!({"token": SECRET})).await;
    assert_eq!(out.json["connectionStatus"], "ACTIVE", "{}", out.text);
    let id = out.json["connectedAccountId"].as_str().unwrap();
    format!("/api/v1/connectedAccounts/{id}/proxy")
}

/// Everything logged by every test of this file, at every level (one global
/// subscriber, so that no log line escapes it).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        struct Sink(&'static Mutex<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::default());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(logs))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

#[tokio::test]
async fn a_key_sent_as_a_query_parameter_never_shows_in_errors_or_logs() {
    logs();
    let app = app(keyhaven());
    // Nothing listening.
    let dead = dead_port().await;
    let int = integration(
        &app,
        "API_KEY",
        json!({"base_url": format!("http://127.0.0.1:{dead}/api"), "query_param": "key"}),
    )
    .await;
    let out = connect(&app, &int, json!({"api_key": SECRET})).await;
    let id = out.json["connectedAccountId"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/connectedAccounts/{id}/proxy");
    let r = call(&app, "POST", &uri, Some(json!({"path": "/x"}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(!r.text.contains(SECRET), "{}", r.text);
    assert!(!r.text.contains("key="), "{}", r.text);
    assert!(
        r.text.contains(&format!(
            "http://127.0.0.1:{dead}/api/x could not be reached"
        )),
        "the message says where, without the query: {}",
        r.text
    );

    // An answer cut short.
    let (cut, received) = cutting_upstream().await;
    let int = integration(
        &app,
        "API_KEY",
        json!({"base_url": format!("{cut}/api"), "query_param": "key"}),
    )
    .await;
    let out = connect(&app, &int, json!({"api_key": SECRET})).await;
    let id = out.json["connectedAccountId"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/connectedAccounts/{id}/proxy");
    let r = call(&app, "POST", &uri, Some(json!({"path": "/x?page=2"}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(r.text.contains("was cut"), "{}", r.text);
    assert!(!r.text.contains(SECRET), "{}", r.text);
    assert!(!r.text.contains("key="), "{}", r.text);
    assert!(
        received
            .lock()
            .unwrap()
            .contains(&format!("GET /api/x?page=2&key={SECRET} ")),
        "the key did go to the API"
    );
    let logs = logged();
    assert!(
        logs.contains("connection initiated") && logs.contains("/proxy"),
        "logs are captured: {logs}"
    );
    assert!(!logs.contains(SECRET), "{logs}");
    assert!(!logs.contains("key="), "{logs}");
}

/// A connection link's token connects an account until it is used: its page's
/// path is logged with the token masked, whatever the answer.
#[tokio::test]
async fn a_connection_links_token_never_shows_in_the_logs() {
    logs();
    let app = app(keyhaven());
    let int = integration(
        &app,
        "API_KEY",
        json!({"base_url": "https://api.example.com"}),
    )
    .await;
    let link = call(
        &app,
        "POST",
        "/api/v3/connected_accounts/link",
        Some(json!({"auth_config_id": int, "user_id": "gina"})),
    )
    .await;
    assert_eq!(link.status, StatusCode::CREATED, "{}", link.text);
    let token = link.json["link_token"].as_str().unwrap().to_owned();
    let page = call(&app, "GET", &format!("/link/{token}"), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let last = if token.ends_with('A') { 'B' } else { 'A' };
    let unknown = format!("{}{last}", &token[..token.len() - 1]);
    let refused = call(&app, "GET", &format!("/link/{unknown}"), None).await;
    assert_ne!(refused.status, StatusCode::OK, "{}", refused.text);
    let logs = logged();
    assert!(logs.contains("/link/{token}"), "logs are captured: {logs}");
    assert!(!logs.contains(&token), "{logs}");
    assert!(!logs.contains(&unknown), "{logs}");
}

#[tokio::test]
async fn paths_beside_or_above_the_base_path_get_no_credentials() {
    logs();
    let (base, up) = upstream().await;
    let app = app(keyhaven());
    let uri = bearer_account(&app, &format!("{base}/api")).await;
    let other_port = dead_port().await;
    let host = base.trim_start_matches("http://");
    let attacks = [
        format!("{base}/apiother/x"),
        format!("{base}/api-internal/x"),
        format!("{base}/"),
        format!("{base}/api/../api-internal/x"),
        format!("{base}/api/%2e%2e/api-internal/x"),
        format!("https://{host}/api/x"),
        format!(
            "http://localhost:{}/api/x",
            host.rsplit(':').next().unwrap()
        ),
        format!("http://127.0.0.1:{other_port}/api/x"),
        format!("//{host}/apiother/x"),
        "/../api-internal/x".to_owned(),
        "/..".to_owned(),
        "/./x".to_owned(),
        "/x/../../api-internal/x".to_owned(),
        "/%2e%2e/api-internal/x".to_owned(),
        "/%2E%2E/api-internal/x".to_owned(),
        "/.%2e/api-internal/x".to_owned(),
        "/%2e./api-internal/x".to_owned(),
        "/..;/api-internal/x".to_owned(),
        "/..%2fapi-internal/x".to_owned(),
        "/x%2F..%2F..%2Fapi-internal".to_owned(),
        "/x%5c..%5c..%5capi-internal".to_owned(),
        "/x\\..\\..\\api-internal".to_owned(),
        "/%252e%252e/api-internal/x".to_owned(),
        "/..;/api-internal/x?next=http://x".to_owned(),
        "/x%2F..%2F..%2Fapi-internal?u=https://a/b".to_owned(),
        "/x%00/y".to_owned(),
        "/x\r\nHost: evil.example".to_owned(),
        "x".to_owned(),
        String::new(),
    ];
    for path in &attacks {
        let r = call(&app, "POST", &uri, Some(json!({"path": path}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path:?}: {}", r.text);
        assert_eq!(r.json["error"]["code"], "invalid_input", "{path:?}");
        assert!(r.text.contains("path"), "{path:?}: {}", r.text);
    }
    assert!(up.seen().is_empty(), "nothing reached the upstream");

    // What is under the base path goes, with the credentials.
    for (path, target) in [
        ("/x", "/api/x"),
        ("/", "/api/"),
        ("/files/a..b?q=..", "/api/files/a..b?q=.."),
        (&format!("{base}/api") as &str, "/api"),
        (&format!("{base}/api/y?z=1"), "/api/y?z=1"),
    ] {
        let r = call(&app, "POST", &uri, Some(json!({"path": path}))).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert_eq!(r.json["body"]["target"], target);
        assert_eq!(
            r.json["body"]["authorization"],
            format!("Bearer {SECRET}").as_str()
        );
    }
    assert!(
        up.seen().iter().all(|s| s.target.starts_with("/api")),
        "{:?}",
        up.seen()
    );
}

#[tokio::test]
async fn host_hop_by_hop_and_keyhaven_headers_are_refused() {
    let (base, up) = upstream().await;
    let app = app(keyhaven());
    let uri = bearer_account(&app, &format!("{base}/api")).await;
    for name in [
        "host",
        "Host",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "Proxy-Connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-api-key",
        "content-length",
    ] {
        let r = call(
            &app,
            "POST",
            &uri,
            Some(json!({"path": "/x", "headers": {name: "evil.example"}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {}", r.text);
        assert!(
            r.text
                .contains(&format!("headers.{}", name.to_ascii_lowercase())),
            "the message names the header: {}",
            r.text
        );
        assert!(r.text.contains("leave it out"), "{}", r.text);
    }
    assert!(up.seen().is_empty(), "nothing reached the upstream");

    let r = call(
        &app,
        "POST",
        &uri,
        Some(json!({"path": "/x", "headers": {"x-extra": "1", "accept": "application/json"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-extra"], "1");
    assert_eq!(seen[0].headers["host"], base.trim_start_matches("http://"));
}

#[tokio::test]
async fn user_names_in_urls_are_refused() {
    let (base, up) = upstream().await;
    let app = app(keyhaven());
    let uri = bearer_account(&app, &format!("{base}/api")).await;
    let host = base.trim_start_matches("http://");
    for path in [
        format!("http://ann:pw-hidden@{host}/api/x"),
        format!("http://ann@{host}/api/x"),
        "http://ann:pw-hidden@evil.example/api/x".to_owned(),
    ] {
        let r = call(&app, "POST", &uri, Some(json!({"path": path}))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text);
        assert!(!r.text.contains("pw-hidden"), "{}", r.text);
    }
    assert!(up.seen().is_empty(), "no Basic header went anywhere");
}

#[tokio::test]
async fn only_ordinary_methods_are_sent() {
    let (base, up) = upstream().await;
    let app = app(keyhaven());
    let uri = bearer_account(&app, &format!("{base}/api")).await;
    for method in ["TRACE", "trace", "CONNECT", "TRACK", "PROPFIND", "DEBUG"] {
        let r = call(
            &app,
            "POST",
            &uri,
            Some(json!({"method": method, "path": "/x"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method}: {}", r.text);
        assert!(r.text.contains("GET, HEAD, POST"), "{}", r.text);
    }
    assert!(up.seen().is_empty(), "nothing reached the upstream");
    for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = call(
            &app,
            "POST",
            &uri,
            Some(json!({"method": method, "path": "/x"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.text);
        assert_eq!(r.json["status"], 200);
    }
    let methods: Vec<String> = up.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(
        methods,
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    );
}

#[tokio::test]
async fn a_huge_answer_is_refused_at_the_limit_without_being_read() {
    let (base, up) = upstream().await;
    let app = app(keyhaven());
    let uri = bearer_account(&app, &format!("{base}/api")).await;

    // 200 MB, streamed without a length: cut off after the default 10 MiB.
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        call(&app, "POST", &uri, Some(json!({"path": "/huge"}))),
    )
    .await
    .expect("the proxy gives up quickly");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert_eq!(r.json["error"]["code"], "response_too_large");
    let message = r.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("10485760 bytes"), "{message}");
    assert!(message.contains("--proxy-max-response-bytes"), "{message}");
    assert!(message.contains("max_response_bytes"), "{message}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let produced = up.produced.load(Ordering::Relaxed);
    assert!(
        produced < 64 * 1024 * 1024,
        "the upstream was stopped early, not read to the end: {produced} bytes made in {:?}",
        started.elapsed()
    );

    // 200 MB announced: refused before any of it is read.
    up.produced.store(0, Ordering::Relaxed);
    let r = call(&app, "POST", &uri, Some(json!({"path": "/huge-announced"}))).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert!(
        r.text.contains(&format!("it announced {HUGE} bytes")),
        "{}",
        r.text
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(up.produced.load(Ordering::Relaxed) < 32 * 1024 * 1024);
}

#[tokio::test]
async fn the_answer_limit_is_configurable() {
    let (base, _up) = upstream().await;
    let config = ServerConfig {
        proxy: ProxyLimits {
            max_response_bytes: 1000,
        },
        ..ServerConfig::default()
    };
    let app = app_with(keyhaven(), config);
    let uri = bearer_account(&app, &format!("{base}/api")).await;
    let r = call(&app, "POST", &uri, Some(json!({"path": "/bytes/1000"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["body"].as_str().unwrap().len(), 1000);
    let r = call(&app, "POST", &uri, Some(json!({"path": "/bytes/1001"}))).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
    assert!(r.text.contains("limit of 1000 bytes"), "{}", r.text);
}

#[tokio::test]
async fn redirects_are_answered_not_followed() {
    let (base, up) = upstream().await;
    let (elsewhere, other) = upstream().await;
    let app = app(keyhaven());
    let uri = bearer_account(&app, &format!("{base}/api")).await;
    let r = call(&app, "POST", &uri, Some(json!({"path": "/redirect"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], 302);
    assert_eq!(r.json["headers"]["location"], "/api/landing");
    let r = call(
        &app,
        "POST",
        &uri,
        Some(json!({"path": format!("/redirect-away?to={elsewhere}/steal")})),
    )
    .await;
    assert_eq!(r.json["status"], 307, "{}", r.text);
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(targets.iter().all(|t| t.starts_with("/api/redirect")));
    assert!(other.seen().is_empty(), "the credentials went nowhere else");
}

/// An integration whose API host is typed by the end user.
async fn host_param_integration(app: &axum::Router, port: u16, allow: bool) -> String {
    let mut config = json!({
        "base_url": format!("http://{{host}}:{port}/api"),
        "connection_params": {"host": "Your server's host name"},
    });
    if allow {
        config["allow_private_hosts"] = json!(true);
    }
    integration(app, "BEARER_TOKEN", config).await
}

#[tokio::test]
async fn private_hosts_typed_as_parameters_are_refused_at_initiate() {
    let (base, up) = upstream().await;
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let app = app(keyhaven());
    let int = host_param_integration(&app, port, false).await;
    for host in [
        "127.0.0.1",
        "169.254.169.254",
        "localhost",
        "api.localhost",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "0",
        "2130706433",
        "0x7f.1",
        "metadata.google.internal",
        "intranet",
    ] {
        let r = connect(&app, &int, json!({"host": host, "token": SECRET})).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{host}: {}", r.text);
        assert!(
            r.text.contains("connected_account_params.host"),
            "{}",
            r.text
        );
        assert!(r.text.contains("allow_private_hosts"), "{}", r.text);
        assert!(!r.text.contains(SECRET));
    }
    // The connect form path: the app gives the host, the user would type the token.
    let r = connect(&app, &int, json!({"host": "169.254.169.254"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let accounts = call(&app, "GET", "/api/v1/connectedAccounts", None).await;
    assert_eq!(
        accounts.json["items"].as_array().unwrap().len(),
        0,
        "nothing was stored: {}",
        accounts.text
    );
    assert!(up.seen().is_empty());

    // A public name is fine (not resolved at initiate).
    let r = connect(
        &app,
        &int,
        json!({"host": "api.example.com", "token": SECRET}),
    )
    .await;
    assert_eq!(r.json["connectionStatus"], "ACTIVE", "{}", r.text);

    // An integration meant for a private network says so, and then works.
    let int = host_param_integration(&app, port, true).await;
    let r = connect(&app, &int, json!({"host": "127.0.0.1", "token": SECRET})).await;
    assert_eq!(r.json["connectionStatus"], "ACTIVE", "{}", r.text);
    let id = r.json["connectedAccountId"].as_str().unwrap();
    let r = call(
        &app,
        "POST",
        &format!("/api/v1/connectedAccounts/{id}/proxy"),
        Some(json!({"path": "/x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json["body"]["authorization"],
        format!("Bearer {SECRET}").as_str()
    );
}

#[tokio::test]
async fn private_hosts_typed_on_the_connect_form_are_refused() {
    let (base, _up) = upstream().await;
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let kh = keyhaven();
    let app = app(kh.clone());
    let int = host_param_integration(&app, port, false).await;
    let out = connect(&app, &int, json!({})).await;
    assert_eq!(out.json["connectionStatus"], "INITIATED", "{}", out.text);
    let link = out.json["redirectUrl"].as_str().unwrap();
    let token = link.split("token=").nth(1).unwrap();
    let mut values = serde_json::Map::new();
    values.insert("host".into(), json!("169.254.169.254"));
    values.insert("token".into(), json!(SECRET));
    let err = kh.submit_connect_form(token, &values).await.unwrap_err();
    assert_eq!(err.kind(), keyhaven::ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string().contains("connected_account_params.host"),
        "{err}"
    );
    let id = out.json["connectedAccountId"].as_str().unwrap();
    let account = kh.connected_accounts().get(id).await.unwrap();
    assert_eq!(account.status, keyhaven::ConnectionStatus::Initiated);
    // The link is still usable with a public host.
    values.insert("host".into(), json!("api.example.com"));
    kh.submit_connect_form(token, &values).await.unwrap();
    let account = kh.connected_accounts().get(id).await.unwrap();
    assert_eq!(account.status, keyhaven::ConnectionStatus::Active);
}

#[tokio::test]
async fn private_hosts_in_stored_parameters_are_refused_at_proxy_time() {
    logs();
    let (base, up) = upstream().await;
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let kh = keyhaven();
    let app = app(kh.clone());
    let int = host_param_integration(&app, port, false).await;
    // An account stored before hosts were checked, pointing at this machine.
    let out = connect(
        &app,
        &int,
        json!({"host": "api.example.com", "token": SECRET}),
    )
    .await;
    let id = out.json["connectedAccountId"].as_str().unwrap().to_owned();
    let mut account = kh.connected_accounts().get(&id).await.unwrap();
    let credentials = kh.credentials(&id).await.unwrap();
    let store = kh.store().clone();
    for host in ["127.0.0.1", "169.254.169.254", "localhost"] {
        account.params.insert("host".into(), json!(host));
        account.id = keyhaven::ConnectedAccountId::generate().unwrap();
        store
            .insert_account(&account, Some(&credentials), &[])
            .await
            .unwrap();
        let r = call(
            &app,
            "POST",
            &format!("/api/v1/connectedAccounts/{}/proxy", account.id),
            Some(json!({"path": "/x"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{host}: {}", r.text);
        assert!(
            r.text.contains("connected_account_params.host"),
            "{}",
            r.text
        );
        assert!(!r.text.contains(SECRET));
    }
    assert!(up.seen().is_empty(), "nothing reached this machine");
    assert!(!logged().contains(SECRET));
}
