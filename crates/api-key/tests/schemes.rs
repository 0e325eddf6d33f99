//! Each static scheme: initiate checks its fields, authorize puts them on a request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use http::Method;
use keyhaven_api_key::{ApiKey, Basic, BearerToken, NoAuth};
use keyhaven_core::{
    AccountContext, AppSlug, AuthScheme, ConnectedAccount, ConnectedAccountId, ConnectionStatus,
    EntityId, InitiateContext, Initiated, Integration, IntegrationId, OutgoingRequest,
    SecretFields, validate_fields,
};
use url::Url;

fn integration(scheme: &str, config: serde_json::Value) -> Integration {
    let now = Utc::now();
    let serde_json::Value::Object(config) = config else {
        panic!("config must be an object")
    };
    {
        let mut integration = Integration::new(
            IntegrationId::generate().unwrap(),
            AppSlug::new("demo").unwrap(),
            "demo",
            scheme,
            now,
        );
        integration.config = config;
        integration
    }
}

fn account(int: &Integration) -> ConnectedAccount {
    let now = Utc::now();
    ConnectedAccount::new(
        ConnectedAccountId::generate().unwrap(),
        EntityId::default(),
        int.id.clone(),
        int.app.clone(),
        int.auth_scheme.clone(),
        ConnectionStatus::Active,
        now,
    )
}

/// Validates `params` and `config` as the facade does, initiates, then authorizes a GET.
async fn connect_and_authorize(
    scheme: &dyn AuthScheme,
    config: serde_json::Value,
    params: &str,
) -> Result<OutgoingRequest, String> {
    let cfg = SecretFields::from_json(&config.to_string()).unwrap();
    let cfg =
        validate_fields(&scheme.spec().config, "auth_config", &cfg).map_err(|e| e.to_string())?;
    let int = integration(scheme.name(), serde_json::Value::Object(cfg.public));
    let params = SecretFields::from_json(params).unwrap();
    let validated = validate_fields(&scheme.spec().params, "connected_account_params", &params)
        .map_err(|e| e.to_string())?;
    let acc = account(&int);
    let cx = InitiateContext::new(&int, &acc.id, &acc.entity_id, &validated, Utc::now());
    let Initiated::Active { credentials } = scheme.initiate(cx).await.map_err(|e| e.to_string())?
    else {
        panic!("static schemes are ACTIVE at once")
    };
    let mut req = OutgoingRequest::new(
        Method::GET,
        Url::parse("https://api.example.com/v1/me?x=1").unwrap(),
    );
    scheme
        .authorize(
            &AccountContext::new(&int, &acc, &credentials, Utc::now()),
            &mut req,
        )
        .map_err(|e| e.to_string())?;
    Ok(req)
}

fn header(req: &OutgoingRequest, name: &str) -> Option<String> {
    req.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn api_key_default_is_a_bearer_header() {
    let req = connect_and_authorize(&ApiKey, serde_json::json!({}), r#"{"api_key":"sk-1"}"#)
        .await
        .unwrap();
    assert_eq!(
        header(&req, "authorization").as_deref(),
        Some("Bearer sk-1")
    );
    assert!(req.headers.get("authorization").unwrap().is_sensitive());
    assert!(!format!("{req:?}").contains("sk-1"));
}

#[tokio::test]
async fn api_key_custom_header_and_format() {
    let config = serde_json::json!({"header_name": "x-api-key", "header_format": "{api_key}"});
    let req = connect_and_authorize(&ApiKey, config, r#"{"api_key":"sk-2"}"#)
        .await
        .unwrap();
    assert_eq!(header(&req, "x-api-key").as_deref(), Some("sk-2"));
    assert!(req.headers.get("authorization").is_none());
}

#[tokio::test]
async fn api_key_as_query_parameter() {
    let config = serde_json::json!({"query_param": "key"});
    let req = connect_and_authorize(&ApiKey, config, r#"{"api_key":"a b&c"}"#)
        .await
        .unwrap();
    assert_eq!(
        req.url.as_str(),
        "https://api.example.com/v1/me?x=1&key=a+b%26c"
    );
    assert!(req.headers.is_empty());
    let dbg = format!("{req:?}");
    assert!(!dbg.contains("a+b") && dbg.contains("\"key\""), "{dbg}");
}

#[tokio::test]
async fn api_key_errors_name_the_field() {
    let cases = [
        ("{}", "connected_account_params.api_key", "required"),
        (
            r#"{"api_key":""}"#,
            "connected_account_params.api_key",
            "empty",
        ),
        (
            r#"{"api_key":"k","apikey":"k"}"#,
            "connected_account_params.apikey",
            "not a known field",
        ),
        (
            r#"{"api_key":"k\nX-Evil: 1"}"#,
            "connected_account_params.api_key",
            "control character",
        ),
    ];
    for (params, field, words) in cases {
        let err = connect_and_authorize(&ApiKey, serde_json::json!({}), params)
            .await
            .unwrap_err();
        assert!(
            err.contains(field) && err.contains(words),
            "{params}: {err}"
        );
    }
    let err = connect_and_authorize(
        &ApiKey,
        serde_json::json!({"header_format": "Token"}),
        r#"{"api_key":"k"}"#,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("auth_config.header_format") && err.contains("{api_key}"),
        "{err}"
    );
}

#[tokio::test]
async fn bearer_token() {
    let req = connect_and_authorize(&BearerToken, serde_json::json!({}), r#"{"token":"t0k"}"#)
        .await
        .unwrap();
    assert_eq!(header(&req, "authorization").as_deref(), Some("Bearer t0k"));
}

#[tokio::test]
async fn basic_follows_rfc_7617() {
    // The example of RFC 7617, section 2.
    let req = connect_and_authorize(
        &Basic,
        serde_json::json!({}),
        r#"{"username":"Aladdin","password":"open sesame"}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        header(&req, "authorization").as_deref(),
        Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    );
    // A key used as the username, with no password.
    let req = connect_and_authorize(&Basic, serde_json::json!({}), r#"{"username":"sk_test"}"#)
        .await
        .unwrap();
    assert_eq!(
        header(&req, "authorization").as_deref(),
        Some("Basic c2tfdGVzdDo=")
    );
    let err = connect_and_authorize(&Basic, serde_json::json!({}), r#"{"username":"a:b"}"#)
        .await
        .unwrap_err();
    assert!(
        err.contains("connected_account_params.username") && err.contains("':'"),
        "{err}"
    );
}

#[tokio::test]
async fn no_auth_takes_nothing_and_adds_nothing() {
    let req = connect_and_authorize(&NoAuth, serde_json::json!({}), "{}")
        .await
        .unwrap();
    assert!(req.headers.is_empty());
    let err = connect_and_authorize(&NoAuth, serde_json::json!({}), r#"{"api_key":"k"}"#)
        .await
        .unwrap_err();
    assert!(err.contains("takes no fields"), "{err}");
}

#[test]
fn every_scheme_has_a_unique_name() {
    let names: Vec<String> = keyhaven_api_key::all()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    assert_eq!(names, ["API_KEY", "BEARER_TOKEN", "BASIC", "NO_AUTH"]);
}
