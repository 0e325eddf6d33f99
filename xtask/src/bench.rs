//! `cargo xtask bench [--quick] [SECTION...]`: runs every benchmark, each with its
//! reference measured in the same run, and rewrites BENCHMARKS.md's generated
//! blocks (the machine, the figures, the ratios against the targets and what
//! changed since the last run) and BENCHMARKS.json (the figures, for the next
//! comparison). The prose between the blocks is written by hand and kept.
//!
//! A generated block sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
//! A section that fails is reported in its block (and the command fails at the
//! end); a section not asked for keeps its block and its recorded figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The sections, in the order they run.
const SECTIONS: [&str; 6] = ["cache", "store", "proxy", "server", "serve", "storms"];

/// One measured figure, kept in BENCHMARKS.json to compare with the next run.
#[derive(Debug, Clone)]
struct Figure {
    label: String,
    value: f64,
    unit: &'static str,
    /// Whether a larger value is better (throughput) or worse (time, memory).
    higher_is_better: bool,
}

/// A target and whether this run met it.
#[derive(Debug)]
struct Verdict {
    target: String,
    figure: String,
    met: bool,
}

/// What a section produced.
#[derive(Debug, Default)]
struct Outcome {
    commands: Vec<String>,
    /// The figures' markdown (tables and a line or two).
    body: String,
    figures: BTreeMap<String, Figure>,
    verdicts: Vec<Verdict>,
}

impl Outcome {
    fn figure(&mut self, key: &str, label: &str, value: f64, unit: &'static str, higher: bool) {
        self.figures.insert(
            key.to_owned(),
            Figure {
                label: label.to_owned(),
                value,
                unit,
                higher_is_better: higher,
            },
        );
    }

    fn verdict(&mut self, target: impl Into<String>, figure: impl Into<String>, met: bool) {
        self.verdicts.push(Verdict {
            target: target.into(),
            figure: figure.into(),
            met,
        });
    }
}

/// How long and how often: `--quick` for a check that everything runs.
#[derive(Debug, Clone, Copy)]
struct Settings {
    quick: bool,
}

impl Settings {
    fn load_env(self) -> Vec<(String, String)> {
        let (seconds, rounds) = if self.quick { ("1", "1") } else { ("3", "5") };
        vec![
            ("KEYHAVEN_BENCH_SECONDS".into(), seconds.into()),
            ("KEYHAVEN_BENCH_ROUNDS".into(), rounds.into()),
        ]
    }

    /// Criterion's own arguments.
    fn criterion_args(self) -> Vec<String> {
        if self.quick {
            ["--warm-up-time", "1", "--measurement-time", "2"]
                .map(String::from)
                .to_vec()
        } else {
            Vec::new()
        }
    }
}

/// Runs a cargo command in `root` with `envs`, echoing its output as it comes;
/// returns what it printed on stdout.
fn cargo(root: &Path, args: &[String], envs: &[(String, String)]) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("xtask bench: cargo {}", args.join(" "));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(args).stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            out.push_str(&line);
            out.push('\n');
        }
    }
    let status = child.wait().map_err(|e| format!("cargo: {e}"))?;
    if status.success() {
        Ok(out)
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Criterion's medians (ns) by full id (`group/function`), read from
/// `target/criterion/**/new/{benchmark,estimates}.json`.
fn criterion_medians(root: &Path) -> BTreeMap<String, f64> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, f64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "new") {
                let read = |f: &str| -> Option<Value> {
                    serde_json::from_slice(&std::fs::read(path.join(f)).ok()?).ok()
                };
                if let (Some(b), Some(e)) = (read("benchmark.json"), read("estimates.json"))
                    && let (Some(id), Some(m)) = (
                        b["full_id"].as_str(),
                        e["median"]["point_estimate"].as_f64(),
                    )
                {
                    out.insert(id.to_owned(), m);
                }
            } else {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&root.join("target/criterion"), &mut out);
    out
}

fn median(medians: &BTreeMap<String, f64>, id: &str) -> Result<f64, String> {
    medians
        .get(id)
        .copied()
        .ok_or_else(|| format!("criterion wrote no result for `{id}`"))
}

fn ns(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1} µs", v / 1000.0)
    } else {
        format!("{v:.1} ns")
    }
}

fn cache(root: &Path, s: Settings, envs: &[(String, String)]) -> Result<Outcome, String> {
    let mut args = strings(&["bench", "-p", "keyhaven", "--bench", "cache", "--"]);
    args.extend(s.criterion_args());
    cargo(root, &args, envs)?;
    let m = criterion_medians(root);
    let kh = median(&m, "credentials/keyhaven cached credentials(id)")?;
    let bare = median(&m, "credentials/bare HashMap get + clone")?;
    let yup = median(&m, "credentials/yup-oauth2 cached token()")?;
    let mut o = Outcome {
        commands: vec!["cargo bench -p keyhaven --bench cache".into()],
        ..Outcome::default()
    };
    o.body = format!(
        "| bench | median | vs keyhaven |\n|---|---:|---:|\n\
         | `Keyhaven::credentials(id)`, fresh token, served from the in-process cache | **{}** | 1.00x |\n\
         | bare `HashMap<String, Credentials>` get + clone | {} | {:.2}x |\n\
         | peer: yup-oauth2 `Authenticator::token(scopes)`, token cached in its memory storage | {} | {:.2}x |\n",
        ns(kh),
        ns(bare),
        bare / kh,
        ns(yup),
        yup / kh
    );
    o.figure(
        "cache.keyhaven_ns",
        "cached credentials(id)",
        kh,
        "ns",
        false,
    );
    o.figure(
        "cache.bare_ns",
        "bare HashMap get + clone",
        bare,
        "ns",
        false,
    );
    o.figure(
        "cache.yup_ns",
        "yup-oauth2 cached token()",
        yup,
        "ns",
        false,
    );
    o.verdict("cached `credentials(id)` ≤ 100 ns", ns(kh), kh <= 100.0);
    o.verdict(
        "cached `credentials(id)` ≤ 4x a bare HashMap read",
        ratio_text(kh / bare, 4.0),
        kh / bare <= 4.0,
    );
    Ok(o)
}

fn store(root: &Path, s: Settings, envs: &[(String, String)]) -> Result<Outcome, String> {
    let mut args = strings(&[
        "bench",
        "-p",
        "keyhaven-store",
        "--bench",
        "store",
        "--features",
        "sqlite,postgres",
        "--",
    ]);
    args.extend(s.criterion_args());
    cargo(root, &args, envs)?;
    let m = criterion_medians(root);
    let mut o = Outcome {
        commands: vec![
            "cargo bench -p keyhaven-store --bench store --features sqlite,postgres".into(),
        ],
        ..Outcome::default()
    };
    o.body = "| bench | store median | bare median | ratio | target |\n|---|---:|---:|---:|---|\n"
        .into();
    for (db, group, bare_id, limit) in [
        (
            "sqlite",
            "sqlite 1M accounts",
            "bare rusqlite lookup + AES-GCM decrypt",
            1.5,
        ),
        (
            "postgres",
            "postgres 1M accounts",
            "bare sqlx point query",
            1.2,
        ),
    ] {
        let get = median(&m, &format!("{group}/Store::get_account_and_credentials"))?;
        let bare = median(&m, &format!("{group}/{bare_id}"))?;
        let list = median(
            &m,
            &format!("{group}/Store::list_accounts by entity and label"),
        )?;
        let ratio = get / bare;
        let _ = writeln!(
            o.body,
            "| {db}: `get_account_and_credentials` vs {bare_id} | {} | {} | **{ratio:.2}x** | ≤ {limit}x |\n\
             | {db}: `list_accounts` by entity and label | {} | | | < 1 ms |",
            ns(get),
            ns(bare),
            ns(list)
        );
        o.figure(
            &format!("store.{db}.get_ns"),
            &format!("{db} get_account_and_credentials"),
            get,
            "ns",
            false,
        );
        o.figure(
            &format!("store.{db}.bare_ns"),
            &format!("{db} bare point read"),
            bare,
            "ns",
            false,
        );
        o.figure(
            &format!("store.{db}.list_ns"),
            &format!("{db} listing by entity and label"),
            list,
            "ns",
            false,
        );
        o.verdict(
            format!("{db}: store read ≤ {limit}x the bare query (1M accounts)"),
            ratio_text(ratio, limit),
            ratio <= limit,
        );
        o.verdict(
            format!("{db}: listing by entity and label < 1 ms (1M accounts)"),
            ns(list),
            list < 1_000_000.0,
        );
    }
    Ok(o)
}

/// A load generator's result file: `target/bench-results/NAME.json`.
fn load_rows(root: &Path, name: &str) -> Result<(Value, Vec<Value>), String> {
    let path = root.join(format!("target/bench-results/{name}.json"));
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    Ok((v, rows))
}

/// A throughput table of a load-generator result (first row = the reference).
fn load_table(settings: &Value, rows: &[Value]) -> String {
    let mut t = format!(
        "{} tasks, {} rounds of {} s, interleaved, medians of the rounds; \"its rounds\": \
         the lowest and highest ratio of a round to the first way's round of the same pass, \
         how far this machine's noise moved it:\n\n\
         | way | requests/s | p50 | p99 | vs first | its rounds | one at a time: p50 | vs first |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        settings["concurrency"], settings["rounds"], settings["seconds"]
    );
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} µs | {:.0} µs | **{:.2}x** | {} | {:.0} µs | {:+.0} µs |",
            r["way"].as_str().unwrap_or("?"),
            f("rps"),
            f("p50_us"),
            f("p99_us"),
            f("throughput_ratio"),
            round_spread(r).map_or(String::new(), |(low, high)| format!("{low:.2}–{high:.2}x")),
            f("alone_p50_us"),
            f("alone_p50_delta_us"),
        );
    }
    t
}

/// The row whose way starts with `prefix`.
fn row<'a>(rows: &'a [Value], prefix: &str) -> Result<&'a Value, String> {
    rows.iter()
        .find(|r| r["way"].as_str().is_some_and(|w| w.starts_with(prefix)))
        .ok_or_else(|| format!("no result for `{prefix}`"))
}

fn num(r: &Value, k: &str) -> f64 {
    r[k].as_f64().unwrap_or(f64::NAN)
}

/// The lowest and highest of a row's round ratios, when it has them.
fn round_spread(r: &Value) -> Option<(f64, f64)> {
    let ratios: Vec<f64> = r["round_ratios"]
        .as_array()?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let low = ratios.iter().copied().reduce(f64::min)?;
    let high = ratios.iter().copied().reduce(f64::max)?;
    Some((low, high))
}

/// A ratio as a verdict against `target` shows it: two decimals, or three when two
/// would round it onto the target (0.9486 is not "0.95x" against a 0.95x target).
fn ratio_text(ratio: f64, target: f64) -> String {
    let places = if format!("{ratio:.2}") == format!("{target:.2}") && ratio != target {
        3
    } else {
        2
    };
    format!("{ratio:.places$}x")
}

/// A throughput ratio as a verdict against `target` shows it ([`ratio_text`]), with
/// its rounds' spread.
fn ratio_shown(r: &Value, target: f64) -> String {
    let ratio = ratio_text(num(r, "throughput_ratio"), target);
    match round_spread(r) {
        Some((low, high)) => format!("{ratio} (rounds {low:.2}–{high:.2}x)"),
        None => ratio,
    }
}

/// The throughput figures of every row.
fn load_figures(o: &mut Outcome, section: &str, rows: &[Value]) {
    for (i, r) in rows.iter().enumerate() {
        let way = r["way"].as_str().unwrap_or("?");
        o.figure(
            &format!("{section}.{i}.rps"),
            way,
            num(r, "rps"),
            "req/s",
            true,
        );
        o.figure(
            &format!("{section}.{i}.ratio"),
            &format!("{way} (vs first)"),
            num(r, "throughput_ratio"),
            "x",
            true,
        );
    }
}

/// Runs the load-generator bench `name` of keyhaven-tests; returns what it printed,
/// its rows, and an outcome holding its command, table and figures.
fn load_bench(
    root: &Path,
    s: Settings,
    envs: &[(String, String)],
    name: &str,
) -> Result<(String, Vec<Value>, Outcome), String> {
    let mut envs = envs.to_vec();
    envs.extend(s.load_env());
    let out = cargo(
        root,
        &strings(&["bench", "-p", "keyhaven-tests", "--bench", name]),
        &envs,
    )?;
    let (settings, rows) = load_rows(root, name)?;
    let mut o = Outcome {
        commands: vec![format!("cargo bench -p keyhaven-tests --bench {name}")],
        body: load_table(&settings, &rows),
        ..Outcome::default()
    };
    load_figures(&mut o, name, &rows);
    Ok((out, rows, o))
}

fn proxy(root: &Path, s: Settings, envs: &[(String, String)]) -> Result<Outcome, String> {
    let (_, rows, mut o) = load_bench(root, s, envs, "proxy")?;
    let lib = row(&rows, "library kh.request (audit: log only)")?;
    o.verdict(
        "library request path ≥ 0.95x raw reqwest's throughput",
        ratio_shown(lib, 0.95),
        num(lib, "throughput_ratio") >= 0.95,
    );
    o.verdict(
        "library request path ≤ +50 µs at the median (one at a time)",
        format!("{:+.0} µs", num(lib, "alone_p50_delta_us")),
        num(lib, "alone_p50_delta_us") <= 50.0,
    );
    let pass = row(&rows, "server passthrough")?;
    o.verdict(
        "server passthrough route ≥ 0.5x raw reqwest's throughput",
        ratio_shown(pass, 0.5),
        num(pass, "throughput_ratio") >= 0.5,
    );
    Ok(o)
}

/// The three server targets against a bare axum handler, for a result's rows.
fn server_verdicts(o: &mut Outcome, rows: &[Value], context: &str) -> Result<(), String> {
    for (prefix, what, target) in [
        ("GET /api/v1/connectedAccounts/{id}", "account read", 0.5),
        (
            "GET /api/v1/connectedAccounts?user_uuid",
            "listing by entity",
            0.35,
        ),
        (
            "GET /api/v1/connectedAccounts/{id}/credentials",
            "audited credentials read",
            0.4,
        ),
    ] {
        let r = row(rows, prefix)?;
        let ratio = num(r, "throughput_ratio");
        o.verdict(
            format!("{context}: {what} ≥ {target}x a bare axum handler"),
            ratio_shown(r, target),
            ratio >= target,
        );
    }
    Ok(())
}

fn server(root: &Path, s: Settings, envs: &[(String, String)]) -> Result<Outcome, String> {
    let (out, rows, mut o) = load_bench(root, s, envs, "server")?;
    if let Some(line) = out.lines().find(|l| l.starts_with("audit lines written")) {
        let _ = writeln!(
            o.body,
            "\n{line} (each audited read, granted, is one line)."
        );
    }
    server_verdicts(&mut o, &rows, "in-process server, 200 accounts")?;
    Ok(o)
}

fn serve(root: &Path, s: Settings, envs: &[(String, String)]) -> Result<Outcome, String> {
    let mut envs = envs.to_vec();
    envs.extend(s.load_env());
    if s.quick {
        envs.push(("KEYHAVEN_BENCH_QUICK".into(), "1".into()));
    }
    cargo(
        root,
        &strings(&["bench", "-p", "keyhaven-cli", "--bench", "serve"]),
        &envs,
    )?;
    let path = root.join("target/bench-results/serve.json");
    let v: Value = serde_json::from_slice(
        &std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut o = Outcome {
        commands: vec!["cargo bench -p keyhaven-cli --bench serve".into()],
        ..Outcome::default()
    };
    o.body = "| store | accounts | start (until /readyz answers 200) | RSS idle | RSS peak under load |\n|---|---:|---:|---:|---:|\n".into();
    let runs = v["runs"].as_array().cloned().unwrap_or_default();
    for r in &runs {
        let name = r["name"].as_str().unwrap_or("?");
        let _ = writeln!(
            o.body,
            "| {} | {} | {:.0} ms | {:.1} MiB | {:.1} MiB |",
            r["store"].as_str().unwrap_or("?"),
            r["accounts"],
            num(r, "start_ms"),
            num(r, "rss_idle_mib"),
            num(r, "rss_peak_mib"),
        );
        o.figure(
            &format!("serve.{name}.start_ms"),
            &format!("{name}: start"),
            num(r, "start_ms"),
            "ms",
            false,
        );
        o.figure(
            &format!("serve.{name}.rss_idle_mib"),
            &format!("{name}: RSS idle"),
            num(r, "rss_idle_mib"),
            "MiB",
            false,
        );
        o.figure(
            &format!("serve.{name}.rss_peak_mib"),
            &format!("{name}: RSS peak"),
            num(r, "rss_peak_mib"),
            "MiB",
            false,
        );
    }
    for r in &runs {
        let name = r["name"].as_str().unwrap_or("?");
        let rows = r["rows"].as_array().cloned().unwrap_or_default();
        let _ = write!(
            o.body,
            "\n`keyhaven serve`, {} with {} accounts; {}",
            r["store"].as_str().unwrap_or("?"),
            r["accounts"],
            load_table(&r["settings"], &rows)
        );
        load_figures(&mut o, &format!("serve.{name}"), &rows);
        server_verdicts(
            &mut o,
            &rows,
            &format!(
                "`keyhaven serve`, {} with {} accounts",
                r["store"].as_str().unwrap_or("?"),
                r["accounts"]
            ),
        )?;
    }
    Ok(o)
}

fn storms(root: &Path, _s: Settings, envs: &[(String, String)]) -> Result<Outcome, String> {
    let out = cargo(
        root,
        &strings(&[
            "test",
            "--release",
            "-p",
            "keyhaven-tests",
            "-p",
            "keyhaven-cli",
            "--test",
            "refresh_storm",
            "--",
            "--nocapture",
            "--test-threads",
            "1",
        ]),
        envs,
    )?;
    let mut o = Outcome {
        commands: vec!["cargo test --release -p keyhaven-tests -p keyhaven-cli --test refresh_storm -- --nocapture --test-threads 1".into()],
        ..Outcome::default()
    };
    o.body = "| where | store | storm | instances | calls | token requests | time | bare reqwest token requests, same run | ratio |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n".into();
    let mut found = 0;
    for line in out.lines() {
        // With --nocapture the line may follow the test's own `test NAME ... `.
        let Some(json) = line.find("STORM {").map(|at| &line[at + "STORM ".len()..]) else {
            continue;
        };
        let Ok(r) = serde_json::from_str::<Value>(json) else {
            continue;
        };
        found += 1;
        let (place, db, kind) = (
            r["where"].as_str().unwrap_or("?"),
            r["store"].as_str().unwrap_or("?"),
            r["storm"].as_str().unwrap_or("?"),
        );
        let instances = r["instances"].as_u64().unwrap_or(0);
        let secs = num(&r, "seconds");
        let bare = r["bare_seconds"].as_f64();
        let ratio = bare.map(|b| secs / b);
        let _ = writeln!(
            o.body,
            "| {place} | {db} | {kind} | {instances} | {} | {} | **{:.0} ms** | {} | {} |",
            r["calls"],
            r["token_requests"],
            secs * 1000.0,
            bare.map_or(String::new(), |b| format!("{:.0} ms", b * 1000.0)),
            ratio.map_or(String::new(), |x| format!("**{x:.2}x**")),
        );
        let key = format!("storms.{place}.{db}.{kind}.{instances}");
        o.figure(
            &format!("{key}.ms"),
            &format!("{place} {db} {kind} ×{instances}"),
            secs * 1000.0,
            "ms",
            false,
        );
        // Rows shown to explain others (the storm without a database) are not judged.
        let judged = r["judged"].as_bool() != Some(false);
        if let Some(x) = ratio.filter(|_| judged) {
            o.verdict(
                format!("{place} on {db}: {kind}, {instances} instance(s), ≤ 1.5x the same number of bare token requests"),
                ratio_text(x, 1.5),
                x <= 1.5,
            );
        }
    }
    if found == 0 {
        return Err("the storm tests printed no STORM line (is PostgreSQL up?)".into());
    }
    Ok(o)
}

type Runner = fn(&Path, Settings, &[(String, String)]) -> Result<Outcome, String>;

fn runner(section: &str) -> Runner {
    match section {
        "cache" => cache,
        "store" => store,
        "proxy" => proxy,
        "server" => server,
        "serve" => serve,
        _ => storms,
    }
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// When and at which commit (with uncommitted changes or not), and the machine.
fn machine(root: &Path) -> (String, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let root_s = root.to_string_lossy();
    let commit = command_output("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"]);
    let dirty = !command_output(
        "git",
        &[
            "-C",
            &root_s,
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_empty();
    let when = format!(
        "{} UTC, commit `{commit}`{}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M"]),
        if dirty {
            " with uncommitted changes"
        } else {
            ""
        }
    );
    let machine = format!(
        "{cpu}, {cores} cores, {mem_gib:.0} GiB; {}; PostgreSQL {}",
        command_output("rustc", &["-V"]),
        command_output(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-tAc",
                "SHOW server_version",
            ],
        ),
    );
    (when, machine)
}

/// What BENCHMARKS.json recorded under `key` (verdicts, dates or figures by
/// section or figure), to keep what this run does not replace.
fn kept(old: &Value, key: &str) -> BTreeMap<String, Value> {
    old[key]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Replaces the block `name` of `doc` (or appends it).
fn replace_block(doc: &str, name: &str, content: &str) -> String {
    let (open, close) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let block = format!("{open}\n{}\n{close}", content.trim_end());
    match (doc.find(&open), doc.find(&close)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &doc[..a], &doc[b + close.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "ns" => ns(v),
        "x" => format!("{v:.2}x"),
        "req/s" => format!("{v:.0} req/s"),
        _ => format!("{v:.1} {unit}"),
    }
}

/// What moved since the figures recorded last time: changes of 10% or more, each
/// marked when it was recorded on another machine than `machine` (this run's).
fn changes(old: &Value, new: &BTreeMap<String, Figure>, machine: &str) -> String {
    let mut t = String::new();
    let mut rows = 0;
    let mut elsewhere = 0;
    for (key, f) in new {
        let recorded = &old["figures"][key];
        let Some(before) = recorded["value"].as_f64() else {
            continue;
        };
        if before == 0.0 || !before.is_finite() || !f.value.is_finite() {
            continue;
        }
        let change = f.value / before - 1.0;
        if change.abs() < 0.10 {
            continue;
        }
        let better = (change > 0.0) == f.higher_is_better;
        if rows == 0 {
            t.push_str(
                "| figure | before | now | change | before: measured |\n|---|---:|---:|---:|---|\n",
            );
        }
        rows += 1;
        let other = recorded["machine"]
            .as_str()
            .is_some_and(|before| before != machine);
        elsewhere += usize::from(other);
        // A section not run last time keeps older figures: say which run each came from.
        let section = key.split('.').next().unwrap_or(key);
        let when = old["measured"][section]
            .as_str()
            .or_else(|| old["run"].as_str())
            .unwrap_or("unknown");
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:+.0}% ({}){} | {when} |",
            f.label,
            fmt_value(before, f.unit),
            fmt_value(f.value, f.unit),
            change * 100.0,
            if better { "better" } else { "worse" },
            if other { ", other machine" } else { "" }
        );
    }
    if elsewhere > 0 {
        t.push_str("\n\"Other machine\": the figure before was measured on another machine (or with another rustc or PostgreSQL); absolute figures are not comparable across machines, ratios measured within one run more nearly so.\n");
    }
    let Some(since) = old["run"].as_str() else {
        return "No figures were recorded before this run.".to_owned();
    };
    if rows == 0 {
        format!("Against the figures recorded before ({since}): no figure moved by 10% or more.")
    } else {
        format!(
            "Against the figures recorded before (the last run, {since}, or for a section it did not run, the run named in the last column), the figures that moved by 10% or more (this machine's noise between runs is about ±15%):\n\n{t}"
        )
    }
}

fn parse(args: &[String]) -> Result<(Settings, Vec<String>), String> {
    let mut quick = false;
    let mut sections = Vec::new();
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            s if SECTIONS.contains(&s) => sections.push(s.to_owned()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}: give --quick and sections among {}",
                    SECTIONS.join(", ")
                ));
            }
        }
    }
    if sections.is_empty() {
        sections = SECTIONS.iter().map(|s| (*s).to_owned()).collect();
    }
    Ok((Settings { quick }, sections))
}

pub(crate) fn run(root: &Path, args: &[String]) -> Result<(), String> {
    let (settings, sections) = parse(args)?;
    let mut envs = Vec::new();
    if std::env::var("KEYHAVEN_BENCH_DATABASE_URL").is_err() {
        crate::services::postgres_server()?;
        envs.push((
            "KEYHAVEN_BENCH_DATABASE_URL".to_owned(),
            "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
        ));
    }
    if sections.iter().any(|s| s == "storms") {
        envs.push((
            "KEYHAVEN_TEST_DATABASE_URL".to_owned(),
            crate::services::postgres()?,
        ));
        envs.push(("KEYHAVEN_REQUIRE_SERVICES".to_owned(), "1".to_owned()));
    }
    let results_dir = root.join("target/bench-results");
    let _ = std::fs::remove_dir_all(&results_dir);
    let md_path = root.join("BENCHMARKS.md");
    let json_path = root.join("BENCHMARKS.json");
    let mut doc =
        std::fs::read_to_string(&md_path).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let old: Value = std::fs::read(&json_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let mut figures: BTreeMap<String, Figure> = BTreeMap::new();
    let mut verdicts: BTreeMap<&str, Vec<Verdict>> = BTreeMap::new();
    let mut failed = Vec::new();
    for section in &sections {
        println!("xtask bench: section {section}");
        match runner(section)(root, settings, &envs) {
            Ok(o) => {
                let content = format!(
                    "```sh\n{}\n```\n\n{}",
                    o.commands.join("\n"),
                    o.body.trim_end()
                );
                doc = replace_block(&doc, section, &content);
                figures.extend(o.figures);
                verdicts.insert(section.as_str(), o.verdicts);
            }
            Err(e) => {
                println!("xtask bench: {section} failed: {e}");
                doc = replace_block(
                    &doc,
                    section,
                    &format!("**Not measured in the last run**: {e}."),
                );
                failed.push(section.clone());
            }
        }
    }
    // Sections not run this time keep their recorded verdicts and figures.
    let mut all_verdicts: BTreeMap<String, Value> = kept(&old, "verdicts");
    for section in &sections {
        all_verdicts.remove(section);
    }
    for (section, vs) in &verdicts {
        let list: Vec<Value> = vs
            .iter()
            .map(|v| json!({"target": v.target, "figure": v.figure, "met": v.met}))
            .collect();
        all_verdicts.insert((*section).to_owned(), Value::Array(list));
    }
    let mut targets = String::from("| section | target | last measured | |\n|---|---|---:|---|\n");
    for section in SECTIONS {
        for v in all_verdicts
            .get(section)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                targets,
                "| {section} | {} | {} | {} |",
                v["target"].as_str().unwrap_or("?"),
                v["figure"].as_str().unwrap_or("?"),
                if v["met"].as_bool() == Some(true) {
                    "met"
                } else {
                    "**not met**"
                }
            );
        }
    }
    let (when, machine) = machine(root);
    let mut measured: BTreeMap<String, Value> = kept(&old, "measured");
    for section in verdicts.keys() {
        let note = if settings.quick { " (`--quick`)" } else { "" };
        measured.insert((*section).to_owned(), json!(format!("{when}{note}")));
    }
    for section in &failed {
        measured.remove(section);
    }
    let mut run = format!(
        "Machine: {machine}. The load generators, the servers and the upstreams share these cores.\n\n| section | measured |\n|---|---|\n"
    );
    for section in SECTIONS {
        let _ = writeln!(
            run,
            "| {section} | {} |",
            measured
                .get(section)
                .and_then(Value::as_str)
                .unwrap_or("not measured")
        );
    }
    doc = replace_block(&doc, "run", &run);
    doc = replace_block(&doc, "changes", &changes(&old, &figures, &machine));
    doc = replace_block(&doc, "targets", &targets);
    std::fs::write(&md_path, doc).map_err(|e| format!("{}: {e}", md_path.display()))?;
    // Figures of sections not run are kept, so the next comparison has them.
    let mut recorded: BTreeMap<String, Value> = kept(&old, "figures");
    for (k, f) in &figures {
        recorded.insert(
            k.clone(),
            json!({"label": f.label, "value": f.value, "unit": f.unit, "higher_is_better": f.higher_is_better, "machine": machine}),
        );
    }
    let out =
        json!({"run": when, "measured": measured, "figures": recorded, "verdicts": all_verdicts});
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())? + "\n",
    )
    .map_err(|e| format!("{}: {e}", json_path.display()))?;
    println!("xtask bench: BENCHMARKS.md and BENCHMARKS.json written");
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("these sections failed: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_replaced_in_place_or_appended() {
        let doc = "# B\n\nprose\n<!-- bench:cache -->\nold\n<!-- /bench:cache -->\nmore prose\n";
        let out = replace_block(doc, "cache", "new table");
        assert_eq!(
            out,
            "# B\n\nprose\n<!-- bench:cache -->\nnew table\n<!-- /bench:cache -->\nmore prose\n"
        );
        let out = replace_block(&out, "serve", "x");
        assert!(
            out.ends_with("<!-- bench:serve -->\nx\n<!-- /bench:serve -->\n"),
            "{out}"
        );
        assert!(out.contains("new table"));
    }

    #[test]
    fn changes_list_moves_of_ten_percent_with_their_direction() {
        let old = json!({"run": "r1", "figures": {
            "a": {"value": 100.0}, "b": {"value": 100.0}, "c": {"value": 100.0}}});
        let mut new = BTreeMap::new();
        let f = |v: f64, higher: bool| Figure {
            label: "l".into(),
            value: v,
            unit: "ns",
            higher_is_better: higher,
        };
        new.insert("a".to_owned(), f(105.0, false));
        new.insert("b".to_owned(), f(130.0, false));
        new.insert("c".to_owned(), f(130.0, true));
        new.insert("d".to_owned(), f(1.0, true));
        let t = changes(&old, &new, "cpu A");
        assert!(
            t.contains("+30% (worse)") && t.contains("+30% (better)"),
            "{t}"
        );
        assert_eq!(t.matches("| l |").count(), 2, "{t}");
        assert!(!t.contains("other machine"), "{t}");
        // Figures say where they were measured; a move from another machine is marked.
        let mut on_a = old.clone();
        on_a["figures"]["b"]["machine"] = json!("cpu A");
        on_a["figures"]["c"]["machine"] = json!("cpu B");
        let t = changes(&on_a, &new, "cpu B");
        assert!(t.contains("+30% (worse), other machine | r1 |"), "{t}");
        assert!(t.contains("+30% (better) | r1 |"), "{t}");
        assert!(t.contains("measured on another machine"), "{t}");
        // A figure whose section was last run before says when.
        let mut older = old.clone();
        older["measured"] = json!({"b": "r0"});
        let t = changes(&older, &new, "cpu A");
        assert!(t.contains("+30% (worse) | r0 |"), "{t}");
        assert!(t.contains("+30% (better) | r1 |"), "{t}");
    }

    #[test]
    fn a_ratio_next_to_its_target_shows_which_side_it_is_on() {
        let r = |ratio: f64| json!({"throughput_ratio": ratio});
        assert_eq!(ratio_shown(&r(0.9486), 0.95), "0.949x");
        assert_eq!(ratio_shown(&r(0.9512), 0.95), "0.951x");
        assert_eq!(ratio_shown(&r(0.95), 0.95), "0.95x");
        assert_eq!(ratio_shown(&r(0.8812), 0.95), "0.88x");
        assert_eq!(ratio_text(1.5041, 1.5), "1.504x");
        assert_eq!(ratio_text(1.78, 1.5), "1.78x");
    }

    #[test]
    fn arguments_name_sections() {
        let (s, secs) = parse(&["--quick".into(), "cache".into()]).unwrap();
        assert!(s.quick);
        assert_eq!(secs, ["cache"]);
        assert_eq!(parse(&[]).unwrap().1.len(), SECTIONS.len());
        assert!(parse(&["nope".into()]).is_err());
    }

    #[test]
    fn criterion_results_are_read_by_full_id() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("target/criterion/g/f x/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("benchmark.json"), r#"{"full_id":"g/f x"}"#).unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"median":{"point_estimate":42.5}}"#,
        )
        .unwrap();
        let m = criterion_medians(dir.path());
        assert_eq!(m.get("g/f x"), Some(&42.5));
        assert!(median(&m, "g/other").is_err());
    }
}
