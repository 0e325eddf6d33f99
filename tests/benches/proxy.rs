//! Requests with an account's credentials, measured against raw reqwest to the same
//! API in the same run: the library's `kh.request` and the server's passthrough
//! route (and its JSON proxy route), a GET of 322 bytes behind an API-key header;
//! and a bare forwarder (an axum handler sending the GET on with reqwest, no
//! keyhaven), what any credentials proxy in front of that API costs here.
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

use keyhaven::{AuditLog, ConnectionRequest, Keyhaven, MemoryStore, NewIntegration};
use keyhaven_server::{AdminKey, AppState, ServerConfig};
use keyhaven_tests::load::{Once, Settings, measure, on_own_runtime, only, report};
use keyhaven_tests::upstream::{FIXED_ANSWER, Upstream};

/// The allocator of the `keyhaven` binary, for every way measured here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

    fn into_once(self) -> Once {
        let way = Arc::new(self);
        Arc::new(move || {
            let way = way.clone();
            Box::pin(async move { way.once().await })
        })
    }
}

fn main() {
    let settings = Settings::from_env(CONCURRENCY);
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
    let forwarder = keyhaven_tests::load::bare_forwarder(
        KEY,
        format!("{api_url}/api/fixed"),
        ("x-key", "sk-bench"),
    );
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
                client.clone(),
                format!("{server_url}/api/v1/connectedAccounts/{id_audited}/proxy"),
            ),
        ),
        (
            "bare forwarder: axum handler + reqwest, no keyhaven (the passthrough's ceiling)",
            Way::Passthrough(client, format!("{forwarder}/fixed")),
        ),
        // Last, so that the indexes above stay as they were: which of keyhaven's
        // client settings costs what (see BENCHMARKS.md).
        (
            "raw reqwest, read_timeout only",
            Way::Raw(
                reqwest::Client::builder()
                    .read_timeout(keyhaven::request::READ_TIMEOUT)
                    .build()
                    .unwrap(),
                format!("{api_url}/api/fixed"),
            ),
        ),
        (
            "raw reqwest, keyhaven's client settings and reqwest's read_timeout",
            Way::Raw(
                reqwest::Client::builder()
                    .connect_timeout(keyhaven::request::CONNECT_TIMEOUT)
                    .read_timeout(keyhaven::request::READ_TIMEOUT)
                    .tcp_nodelay(true)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent("keyhaven")
                    .build()
                    .unwrap(),
                format!("{api_url}/api/fixed"),
            ),
        ),
    ];
    let ways: Vec<(String, Once)> = only(
        ways.into_iter()
            .map(|(name, way)| (name.to_owned(), way.into_once()))
            .collect(),
    );
    let rows = rt.block_on(measure(&ways, settings, 2000));
    report("proxy", &rows, settings);
    // The audit file got a line per audited request.
    rt.block_on(audit.flush()).unwrap();
    let lines = std::fs::read_to_string(&audit_path)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!("audit lines written: {lines}");
    std::process::exit(0);
}
