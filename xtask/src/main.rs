//! keyhaven's project chores, run as `cargo xtask <command>`.
//!
//! - `tidy`: the project's own rules (lints opted in, versions in the root,
//!   the crate dependency invariants, module docs, no stubs). The same checks
//!   run as `#[test]`s, so plain `cargo test` enforces them.

mod tidy;

use std::path::PathBuf;
use std::process::ExitCode;

fn root() -> PathBuf {
    // xtask lives one level below the workspace root.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
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
        _ => {
            println!("usage: cargo xtask tidy");
            ExitCode::from(2)
        }
    }
}
