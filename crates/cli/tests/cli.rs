//! The built `keyhaven` binary: `apps` as a table and as JSON, and `serve` with no
//! configuration — it listens, prints the admin key once, answers the API with it,
//! and stops cleanly on SIGTERM; a closed stdout ends a command quietly (141); the
//! files `serve` makes are owner-only whatever the umask; and it refuses a store
//! whose key is missing or replaced. Each test has its own temporary directory.

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
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut child = keyhaven()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
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
        .current_dir(dir)
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
}

#[test]
fn serve_reads_a_toml_file_and_refuses_a_bad_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("keyhaven.toml");
    std::fs::write(
        &config,
        r#"
listen = "127.0.0.1:0"
data_dir = "data"
cors_origins = ["https://dash.example.com"]
webhook_attempts = 3
proxy_max_response_bytes = 1048576

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
        .current_dir(dir)
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
        .current_dir(dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: unknown webhook event \"connection.nope\""),
        "{err}"
    );
    let out = keyhaven()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "k",
            "--proxy-max-response-bytes",
            "0",
        ])
        .current_dir(dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--proxy-max-response-bytes must be at least 1"),
        "{err}"
    );
    std::fs::write(&config, "listen = 12\n").unwrap();
    let out = keyhaven()
        .args(["serve", "--api-key", "k"])
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keyhaven.toml"));
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    // The reader gone before anything is written.
    for args in [
        &["apps"][..],
        &["apps", "--json"],
        &["apps", "github"],
        &["completions", "bash"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = keyhaven()
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(141), "{args:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // As `keyhaven apps --json | head -c 100`: the reader takes a little, then goes,
    // while more than a pipe holds is still to come.
    let mut child = keyhaven()
        .args(["apps", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `keyhaven serve` with `args`, under `umask 000` (the loosest), until it listens;
/// the caller stops it.
fn serve_with_open_umask(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_keyhaven"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .env_remove("KEYHAVEN_API_KEY")
        .env_remove("KEYHAVEN_CREDENTIALS_KEY")
        .env_remove("KEYHAVEN_DATABASE_URL")
        .env_remove("KEYHAVEN_MASTER_KEY")
        .env_remove("KEYHAVEN_OLD_MASTER_KEYS")
        .env_remove("KEYHAVEN_AUDIT_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        if line.unwrap().starts_with("keyhaven listening") {
            return child;
        }
    }
    let status = child.wait().unwrap();
    panic!("keyhaven serve did not start: {status}");
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
#[test]
fn serve_makes_owner_only_files_whatever_the_umask_and_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // The data directory exists already, open to all.
    let data = tmp.path().join("keyhaven-data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = serve_with_open_umask(tmp.path(), &[], &[]);
    for name in [
        "keyhaven.db",
        "keyhaven.db-wal",
        "keyhaven.db-shm",
        "master.key",
        "admin-key.sha256",
        "credentials-key.sha256",
        "audit.log",
    ] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&data), 0o755, "an existing directory keeps its mode");
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the binary to completion with `env`, in `dir`.
fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = keyhaven();
    cmd.args(args)
        .current_dir(dir)
        .env_remove("KEYHAVEN_DATA_DIR")
        .env_remove("KEYHAVEN_SERVER")
        .env_remove("KEYHAVEN_API_KEY")
        .env_remove("KEYHAVEN_DATABASE_URL")
        .env_remove("KEYHAVEN_MASTER_KEY")
        .env_remove("KEYHAVEN_OLD_MASTER_KEYS")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn serve_refuses_a_data_directory_whose_master_key_is_missing_or_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let connect = [
        "connect",
        "openai",
        "--entity",
        "kai",
        "--param",
        "api_key=sk-kai",
        "--json",
    ];
    let out = run(dir, &connect, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_path = dir.join("keyhaven-data/master.key");
    let key_file = std::fs::read(&key_path).unwrap();

    // Deleted: serve refuses, and no new key is made.
    std::fs::remove_file(&key_path).unwrap();
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        "k",
        "--credentials-key",
        "c",
    ];
    let out = run(dir, &serve, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("master.key is missing") && err.contains("1 value"),
        "{err}"
    );
    assert!(!key_path.exists(), "no new key was made");

    // Replaced by another key (as a fresh `master.key` of another directory): refused.
    let other = tempfile::tempdir().unwrap();
    assert!(
        run(other.path(), &["accounts", "list"], &[])
            .status
            .success()
    );
    std::fs::copy(other.path().join("keyhaven-data/master.key"), &key_path).unwrap();
    let out = run(dir, &serve, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not configured") && err.contains("KEYHAVEN_OLD_MASTER_KEYS"),
        "{err}"
    );
    // `keys rotate` on the wrong key refuses too, before it adds a key to the file.
    let replaced = std::fs::read(&key_path).unwrap();
    let out = run(dir, &["keys", "rotate"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not configured"), "{err}");
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        replaced,
        "the key file is unchanged"
    );
    // Nothing was written meanwhile: the account is still the only one.
    std::fs::write(&key_path, &key_file).unwrap();
    let out = run(dir, &["accounts", "list", "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    // The old key put back: it works again.
    let out = run(
        dir,
        &["token", page["items"][0]["id"].as_str().unwrap()],
        &[],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sk-kai");
}

#[cfg(unix)]
#[test]
fn serve_on_postgresql_keeps_a_private_data_directory_and_refuses_another_key() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(url) = runtime.block_on(keyhaven_store::conformance::fresh_postgres_database()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let old = keyhaven::MasterKey::generate().unwrap().to_base64();
    let new = keyhaven::MasterKey::generate().unwrap().to_base64();
    let with_old = [
        ("KEYHAVEN_DATABASE_URL", url.as_str()),
        ("KEYHAVEN_MASTER_KEY", &old),
    ];
    // The data directory holds only the key hashes and the audit log here: made 0700.
    let mut child = serve_with_open_umask(dir, &[], &with_old);
    let data = dir.join("keyhaven-data");
    assert_eq!(mode(&data), 0o700);
    for name in ["admin-key.sha256", "credentials-key.sha256", "audit.log"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    assert!(!data.join("keyhaven.db").exists() && !data.join("master.key").exists());
    let _ = child.kill();
    let _ = child.wait();
    let connect = [
        "connect",
        "openai",
        "--entity",
        "pat",
        "--param",
        "api_key=sk-pat",
    ];
    let out = run(dir, &connect, &with_old);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another KEYHAVEN_MASTER_KEY without the old one: refused.
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-key",
        "k",
        "--credentials-key",
        "c",
    ];
    let with_new = [
        ("KEYHAVEN_DATABASE_URL", url.as_str()),
        ("KEYHAVEN_MASTER_KEY", &new),
    ];
    let out = run(dir, &serve, &with_new);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not configured") && err.contains("KEYHAVEN_OLD_MASTER_KEYS"),
        "{err}"
    );
    // With the old key given back as an old key: it starts.
    let both = [
        ("KEYHAVEN_DATABASE_URL", url.as_str()),
        ("KEYHAVEN_MASTER_KEY", &new),
        ("KEYHAVEN_OLD_MASTER_KEYS", &old),
    ];
    let mut child =
        serve_with_open_umask(dir, &["--api-key", "k", "--credentials-key", "c"], &both);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn serve_takes_the_connection_limits_from_the_file_and_flags() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
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
api_read_timeout = 30
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
        .current_dir(dir)
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
            "--api-read-timeout",
            "0",
            "api_read_timeout must be a positive number of seconds",
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
            .current_dir(dir)
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
}

/// Runs `serve` with `extra` arguments, sends one request with a request id, stops
/// it with SIGTERM and returns what it wrote on stderr.
fn serve_log(extra: &[&str]) -> String {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let mut child = keyhaven()
        .args([
            "--api-key",
            "kh_log_test_key",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .current_dir(tmp.path())
        .env_remove("KEYHAVEN_DATA_DIR")
        .env_remove("KEYHAVEN_DATABASE_URL")
        .env_remove("KEYHAVEN_LOG_FORMAT")
        .env_remove("KEYHAVEN_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let port = keyhaven_tests::serve_port(&mut child, "http");
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-request-id: log-test-1\r\nconnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-request-id: log-test-1"),
        "{answer}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    err
}

#[test]
fn serve_logs_json_lines_with_the_request_id_when_not_on_a_terminal() {
    let err = serve_log(&[]);
    assert!(!err.contains('\u{1b}'), "no ANSI codes in a pipe: {err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["path"] == "/healthz")
        .unwrap_or_else(|| panic!("no request line: {err}"));
    assert_eq!(request["status"], 200);
    assert_eq!(request["level"], "INFO");
    assert_eq!(request["spans"][0]["request_id"], "log-test-1", "{request}");
    // Asked for text: text, still without colours in a pipe.
    let text = serve_log(&["--log-format", "pretty"]);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("request_id=log-test-1"), "{text}");
    assert!(serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).is_err());
}
