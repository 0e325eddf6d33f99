//! Every route's real answers validate against the schema the OpenAPI document gives
//! for their status: the views are the schemas, and this holds them to it. Each
//! answer's status must be documented for its route, its body must validate (the
//! views forbid fields they do not list), and every JSON operation of the document
//! must have been answered with a success at least once here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use keyhaven::{Keyhaven, MemoryStore};
use keyhaven_server::{InProcess, KeyKind, ServerConfig};
use serde_json::{Value, json};

const SECRET: &str = "sk-schema-test-SECRET-7";

/// Checks answers against the document, and remembers which operations succeeded.
struct Checker {
    api: InProcess,
    doc: Value,
    succeeded: BTreeSet<(String, String)>,
}

impl Checker {
    /// The document's route that `path` (without its query) is an instance of: the
    /// one of the same segments whose fixed segments all match, most fixed first.
    fn template_of(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap_or_default();
        // `/api/v3` serves the routes the document lists under `/api/v3.1`.
        let path = match path.strip_prefix("/api/v3/") {
            Some(rest) => format!("/api/v3.1/{rest}"),
            None => path.to_owned(),
        };
        let given: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &String)> = None;
        for template in self.doc["paths"].as_object().unwrap().keys() {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != given.len() {
                continue;
            }
            let fits = parts
                .iter()
                .zip(&given)
                .all(|(p, g)| p == g || (p.starts_with('{') && p.ends_with('}')));
            let fixed = parts.iter().filter(|p| !p.starts_with('{')).count();
            if fits && best.is_none_or(|(n, _)| fixed > n) {
                best = Some((fixed, template));
            }
        }
        best.map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("{path} is no route of the document"))
    }

    /// Calls `method concrete`, checks the answer against the document's route it
    /// falls under, and returns its status and JSON.
    async fn call(
        &mut self,
        method: Method,
        concrete: &str,
        body: Option<Value>,
        key: KeyKind,
    ) -> (StatusCode, Value) {
        let template = self.template_of(concrete);
        let template = template.as_str();
        let answer = self
            .api
            .call(
                method.clone(),
                concrete,
                body.map(|b| b.to_string().into_bytes()),
                key,
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        assert!(
            !text.contains(SECRET) || concrete.ends_with("/credentials"),
            "{method} {concrete} answered a secret: {text}"
        );
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {concrete}: not JSON ({e}): {text}"));
        let verb = method.as_str().to_ascii_lowercase();
        let operation = &self.doc["paths"][template][&verb];
        assert!(
            operation.is_object(),
            "{verb} {template} is not in the document"
        );
        let status = answer.status.as_str().to_owned();
        let response = &operation["responses"][&status];
        assert!(
            response.is_object(),
            "{method} {concrete} answered {status}, which the document does not list for it: {text}"
        );
        let schema = &response["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {concrete}: the document gives no JSON schema for {status}"
        );
        let root = json!({
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::draft202012::new(&root).unwrap_or_else(|e| {
            panic!("{verb} {template} {status}: the schema does not compile: {e}")
        });
        let problems: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            problems.is_empty(),
            "{method} {concrete} ({status}) does not match its schema:\n{}\nanswer: {text}",
            problems.join("\n")
        );
        if answer.status.is_success() {
            self.succeeded.insert((verb, template.to_owned()));
        }
        (answer.status, json)
    }
}

/// The catalogue's size, as a toolkit listing gives it (319 apps today).
fn catalogue_total(page: &Value) -> u64 {
    let total = page["total_items"].as_u64().unwrap();
    assert!(total >= 300, "the whole catalogue is counted: {page}");
    total
}

/// An API on 127.0.0.1 for the proxy route: answers JSON to anything.
async fn upstream() -> String {
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn every_answer_matches_its_documented_schema() {
    let audit_dir = tempfile::tempdir().unwrap();
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .audit_log(keyhaven::AuditLog::to_file(&audit_dir.path().join("audit.log")).unwrap())
        .connect_form_url("http://127.0.0.1:9210/connect")
        .allow_redirect_url("https://app.example.com/")
        .app_credentials("github", "gh-id", Some("gh-secret"))
        .build()
        .unwrap();
    let doc = serde_json::to_value(keyhaven_server::openapi()).unwrap();
    // A webhook, registered in the outbox before any event (as `serve` does).
    let hook = keyhaven_server::Webhook {
        url: keyhaven::url::Url::parse("http://127.0.0.1:9/hook?token=t").unwrap(),
        secret: "whsec_schema".to_owned().into(),
        events: Vec::new(),
    };
    let target = keyhaven::WebhookTarget {
        key: hook.key(),
        kinds: Vec::new(),
    };
    let outbox = kh.clone();
    let fan_out = || async {
        outbox
            .store()
            .claim_deliveries(
                std::slice::from_ref(&target),
                outbox.now(),
                std::time::Duration::from_secs(60),
                0,
            )
            .await
            .unwrap()
    };
    fan_out().await;
    let config = ServerConfig {
        webhooks: vec![hook],
        ..ServerConfig::default()
    };
    let mut c = Checker {
        api: InProcess::new(kh, config).unwrap(),
        doc,
        succeeded: BTreeSet::new(),
    };
    let admin = KeyKind::Admin;
    let get = Method::GET;
    let post = Method::POST;
    let delete = Method::DELETE;

    // The server, the catalogue and the schemes.
    c.call(get.clone(), "/healthz", None, admin).await;
    let (status, ready) = c.call(get.clone(), "/readyz", None, admin).await;
    assert_eq!(
        (status, &ready["status"]),
        (StatusCode::OK, &json!("ready"))
    );
    c.call(get.clone(), "/api/v1/client/auth/client_info", None, admin)
        .await;
    let (_, apps) = c
        .call(get.clone(), "/api/v1/apps?query=git", None, admin)
        .await;
    assert!(!apps["items"].as_array().unwrap().is_empty());
    c.call(get.clone(), "/api/v1/apps", None, admin).await;
    for slug in ["github", "openai", "shopify", "no-such-app"] {
        c.call(get.clone(), &format!("/api/v1/apps/{slug}"), None, admin)
            .await;
    }
    let (_, schemes) = c.call(get.clone(), "/api/v1/schemes", None, admin).await;
    assert!(
        schemes["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["auth_mode"] == "API_KEY")
    );

    // Integrations: a bearer token API on loopback, and OAuth from the catalogue.
    let base = upstream().await;
    let (status, integration) = c
        .call(
            post.clone(), "/api/v1/integrations",
            Some(json!({"appId": "schema-test", "authScheme": "BEARER_TOKEN", "authConfig": {"base_url": base, "connection_params": {"region": "Where the account lives"}}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{integration}");
    let int_id = integration["id"].as_str().unwrap().to_owned();
    c.call(
        post.clone(),
        "/api/v1/integrations",
        Some(json!({"appId": "Not A Slug"})),
        admin,
    )
    .await;
    c.call(get.clone(), "/api/v1/integrations", None, admin)
        .await;
    c.call(
        get.clone(),
        "/api/v1/integrations?appName=schema-test",
        None,
        admin,
    )
    .await;
    c.call(
        get.clone(),
        &format!("/api/v1/integrations/{int_id}"),
        None,
        admin,
    )
    .await;
    c.call(
        get.clone(),
        "/api/v1/integrations/int_nosuchintegration",
        None,
        admin,
    )
    .await;
    c.call(get.clone(), "/api/v1/integrations/bad", None, admin)
        .await;

    // Connected accounts: one ACTIVE at once, one waiting for OAuth.
    let (status, out) = c
        .call(
            post.clone(), "/api/v1/connectedAccounts",
            Some(json!({"integrationId": int_id, "entityId": "alice", "labels": ["team-a"], "data": {"token": SECRET, "region": "eu"}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["connectionStatus"], "ACTIVE");
    let id = out["connectedAccountId"].as_str().unwrap().to_owned();
    let (_, oauth) = c
        .call(
            post.clone(), "/api/v1/connectedAccounts",
            Some(json!({"appName": "github", "entityId": "bob", "redirectUri": "https://app.example.com/done"})),
            admin,
        )
        .await;
    assert_eq!(oauth["connectionStatus"], "INITIATED", "{oauth}");
    let waiting = oauth["connectedAccountId"].as_str().unwrap().to_owned();
    c.call(
        post.clone(),
        "/api/v1/connectedAccounts",
        Some(json!({"integrationId": "int_nosuchintegration"})),
        admin,
    )
    .await;
    c.call(
        post.clone(),
        "/api/v1/connectedAccounts",
        Some(json!({"integrationId": int_id, "labels": "not a list"})),
        admin,
    )
    .await;

    let (_, page) = c
        .call(get.clone(), "/api/v1/connectedAccounts", None, admin)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (_, page) = c
        .call(
            get.clone(),
            "/api/v1/connectedAccounts?entityId=alice&labels=team-a&status=active&limit=1",
            None,
            admin,
        )
        .await;
    assert_eq!(
        page["items"][0]["connectionParams"]["base_url"],
        base.as_str()
    );
    c.call(
        get.clone(),
        "/api/v1/connectedAccounts?limit=x",
        None,
        admin,
    )
    .await;
    // The v2 calls of Composio's JS SDK 0.5.
    let (status, v2) = c
        .call(
            post.clone(),
            "/api/v2/connectedAccounts/initiateConnection",
            Some(json!({"app": {"uniqueKey": "openai"}, "config": {"name": "openai", "useComposioAuth": false, "authScheme": "API_KEY"}, "connection": {"entityId": "carol", "initiateData": {"api_key": SECRET}, "extra": {"labels": ["v2"]}}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    assert_eq!(v2["connectionResponse"]["connectionStatus"], "ACTIVE");
    let (status, _) = c
        .call(
            post.clone(),
            "/api/v2/connectedAccounts/initiateConnection",
            Some(json!({"app": {"uniqueKey": "opnai"}, "connection": {"initiateData": {"api_key": SECRET}}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, created) = c
        .call(
            post.clone(),
            "/api/v2/integrations/create",
            Some(json!({"app": {"uniqueKey": "github"}, "config": {"name": "github v2", "useComposioAuth": false, "authScheme": "OAUTH2", "integrationSecrets": {"client_id": "gh-id-2", "client_secret": SECRET, "scopes": "repo, gist"}}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let (_, read) = c
        .call(
            get.clone(),
            &format!(
                "/api/v1/integrations/{}",
                created["integrationId"].as_str().unwrap()
            ),
            None,
            admin,
        )
        .await;
    assert_eq!(read["scopes"], json!(["repo", "gist"]));
    c.call(
        post.clone(),
        "/api/v2/integrations/create",
        Some(json!({"config": {}})),
        admin,
    )
    .await;

    let account = format!("/api/v1/connectedAccounts/{id}");
    c.call(get.clone(), &account, None, admin).await;
    c.call(
        get.clone(),
        "/api/v1/connectedAccounts/ca_nosuchaccount",
        None,
        admin,
    )
    .await;
    c.call(
        get.clone(),
        &format!("{account}/wait?timeout=1"),
        None,
        admin,
    )
    .await;
    c.call(
        get.clone(),
        &format!("/api/v1/connectedAccounts/{waiting}/wait?timeout=0.05"),
        None,
        admin,
    )
    .await;
    c.call(post.clone(), &format!("{account}/refresh"), None, admin)
        .await;
    c.call(
        post.clone(),
        &format!("/api/v1/connectedAccounts/{waiting}/refresh"),
        None,
        admin,
    )
    .await;
    c.call(post.clone(), &format!("{account}/disable"), None, admin)
        .await;
    c.call(
        get.clone(),
        &format!("{account}/credentials"),
        None,
        KeyKind::Credentials,
    )
    .await;
    c.call(post.clone(), &format!("{account}/enable"), None, admin)
        .await;
    let (status, creds) = c
        .call(
            get.clone(),
            &format!("{account}/credentials"),
            None,
            KeyKind::Credentials,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{creds}");
    assert_eq!(creds["credentials"]["token"], SECRET);
    c.call(get.clone(), &format!("{account}/credentials"), None, admin)
        .await;
    let (status, proxied) = c
        .call(
            post.clone(),
            &format!("{account}/proxy"),
            Some(json!({"path": "/anything?x=1"})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{proxied}");
    assert_eq!(proxied["body"]["ok"], true);
    let (status, audit) = c
        .call(
            get.clone(),
            &format!("{account}/audit?limit=50"),
            None,
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"credentials.read"), "{audit}");
    assert!(actions.contains(&"request"), "{audit}");
    c.call(
        get.clone(),
        &format!("{account}/audit?since=yesterday"),
        None,
        admin,
    )
    .await;
    // The webhook outbox: the webhooks, their deliveries by page, a redelivery.
    let (_, hooks) = c.call(get.clone(), "/api/v1/webhooks", None, admin).await;
    assert_eq!(
        hooks["items"][0]["url"], "http://127.0.0.1:9/hook",
        "{hooks}"
    );
    fan_out().await;
    let (status, page) = c
        .call(
            get.clone(),
            "/api/v1/webhooks/deliveries?limit=2&state=pending",
            None,
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
    let cursor = page["nextCursor"].as_str().expect("more than one page");
    let (_, rest) = c
        .call(
            get.clone(),
            &format!("/api/v1/webhooks/deliveries?cursor={cursor}"),
            None,
            admin,
        )
        .await;
    assert!(rest["items"][0]["id"].as_i64() < page["items"][1]["id"].as_i64());
    let (status, _) = c
        .call(
            get.clone(),
            "/api/v1/webhooks/deliveries?state=lost",
            None,
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let first = page["items"][0]["id"].as_i64().unwrap();
    let (status, again) = c
        .call(
            post.clone(),
            &format!("/api/v1/webhooks/deliveries/{first}/redeliver"),
            None,
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["state"], "pending");
    for (bad, expected) in [
        ("999999999", StatusCode::NOT_FOUND),
        ("nope", StatusCode::BAD_REQUEST),
    ] {
        let (status, _) = c
            .call(
                post.clone(),
                &format!("/api/v1/webhooks/deliveries/{bad}/redeliver"),
                None,
                admin,
            )
            .await;
        assert_eq!(status, expected);
    }
    c.call(
        post.clone(),
        &format!("{account}/proxy"),
        Some(json!({"path": "/../elsewhere"})),
        admin,
    )
    .await;
    // The same proxy in Composio's shapes: v2 (JS SDK 0.5) and v3.1 (current SDKs).
    let (status, v2) = c
        .call(
            post.clone(),
            "/api/v2/actions/proxy",
            Some(json!({"connectedAccountId": id, "endpoint": "/anything", "method": "GET", "parameters": [{"in": "query", "name": "page", "value": "2"}, {"in": "header", "name": "X-Test", "value": "1"}]})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    assert_eq!(
        (v2["status"].as_u64(), &v2["data"]["ok"]),
        (Some(200), &json!(true))
    );
    let (status, v3) = c
        .call(
            post.clone(),
            "/api/v3.1/tools/execute/proxy",
            Some(json!({"connected_account_id": id, "endpoint": "/anything?x=1", "method": "POST", "body": {"a": 1}, "parameters": [{"type": "query", "name": "y", "value": "2"}]})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v3}");
    for (route, bad) in [
        (
            "/api/v2/actions/proxy",
            json!({"connectedAccountId": id, "endpoint": "/../elsewhere"}),
        ),
        (
            "/api/v3.1/tools/execute/proxy",
            json!({"connected_account_id": id, "endpoint": "http://169.254.169.254/latest"}),
        ),
        (
            "/api/v3.1/tools/execute/proxy",
            json!({"endpoint": "/anything"}),
        ),
        (
            "/api/v3.1/tools/execute/proxy",
            json!({"connected_account_id": id, "endpoint": "/x", "parameters": [{"type": "cookie", "name": "a", "value": "b"}]}),
        ),
    ] {
        let (status, refused) = c.call(post.clone(), route, Some(bad), admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{route}: {refused}");
    }

    // The v3.1 API of Composio's current SDKs (and its /api/v3 alias).
    let patch = Method::PATCH;
    let v3 = "/api/v3.1";
    let (_, toolkits) = c
        .call(get.clone(), &format!("{v3}/toolkits?limit=5"), None, admin)
        .await;
    assert_eq!(toolkits["items"].as_array().unwrap().len(), 5);
    assert!(toolkits["next_cursor"].is_string(), "{toolkits}");
    let apps = catalogue_total(&toolkits);
    assert_eq!(toolkits["total_pages"], apps.div_ceil(5), "{toolkits}");
    c.call(
        get.clone(),
        &format!("{v3}/toolkits?search=git&category=developer-tools"),
        None,
        admin,
    )
    .await;
    c.call(get.clone(), &format!("{v3}/toolkits?limit=x"), None, admin)
        .await;
    let (_, github) = c
        .call(get.clone(), &format!("{v3}/toolkits/github"), None, admin)
        .await;
    assert_eq!(github["auth_config_details"][0]["mode"], "OAUTH2");
    let (status, custom) = c
        .call(
            get.clone(),
            &format!("{v3}/toolkits/schema-test"),
            None,
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{custom}");
    assert_eq!(custom["auth_config_details"][0]["mode"], "BEARER_TOKEN");
    assert_eq!(custom["base_url"], base.as_str());
    let (status, _) = c
        .call(get.clone(), "/api/v3/toolkits/opnai", None, admin)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, made) = c
        .call(
            post.clone(),
            &format!("{v3}/auth_configs"),
            Some(json!({"toolkit": {"slug": "openai"}, "auth_config": {"type": "use_custom_auth", "authScheme": "API_KEY", "name": "openai keys"}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let ac = made["auth_config"]["id"].as_str().unwrap().to_owned();
    let (status, gh) = c
        .call(
            post.clone(),
            &format!("{v3}/auth_configs"),
            Some(json!({"toolkit": {"slug": "github"}, "auth_config": {"type": "use_custom_auth", "credentials": {"scopes": "repo"}}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{gh}");
    let gh = gh["auth_config"]["id"].as_str().unwrap().to_owned();
    let (status, _) = c
        .call(
            post.clone(),
            &format!("{v3}/auth_configs"),
            Some(json!({"toolkit": {"slug": "github"}, "auth_config": {"type": "use_composio_managed_auth"}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, listed) = c
        .call(
            get.clone(),
            &format!("{v3}/auth_configs?toolkit_slug=openai&show_disabled=true"),
            None,
            admin,
        )
        .await;
    assert_eq!(listed["items"][0]["id"], ac.as_str(), "newest first");
    c.call(get.clone(), &format!("{v3}/auth_configs/{ac}"), None, admin)
        .await;
    c.call(
        patch.clone(),
        &format!("{v3}/auth_configs/{ac}"),
        Some(json!({"type": "custom", "credentials": {"header_name": "X-Api-Key", "header_format": "{api_key}"}})),
        admin,
    )
    .await;
    c.call(
        patch.clone(),
        &format!("{v3}/auth_configs/{ac}"),
        Some(json!({"type": "custom", "credentials": {"no_such_field": "x"}})),
        admin,
    )
    .await;
    for status in ["DISABLED", "ENABLED", "BOGUS"] {
        c.call(
            patch.clone(),
            &format!("{v3}/auth_configs/{ac}/{status}"),
            None,
            admin,
        )
        .await;
    }
    let (status, started) = c
        .call(
            post.clone(),
            &format!("{v3}/connected_accounts"),
            Some(json!({"auth_config": {"id": ac}, "connection": {"user_id": "dana", "state": {"authScheme": "API_KEY", "val": {"status": "ACTIVE", "api_key": SECRET}}}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["connectionData"]["val"]["status"], "ACTIVE");
    let dana = started["id"].as_str().unwrap().to_owned();
    // The admin key cannot send dana's key elsewhere by moving the auth config's URL.
    let (status, moved) = c
        .call(
            patch.clone(),
            &format!("{v3}/auth_configs/{ac}"),
            Some(json!({"type": "custom", "credentials": {"base_url": "https://elsewhere.example.com"}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{moved}");
    let (_, started) = c
        .call(
            post.clone(),
            &format!("{v3}/connected_accounts"),
            Some(json!({"auth_config": {"id": gh}, "connection": {"user_id": "erin", "callback_url": "https://app.example.com/done"}})),
            admin,
        )
        .await;
    assert_eq!(started["connectionData"]["val"]["status"], "INITIATED");
    assert!(
        started["connectionData"]["val"]["redirectUrl"]
            .as_str()
            .unwrap()
            .starts_with("https://github.com/")
    );
    let (_, page) = c
        .call(
            get.clone(),
            &format!("{v3}/connected_accounts?user_ids=dana,erin&statuses=ACTIVE,INITIALIZING&auth_config_ids={ac}"),
            None,
            admin,
        )
        .await;
    assert_eq!(page["items"][0]["id"], dana.as_str(), "{page}");
    assert_eq!(
        (&page["total_items"], &page["total_pages"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(page["items"][0]["state"]["val"]["status"], "ACTIVE");
    let (_, page) = c
        .call(
            get.clone(),
            &format!("{v3}/connected_accounts?statuses=REVOKED"),
            None,
            admin,
        )
        .await;
    assert_eq!(page["items"], json!([]));
    c.call(
        get.clone(),
        &format!("{v3}/connected_accounts?connected_account_ids={dana}&order_direction=asc"),
        None,
        admin,
    )
    .await;
    c.call(
        get.clone(),
        &format!("{v3}/connected_accounts?order_by=updated_at"),
        None,
        admin,
    )
    .await;
    let v3_account = format!("{v3}/connected_accounts/{dana}");
    c.call(get.clone(), &v3_account, None, admin).await;
    c.call(
        get.clone(),
        &format!("{v3}/connected_accounts/ca_nosuchaccount"),
        None,
        admin,
    )
    .await;
    c.call(
        patch.clone(),
        &format!("{v3_account}/status"),
        Some(json!({"enabled": false})),
        admin,
    )
    .await;
    let (_, off) = c.call(get.clone(), &v3_account, None, admin).await;
    assert_eq!(off["status"], "INACTIVE");
    assert_eq!(off["is_disabled"], true);
    c.call(
        patch.clone(),
        &format!("{v3_account}/status"),
        Some(json!({"enabled": true})),
        admin,
    )
    .await;
    c.call(post.clone(), &format!("{v3_account}/refresh"), None, admin)
        .await;
    c.call(
        post.clone(),
        &format!("{v3}/connected_accounts/{waiting}/refresh"),
        None,
        admin,
    )
    .await;
    let (status, link) = c
        .call(
            post.clone(),
            &format!("{v3}/connected_accounts/link"),
            Some(json!({"auth_config_id": gh, "user_id": "frank", "callback_url": "https://app.example.com/done"})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    assert!(link["redirect_url"].as_str().unwrap().contains("/link/"));
    c.call(
        delete.clone(),
        &format!("{v3}/auth_configs/{ac}"),
        None,
        admin,
    )
    .await;
    c.call(delete.clone(), &v3_account, None, admin).await;
    let (status, _) = c
        .call(
            delete.clone(),
            &format!("{v3}/auth_configs/{ac}"),
            None,
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Deletions: an integration with accounts is refused, then both go.
    c.call(
        delete.clone(),
        &format!("/api/v1/integrations/{int_id}"),
        None,
        admin,
    )
    .await;
    c.call(delete.clone(), &account, None, admin).await;
    c.call(delete.clone(), &account, None, admin).await;
    let (status, _) = c
        .call(
            delete.clone(),
            &format!("/api/v1/integrations/{int_id}"),
            None,
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Every JSON operation of the document answered a success at least once.
    let doc = Arc::new(c.doc.clone());
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (verb, operation) in item.as_object().unwrap() {
            let json_success =
                operation["responses"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .any(|(status, r)| {
                        status.starts_with('2') && r["content"]["application/json"].is_object()
                    });
            if json_success && !c.succeeded.contains(&(verb.clone(), path.clone())) {
                missing.push(format!("{verb} {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "never answered with a success here: {missing:?}"
    );
}
