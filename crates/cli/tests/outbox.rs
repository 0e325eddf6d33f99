//! Durable webhooks and events across processes, with real `keyhaven serve`
//! processes: deliveries pending when a server is killed with SIGKILL are made after
//! it restarts (SQLite) or by the other instance (PostgreSQL), each event accepted
//! exactly once by the receiver, with two instances sharing the store; two
//! processes on one SQLite file hear each other's events, and an event stream that
//! reconnects with `Last-Event-ID` gets what it missed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

const KEY: &str = "kh_outbox_test_admin_key";
const SECRET: &str = "whsec_outbox_test";

/// A webhook receiver on 127.0.0.1: answers `status` (settable), and counts the
/// posts it accepted (2xx) per event id.
#[derive(Default)]
struct Receiver {
    status: AtomicU16,
    posts: AtomicUsize,
    accepted: std::sync::Mutex<HashMap<String, usize>>,
}

impl Receiver {
    async fn start(status: u16) -> (Arc<Self>, String) {
        let me = Arc::new(Self::default());
        me.status.store(status, Ordering::SeqCst);
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(me): State<Arc<Self>>, headers: HeaderMap, body: String| async move {
                        me.posts.fetch_add(1, Ordering::SeqCst);
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs() as i64;
                        let signature = headers
                            .get(keyhaven_server::SIGNATURE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if !verify(signature, &body, now) {
                            return StatusCode::UNAUTHORIZED;
                        }
                        let status =
                            StatusCode::from_u16(me.status.load(Ordering::SeqCst)).unwrap();
                        if status.is_success() {
                            let id = headers["keyhaven-event-id"].to_str().unwrap().to_owned();
                            let event: Value = serde_json::from_str(&body).unwrap();
                            assert_eq!(event["id"], id.as_str());
                            *me.accepted.lock().unwrap().entry(id).or_default() += 1;
                        }
                        status
                    },
                ),
            )
            .with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (me, url)
    }

    fn accepted(&self) -> HashMap<String, usize> {
        self.accepted.lock().unwrap().clone()
    }

    /// Waits until every id of `ids` was accepted (or `limit` passes).
    async fn wait_for(&self, ids: &[String], limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            let accepted = self.accepted();
            if ids.iter().all(|i| accepted.contains_key(i)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The receiver's check of the signature, as receivers are told to make it.
fn verify(header: &str, body: &str, now: i64) -> bool {
    keyhaven_server::verify(SECRET, header, body.as_bytes(), now, 300)
}

/// A `keyhaven serve` process and its port.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(store: &[&str], hook: &str) -> Self {
        Self::start_with(store, hook, None)
    }

    /// As [`Server::start`], with `KEYHAVEN_MASTER_KEY` set to `master_key` (what a
    /// PostgreSQL store needs, the same on every instance).
    fn start_with(store: &[&str], hook: &str, master_key: Option<&str>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyhaven"));
        if let Some(k) = master_key {
            command.env("KEYHAVEN_MASTER_KEY", k);
        }
        let mut child = command
            .args(["--api-key", KEY])
            .args(store)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--webhook-url",
                hook,
                "--webhook-secret",
                SECRET,
                "--webhook-attempts",
                "1000",
                "--webhook-first-retry",
                "0.2",
                "--webhook-lease",
                "12",
                "--rate-limit",
                "0",
            ])
            .env_remove("KEYHAVEN_DATA_DIR")
            .env_remove("KEYHAVEN_API_KEY")
            .env_remove("KEYHAVEN_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port = keyhaven_tests::serve_port(&mut child, "http");
        Self { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = reqwest::Client::new()
            .request(method, self.url(path))
            .header("x-api-key", KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// Connects an API-key account; returns its id.
    async fn connect(&self) -> String {
        let out = self
            .api(
                reqwest::Method::POST,
                "/api/v1/connectedAccounts",
                Some(json!({"appName": "openai", "authScheme": "API_KEY", "data": {"api_key": "sk-outbox-test"}})),
            )
            .await;
        out["connectedAccountId"].as_str().unwrap().to_owned()
    }

    /// The deliveries of `account`, as the API lists them.
    async fn deliveries(&self, account: &str) -> Vec<Value> {
        let out = self
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/webhooks/deliveries?connectedAccountId={account}"),
                None,
            )
            .await;
        out["items"].as_array().unwrap().clone()
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids of the events of `accounts` (created and active of each), read from the
/// deliveries the server lists.
async fn event_ids(server: &Server, accounts: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for a in accounts {
        let items = server.deliveries(a).await;
        assert_eq!(items.len(), 2, "created and active of {a}: {items:?}");
        ids.extend(
            items
                .iter()
                .map(|d| d["eventId"].as_str().unwrap().to_owned()),
        );
    }
    ids
}

fn assert_each_once(accepted: &HashMap<String, usize>, ids: &[String]) {
    for id in ids {
        assert_eq!(
            accepted.get(id),
            Some(&1),
            "event {id} accepted once: {accepted:?}"
        );
    }
    assert_eq!(accepted.len(), ids.len(), "no other event: {accepted:?}");
}

/// Waits until every delivery of the accounts failed at least once, so that some
/// are pending when the server is killed.
async fn wait_refused(server: &Server, accounts: &[String]) {
    let started = Instant::now();
    loop {
        let mut all = true;
        for a in accounts {
            all &= server
                .deliveries(a)
                .await
                .iter()
                .all(|d| d["lastStatus"] == 503 && d["state"] == "pending");
        }
        if all {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "deliveries were never tried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deliveries_pending_at_sigkill_are_made_after_restart() {
    let (receiver, hook) = Receiver::start(503).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = ["--data-dir", dir.to_str().unwrap()];
    let server = Server::start(&store, &hook);
    let mut accounts = Vec::new();
    for _ in 0..5 {
        accounts.push(server.connect().await);
    }
    wait_refused(&server, &accounts).await;
    let ids = event_ids(&server, &accounts).await;
    server.kill();
    receiver.status.store(204, Ordering::SeqCst);
    let server = Server::start(&store, &hook);
    receiver.wait_for(&ids, Duration::from_secs(60)).await;
    // Room for a duplicate to show up, were there one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_each_once(&receiver.accepted(), &ids);
    for a in &accounts {
        for d in server.deliveries(a).await {
            assert_eq!(d["state"], "delivered", "{d}");
            assert_eq!(d["lastStatus"], 204);
            assert!(d["attempts"].as_u64().unwrap() >= 2, "{d}");
        }
    }
    // Redelivery posts the same event again, once.
    let first = server.deliveries(&accounts[0]).await[0].clone();
    let again = server
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/webhooks/deliveries/{}/redeliver", first["id"]),
            None,
        )
        .await;
    assert_eq!(again["state"], "pending");
    assert_eq!(again["attempts"], 0);
    let id = first["eventId"].as_str().unwrap().to_owned();
    let started = Instant::now();
    while receiver.accepted()[&id] < 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "redelivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_file_share_events_and_deliver_once() {
    let (receiver, hook) = Receiver::start(204).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = ["--data-dir", dir.to_str().unwrap()];
    let a = Server::start(&store, &hook);
    let b = Server::start(&store, &hook);
    // A listens; B makes the changes.
    let mut stream = reqwest::Client::new()
        .get(a.url("/api/v1/events"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let made = b.connect().await;
    let mut buffer = String::new();
    let heard = next_event(&mut stream, &mut buffer, "connection.active").await;
    assert_eq!(
        heard["connectedAccountId"],
        made.as_str(),
        "A heard B's event"
    );
    let last_heard = heard["id"].as_str().unwrap().to_owned();
    drop(stream);
    // Missed while away: replayed on reconnecting with Last-Event-ID.
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(b.connect().await);
    }
    let mut stream = reqwest::Client::new()
        .get(a.url("/api/v1/events?types=active"))
        .header("x-api-key", KEY)
        .header("last-event-id", &last_heard)
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    for m in &missed {
        let e = next_event(&mut stream, &mut buffer, "connection.active").await;
        assert_eq!(e["connectedAccountId"], m.as_str(), "replayed in order");
    }
    // Webhooks: both processes deliver, each event once.
    let mut accounts = vec![made];
    accounts.extend(missed);
    for i in 0..6 {
        accounts.push(if i % 2 == 0 {
            a.connect().await
        } else {
            b.connect().await
        });
    }
    let ids = event_ids(&a, &accounts).await;
    receiver.wait_for(&ids, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_each_once(&receiver.accepted(), &ids);
    a.kill();
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances_deliver_each_event_once_and_survive_sigkill() {
    let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
        keyhaven_tests::skip_or_fail(
            "PostgreSQL is not reachable (set KEYHAVEN_TEST_DATABASE_URL)",
        );
        return;
    };
    let (receiver, hook) = Receiver::start(503).await;
    let tmp = tempfile::tempdir().unwrap();
    let key = keyhaven::MasterKey::generate().unwrap().to_base64();
    let key = Some(key.as_str());
    let dir_a = tmp.path().join("a");
    let dir_b = tmp.path().join("b");
    let store_a = [
        "--database-url",
        &url,
        "--data-dir",
        dir_a.to_str().unwrap(),
    ];
    let store_b = [
        "--database-url",
        &url,
        "--data-dir",
        dir_b.to_str().unwrap(),
    ];
    let a = Server::start_with(&store_a, &hook, key);
    let b = Server::start_with(&store_b, &hook, key);
    let mut accounts = Vec::new();
    for i in 0..10 {
        accounts.push(if i % 2 == 0 {
            a.connect().await
        } else {
            b.connect().await
        });
    }
    wait_refused(&a, &accounts).await;
    let ids = event_ids(&b, &accounts).await;
    // One instance dies with deliveries pending; the other makes them all.
    a.kill();
    receiver.status.store(204, Ordering::SeqCst);
    receiver.wait_for(&ids, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_each_once(&receiver.accepted(), &ids);
    // Both instances running: each new event once.
    let a = Server::start_with(&store_a, &hook, key);
    let mut more = Vec::new();
    for i in 0..10 {
        more.push(if i % 2 == 0 {
            a.connect().await
        } else {
            b.connect().await
        });
    }
    let new_ids = event_ids(&a, &more).await;
    receiver.wait_for(&new_ids, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut all = ids.clone();
    all.extend(new_ids);
    assert_each_once(&receiver.accepted(), &all);
    a.kill();
    b.kill();
}

/// Reads an SSE response until an event named `name` arrives; returns its data.
async fn next_event(response: &mut reqwest::Response, buffer: &mut String, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            if event.as_deref() == Some(name) {
                return serde_json::from_str(&data).unwrap();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {name} event within 20 s"))
            .unwrap()
            .expect("the stream ended");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}
