//! Every route of the server in-process (tower `oneshot`): access, the catalogue,
//! integrations, connected accounts, status changes, the callback page, and errors as
//! JSON with the right statuses. No route ever answers a secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keyhaven::{Keyhaven, MemoryStore};
use keyhaven_server::{AdminKey, AppState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "kh_test_admin_key";
const SECRET: &str = "sk-server-test-SECRET-1";

fn app() -> axum::Router {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .allow_redirect_url("https://app.example.com/")
        .app_credentials("github", "gh-id", Some("gh-secret"))
        .build()
        .unwrap();
    router(Arc::new(state(kh)))
}

const CREDS_KEY: &str = "khc_test_credentials_key";

fn state(kh: Keyhaven) -> AppState {
    let mut state = AppState::new(kh, AdminKey::from_plain(KEY));
    state.credentials_key = Some(AdminKey::from_plain(CREDS_KEY));
    state
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (
        status,
        json,
        if location.is_empty() { text } else { location },
    )
}

/// The OAuth state in an initiate answer's redirect URL.
fn state_of(out: &Value) -> String {
    let auth = keyhaven::url::Url::parse(out["redirectUrl"].as_str().unwrap()).unwrap();
    auth.query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned()
}

#[tokio::test]
async fn the_admin_key_guards_the_api() {
    let app = app();
    let (status, body, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    for key in [None, Some("kh_wrong"), Some("")] {
        let (status, body, _) = call(&app, "GET", "/api/v1/connectedAccounts", key, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let (status, _, _) = call(
        &app,
        "GET",
        "/api/v1/client/auth/client_info",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) = call(&app, "GET", "/nope", Some(KEY), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn apps_come_from_the_catalogue() {
    let app = app();
    let (status, body, _) = call(&app, "GET", "/api/v1/apps", Some(KEY), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["items"].as_array().unwrap().len() >= 300);
    let (_, body, _) = call(&app, "GET", "/api/v1/apps?query=gith", Some(KEY), None).await;
    assert_eq!(body["items"][0]["key"], "github");
    let (status, body, _) = call(&app, "GET", "/api/v1/apps/shopify", Some(KEY), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "Shopify");
    assert_eq!(body["params"][0]["name"], "subdomain");
    let (status, body, _) = call(&app, "GET", "/api/v1/apps/no-such-app", Some(KEY), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn integrations_and_accounts_round_trip_without_secrets() {
    let app = app();
    // Composio's spelling of a new integration.
    let (status, int, _) = call(
        &app,
        "POST",
        "/api/v1/integrations",
        Some(KEY),
        Some(json!({"name": "OpenAI keys", "appId": "openai", "authScheme": "API_KEY", "authConfig": {}, "useComposioAuth": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{int}");
    assert_eq!(int["appName"], "openai");
    assert_eq!(int["expectedInputFields"][0]["name"], "api_key");
    let int_id = int["id"].as_str().unwrap().to_owned();
    let (_, list, _) = call(
        &app,
        "GET",
        "/api/v1/integrations?appName=openai",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (status, _, _) = call(
        &app,
        "GET",
        &format!("/api/v1/integrations/{int_id}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Initiate as Composio's client does.
    let (status, out, _) = call(
        &app,
        "POST",
        "/api/v1/connectedAccounts",
        Some(KEY),
        Some(json!({"integrationId": int_id, "userUuid": "alice", "data": {"api_key": SECRET}, "labels": ["team-a"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["connectionStatus"], "ACTIVE");
    let id = out["connectedAccountId"].as_str().unwrap().to_owned();
    let (status, acc, raw) = call(
        &app,
        "GET",
        &format!("/api/v1/connectedAccounts/{id}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!raw.contains(SECRET), "no secret in an account");
    assert_eq!(acc["status"], "ACTIVE");
    assert_eq!(acc["appName"], "openai");
    assert_eq!(acc["entityId"], "alice");
    assert_eq!(acc["integrationId"], int_id);
    assert_eq!(
        acc["connectionParams"]["base_url"],
        "https://api.openai.com/v1"
    );

    // Listing with Composio's and keyhaven's filters.
    for query in [
        "user_uuid=alice",
        "entityId=alice&labels=team-a",
        "appNames=openai,github&status=ACTIVE",
    ] {
        let (status, list, raw) = call(
            &app,
            "GET",
            &format!("/api/v1/connectedAccounts?{query}"),
            Some(KEY),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "{query}");
        assert!(!raw.contains(SECRET));
    }
    let (_, none, _) = call(
        &app,
        "GET",
        "/api/v1/connectedAccounts?labels=team-a,other",
        Some(KEY),
        None,
    )
    .await;
    assert!(
        none["items"].as_array().unwrap().is_empty(),
        "all labels must match"
    );

    // Status changes.
    let (_, acc, _) = call(
        &app,
        "POST",
        &format!("/api/v1/connectedAccounts/{id}/disable"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(acc["status"], "INACTIVE");
    let (_, acc, _) = call(
        &app,
        "POST",
        &format!("/api/v1/connectedAccounts/{id}/enable"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(acc["status"], "ACTIVE");
    let (status, _, _) = call(
        &app,
        "POST",
        &format!("/api/v1/connectedAccounts/{id}/refresh"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) = call(
        &app,
        "POST",
        &format!("/api/v1/connectedAccounts/{id}/explode"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // An integration in use cannot go; the account can.
    let (status, body, _) = call(
        &app,
        "DELETE",
        &format!("/api/v1/integrations/{int_id}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (status, _, _) = call(
        &app,
        "DELETE",
        &format!("/api/v1/connectedAccounts/{id}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(
        &app,
        "GET",
        &format!("/api/v1/connectedAccounts/{id}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        &app,
        "DELETE",
        &format!("/api/v1/integrations/{int_id}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_is_a_json_error_naming_the_field() {
    let app = app();
    let cases = [
        (
            json!({"appName": "openai", "authScheme": "API_KEY", "data": {}}),
            "connected_account_params.api_key",
        ),
        (
            json!({"appName": "openai", "userUuid": "bad id", "data": {"api_key": SECRET}}),
            "entity_id",
        ),
        (
            json!({"integrationId": "int_0000000000000000ffffffffffffffff", "data": {}}),
            "not found",
        ),
        (
            json!({"appName": "github", "redirectUri": "https://evil.example.net/"}),
            "redirect_url",
        ),
    ];
    for (body, words) in cases {
        let (status, json, raw) = call(
            &app,
            "POST",
            "/api/v1/connectedAccounts",
            Some(KEY),
            Some(body.clone()),
        )
        .await;
        assert!(status.is_client_error(), "{body}: {status}");
        assert!(
            json["error"]["message"].as_str().unwrap().contains(words),
            "{body}: {json}"
        );
        assert!(!raw.contains(SECRET));
    }
    // Not JSON at all, and JSON whose shape is wrong around a secret.
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/connectedAccounts")
        .header("x-api-key", KEY)
        .body(Body::from("{not json"))
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, _, raw) = call(
        &app,
        "POST",
        "/api/v1/connectedAccounts",
        Some(KEY),
        Some(json!({"appName": "openai", "data": SECRET})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!raw.contains(SECRET), "{raw}");
    let (status, _, _) = call(
        &app,
        "GET",
        "/api/v1/connectedAccounts?status=SLEEPING",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(
        &app,
        "GET",
        "/api/v1/connectedAccounts/ca_nope/disable",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_callback_answers_pages_and_redirects() {
    let app = app();
    // A forged state: a failure page, escaped, and nothing else.
    let (status, _, html) = call(
        &app,
        "GET",
        "/api/v1/oauth/callback?state=forged%3Cscript%3E&code=x",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("cannot complete a connection"));
    assert!(!html.contains("<script>"));
    // A denied OAuth flow with a redirect_url: back to the app with status=failed.
    let (_, out, _) = call(
        &app,
        "POST",
        "/api/v1/connectedAccounts",
        Some(KEY),
        Some(json!({"appName": "github", "redirectUri": "https://app.example.com/done"})),
    )
    .await;
    assert_eq!(out["connectionStatus"], "INITIATED");
    let state = state_of(&out);
    let (status, _, location) = call(
        &app,
        "GET",
        &format!("/api/v1/oauth/callback?state={state}&error=access_denied&error_description=User+said+%3Cno%3E"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location.starts_with("https://app.example.com/done?status=failed&connectedAccountId=ca_"),
        "{location}"
    );
    // Without a redirect_url: keyhaven's own failure page, with the provider's words escaped.
    let (_, out, _) = call(
        &app,
        "POST",
        "/api/v1/connectedAccounts",
        Some(KEY),
        Some(json!({"appName": "github"})),
    )
    .await;
    let state = state_of(&out);
    let (status, _, html) = call(
        &app,
        "GET",
        &format!("/api/v1/oauth/callback?state={state}&error=access_denied&error_description=User+said+%3Cno%3E"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("could not be connected")
            && html.contains("User said &#60;no&#62;")
            && !html.contains("<no>"),
        "{html}"
    );
}

#[tokio::test]
async fn wait_answers_when_the_user_finishes_or_times_out() {
    let app = app();
    let (_, out, _) = call(
        &app,
        "POST",
        "/api/v1/connectedAccounts",
        Some(KEY),
        Some(json!({"appName": "github"})),
    )
    .await;
    let id = out["connectedAccountId"].as_str().unwrap().to_owned();
    // Still INITIATED: a 504 after the timeout.
    let (status, body, _) = call(
        &app,
        "GET",
        &format!("/api/v1/connectedAccounts/{id}/wait?timeout=0.2"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("timed_out"))
    );
    // The user denies while a client waits: the wait answers FAILED.
    let state = state_of(&out);
    let waiter = {
        let app = app.clone();
        let id = id.clone();
        tokio::spawn(async move {
            call(
                &app,
                "GET",
                &format!("/api/v1/connectedAccounts/{id}/wait?timeout=10"),
                Some(KEY),
                None,
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    call(
        &app,
        "GET",
        &format!("/api/v1/oauth/callback?state={state}&error=access_denied"),
        None,
        None,
    )
    .await;
    let (status, body, _) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "FAILED");
    let (status, _, _) = call(
        &app,
        "GET",
        &format!("/api/v1/connectedAccounts/{id}/wait?timeout=soon"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn labels_and_page_sizes_keep_their_documented_limits() {
    // SQLite, where a filter of hundreds of labels once made a query too large (500).
    let dir = tempfile::tempdir().unwrap();
    let store = keyhaven::SqliteStore::open(
        dir.path().join("kh.db"),
        keyhaven::KeyRing::new(keyhaven::MasterKey::generate().unwrap(), []),
    )
    .unwrap();
    let kh = Keyhaven::builder().store(store).build().unwrap();
    let app = router(Arc::new(state(kh)));
    let max = keyhaven::LABELS_MAX_COUNT;
    let labels = |n: usize| (0..n).map(|i| format!("l{i}")).collect::<Vec<_>>();
    let initiate = |labels: Vec<String>| json!({"appName": "openai", "authScheme": "API_KEY", "entityId": "lab", "labels": labels, "data": {"api_key": SECRET}});

    // An account carries at most LABELS_MAX_COUNT labels; one more is refused, nothing stored.
    let (status, json, _) = call(
        &app,
        "POST",
        "/api/v1/connectedAccounts",
        Some(KEY),
        Some(initiate(labels(max + 1))),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("at most {max} labels")),
        "{message}"
    );
    let (_, page, _) = call(&app, "GET", "/api/v1/connectedAccounts", Some(KEY), None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "nothing stored");
    let (status, json, _) = call(
        &app,
        "POST",
        "/api/v1/connectedAccounts",
        Some(KEY),
        Some(initiate(labels(max))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");

    // A listing filters by at most as many labels: 998 is a 400 naming the limit.
    let query = |n: usize| format!("/api/v1/connectedAccounts?labels={}", labels(n).join(","));
    let (status, json, _) = call(&app, "GET", &query(998), Some(KEY), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("labels") && message.contains(&format!("at most {max} labels")),
        "{message}"
    );
    let (status, json, _) = call(&app, "GET", &query(max), Some(KEY), None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["items"].as_array().unwrap().len(), 1);

    // Page sizes: 0 or absent is the default (100), a larger one is capped (1000),
    // as the OpenAPI document says.
    for _ in 0..keyhaven::AccountFilter::DEFAULT_LIMIT {
        call(
            &app,
            "POST",
            "/api/v1/connectedAccounts",
            Some(KEY),
            Some(initiate(vec![])),
        )
        .await;
    }
    for uri in [
        "/api/v1/connectedAccounts",
        "/api/v1/connectedAccounts?limit=0",
    ] {
        let (_, page, _) = call(&app, "GET", uri, Some(KEY), None).await;
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            keyhaven::AccountFilter::DEFAULT_LIMIT,
            "{uri}"
        );
        assert!(page["nextCursor"].is_string(), "{uri}: more to read");
    }
    let (_, page, _) = call(
        &app,
        "GET",
        "/api/v1/connectedAccounts?limit=5000",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        keyhaven::AccountFilter::DEFAULT_LIMIT + 1
    );
    let doc = serde_json::to_value(keyhaven_server::openapi()).unwrap();
    let params = doc["paths"]["/api/v1/connectedAccounts"]["get"]["parameters"].to_string();
    assert!(
        params.contains(&format!(
            "0 or absent gives {} accounts",
            keyhaven::AccountFilter::DEFAULT_LIMIT
        )) && params.contains(&format!(
            "more than {0} gives {0}",
            keyhaven::AccountFilter::MAX_LIMIT
        )) && params.contains(&format!("at most {max}"))
            && !params.contains("absent: all"),
        "{params}"
    );
}
