//! Fuzzing the server's request parsing through the whole router (tower
//! `oneshot`): the OAuth callback's query, the connect form (its query, and any
//! posted body, content type, cookie and origin, with live tokens too), and the JSON
//! bodies of initiate (`POST /api/v1/connectedAccounts`) and integration create
//! (`POST /api/v1/integrations`). Whatever arrives, the answer is never a 500, and
//! a 5xx only when a provider was unreachable (503 `unavailable`, 504
//! `timed_out`); API errors are JSON with a code; a secret sent in a secret field is
//! never in the answer. Cases: `PROPTEST_CASES` (default 300 per target).
//!
//! No request leaves 127.0.0.1: the catalogue is empty (no provider of a real app
//! can be reached) and every URL the fuzzer writes is on loopback, port 9.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keyhaven::serde_json::{self, Map, Value, json};
use keyhaven::{Catalog, ConnectionRequest, Keyhaven, MemoryStore, NewIntegration};
use keyhaven_server::{AdminKey, AppState, ServerConfig, router};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use tower::ServiceExt;

const KEY: &str = "kh_fuzz_admin";
const SECRET: &str = "sk-http-fuzz-SECRET-5c2";
const CLOSED: &str = "http://127.0.0.1:9";

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    kh: Keyhaven,
    api_key_integration: String,
    oauth_integration: String,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .catalog(Catalog::empty())
        .callback_url(&format!("{CLOSED}/api/v1/oauth/callback"))
        .connect_form_url(&format!("{CLOSED}/connect"))
        .allow_redirect_url("https://app.example.com/")
        .build()
        .unwrap();
    let (api_key_integration, oauth_integration) = rt.block_on(async {
        let a = kh
            .integrations()
            .create(NewIntegration::new("formapp", "API_KEY"))
            .await
            .unwrap();
        let o = kh
            .integrations()
            .create(
                NewIntegration::new("oauthapp", "OAUTH2")
                    .config("client_id", "c")
                    .config("client_secret", SECRET)
                    .config("authorize_url", format!("{CLOSED}/authorize"))
                    .config("token_url", format!("{CLOSED}/token")),
            )
            .await
            .unwrap();
        (a.id.to_string(), o.id.to_string())
    });
    let mut state = AppState::new(kh.clone(), AdminKey::from_plain(KEY));
    state.config = ServerConfig {
        public_url: keyhaven::url::Url::parse(CLOSED).unwrap(),
        rate_limit: None,
        ..ServerConfig::default()
    };
    Fixture {
        rt,
        app: router(Arc::new(state)),
        kh,
        api_key_integration,
        oauth_integration,
    }
}

impl Fixture {
    /// A live token (`form`) or OAuth state.
    fn live(&self, form: bool) -> String {
        let integration = if form {
            &self.api_key_integration
        } else {
            &self.oauth_integration
        };
        self.rt.block_on(async {
            let out = self
                .kh
                .initiate_connection(ConnectionRequest::for_integration(integration))
                .await
                .unwrap();
            let url = keyhaven::url::Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
            let name = if form { "token" } else { "state" };
            url.query_pairs()
                .find(|(k, _)| k == name)
                .unwrap()
                .1
                .into_owned()
        })
    }

    /// Sends `request`; checks the rules every answer keeps.
    fn send(&self, request: Request<Body>) -> (StatusCode, String) {
        let is_api = request.uri().path().starts_with("/api/v1/")
            && !request.uri().path().starts_with("/api/v1/oauth");
        let response = self.rt.block_on(self.app.clone().oneshot(request)).unwrap();
        let status = response.status();
        let bytes = self
            .rt
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(!text.contains(SECRET), "a secret in the answer: {text}");
        if status.is_server_error() {
            let code = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            let provider_down = matches!(
                (status.as_u16(), code.as_deref()),
                (503, Some("unavailable")) | (504, Some("timed_out"))
            );
            assert!(provider_down, "{status}: {text}");
        }
        if is_api && status.is_client_error() {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("not a JSON error: {status} {text}"));
            assert!(v["error"]["code"].is_string(), "{text}");
        }
        (status, text)
    }
}

/// A query string: pairs of text from a dictionary and anything a URL may hold,
/// with bad percent-escapes and invalid UTF-8 escapes.
fn query() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        3 => proptest::sample::select(vec![
            "state", "code", "error", "error_description", "iss", "token", "csrf", "", "=",
            "%", "%zz", "%C3%28", "%FF", "%00", "+", "&", "a[b]", "state[]",
        ]).prop_map(str::to_owned),
        2 => "[A-Za-z0-9\\-._~!$'()*+,;:@/?%=&]{0,20}",
    ];
    prop::collection::vec(part, 0..8).prop_map(|parts| parts.concat())
}

fn request(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

#[test]
fn callback_and_connect_queries() {
    let f = fixture();
    let strategy = (query(), 0u8..3, any::<bool>());
    TestRunner::new(config())
        .run(&strategy, |(q, live, form)| {
            let q = match live {
                0 => q,
                1 => format!("state={}&{q}", f.live(false)),
                _ => format!("token={}&{q}", f.live(true)),
            };
            let path = if form {
                "/connect"
            } else {
                "/api/v1/oauth/callback"
            };
            let Ok(req) = request("GET", &format!("{path}?{q}")).body(Body::empty()) else {
                return Ok(()); // not a URI at all: never reaches the server
            };
            f.send(req);
            Ok(())
        })
        .unwrap();
}

/// A posted form body.
fn form_body() -> impl Strategy<Value = String> {
    let pair = prop_oneof![
        3 => (
            proptest::sample::select(vec!["api_key", "token", "csrf", "header_name", "x", ""]),
            prop_oneof![
                Just(SECRET.to_owned()),
                "[A-Za-z0-9%+=&]{0,20}",
                Just("%FF%FE".to_owned()),
                Just("x".repeat(3000)),
            ],
        ).prop_map(|(k, v)| format!("{k}={v}")),
        1 => "\\PC{0,30}",
    ];
    prop::collection::vec(pair, 0..6).prop_map(|p| p.join("&"))
}

#[test]
fn connect_form_posts() {
    let f = fixture();
    let strategy = (
        form_body(),
        proptest::sample::select(vec![
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=utf-8",
            "application/json",
            "multipart/form-data",
            "",
        ]),
        0u8..4,
        proptest::option::of(proptest::sample::select(vec![
            CLOSED,
            "https://evil.example",
            "null",
            "",
        ])),
        prop::collection::vec(any::<u8>(), 0..40),
    );
    TestRunner::new(config())
        .run(&strategy, |(body, content_type, mode, origin, raw)| {
            let csrf = "c".repeat(64);
            // The live pair stands unless the fuzzed part names a token or csrf again.
            let overridden = body.contains("csrf") || body.contains("token");
            let (body, cookie) = match mode {
                // Noise.
                0 => (body, None),
                // A live token with a matching CSRF pair.
                1 | 2 => {
                    let token = f.live(true);
                    (
                        format!("token={token}&csrf={csrf}&{body}"),
                        Some(format!("kh_csrf={csrf}")),
                    )
                }
                // Bytes that are not text.
                _ => (
                    String::from_utf8_lossy(&raw).into_owned(),
                    Some("kh_csrf=;;=;kh_csrf".to_owned()),
                ),
            };
            let mut req = request("POST", "/connect");
            if !content_type.is_empty() {
                req = req.header("content-type", content_type);
            }
            if let Some(cookie) = cookie {
                req = req.header("cookie", cookie);
            }
            if let Some(origin) = origin {
                req = req.header("origin", origin);
            }
            let (status, text) = f.send(req.body(Body::from(body)).unwrap());
            if mode == 1
                && !overridden
                && content_type.starts_with("application/x-www-form-urlencoded")
                && origin.is_none_or(|o| o == CLOSED)
            {
                assert_ne!(status, StatusCode::FORBIDDEN, "{text}");
            }
            Ok(())
        })
        .unwrap();
}

/// Field names of initiate and integration create, in both spellings, and the
/// settings schemes read.
const KEYS: &[&str] = &[
    "integrationId",
    "integration_id",
    "appName",
    "app",
    "appId",
    "entityId",
    "entity_id",
    "labels",
    "redirectUri",
    "redirect_url",
    "data",
    "connectedAccountParams",
    "authScheme",
    "auth_scheme",
    "authConfig",
    "auth_config",
    "name",
    "scopes",
    "useComposioAuth",
    "client_id",
    "client_secret",
    "authorize_url",
    "token_url",
    "base_url",
    "redirect_allowlist",
    "connection_params",
    "api_key",
    "token",
    "username",
    "password",
    "header_name",
    "format",
    "login_url",
    "issuer",
    "token_auth_method",
    "pkce",
    "public_key_pem",
    "jwks_url",
    "authorize_params",
    "credentials_json",
    "private_key",
    "subdomain",
    "x",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        Just(json!(1e300)),
        "\\PC{0,16}".prop_map(Value::String),
        proptest::sample::select(vec![
            "API_KEY",
            "OAUTH2",
            "OAUTH2_CLIENT_CREDENTIALS",
            "BEARER_TOKEN",
            "BASIC",
            "NO_AUTH",
            "BASIC_WITH_JWT",
            "SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT",
            "NOPE",
            "formapp",
            "oauthapp",
            "github",
            "default",
            "alice",
            "http://127.0.0.1:9/token",
            "https://127.0.0.1:9/x",
            "http://[::1]:9/",
            "https://app.example.com/done",
            "https://evil.example/x",
            "not a url",
            "{subdomain}",
            "Bearer {api_key}",
            "client_secret_post",
            "-----BEGIN PUBLIC KEY-----",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 40, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(proptest::sample::select(KEYS), inner, 0..8).prop_map(
                |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

/// A body: any JSON (mostly objects of known fields), with a secret in a secret
/// field, or any bytes.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (json_value(), 0u8..3).prop_map(|(v, secret)| {
            let mut v = v;
            if let Value::Object(m) = &mut v {
                match secret {
                    0 => { m.insert("data".into(), json!({"api_key": SECRET, "token": SECRET, "password": SECRET})); }
                    1 => {
                        let mut config = m.get("authConfig").and_then(Value::as_object).cloned().unwrap_or_default();
                        config.insert("client_secret".into(), json!(SECRET));
                        m.insert("authConfig".into(), Value::Object(config));
                    }
                    _ => {}
                }
            }
            v.to_string().into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..100),
        1 => Just(b"{\"data\": \"sk-http-fuzz-SECRET-5c2\"}".to_vec()),
        1 => Just(b"{\"authConfig\": [\"sk-http-fuzz-SECRET-5c2\"]}".to_vec()),
    ]
}

#[test]
fn json_bodies_of_initiate_and_integration_create() {
    let f = fixture();
    let strategy = (
        json_body(),
        any::<bool>(),
        proptest::sample::select(vec!["application/json", "text/plain", ""]),
    );
    TestRunner::new(config())
        .run(&strategy, |(body, initiate, content_type)| {
            let path = if initiate {
                "/api/v1/connectedAccounts"
            } else {
                "/api/v1/integrations"
            };
            let mut req = request("POST", path).header("x-api-key", KEY);
            if !content_type.is_empty() {
                req = req.header("content-type", content_type);
            }
            f.send(req.body(Body::from(body)).unwrap());
            Ok(())
        })
        .unwrap();
}

/// A valid initiate in any spelling is answered 200 with the account, without
/// the secret.
#[test]
fn valid_initiates_round_trip() {
    let f = fixture();
    let strategy = (
        proptest::sample::select(vec!["integrationId", "integration_id"]),
        proptest::sample::select(vec![
            "data",
            "connectedAccountParams",
            "connected_account_params",
        ]),
        proptest::sample::select(vec!["entityId", "entity_id", "userUuid", "user_uuid"]),
        "[A-Za-z0-9._@:+\\-]{1,40}",
    );
    TestRunner::new(config())
        .run(&strategy, |(id_key, data_key, entity_key, entity)| {
            let body = json!({
                id_key: f.api_key_integration,
                data_key: {"api_key": SECRET},
                entity_key: entity,
            });
            let req = request("POST", "/api/v1/connectedAccounts")
                .header("x-api-key", KEY)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            let (status, text) = f.send(req);
            prop_assert_eq!(status, StatusCode::OK, "{}", text);
            let out: Map<String, Value> = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(out["connectionStatus"].as_str(), Some("ACTIVE"));
            Ok(())
        })
        .unwrap();
}
