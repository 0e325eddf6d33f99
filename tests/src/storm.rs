//! Refresh storms: a token endpoint on 127.0.0.1 that counts refreshes per refresh
//! token, and many `OAUTH2` accounts whose access tokens have expired, so that a
//! test can ask for all of them at once and check that each was refreshed exactly
//! once, whichever process or server asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Form, Json, Router};
use keyhaven::chrono::Utc;
use keyhaven::{
    ConnectedAccount, ConnectedAccountId, ConnectionStatus, Credentials, EntityId, Integration,
    Keyhaven, NewIntegration, SecretFields, Store,
};
use std::sync::Mutex;

/// How many accounts a storm has.
pub const ACCOUNTS: usize = 1000;

/// A way for the token endpoint to misbehave, for fault tests.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this HTTP status with an error body.
    Status(u16),
    /// Wait this long before answering (longer than the client's timeout: a hang).
    Slow(Duration),
    /// Answer 200 with an HTML page instead of a token.
    Malformed,
    /// Answer 200 with a JSON body of this many bytes, streamed without a length.
    Huge(usize),
    /// Answer 200 JSON without an `access_token`.
    NoToken,
}

#[derive(Default)]
struct Counts {
    refreshes: Mutex<HashMap<String, u64>>,
    codes: Mutex<u64>,
    delay: Duration,
    fault: Mutex<Option<Fault>>,
}

/// A token endpoint answering `refresh_token` grants: a new access token
/// (`at-<refresh token>-<n>`, one hour), the same refresh token; counts each.
#[derive(Debug)]
pub struct TokenEndpoint {
    /// `http://127.0.0.1:PORT/token`.
    pub url: String,
    /// Where it listens.
    addr: std::net::SocketAddr,
    counts: Arc<CountsHandle>,
    _server: tokio::task::JoinHandle<()>,
}

struct CountsHandle(Counts);

impl std::fmt::Debug for CountsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counts")
    }
}

fn faulty(fault: Fault) -> axum::response::Response {
    use axum::response::IntoResponse;
    match fault {
        Fault::Status(status) => (
            axum::http::StatusCode::from_u16(status).unwrap(),
            Json(serde_json::json!({"error": "server_error"})),
        )
            .into_response(),
        Fault::Slow(_) => unreachable!("handled before"),
        Fault::Malformed => (
            [(axum::http::header::CONTENT_TYPE, "text/html")],
            "<html><body>Service temporarily down</body></html>",
        )
            .into_response(),
        Fault::Huge(bytes) => {
            let chunk = axum::body::Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = bytes.div_ceil(chunk.len());
            let body = futures::stream::iter(
                (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
            );
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
        Fault::NoToken => Json(serde_json::json!({"token_type": "Bearer"})).into_response(),
    }
}

async fn token(
    State(counts): State<Arc<CountsHandle>>,
    Form(form): Form<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let fault = counts.0.fault.lock().unwrap().clone();
    match fault {
        Some(Fault::Slow(wait)) => tokio::time::sleep(wait).await,
        Some(other) => return faulty(other),
        None => {}
    }
    let refused = || {
        (
            axum::http::StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "invalid_grant"})),
        )
            .into_response()
    };
    let rt = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => match form.get("refresh_token") {
            Some(rt) => rt.clone(),
            None => return refused(),
        },
        // A code is exchanged for the refresh token `rt-<code>`.
        Some("authorization_code") => {
            let Some(code) = form.get("code") else {
                return refused();
            };
            *counts.0.codes.lock().unwrap() += 1;
            return Json(serde_json::json!({
                "access_token": format!("at-rt-{code}-0"),
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": format!("rt-{code}"),
            }))
            .into_response();
        }
        _ => return refused(),
    };
    let n = {
        let mut map = counts.0.refreshes.lock().unwrap();
        let n = map.entry(rt.clone()).or_default();
        *n += 1;
        *n
    };
    if !counts.0.delay.is_zero() {
        tokio::time::sleep(counts.0.delay).await;
    }
    Json(serde_json::json!({
        "access_token": format!("at-{rt}-{n}"),
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": rt,
    }))
    .into_response()
}

impl TokenEndpoint {
    /// Starts one on an OS-chosen port; each answer waits `delay` (a provider's
    /// latency).
    pub async fn start(delay: Duration) -> Self {
        let counts = Arc::new(CountsHandle(Counts {
            delay,
            ..Counts::default()
        }));
        let app = Router::new()
            .route("/token", post(token))
            .with_state(counts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}/token");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            addr,
            counts,
            _server: server,
        }
    }

    /// Makes every answer from now on misbehave as `fault` (`None`: behave).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.counts.0.fault.lock().unwrap() = fault;
    }

    /// Authorization codes exchanged so far.
    pub fn code_exchanges(&self) -> u64 {
        *self.counts.0.codes.lock().unwrap()
    }

    /// Refreshes counted so far, by refresh token.
    pub fn refreshes(&self) -> HashMap<String, u64> {
        self.counts.0.refreshes.lock().unwrap().clone()
    }

    /// The `OAUTH2` integration whose token endpoint this is.
    pub fn integration(&self) -> NewIntegration {
        NewIntegration::new("storm", "OAUTH2")
            .name("storm")
            .config("client_id", "storm-client")
            .config("client_secret", "storm-secret")
            .config("authorize_url", self.url.replace("/token", "/authorize"))
            .config("token_url", self.url.clone())
            .config("base_url", self.url.replace("/token", ""))
    }
}

/// A turn at PostgreSQL for a storm: the storms of one test binary that use
/// PostgreSQL take turns. Under a storm every keyhaven instance fills its pools (up
/// to 10 connections for statements and 8 for refresh locks), so a four-instance
/// storm holds up to 72 of the server's 100 connections, and two storms at once can
/// run out ("too many clients"). Hold the guard for the whole test.
pub async fn postgres_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Creates the endpoint's integration through `kh` and `n` `ACTIVE` accounts in
/// `store` whose access tokens expired a minute ago (refresh token `rt-<i>`).
/// Returns their ids, in order.
pub async fn seed(
    kh: &Keyhaven,
    store: &dyn Store,
    endpoint: &TokenEndpoint,
    n: usize,
) -> (Integration, Vec<ConnectedAccountId>) {
    let past = Utc::now() - keyhaven::chrono::Duration::minutes(1);
    seed_with(kh, store, endpoint.integration(), n, "old", past).await
}

/// Creates `integration` through `kh` and `n` `ACTIVE` `OAUTH2` accounts in `store`
/// with access token `<access>-<i>` expiring at `expires_at` and refresh token
/// `rt-<i>`. Returns their ids, in order.
pub async fn seed_with(
    kh: &Keyhaven,
    store: &dyn Store,
    integration: NewIntegration,
    n: usize,
    access: &str,
    expires_at: keyhaven::chrono::DateTime<Utc>,
) -> (Integration, Vec<ConnectedAccountId>) {
    let integration = kh.integrations().create(integration).await.unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let now = Utc::now();
        let account = {
            let mut account = ConnectedAccount::new(
                ConnectedAccountId::generate().unwrap(),
                EntityId::new(format!("user-{i}")).unwrap(),
                integration.id.clone(),
                integration.app.clone(),
                integration.auth_scheme.clone(),
                ConnectionStatus::Active,
                now,
            );
            account.expires_at = Some(expires_at);
            account
        };
        let mut fields = SecretFields::new();
        fields.insert("access_token", format!("{access}-{i}"));
        fields.insert("refresh_token", format!("rt-{i}"));
        fields.insert("token_type", "Bearer");
        let credentials = Credentials::new(fields, Some(expires_at));
        store
            .insert_account(&account, Some(&credentials), &[])
            .await
            .unwrap();
        ids.push(account.id);
    }
    (integration, ids)
}

/// Waits until `kh` has heard of the changes written so far straight to `store`
/// (not through `kh`, as [`seed`] writes), so that none of their notices lands in
/// what a test then counts or times. `kh` first holds a copy of the listing of
/// `id`'s entity (listed until one listing is served from the copy: a notice that
/// comes meanwhile keeps a copy from being kept); then one more change is written
/// (a label on `id`), and `kh`'s listing must show it. A store's notices come in
/// order (PostgreSQL's on one connection, after the "anything may have changed"
/// of its listener's start; SQLite's feed tells of every commit before its poll),
/// so the earlier ones have come too. A store that reports nothing is waited for
/// until the copy ages ([`keyhaven::ConnectedAccounts::CACHED_FOR`]).
pub async fn settle(kh: &Keyhaven, store: &dyn Store, id: &ConnectedAccountId) {
    let accounts = kh.connected_accounts();
    let label = keyhaven::Label::new("settled").unwrap();
    let mut account = store.get_account(id).await.unwrap().unwrap();
    let filter = keyhaven::AccountFilter {
        entity_ids: vec![account.entity_id.clone()],
        ..keyhaven::AccountFilter::default()
    };
    let started = std::time::Instant::now();
    let waited = || {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the store's change feed did not settle in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5))
    };
    loop {
        let hits = kh.listing_cache_counts().hits;
        accounts.list_cached(&filter).await.unwrap();
        if kh.listing_cache_counts().hits > hits {
            break;
        }
        waited().await;
    }
    account.labels.push(label.clone());
    store
        .update_account(&account, keyhaven::CredentialsUpdate::Keep, &[])
        .await
        .unwrap();
    loop {
        let page = accounts.list_cached(&filter).await.unwrap();
        if page
            .items
            .iter()
            .any(|a| a.id == *id && a.labels.contains(&label))
        {
            break;
        }
        waited().await;
    }
}

/// Checks a storm's outcome: every one of `n` refresh tokens refreshed exactly
/// once, and nothing else asked for.
pub fn assert_each_refreshed_once(endpoint: &TokenEndpoint, n: usize) {
    assert_each_refreshed(endpoint, n, 1);
}

/// Checks the outcome of `times` storms on the same endpoint: every one of `n`
/// refresh tokens refreshed exactly `times` times, and nothing else asked for.
pub fn assert_each_refreshed(endpoint: &TokenEndpoint, n: usize, times: u64) {
    let counts = endpoint.refreshes();
    let other: Vec<_> = counts.iter().filter(|(_, c)| **c != times).collect();
    assert!(
        other.is_empty(),
        "refreshed other than {times} time(s): {other:?}"
    );
    assert_eq!(counts.len(), n, "every account refreshed");
    for i in 0..n {
        assert!(counts.contains_key(&format!("rt-{i}")), "rt-{i} refreshed");
    }
}

/// Asks `kh` for the credentials of every account of `ids` at once; how long until
/// all were served, each with a token the endpoint issued.
pub async fn every_account_at_once(kh: &Keyhaven, ids: &[ConnectedAccountId]) -> Duration {
    let started = std::time::Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (kh, id) = (kh.clone(), id.to_string());
            tokio::spawn(async move { kh.credentials(&id).await.map_err(|e| e.to_string()) })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => assert!(is_fresh(c.get_str("access_token").unwrap())),
            Err(e) => errors.push(e),
        }
    }
    let took = started.elapsed();
    assert!(
        errors.is_empty(),
        "{} calls failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    took
}

/// Whether an access token is one the endpoint issued (not the expired one).
pub fn is_fresh(token: &str) -> bool {
    token.starts_with("at-rt-")
}

/// How many times a storm's reference is measured; the median is kept. One
/// measurement alone varied from 46 to 255 ms for the same 1,000 requests.
const REFERENCE_RUNS: usize = 3;

/// The median of [`REFERENCE_RUNS`] runs of `once`.
async fn median_of<F: std::future::Future<Output = Duration>>(once: impl Fn() -> F) -> Duration {
    let mut runs = Vec::with_capacity(REFERENCE_RUNS);
    for _ in 0..REFERENCE_RUNS {
        runs.push(once().await);
    }
    runs.sort();
    runs[REFERENCE_RUNS / 2]
}

/// The reference for a storm: `n` token requests made at once with a bare reqwest
/// client against a fresh endpoint (no store, no locks); the median of three such
/// runs, each on a new client and endpoint. Returns how long all took.
pub async fn bare_token_requests(n: usize) -> Duration {
    median_of(|| bare_token_requests_once(n)).await
}

async fn bare_token_requests_once(n: usize) -> Duration {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let took = token_requests_at_once(&reqwest::Client::new(), &endpoint.url, n).await;
    assert_each_refreshed_once(&endpoint, n);
    connections_closed(endpoint).await;
    took
}

/// Drops a reference run's endpoint (its client is dropped already) and waits until
/// the connections to it are closed (at most 10 s; 1 s where `/proc/net/tcp` does
/// not tell). Closing 1,000 connections takes the runtime up to about a second
/// after the drop; without this wait that work fell into the next
/// run, the next reference or the storm after it, and slowed it (a scratch loop of
/// 1,000 bare token requests on a new client per round: 126 ms a round with the
/// previous round's connections closing, 41–45 ms once they had closed).
async fn connections_closed(endpoint: TokenEndpoint) {
    let port = endpoint.addr.port();
    drop(endpoint);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open_sockets(port) {
            None => return tokio::time::sleep(Duration::from_secs(1)).await,
            Some(0) => return,
            Some(_) if std::time::Instant::now() >= deadline => return,
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The TCP connections from or to `port` on this machine that are still open at
/// either end (established, or closed by the peer and not yet here), when
/// `/proc/net/tcp` tells: only this endpoint's, whatever other tests of the same
/// binary have open.
fn open_sockets(port: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
    };
    let open = table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(local), Some(remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            // 01: established; 08: closed by the peer, not yet by its owner.
            matches!(state, "01" | "08")
                && (port_of(local) == Some(port) || port_of(remote) == Some(port))
        })
        .count();
    Some(open)
}

/// The reference for a storm in a process that has refreshed before: `n` token
/// requests made at once, twice, with one bare reqwest client against one fresh
/// endpoint; how long the second round took, on the connections the first opened
/// (the median of three such runs).
pub async fn bare_token_requests_warm(n: usize) -> Duration {
    median_of(|| bare_token_requests_warm_once(n)).await
}

async fn bare_token_requests_warm_once(n: usize) -> Duration {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let http = reqwest::Client::new();
    token_requests_at_once(&http, &endpoint.url, n).await;
    let took = token_requests_at_once(&http, &endpoint.url, n).await;
    assert_each_refreshed(&endpoint, n, 2);
    drop(http);
    connections_closed(endpoint).await;
    took
}

/// `n` refresh requests (refresh tokens `rt-0`...) sent at once with `http` to the
/// token endpoint at `url`; how long until every answer was read.
async fn token_requests_at_once(http: &reqwest::Client, url: &str, n: usize) -> Duration {
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let request = http.post(url).form(&[
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", format!("rt-{i}")),
                ("client_id", "storm-client".to_owned()),
            ]);
            tokio::spawn(async move {
                let r = request.send().await.unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// A storm's figures, printed as one `STORM {json}` line (read by `cargo xtask
/// bench` from a `--nocapture` run).
#[derive(Debug, Clone)]
pub struct Figures {
    /// `library` or `server`.
    pub place: &'static str,
    /// `SQLite` or `PostgreSQL`.
    pub store: &'static str,
    /// `distinct accounts` or `one token`.
    pub storm: &'static str,
    /// Instances (processes or servers) asking at once.
    pub instances: usize,
    /// Calls made in all.
    pub calls: usize,
    /// Refresh requests the token endpoint answered.
    pub token_requests: u64,
    /// How long all calls took.
    pub took: Duration,
    /// The same number of bare reqwest token requests, when measured.
    pub bare: Option<Duration>,
    /// Whether the ratio to `bare` is held to the target (≤ 1.5x); `false` for
    /// figures shown to explain others (the storm without a database).
    pub judged: bool,
}

impl Figures {
    /// Prints the `STORM` line.
    pub fn record(&self) {
        let line = serde_json::json!({
            "where": self.place, "store": self.store, "storm": self.storm,
            "instances": self.instances, "calls": self.calls,
            "token_requests": self.token_requests, "seconds": self.took.as_secs_f64(),
            "bare_seconds": self.bare.map(|b| b.as_secs_f64()),
            "judged": self.judged,
        });
        println!("STORM {line}");
    }
}

/// All refresh token requests the endpoint answered.
pub fn total_refreshes(endpoint: &TokenEndpoint) -> u64 {
    endpoint.refreshes().values().sum()
}
