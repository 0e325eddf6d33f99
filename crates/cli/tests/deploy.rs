//! What can be checked of the deployment files without a container daemon: every
//! `KEYHAVEN_*` setting in `Dockerfile`, `compose.yaml` and `deploy/keyhaven.service`
//! is one `keyhaven serve --help` documents, and the image's user, volume and data
//! directory agree; and the binary, run as an unprivileged user from a directory it
//! cannot write, with only its data directory writable, serves, is ready and keeps a
//! connection, its files owner-only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The `KEYHAVEN_*` names in `text`.
fn settings(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("KEYHAVEN_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
            .collect();
        out.insert(name.trim_end_matches('_').to_owned());
        rest = &rest[at + name.len()..];
    }
    out
}

fn serve_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keyhaven"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn deployment_files_use_only_settings_serve_documents() {
    let help = serve_help();
    for file in ["Dockerfile", "compose.yaml", "deploy/keyhaven.service"] {
        let used = settings(&read(file));
        assert!(!used.is_empty(), "{file} sets keyhaven up");
        for name in &used {
            assert!(
                help.contains(name.as_str()),
                "{file} uses {name}, which `keyhaven serve --help` does not name"
            );
        }
    }
    let docker = read("Dockerfile");
    assert!(
        docker.contains("USER 10001:10001"),
        "the image runs as a non-root user"
    );
    assert!(docker.contains("VOLUME [\"/data\"]"));
    assert!(
        docker.contains("KEYHAVEN_DATA_DIR=/data"),
        "the volume is the data directory"
    );
    assert!(
        docker.contains("chown keyhaven:keyhaven /data") && docker.contains("chmod 0700 /data")
    );
    assert!(docker.contains("EXPOSE 9210") && docker.contains("KEYHAVEN_LISTEN=0.0.0.0:9210"));
    let compose = read("compose.yaml");
    assert!(
        compose.contains("keyhaven-data:/data"),
        "compose mounts the volume at /data"
    );
    assert!(compose.contains("\"9210:9210\""));
    assert!(
        compose.contains("condition: service_healthy"),
        "keyhaven waits for PostgreSQL"
    );
    for secret in [
        "KEYHAVEN_MASTER_KEY",
        "KEYHAVEN_API_KEY",
        "KEYHAVEN_CREDENTIALS_KEY",
    ] {
        assert!(
            compose.contains(&format!("{secret}: ${{{secret}:?")),
            "{secret} comes from .env and is required, never written in the file"
        );
    }
    let unit = read("deploy/keyhaven.service");
    for line in [
        "DynamicUser=yes",
        "StateDirectory=keyhaven",
        "Environment=KEYHAVEN_DATA_DIR=/var/lib/keyhaven",
        "ProtectSystem=strict",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/keyhaven serve",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
}

/// Runs `keyhaven serve` as uid/gid 65534 (when this test runs as root; as the
/// current user otherwise), from `/` (not writable), with `data` as the data
/// directory: returns the child and its port.
fn serve_unprivileged(data: &Path) -> (std::process::Child, u16) {
    let binary = env!("CARGO_BIN_EXE_keyhaven");
    let root_user = rustix::process::geteuid().is_root();
    let mut command = if root_user {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            binary,
        ]);
        c
    } else {
        Command::new(binary)
    };
    let mut child = command
        .args([
            "--api-key",
            "kh_deploy_admin",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir("/")
        .env("KEYHAVEN_DATA_DIR", data)
        .env_remove("KEYHAVEN_DATABASE_URL")
        .env_remove("KEYHAVEN_MASTER_KEY")
        .env_remove("HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let port = keyhaven_tests::serve_port(&mut child, "http");
    (child, port)
}

fn http(port: u16, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn the_binary_runs_unprivileged_with_only_its_data_directory_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    if rustix::process::geteuid().is_root() {
        // The volume belongs to the service's user, as the image's /data does; the
        // directory above it is only traversable.
        let nobody = Some(rustix::process::Uid::from_raw(65534));
        let nogroup = Some(rustix::process::Gid::from_raw(65534));
        rustix::fs::chown(&data, nobody, nogroup).unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    } else {
        eprintln!("not root: the binary runs as the current user (no other user to switch to)");
    }
    let (mut child, port) = serve_unprivileged(&data);
    assert!(
        http(
            port,
            "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .starts_with("HTTP/1.1 200")
    );
    assert!(
        http(
            port,
            "GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .starts_with("HTTP/1.1 200")
    );
    let body = r#"{"appName":"openai","authScheme":"API_KEY","data":{"api_key":"sk-deploy"}}"#;
    let answer = http(
        port,
        &format!(
            "POST /api/v1/connectedAccounts HTTP/1.1\r\nhost: x\r\nx-api-key: kh_deploy_admin\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"ACTIVE\""), "{answer}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "a clean stop");
    // Everything it made is in the data directory, owner-only.
    let made: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    let names: BTreeSet<String> = made
        .iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for needed in ["keyhaven.db", "master.key", "audit.log"] {
        assert!(names.contains(needed), "{needed} in {names:?}");
    }
    for entry in &made {
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{:?} is {mode:o}", entry.file_name());
    }
    let beside: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["data"], "nothing made beside the data directory");
}
