//! Composio's official Python client (composio-core 0.6.19, from PyPI, installed by
//! `cargo xtask test` into target/composio-venv) against `keyhaven serve`: a Composio
//! user moves to keyhaven by changing the base URL. The steps are in
//! tests/composio/compat.py.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

const KEY: &str = "kh_composio_compat_key";

fn python() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = std::env::var_os("KEYHAVEN_COMPOSIO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/composio-venv/bin/python"));
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "the Composio client is not installed at {}: run `cargo xtask test`",
        path.display()
    );
    keyhaven_tests::skip_or_fail(&why);
    None
}

#[test]
fn composio_client_works_against_keyhaven_serve() {
    let Some(python) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut command = common::serve_command();
    command
        .args(["--api-key", KEY])
        .args(["--allow-redirect", "http://127.0.0.1:5555"])
        .arg("--data-dir")
        .arg(dir)
        .env("KEYHAVEN_GITHUB_CLIENT_ID", "gh-client-id")
        .env("KEYHAVEN_GITHUB_CLIENT_SECRET", "gh-client-secret")
        .env_remove("KEYHAVEN_DATABASE_URL")
        .env_remove("KEYHAVEN_SERVER");
    let server = common::start(command);
    // The client talks to the server through a recorder of every answer.
    let recorder = common::Recorder::start(&server.url(""));
    let address = recorder.url.clone();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/composio/compat.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("KEYHAVEN_URL", &address)
        .env("KEYHAVEN_API_KEY", KEY)
        .env("HOME", dir)
        .output()
        .unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Composio client failed against {address}:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("ok"))
            .count()
            >= 6,
        "{stdout}"
    );
    let answers = recorder.answers();
    assert!(recorder.count() >= 6, "too few answers recorded");
    for secret in ["sk-compat-test-123", "gh-client-secret"] {
        assert!(!answers.contains(secret), "an answer carried {secret}");
    }
}
