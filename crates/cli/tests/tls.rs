//! HTTPS: `keyhaven serve --tls-cert --tls-key` with certificates the test makes
//! (rcgen): a client that trusts the certificate is served, plain HTTP on the same
//! port gets no answer, a key that does not match is refused at start with a clear
//! error, and SIGHUP puts a new certificate in place for new connections.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

fn write(dir: &Path, (cert, key): &(String, String)) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

fn serve(dir: &Path) -> std::process::Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyhaven"));
    c.args([
        "--api-key",
        "kh_tls_test",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ])
    .arg("--tls-cert")
    .arg(dir.join("cert.pem"))
    .arg("--tls-key")
    .arg(dir.join("key.pem"))
    .arg("--data-dir")
    .arg(dir.join("data"))
    .env_remove("KEYHAVEN_DATA_DIR")
    .env_remove("KEYHAVEN_DATABASE_URL");
    c
}

/// Starts the server; returns it and the port of its `https://` line.
fn start(dir: &Path) -> (Child, u16) {
    let mut child = serve(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = keyhaven_tests::serve_port(&mut child, "https");
    (child, port)
}

/// A client that trusts only `cert`, opening a new connection per request.
fn client(cert: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_with_a_made_certificate_and_a_reload_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let first = certificate();
    write(dir, &first);
    let (mut child, port) = start(dir);
    let url = format!("https://127.0.0.1:{port}/healthz");
    let r = client(&first.0).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    // Plain HTTP on the TLS port: no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "plain http is not served: {plain:?}");
    // A client that does not trust the certificate refuses it.
    let (other, _) = certificate();
    assert!(client(&other).get(&url).send().await.is_err());

    // New files, then SIGHUP: new connections get the new certificate.
    let second = certificate();
    write(dir, &second);
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut switched = false;
    for _ in 0..100 {
        if client(&second.0).get(&url).send().await.is_ok() {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "the new certificate is served after SIGHUP");
    assert!(
        client(&first.0).get(&url).send().await.is_err(),
        "the old one is gone"
    );
    // Files that do not load: the certificate in use stays.
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client(&second.0).get(&url).send().await.is_ok());
    assert!(child.try_wait().unwrap().is_none(), "still running");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_key_that_does_not_match_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cert, _) = certificate();
    let (_, key) = certificate();
    write(dir, &(cert, key.clone()));
    let out = serve(dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used together"), "{err}");
    assert!(
        !err.contains(key.lines().nth(1).unwrap()),
        "the key is never shown"
    );
    assert!(!dir.join("data").exists(), "nothing was created");
    // A missing file names itself.
    std::fs::remove_file(dir.join("cert.pem")).unwrap();
    let out = serve(dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cert.pem") && err.contains("certificate"),
        "{err}"
    );
}
