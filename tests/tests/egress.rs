//! Hosts typed by end users (connection parameters) are checked by what they resolve
//! to, on every call keyhaven makes to them: the provider's token and login
//! endpoints as well as the account's API. A name that passes the checks as written
//! (`tokens.example.test`) but resolves to this machine gets nothing: not the refresh
//! token, not the user's password, not the access token. The names are resolved by a
//! table of the test's own (`KeyhavenBuilder::dns_resolver`), as a DNS server that an
//! end user controls would answer them; every connection goes to 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyhaven::chrono::Utc;
use keyhaven::{
    ConnectedAccount, ConnectedAccountId, ConnectionRequest, ConnectionStatus, Credentials,
    EntityId, Error, Keyhaven, MemoryStore, NewIntegration, SecretFields, Store,
};
use keyhaven_tests::storm::TokenEndpoint;
use serde_json::json;

/// Answers names from a table the test fills; any other name does not resolve.
#[derive(Default)]
struct Table(Mutex<HashMap<String, IpAddr>>);

impl Table {
    fn set(&self, name: &str, ip: IpAddr) {
        self.0.lock().unwrap().insert(name.to_owned(), ip);
    }
}

impl reqwest::dns::Resolve for Table {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let found = self.0.lock().unwrap().get(name.as_str()).copied();
        Box::pin(async move {
            let ip = found.ok_or("no such name")?;
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const NAME: &str = "tokens.example.test";

fn keyhaven(store: Arc<MemoryStore>, table: Arc<Table>) -> Keyhaven {
    Keyhaven::builder()
        .shared_store(store)
        .dns_resolver(table)
        .build()
        .unwrap()
}

/// An `OAUTH2` integration (a public client: no secret) whose token endpoint and API
/// are on the host the end user names, on the endpoint's port.
fn host_typed_integration(endpoint: &TokenEndpoint, allow_private: bool) -> NewIntegration {
    let port: u16 = endpoint
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/token")
        .parse()
        .unwrap();
    let mut new = NewIntegration::new("selfhosted", "OAUTH2")
        .config("client_id", "public-client")
        .config("authorize_url", format!("http://{{host}}:{port}/authorize"))
        .config("token_url", format!("http://{{host}}:{port}/token"))
        .config("base_url", format!("http://{{host}}:{port}"))
        .config(
            "connection_params",
            json!({"host": "Your server's host name"}),
        );
    if allow_private {
        new = new.config("allow_private_hosts", true);
    }
    new
}

/// An `ACTIVE` account of `integration` on host `NAME`, whose access token expired.
async fn expired_account(store: &MemoryStore, integration: &keyhaven::Integration) -> String {
    let past = Utc::now() - keyhaven::chrono::Duration::minutes(1);
    account_expiring(store, integration, past).await
}

/// An `ACTIVE` account of `integration` on host `NAME`, whose access token expires
/// at `at`.
async fn account_expiring(
    store: &MemoryStore,
    integration: &keyhaven::Integration,
    at: keyhaven::chrono::DateTime<Utc>,
) -> String {
    let mut account = ConnectedAccount::new(
        ConnectedAccountId::generate().unwrap(),
        EntityId::new("mallory").unwrap(),
        integration.id.clone(),
        integration.app.clone(),
        integration.auth_scheme.clone(),
        ConnectionStatus::Active,
        Utc::now(),
    );
    account.params.insert("host".into(), json!(NAME));
    account.expires_at = Some(at);
    let mut fields = SecretFields::new();
    fields.insert("access_token", "old-access");
    fields.insert("refresh_token", "rt-egress");
    fields.insert("token_type", "Bearer");
    store
        .insert_account(&account, Some(&Credentials::new(fields, Some(at))), &[])
        .await
        .unwrap();
    account.id.to_string()
}

fn says_resolves_inward(e: &Error) {
    let text = e.to_string();
    assert!(
        text.contains(&format!("{NAME} (which resolves to 127.0.0.1)"))
            && text.contains("connected_account_params.host"),
        "{text}"
    );
}

#[tokio::test]
async fn refreshes_and_requests_never_reach_a_host_that_resolves_inward() {
    let endpoint = TokenEndpoint::start(Duration::ZERO).await;
    let table = Arc::new(Table::default());
    table.set(NAME, LOOPBACK);
    let store = Arc::new(MemoryStore::new());
    let kh = keyhaven(store.clone(), table.clone());

    let integration = kh
        .integrations()
        .create(host_typed_integration(&endpoint, false))
        .await
        .unwrap();
    let id = expired_account(&store, &integration).await;
    let err = kh.credentials(&id).await.unwrap_err();
    says_resolves_inward(&err);
    assert!(
        endpoint.refreshes().is_empty(),
        "the refresh token went nowhere"
    );
    let account = kh.connected_accounts().get(&id).await.unwrap();
    assert_eq!(
        account.status,
        ConnectionStatus::Active,
        "a failure, not a refusal"
    );
    // The account's API, by the same name, with a token still fresh: refused
    // before anything is sent, as the caller's mistake (the parameter), not as an
    // outage.
    let fresh = Utc::now() + keyhaven::chrono::Duration::hours(1);
    let id = account_expiring(&store, &integration, fresh).await;
    let err = kh.request(&id).get("/anything").send().await.unwrap_err();
    says_resolves_inward(&err);
    assert_eq!(err.kind(), keyhaven::ErrorKind::InvalidInput);
    assert!(endpoint.refreshes().is_empty());

    // An integration meant for a private network says so: then it is reached.
    let allowed = kh
        .integrations()
        .create(host_typed_integration(&endpoint, true))
        .await
        .unwrap();
    let id = expired_account(&store, &allowed).await;
    let credentials = kh.credentials(&id).await.unwrap();
    assert_eq!(credentials.get_str("refresh_token"), Some("rt-egress"));
    assert_eq!(endpoint.refreshes().get("rt-egress"), Some(&1));
}

/// A login endpoint that counts the logins it was sent.
async fn login_endpoint() -> (u16, Arc<AtomicUsize>) {
    let logins = Arc::new(AtomicUsize::new(0));
    let counted = logins.clone();
    let app = axum::Router::new().route(
        "/login",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { axum::Json(json!({"token": "not-a-jwt"})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, logins)
}

#[tokio::test]
async fn a_login_never_goes_to_a_host_that_resolves_inward() {
    let (port, logins) = login_endpoint().await;
    let table = Arc::new(Table::default());
    table.set(NAME, LOOPBACK);
    let store = Arc::new(MemoryStore::new());
    let kh = keyhaven(store, table);
    let integration = kh
        .integrations()
        .create(
            NewIntegration::new("selfhosted-login", "BASIC_WITH_JWT")
                .config("login_url", format!("http://{{host}}:{port}/login"))
                .config("hmac_secret", "a-secret-of-the-app-thirty-two-bytes!")
                .config(
                    "connection_params",
                    json!({"host": "Your server's host name"}),
                ),
        )
        .await
        .unwrap();
    let mut request = ConnectionRequest::for_integration(integration.id.as_str());
    request.auth_scheme = Some("BASIC_WITH_JWT".into());
    request.connected_account_params.insert("host", NAME);
    request
        .connected_account_params
        .insert("username", "victim");
    request
        .connected_account_params
        .insert("password", "the-users-password");
    let err = kh.initiate_connection(request).await.unwrap_err();
    says_resolves_inward(&err);
    assert_eq!(err.kind(), keyhaven::ErrorKind::InvalidInput, "{err}");
    assert!(!err.to_string().contains("the-users-password"));
    assert_eq!(logins.load(Ordering::SeqCst), 0, "no password was sent");
    let listed = kh
        .connected_accounts()
        .list(&keyhaven::AccountFilter::default())
        .await
        .unwrap();
    assert!(listed.items.is_empty(), "nothing stored");
}
