//! Master keys from a key management service, against moto's KMS server (PyPI
//! `moto[server]`, started here on 127.0.0.1): the data key kept only wrapped
//! (`master.key.kms`), a plain `master.key` moved into the envelope, the wrapping
//! key rotated without touching a row, a refused KMS call giving a clear error and
//! changing nothing; and a key command (`--master-key-command`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

/// moto's server on a port of its own, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    std::env::var_os("KEYHAVEN_MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/moto-venv/bin/moto_server");
            p.exists().then_some(p)
        })
}

impl Moto {
    async fn start() -> Option<Self> {
        let Some(binary) = moto_binary() else {
            keyhaven_tests::skip_or_fail(
                "moto's KMS server is not installed: run `cargo xtask test` (or `cargo xtask prepare`)",
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(moto);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not start on port {port}");
    }

    /// One call of KMS's JSON API (moto checks no signature; it reads the service
    /// from the credential scope).
    async fn call(&self, operation: &str, body: Value) -> Value {
        let r = reqwest::Client::new()
            .post(format!("{}/", self.url))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20261130/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0",
            )
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("TrentService.{operation}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{operation}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn create_key(&self) -> String {
        let made = self
            .call("CreateKey", json!({"Description": "keyhaven test"}))
            .await;
        made["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned()
    }
}

/// `keyhaven` on the data directory `dir`, with the KMS settings and `args`.
fn keyhaven(dir: &Path, kms: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyhaven"))
        .arg("--data-dir")
        .arg(dir)
        .args(kms)
        .args(args)
        .env_remove("KEYHAVEN_DATA_DIR")
        .env_remove("KEYHAVEN_DATABASE_URL")
        .env_remove("KEYHAVEN_MASTER_KEY")
        .env_remove("KEYHAVEN_KMS_KEY_ID")
        .env_remove("KEYHAVEN_MASTER_KEY_COMMAND")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects an API-key account; returns its id.
fn connect(dir: &Path, kms: &[&str], api_key: &str) -> String {
    let out = ok(&keyhaven(
        dir,
        kms,
        &[
            "--json",
            "connect",
            "openai",
            "--param",
            &format!("api_key={api_key}"),
        ],
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn token(dir: &Path, kms: &[&str], id: &str) -> Output {
    keyhaven(dir, kms, &["token", id])
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn kms_wraps_the_key_and_a_new_wrapping_key_touches_no_row() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let (a, b) = (moto.create_key().await, moto.create_key().await);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let with_a = [
        "--kms-key-id",
        a.as_str(),
        "--kms-endpoint",
        moto.url.as_str(),
    ];
    let id = connect(&dir, &with_a, "sk-kms-secret");
    assert!(dir.join("master.key.kms").exists());
    assert!(
        !dir.join("master.key").exists(),
        "no plain key beside the data"
    );
    let wrapped: Value = serde_json::from_slice(&bytes(&dir.join("master.key.kms"))).unwrap();
    assert_eq!(wrapped["kms_key_id"], a.as_str());
    assert_eq!(ok(&token(&dir, &with_a, &id)).trim(), "sk-kms-secret");
    // Without the KMS the data cannot be read.
    let plain = keyhaven(&dir, &[], &["token", &id]);
    assert!(!plain.status.success(), "no key without the KMS");

    // Rotate the wrapping key: the database is not touched.
    let db_before = bytes(&dir.join("keyhaven.db"));
    let out = ok(&keyhaven(
        &dir,
        // The file names the key that wraps it now: only the endpoint is needed.
        &["--kms-endpoint", moto.url.as_str()],
        &["keys", "rewrap", "--to", &b],
    ));
    assert!(out.contains(&b), "{out}");
    assert_eq!(
        bytes(&dir.join("keyhaven.db")),
        db_before,
        "no row re-encrypted"
    );
    let rewrapped: Value = serde_json::from_slice(&bytes(&dir.join("master.key.kms"))).unwrap();
    assert_eq!(rewrapped["kms_key_id"], b.as_str());
    assert_eq!(rewrapped["key_id"], wrapped["key_id"], "the same data key");
    let with_b = [
        "--kms-key-id",
        b.as_str(),
        "--kms-endpoint",
        moto.url.as_str(),
    ];
    assert_eq!(ok(&token(&dir, &with_b, &id)).trim(), "sk-kms-secret");

    // A refused KMS call: the file made to name key A while its bytes are B's (the
    // KMS answers AccessDenied, as AWS does for a blob of another key): a clear
    // error, and nothing changed by the attempt.
    let mut tampered = rewrapped.clone();
    tampered["kms_key_id"] = json!(a);
    std::fs::write(dir.join("master.key.kms"), tampered.to_string()).unwrap();
    let (kms_file, db) = (
        bytes(&dir.join("master.key.kms")),
        bytes(&dir.join("keyhaven.db")),
    );
    let refused = token(&dir, &with_b, &id);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("KMS Decrypt") && err.contains("refused") && err.contains("AccessDenied"),
        "{err}"
    );
    assert!(!err.contains("sk-kms-secret"));
    assert_eq!(bytes(&dir.join("master.key.kms")), kms_file);
    assert_eq!(bytes(&dir.join("keyhaven.db")), db);
}

/// Processes that start at once on a new data directory agree on one data key: the
/// first to write the wrapped key file wins and the others read its key (before,
/// each wrote its own over the others', and rows written under a key overwritten
/// could not be read again).
#[tokio::test]
async fn processes_starting_at_once_share_one_data_key() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let key = moto.create_key().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let kms = [
        "--kms-key-id",
        key.as_str(),
        "--kms-endpoint",
        moto.url.as_str(),
    ];
    let dir_for = dir.clone();
    let kms_owned: Vec<String> = kms.iter().map(|s| (*s).to_owned()).collect();
    let ids = tokio::task::spawn_blocking(move || {
        let kms: Vec<&str> = kms_owned.iter().map(String::as_str).collect();
        std::thread::scope(|scope| {
            let started: Vec<_> = (0..6)
                .map(|i| {
                    let (dir, kms) = (&dir_for, &kms);
                    scope.spawn(move || (i, connect(dir, kms, &format!("sk-at-once-{i}"))))
                })
                .collect();
            started
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        })
    })
    .await
    .unwrap();
    for (i, id) in ids {
        assert_eq!(
            ok(&token(&dir, &kms, &id)).trim(),
            format!("sk-at-once-{i}"),
            "every process's row is readable with the directory's key"
        );
    }
}

#[tokio::test]
async fn a_plain_key_moves_into_the_envelope_and_a_missing_kms_key_creates_nothing() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    let key = moto.create_key().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Made without a KMS: a plain master.key.
    let id = connect(&dir, &[], "sk-moved");
    assert!(dir.join("master.key").exists());
    let kms = [
        "--kms-key-id",
        key.as_str(),
        "--kms-endpoint",
        moto.url.as_str(),
    ];
    assert_eq!(ok(&token(&dir, &kms, &id)).trim(), "sk-moved");
    assert!(
        !dir.join("master.key").exists(),
        "the plain key file is gone"
    );
    assert!(dir.join("master.key.kms").exists());
    assert_eq!(ok(&token(&dir, &kms, &id)).trim(), "sk-moved", "and again");

    // A KMS key that does not exist: nothing is made.
    let fresh = tmp.path().join("fresh");
    let missing = [
        "--kms-key-id",
        "11111111-2222-3333-4444-555555555555",
        "--kms-endpoint",
        moto.url.as_str(),
    ];
    let out = keyhaven(&fresh, &missing, &["accounts", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KMS Encrypt") && err.contains("NotFoundException"),
        "{err}"
    );
    assert!(!fresh.exists(), "no data directory was made");
    // An unreachable KMS says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = keyhaven(
        &fresh,
        &["--kms-key-id", &key, "--kms-endpoint", &closed_url],
        &["accounts", "list"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unreachable"),
        "{err}"
    );
}

#[test]
fn a_key_command_gives_the_master_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // 32 bytes, 0 to 31, in base64.
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let command = format!("echo {key}");
    let with = ["--master-key-command", command.as_str()];
    let id = connect(&dir, &with, "sk-command");
    assert!(
        !dir.join("master.key").exists(),
        "the key stays with the command"
    );
    assert_eq!(ok(&token(&dir, &with, &id)).trim(), "sk-command");
    // The same key in KEYHAVEN_MASTER_KEY reads it too: it is the key, not a wrap.
    let out = Command::new(env!("CARGO_BIN_EXE_keyhaven"))
        .arg("--data-dir")
        .arg(&dir)
        .args(["token", &id])
        .env("KEYHAVEN_MASTER_KEY", key)
        .env_remove("KEYHAVEN_MASTER_KEY_COMMAND")
        .output()
        .unwrap();
    assert_eq!(ok(&out).trim(), "sk-command");
    // A failing command: refused, and what it printed is not shown.
    let failing = ["--master-key-command", "echo secret-output; exit 3"];
    let out = keyhaven(&dir, &failing, &["token", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("master key command failed"),
        "{err}"
    );
    assert!(!err.contains("secret-output"), "{err}");
}
