//! Fuzzing the OAuth callback (`Keyhaven::handle_callback`): any query a browser
//! can bring back (unknown, empty or valid states, codes, provider errors with any
//! text, `iss`), and any token answer the provider's endpoint gives for the code
//! (a local endpoint on 127.0.0.1 answering any status, content type and body,
//! `expires_in` at the edges of a date), end in an `ACTIVE` or `FAILED` account or
//! an error of a known kind, never a panic or an internal error; a failure's reason
//! is short and has no control characters; no secret shows in a reason or error.
//! Cases: `PROPTEST_CASES` (default 300 per property).
//!
//! No request leaves 127.0.0.1: the integration's URLs are all on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use keyhaven::serde_json::{self, Value, json};
use keyhaven::{
    ConnectionRequest, ConnectionStatus, ErrorKind, Keyhaven, MemoryStore, NewIntegration,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_SECRET: &str = "client-SECRET-fuzz-31";

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300);
    ProptestConfig {
        cases,
        // Run with a `TestRunner`, which has no source file to keep failures beside:
        // a failure found is added to the tests by hand.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// What the token endpoint answers next: status, content type, body.
type Answer = Arc<Mutex<(u16, String, Vec<u8>)>>;

/// A token endpoint on 127.0.0.1 that answers whatever `answer` holds.
async fn token_endpoint(answer: Answer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                // Read the request head and its body.
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if data.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let (status, content_type, body) = answer.lock().unwrap().clone();
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn keyhaven(token_base: &str) -> (Keyhaven, String) {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .callback_url("http://127.0.0.1:9/callback")
        .allow_redirect_url("https://app.example.com/")
        .build()
        .unwrap();
    let integration = kh
        .integrations()
        .create(
            NewIntegration::new("fuzzed", "OAUTH2")
                .config("client_id", "fuzz-client")
                .config("client_secret", CLIENT_SECRET)
                .config("authorize_url", "http://127.0.0.1:9/authorize")
                .config("token_url", format!("{token_base}/token"))
                .config("issuer", "http://127.0.0.1:9")
                .scope("read"),
        )
        .await
        .unwrap();
    (kh, integration.id.to_string())
}

/// A new `INITIATED` account and its state.
async fn initiate(kh: &Keyhaven, integration: &str, redirect: bool) -> String {
    let mut request = ConnectionRequest::for_integration(integration);
    if redirect {
        request.redirect_url = Some("https://app.example.com/done".into());
    }
    let out = kh.initiate_connection(request).await.unwrap();
    let url = keyhaven::url::Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned()
}

/// Query parameters a browser may bring back.
fn params() -> impl Strategy<Value = BTreeMap<String, String>> {
    let key = prop_oneof![
        4 => proptest::sample::select(vec!["code", "error", "error_description", "iss", "scope", "session_state", "state"]).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ];
    let value = prop_oneof![
        "\\PC{0,40}",
        Just("http://127.0.0.1:9".to_owned()),
        Just("access_denied".to_owned()),
        "[\\x00-\\x1f\\x7f]{1,5}",
        Just("x".repeat(3000)),
    ];
    prop::collection::btree_map(key, value, 0..5)
}

/// Values of `expires_in` and other fields, at the edges.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(3600)),
        Just(json!("3600")),
        Just(json!(1e16)),
        Just(json!("1e16")),
        Just(json!(10_000_000_000_000_000u64)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1e300)),
        Just(json!(3600.5)),
        Just(json!(null)),
        Just(json!([])),
        Just(json!({})),
        "\\PC{0,20}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
    ]
}

/// Token answers: JSON with the fields of RFC 6749 (of any type), form-encoded,
/// and noise.
fn token_answer() -> impl Strategy<Value = (u16, String, Vec<u8>)> {
    let keys = proptest::sample::select(vec![
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
        "id_token",
        "error",
        "error_description",
        "other",
    ]);
    let json_body = prop::collection::btree_map(keys, json_leaf(), 0..7).prop_map(|m| {
        let mut m: serde_json::Map<String, Value> =
            m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if !m.contains_key("access_token") {
            m.insert("access_token".into(), json!("at-fuzz"));
        }
        Value::Object(m).to_string().into_bytes()
    });
    let body = prop_oneof![
        4 => json_body,
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => Just(b"access_token=at-form&token_type=bearer&expires_in=1e16".to_vec()),
    ];
    let status =
        proptest::sample::select(vec![200u16, 200, 200, 201, 400, 401, 403, 429, 500, 503]);
    let content_type = proptest::sample::select(vec![
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "text/html",
    ]);
    (status, content_type.prop_map(str::to_owned), body)
}

fn check_reason(reason: Option<&str>) {
    if let Some(reason) = reason {
        assert!(reason.chars().count() <= 1000, "{reason}");
        assert!(!reason.contains(CLIENT_SECRET), "{reason}");
    }
}

#[test]
fn any_callback_ends_in_a_status_or_a_known_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer: Answer = Arc::new(Mutex::new((200, "application/json".into(), Vec::new())));
    let (kh, integration) = rt.block_on(async {
        let base = token_endpoint(answer.clone()).await;
        keyhaven(&base).await
    });
    let mut runner = TestRunner::new(config());
    let strategy = (params(), token_answer(), any::<bool>(), 0u8..3);
    runner
        .run(&strategy, |(mut query, token, redirect, state_kind)| {
            *answer.lock().unwrap() = token.clone();
            rt.block_on(async {
                match state_kind {
                    // A live state: the callback reaches the provider.
                    0 | 1 => {
                        let state = initiate(&kh, &integration, redirect).await;
                        query.insert("state".into(), state);
                        if state_kind == 0 {
                            query
                                .entry("code".into())
                                .or_insert_with(|| "the-code".into());
                            query.remove("error");
                        }
                    }
                    // Whatever state the query holds (unknown, empty or none).
                    _ => {}
                }
                match kh.handle_callback(&query).await {
                    Ok(outcome) => {
                        let a = &outcome.account;
                        assert!(
                            matches!(
                                a.status,
                                ConnectionStatus::Active | ConnectionStatus::Failed
                            ),
                            "{a:?}"
                        );
                        check_reason(a.status_reason.as_deref());
                        if let Some(reason) = &a.status_reason {
                            assert!(!reason.chars().any(char::is_control), "{reason:?}");
                        }
                        if a.status == ConnectionStatus::Active {
                            let creds = kh.credentials(a.id.as_str()).await;
                            assert!(
                                creds.is_ok()
                                    || creds.is_err_and(|e| e.kind() != ErrorKind::Internal)
                            );
                        }
                        if let Some(to) = &outcome.redirect_to {
                            assert!(to.as_str().starts_with("https://app.example.com/done"));
                        }
                    }
                    Err(e) => {
                        assert_ne!(e.kind(), ErrorKind::Internal, "{e}");
                        check_reason(Some(&e.to_string()));
                    }
                }
            });
            Ok(())
        })
        .unwrap();
}
