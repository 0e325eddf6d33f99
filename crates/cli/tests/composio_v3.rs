//! Composio's current SDKs, which speak the v3.1 API — `composio` 0.30.0 (PyPI) and
//! `@composio/core` 0.21.0 (npm), installed by `cargo xtask test` into
//! target/composio-v3-venv and tests/composio-v3-js — against `keyhaven serve` with no
//! configuration, through the flows their documentation shows: toolkits and their
//! fields; an API-key connect and its wait; the duplicate-account guard; an OAuth
//! connect completed at the test OAuth server (oidc-provider) by a user this test
//! plays; a connection link followed the same way; get and list by user, toolkit and
//! status; auth configs listed, read, updated, disabled and enabled, a managed one
//! refused, one deleted; `toolkits.authorize`; disable, enable and refresh; delete;
//! a request through the proxy (`tools.proxy` / `proxyExecute`) to an API on this
//! machine; a wrong key.
//!
//! Both SDKs run sealed (no socket to another machine; the Python SDK's telemetry
//! replaced, the TypeScript SDK's tracking and version check off), and talk to the
//! server through a recorder (`common::Recorder`): every raw answer they got is
//! searched for the secrets used, and none may appear. The TypeScript
//! SDK checks answers against its schemas and logs what does not fit: it must log
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use keyhaven_tests::{Decision, OidcProvider, UserAgent};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const KEY: &str = "kh_composio_v3_key_0123456789";
const SECRET: &str = "sk-composio-v3-SECRET-7";
/// The key of the account the proxy step uses, checked by the test's API.
const PROXY_KEY: &str = "sk-proxy-v3-SECRET-3";
/// The secrets of the flows: the API keys, and the OAuth clients' secrets.
const SECRETS: [&str; 6] = [
    SECRET,
    PROXY_KEY,
    "kh-basic-secret",
    "kh-post-secret",
    "gh-py-secret",
    "gh-ts-secret",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python of the venv with composio 0.30.0, or why the test cannot run.
fn python_sdk() -> Option<PathBuf> {
    let python = std::env::var_os("KEYHAVEN_COMPOSIO_V3_PYTHON").map_or_else(
        || root().join("target/composio-v3-venv/bin/python"),
        PathBuf::from,
    );
    if python.exists() {
        return Some(python);
    }
    keyhaven_tests::skip_or_fail(&format!(
        "composio 0.30.0 is not installed at {}: run `cargo xtask test`",
        python.display()
    ));
    None
}

/// The folder of @composio/core 0.21.0, or why the test cannot run.
fn js_sdk() -> Option<PathBuf> {
    let dir = root().join("tests/composio-v3-js");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    if node
        && dir
            .join("node_modules/@composio/core/package.json")
            .exists()
    {
        return Some(dir);
    }
    keyhaven_tests::skip_or_fail(&if node {
        format!(
            "@composio/core 0.21.0 is not installed in {}: run `cargo xtask test`",
            dir.display()
        )
    } else {
        "Node.js is not installed (apt-get install nodejs npm)".to_owned()
    });
    None
}

/// Plays the user at `url`: a keyhaven connection link (its page, then on), then the
/// provider's sign-in and consent, then keyhaven's callback. Answers where the user
/// lands: the app's callback URL.
async fn play_user(server_base: &str, callback: &str, url: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut authorize = url.to_owned();
    if url.starts_with(&format!("{server_base}/link/")) {
        let page = http.get(url).send().await.unwrap();
        assert_eq!(page.status(), 200, "the link's page");
        let html = page.text().await.unwrap();
        assert!(html.contains("Continue"), "{html}");
        let on = http.post(url).send().await.unwrap();
        assert_eq!(on.status(), 303, "following the link");
        authorize = on.headers()["location"].to_str().unwrap().to_owned();
        let again = http.post(url).send().await.unwrap();
        assert_eq!(again.status(), 404, "a link works once");
    }
    let back = UserAgent::new()
        .authorize_to(&authorize, "user-1", Decision::Approve, callback)
        .await;
    let landed = http.get(back.as_str()).send().await.unwrap();
    assert_eq!(
        landed.status(),
        303,
        "keyhaven's callback sends the user on"
    );
    landed.headers()["location"].to_str().unwrap().to_owned()
}

/// Runs one SDK's flow (`program args`) against `sdk_base`, playing the user
/// whenever it prints `OPEN <url>`; answers its last line as JSON and its stderr.
async fn run_flow(
    mut command: tokio::process::Command,
    sdk_base: &str,
    server_base: &str,
    callback: &str,
) -> (Value, String) {
    let mut child = command
        .env("KH_BASE", sdk_base)
        .env("KH_KEY", KEY)
        .env("KH_SECRET", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
            .await
            .unwrap();
        text
    });
    let mut printed = Vec::new();
    let flow = async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("OPEN ") {
                let landed = play_user(server_base, callback, url).await;
                stdin
                    .write_all(format!("{landed}\n").as_bytes())
                    .await
                    .unwrap();
                stdin.flush().await.unwrap();
            }
            printed.push(line);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(300), flow)
        .await
        .expect("the SDK's flow ends within 5 minutes");
    let status = child.wait().await.unwrap();
    let stderr = errors.await.unwrap();
    let stdout = printed.join("\n");
    assert!(status.success(), "the SDK failed:\n{stdout}\n{stderr}");
    let result = serde_json::from_str(printed.last().map_or("", String::as_str))
        .unwrap_or_else(|e| panic!("no result line ({e}):\n{stdout}\n{stderr}"));
    (result, stderr)
}

/// What both SDKs must have seen; `k` names a field in the SDK's own case.
fn check_flow(r: &Value, camel: bool) {
    let k = |snake: &'static str, camel_name: &'static str| if camel { camel_name } else { snake };
    assert_eq!(r["toolkits"]["count"], 319, "{r}");
    assert_eq!(r["toolkits"][k("has_github", "hasGithub")], true, "{r}");
    assert_eq!(
        r["toolkits"][k("openai_fields", "openaiFields")],
        serde_json::json!(["api_key"]),
        "{r}"
    );
    assert_eq!(r["apiKey"]["status"], "ACTIVE", "{r}");
    assert_eq!(r["apiKey"]["waited"], "ACTIVE", "{r}");
    assert_eq!(r["duplicate"]["refused"], true, "{r}");
    assert_eq!(r["oauth"]["initiated"]["status"], "INITIATED", "{r}");
    assert_eq!(
        r["oauth"]["initiated"][k("has_redirect", "hasRedirect")],
        true,
        "{r}"
    );
    for flow in ["oauth", "link"] {
        assert_eq!(r[flow]["waited"], "ACTIVE", "{flow}: {r}");
        let landed = r[flow]["landed"].as_str().unwrap_or_default();
        assert!(
            landed.starts_with("http://127.0.0.1:5555/after?") && landed.contains("status=success"),
            "{flow} landed on the app's callback URL: {r}"
        );
    }
    assert_eq!(r["oauth"]["masked"], "********", "{r}");
    assert!(
        r["link"]["link"]
            .as_str()
            .is_some_and(|l| l.contains("/link/")),
        "{r}"
    );
    let gl = &r["getList"];
    assert_eq!(gl["status"], "ACTIVE", "{r}");
    assert_eq!(gl["toolkit"], "openai", "{r}");
    assert_eq!(
        gl[k("by_user", "byUser")],
        serde_json::json!([r["apiKey"]["id"]]),
        "{r}"
    );
    let mut oidc = vec![r["oauth"]["id"].clone(), r["link"]["id"].clone()];
    oidc.sort_by_key(|v| v.as_str().unwrap_or_default().to_owned());
    assert_eq!(gl[k("by_toolkit", "byToolkit")], Value::Array(oidc), "{r}");
    // Newest first: bob's OAuth account, then alice's API key.
    assert_eq!(
        gl[k("by_status", "byStatus")],
        serde_json::json!([r["oauth"]["id"], r["apiKey"]["id"]]),
        "{r}"
    );
    assert_eq!(gl["revoked"], 0, "{r}");
    let ac = &r["authConfigs"];
    let oauth_config = &r["oauth"][k("auth_config", "authConfig")];
    assert_eq!(ac["listed"], serde_json::json!([oauth_config]), "{r}");
    // (The Python SDK reads the number as a float.)
    assert_eq!(ac["connections"].as_f64(), Some(2.0), "{r}");
    assert_eq!(ac["disabled"], "DISABLED", "{r}");
    assert_eq!(ac["enabled"], "ENABLED", "{r}");
    assert_eq!(
        ac["scopes"],
        serde_json::json!(["openid", "offline_access"]),
        "{r}"
    );
    assert!(
        ac["managed"]
            .as_str()
            .is_some_and(|m| m.contains("400") && m.contains("use_custom_auth")),
        "{r}"
    );
    assert_ne!(ac["deleted"], false, "{r}");
    let az = &r["authorize"];
    assert_eq!(az["status"], "INITIATED", "{r}");
    assert_eq!(
        az[k("auth_config", "authConfig")],
        az["expected"],
        "authorize took the newest auth config: {r}"
    );
    assert!(
        az["redirect"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://github.com/login/oauth/authorize?")),
        "{r}"
    );
    assert_eq!(r["authorizeCustom"]["status"], "INITIATED", "{r}");
    assert!(
        r["authorizeCustom"]["redirect"]
            .as_str()
            .is_some_and(|u| u.contains("/auth?") && u.contains("client_id=kh-")),
        "authorize through an app outside the catalogue: {r}"
    );
    let der = &r["disableEnableRefresh"];
    assert_eq!(der["off"], "INACTIVE", "{r}");
    assert_eq!(der["on"], "ACTIVE", "{r}");
    assert_eq!(der["refreshed"], "ACTIVE", "{r}");
    assert_eq!(r["proxy"]["status"].as_f64(), Some(200.0), "{r}");
    assert_eq!(
        r["proxy"]["data"],
        serde_json::json!({"key_ok": true, "x_test": "hello", "query": "fixed=1&page=2"}),
        "the proxy sent the account's key, the header and the query: {r}"
    );
    assert_eq!(r["delete"]["gone"], true, "{r}");
    assert_eq!(r["wrongKey"]["error"], "AuthenticationError", "{r}");
}

fn assert_sealed_and_secret_free(sdk: &str, stdout: &Value, stderr: &str, raw: &str) {
    let blocked: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("BLOCKED"))
        .collect();
    assert!(
        blocked.is_empty(),
        "{sdk} tried to reach another machine: {blocked:?}"
    );
    assert!(raw.lines().count() > 30, "{sdk}: too few answers recorded");
    for secret in SECRETS {
        assert!(!raw.contains(secret), "{sdk}: an answer carried {secret}");
        assert!(
            !stderr.contains(secret) && !stdout.to_string().contains(secret),
            "{sdk} printed {secret}"
        );
    }
}

/// A fresh `keyhaven serve` with no configuration, as a new user runs it (no
/// redirect allowlist, no OAuth client in the environment), and the test OAuth
/// server for its callback.
async fn fresh_server(dir: &Path) -> Option<(common::Server, OidcProvider)> {
    let server = common::start(common::new_user_serve_command(KEY, &dir.join("data")));
    let provider =
        OidcProvider::start_with_callback(600, &server.url("/api/v1/oauth/callback")).await?;
    Some((server, provider))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composio_v3_sdks_work_against_keyhaven_serve() {
    let (Some(python), Some(js)) = (python_sdk(), js_sdk()) else {
        return;
    };
    // Each SDK on a server of its own, so that its listings are its own.
    for sdk in ["composio 0.30.0", "@composio/core 0.21.0"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let Some((server, provider)) = fresh_server(dir).await else {
            return;
        };
        let python_flow = sdk.starts_with("composio ");
        let mut command = if python_flow {
            let mut c = tokio::process::Command::new(&python);
            c.arg(root().join("tests/composio/v3_flow.py"));
            c
        } else {
            let mut c = tokio::process::Command::new("node");
            c.args(["--require", "../composio-js/seal.cjs", "flow.mjs"])
                .current_dir(&js);
            c
        };
        command
            .env("KH_ISSUER", &provider.issuer)
            .env("KH_UPSTREAM", common::check_api(PROXY_KEY))
            .env("KH_PROXY_KEY", PROXY_KEY)
            .env("HOME", dir);
        let base = server.url("");
        let callback = server.url("/api/v1/oauth/callback");
        // The SDK talks to the server through a recorder of every answer.
        let recorder = common::Recorder::start(&base);
        let (result, stderr) = run_flow(command, &recorder.url, &base, &callback).await;
        let raw = recorder.answers();
        println!("{sdk}: {result}");
        check_flow(&result, !python_flow);
        assert_sealed_and_secret_free(sdk, &result, &stderr, &raw);
        if !python_flow {
            // The TypeScript SDK logs answers that do not fit its schemas: none may.
            assert!(
                stderr.trim().is_empty(),
                "{sdk} logged (validation warnings?):\n{stderr}"
            );
        }
    }
}
