//! keyhaven's pages in a real browser: headless Chromium (Debian's), driven by
//! playwright-core (tests/browser/flow.mjs). An end user opens the hosted connect
//! form, types an API key and lands on the success page; another runs the whole OAuth
//! flow at the real OAuth server (oidc-provider) to keyhaven's success page. Every
//! page is kept as a screenshot in test-artifacts/screenshots/.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::sync::Arc;

use keyhaven::{Keyhaven, MemoryStore};
use keyhaven_server::{AdminKey, AppState, ServerConfig};
use keyhaven_tests::{OidcProvider, skip_or_fail};
use serde_json::{Value, json};

const KEY: &str = "kh_browser_admin";
const SECRET: &str = "sk-browser-SECRET-9";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Chromium and the driver, or why the test cannot run.
fn browser_ready() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        skip_or_fail(&format!(
            "Chromium is not installed at {chromium}: apt-get install chromium chromium-driver"
        ));
        return false;
    }
    if !root()
        .join("tests/browser/node_modules/playwright-core")
        .is_dir()
    {
        skip_or_fail(
            "the browser driver is not installed: run `cargo xtask test`, or `npm ci --prefix tests/browser`",
        );
        return false;
    }
    true
}

/// Runs the driver on a plan; returns its report of the last page.
async fn drive(plan: Value) -> Value {
    let out = tokio::process::Command::new("node")
        .arg("flow.mjs")
        .arg(plan.to_string())
        .current_dir(root().join("tests/browser"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn shots_dir() -> String {
    let dir = root().join("test-artifacts/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.to_string_lossy().into_owned()
}

async fn serve(kh: Keyhaven, listener: tokio::net::TcpListener, base: &str) {
    let mut state = AppState::new(kh, AdminKey::from_plain(KEY));
    state.config = ServerConfig {
        public_url: keyhaven::url::Url::parse(base).unwrap(),
        ..ServerConfig::default()
    };
    tokio::spawn(keyhaven_server::serve(
        listener,
        Arc::new(state),
        std::future::pending(),
    ));
}

/// A keyhaven server on 127.0.0.1 with an OAuth integration (`kh-basic`) at the test
/// OAuth server, whose client calls back to it.
struct OAuthSetup {
    base: String,
    callback: String,
    provider: OidcProvider,
    kh: Keyhaven,
    integration: keyhaven::Integration,
}

async fn oauth_setup() -> Option<OAuthSetup> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let callback = format!("{base}/api/v1/oauth/callback");
    let provider = OidcProvider::start_with_callback(600, &callback).await?;
    let (kh, integration) = provider.keyhaven_for(&callback, "kh-basic").await;
    serve(kh.clone(), listener, &base).await;
    Some(OAuthSetup {
        base,
        callback,
        provider,
        kh,
        integration,
    })
}

async fn initiate(base: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/api/v1/connectedAccounts"))
        .header("x-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_end_user_types_an_api_key_into_the_hosted_form() {
    if !browser_ready() {
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .connect_form_url(&format!("{base}/connect"))
        .build()
        .unwrap();
    serve(kh.clone(), listener, &base).await;
    let out = initiate(
        &base,
        json!({"appName": "openai", "authScheme": "API_KEY", "entityId": "web-user"}),
    )
    .await;
    assert_eq!(out["connectionStatus"], "INITIATED", "{out}");
    let id = out["connectedAccountId"].as_str().unwrap();

    let report = drive(json!({
        "start": out["redirectUrl"],
        "doneText": "is connected",
        // Found by its label, as a screen reader would.
        "fill": {"label:API Key": SECRET},
        "out": shots_dir(),
        "name": "connect-form",
    }))
    .await;
    assert!(
        report["text"]
            .as_str()
            .unwrap()
            .contains("Your OpenAI account is connected"),
        "{report}"
    );
    assert_eq!(report["title"], "Connected · keyhaven");
    assert_eq!(
        report["shots"].as_array().unwrap().len(),
        2,
        "the form, then the success page"
    );
    assert!(!report["text"].as_str().unwrap().contains(SECRET));
    assert_eq!(
        kh.connected_accounts()
            .get(id)
            .await
            .unwrap()
            .status
            .as_str(),
        "ACTIVE"
    );
    assert_eq!(
        kh.credentials(id).await.unwrap().get_str("api_key"),
        Some(SECRET)
    );
}

#[tokio::test]
async fn an_end_user_runs_the_oauth_flow_to_the_success_page() {
    if !browser_ready() {
        return;
    }
    let Some(OAuthSetup {
        base,
        callback,
        provider,
        kh,
        integration,
    }) = oauth_setup().await
    else {
        return;
    };
    let out = initiate(
        &base,
        json!({"integrationId": integration.id, "entityId": "web-user"}),
    )
    .await;
    let id = out["connectedAccountId"].as_str().unwrap();

    let report = drive(json!({
        "start": out["redirectUrl"],
        "doneText": "is connected",
        "fill": {"input[name=login]": "web-user", "input[name=password]": "any"},
        "out": shots_dir(),
        "name": "oauth",
    }))
    .await;
    assert!(
        report["url"].as_str().unwrap().starts_with(&callback),
        "{report}"
    );
    assert!(
        report["text"]
            .as_str()
            .unwrap()
            .contains("Your oidc-test account is connected"),
        "{report}"
    );
    assert!(
        report["shots"].as_array().unwrap().len() >= 3,
        "sign-in, consent, success: {report}"
    );
    let account = kh.connected_accounts().get(id).await.unwrap();
    assert_eq!(account.status.as_str(), "ACTIVE");
    let token = kh.credentials(id).await.unwrap();
    let (status, me) = provider
        .userinfo(token.get_str("access_token").unwrap())
        .await;
    assert_eq!((status, me["sub"].as_str()), (200, Some("web-user")));
}

#[tokio::test]
async fn an_end_user_follows_a_connection_link_through_keyhavens_page() {
    if !browser_ready() {
        return;
    }
    let Some(OAuthSetup {
        base,
        // Kept to the end: dropping it stops the OAuth server.
        provider: _provider,
        kh,
        integration,
        ..
    }) = oauth_setup().await
    else {
        return;
    };
    let link = kh
        .create_link(
            keyhaven::ConnectionRequest::for_integration(integration.id.as_str())
                .entity("link-user"),
        )
        .await
        .unwrap();

    // keyhaven's page, its Continue button (the page's CSP lets its form go on to
    // the provider), the provider's sign-in and consent, keyhaven's success page.
    let report = drive(json!({
        "start": format!("{base}/link/{}", link.token),
        "doneText": "is connected",
        "fill": {"input[name=login]": "link-user", "input[name=password]": "any"},
        "out": shots_dir(),
        "name": "link",
    }))
    .await;
    assert!(
        report["text"]
            .as_str()
            .unwrap()
            .contains("Your oidc-test account is connected"),
        "{report}"
    );
    assert!(
        report["shots"].as_array().unwrap().len() >= 4,
        "the link's page, sign-in, consent, success: {report}"
    );
    let account = kh
        .connected_accounts()
        .get(link.connected_account_id.as_str())
        .await
        .unwrap();
    assert_eq!(account.status.as_str(), "ACTIVE");
    assert!(kh.link_page(&link.token).await.is_err(), "used up");
}
