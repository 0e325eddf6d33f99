//! What the CLI's tests share: a `keyhaven serve` child process (with fixed keys on
//! a given store, or the test's own options), killed when dropped.

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The admin key the servers are started with.
pub const ADMIN: &str = "kh_test_admin_key_0123456789";
/// The credentials key the servers are started with.
pub const CREDS: &str = "khc_test_credentials_key_0123456789";

/// A `keyhaven serve` child, killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Kills it with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `keyhaven serve` listening on 127.0.0.1 on a port the OS chooses, not started:
/// add the test's options, then [`start`] it.
pub fn serve_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyhaven"));
    command.args(["serve", "--listen", "127.0.0.1:0"]);
    command
}

/// `keyhaven serve` as a new user runs it, with the admin key `key` and the SQLite
/// data directory `data_dir`: no redirect allowlist, no OAuth client and no other
/// store or server from the environment.
pub fn new_user_serve_command(key: &str, data_dir: &std::path::Path) -> Command {
    let mut command = serve_command();
    command
        .args(["--api-key", key])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("KEYHAVEN_DATABASE_URL")
        .env_remove("KEYHAVEN_SERVER")
        .env_remove("KEYHAVEN_CONFIG")
        .env_remove("KEYHAVEN_REDIRECT_ALLOWLIST")
        .env_remove("KEYHAVEN_GITHUB_CLIENT_ID")
        .env_remove("KEYHAVEN_GITHUB_CLIENT_SECRET");
    command
}

/// Starts `command` (a [`serve_command`]) and waits until it says where it listens.
pub fn start(mut command: Command) -> Server {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("keyhaven serve prints where it listens")
            .unwrap();
        if let Some(rest) = line.strip_prefix("keyhaven listening on http://127.0.0.1:") {
            break rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{line}"));
        }
    };
    // Keep reading, so that the server never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, port }
}

/// Starts `keyhaven serve` with `store_args` (`--database-url URL`, or nothing for
/// the SQLite store in `data_dir`), the master key `key_b64`, and [`ADMIN`] /
/// [`CREDS`].
pub fn serve(store_args: &[&str], data_dir: &std::path::Path, key_b64: &str) -> Server {
    let mut command = serve_command();
    command
        .args(["--api-key", ADMIN, "--credentials-key", CREDS])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--audit-log")
        .arg(data_dir.join(format!("audit-{}.log", unique())))
        .args(store_args)
        .env("KEYHAVEN_MASTER_KEY", key_b64)
        .env_remove("KEYHAVEN_DATABASE_URL")
        .env_remove("KEYHAVEN_DATA_DIR")
        .env("RUST_LOG", "warn");
    start(command)
}

/// A name no other test of this run uses.
pub fn unique() -> String {
    keyhaven::ConnectedAccountId::generate()
        .unwrap()
        .as_str()
        .to_owned()
}

pub use keyhaven_tests::new_key as key;

/// An HTTP client for the tests' calls (60 s timeout).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Creates an `API_KEY` integration for `openai` on `server`; returns its id.
pub async fn api_key_integration(http: &reqwest::Client, server: &Server) -> String {
    let integration: serde_json::Value = http
        .post(server.url("/api/v1/integrations"))
        .header("x-api-key", ADMIN)
        .json(&serde_json::json!({"name": "keys", "appId": "openai", "authScheme": "API_KEY", "authConfig": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    integration["id"].as_str().unwrap().to_owned()
}

/// Every acknowledged `(account id, api key)` is on `server`, its key whole.
pub async fn assert_acknowledged_whole(
    http: &reqwest::Client,
    server: &Server,
    acknowledged: &[(String, String)],
) {
    for (id, api_key) in acknowledged {
        let r = http
            .get(server.url(&format!("/api/v1/connectedAccounts/{id}/credentials")))
            .header("x-api-key", CREDS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged account {id} is there");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["credentials"]["api_key"],
            api_key.as_str(),
            "{id} whole"
        );
    }
}

/// A proxy on 127.0.0.1 in front of a server that keeps the body of every answer it
/// passes on, so that a test can search all that a client received (for secrets)
/// without hooking into the client. It runs on a thread of its own until the test
/// process ends.
pub struct Recorder {
    /// Where clients reach it: `http://127.0.0.1:PORT`, paths passed on as they come.
    pub url: String,
    answers: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    /// A recorder passing every request on to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Self {
        let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = answers.clone();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (client, kept, upstream) = (client.clone(), kept.clone(), upstream.clone());
            async move { pass_on(&client, &upstream, request, &kept).await }
        });
        Self {
            url: serve_on_thread(app),
            answers,
        }
    }

    /// The bodies of every answer so far, one after the other.
    pub fn answers(&self) -> String {
        String::from_utf8_lossy(&self.answers.lock().unwrap()).into_owned()
    }

    /// How many answers passed.
    pub fn count(&self) -> usize {
        self.answers().lines().count()
    }
}

async fn pass_on(
    client: &reqwest::Client,
    upstream: &str,
    request: axum::extract::Request,
    kept: &std::sync::Mutex<Vec<u8>>,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let target = format!(
        "{upstream}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = client.request(parts.method, target).body(body);
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            forward = forward.header(name, value);
        }
    }
    let answer = forward.send().await.unwrap();
    let mut response = axum::response::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap();
    {
        let mut kept = kept.lock().unwrap();
        kept.extend_from_slice(&bytes);
        kept.push(b'\n');
    }
    response.body(axum::body::Body::from(bytes)).unwrap()
}

/// Serves `app` on 127.0.0.1 from a thread of its own until the test process ends;
/// answers its URL.
fn serve_on_thread(app: axum::Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    url
}

/// An API on 127.0.0.1 for proxy tests: `GET /check` says whether `key` came in
/// `X-Api-Key` (never the key itself, so that answers can be searched for it), with
/// the `X-Test` header and the query that came.
pub fn check_api(key: &'static str) -> String {
    let app = axum::Router::new().route(
        "/check",
        axum::routing::get(
            move |headers: axum::http::HeaderMap, uri: axum::http::Uri| async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                axum::Json(serde_json::json!({
                    "key_ok": header("x-api-key") == key,
                    "x_test": header("x-test"),
                    "query": uri.query().unwrap_or_default(),
                }))
            },
        ),
    );
    serve_on_thread(app)
}
