//! keyhaven's project chores, run as `cargo xtask <command>`.
//!
//! - `test [ARGS...]`: every test, with the services they need made ready first
//!   (the test OAuth server's packages); missing services then fail the tests
//!   instead of skipping them. ARGS go to `cargo test`.
//! - `tidy`: the project's own rules (lints opted in, versions in the root,
//!   the crate dependency invariants, module docs, no stubs). The same checks
//!   run as `#[test]`s, so plain `cargo test` enforces them.
//! - `fuzz [--minutes N] [TARGET...]`: every property-based fuzz target
//!   (`crates/*/tests/fuzz_*.rs`) for N minutes each (default 10), with fresh seeds.
//! - `bench [--quick] [SECTION...]`: every benchmark, each against its reference in
//!   the same run; rewrites BENCHMARKS.md's figures and BENCHMARKS.json.

mod bench;
mod fuzz;
mod services;
mod tidy;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn root() -> PathBuf {
    // xtask lives one level below the workspace root.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

fn test(args: &[String]) -> Result<(), String> {
    let root = root();
    let mut envs = services::prepare(&root)?;
    envs.push(("KEYHAVEN_REQUIRE_SERVICES".into(), "1".into()));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--all-features"])
        .args(args);
    for (k, v) in &envs {
        cmd.env(k, v);
    }
    println!(
        "xtask: cargo test --workspace --all-features {}",
        args.join(" ")
    );
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test failed ({status})"))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => match test(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("xtask test: {e}");
                ExitCode::FAILURE
            }
        },
        // What `test` installs and starts, for running single tests by hand: prints
        // the variables to export: `eval "$(cargo xtask prepare | grep ^export)"`.
        Some("prepare") => match services::prepare(&root()) {
            Ok(envs) => {
                for (k, v) in envs {
                    println!("export {k}='{v}'");
                }
                println!("export KEYHAVEN_REQUIRE_SERVICES=1");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("xtask prepare: {e}");
                ExitCode::FAILURE
            }
        },
        Some("tidy") => {
            let problems = tidy::check_all(&root());
            if problems.is_empty() {
                println!("tidy: all checks pass");
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    println!("tidy: {p}");
                }
                ExitCode::FAILURE
            }
        }
        Some("fuzz") => match fuzz::run(&root(), &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("xtask fuzz: {e}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => match bench::run(&root(), &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("xtask bench: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            println!(
                "usage: cargo xtask test [CARGO TEST ARGS...] | cargo xtask prepare | cargo xtask tidy | cargo xtask fuzz [--minutes N] [TARGET...] | cargo xtask bench [--quick] [cache|store|proxy|server|serve|storms...]"
            );
            ExitCode::from(2)
        }
    }
}
