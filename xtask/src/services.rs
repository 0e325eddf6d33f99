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

/// The test OAuth server's npm packages, installed from the lock file when absent
/// or older than it.
fn oidc_packages(root: &Path) -> Result<(), String> {
    let dir = root.join("tests/oidc");
    let marker = dir.join("node_modules/.package-lock.json");
    let lock = dir.join("package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((modified(&marker), modified(&lock)), (Some(m), Some(l)) if m >= l);
    if fresh {
        println!("xtask: test OAuth server packages are installed");
        return Ok(());
    }
    println!("xtask: installing the test OAuth server packages (npm ci in tests/oidc)");
    run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
        "npm ci in tests/oidc (Node.js and npm are needed: apt-get install nodejs npm)",
    )
}

/// Prepares every service; returns the environment the tests need.
pub(crate) fn prepare(root: &Path) -> Result<Vec<(String, String)>, String> {
    oidc_packages(root)?;
    Ok(Vec::new())
}
