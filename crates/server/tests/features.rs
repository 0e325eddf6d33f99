//! The server's features beyond the connection routes: the hosted connect form and
//! its CSRF checks, credentials behind their own key with an audit trail, server-sent
//! events, signed webhooks with retries, the proxy, CORS, and an OpenAPI document
//! that lists exactly the routes served. In-process (`oneshot`), except webhooks and
//! the proxy, which talk to real HTTP servers on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keyhaven::{AuditLog, Keyhaven, MemoryStore};
use keyhaven_server::{AdminKey, AppState, DEFAULT_PUBLIC_URL, ServerConfig, Webhook, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "kh_features_admin";
const CREDS_KEY: &str = "khc_features_credentials";
const SECRET: &str = "sk-features-SECRET-42";

fn keyhaven() -> Keyhaven {
    audited(AuditLog::log_only())
}

/// The test keyhaven, recording uses of credentials to `audit`.
fn audited(audit: AuditLog) -> Keyhaven {
    Keyhaven::builder()
        .store(MemoryStore::new())
        .audit_log(audit)
        .connect_form_url("http://127.0.0.1:9210/connect")
        .allow_redirect_url("https://app.example.com/")
        .app_credentials("github", "gh-id", Some("gh-secret"))
        .build()
        .unwrap()
}

/// The application with default settings and no audit file.
fn plain_app(kh: Keyhaven) -> axum::Router {
    router(state_with(kh, ServerConfig::default()))
}

fn state_with(kh: Keyhaven, config: ServerConfig) -> Arc<AppState> {
    let mut s = AppState::new(kh, AdminKey::from_plain(KEY));
    s.credentials_key = Some(AdminKey::from_plain(CREDS_KEY));
    s.config = config;
    Arc::new(s)
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
    json: Value,
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Answer {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn api(method: &str, uri: &str, key: &str, body: Option<Value>) -> Request<Body> {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-api-key", key);
    match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    }
}

fn form(
    uri: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    fields: &[(&str, &str)],
) -> Request<Body> {
    let body: String = keyhaven::url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    req.body(Body::from(body)).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

/// The form page's hidden csrf value and its cookie.
fn csrf_of(page: &Answer) -> (String, String) {
    let cookie = page.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let value = pair.split_once('=').unwrap().1.to_owned();
    assert!(
        page.text
            .contains(&format!("name=\"csrf\" value=\"{value}\""))
    );
    (pair, value)
}

async fn initiate_without_key(app: &axum::Router, redirect: Option<&str>) -> (String, String) {
    let mut body = json!({"appName": "openai", "authScheme": "API_KEY", "entityId": "erin"});
    if let Some(r) = redirect {
        body["redirectUri"] = json!(r);
    }
    let out = send(
        app,
        api("POST", "/api/v1/connectedAccounts", KEY, Some(body)),
    )
    .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.text);
    assert_eq!(out.json["connectionStatus"], "INITIATED");
    let link = out.json["redirectUrl"].as_str().unwrap();
    assert!(
        link.starts_with("http://127.0.0.1:9210/connect?token="),
        "{link}"
    );
    let path = link.trim_start_matches("http://127.0.0.1:9210").to_owned();
    (
        out.json["connectedAccountId"].as_str().unwrap().to_owned(),
        path,
    )
}

#[tokio::test]
async fn the_connect_form_takes_the_secret_from_the_user_with_csrf_checks() {
    let kh = keyhaven();
    let app = plain_app(kh.clone());
    let (id, path) = initiate_without_key(&app, None).await;

    // Composio's client asks for the active accounts so: not this one yet.
    let active_only = "/api/v1/connectedAccounts?showActiveOnly=true";
    let active = send(&app, api("GET", active_only, KEY, None)).await;
    assert_eq!(active.json["items"], json!([]));
    let page = send(&app, get(&path)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text.contains("Connect your OpenAI account"),
        "{}",
        page.text
    );
    assert!(
        page.text.contains(r#"name="api_key" type="password""#),
        "{}",
        page.text
    );
    assert!(page.text.contains(r#"<label for="f-api_key">"#));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers["referrer-policy"], "same-origin");
    let (cookie, csrf) = csrf_of(&page);
    let token = path.split("token=").nth(1).unwrap().to_owned();

    // No cookie, a wrong csrf value, another origin: refused, nothing changes.
    for (c, v, o) in [
        (None, csrf.as_str(), None),
        (Some(cookie.as_str()), "0000", None),
        (
            Some(cookie.as_str()),
            csrf.as_str(),
            Some("https://evil.example"),
        ),
    ] {
        let r = send(
            &app,
            form(
                "/connect",
                c,
                o,
                &[("token", &token), ("csrf", v), ("api_key", SECRET)],
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{c:?} {v} {o:?}");
    }
    assert_eq!(
        kh.connected_accounts()
            .get(&id)
            .await
            .unwrap()
            .status
            .as_str(),
        "INITIATED"
    );

    // A required field left empty: the form again, saying so; the link still works.
    let r = send(
        &app,
        form(
            "/connect",
            Some(&cookie),
            Some("http://127.0.0.1:9210"),
            &[("token", &token), ("csrf", &csrf), ("api_key", "")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text.contains("role=\"alert\"") && r.text.contains("api_key"),
        "{}",
        r.text
    );

    let r = send(
        &app,
        form(
            "/connect",
            Some(&cookie),
            Some("http://127.0.0.1:9210"),
            &[("token", &token), ("csrf", &csrf), ("api_key", SECRET)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        r.text.contains("Your OpenAI account is connected"),
        "{}",
        r.text
    );
    assert!(!r.text.contains(SECRET));
    let account = kh.connected_accounts().get(&id).await.unwrap();
    assert_eq!(account.status.as_str(), "ACTIVE");
    let active = send(&app, api("GET", active_only, KEY, None)).await;
    assert_eq!(active.json["items"][0]["id"], id.as_str());
    assert_eq!(
        kh.credentials(&id).await.unwrap().get_str("api_key"),
        Some(SECRET)
    );

    // The link is used up: a well-formed token keyhaven no longer knows.
    let again = send(&app, get(&path)).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let r = send(
        &app,
        form(
            "/connect",
            Some(&cookie),
            None,
            &[("token", &token), ("csrf", &csrf), ("api_key", "other")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Not a token keyhaven makes at all.
    let unknown = send(&app, get("/connect?token=nope")).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.text.contains("unknown or was already used"));
}

#[tokio::test]
async fn the_connect_form_redirects_to_the_app_and_escapes_what_it_shows() {
    let kh = keyhaven();
    let app = plain_app(kh.clone());
    let (id, path) = initiate_without_key(&app, Some("https://app.example.com/done?x=<b>")).await;
    let page = send(&app, get(&path)).await;
    // The form may be redirected to the app's origin, and nowhere else.
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("form-action 'self' https://app.example.com"),
        "{csp}"
    );
    let (cookie, csrf) = csrf_of(&page);
    let token = path.split("token=").nth(1).unwrap().to_owned();
    let r = send(
        &app,
        form(
            "/connect",
            Some(&cookie),
            None,
            &[("token", &token), ("csrf", &csrf), ("api_key", SECRET)],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let location = r.headers["location"].to_str().unwrap();
    assert!(
        location.starts_with(
            "https://app.example.com/done?x=%3Cb%3E&status=success&connectedAccountId="
        ),
        "{location}"
    );
    assert!(location.ends_with(&id));

    // A token an attacker made up with markup is shown escaped.
    let bad = send(
        &app,
        get("/connect?token=%3Cscript%3Ealert(1)%3C/script%3E"),
    )
    .await;
    assert!(!bad.text.contains("<script>"), "{}", bad.text);
}

#[tokio::test]
async fn credentials_need_their_own_key_and_every_read_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let app = router(state_with(
        audited(AuditLog::to_file(&log).unwrap()),
        ServerConfig::default(),
    ));
    let out = send(&app, api("POST", "/api/v1/connectedAccounts", KEY, Some(json!({"appName": "openai", "authScheme": "API_KEY", "entityId": "fay", "data": {"api_key": SECRET}})))).await;
    let id = out.json["connectedAccountId"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/connectedAccounts/{id}/credentials");

    let r = send(&app, api("GET", &uri, KEY, None)).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "the admin key cannot read credentials"
    );
    assert!(!r.text.contains(SECRET));
    let r = send(&app, api("GET", &uri, "khc_wrong", None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let message = r.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("credentials key")
            && message.contains("KEYHAVEN_CREDENTIALS_KEY")
            && message.contains("x-api-key"),
        "the 401 names the key this route needs: {message}"
    );
    // Refused under an encoded id (the route decodes it): on the account's record
    // all the same.
    assert!(id.starts_with("ca_"), "{id}");
    let encoded = uri.replacen("/ca_", "/%63a_", 1);
    let r = send(&app, api("GET", &encoded, "khc_wrong", None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(&app, api("GET", &uri, CREDS_KEY, None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["credentials"]["api_key"], SECRET);
    assert_eq!(r.headers["cache-control"], "no-store");
    // The credentials key is for credentials only.
    let r = send(
        &app,
        api("GET", "/api/v1/connectedAccounts", CREDS_KEY, None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &app,
        api(
            "GET",
            "/api/v1/connectedAccounts/ca_nope/credentials",
            CREDS_KEY,
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "forbidden",
            "unauthorized",
            "unauthorized",
            "granted",
            "invalid_input"
        ],
        "{text}"
    );
    assert!(
        lines
            .iter()
            .take(4)
            .all(|l| l["connectedAccountId"] == id.as_str())
    );
    assert_eq!(lines[3]["entityId"], "fay");
    assert!(!text.contains(SECRET), "the audit log holds no secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

/// A writer that fails every write, as a full disk does.
struct FullDisk;

impl std::io::Write for FullDisk {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn credentials_are_refused_when_their_read_cannot_be_audited() {
    let mut audits = vec![(
        "a failing writer",
        AuditLog::to_writer("full-disk", FullDisk),
    )];
    // /dev/full fails every write with ENOSPC, as a full disk does.
    if std::path::Path::new("/dev/full").exists() {
        audits.push((
            "/dev/full",
            AuditLog::to_file(std::path::Path::new("/dev/full")).unwrap(),
        ));
    }
    for (what, audit) in audits {
        let app = router(state_with(audited(audit), ServerConfig::default()));
        let out = send(&app, api("POST", "/api/v1/connectedAccounts", KEY, Some(json!({"appName": "openai", "authScheme": "API_KEY", "entityId": "gil", "data": {"api_key": SECRET}})))).await;
        let id = out.json["connectedAccountId"].as_str().unwrap().to_owned();
        let uri = format!("/api/v1/connectedAccounts/{id}/credentials");
        let r = send(&app, api("GET", &uri, CREDS_KEY, None)).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {}",
            r.text
        );
        assert_eq!(r.json["error"]["code"], "audit_unavailable", "{what}");
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("audit log"),
            "{what}: {}",
            r.text
        );
        assert!(!r.text.contains(SECRET), "{what}: no credentials");
        // Refusals stay refusals.
        let r = send(&app, api("GET", &uri, "khc_wrong", None)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        let r = send(&app, api("GET", &uri, KEY, None)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}");
    }
}

#[tokio::test]
async fn audit_lines_record_the_callers_address() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let app = router(state_with(
        audited(AuditLog::to_file(&log).unwrap()),
        ServerConfig::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // As keyhaven_server::serve serves it: with the connection's address.
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let client = reqwest::Client::new();
    let out: Value = client
        .post(format!("http://{addr}/api/v1/connectedAccounts"))
        .header("x-api-key", KEY)
        .json(&json!({"appName": "openai", "authScheme": "API_KEY", "entityId": "hal", "data": {"api_key": SECRET}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = out["connectedAccountId"].as_str().unwrap().to_owned();
    let url = format!("http://{addr}/api/v1/connectedAccounts/{id}/credentials");
    for key in ["khc_wrong", KEY, CREDS_KEY] {
        client
            .get(&url)
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
    }
    server.abort();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["unauthorized", "forbidden", "granted"], "{text}");
    for line in &lines {
        let remote = line["remote"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(remote.starts_with("127.0.0.1:"), "{line}");
        assert_ne!(remote, addr.to_string(), "the caller's address, not ours");
    }
}

/// Reads SSE frames from a body until `want` events have come.
async fn sse_events(body: &mut Body, want: usize) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < want {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    events
}

#[tokio::test]
async fn events_stream_per_account_and_for_all() {
    let kh = keyhaven();
    let app = plain_app(kh.clone());
    let (id, _) = initiate_without_key(&app, None).await;
    let mut all = app
        .clone()
        .oneshot(api(
            "GET",
            "/api/v1/events?types=inactive,connection.deleted",
            KEY,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(all.headers()["content-type"], "text/event-stream");
    let mut one = app
        .clone()
        .oneshot(api(
            "GET",
            &format!("/api/v1/connectedAccounts/{id}/events"),
            KEY,
            None,
        ))
        .await
        .unwrap();
    let first = sse_events(one.body_mut(), 1).await;
    assert_eq!(first[0].0, "snapshot");
    assert_eq!(first[0].1["status"], "INITIATED");

    // Another account is made and disabled; the first is deleted.
    let other = send(
        &app,
        api(
            "POST",
            "/api/v1/connectedAccounts",
            KEY,
            Some(
                json!({"appName": "openai", "authScheme": "API_KEY", "data": {"api_key": SECRET}}),
            ),
        ),
    )
    .await;
    let other_id = other.json["connectedAccountId"]
        .as_str()
        .unwrap()
        .to_owned();
    send(
        &app,
        api(
            "POST",
            &format!("/api/v1/connectedAccounts/{other_id}/disable"),
            KEY,
            None,
        ),
    )
    .await;
    send(
        &app,
        api(
            "DELETE",
            &format!("/api/v1/connectedAccounts/{id}"),
            KEY,
            None,
        ),
    )
    .await;

    let mine = sse_events(one.body_mut(), 1).await;
    assert_eq!(mine[0].0, "connection.deleted", "{mine:?}");
    assert_eq!(mine[0].1["connectedAccountId"], id.as_str());
    // The account's stream ends after its deletion.
    let end = tokio::time::timeout(Duration::from_secs(5), one.body_mut().frame())
        .await
        .unwrap();
    assert!(end.is_none(), "the stream ended");

    let seen = sse_events(all.body_mut(), 2).await;
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["connection.inactive", "connection.deleted"],
        "only the types asked for"
    );
    assert_eq!(seen[0].1["connectedAccountId"], other_id.as_str());
    assert_eq!(seen[0].1["status"], "INACTIVE");
    assert!(!serde_json::to_string(&seen).unwrap().contains(SECRET));

    let bad = send(&app, api("GET", "/api/v1/events?types=nope", KEY, None)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn cors_is_off_unless_configured() {
    let preflight = || {
        Request::builder()
            .method("OPTIONS")
            .uri("/api/v1/connectedAccounts")
            .header("origin", "https://dash.example.com")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-api-key")
            .body(Body::empty())
            .unwrap()
    };
    let off = plain_app(keyhaven());
    let r = send(&off, preflight()).await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let on = router(state_with(
        keyhaven(),
        ServerConfig {
            cors_origins: vec!["https://dash.example.com".into()],
            ..ServerConfig::default()
        },
    ));
    let r = send(&on, preflight()).await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let mut other = preflight();
    other
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let r = send(&on, other).await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let app = plain_app(keyhaven());
    let doc = send(&app, get("/api/v1/openapi.json")).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(
        doc.json,
        serde_json::to_value(keyhaven_server::openapi()).unwrap()
    );
    let paths = doc.json["paths"].as_object().unwrap();
    let mut listed: Vec<String> = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            listed.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    listed.sort();
    let mut expected = vec![
        "GET /api/v1/client/auth/client_info",
        "GET /api/v1/apps",
        "GET /api/v1/apps/{slug}",
        "GET /api/v1/schemes",
        "POST /api/v1/integrations",
        "GET /api/v1/integrations",
        "GET /api/v1/integrations/{id}",
        "DELETE /api/v1/integrations/{id}",
        "POST /api/v1/connectedAccounts",
        "GET /api/v1/connectedAccounts",
        "GET /api/v1/connectedAccounts/{id}",
        "DELETE /api/v1/connectedAccounts/{id}",
        "POST /api/v1/connectedAccounts/{id}/refresh",
        "POST /api/v1/connectedAccounts/{id}/enable",
        "POST /api/v1/connectedAccounts/{id}/disable",
        "GET /api/v1/connectedAccounts/{id}/wait",
        "GET /api/v1/connectedAccounts/{id}/events",
        "GET /api/v1/connectedAccounts/{id}/credentials",
        "GET /api/v1/connectedAccounts/{id}/audit",
        "POST /api/v1/connectedAccounts/{id}/proxy",
        "POST /api/v2/connectedAccounts/initiateConnection",
        "POST /api/v2/integrations/create",
        "POST /api/v2/actions/proxy",
        "POST /api/v3.1/tools/execute/proxy",
        "GET /api/v1/events",
        "GET /api/v1/oauth/callback",
        "GET /connect",
        "POST /connect",
        "GET /link/{token}",
        "POST /link/{token}",
        "GET /healthz",
        "GET /readyz",
        "GET /api/v1/webhooks",
        "GET /api/v1/webhooks/deliveries",
        "POST /api/v1/webhooks/deliveries/{id}/redeliver",
        "GET /api/v3.1/toolkits",
        "GET /api/v3.1/toolkits/{slug}",
        "POST /api/v3.1/auth_configs",
        "GET /api/v3.1/auth_configs",
        "GET /api/v3.1/auth_configs/{id}",
        "PATCH /api/v3.1/auth_configs/{id}",
        "DELETE /api/v3.1/auth_configs/{id}",
        "PATCH /api/v3.1/auth_configs/{id}/{status}",
        "POST /api/v3.1/connected_accounts",
        "GET /api/v3.1/connected_accounts",
        "GET /api/v3.1/connected_accounts/{id}",
        "DELETE /api/v3.1/connected_accounts/{id}",
        "PATCH /api/v3.1/connected_accounts/{id}/status",
        "POST /api/v3.1/connected_accounts/{id}/refresh",
        "POST /api/v3.1/connected_accounts/link",
    ];
    expected.sort_unstable();
    assert_eq!(listed, expected);
    // Every documented route is served, the v3.1 ones also under /api/v3: none
    // answers the fallback's 404 or a 405.
    let aliases: Vec<String> = listed
        .iter()
        .filter(|e| e.contains(" /api/v3.1/"))
        .map(|e| e.replace(" /api/v3.1/", " /api/v3/"))
        .collect();
    for entry in listed.iter().chain(&aliases) {
        let (method, path) = entry.split_once(' ').unwrap();
        let uri = path
            .replace("{slug}", "github")
            .replace("{status}", "ENABLED")
            .replace("{token}", &"ab".repeat(32))
            .replace("{id}", "ca_01a0000000000000000000000000dead");
        let uri = if uri.ends_with("/wait") {
            format!("{uri}?timeout=0")
        } else {
            uri
        };
        // Event streams never end: only the status and the start of the body are read.
        let response = app
            .clone()
            .oneshot(api(method, &uri, KEY, None))
            .await
            .unwrap();
        let status = response.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{entry}");
        if status == StatusCode::NOT_FOUND {
            let mut body = response.into_body();
            let frame = tokio::time::timeout(Duration::from_secs(2), body.frame())
                .await
                .unwrap();
            let text = frame
                .and_then(|f| f.ok())
                .and_then(|f| f.into_data().ok())
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .unwrap_or_default();
            assert!(
                !text.contains("no such route"),
                "{entry} is documented but not served"
            );
        }
    }
    // The shapes that matter are described, and the keys are named as security schemes.
    let schemas = doc.json["components"]["schemas"].as_object().unwrap();
    for s in [
        "ConnectionRequest",
        "ConnectionRequestOutput",
        "ConnectedAccount",
        "Integration",
        "NewIntegration",
        "Credentials",
        "App",
        "ErrorBody",
        "ProxyRequest",
        "ConnectedAccountId",
        "IntegrationId",
        "LabelList",
    ] {
        assert!(schemas.contains_key(s), "{s}");
    }
    assert!(doc.json["components"]["securitySchemes"]["admin_key"].is_object());
}

#[tokio::test]
async fn apps_answer_in_composio_shapes() {
    let app = plain_app(keyhaven());
    let r = send(&app, api("GET", "/api/v1/apps/openai", KEY, None)).await;
    let scheme = &r.json["auth_schemes"][0];
    assert_eq!(scheme["auth_mode"], "API_KEY");
    assert_eq!(scheme["scheme_name"], "API_KEY");
    assert_eq!(scheme["fields"][0]["name"], "api_key");
    assert_eq!(scheme["fields"][0]["type"], "string");
    assert!(scheme["fields"][0]["description"].is_string());
    let r = send(&app, api("GET", "/api/v1/apps/github", KEY, None)).await;
    assert_eq!(r.json["preferredScheme"], "OAUTH2");
    assert!(
        r.json["auth_schemes"][0]["authorization_url"]
            .as_str()
            .unwrap()
            .starts_with("https://github.com/")
    );
}

async fn loopback(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_until_accepted() {
    use axum::extract::State;
    use axum::http::HeaderMap;
    type Seen = Arc<tokio::sync::Mutex<Vec<(HeaderMap, String)>>>;
    let seen: Seen = Arc::default();
    let receiver = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                    let mut seen = seen.lock().await;
                    seen.push((headers, body));
                    // The first two tries fail: the third is accepted.
                    if seen.len() <= 2 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let base = loopback(receiver).await;
    let config = ServerConfig {
        webhooks: vec![Webhook {
            url: keyhaven::url::Url::parse(&format!("{base}/hook")).unwrap(),
            secret: "whsec_test".to_owned().into(),
            events: vec![keyhaven::EventKind::Active],
        }],
        webhook_first_retry: Duration::from_millis(50),
        ..ServerConfig::default()
    };
    let state = state_with(keyhaven(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keyhaven_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let out: Value = client
        .post(format!("http://{addr}/api/v1/connectedAccounts"))
        .header("x-api-key", KEY)
        .json(&json!({"appName": "openai", "authScheme": "API_KEY", "data": {"api_key": SECRET}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = out["connectedAccountId"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        if seen.lock().await.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().await;
    assert_eq!(seen.len(), 3, "two failures, then delivered, then no more");
    let now = keyhaven::chrono::Utc::now().timestamp();
    let mut ids = Vec::new();
    for (i, (headers, body)) in seen.iter().enumerate() {
        let signature = headers[keyhaven_server::SIGNATURE_HEADER].to_str().unwrap();
        assert!(
            keyhaven_server::verify("whsec_test", signature, body.as_bytes(), now, 300),
            "{signature}"
        );
        assert!(!keyhaven_server::verify(
            "other",
            signature,
            body.as_bytes(),
            now,
            300
        ));
        assert_eq!(headers["keyhaven-attempt"], (i + 1).to_string().as_str());
        assert_eq!(headers["keyhaven-event-type"], "connection.active");
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["type"], "connection.active");
        assert_eq!(event["connectedAccountId"], id.as_str());
        ids.push(event["id"].as_str().unwrap().to_owned());
        assert!(!body.contains(SECRET));
    }
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one event id across retries"
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_proxy_sends_credentials_only_under_the_accounts_api() {
    let upstream = axum::Router::new().route(
        "/v1/echo",
        axum::routing::any(
            |method: axum::http::Method, headers: axum::http::HeaderMap, body: String| async move {
                axum::Json(json!({
                    "method": method.as_str(),
                    "authorization": headers.get("authorization").and_then(|v| v.to_str().ok()),
                    "x-extra": headers.get("x-extra").and_then(|v| v.to_str().ok()),
                    "body": body,
                }))
            },
        ),
    );
    let base = loopback(upstream).await;
    let app = plain_app(keyhaven());
    let int = send(&app, api("POST", "/api/v1/integrations", KEY, Some(json!({"appId": "echo", "authScheme": "BEARER_TOKEN", "authConfig": {"base_url": format!("{base}/v1")}})))).await;
    assert_eq!(int.status, StatusCode::OK, "{}", int.text);
    let out = send(
        &app,
        api(
            "POST",
            "/api/v1/connectedAccounts",
            KEY,
            Some(json!({"integrationId": int.json["id"], "data": {"token": SECRET}})),
        ),
    )
    .await;
    let id = out.json["connectedAccountId"].as_str().unwrap().to_owned();
    let uri = format!("/api/v1/connectedAccounts/{id}/proxy");
    let r = send(&app, api("POST", &uri, KEY, Some(json!({"method": "post", "path": "/echo", "headers": {"x-extra": "1", "authorization": "Bearer forged"}, "body": {"a": 1}})))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], 200);
    assert_eq!(r.json["body"]["method"], "POST");
    assert_eq!(
        r.json["body"]["authorization"],
        format!("Bearer {SECRET}"),
        "the credentials win over the caller's header"
    );
    assert_eq!(r.json["body"]["x-extra"], "1");
    assert_eq!(r.json["body"]["body"], r#"{"a":1}"#);
    for path in ["https://evil.example/v1/echo", "echo", "//evil.example/x"] {
        let r = send(&app, api("POST", &uri, KEY, Some(json!({"path": path})))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
    }
}

#[tokio::test]
async fn the_connect_form_asks_for_a_login_with_the_apps_own_fields() {
    let kh = keyhaven();
    let app = plain_app(kh.clone());
    // An integration whose connections take a subdomain, and a BASIC login.
    let int = send(
        &app,
        api(
            "POST",
            "/api/v1/integrations",
            KEY,
            Some(
                json!({"appId": "intranet", "authScheme": "BASIC", "authConfig": {
                    "base_url": "https://{subdomain}.intranet.example/api",
                    "connection_params": {"subdomain": "Your team's subdomain"},
                }}),
            ),
        ),
    )
    .await;
    assert_eq!(int.status, StatusCode::OK, "{}", int.text);
    // The app gives the subdomain; the user types the login.
    let out = send(
        &app,
        api(
            "POST",
            "/api/v1/connectedAccounts",
            KEY,
            Some(json!({"integrationId": int.json["id"], "data": {"subdomain": "acme"}})),
        ),
    )
    .await;
    assert_eq!(out.json["connectionStatus"], "INITIATED", "{}", out.text);
    let link = out.json["redirectUrl"].as_str().unwrap();
    let path = link.trim_start_matches("http://127.0.0.1:9210");
    let page = send(&app, get(path)).await;
    assert!(
        page.text.contains(r#"name="username" type="text""#),
        "{}",
        page.text
    );
    assert!(
        page.text.contains(r#"name="password" type="password""#),
        "{}",
        page.text
    );
    assert!(
        !page.text.contains(r#"name="subdomain""#),
        "the app gave it"
    );
    let (cookie, csrf) = csrf_of(&page);
    let token = path.split("token=").nth(1).unwrap();
    let r = send(
        &app,
        form(
            "/connect",
            Some(&cookie),
            None,
            &[
                ("token", token),
                ("csrf", &csrf),
                ("username", "ann"),
                ("password", SECRET),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = out.json["connectedAccountId"].as_str().unwrap();
    let account = send(
        &app,
        api("GET", &format!("/api/v1/connectedAccounts/{id}"), KEY, None),
    )
    .await;
    assert_eq!(account.json["status"], "ACTIVE");
    assert_eq!(
        account.json["connectionParams"]["base_url"],
        "https://acme.intranet.example/api"
    );
    assert!(!account.text.contains(SECRET));
    let creds = kh.credentials(id).await.unwrap();
    assert_eq!(creds.get_str("password"), Some(SECRET));
}

#[tokio::test]
async fn connection_links_lead_once_to_the_provider_through_keyhavens_page() {
    let app = plain_app(keyhaven());
    let made = send(
        &app,
        api(
            "POST",
            "/api/v3.1/auth_configs",
            KEY,
            Some(
                json!({"toolkit": {"slug": "github"}, "auth_config": {"type": "use_custom_auth"}}),
            ),
        ),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let ac = made.json["auth_config"]["id"].as_str().unwrap().to_owned();
    let link = send(
        &app,
        api(
            "POST",
            "/api/v3/connected_accounts/link",
            KEY,
            Some(json!({"auth_config_id": ac, "user_id": "gina", "callback_url": "https://app.example.com/done"})),
        ),
    )
    .await;
    assert_eq!(link.status, StatusCode::CREATED, "{}", link.text);
    let url = link.json["redirect_url"].as_str().unwrap();
    let path = url.strip_prefix(DEFAULT_PUBLIC_URL).unwrap().to_owned();
    assert_eq!(
        path,
        format!("/link/{}", link.json["link_token"].as_str().unwrap())
    );
    let account = link.json["connected_account_id"].as_str().unwrap();

    // The page names the app and may send its form on to GitHub; reading it twice
    // uses nothing up, and never shows where the link leads.
    for _ in 0..2 {
        let page = send(&app, get(&path)).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.text.contains("Connect your GitHub account"),
            "{}",
            page.text
        );
        assert!(!page.text.contains("github.com/login"), "{}", page.text);
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("form-action 'self' https://github.com"),
            "{csp}"
        );
    }
    let elsewhere = send(&app, form(&path, None, Some("https://evil.example"), &[])).await;
    assert_eq!(elsewhere.status, StatusCode::FORBIDDEN);
    let on = send(&app, form(&path, None, Some(DEFAULT_PUBLIC_URL), &[])).await;
    assert_eq!(on.status, StatusCode::SEE_OTHER);
    let to = on.headers["location"].to_str().unwrap();
    assert!(
        to.starts_with("https://github.com/login/oauth/authorize?"),
        "{to}"
    );
    assert!(to.contains("client_id=gh-id"), "{to}");
    let again = send(&app, form(&path, None, None, &[])).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);
    assert_eq!(send(&app, get(&path)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&app, get("/link/not-a-token")).await.status,
        StatusCode::BAD_REQUEST
    );
    // The account waits for the user meanwhile.
    let waiting = send(
        &app,
        api(
            "GET",
            &format!("/api/v3.1/connected_accounts/{account}"),
            KEY,
            None,
        ),
    )
    .await;
    assert_eq!(waiting.json["status"], "INITIATED");
    assert_eq!(waiting.json["user_id"], "gina");
    assert!(waiting.json.get("state").is_none(), "{}", waiting.text);
}

#[tokio::test]
async fn every_answer_names_its_request() {
    let app = plain_app(keyhaven());
    let made = send(&app, get("/healthz")).await;
    let id = made.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_") && id.len() == 20, "a made id: {id}");
    let again = send(&app, get("/healthz")).await;
    assert_ne!(
        again.headers["x-request-id"],
        id.as_str(),
        "one per request"
    );
    // A caller's plain id is kept, errors included; anything else is replaced.
    let given = Request::builder()
        .uri("/api/v1/apps")
        .header("x-request-id", "trace-42.a:b_c")
        .body(Body::empty())
        .unwrap();
    let answer = send(&app, given).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.headers["x-request-id"], "trace-42.a:b_c");
    for bad in ["has space", "quote\"", &"x".repeat(129)] {
        let req = Request::builder()
            .uri("/healthz")
            .header("x-request-id", bad)
            .body(Body::empty())
            .unwrap();
        let answer = send(&app, req).await;
        let id = answer.headers["x-request-id"].to_str().unwrap();
        assert!(
            id.starts_with("req_") && id != bad,
            "{bad:?} replaced by {id}"
        );
    }
}
