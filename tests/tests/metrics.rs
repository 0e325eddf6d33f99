//! `/metrics` after a scripted flow through a running server: every metric keyhaven
//! documents is there and moved — HTTP requests by route and status with latency,
//! accounts by status, refreshes with latency, provider calls by app, webhook
//! deliveries and their backlog, store latency, credential cache hits and misses —
//! behind the metrics key (or the admin key), and with no key on the metrics
//! listener. Its own test binary: the recorder is per process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyhaven::{Keyhaven, MemoryStore};
use keyhaven_server::{AdminKey, AppState, ServerConfig, Webhook};
use keyhaven_tests::storm::{TokenEndpoint, seed};
use serde_json::json;

const ADMIN: &str = "kh_metrics_admin";
const CREDS: &str = "khc_metrics_credentials";
const METRICS: &str = "khm_metrics_scraper";

/// One sample: its labels and value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses Prometheus's text format (the lines this exporter writes).
fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let mut labels = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split("\",") {
                    if let Some((k, v)) = pair.split_once('=') {
                        labels.insert(k.to_owned(), v.trim_matches('"').to_owned());
                    }
                }
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.insert((name, labels), value.parse().unwrap());
    }
    out
}

/// The value of `name` with (at least) `labels`, summed over the other labels.
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.unwrap();
    if status == 200 {
        assert!(kind.unwrap().starts_with("text/plain; version=0.0.4"));
    }
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_there_and_moves_after_a_scripted_flow() {
    // A webhook receiver that accepts everything.
    let received = Arc::new(AtomicUsize::new(0));
    let hook = {
        let received = received.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let received = received.clone();
                async move {
                    received.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    };
    let endpoint = TokenEndpoint::start(Duration::from_millis(5)).await;
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    // Two OAuth accounts whose tokens expired: reading them refreshes them.
    let (_, expired) = seed(&kh, &**kh.store(), &endpoint, 2).await;

    let mut state = AppState::new(kh, AdminKey::from_plain(ADMIN));
    state.credentials_key = Some(AdminKey::from_plain(CREDS));
    state.metrics_key = Some(AdminKey::from_plain(METRICS));
    state.config = ServerConfig {
        webhooks: vec![Webhook {
            url: keyhaven::url::Url::parse(&hook).unwrap(),
            secret: "whsec_metrics".to_owned().into(),
            events: Vec::new(),
        }],
        ..ServerConfig::default()
    };
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keyhaven_server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let side = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let side_url = format!("http://{}/metrics", side.local_addr().unwrap());
    tokio::spawn(keyhaven_server::serve_metrics(side, state.clone()));

    let metrics_url = format!("{base}/metrics");
    assert_eq!(scrape(&metrics_url, None).await.0, 401, "a key is needed");
    assert_eq!(scrape(&metrics_url, Some("wrong")).await.0, 401);
    assert_eq!(
        scrape(&metrics_url, Some(CREDS)).await.0,
        401,
        "not the credentials key"
    );
    let (status, before) = scrape(&metrics_url, Some(METRICS)).await;
    assert_eq!(status, 200, "{before}");
    let before = parse(&before);

    // The flow: a connection (events, webhooks), credential reads (a refresh, then
    // the cache), a disabled account, a refused call.
    let http = reqwest::Client::new();
    let made = http
        .post(format!("{base}/api/v1/connectedAccounts"))
        .header("x-api-key", ADMIN)
        .json(&json!({"appName": "openai", "authScheme": "API_KEY", "data": {"api_key": "sk-metrics"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 200);
    for id in &expired {
        for _ in 0..3 {
            let r = http
                .get(format!("{base}/api/v1/connectedAccounts/{id}/credentials"))
                .header("x-api-key", CREDS)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let r = http
        .post(format!(
            "{base}/api/v1/connectedAccounts/{}/disable",
            expired[1]
        ))
        .header("x-api-key", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/api/v1/connectedAccounts/ca_nope"))
        .header("x-api-key", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A made-up method is counted, as OTHER: clients do not make new series.
    let r = http
        .request(
            reqwest::Method::from_bytes(b"FROBNICATE").unwrap(),
            format!("{base}/api/v1/connectedAccounts"),
        )
        .header("x-api-key", ADMIN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // Every event delivered: created and active of the new account, inactive.
    for _ in 0..200 {
        if received.load(Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(received.load(Ordering::SeqCst) >= 3);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, after) = scrape(&metrics_url, Some(ADMIN)).await;
    assert_eq!(status, 200, "the admin key reads them too");
    let text = after.clone();
    let after = parse(&after);
    let moved = |name: &str, labels: &[(&str, &str)], by: f64| {
        let (was, is) = (value(&before, name, labels), value(&after, name, labels));
        assert!(
            is - was >= by,
            "{name}{labels:?} moved by {} (want {by}): {was} -> {is}\n{text}",
            is - was
        );
    };
    moved(
        "keyhaven_http_requests_total",
        &[
            ("method", "POST"),
            ("route", "/api/v1/connectedAccounts"),
            ("status", "200"),
        ],
        1.0,
    );
    moved(
        "keyhaven_http_requests_total",
        &[
            ("route", "/api/v1/connectedAccounts/{id}/credentials"),
            ("status", "200"),
        ],
        6.0,
    );
    moved(
        "keyhaven_http_requests_total",
        &[
            ("route", "/api/v1/connectedAccounts/{id}"),
            ("status", "400"),
        ],
        1.0,
    );
    moved(
        "keyhaven_http_requests_total",
        &[("method", "OTHER"), ("route", "/api/v1/connectedAccounts")],
        1.0,
    );
    assert!(!text.contains("FROBNICATE"), "{text}");
    moved(
        "keyhaven_http_request_seconds_count",
        &[("route", "/api/v1/connectedAccounts/{id}/credentials")],
        6.0,
    );
    assert!(
        value(
            &after,
            "keyhaven_http_request_seconds_bucket",
            &[
                ("route", "/api/v1/connectedAccounts/{id}/credentials"),
                ("le", "+Inf")
            ]
        ) >= 6.0
    );
    assert_eq!(
        value(&after, "keyhaven_accounts", &[("status", "ACTIVE")]),
        2.0
    );
    assert_eq!(
        value(&after, "keyhaven_accounts", &[("status", "INACTIVE")]),
        1.0
    );
    moved(
        "keyhaven_refreshes_total",
        &[("app", "storm"), ("outcome", "ok")],
        2.0,
    );
    moved("keyhaven_refresh_seconds_count", &[("app", "storm")], 2.0);
    moved(
        "keyhaven_provider_calls_total",
        &[("app", "storm"), ("call", "refresh"), ("ok", "true")],
        2.0,
    );
    moved(
        "keyhaven_webhook_deliveries_total",
        &[("outcome", "delivered")],
        3.0,
    );
    moved("keyhaven_webhook_seconds_count", &[], 3.0);
    assert_eq!(value(&after, "keyhaven_webhook_backlog", &[]), 0.0);
    moved(
        "keyhaven_store_seconds_count",
        &[("operation", "get_account_and_credentials")],
        2.0,
    );
    moved(
        "keyhaven_store_seconds_count",
        &[("operation", "claim_deliveries")],
        1.0,
    );
    // Per account: a miss that refreshes, a miss that fills the cache, a hit.
    moved(
        "keyhaven_credential_cache_reads_total",
        &[("result", "hit")],
        2.0,
    );
    moved(
        "keyhaven_credential_cache_reads_total",
        &[("result", "miss")],
        2.0,
    );
    assert_eq!(value(&after, "keyhaven_build_info", &[]), 1.0);

    // The metrics listener: no key.
    let (status, side_text) = scrape(&side_url, None).await;
    assert_eq!(status, 200);
    assert!(side_text.contains("keyhaven_http_requests_total"));
    // No secret anywhere in them.
    assert!(!side_text.contains("sk-metrics") && !side_text.contains("rt-0"));

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
