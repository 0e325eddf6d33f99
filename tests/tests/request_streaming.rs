//! Large bodies stream through keyhaven both ways with memory held flat: a download
//! of 256 MiB through the library and through the server's passthrough route, an
//! upload of 64 MiB through the passthrough, in a process whose resident memory is
//! watched (alone in its test binary, so that no other test moves it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;

use futures::StreamExt;
use keyhaven::{ConnectionRequest, Keyhaven, MemoryStore, NewIntegration};
use keyhaven_server::{AdminKey, AppState, ServerConfig};
use keyhaven_tests::upstream::Upstream;

const KEY: &str = "kh-admin-stream";
/// The download's size: 256 MiB, or `KEYHAVEN_STREAM_MIB` MiB (1024 for the 1 GiB run
/// recorded in BENCHMARKS.md).
fn download() -> u64 {
    std::env::var("KEYHAVEN_STREAM_MIB")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(256)
        * 1024
        * 1024
}
const UPLOAD: u64 = 64 * 1024 * 1024;
/// How much the resident memory may grow while a body streams through.
const FLAT: u64 = 48 * 1024 * 1024;

/// This process's resident memory, in bytes (Linux).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Reads a response to its end, counting bytes and the highest RSS seen.
async fn drain(answer: keyhaven::reqwest::Response) -> (u64, u64) {
    let mut stream = answer.bytes_stream();
    let (mut n, mut peak, mut chunks) = (0u64, rss(), 0u64);
    while let Some(chunk) = stream.next().await {
        n += chunk.unwrap().len() as u64;
        chunks += 1;
        if chunks % 256 == 0 {
            peak = peak.max(rss());
        }
    }
    (n, peak.max(rss()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_with_flat_memory() {
    let api = Upstream::start().await;
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let integration = kh
        .integrations()
        .create(NewIntegration::new("acme", "BEARER_TOKEN").config("base_url", api.base()))
        .await
        .unwrap();
    let id = kh
        .entity("ada")
        .unwrap()
        .initiate_connection(
            ConnectionRequest::for_integration(integration.id.to_string()).param("token", "t"),
        )
        .await
        .unwrap()
        .connected_account_id
        .to_string();

    // Warm up (connections, allocator), then measure.
    let (n, _) = drain(
        kh.request(&id)
            .get("/big?bytes=1048576")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(n, 1024 * 1024);
    let download = download();
    let before = rss();
    let answer = kh
        .request(&id)
        .get(format!("/big?bytes={download}"))
        .send()
        .await
        .unwrap();
    let (n, peak) = drain(answer).await;
    assert_eq!(n, download, "every byte through the library");
    eprintln!(
        "library: {} MiB streamed, resident memory grew {} KiB",
        download >> 20,
        peak.saturating_sub(before) >> 10
    );
    assert!(
        peak.saturating_sub(before) < FLAT,
        "the library held {} MiB more while streaming {} MiB",
        (peak - before) / (1 << 20),
        download >> 20
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut state = AppState::new(kh.clone(), AdminKey::from_plain(KEY));
    state.config = ServerConfig {
        public_url: keyhaven::url::Url::parse(&base).unwrap(),
        ..ServerConfig::default()
    };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(keyhaven_server::serve(listener, Arc::new(state), async {
        let _ = stopped.await;
    }));
    let http = keyhaven::reqwest::Client::new();
    let before = rss();
    let answer = http
        .get(format!("{base}/api/v1/proxy/{id}/big?bytes={download}"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.content_length(), Some(download));
    let (n, peak) = drain(answer).await;
    assert_eq!(n, download, "every byte through the server");
    eprintln!(
        "server passthrough: {} MiB streamed, resident memory grew {} KiB",
        download >> 20,
        peak.saturating_sub(before) >> 10
    );
    assert!(
        peak.saturating_sub(before) < FLAT,
        "the server (and this client) held {} MiB more while streaming {} MiB",
        (peak - before) / (1 << 20),
        download >> 20
    );

    // An upload of unknown size streams too (and is not kept for a retry).
    let chunk = keyhaven::bytes::Bytes::from(vec![b'u'; 64 * 1024]);
    let parts = UPLOAD / chunk.len() as u64;
    let body =
        futures::stream::iter((0..parts).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let before = rss();
    let answer = http
        .post(format!("{base}/api/v1/proxy/{id}/upload"))
        .header("x-api-key", KEY)
        .body(keyhaven::reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let counted: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(counted["bytes"], UPLOAD);
    assert!(
        rss().saturating_sub(before) < FLAT,
        "an upload of {} MiB grew memory by {} MiB",
        UPLOAD >> 20,
        rss().saturating_sub(before) >> 20
    );
}
