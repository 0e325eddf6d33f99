//! The built `keyhaven` binary: `apps` as a table and as JSON, and `serve` with no
//! configuration — it listens, prints the admin key once, answers the API with it,
//! and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn keyhaven() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyhaven"))
}

#[test]
fn apps_lists_and_searches() {
    let out = keyhaven().args(["apps", "github"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("SLUG"));
    assert!(lines.next().unwrap().starts_with("github "), "{text}");
    let out = keyhaven()
        .args(["apps", "shopify", "--json"])
        .output()
        .unwrap();
    let apps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(apps[0]["slug"], "shopify");
    assert_eq!(apps[0]["params"][0]["name"], "subdomain");
    let out = keyhaven().args(["apps", "--json"]).output().unwrap();
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(all.as_array().unwrap().len() >= 300);
    let out = keyhaven().args(["apps", "zzz-nothing"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("no app matches"));
}

fn http(port: u16, method: &str, path: &str, key: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let key_header = key
        .map(|k| format!("x-api-key: {k}\r\n"))
        .unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{key_header}connection: close\r\ncontent-length: 0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[test]
fn serve_with_no_configuration() {
    let dir = tempfile_dir();
    let mut child = keyhaven()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .env_remove("KEYHAVEN_API_KEY")
        .env_remove("KEYHAVEN_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let key_line = lines.next().unwrap().unwrap();
    let key = key_line.rsplit(' ').next().unwrap().to_owned();
    assert!(
        key_line.starts_with("admin API key (shown once") && key.starts_with("kh_"),
        "{key_line}"
    );
    let creds_line = lines.next().unwrap().unwrap();
    assert!(
        creds_line.starts_with("credentials key (reads credentials only")
            && creds_line.rsplit(' ').next().unwrap().starts_with("khc_"),
        "{creds_line}"
    );
    let listen_line = lines.next().unwrap().unwrap();
    let port: u16 = listen_line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen_line}"));
    assert!(
        listen_line.contains("SQLite store in keyhaven-data"),
        "{listen_line}"
    );
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
    assert_eq!(http(port, "GET", "/api/v1/apps/github", None).0, 401);
    let (status, body) = http(port, "GET", "/api/v1/apps/github", Some(&key));
    assert_eq!(status, 200, "{body}");
    assert!(dir.join("keyhaven-data/keyhaven.db").exists());
    assert!(dir.join("keyhaven-data/admin-key.sha256").exists());
    // SIGTERM: a graceful stop.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.expect("keyhaven stops on SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(lines.next().unwrap().unwrap(), "keyhaven stopped");

    // A second start shows no key, and the first key still works.
    let mut child = keyhaven()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(&dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .env_remove("KEYHAVEN_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with("keyhaven listening"),
        "the key is shown once: {first}"
    );
    let port: u16 = first
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_eq!(http(port, "GET", "/api/v1/apps/github", Some(&key)).0, 200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new directory for one test: tests run in parallel and each removes its own.
fn tempfile_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kh-cli-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn serve_reads_a_toml_file_and_refuses_a_bad_one() {
    let dir = tempfile_dir();
    let config = dir.join("keyhaven.toml");
    std::fs::write(
        &config,
        r#"
listen = "127.0.0.1:0"
data_dir = "data"
cors_origins = ["https://dash.example.com"]
webhook_attempts = 3

[[webhooks]]
url = "http://127.0.0.1:9/hooks"
secret = "whsec_file"
events = ["connection.active", "failed"]
"#,
    )
    .unwrap();
    let mut child = keyhaven()
        .args([
            "serve",
            "--api-key",
            "kh_file_key",
            "--credentials-key",
            "khc_file",
        ])
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .env_remove("KEYHAVEN_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(
        listening.contains("1 webhook(s)") && listening.contains("SQLite store in data"),
        "{listening}"
    );
    assert!(dir.join("data/audit.log").exists());
    let _ = child.kill();
    let _ = child.wait();

    std::fs::write(
        &config,
        "[[webhooks]]\nurl = \"http://127.0.0.1:9/hooks\"\nsecret = \"s\"\nevents = [\"connection.nope\"]\n",
    )
    .unwrap();
    let out = keyhaven()
        .args(["serve", "--listen", "127.0.0.1:0", "--api-key", "k"])
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: unknown webhook event \"connection.nope\""),
        "{err}"
    );
    std::fs::write(&config, "listen = 12\n").unwrap();
    let out = keyhaven()
        .args(["serve", "--api-key", "k"])
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyhaven.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_takes_the_connection_limits_from_the_file_and_flags() {
    use std::io::{Read, Write};
    let dir = tempfile_dir();
    let config = dir.join("limits.toml");
    std::fs::write(
        &config,
        r#"
listen = "127.0.0.1:0"
data_dir = "data"
header_timeout = 0.5
body_timeout = 2
idle_timeout = 3
request_timeout = 4.5
max_connections = 7
rate_limit = 0
"#,
    )
    .unwrap();
    let mut child = keyhaven()
        .args([
            "serve",
            "--api-key",
            "kh_limits",
            "--credentials-key",
            "khc_limits",
        ])
        .args(["--max-connections", "9"])
        .arg("--config")
        .arg(&config)
        .current_dir(&dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .env_remove("KEYHAVEN_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(
        listening.contains("at most 9 connections"),
        "the flag wins over the file: {listening}"
    );
    let port: u16 = listening
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    // The file's header timeout (0.5 s) drops a connection that sends half a header.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = slow.read(&mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // rate_limit = 0: no limit on the callback.
    for _ in 0..80 {
        assert_eq!(
            http(port, "GET", "/api/v1/oauth/callback?state=x", None).0,
            400
        );
    }
    let _ = child.kill();
    let _ = child.wait();

    for (flag, value, message) in [
        (
            "--header-timeout",
            "0",
            "header_timeout must be a positive number of seconds",
        ),
        (
            "--idle-timeout",
            "-1",
            "idle_timeout must be a positive number of seconds",
        ),
        (
            "--max-connections",
            "0",
            "max_connections must be at least 1",
        ),
        (
            "--rate-limit-burst",
            "0",
            "rate_limit_burst must be at least 1",
        ),
    ] {
        let out = keyhaven()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--api-key",
                "k",
                &format!("{flag}={value}"),
            ])
            .current_dir(&dir)
            .env_remove("KEYHAVEN_DATA_DIR")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{flag} {value}: {err}");
    }
    let help = keyhaven().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--header-timeout <SECONDS>",
        "--body-timeout <SECONDS>",
        "--idle-timeout <SECONDS>",
        "--request-timeout <SECONDS>",
        "--max-connections <MAX_CONNECTIONS>",
        "--rate-limit <PER_SECOND>",
        "--rate-limit-burst <REQUESTS>",
        "KEYHAVEN_HEADER_TIMEOUT",
    ] {
        assert!(help.contains(flag), "{flag} in --help:\n{help}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
