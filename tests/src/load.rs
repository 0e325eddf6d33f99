//! A load generator for the benchmarks that measure throughput under concurrency
//! (criterion measures one call at a time): tasks send requests back to back for a
//! few seconds per round; the ways are measured in interleaved rounds (reference,
//! a, b, reference, ...) so that the machine's noise falls on all of them, and the
//! medians of the rounds are kept. Then each way one request at a time, for the
//! latency a single call adds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;

/// One request of one way, awaited to its last byte (it panics on a wrong answer).
pub type Once = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The settings of a run, from `KEYHAVEN_BENCH_SECONDS` (a round's length, default
/// 3) and `KEYHAVEN_BENCH_ROUNDS` (default 3).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Rounds per way.
    pub rounds: usize,
    /// Seconds per round.
    pub seconds: f64,
}

impl Settings {
    /// From the environment, with `concurrency` tasks.
    pub fn from_env(concurrency: usize) -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<f64>().ok());
        Self {
            concurrency,
            rounds: var("KEYHAVEN_BENCH_ROUNDS").map_or(3, |r| r.max(1.0) as usize),
            seconds: var("KEYHAVEN_BENCH_SECONDS").unwrap_or(3.0),
        }
    }
}

/// One round: requests per second and the latencies' median and p99 (µs).
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50: f64,
    /// 99th percentile latency, µs.
    pub p99: f64,
}

/// Runs `once` from `concurrency` tasks for `seconds`.
pub async fn round(once: &Once, concurrency: usize, seconds: f64) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let once = once.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(4096);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    once().await;
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
        times.extend(t.await.expect("a load task panicked"));
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

/// The lowest and the highest of `v` (NaN when it is empty).
pub fn spread(v: &[f64]) -> (f64, f64) {
    v.iter().fold((f64::NAN, f64::NAN), |(low, high), &x| {
        (low.min(x), high.max(x))
    })
}

/// The median of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Starts `f` on a current-thread runtime of its own, on its own thread; returns
/// what it gives (the runtime then keeps running what it spawned).
pub fn on_own_runtime<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Pin<Box<dyn Future<Output = T> + Send>> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let _ = tx.send(f().await);
                std::future::pending::<()>().await;
            });
        })
        .expect("a thread");
    rx.recv().expect("the runtime started")
}

/// What a way measured: medians of its rounds, and one request at a time.
#[derive(Debug, Clone)]
pub struct Row {
    /// The way's name.
    pub name: String,
    /// Requests per second (median of the rounds).
    pub rps: f64,
    /// Median latency under load, µs.
    pub p50: f64,
    /// p99 latency under load, µs.
    pub p99: f64,
    /// Median latency one request at a time, µs.
    pub alone: f64,
    /// Each round's requests per second against the reference's in the same round
    /// (the first way's: all 1): how far the machine's noise moves the ratio.
    pub round_ratios: Vec<f64>,
}

/// Measures every way in interleaved rounds, then one at a time (`alone` requests
/// each). The first way is the reference the others are compared with.
pub async fn measure(ways: &[(String, Once)], settings: Settings, alone: usize) -> Vec<Row> {
    for (_, once) in ways {
        round(once, settings.concurrency, 0.5).await;
    }
    let mut results = vec![(Vec::new(), Vec::new(), Vec::new()); ways.len()];
    for r in 0..settings.rounds {
        for (i, (name, once)) in ways.iter().enumerate() {
            let out = round(once, settings.concurrency, settings.seconds).await;
            eprintln!(
                "round {r} {name}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs",
                out.rps, out.p50, out.p99
            );
            results[i].0.push(out.rps);
            results[i].1.push(out.p50);
            results[i].2.push(out.p99);
        }
    }
    let mut one = vec![Vec::with_capacity(alone); ways.len()];
    for _ in 0..alone {
        for (i, (_, once)) in ways.iter().enumerate() {
            let t = Instant::now();
            once().await;
            one[i].push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let reference = results.first().map(|r| r.0.clone()).unwrap_or_default();
    ways.iter()
        .zip(results)
        .zip(one)
        .map(|(((name, _), (rps, p50, p99)), one)| Row {
            name: name.clone(),
            round_ratios: rps
                .iter()
                .zip(&reference)
                .map(|(r, base)| r / base)
                .collect(),
            rps: median(rps),
            p50: median(p50),
            p99: median(p99),
            alone: median(one),
        })
        .collect()
}

/// The ways to measure: all, or with `KEYHAVEN_BENCH_ONLY=1,2` only those (by
/// index, for a profiler); the first, the reference, always stays.
pub fn only(ways: Vec<(String, Once)>) -> Vec<(String, Once)> {
    let only: Option<Vec<usize>> = std::env::var("KEYHAVEN_BENCH_ONLY")
        .ok()
        .map(|s| s.split(',').filter_map(|i| i.trim().parse().ok()).collect());
    ways.into_iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || only.as_ref().is_none_or(|o| o.contains(i)))
        .map(|(_, way)| way)
        .collect()
}

/// `rows` as JSON, each against the first, with the run's settings: what the
/// benchmarks write to `target/bench-results` for `cargo xtask bench`.
pub fn rows_json(rows: &[Row], settings: Settings) -> serde_json::Value {
    let reference = rows[0].clone();
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "way": r.name, "rps": r.rps, "p50_us": r.p50, "p99_us": r.p99,
                "throughput_ratio": r.rps / reference.rps, "alone_p50_us": r.alone,
                "alone_p50_delta_us": r.alone - reference.alone,
                "round_ratios": r.round_ratios,
            })
        })
        .collect();
    serde_json::json!({
        "concurrency": settings.concurrency, "rounds": settings.rounds,
        "seconds": settings.seconds, "rows": rows,
    })
}

/// Writes a benchmark's results to `target/bench-results/<name>.json`.
pub fn write_results(name: &str, results: &serde_json::Value) {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(results).unwrap_or_default(),
    );
}

/// Prints `rows` as a Markdown table against the first, and writes them to
/// `target/bench-results/<name>.json`.
pub fn report(name: &str, rows: &[Row], settings: Settings) {
    let reference = rows[0].clone();
    println!(
        "\n{} concurrent, {} rounds of {} s, medians of the rounds:",
        settings.concurrency, settings.rounds, settings.seconds
    );
    println!(
        "| way | requests/s | p50 | p99 | throughput vs first | its rounds vs first's | one at a time: p50 | vs first |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (low, high) = spread(&r.round_ratios);
        println!(
            "| {} | {:.0} | {:.0} µs | {:.0} µs | {:.2}x | {low:.2}–{high:.2}x | {:.0} µs | {:+.0} µs |",
            r.name,
            r.rps,
            r.p50,
            r.p99,
            r.rps / reference.rps,
            r.alone,
            r.alone - reference.alone
        );
    }
    write_results(name, &rows_json(rows, settings));
}

/// A GET with `key` in `x-api-key`, awaited to its last byte; it panics unless the
/// answer is 200.
pub fn get(client: &reqwest::Client, url: String, key: &'static str) -> Once {
    let client = client.clone();
    Arc::new(move || Box::pin(get_once(client.clone(), url.clone(), key)))
}

/// One GET of [`get`].
async fn get_once(client: reqwest::Client, url: String, key: &'static str) {
    let r = client
        .get(&url)
        .header("x-api-key", key)
        .send()
        .await
        .expect("the request is answered");
    assert_eq!(r.status(), 200, "{url}");
    let _ = r.bytes().await.expect("the body is read");
}

/// As [`get`], each call to the next of `urls` in turn (from the first again after
/// the last).
pub fn get_each(client: &reqwest::Client, urls: Vec<String>, key: &'static str) -> Once {
    let client = client.clone();
    let urls: Arc<[String]> = urls.into();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Arc::new(move || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % urls.len();
        Box::pin(get_once(client.clone(), urls[i].clone(), key))
    })
}

/// An axum server on its own runtime thread answering `GET /account` with `body`
/// behind the same `x-api-key` check as keyhaven's (a SHA-256 compared in constant
/// time): the bare handler the server benchmarks compare with. Returns its base URL.
pub fn bare_handler(key: &'static str, body: axum::body::Bytes) -> String {
    on_own_runtime("bare-axum", move || {
        Box::pin(async move {
            let key = Arc::new(keyhaven_server::AdminKey::from_plain(key));
            let app = axum::Router::new().route(
                "/account",
                axum::routing::get(move |headers: axum::http::HeaderMap| {
                    let (key, body) = (key.clone(), body.clone());
                    async move {
                        let given = headers.get("x-api-key").and_then(|v| v.to_str().ok());
                        if given.is_some_and(|k| key.matches(k)) {
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/json")],
                                body,
                            )
                        } else {
                            (
                                axum::http::StatusCode::UNAUTHORIZED,
                                [("content-type", "application/json")],
                                axum::body::Bytes::new(),
                            )
                        }
                    }
                }),
            );
            serve_on_loopback(app).await
        })
    })
}

/// A bare forwarder on its own runtime thread: an axum handler that checks the same
/// `x-api-key` as keyhaven's routes, sends the GET on to `upstream` with `header`
/// set, through a shared reqwest client with keyhaven's settings, and streams the
/// answer back. What a credentials proxy costs with no keyhaven in it: the ceiling
/// of the server's passthrough route on the same machine. Its base URL; the route
/// is `/fixed`.
pub fn bare_forwarder(
    key: &'static str,
    upstream: String,
    header: (&'static str, &'static str),
) -> String {
    on_own_runtime("bare-forwarder", move || {
        Box::pin(async move {
            let key = Arc::new(keyhaven_server::AdminKey::from_plain(key));
            let client = keyhaven::request::default_client();
            let app = axum::Router::new().route(
                "/fixed",
                axum::routing::get(move |headers: axum::http::HeaderMap| {
                    let (key, client, upstream) = (key.clone(), client.clone(), upstream.clone());
                    async move {
                        let given = headers.get("x-api-key").and_then(|v| v.to_str().ok());
                        if !given.is_some_and(|k| key.matches(k)) {
                            return axum::http::StatusCode::UNAUTHORIZED.into_response();
                        }
                        match client
                            .get(&upstream)
                            .header(header.0, header.1)
                            .send()
                            .await
                        {
                            Ok(r) => {
                                let mut answer = axum::http::Response::builder().status(r.status());
                                if let Some(t) = r.headers().get("content-type") {
                                    answer = answer.header("content-type", t);
                                }
                                answer
                                    .body(axum::body::Body::from_stream(r.bytes_stream()))
                                    .map_or_else(
                                        |_| axum::http::StatusCode::BAD_GATEWAY.into_response(),
                                        IntoResponse::into_response,
                                    )
                            }
                            Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                        }
                    }
                }),
            );
            serve_on_loopback(app).await
        })
    })
}

/// Serves `app` on a port of 127.0.0.1 from the current runtime; its base URL.
async fn serve_on_loopback(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}
