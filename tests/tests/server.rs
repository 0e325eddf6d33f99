//! The server over real sockets: the whole OAuth flow through a running keyhaven
//! server against the real OAuth server (oidc-provider), and two servers sharing one
//! PostgreSQL database — a flow initiated on one completes on the other, and both
//! tell their event streams.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use keyhaven::{KeyRing, Keyhaven, MasterKey, PostgresStore, ring_from_base64};
use keyhaven_server::{AdminKey, AppState, ServerConfig};
use keyhaven_tests::{Decision, OidcProvider, UserAgent};
use serde_json::{Value, json};

const KEY: &str = "kh_e2e_admin_key";

/// A server on 127.0.0.1, its base URL and a way to stop it.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    (listener, base)
}

fn start(listener: tokio::net::TcpListener, base: &str, kh: Keyhaven) -> Running {
    let mut state = AppState::new(kh, AdminKey::from_plain(KEY));
    state.config = ServerConfig {
        public_url: keyhaven::url::Url::parse(base).unwrap(),
        ..ServerConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(keyhaven_server::serve(listener, Arc::new(state), async {
        let _ = stopped.await;
    }));
    Running {
        stop: Some(stop),
        task: Some(task),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn api(method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let mut req = http().request(method, &url).header("x-api-key", KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{url}: {status} {v}");
    v
}

/// Reads an SSE response until an event named `name` arrives; returns its data.
async fn next_event(response: &mut reqwest::Response, buffer: &mut String, name: &str) -> Value {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let event = block.lines().find_map(|l| l.strip_prefix("event: "));
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if event == Some(name) {
                return serde_json::from_str(&data).unwrap();
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(15), response.chunk())
            .await
            .unwrap_or_else(|_| panic!("no {name} event within 15 s"))
            .unwrap()
            .expect("the stream goes on");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn events(base: &str, id: &str) -> (reqwest::Response, String) {
    let r = reqwest::Client::new()
        .get(format!("{base}/api/v1/connectedAccounts/{id}/events"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    (r, String::new())
}

/// The user at the provider, then the browser following the provider's redirect to
/// `callback_base`'s callback. Returns the callback's answer (status, body).
async fn user_connects(authorize_url: &str, callback: &str) -> (u16, String, String) {
    let agent = UserAgent::new();
    let back = agent
        .authorize_to(authorize_url, "alice", Decision::Approve, callback)
        .await;
    let r = http().get(back.as_str()).send().await.unwrap();
    (
        r.status().as_u16(),
        r.text().await.unwrap(),
        back.to_string(),
    )
}

#[tokio::test]
async fn the_whole_oauth_flow_through_a_running_server() {
    let (listener, base) = bind().await;
    let callback = format!("{base}/api/v1/oauth/callback");
    let Some(provider) = OidcProvider::start_with_callback(600, &callback).await else {
        return;
    };
    let (kh, integration) = provider.keyhaven_for(&callback, "kh-basic").await;
    let server = start(listener, &base, kh);

    let out = api(
        reqwest::Method::POST,
        format!("{base}/api/v1/connectedAccounts"),
        Some(json!({"integrationId": integration.id, "entityId": "alice", "labels": ["e2e"]})),
    )
    .await;
    assert_eq!(out["connectionStatus"], "INITIATED");
    let id = out["connectedAccountId"].as_str().unwrap().to_owned();
    let (mut stream, mut buffer) = events(&base, &id).await;
    assert_eq!(
        next_event(&mut stream, &mut buffer, "snapshot").await["status"],
        "INITIATED"
    );

    let (status, page, back) = user_connects(out["redirectUrl"].as_str().unwrap(), &callback).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("is connected"), "{page}");
    let event = next_event(&mut stream, &mut buffer, "connection.active").await;
    assert_eq!(event["connectedAccountId"], id.as_str());

    let account = api(
        reqwest::Method::GET,
        format!("{base}/api/v1/connectedAccounts/{id}"),
        None,
    )
    .await;
    assert_eq!(account["status"], "ACTIVE");
    assert_eq!(
        account["connectionParams"]["base_url"],
        provider.issuer.as_str()
    );
    // The token works at the provider's protected resource, through the proxy.
    let me = api(
        reqwest::Method::POST,
        format!("{base}/api/v1/connectedAccounts/{id}/proxy"),
        Some(json!({"path": "/me"})),
    )
    .await;
    assert_eq!(me["status"], 200, "{me}");
    assert_eq!(me["body"]["sub"], "alice");
    // A replayed callback is refused and changes nothing.
    let replay = http().get(&back).send().await.unwrap();
    assert_eq!(replay.status().as_u16(), 404, "a used state is unknown now");
    let again = api(
        reqwest::Method::GET,
        format!("{base}/api/v1/connectedAccounts/{id}"),
        None,
    )
    .await;
    assert_eq!(again["status"], "ACTIVE");
    assert_eq!(again["updatedAt"], account["updatedAt"]);
    server.stop().await;
}

#[tokio::test]
async fn two_servers_on_one_postgresql_share_flows_and_events() {
    // A database of this test's own: a shared one would hold other runs' rows,
    // encrypted under keys this test does not have.
    let Some(url) = keyhaven_store::conformance::fresh_postgres_database().await else {
        return;
    };
    let (listener_a, base_a) = bind().await;
    let (listener_b, base_b) = bind().await;
    // Providers send users back to B, whichever instance started the flow.
    let callback = format!("{base_b}/api/v1/oauth/callback");
    let Some(provider) = OidcProvider::start_with_callback(600, &callback).await else {
        return;
    };
    let key = MasterKey::generate().unwrap().to_base64().to_string();
    let ring = || ring_from_base64(&key, &[]).unwrap();
    let instance = |ring: KeyRing| {
        let url = url.clone();
        let callback = callback.clone();
        async move {
            let store = PostgresStore::connect_with_pool_size(&url, ring, 4)
                .await
                .unwrap();
            Keyhaven::builder()
                .store(store)
                .callback_url(&callback)
                .build()
                .unwrap()
        }
    };
    let kh_a = instance(ring()).await;
    let kh_b = instance(ring()).await;
    let mut new = provider.integration("kh-basic");
    new.app = format!("oidc-two-{}", std::process::id());
    let integration = kh_a.integrations().create(new).await.unwrap();
    let a = start(listener_a, &base_a, kh_a);
    let b = start(listener_b, &base_b, kh_b);

    let out = api(
        reqwest::Method::POST,
        format!("{base_a}/api/v1/connectedAccounts"),
        Some(json!({"integrationId": integration.id, "entityId": "bob"})),
    )
    .await;
    let id = out["connectedAccountId"].as_str().unwrap().to_owned();
    let (mut on_a, mut buf_a) = events(&base_a, &id).await;
    let (mut on_b, mut buf_b) = events(&base_b, &id).await;
    next_event(&mut on_a, &mut buf_a, "snapshot").await;
    next_event(&mut on_b, &mut buf_b, "snapshot").await;

    let (status, page, _) = user_connects(out["redirectUrl"].as_str().unwrap(), &callback).await;
    assert_eq!(status, 200, "B completed the flow A started: {page}");
    let seen_b = next_event(&mut on_b, &mut buf_b, "connection.active").await;
    let seen_a = next_event(&mut on_a, &mut buf_a, "connection.active").await;
    assert_eq!(
        seen_a["id"], seen_b["id"],
        "one event, seen on both instances"
    );
    assert_ne!(seen_a["origin"], Value::Null);
    let account = api(
        reqwest::Method::GET,
        format!("{base_a}/api/v1/connectedAccounts/{id}"),
        None,
    )
    .await;
    assert_eq!(account["status"], "ACTIVE");

    // A change on A reaches B's listeners too.
    api(
        reqwest::Method::POST,
        format!("{base_a}/api/v1/connectedAccounts/{id}/disable"),
        None,
    )
    .await;
    let inactive = next_event(&mut on_b, &mut buf_b, "connection.inactive").await;
    assert_eq!(inactive["status"], "INACTIVE");
    drop((on_a, on_b));
    a.stop().await;
    b.stop().await;
}
