//! Makes ready what the end-to-end tests talk to, and says what it did.

use std::path::{Path, PathBuf};
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

/// A virtual environment under target/`venv` with the versions pinned in
/// `requirements` (`what` it is for). The marker holds the requirements it was made
/// from, so a change installs again. Returns the venv's folder.
fn pinned_venv(root: &Path, venv: &str, requirements: &str, what: &str) -> Result<PathBuf, String> {
    let dir = root.join("target").join(venv);
    let requirements = root.join(requirements);
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let marker = dir.join(".keyhaven-requirements");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        println!("xtask: {what} is installed");
        return Ok(dir);
    }
    println!("xtask: installing {what} into target/{venv}");
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
        "python3 -m venv (Python 3 with venv is needed: apt-get install python3-venv)",
    )?;
    run(
        Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
        &format!("pip install -r {}", requirements.display()),
    )?;
    std::fs::write(&marker, wanted).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(dir)
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
pub(crate) fn postgres() -> Result<String, String> {
    if let Ok(url) = std::env::var("KEYHAVEN_TEST_DATABASE_URL") {
        println!("xtask: PostgreSQL tests use KEYHAVEN_TEST_DATABASE_URL as given");
        return Ok(url);
    }
    postgres_server()?;
    drop_stale_databases()?;
    let name = run_database_name();
    psql(&format!("CREATE DATABASE {name}"))?;
    println!("xtask: PostgreSQL database {name} created for this run");
    Ok(format!("postgres://postgres@127.0.0.1:5432/{name}"))
}

/// The local PostgreSQL server, started when it is down.
pub(crate) fn postgres_server() -> Result<(), String> {
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
    psql("SELECT 1").map(drop)
}

/// How old a test database must be before a run drops it: other runs, of other
/// worktrees on the same server, may be using younger ones.
const STALE_AFTER_MS: u64 = 6 * 60 * 60 * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `keyhaven_run_<milliseconds, 12 hex digits>_<pid>`: unique across runs, and its
/// age can be read back, like the `kh_test_<id>` databases whose ids start with
/// their milliseconds.
fn run_database_name() -> String {
    format!("keyhaven_run_{:012x}_{}", now_ms(), std::process::id())
}

/// When a test database was made, from the milliseconds at the start of its name's
/// suffix; `None` for names without them (from older versions).
fn created_ms(name: &str) -> Option<u64> {
    let rest = name
        .strip_prefix("kh_test_")
        .or_else(|| name.strip_prefix("keyhaven_run_"))?;
    u64::from_str_radix(rest.get(..12)?, 16).ok()
}

/// Drops the test databases of earlier runs: those older than [`STALE_AFTER_MS`],
/// and those of unknown age that no one is connected to (never another run's
/// database in use).
fn drop_stale_databases() -> Result<(), String> {
    let names = psql(
        "SELECT datname FROM pg_database WHERE datname LIKE 'kh\\_test\\_%' OR datname LIKE 'keyhaven\\_run\\_%'",
    )?;
    let now = now_ms();
    for name in names.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match created_ms(name) {
            Some(made) if now.saturating_sub(made) > STALE_AFTER_MS => {
                psql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
            }
            Some(_) => {}
            // In use: the drop fails, and the database stays.
            None => {
                let _ = psql(&format!("DROP DATABASE IF EXISTS \"{name}\""));
            }
        }
    }
    Ok(())
}

/// Prepares every service; returns the environment the tests need.
pub(crate) fn prepare(root: &Path) -> Result<Vec<(String, String)>, String> {
    npm_packages(root, "oidc", "test OAuth server")?;
    npm_packages(root, "browser", "browser test driver (playwright-core)")?;
    npm_packages(
        root,
        "composio-js",
        "Composio JS SDK 0.5 (composio-core 0.5.39)",
    )?;
    npm_packages(
        root,
        "composio-v3-js",
        "Composio TypeScript SDK (@composio/core 0.21.0)",
    )?;
    let chromium = chromium()?;
    let python = composio_client(root)?;
    let composio_v3 = pinned_venv(
        root,
        "composio-v3-venv",
        "tests/composio/requirements-v3.txt",
        "composio 0.30.0 (Composio's Python SDK)",
    )?;
    let schemathesis = pinned_venv(
        root,
        "schemathesis-venv",
        "tests/schemathesis/requirements.txt",
        "schemathesis",
    )?;
    let moto = pinned_venv(
        root,
        "moto-venv",
        "tests/moto/requirements.txt",
        "moto's KMS server",
    )?;
    let url = postgres()?;
    Ok(vec![
        (
            "KEYHAVEN_MOTO_SERVER".into(),
            moto.join("bin/moto_server").to_string_lossy().into_owned(),
        ),
        ("KEYHAVEN_TEST_DATABASE_URL".into(), url),
        ("KEYHAVEN_COMPOSIO_PYTHON".into(), python),
        (
            "KEYHAVEN_COMPOSIO_V3_PYTHON".into(),
            composio_v3
                .join("bin/python")
                .to_string_lossy()
                .into_owned(),
        ),
        (
            "KEYHAVEN_SCHEMATHESIS_VENV".into(),
            schemathesis.to_string_lossy().into_owned(),
        ),
        ("CHROMIUM".into(), chromium),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_databases_are_unique_and_dated() {
        let name = run_database_name();
        let made = created_ms(&name).unwrap();
        assert!(now_ms() - made < 60_000, "{name}");
        assert_eq!(
            created_ms("kh_test_018f00000000000112345678abcdef01"),
            Some(0x018f00000000)
        );
        assert_eq!(created_ms("keyhaven_run_4242"), None);
        assert_eq!(created_ms("other"), None);
    }
}
