//! Helpers for keyhaven's end-to-end tests: a real OAuth 2.0 authorization server
//! (oidc-provider, started with Node.js on 127.0.0.1) and a user agent that signs in
//! and approves or denies, as a person at a browser would.
//!
//! When Node.js or the server's packages are missing, [`OidcProvider::start`] says
//! why and returns `None`, so the test skips; with `KEYHAVEN_REQUIRE_SERVICES=1`
//! (set by `cargo xtask test` and CI) it panics instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

pub mod load;
pub mod storm;
pub mod upstream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use keyhaven::NewIntegration;
use keyhaven::url::Url;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The callback URL the test server's clients are registered with. Nothing listens
/// there: the user agent stops when the provider sends it there.
pub const CALLBACK_URL: &str = "http://127.0.0.1:9/keyhaven/callback";

/// A new master key: its ring, and its base64 for `KEYHAVEN_MASTER_KEY` (so that
/// other processes open the same store).
pub fn new_key() -> (keyhaven::KeyRing, String) {
    let k = keyhaven::MasterKey::generate().unwrap();
    let b64 = k.to_base64().to_string();
    (keyhaven::KeyRing::new(k, []), b64)
}

/// Whether missing services fail the test instead of skipping it.
pub fn services_required() -> bool {
    std::env::var("KEYHAVEN_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Skips (prints why and returns) or, when services are required, panics.
pub fn skip_or_fail(why: &str) {
    if services_required() {
        panic!("required test service unavailable: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Reads a started `keyhaven serve`'s stdout until the line that says where it
/// listens (`listening on <scheme>://127.0.0.1:<port>`), keeps reading the rest in
/// a thread (so the process never blocks on a full pipe), and returns the port.
/// The child must have been spawned with `stdout(Stdio::piped())`.
///
/// # Panics
/// The child ends, or prints no such line.
pub fn serve_port(child: &mut std::process::Child, scheme: &str) -> u16 {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("serve's stdout is piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let marker = format!("listening on {scheme}://127.0.0.1:");
    let port = loop {
        let line = lines
            .next()
            .expect("serve prints where it listens")
            .expect("serve's stdout is readable");
        if let Some(port) = line
            .split(marker.as_str())
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
        {
            break port;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    port
}

/// A running oidc-provider: a certified OpenID Connect / OAuth 2.0 server.
#[derive(Debug)]
pub struct OidcProvider {
    _child: Child,
    /// Its issuer URL, `http://127.0.0.1:PORT`.
    pub issuer: String,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Starts one on an OS-chosen port, with access tokens living `access_ttl_secs`,
    /// its clients registered with [`CALLBACK_URL`].
    pub async fn start(access_ttl_secs: u64) -> Option<Self> {
        Self::start_with_callback(access_ttl_secs, CALLBACK_URL).await
    }

    /// As [`OidcProvider::start`], its clients registered with `callback` (a keyhaven
    /// server's own callback route).
    pub async fn start_with_callback(access_ttl_secs: u64, callback: &str) -> Option<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc");
        if !dir.join("node_modules/oidc-provider").is_dir() {
            skip_or_fail(
                "the test OAuth server is not installed: run `cargo xtask test`, or `npm ci --prefix tests/oidc`",
            );
            return None;
        }
        let mut child = match Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("CALLBACK_URL", callback)
            .env("ACCESS_TOKEN_TTL", access_ttl_secs.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                skip_or_fail(&format!("cannot run node for the test OAuth server: {e}"));
                return None;
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the OAuth server starts within 30 s")
            .expect("its stdout is readable")
            .expect("it prints its issuer");
        // Keep reading, so that the server never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ready: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
        let issuer = ready["issuer"].as_str().expect("issuer").to_owned();
        Some(Self {
            _child: child,
            issuer,
            http: reqwest::Client::new(),
        })
    }

    /// An `OAUTH2` integration for one of its clients (`kh-basic`, `kh-post`,
    /// `kh-public`, `kh-norotate`), asking for `openid offline_access api`.
    pub fn integration(&self, client: &str) -> NewIntegration {
        let mut new = NewIntegration::new("oidc-test", "OAUTH2")
            .name(client)
            .config("client_id", client)
            .config("authorize_url", format!("{}/auth", self.issuer))
            .config("token_url", format!("{}/token", self.issuer))
            .config(
                "revocation_url",
                format!("{}/token/revocation", self.issuer),
            )
            .config("issuer", self.issuer.clone())
            .config("base_url", self.issuer.clone())
            .config("authorize_params", serde_json::json!({"prompt": "consent"}))
            .scope("openid")
            .scope("offline_access")
            .scope("api");
        if client != "kh-public" {
            new = new.config("client_secret", format!("{client}-secret"));
        }
        if client == "kh-post" {
            new = new.config("token_auth_method", "client_secret_post");
        }
        new
    }

    /// A keyhaven in memory whose OAuth callback is `callback`, with an integration
    /// for `client` (as [`OidcProvider::integration`]).
    pub async fn keyhaven_for(
        &self,
        callback: &str,
        client: &str,
    ) -> (keyhaven::Keyhaven, keyhaven::Integration) {
        let kh = keyhaven::Keyhaven::builder()
            .store(keyhaven::MemoryStore::new())
            .callback_url(callback)
            .build()
            .unwrap();
        let integration = kh
            .integrations()
            .create(self.integration(client))
            .await
            .unwrap();
        (kh, integration)
    }

    /// Token requests counted by grant type, and revocation and userinfo calls.
    pub async fn stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/__stats", self.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Token requests of `grant_type` so far.
    pub async fn token_requests(&self, grant_type: &str) -> u64 {
        self.stats().await["token"][grant_type]
            .as_u64()
            .unwrap_or(0)
    }

    /// Makes the next `count` token requests fail with `status`, after `delay_ms`.
    pub async fn fail_next_token_requests(&self, status: u16, count: u32, delay_ms: u64) {
        self.http
            .post(format!(
                "{}/__fail?status={status}&count={count}&delay_ms={delay_ms}",
                self.issuer
            ))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Calls the protected userinfo resource with a bearer token; returns status and body.
    pub async fn userinfo(&self, access_token: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}/me", self.issuer))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Asks the server's introspection endpoint whether a token is active.
    pub async fn introspect(&self, client: &str, token: &str) -> bool {
        let r: serde_json::Value = self
            .http
            .post(format!("{}/token/introspection", self.issuer))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["active"].as_bool().unwrap_or(false)
    }

    /// Revokes a token at the server directly, as a user removing the app would.
    pub async fn revoke(&self, client: &str, token: &str) {
        self.http
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
}

/// What the user does at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Sign in and approve.
    Approve,
    /// Cancel at the first page.
    Deny,
}

/// A user agent with a cookie jar that follows the provider's pages as a person would,
/// until the provider sends it to the callback URL.
///
/// The jar is `cookie_store`'s (RFC 6265: domains, paths, expiry), kept here rather
/// than through reqwest's `cookies` feature: a workspace build unifies features, so
/// that feature would put reqwest's cookie layer (which parses every request's URL
/// again) into the keyhaven binary and the benchmarks built from this workspace.
#[derive(Debug)]
pub struct UserAgent {
    client: reqwest::Client,
    jar: std::sync::Mutex<cookie_store::CookieStore>,
}

impl Default for UserAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl UserAgent {
    /// A fresh browser: no cookies.
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            client,
            jar: std::sync::Mutex::new(cookie_store::CookieStore::new()),
        }
    }

    /// Sends `request` to `url` with the jar's cookies for it, and keeps the cookies
    /// the answer sets.
    async fn send(&self, url: &Url, request: reqwest::RequestBuilder) -> reqwest::Response {
        let cookies: Vec<String> = {
            let jar = self.jar.lock().unwrap();
            jar.get_request_values(url)
                .map(|(name, value)| format!("{name}={value}"))
                .collect()
        };
        let request = if cookies.is_empty() {
            request
        } else {
            request.header("cookie", cookies.join("; "))
        };
        let response = request.send().await.unwrap();
        let mut jar = self.jar.lock().unwrap();
        for set in response.headers().get_all("set-cookie") {
            if let Ok(text) = set.to_str() {
                // A cookie the jar refuses (another domain, a bad attribute) is
                // dropped, as a browser drops it.
                let _ = jar.parse(text, url);
            }
        }
        response
    }

    /// Opens `authorize_url`, signs in as `login` and approves (or denies), and
    /// returns the query of the callback the provider redirects to.
    pub async fn authorize(
        &self,
        authorize_url: &str,
        login: &str,
        decision: Decision,
    ) -> BTreeMap<String, String> {
        self.authorize_to(authorize_url, login, decision, CALLBACK_URL)
            .await
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// As [`UserAgent::authorize`], stopping when the provider redirects under
    /// `callback`; returns that whole URL, for the caller to open as the browser would.
    pub async fn authorize_to(
        &self,
        authorize_url: &str,
        login: &str,
        decision: Decision,
        callback: &str,
    ) -> Url {
        let mut next = Url::parse(authorize_url).unwrap();
        let mut post: Option<Vec<(&str, String)>> = None;
        for _ in 0..20 {
            if next.as_str().starts_with(callback) {
                return next;
            }
            let request = match post.take() {
                Some(form) => self.client.post(next.clone()).form(&form),
                None => self.client.get(next.clone()),
            };
            let response = self.send(&next, request).await;
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                next = next.join(&location).unwrap();
                continue;
            }
            let page = response.text().await.unwrap();
            assert!(
                status.is_success(),
                "the provider answered {status}: {page}"
            );
            let interaction = next.clone();
            if decision == Decision::Deny {
                next = Url::parse(&format!(
                    "{}/abort",
                    interaction.as_str().trim_end_matches('/')
                ))
                .unwrap();
            } else if page.contains(r#"name="prompt" value="login""#) {
                post = Some(vec![
                    ("prompt", "login".into()),
                    ("login", login.into()),
                    ("password", "any".into()),
                ]);
            } else if page.contains(r#"name="prompt" value="consent""#) {
                post = Some(vec![("prompt", "consent".into())]);
            } else {
                panic!("unexpected page at {next}: {page}");
            }
        }
        panic!("the provider never redirected to the callback");
    }
}
