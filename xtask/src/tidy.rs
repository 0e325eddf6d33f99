//! Tidy checks: the rules of ARCHITECTURE.md that a machine can check.

use std::fs;
use std::path::{Path, PathBuf};

/// Crates of ours that a scheme or store crate may depend on.
const CORE: &str = "keyhaven-core";

/// Every `Cargo.toml` of the workspace members.
fn member_manifests(root: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(root.join("Cargo.toml")) else {
        return vec![];
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return vec![];
    };
    doc.get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m.as_str())
                .map(|m| root.join(m).join("Cargo.toml"))
                .collect()
        })
        .unwrap_or_default()
}

fn load(path: &Path) -> Result<toml::Table, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Dependency tables of a manifest: `[dependencies]`, `[dev-dependencies]`, `[build-dependencies]`.
fn dependency_tables(doc: &toml::Table) -> Vec<(&'static str, &toml::Table)> {
    ["dependencies", "dev-dependencies", "build-dependencies"]
        .into_iter()
        .filter_map(|k| doc.get(k).and_then(|t| t.as_table()).map(|t| (k, t)))
        .collect()
}

/// Each member opts into the workspace lints and takes versions from the root.
pub(crate) fn check_manifests(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let manifests = member_manifests(root);
    if manifests.is_empty() {
        problems.push("no workspace members found in the root Cargo.toml".to_owned());
    }
    for path in manifests {
        let doc = match load(&path) {
            Ok(d) => d,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let lints = doc
            .get("lints")
            .and_then(|l| l.get("workspace"))
            .and_then(|w| w.as_bool());
        if lints != Some(true) {
            problems.push(format!("{shown}: add `[lints] workspace = true`"));
        }
        for (table, deps) in dependency_tables(&doc) {
            for (name, spec) in deps {
                let from_workspace = spec.get("workspace").and_then(|w| w.as_bool()) == Some(true);
                if !from_workspace {
                    problems.push(format!(
                        "{shown}: [{table}] {name} must be `{name}.workspace = true`; versions live in the root [workspace.dependencies]"
                    ));
                }
            }
        }
    }
    problems
}

/// The crate graph of ARCHITECTURE.md: core depends on no crate of ours; scheme
/// and store crates depend on core alone among ours.
pub(crate) fn check_layers(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(entries) = fs::read_dir(root.join("crates")) else {
        return vec!["crates/ is missing".to_owned()];
    };
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(doc) = load(&manifest) else { continue };
        let Some(name) = doc
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
        else {
            continue;
        };
        let allowed: Option<&[&str]> = match name {
            "keyhaven-core" => Some(&[]),
            "keyhaven-api-key" | "keyhaven-oauth2" | "keyhaven-basic-jwt" | "keyhaven-store"
            | "keyhaven-catalog" => Some(&[CORE]),
            // The edges reach the domain through the facade only.
            "keyhaven-server" => Some(&["keyhaven"]),
            "keyhaven-cli" => Some(&["keyhaven", "keyhaven-server"]),
            _ => None,
        };
        let Some(allowed) = allowed else { continue };
        for (table, deps) in dependency_tables(&doc) {
            if table == "dev-dependencies" {
                continue;
            }
            for dep in deps.keys() {
                if dep.starts_with("keyhaven") && !allowed.contains(&dep.as_str()) {
                    problems.push(format!(
                        "{name} depends on {dep}, but may depend only on {} among our crates",
                        if allowed.is_empty() {
                            "none".to_owned()
                        } else {
                            allowed.join(", ")
                        }
                    ));
                }
            }
        }
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every Rust file starts with a `//!` line saying what it is for; product code has no stubs.
pub(crate) fn check_sources(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "examples", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut problems = Vec::new();
    for path in files {
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            problems.push(format!(
                "{shown}: start the file with a `//!` line saying what it is for"
            ));
        }
        let in_tests = shown.contains("/tests/") || shown.starts_with("tests/");
        let stub_words = [concat!("todo", "!("), concat!("unimplemented", "!(")];
        if !in_tests && stub_words.iter().any(|w| text.contains(w)) {
            problems.push(format!("{shown}: a stub macro is left in product code"));
        }
    }
    problems
}

/// All checks.
pub(crate) fn check_all(root: &Path) -> Vec<String> {
    let mut all = check_manifests(root);
    all.extend(check_layers(root));
    all.extend(check_sources(root));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_clean(problems: Vec<String>) {
        assert!(
            problems.is_empty(),
            "tidy problems:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn manifests_opt_in_and_take_versions_from_the_root() {
        assert_clean(check_manifests(&crate::root()));
    }

    #[test]
    fn crate_layers_hold() {
        assert_clean(check_layers(&crate::root()));
    }

    #[test]
    fn sources_are_documented_and_stub_free() {
        assert_clean(check_sources(&crate::root()));
    }

    #[test]
    fn the_checks_catch_violations() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let core = dir.join("crates/core");
        fs::create_dir_all(core.join("src")).unwrap();
        fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\nmembers = [\"crates/core\"]\n",
        )
        .unwrap();
        fs::write(
            core.join("Cargo.toml"),
            "[package]\nname = \"keyhaven-core\"\n[dependencies]\nkeyhaven = { path = \"../facade\" }\nserde = \"1\"\n",
        )
        .unwrap();
        fs::write(
            core.join("src/lib.rs"),
            format!("fn f() {{ {}) }}\n", concat!("todo", "!(")),
        )
        .unwrap();
        let problems = check_all(dir);
        let joined = problems.join("\n");
        assert!(joined.contains("[lints] workspace = true"), "{joined}");
        assert!(joined.contains("serde must be"), "{joined}");
        assert!(
            joined.contains("keyhaven-core depends on keyhaven"),
            "{joined}"
        );
        assert!(joined.contains("`//!` line"), "{joined}");
        assert!(joined.contains("stub macro"), "{joined}");
    }
}
