//! The server against a bare axum handler in the same run: the account read, the
//! listing by entity and the audited credentials read of `keyhaven-server` (SQLite,
//! 200 accounts), and an axum handler that answers the account read's very bytes
//! behind the same `x-api-key` check (a SHA-256 compared in constant time).
//!
//! ```sh
//! cargo bench -p keyhaven-tests --bench server
//! ```
//!
//! 32 tasks, interleaved rounds, medians (see `keyhaven_tests::load`); each server
//! on a runtime thread of its own, the load on another, all on the same cores.
//! Results go to stdout and `target/bench-results/server.json`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::sync::Arc;

use keyhaven::{AuditLog, ConnectionRequest, Keyhaven, SqliteStore};
use keyhaven_server::{AdminKey, AppState, ServerConfig};
use keyhaven_tests::load::{
    Once, Settings, bare_handler, get, measure, on_own_runtime, only, report,
};

/// The allocator of the `keyhaven` binary, for every way measured here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: &str = "kh-bench-admin";
const CREDS: &str = "khc-bench-credentials";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("server: bench");
        return;
    }
    let settings = Settings::from_env(32);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = dir.path().join("data");
    let audit_path = dir.path().join("audit.log");
    let kh = rt.block_on(async {
        let kh = Keyhaven::builder()
            .store(SqliteStore::open_dir(&data).unwrap())
            .audit_log(AuditLog::to_file(&audit_path).unwrap())
            .build()
            .unwrap();
        for i in 0..200 {
            kh.entity(&format!("u{}", i % 100))
                .unwrap()
                .initiate_connection(
                    ConnectionRequest::for_app("openai")
                        .scheme("API_KEY")
                        .param("api_key", format!("sk-bench-{i}")),
                )
                .await
                .unwrap();
        }
        kh
    });
    let id = rt
        .block_on(
            kh.connected_accounts()
                .list(&keyhaven::AccountFilter::default()),
        )
        .unwrap()
        .items[77]
        .id
        .to_string();
    let server_kh = kh.clone();
    let server = on_own_runtime("keyhaven-server", move || {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let mut state = AppState::new(server_kh, AdminKey::from_plain(KEY));
            state.credentials_key = Some(AdminKey::from_plain(CREDS));
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
    // The bare handler answers what the server answers for the account.
    let account_url = format!("{server}/api/v1/connectedAccounts/{id}");
    let body = rt.block_on(async {
        let r = client
            .get(&account_url)
            .header("x-api-key", KEY)
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap()
    });
    let bare = bare_handler(KEY, body);
    let ways: Vec<(String, Once)> = vec![
        (
            "bare axum handler, same bytes, same key check".into(),
            get(&client, format!("{bare}/account"), KEY),
        ),
        (
            "GET /api/v1/connectedAccounts/{id}".into(),
            get(&client, account_url.clone(), KEY),
        ),
        (
            "GET /api/v1/connectedAccounts?user_uuid=u77".into(),
            get(
                &client,
                format!("{server}/api/v1/connectedAccounts?user_uuid=u77"),
                KEY,
            ),
        ),
        (
            "GET /api/v1/connectedAccounts/{id}/credentials (audited)".into(),
            get(&client, format!("{account_url}/credentials"), CREDS),
        ),
    ];
    let rows = rt.block_on(measure(&only(ways), settings, 2000));
    report("server", &rows, settings);
    rt.block_on(kh.audit().flush()).unwrap();
    let lines = std::fs::read_to_string(&audit_path)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!("audit lines written: {lines}");
    std::process::exit(0);
}
