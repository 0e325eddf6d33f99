//! Requests sent with an account's credentials, against an API on 127.0.0.1: through
//! the library (`kh.request`), the server's passthrough route and its JSON proxy
//! routes (v1, Composio's v2 and v3.1). What each scheme puts on a request, a 401
//! answered by one refresh and one retry (counted at the token endpoint and the
//! API), a streamed body never sent twice, the SSRF rules on every route, redirects
//! not followed, and every request in the audit log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keyhaven::chrono::Utc;
use keyhaven::{
    AuditAction, AuditLog, AuditQuery, ConnectionRequest, ErrorKind, Keyhaven, MemoryStore,
    NewIntegration, Store,
};
use keyhaven_server::{AdminKey, AppState, ServerConfig};
use keyhaven_tests::storm::{Fault, TokenEndpoint, seed_with};
use keyhaven_tests::upstream::Upstream;
use serde_json::{Value, json};

const KEY: &str = "kh-admin-test";

/// A keyhaven over a memory store, recording to an audit file of its own.
fn keyhaven(dir: &tempfile::TempDir) -> (Keyhaven, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let kh = Keyhaven::builder()
        .shared_store(store.clone())
        .audit_log(AuditLog::to_file(&dir.path().join("audit.log")).unwrap())
        .build()
        .unwrap();
    (kh, store)
}

/// An `ACTIVE` account of a custom app with `scheme` and `config`, connected with `params`.
async fn connect(kh: &Keyhaven, scheme: &str, config: Value, params: Value) -> String {
    let mut integration = NewIntegration::new("acme", scheme).name(format!("acme {scheme}"));
    for (k, v) in config.as_object().unwrap() {
        integration = integration.config(k.clone(), v.clone());
    }
    let integration = kh.integrations().create(integration).await.unwrap();
    let mut request = ConnectionRequest::for_integration(integration.id.to_string());
    for (k, v) in params.as_object().unwrap() {
        request = request.param(k.clone(), v.clone());
    }
    let out = kh
        .entity("ada")
        .unwrap()
        .initiate_connection(request)
        .await
        .unwrap();
    out.connected_account_id.to_string()
}

/// An `ACTIVE` `BEARER_TOKEN` account with `token`, whose API is `api`.
async fn bearer(kh: &Keyhaven, api: &Upstream, token: &str) -> String {
    connect(
        kh,
        "BEARER_TOKEN",
        json!({"base_url": api.base()}),
        json!({"token": token}),
    )
    .await
}

/// What the API's echo route saw of `request`, sent.
async fn echoed(request: keyhaven::request::ApiRequest) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// OAuth accounts whose tokens the API refuses (revoked) though they expire in an
/// hour, with the storm endpoint as their token endpoint and `upstream` as their API.
async fn revoked_accounts(
    kh: &Keyhaven,
    store: &MemoryStore,
    endpoint: &TokenEndpoint,
    upstream: &Upstream,
    n: usize,
) -> Vec<String> {
    let integration = endpoint.integration().config("base_url", upstream.base());
    let expires = Utc::now() + keyhaven::chrono::Duration::hours(1);
    let (_, ids) = seed_with(kh, store as &dyn Store, integration, n, "revoked", expires).await;
    ids.into_iter().map(|id| id.to_string()).collect()
}

#[tokio::test]
async fn each_scheme_puts_its_credentials_where_the_api_expects_them() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, _) = keyhaven(&dir);
    let api = Upstream::start().await;
    let cases = [
        (
            "API_KEY",
            json!({"base_url": api.base(), "header_name": "x-key", "header_format": "Key {api_key}",
                   "request_headers": {"x-api-version": "2026-01"}}),
            json!({"api_key": "sk-header"}),
            ("x-key", "Key sk-header"),
        ),
        (
            "API_KEY",
            json!({"base_url": api.base(), "query_param": "key"}),
            json!({"api_key": "sk-query"}),
            ("?key", "sk-query"),
        ),
        (
            "BEARER_TOKEN",
            json!({"base_url": api.base()}),
            json!({"token": "tok-1"}),
            ("authorization", "Bearer tok-1"),
        ),
        (
            "BASIC",
            json!({"base_url": api.base()}),
            json!({"username": "ada", "password": "pw"}),
            ("authorization", "Basic YWRhOnB3"),
        ),
    ];
    for (scheme, config, params, (name, expected)) in cases {
        let id = connect(&kh, scheme, config.clone(), params).await;
        let answer = kh
            .request(&id)
            .get("/echo?page=2")
            .header("x-trace", "t-1")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{scheme}");
        let seen: Value = answer.json().await.unwrap();
        assert_eq!(
            seen["path"], "/api/echo",
            "{scheme}: relative to the base URL"
        );
        assert_eq!(
            seen["headers"]["x-trace"], "t-1",
            "{scheme}: the caller's header"
        );
        if let Some(param) = name.strip_prefix('?') {
            assert_eq!(
                seen["query"],
                format!("page=2&{param}={expected}"),
                "{scheme}: the key in the query"
            );
            assert!(seen["headers"].get("authorization").is_none());
        } else {
            assert_eq!(seen["headers"][name], expected, "{scheme}: {seen}");
            assert_eq!(seen["query"], "page=2", "{scheme}");
        }
        if config.get("request_headers").is_some() {
            assert_eq!(
                seen["headers"]["x-api-version"], "2026-01",
                "request_headers"
            );
        }
        // The caller cannot replace the credentials' own header.
        if name == "authorization" {
            let seen = echoed(
                kh.request(&id)
                    .get("/echo")
                    .header("authorization", "Bearer forged"),
            )
            .await;
            assert_eq!(seen["headers"]["authorization"], expected, "{scheme}");
        }
    }
    // A JSON body goes as JSON; bytes as they are.
    let id = bearer(&kh, &api, "tok-2").await;
    let seen = echoed(kh.request(&id).post("/echo").json(&json!({"a": 1}))).await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"], r#"{"a":1}"#);
    assert_eq!(seen["headers"]["content-type"], "application/json");
    // By entity and app: the entity's newest ACTIVE account of the app.
    let seen = echoed(
        kh.entity("ada")
            .unwrap()
            .request("acme")
            .await
            .unwrap()
            .get("/echo"),
    )
    .await;
    assert_eq!(seen["headers"]["authorization"], "Bearer tok-2");
    let none = kh.entity("bob").unwrap().request("acme").await.unwrap_err();
    assert_eq!(none.kind(), ErrorKind::NotFound, "{none}");
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_the_request_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, store) = keyhaven(&dir);
    let api = Upstream::start().await;
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let ids = revoked_accounts(&kh, &store, &endpoint, &api, 2).await;

    // One request: 401, one refresh, the retry's 200.
    let answer = kh.request(&ids[0]).get("/me").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(endpoint.refreshes().get("rt-0"), Some(&1), "one refresh");
    assert_eq!(api.me(), 2, "sent twice: refused, then accepted");
    // The fresh token is used from then on: no second refresh.
    let answer = kh.request(&ids[0]).get("/me").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(api.me(), 3);
    assert_eq!(endpoint.refreshes().get("rt-0"), Some(&1));

    // Twenty at once with the same refused token: one refresh for all.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let kh = kh.clone();
            let id = ids[1].clone();
            tokio::spawn(async move {
                kh.request(&id)
                    .post("/me")
                    .body("replayable")
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        endpoint.refreshes().get("rt-1"),
        Some(&1),
        "one refresh for every request that saw the token refused"
    );

    // The audit log has the refused try and the retry.
    let entries = kh
        .audit()
        .query(&ids[0], &AuditQuery::default())
        .await
        .unwrap();
    let outcomes: Vec<(&str, Option<u16>)> = entries
        .iter()
        .map(|e| (e.outcome.as_str(), e.status))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("refused", Some(401)),
            ("sent", Some(200)),
            ("sent", Some(200))
        ]
    );
    assert!(entries.iter().all(|e| e.action == AuditAction::Request
        && e.path.as_deref() == Some("/api/me")
        && e.caller.key.as_deref() == Some("library")));
}

#[tokio::test]
async fn a_streamed_body_is_not_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, store) = keyhaven(&dir);
    let api = Upstream::start().await;
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let ids = revoked_accounts(&kh, &store, &endpoint, &api, 1).await;
    let chunks = futures::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(keyhaven::bytes::Bytes::from_static(b"part"))),
    );
    let answer = kh
        .request(&ids[0])
        .post("/me")
        .body_stream(keyhaven::reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401, "the API's 401 is the answer");
    assert_eq!(api.me(), 1, "sent once");
    assert!(
        endpoint.refreshes().is_empty(),
        "no refresh: nothing to retry"
    );
}

/// A request sent with credentials the API refused is in the audit log even when
/// the refresh that follows fails: it went out.
#[tokio::test]
async fn a_refused_request_is_audited_when_the_refresh_after_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, store) = keyhaven(&dir);
    let api = Upstream::start().await;
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let ids = revoked_accounts(&kh, &store, &endpoint, &api, 2).await;
    for (id, fault) in ids.iter().zip([Fault::Status(400), Fault::Status(503)]) {
        endpoint.set_fault(Some(fault.clone()));
        let err = kh.request(id).get("/me").send().await.unwrap_err();
        assert_ne!(err.kind(), ErrorKind::InvalidInput, "{fault:?}: {err}");
        let entries = kh.audit().query(id, &AuditQuery::default()).await.unwrap();
        let outcomes: Vec<(&str, Option<u16>)> = entries
            .iter()
            .map(|e| (e.outcome.as_str(), e.status))
            .collect();
        assert_eq!(outcomes, [("refused", Some(401))], "{fault:?}");
    }
    assert_eq!(api.me(), 2, "each sent once");
}

/// A request whose caller gives up before the API answers (a server's deadline, a
/// client gone: its future dropped) went out with the credentials: it is in the
/// audit log.
#[tokio::test]
async fn a_request_given_up_before_its_answer_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, _store) = keyhaven(&dir);
    // An API that never answers this path, and tells when a request's head came.
    let (api, mut heads) = sluggish_api().await;
    let id = connect(
        &kh,
        "BEARER_TOKEN",
        json!({"base_url": api}),
        json!({"token": "tok"}),
    )
    .await;
    let caller = {
        let kh = kh.clone();
        let id = id.clone();
        tokio::spawn(async move { kh.request(&id).get("/wait?long=1").send().await })
    };
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("GET /wait?long=1 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: bearer tok"),
        "{head}"
    );
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    let entries = kh.audit().query(&id, &AuditQuery::default()).await.unwrap();
    let seen: Vec<(&str, Option<&str>, Option<u16>)> = entries
        .iter()
        .map(|e| (e.outcome.as_str(), e.path.as_deref(), e.status))
        .collect();
    assert_eq!(seen, [("abandoned", Some("/wait"), None)]);
}

/// An API on 127.0.0.1 that reads a request's head and then, by its path: never
/// answers (`/silent`); sends a head and 10 of the 100 bytes it announces, then
/// nothing (`/stalls`); or sends 8 bytes one by one, 200 ms apart (`/slow`: never
/// silent for long, however busy the machine, against the tests' 1 s limit). Every
/// path but these two is silent. The heads it read come on the receiver.
async fn sluggish_api() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (reached, heads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let reached = reached.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let _ = reached.send(head.clone());
                if head.starts_with("GET /stalls ") {
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                        .await;
                } else if head.starts_with("GET /slow ") {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    for byte in b"unhurrie" {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = socket.write_all(&[*byte]).await;
                    }
                }
                // Held open, silent, until the client goes.
                let _ = socket.read(&mut buf).await;
            });
        }
    });
    (url, heads)
}

/// `f`, which must end within 20 s: a guard on a test of how calls end, not a timing.
async fn within<F: std::future::Future>(f: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(20), f).await
}

#[tokio::test]
async fn an_api_silent_for_longer_than_the_read_timeout_is_given_up_on_and_a_slow_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .audit_log(AuditLog::to_file(&dir.path().join("audit.log")).unwrap())
        .read_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (api, _heads) = sluggish_api().await;
    let id = connect(
        &kh,
        "BEARER_TOKEN",
        json!({"base_url": api}),
        json!({"token": "tok"}),
    )
    .await;

    let err = within(kh.request(&id).get("/silent").send())
        .await
        .expect("a request to a silent API ends")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(err.to_string().contains("sent nothing for 1 s"), "{err}");

    let answer = kh.request(&id).get("/stalls").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer.url().as_str().ends_with("/stalls"),
        "the URL is kept"
    );
    let err = within(answer.bytes())
        .await
        .expect("a body that stalls ends")
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    // Slower in all than the limit, but never silent for that long.
    let answer = kh.request(&id).get("/slow").send().await.unwrap();
    let body = within(answer.bytes()).await.unwrap().unwrap();
    assert_eq!(&body[..], b"unhurrie");

    // A body read long after its head came is not timed out for that.
    let answer = kh.request(&id).get("/slow").send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let body = within(answer.bytes()).await.unwrap().unwrap();
    assert_eq!(&body[..], b"unhurrie");

    // A reader that pauses between two parts for longer than the limit while the
    // API goes on sending: what came meanwhile is delivered, not cut.
    let mut answer = kh.request(&id).get("/slow").send().await.unwrap();
    let mut body = within(answer.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .to_vec();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Some(part) = within(answer.chunk()).await.unwrap().unwrap() {
        body.extend_from_slice(&part);
    }
    assert_eq!(&body[..], b"unhurrie");

    // Through the server's passthrough: the same limit, and the API's silence is
    // answered as an unreachable API.
    let (base, _stop) = serve(kh.clone()).await;
    let answer = within(
        http()
            .get(format!("{base}/api/v1/proxy/{id}/silent"))
            .header("x-api-key", KEY)
            .send(),
    )
    .await
    .expect("the server answers for a silent API")
    .unwrap();
    assert_eq!(answer.status(), 503, "unavailable: worth a retry later");
    let text = answer.text().await.unwrap();
    assert!(text.contains("sent nothing for 1 s"), "{text}");

    kh.audit().flush().await.unwrap();
    let lines = kh.audit().query(&id, &AuditQuery::default()).await.unwrap();
    let outcomes: Vec<&str> = lines.iter().map(|l| l.outcome.as_str()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "unreachable").count(),
        2,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "sent").count(),
        4,
        "{outcomes:?}"
    );
}

/// Paths that try to leave the account's API (base `{url}/api`), by every trick.
fn escapes(api: &Upstream) -> Vec<String> {
    let origin = &api.url;
    vec![
        "/../apiother/x".to_owned(),
        "/%2e%2e/apiother/x".to_owned(),
        "/%2E%2E%2Fapiother/x".to_owned(),
        "/..%2fapiother/x".to_owned(),
        "/..;/apiother/x".to_owned(),
        "/%252e%252e/apiother/x".to_owned(),
        "/..;/apiother/x?next=http://x".to_owned(),
        "/%252e%252e/apiother/x?u=https://a/b".to_owned(),
        "/..\\apiother/x".to_owned(),
        format!("{origin}/apiother/x"),
        format!("{origin}/api-internal/x"),
        format!("{origin}/internal"),
        format!(
            "http://user:pw@{}/api/echo",
            origin.trim_start_matches("http://")
        ),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "//evil.example/x".to_owned(),
        "echo".to_owned(),
    ]
}

#[tokio::test]
async fn requests_never_leave_the_accounts_api_and_redirects_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, _) = keyhaven(&dir);
    let api = Upstream::start().await;
    let id = bearer(&kh, &api, "tok-ssrf").await;
    // Twice, after a good path each time: a refused path is refused again, whatever
    // the account's target keeps of the paths it sent to (`Target::url`).
    for _ in 0..2 {
        for path in escapes(&api) {
            let err = kh.request(&id).get(path.clone()).send().await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{path}: {err}");
            let fine = kh.request(&id).get("/echo").send().await.unwrap();
            assert_eq!(fine.status(), 200);
        }
    }
    for (name, value) in [
        ("host", "evil.example"),
        ("connection", "close"),
        ("x-api-key", "k"),
    ] {
        let err = kh
            .request(&id)
            .get("/echo")
            .header(name, value)
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}");
    }
    let trace = kh
        .request(&id)
        .method(keyhaven::http::Method::TRACE)
        .path("/echo")
        .send()
        .await
        .unwrap_err();
    assert_eq!(trace.kind(), ErrorKind::InvalidInput);
    let redirect = kh.request(&id).get("/redirect").send().await.unwrap();
    assert_eq!(redirect.status(), 307, "answered as it is");
    assert_eq!(api.traps(), 0, "nothing reached beside the API");
}

/// An account's requests to many paths, each asked for again after others (more
/// than the few whose URLs its target keeps): each reaches the path and query asked
/// for, every time.
#[tokio::test]
async fn each_path_reaches_the_api_as_asked_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, _) = keyhaven(&dir);
    let api = Upstream::start().await;
    let id = bearer(&kh, &api, "tok-paths").await;
    let long = format!("/echo/{}", "l".repeat(300));
    let mut paths: Vec<String> = (0..6).map(|i| format!("/echo/p{i}?n={i}")).collect();
    paths.push(long);
    paths.push("/echo/a%20b?x=1&y=%2F".to_owned());
    for round in 0..3 {
        for (i, path) in paths.iter().enumerate() {
            // Each path now and then twice in a row, and the others in between.
            for _ in 0..=(round + i) % 2 {
                let seen = echoed(kh.request(&id).get(path.clone())).await;
                let (want_path, want_query) = path.split_once('?').unwrap_or((path, ""));
                assert_eq!(seen["path"], format!("/api{want_path}"), "{path}");
                assert_eq!(seen["query"].as_str().unwrap_or(""), want_query, "{path}");
                assert_eq!(seen["headers"]["authorization"], "Bearer tok-paths");
            }
        }
    }
}

/// A keyhaven server on 127.0.0.1 over `kh`.
async fn serve(kh: Keyhaven) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut state = AppState::new(kh, AdminKey::from_plain(KEY));
    state.config = ServerConfig {
        public_url: keyhaven::url::Url::parse(&base).unwrap(),
        rate_limit: None,
        ..ServerConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(keyhaven_server::serve(listener, Arc::new(state), async {
        let _ = stopped.await;
    }));
    (base, stop)
}

fn http() -> keyhaven::reqwest::Client {
    keyhaven::reqwest::Client::builder()
        .redirect(keyhaven::reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_server_routes_pass_requests_on_and_keep_every_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, store) = keyhaven(&dir);
    let api = Upstream::start().await;
    let id = bearer(&kh, &api, "tok-server").await;
    let (base, _stop) = serve(kh.clone()).await;
    let http = http();

    // The passthrough: method, query, headers and body as they came; the API's
    // answer as it is, marked as the API's.
    let answer = http
        .post(format!("{base}/api/v1/proxy/{id}/echo/a%20b?x=1&y=2"))
        .header("x-api-key", KEY)
        .header("x-trace", "t-9")
        // Headers named in Connection are this hop's only.
        .header("connection", "x-hop, keep-alive")
        .header("x-hop", "for keyhaven only")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-keyhaven-upstream"], "1");
    let seen: Value = answer.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/api/echo/a%20b");
    assert_eq!(seen["query"], "x=1&y=2");
    assert_eq!(seen["body"], "hello");
    assert_eq!(seen["headers"]["x-trace"], "t-9");
    assert!(seen["headers"].get("x-hop").is_none(), "{seen}");
    assert_eq!(seen["headers"]["authorization"], "Bearer tok-server");
    assert!(
        seen["headers"].get("x-api-key").is_none(),
        "keyhaven's key stays here"
    );
    assert!(
        !seen["headers"]["host"].as_str().unwrap().contains("evil"),
        "{seen}"
    );
    // An API's error is passed on as it is; keyhaven's own are its JSON errors.
    let missing = http
        .get(format!("{base}/api/v1/proxy/{id}/nothing-here"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-keyhaven-upstream"], "1");
    let unknown = http
        .get(format!(
            "{base}/api/v1/proxy/ca_01a0000000000000000000000000dead/echo"
        ))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert!(unknown.headers().get("x-keyhaven-upstream").is_none());
    let nokey = http
        .get(format!("{base}/api/v1/proxy/{id}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(nokey.status(), 401);

    // The SSRF list on every route.
    for path in escapes(&api) {
        let routes = [
            (
                format!("{base}/api/v1/connectedAccounts/{id}/proxy"),
                json!({"path": path}),
            ),
            (
                format!("{base}/api/v2/actions/proxy"),
                json!({"connectedAccountId": id, "endpoint": path, "method": "GET"}),
            ),
            (
                format!("{base}/api/v3.1/tools/execute/proxy"),
                json!({"connected_account_id": id, "endpoint": path, "method": "GET"}),
            ),
        ];
        for (route, body) in routes {
            let r = http
                .post(&route)
                .header("x-api-key", KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{route} {path}");
        }
        // The passthrough takes paths only; those that are paths go as written.
        if path.starts_with('/') && !path.starts_with("//") {
            let r = http
                .get(format!("{base}/api/v1/proxy/{id}{path}"))
                .header("x-api-key", KEY)
                .send()
                .await
                .unwrap();
            assert!(
                r.status() == 400 || r.status() == 404,
                "passthrough {path}: {}",
                r.status()
            );
            assert!(r.headers().get("x-keyhaven-upstream").is_none(), "{path}");
        }
    }
    let host = http
        .get(format!("{base}/api/v1/connectedAccounts/{id}/proxy"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(host.status(), 405);
    let redirect = http
        .get(format!("{base}/api/v1/proxy/{id}/redirect"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 307, "the API's redirect, not followed");
    assert_eq!(api.traps(), 0, "nothing reached beside the API");

    // The server's requests are in the audit log, by the admin key, without queries.
    let audit: Value = http
        .get(format!("{base}/api/v1/connectedAccounts/{id}/audit"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = audit["items"].as_array().unwrap();
    let first = &items[0];
    assert_eq!(first["action"], "request");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/api/echo/a%20b");
    assert_eq!(first["status"], 200);
    assert_eq!(first["key"], "admin");
    assert!(first["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(!audit.to_string().contains("x=1"), "no query in the log");
    assert!(!audit.to_string().contains("tok-server"), "no credential");
    drop(store);
}

#[tokio::test]
async fn the_passthrough_refreshes_a_refused_token_and_retries_a_small_body() {
    let dir = tempfile::tempdir().unwrap();
    let (kh, store) = keyhaven(&dir);
    let api = Upstream::start().await;
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let ids = revoked_accounts(&kh, &store, &endpoint, &api, 2).await;
    let (base, _stop) = serve(kh.clone()).await;
    let answer = http()
        .put(format!("{base}/api/v1/proxy/{}/me", ids[0]))
        .header("x-api-key", KEY)
        .body("small body")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(endpoint.refreshes().get("rt-0"), Some(&1));
    assert_eq!(api.me(), 2);
    // No body at all (no Content-Length, as `curl -X DELETE` sends): nothing to
    // stream, so it is sent again too.
    let answer = http()
        .delete(format!("{base}/api/v1/proxy/{}/me", ids[1]))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(endpoint.refreshes().get("rt-1"), Some(&1));
    assert_eq!(api.me(), 4);
}

/// Two instances over one store, each recording to the store's audit table: each
/// reads the other's uses.
async fn instances_share_the_audit_trail(store_a: Arc<dyn Store>, store_b: Arc<dyn Store>) {
    let api = Upstream::start().await;
    let make = |store: Arc<dyn Store>| {
        Keyhaven::builder()
            .shared_store(store.clone())
            .audit_log(AuditLog::to_store(store).unwrap())
            .build()
            .unwrap()
    };
    let (a, b) = (make(store_a), make(store_b));
    let id = bearer(&a, &api, "tok-shared").await;
    a.request(&id).get("/echo?secret=1").send().await.unwrap();
    b.request(&id).get("/fixed").send().await.unwrap();
    a.audit().flush().await.unwrap();
    b.audit().flush().await.unwrap();
    for kh in [&a, &b] {
        let entries = kh.audit().query(&id, &AuditQuery::default()).await.unwrap();
        let paths: Vec<&str> = entries.iter().filter_map(|e| e.path.as_deref()).collect();
        assert_eq!(
            paths,
            ["/api/echo", "/api/fixed"],
            "both instances' requests"
        );
        assert!(entries.iter().all(|e| e.status == Some(200)));
    }
    let since = a
        .audit()
        .query(
            &id,
            &AuditQuery {
                limit: Some(1),
                ..AuditQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(
        since[0].path.as_deref(),
        Some("/api/fixed"),
        "the newest one"
    );

    // Times within one microsecond (the store orders by microseconds): the bounds
    // hold to the nanosecond, as in the file, so paging back from the oldest time
    // read skips nothing.
    let base = keyhaven::chrono::DateTime::parse_from_rfc3339("2026-12-04T10:00:00.000001000Z")
        .unwrap()
        .with_timezone(&Utc);
    let at = |ns: i64| base + keyhaven::chrono::TimeDelta::nanoseconds(ns);
    for ns in [100, 700, 900] {
        let entry = keyhaven::AuditEntry::new(at(ns), AuditAction::Request, "ca_paging", "sent");
        a.audit().record(&entry).await.unwrap();
    }
    let page = |since: Option<i64>, until: Option<i64>, limit: usize| {
        let a = a.clone();
        async move {
            let query = AuditQuery {
                since: since.map(at),
                until: until.map(at),
                limit: Some(limit),
            };
            let entries = a.audit().query("ca_paging", &query).await.unwrap();
            entries.iter().map(|e| e.at).collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, None, 1).await, [at(900)]);
    assert_eq!(
        page(None, Some(900), 1).await,
        [at(700)],
        "until the oldest read"
    );
    assert_eq!(page(None, Some(700), 5).await, [at(100)]);
    assert_eq!(page(Some(700), None, 5).await, [at(700), at(900)]);
    assert!(page(Some(701), Some(900), 5).await.is_empty());
    assert_eq!(
        page(Some(100), Some(901), 2).await,
        [at(700), at(900)],
        "the newest two"
    );
}

#[tokio::test]
async fn the_audit_trail_in_a_shared_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let (ring, b64) = keyhaven_tests::new_key();
    let path = dir.path().join("kh.db");
    let a: Arc<dyn Store> = Arc::new(keyhaven::SqliteStore::open(&path, ring).unwrap());
    let ring = keyhaven::ring_from_base64(&b64, &[]).unwrap();
    let b: Arc<dyn Store> = Arc::new(keyhaven::SqliteStore::open(&path, ring).unwrap());
    instances_share_the_audit_trail(a, b).await;
}

#[tokio::test]
async fn the_audit_trail_in_a_shared_postgresql_store() {
    let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
        return;
    };
    let (ring, b64) = keyhaven_tests::new_key();
    let a: Arc<dyn Store> = Arc::new(keyhaven::PostgresStore::connect(&url, ring).await.unwrap());
    let ring = keyhaven::ring_from_base64(&b64, &[]).unwrap();
    let b: Arc<dyn Store> = Arc::new(keyhaven::PostgresStore::connect(&url, ring).await.unwrap());
    instances_share_the_audit_trail(a, b).await;
}
