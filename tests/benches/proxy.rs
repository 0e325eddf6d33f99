//! Requests with an account's credentials, measured against raw reqwest to the same
//! API in the same run: the library's `kh.request` and the server's passthrough
//! route (and its JSON proxy route), a GET of 322 bytes behind an API-key header.
//!
//! ```sh
//! cargo bench -p keyhaven-tests --bench proxy
//! ```
//!
//! A load generator of its own (no criterion: throughput under concurrency is the
//! question): 32 tasks send requests back to back for a few seconds per round; the
//! ways are measured in interleaved rounds (raw, library, server, raw, ...) so that
//! the machine's noise falls on all of them, and the medians of the rounds are kept.
//! The API runs on its own runtime thread, the keyhaven server on another, the load
//! on a third runtime: on a 2-core machine they share the cores, as they would
//! on one host. Results go to stdout and to `target/bench-results/proxy.json`.
//! `KEYHAVEN_BENCH_SECONDS` sets a round's length (default 3), `KEYHAVEN_BENCH_ROUNDS`
//! the rounds (default 3).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keyhaven::{AuditLog, ConnectionRequest, Keyhaven, MemoryStore, NewIntegration};
use keyhaven_server::{AdminKey, AppState, ServerConfig};
use keyhaven_tests::upstream::{FIXED_ANSWER, Upstream};

const KEY: &str = "kh-bench-admin";
const CONCURRENCY: usize = 32;

/// One way of sending the request.
#[derive(Clone)]
enum Way {
    Raw(reqwest::Client, String),
    Library(Keyhaven, String),
    Passthrough(reqwest::Client, String),
    JsonProxy(reqwest::Client, String),
}

impl Way {
    async fn once(&self) {
        let body = match self {
            Self::Raw(client, url) => {
                let r = client
                    .get(url)
                    .header("x-key", "sk-bench")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap()
            }
            Self::Library(kh, id) => {
                let r = kh.request(id).get("/fixed").send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap()
            }
            Self::Passthrough(client, url) => {
                let r = client
                    .get(url)
                    .header("x-api-key", KEY)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap()
            }
            Self::JsonProxy(client, url) => {
                let r = client
                    .post(url)
                    .header("x-api-key", KEY)
                    .header("content-type", "application/json")
                    .body(r#"{"path":"/fixed"}"#)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                return;
            }
        };
        assert_eq!(body.len(), FIXED_ANSWER.len());
    }
}

/// One round: requests per second and the latencies' median and p99 (µs).
struct Round {
    rps: f64,
    p50: f64,
    p99: f64,
}

async fn round(way: &Way, seconds: f64) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let way = way.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(4096);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    way.once().await;
                    times.push(t.elapsed().as_secs_f64() * 1e6);
                }
                times
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await.unwrap());
    }
    let took = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Round {
        rps: times.len() as f64 / took,
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Starts `f` on a runtime of its own, on its own thread; returns what it gives.
fn on_own_runtime<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tx.send(f().await).unwrap();
                std::future::pending::<()>().await;
            });
        })
        .unwrap();
    rx.recv().unwrap()
}

fn main() {
    let seconds: f64 = std::env::var("KEYHAVEN_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rounds: usize = std::env::var("KEYHAVEN_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // `cargo bench` passes --bench; a filter or --list would be criterion's.
    if std::env::args().any(|a| a == "--list") {
        println!("proxy: bench");
        return;
    }
    let api_url = on_own_runtime("upstream", || {
        Box::pin(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let api = Upstream::serve(listener);
            let url = api.url.clone();
            std::mem::forget(api);
            url
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (kh, kh_audited, id, id_audited) = rt.block_on(async {
        let make = |audit: AuditLog| {
            Keyhaven::builder()
                .store(MemoryStore::new())
                .audit_log(audit)
                .build()
                .unwrap()
        };
        let kh = make(AuditLog::log_only());
        let kh_audited = make(AuditLog::to_file(&audit_path).unwrap());
        let mut ids = Vec::new();
        for kh in [&kh, &kh_audited] {
            let integration = kh
                .integrations()
                .create(
                    NewIntegration::new("bench-api", "API_KEY")
                        .config("base_url", format!("{api_url}/api"))
                        .config("header_name", "x-key")
                        .config("header_format", "{api_key}"),
                )
                .await
                .unwrap();
            let out = kh
                .entity("bench")
                .unwrap()
                .initiate_connection(
                    ConnectionRequest::for_integration(integration.id.to_string())
                        .param("api_key", "sk-bench"),
                )
                .await
                .unwrap();
            ids.push(out.connected_account_id.to_string());
        }
        (kh, kh_audited, ids[0].clone(), ids[1].clone())
    });
    let server_kh = kh_audited.clone();
    let audit = kh_audited.audit().clone();
    let server_url = on_own_runtime("keyhaven-server", move || {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let mut state = AppState::new(server_kh, AdminKey::from_plain(KEY));
            state.config = ServerConfig {
                public_url: keyhaven::url::Url::parse(&base).unwrap(),
                rate_limit: None,
                ..ServerConfig::default()
            };
            tokio::spawn(keyhaven_server::serve(
                listener,
                Arc::new(state),
                std::future::pending::<()>(),
            ));
            base
        })
    });
    let client = reqwest::Client::new();
    let ways = [
        (
            "raw reqwest",
            Way::Raw(client.clone(), format!("{api_url}/api/fixed")),
        ),
        ("library kh.request (audit: log only)", Way::Library(kh, id)),
        (
            "raw reqwest, keyhaven's client settings",
            Way::Raw(
                keyhaven::request::default_client(),
                format!("{api_url}/api/fixed"),
            ),
        ),
        (
            "library kh.request (audit: file)",
            Way::Library(kh_audited, id_audited.clone()),
        ),
        (
            "server passthrough GET /api/v1/proxy/{id}/fixed",
            Way::Passthrough(
                client.clone(),
                format!("{server_url}/api/v1/proxy/{id_audited}/fixed"),
            ),
        ),
        (
            "server JSON proxy POST /api/v1/connectedAccounts/{id}/proxy",
            Way::JsonProxy(
                client,
                format!("{server_url}/api/v1/connectedAccounts/{id_audited}/proxy"),
            ),
        ),
    ];
    // KEYHAVEN_BENCH_ONLY=1,2 measures only those ways (for a profiler); raw stays.
    let only: Option<Vec<usize>> = std::env::var("KEYHAVEN_BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    let ways: Vec<(&str, Way)> = ways
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || only.as_ref().is_none_or(|o| o.contains(i)))
        .map(|(_, w)| w)
        .collect();
    let mut results: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> =
        vec![(Vec::new(), Vec::new(), Vec::new()); ways.len()];
    rt.block_on(async {
        // Warm up every way (connections, caches).
        for (_, way) in &ways {
            round(way, 0.5).await;
        }
        for r in 0..rounds {
            for (i, (name, way)) in ways.iter().enumerate() {
                let out = round(way, seconds).await;
                eprintln!(
                    "round {r} {name}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs",
                    out.rps, out.p50, out.p99
                );
                results[i].0.push(out.rps);
                results[i].1.push(out.p50);
                results[i].2.push(out.p99);
            }
        }
    });
    // One request at a time: the latency a single call adds (no queueing).
    let mut alone: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    rt.block_on(async {
        for _ in 0..2000 {
            for (i, (_, way)) in ways.iter().enumerate() {
                let t = Instant::now();
                way.once().await;
                alone[i].push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    });
    let alone: Vec<f64> = alone.into_iter().map(median).collect();
    let rows: Vec<(String, f64, f64, f64)> = ways
        .iter()
        .zip(results)
        .map(|((name, _), (rps, p50, p99))| {
            ((*name).to_owned(), median(rps), median(p50), median(p99))
        })
        .collect();
    let raw = rows[0].clone();
    println!("\n{CONCURRENCY} concurrent, {rounds} rounds of {seconds} s, medians of the rounds:");
    println!("| way | requests/s | p50 | p99 | throughput vs raw | one at a time: p50 | vs raw |");
    println!("|---|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    for (i, (name, rps, p50, p99)) in rows.iter().enumerate() {
        println!(
            "| {name} | {rps:.0} | {p50:.0} µs | {p99:.0} µs | {:.2}x | {:.0} µs | {:+.0} µs |",
            rps / raw.1,
            alone[i],
            alone[i] - alone[0]
        );
        json_rows.push(serde_json::json!({
            "way": name, "rps": rps, "p50_us": p50, "p99_us": p99,
            "throughput_ratio": rps / raw.1, "alone_p50_us": alone[i],
            "alone_p50_delta_us": alone[i] - alone[0],
        }));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join("proxy.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "concurrency": CONCURRENCY, "rounds": rounds, "seconds": seconds, "rows": json_rows,
        }))
        .unwrap(),
    );
    // The audit file got a line per audited request.
    rt.block_on(audit.flush()).unwrap();
    let lines = std::fs::read_to_string(&audit_path)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!("audit lines written: {lines}");
    std::process::exit(0);
}
