//! Makes ready what the end-to-end tests talk to, and says what it did.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what}: failed ({status})"))
    }
}

/// The npm packages of `tests/<folder>` (`what` they are for), installed from the
/// lock file when absent or older than it.
fn npm_packages(root: &Path, folder: &str, what: &str) -> Result<(), String> {
    let dir = root.join("tests").join(folder);
    let marker = dir.join("node_modules/.package-lock.json");
    let lock = dir.join("package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((modified(&marker), modified(&lock)), (Some(m), Some(l)) if m >= l);
    if fresh {
        println!("xtask: {what} packages are installed");
        return Ok(());
    }
    println!("xtask: installing the {what} packages (npm ci in tests/{folder})");
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
        &format!(
            "npm ci in tests/{folder} (Node.js and npm are needed: apt-get install nodejs npm)"
        ),
    )
}

/// The Composio client the compatibility test runs: composio-core 0.6.19 from PyPI in
/// a virtual environment under target/. Returns its Python.
fn composio_client(root: &Path) -> Result<String, String> {
    const VERSION: &str = "0.6.19";
    let venv = root.join("target/composio-venv");
    let python = venv.join("bin/python");
    let marker = venv.join(format!(".composio-core-{VERSION}"));
    if !marker.exists() {
        println!("xtask: installing composio-core {VERSION} into target/composio-venv");
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (Python 3 with venv is needed: apt-get install python3-venv)",
        )?;
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("composio-core=={VERSION}"),
            ]),
            "pip install composio-core",
        )?;
        std::fs::write(&marker, VERSION).map_err(|e| format!("{}: {e}", marker.display()))?;
    } else {
        println!("xtask: composio-core {VERSION} is installed");
    }
    Ok(python.to_string_lossy().into_owned())
}

/// schemathesis, which tests the OpenAPI document against `keyhaven serve`
/// (crates/cli/tests/schemathesis.rs): the versions pinned in
/// tests/schemathesis/requirements.txt, in a virtual environment under target/. The
/// marker holds the requirements it was made from, so a change installs again.
fn schemathesis(root: &Path) -> Result<String, String> {
    let venv = root.join("target/schemathesis-venv");
    let requirements = root.join("tests/schemathesis/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let marker = venv.join(".keyhaven-requirements");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        println!("xtask: schemathesis is installed");
    } else {
        println!("xtask: installing schemathesis into target/schemathesis-venv");
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv (Python 3 with venv is needed: apt-get install python3-venv)",
        )?;
        run(
            Command::new(venv.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements),
            "pip install -r tests/schemathesis/requirements.txt",
        )?;
        std::fs::write(&marker, wanted).map_err(|e| format!("{}: {e}", marker.display()))?;
    }
    Ok(venv.to_string_lossy().into_owned())
}

/// Debian's Chromium, which the browser tests drive headless.
fn chromium() -> Result<String, String> {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if Path::new(&path).exists() {
        println!("xtask: Chromium at {path}");
        Ok(path)
    } else {
        Err(format!(
            "Chromium is missing at {path}: apt-get install chromium chromium-driver (or set CHROMIUM)"
        ))
    }
}

fn psql(sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            sql,
        ])
        .output()
        .map_err(|e| format!("psql cannot start ({e}): install the PostgreSQL client"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The local PostgreSQL server, started when it is down, and a fresh database for
/// this run. `KEYHAVEN_TEST_DATABASE_URL`, when already set, is used as it is.
fn postgres() -> Result<String, String> {
    if let Ok(url) = std::env::var("KEYHAVEN_TEST_DATABASE_URL") {
        println!("xtask: PostgreSQL tests use KEYHAVEN_TEST_DATABASE_URL as given");
        return Ok(url);
    }
    if psql("SELECT 1").is_err() {
        println!("xtask: starting the local PostgreSQL server");
        let versions = std::fs::read_dir("/etc/postgresql")
            .map_err(|e| format!("PostgreSQL is not installed (/etc/postgresql: {e})"))?;
        for version in versions.flatten() {
            let v = version.file_name().to_string_lossy().into_owned();
            run(
                Command::new("pg_ctlcluster").args([
                    "--skip-systemctl-redirect",
                    &v,
                    "main",
                    "start",
                ]),
                "pg_ctlcluster start",
            )?;
        }
        for _ in 0..50 {
            if psql("SELECT 1").is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    psql("SELECT 1")?;
    // Databases left by earlier runs.
    let stale = psql(
        "SELECT datname FROM pg_database WHERE datname LIKE 'kh\\_test\\_%' OR datname LIKE 'keyhaven\\_run\\_%'",
    )?;
    for name in stale.lines().filter(|l| !l.trim().is_empty()) {
        psql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.trim()
        ))?;
    }
    let name = format!("keyhaven_run_{}", std::process::id());
    psql(&format!("CREATE DATABASE {name}"))?;
    println!("xtask: PostgreSQL database {name} created for this run");
    Ok(format!("postgres://postgres@127.0.0.1:5432/{name}"))
}

/// Prepares every service; returns the environment the tests need.
pub(crate) fn prepare(root: &Path) -> Result<Vec<(String, String)>, String> {
    npm_packages(root, "oidc", "test OAuth server")?;
    npm_packages(root, "browser", "browser test driver (playwright-core)")?;
    let chromium = chromium()?;
    let python = composio_client(root)?;
    let schemathesis = schemathesis(root)?;
    let url = postgres()?;
    Ok(vec![
        ("KEYHAVEN_TEST_DATABASE_URL".into(), url),
        ("KEYHAVEN_COMPOSIO_PYTHON".into(), python),
        ("KEYHAVEN_SCHEMATHESIS_VENV".into(), schemathesis),
        ("CHROMIUM".into(), chromium),
    ])
}
