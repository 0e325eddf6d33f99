//! Composio's older JS SDK (composio-core 0.5.39 from npm, which speaks the v2 routes;
//! installed by `cargo xtask test` into tests/composio-js) against `keyhaven serve`
//! with no configuration: API-key connect and its wait, read, list by user, app and
//! status, disable and enable, an integration created through v2
//! (scopes in its auth config), an OAuth connect with a redirect URL, a request
//! through the v2 proxy (`actions.executeRequest`) to an API on this machine, delete,
//! and a wrong key. The SDK runs sealed (tests/composio-js/seal.cjs): every connection to
//! anything but this machine is refused and reported; the only one allowed to be
//! refused is its update check against registry.npmjs.org.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

const KEY: &str = "kh_composio_js_key_0123456789";
const SECRET: &str = "sk-composio-js-SECRET-5";
/// The key of the account the proxy step uses, checked by the test's API.
const PROXY_KEY: &str = "sk-proxy-js-SECRET-8";

fn sdk_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/composio-js");
    let installed = dir.join("node_modules/composio-core/package.json");
    let node = Command::new("node").arg("--version").output().is_ok();
    if installed.exists() && node {
        return Some(dir);
    }
    let why = if node {
        format!(
            "composio-core 0.5.39 is not installed in {}: run `cargo xtask test`",
            dir.display()
        )
    } else {
        "Node.js is not installed (apt-get install nodejs npm)".to_owned()
    };
    keyhaven_tests::skip_or_fail(&why);
    None
}

#[test]
fn composio_js_sdk_0_5_works_against_keyhaven_serve() {
    let Some(sdk) = sdk_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // As a new user runs it: no redirect allowlist, no OAuth client in the environment.
    let server = common::start(common::new_user_serve_command(KEY, &dir.join("data")));
    // The SDK talks to the server through a recorder of every answer.
    let recorder = common::Recorder::start(&server.url(""));
    let address = recorder.url.clone();
    let out = Command::new("node")
        .args(["--require", "./seal.cjs", "flow.mjs"])
        .current_dir(&sdk)
        .env("KH_BASE", &address)
        .env("KH_KEY", KEY)
        .env("KH_SECRET", SECRET)
        .env("KH_UPSTREAM", common::check_api(PROXY_KEY))
        .env("KH_PROXY_KEY", PROXY_KEY)
        .env("HOME", dir)
        .output()
        .unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK failed:\n{stdout}\n{stderr}");

    let blocked: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("BLOCKED"))
        .collect();
    assert!(
        blocked
            .iter()
            .all(|l| *l == "BLOCKED registry.npmjs.org:443"),
        "the SDK tried to reach another machine: {blocked:?}"
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "a secret was shown:\n{stdout}\n{stderr}"
    );
    assert!(recorder.count() >= 10, "too few answers recorded");
    for secret in [SECRET, PROXY_KEY] {
        assert!(
            !recorder.answers().contains(secret),
            "an answer carried {secret}"
        );
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} was shown"
        );
    }
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no result line ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(result["proxy"]["status"], 200, "{result}");
    assert_eq!(
        result["proxy"]["data"],
        serde_json::json!({"key_ok": true, "x_test": "hello", "query": "fixed=1&page=2"}),
        "the v2 proxy sent the account's key, the header and the query: {result}"
    );
    assert_eq!(result["apiKeyConnect"]["status"], "ACTIVE", "{result}");
    assert_eq!(result["apiKeyConnect"]["waited"], "ACTIVE", "{result}");
    assert_eq!(result["get"]["status"], "ACTIVE", "{result}");
    assert_eq!(result["get"]["app"], "openai", "{result}");
    assert_eq!(result["get"]["entity"], "alice", "{result}");
    assert_eq!(result["createIntegration"]["scheme"], "OAUTH2", "{result}");
    assert_eq!(result["createIntegration"]["app"], "github", "{result}");
    assert_eq!(result["oauthConnect"]["status"], "INITIATED", "{result}");
    let redirect = result["oauthConnect"]["redirectUrl"]
        .as_str()
        .unwrap_or_default();
    assert!(
        redirect.starts_with("https://github.com/login/oauth/authorize?")
            && redirect.contains("client_id=gh-js-client")
            && redirect.contains("scope=repo+read%3Auser"),
        "{result}"
    );
    assert_eq!(
        result["list"]["ids"],
        serde_json::json!([result["apiKeyConnect"]["id"]]),
        "{result}"
    );
    assert_eq!(result["disableEnable"]["off"], "INACTIVE", "{result}");
    assert_eq!(result["disableEnable"]["on"], "ACTIVE", "{result}");
    assert_eq!(result["delete"]["gone"], true, "{result}");
    assert!(
        result["wrongKey"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Access Denied")),
        "{result}"
    );
}
