//! `cargo xtask fuzz [--minutes N] [TARGET...]`: runs every property-based fuzz
//! target (`crates/*/tests/fuzz_*.rs`) for N minutes each (default 10), again and
//! again with fresh random seeds, each run's `PROPTEST_CASES` sized so that a run
//! takes about a minute. Debug builds, so that arithmetic overflow is caught too.
//! Stops a target at its first failure, prints proptest's minimal failing input,
//! and fails at the end if any target failed.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One fuzz target: the package and its test file's name.
#[derive(Debug, Clone)]
struct Target {
    package: String,
    test: String,
}

/// Every `crates/*/tests/fuzz_*.rs`, with the package it belongs to.
fn discover(root: &Path) -> Vec<Target> {
    let mut targets = Vec::new();
    let Ok(crates) = fs::read_dir(root.join("crates")) else {
        return targets;
    };
    let mut dirs: Vec<_> = crates.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        let Some(package) = fs::read_to_string(dir.join("Cargo.toml"))
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| {
                t.get("package")
                    .and_then(|p| p.get("name"))
                    .and_then(|n| n.as_str())
                    .map(str::to_owned)
            })
        else {
            continue;
        };
        let Ok(tests) = fs::read_dir(dir.join("tests")) else {
            continue;
        };
        let mut names: Vec<String> = tests
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("fuzz_") && n.ends_with(".rs"))
            .map(|n| n.trim_end_matches(".rs").to_owned())
            .collect();
        names.sort();
        for test in names {
            targets.push(Target {
                package: package.clone(),
                test,
            });
        }
    }
    targets
}

/// What `--minutes` and the target names say.
fn parse(args: &[String]) -> Result<(f64, Vec<String>), String> {
    let mut minutes = 10.0;
    let mut only = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--minutes" {
            let value = args
                .next()
                .ok_or("--minutes needs a number, such as --minutes 1")?;
            minutes = value
                .parse::<f64>()
                .ok()
                .filter(|m| m.is_finite() && *m > 0.0)
                .ok_or_else(|| format!("--minutes {value}: give a positive number of minutes"))?;
        } else if let Some(value) = arg.strip_prefix("--minutes=") {
            minutes = value
                .parse::<f64>()
                .ok()
                .filter(|m| m.is_finite() && *m > 0.0)
                .ok_or_else(|| format!("--minutes={value}: give a positive number of minutes"))?;
        } else if arg.starts_with('-') {
            return Err(format!(
                "unknown option {arg}; usage: cargo xtask fuzz [--minutes N] [TARGET...]"
            ));
        } else {
            only.push(arg.clone());
        }
    }
    Ok((minutes, only))
}

fn cargo(root: &Path, target: &Target) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["test", "-q", "-p", &target.package, "--test", &target.test])
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// What one target did.
#[derive(Debug)]
struct Outcome {
    runs: u32,
    cases: u64,
    took: Duration,
    failure: Option<String>,
}

/// Runs `target` again and again until `budget` is spent.
fn fuzz_one(root: &Path, target: &Target, budget: Duration) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        runs: 0,
        cases: 0,
        took: Duration::ZERO,
        failure: None,
    };
    let mut cases: u64 = 1_000;
    // Aim for runs of about a minute, so that a long budget still gets fresh seeds.
    let per_run = Duration::from_secs(60).min(budget);
    loop {
        let left = budget.saturating_sub(started.elapsed());
        if left < Duration::from_secs(2) && outcome.runs > 0 {
            break;
        }
        let run_started = Instant::now();
        let output = cargo(root, target)
            .env("PROPTEST_CASES", cases.to_string())
            .output();
        let took = run_started.elapsed();
        outcome.runs += 1;
        match output {
            Ok(out) if out.status.success() => {
                outcome.cases += cases;
                println!(
                    "  {}/{}: run {} passed, {cases} cases per property in {:.1} s",
                    target.package,
                    target.test,
                    outcome.runs,
                    took.as_secs_f64()
                );
            }
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                outcome.failure = Some(text);
                break;
            }
            Err(e) => {
                outcome.failure = Some(format!("cannot run cargo: {e}"));
                break;
            }
        }
        // Size the next run from this one's pace.
        let left = budget.saturating_sub(started.elapsed());
        let aim = per_run.min(left).as_secs_f64();
        let pace = cases as f64 / took.as_secs_f64().max(0.01);
        cases = ((pace * aim) as u64).clamp(10, 10_000_000);
    }
    outcome.took = started.elapsed();
    outcome
}

/// `cargo xtask fuzz`.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let (minutes, only) = parse(args)?;
    let mut targets = discover(root);
    if !only.is_empty() {
        targets.retain(|t| only.contains(&t.test));
        if targets.is_empty() {
            return Err(format!(
                "no fuzz target named {}; they are the crates/*/tests/fuzz_*.rs files",
                only.join(", ")
            ));
        }
    }
    if targets.is_empty() {
        return Err("no fuzz targets found (crates/*/tests/fuzz_*.rs)".into());
    }
    // Build first, so that the budget is spent fuzzing.
    for target in &targets {
        let status = cargo(root, target)
            .arg("--no-run")
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("{}/{} does not build", target.package, target.test));
        }
    }
    let budget = Duration::from_secs_f64(minutes * 60.0);
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for target in &targets {
        println!(
            "xtask fuzz: {}/{} for {minutes} minute(s)",
            target.package, target.test
        );
        let outcome = fuzz_one(root, target, budget);
        if let Some(failure) = &outcome.failure {
            println!("{failure}");
            failed.push(format!("{}/{}", target.package, target.test));
        }
        summary.push((target.clone(), outcome));
    }
    println!("\nxtask fuzz: summary (cases are per property)");
    for (target, o) in &summary {
        println!(
            "  {:<32} {:>4} runs {:>10} cases {:>7.1} s  {}",
            format!("{}/{}", target.package, target.test),
            o.runs,
            o.cases,
            o.took.as_secs_f64(),
            if o.failure.is_some() { "FAILED" } else { "ok" }
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failures in {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fuzz_target_is_found() {
        let root = crate::root();
        let targets = discover(&root);
        let names: Vec<String> = targets
            .iter()
            .map(|t| format!("{}/{}", t.package, t.test))
            .collect();
        for expected in [
            "keyhaven-core/fuzz_ids",
            "keyhaven-server/fuzz_http",
            "keyhaven/fuzz_callback",
        ] {
            assert!(names.iter().any(|n| n == expected), "{names:?}");
        }
    }

    #[test]
    fn minutes_are_parsed() {
        assert_eq!(parse(&[]).unwrap().0, 10.0);
        let (m, only) = parse(&["--minutes".into(), "1.5".into(), "fuzz_ids".into()]).unwrap();
        assert_eq!((m, only), (1.5, vec!["fuzz_ids".to_owned()]));
        assert!(parse(&["--minutes".into(), "0".into()]).is_err());
        assert!(parse(&["--fast".into()]).is_err());
    }
}
