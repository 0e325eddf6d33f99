//! OAUTH2 and OAUTH2_CLIENT_CREDENTIALS end to end against a real authorization
//! server (oidc-provider on 127.0.0.1): the user approves or denies, callbacks,
//! tokens used at a protected resource, refresh, rotation, revocation, and the
//! fault cases (forged, replayed and expired states, a wrong issuer, a failing
//! token endpoint, a refused refresh, one refresh for 1,000 concurrent callers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keyhaven::chrono::{self, Utc};
use keyhaven::http::Method;
use keyhaven::url::Url;
use keyhaven::{
    AccountEvent, ConnectionRequest, ConnectionStatus, ErrorKind, EventKind, Keyhaven, ManualClock,
    MemoryStore, OutgoingRequest,
};
use keyhaven_oauth2::{OAuth2Tokens, ProviderHttp};
use keyhaven_tests::{CALLBACK_URL, Decision, OidcProvider, UserAgent};

const APP_URL: &str = "https://app.example.com/connected";

struct Setup {
    kh: Keyhaven,
    clock: Arc<ManualClock>,
    server: OidcProvider,
}

async fn setup() -> Option<Setup> {
    setup_with(|b| b).await
}

async fn setup_with(
    customise: impl FnOnce(keyhaven::KeyhavenBuilder) -> keyhaven::KeyhavenBuilder,
) -> Option<Setup> {
    let server = OidcProvider::start(600).await?;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let builder = Keyhaven::builder()
        .store(MemoryStore::new())
        .clock(clock.clone())
        .callback_url(CALLBACK_URL)
        .allow_redirect_url("https://app.example.com/");
    let kh = customise(builder).build().unwrap();
    Some(Setup { kh, clock, server })
}

/// Creates the integration, initiates, lets the user decide, handles the callback.
async fn connect(
    s: &Setup,
    client: &str,
    decision: Decision,
) -> (String, keyhaven::CallbackOutcome) {
    let integration =
        s.kh.integrations()
            .create(s.server.integration(client))
            .await
            .unwrap();
    let out =
        s.kh.entity("alice")
            .unwrap()
            .initiate_connection(
                ConnectionRequest::for_integration(integration.id.as_str()).redirect_url(APP_URL),
            )
            .await
            .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Initiated);
    let id = out.connected_account_id.to_string();
    let url = out
        .redirect_url
        .expect("an OAuth initiate answers a redirect URL");
    let query = UserAgent::new().authorize(&url, "alice", decision).await;
    let outcome = s.kh.handle_callback(&query).await.unwrap();
    (id, outcome)
}

/// The events told so far.
fn drain(rx: &mut tokio::sync::broadcast::Receiver<AccountEvent>) -> Vec<AccountEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn kinds(events: &[AccountEvent]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

async fn access_token(kh: &Keyhaven, id: &str) -> String {
    let creds = kh.credentials(id).await.unwrap();
    OAuth2Tokens::new(&creds).access_token().unwrap().to_owned()
}

#[tokio::test]
async fn code_flow_with_pkce_refresh_rotation_and_revocation() {
    let Some(s) = setup().await else { return };
    let integration =
        s.kh.integrations()
            .create(s.server.integration("kh-basic"))
            .await
            .unwrap();
    let out =
        s.kh.entity("alice")
            .unwrap()
            .initiate_connection(
                ConnectionRequest::for_integration(integration.id.as_str())
                    .redirect_url(APP_URL)
                    .label("e2e"),
            )
            .await
            .unwrap();
    let id = out.connected_account_id.to_string();
    assert_eq!(
        s.kh.connected_accounts().get(&id).await.unwrap().status,
        ConnectionStatus::Initiated
    );

    // The authorization URL: client, callback, scopes, state, PKCE S256, extra params.
    let auth = Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = auth.query_pairs().into_owned().collect();
    assert!(
        auth.as_str()
            .starts_with(&format!("{}/auth?", s.server.issuer))
    );
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "kh-basic");
    assert_eq!(q["redirect_uri"], CALLBACK_URL);
    assert_eq!(q["scope"], "openid offline_access api");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert_eq!(q["prompt"], "consent");
    assert!(
        q["state"].len() >= 32,
        "state carries at least 128 random bits"
    );

    // The user approves; the callback carries the code, the state and iss (RFC 9207).
    let query = UserAgent::new()
        .authorize(auth.as_str(), "alice", Decision::Approve)
        .await;
    assert_eq!(query["state"], q["state"]);
    assert_eq!(query["iss"], s.server.issuer);
    assert!(query.contains_key("code"));
    let outcome = s.kh.handle_callback(&query).await.unwrap();
    assert!(outcome.succeeded());
    assert_eq!(outcome.account.status, ConnectionStatus::Active);
    let back = outcome.redirect_to.unwrap();
    assert!(back.as_str().starts_with(APP_URL));
    let back_q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(back_q["status"], "success");
    assert_eq!(back_q["connectedAccountId"], id);

    // Stored: access and refresh tokens, expiry, granted scopes, id token.
    let creds = s.kh.credentials(&id).await.unwrap();
    let tokens = OAuth2Tokens::new(&creds);
    let first_access = tokens.access_token().unwrap().to_owned();
    let first_refresh = tokens.refresh_token().expect("a refresh token").to_owned();
    assert!(tokens.id_token().is_some(), "the id token is kept");
    assert!(tokens.scopes().contains(&"openid"), "{:?}", tokens.scopes());
    let expires = creds.expires_at().unwrap();
    assert!(
        (expires - (s.clock.now_for_test() + chrono::Duration::seconds(600)))
            .num_seconds()
            .abs()
            <= 5
    );
    assert_eq!(
        s.kh.connected_accounts().get(&id).await.unwrap().expires_at,
        Some(expires)
    );

    // The access token works at the server's protected resource, through keyhaven.
    let req = OutgoingRequest::new(
        Method::GET,
        Url::parse(&format!("{}/me", s.server.issuer)).unwrap(),
    );
    let req = s.kh.authorize(&id, req).await.unwrap();
    let me: serde_json::Value = reqwest::Client::new()
        .get(req.url.as_str())
        .headers(req.headers.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["sub"], "alice");

    // A replayed callback is refused and changes nothing.
    let before = s.kh.connected_accounts().get(&id).await.unwrap();
    let err = s.kh.handle_callback(&query).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("state"), "{err}");
    assert_eq!(s.kh.connected_accounts().get(&id).await.unwrap(), before);

    // Before the margin nothing is refreshed; inside it (5 minutes) it is, once.
    s.clock.advance(chrono::Duration::seconds(200));
    assert_eq!(access_token(&s.kh, &id).await, first_access);
    assert_eq!(s.server.token_requests("refresh_token").await, 0);
    s.clock.advance(chrono::Duration::seconds(200));
    let second_access = access_token(&s.kh, &id).await;
    assert_ne!(second_access, first_access);
    assert_eq!(s.server.token_requests("refresh_token").await, 1);
    let creds = s.kh.credentials(&id).await.unwrap();
    let rotated = OAuth2Tokens::new(&creds)
        .refresh_token()
        .unwrap()
        .to_owned();
    assert_ne!(
        rotated, first_refresh,
        "the rotated refresh token replaced the old one"
    );
    assert_eq!(s.server.userinfo(&second_access).await.0, 200);
    assert_eq!(
        s.server.token_requests("refresh_token").await,
        1,
        "fresh credentials are served from the store"
    );

    // Deleting revokes the tokens at the provider, in the background.
    s.kh.connected_accounts().delete(&id).await.unwrap();
    let mut revoked = false;
    for _ in 0..50 {
        if !s.server.introspect("kh-basic", &rotated).await
            && s.server.userinfo(&second_access).await.0 == 401
        {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        revoked,
        "refresh and access tokens are revoked after delete: introspect {} userinfo {:?} stats {}",
        s.server.introspect("kh-basic", &rotated).await,
        s.server.userinfo(&second_access).await,
        s.server.stats().await
    );
    assert!(s.server.stats().await["revocation"].as_u64().unwrap() >= 1);
}

/// The manual clock's time, without a Clock import in every test.
trait NowForTest {
    fn now_for_test(&self) -> chrono::DateTime<Utc>;
}
impl NowForTest for ManualClock {
    fn now_for_test(&self) -> chrono::DateTime<Utc> {
        keyhaven::Clock::now(self)
    }
}

#[tokio::test]
async fn client_secret_post_public_and_non_rotating_clients() {
    let Some(s) = setup().await else { return };
    for client in ["kh-post", "kh-public", "kh-norotate"] {
        let (id, outcome) = connect(&s, client, Decision::Approve).await;
        assert!(
            outcome.succeeded(),
            "{client}: {:?}",
            outcome.account.status_reason
        );
        let creds = s.kh.credentials(&id).await.unwrap();
        let old_refresh = OAuth2Tokens::new(&creds)
            .refresh_token()
            .unwrap()
            .to_owned();
        let refreshed = s.kh.connected_accounts().refresh(&id).await.unwrap();
        assert_eq!(refreshed.status, ConnectionStatus::Active);
        let creds = s.kh.credentials(&id).await.unwrap();
        let new_refresh = OAuth2Tokens::new(&creds)
            .refresh_token()
            .unwrap()
            .to_owned();
        if client == "kh-norotate" {
            assert_eq!(
                new_refresh, old_refresh,
                "{client}: an answer without a refresh token keeps the old one"
            );
        } else {
            assert_ne!(new_refresh, old_refresh, "{client}: rotated");
        }
        let token = OAuth2Tokens::new(&creds).access_token().unwrap().to_owned();
        assert_eq!(s.server.userinfo(&token).await.0, 200, "{client}");
    }
    assert_eq!(s.server.token_requests("authorization_code").await, 3);
    assert_eq!(s.server.token_requests("refresh_token").await, 3);
}

#[tokio::test]
async fn a_user_who_denies_leaves_a_failed_account() {
    let Some(s) = setup().await else { return };
    let (id, outcome) = connect(&s, "kh-basic", Decision::Deny).await;
    assert!(!outcome.succeeded());
    let account = s.kh.connected_accounts().get(&id).await.unwrap();
    assert_eq!(account.status, ConnectionStatus::Failed);
    let reason = account.status_reason.unwrap();
    assert!(
        reason.contains("access_denied") && reason.contains("aborted"),
        "{reason}"
    );
    let back: std::collections::HashMap<_, _> = outcome
        .redirect_to
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(back["status"], "failed");
    let err = s.kh.credentials(&id).await.unwrap_err();
    assert!(err.to_string().contains("FAILED"), "{err}");
    assert_eq!(s.server.token_requests("authorization_code").await, 0);
}

#[tokio::test]
async fn forged_replayed_and_expired_states_change_nothing() {
    let Some(s) = setup().await else { return };
    let integration =
        s.kh.integrations()
            .create(s.server.integration("kh-basic"))
            .await
            .unwrap();
    let start = || async {
        s.kh.initiate_connection(ConnectionRequest::for_integration(integration.id.as_str()))
            .await
            .unwrap()
    };
    let out = start().await;
    let id = out.connected_account_id.to_string();
    let query = UserAgent::new()
        .authorize(
            out.redirect_url.as_deref().unwrap(),
            "bob",
            Decision::Approve,
        )
        .await;

    // Forged: a state keyhaven never issued, and no state at all.
    let mut forged = query.clone();
    forged.insert("state".into(), "f".repeat(64));
    assert_eq!(
        s.kh.handle_callback(&forged).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let mut stateless = query.clone();
    stateless.remove("state");
    assert_eq!(
        s.kh.handle_callback(&stateless).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        s.kh.connected_accounts().get(&id).await.unwrap().status,
        ConnectionStatus::Initiated
    );

    // The real one works once; replayed, it is refused.
    assert!(s.kh.handle_callback(&query).await.unwrap().succeeded());
    assert!(s.kh.handle_callback(&query).await.is_err());

    // Expired: the user took more than 10 minutes.
    let late = start().await;
    let late_id = late.connected_account_id.to_string();
    let query = UserAgent::new()
        .authorize(
            late.redirect_url.as_deref().unwrap(),
            "bob",
            Decision::Approve,
        )
        .await;
    s.clock.advance(chrono::Duration::minutes(11));
    let err = s.kh.handle_callback(&query).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(
        s.kh.connected_accounts()
            .get(&late_id)
            .await
            .unwrap()
            .status,
        ConnectionStatus::Initiated
    );
    assert_eq!(
        s.server.token_requests("authorization_code").await,
        1,
        "no code was exchanged for refused states"
    );
}

#[tokio::test]
async fn a_callback_from_another_issuer_is_refused_before_the_code_is_used() {
    let Some(s) = setup().await else { return };
    let new = s
        .server
        .integration("kh-basic")
        .config("issuer", "https://login.other.example");
    let integration = s.kh.integrations().create(new).await.unwrap();
    let out =
        s.kh.initiate_connection(ConnectionRequest::for_integration(integration.id.as_str()))
            .await
            .unwrap();
    let query = UserAgent::new()
        .authorize(
            out.redirect_url.as_deref().unwrap(),
            "eve",
            Decision::Approve,
        )
        .await;
    let outcome = s.kh.handle_callback(&query).await.unwrap();
    assert_eq!(outcome.account.status, ConnectionStatus::Failed);
    let reason = outcome.account.status_reason.unwrap();
    assert!(
        reason.contains("RFC 9207") && reason.contains("login.other.example"),
        "{reason}"
    );
    assert_eq!(s.server.token_requests("authorization_code").await, 0);
}

#[tokio::test]
async fn token_endpoint_failures() {
    let Some(s) = setup().await else { return };

    // At the code exchange: the account is FAILED with the reason.
    let integration =
        s.kh.integrations()
            .create(s.server.integration("kh-basic"))
            .await
            .unwrap();
    let out =
        s.kh.initiate_connection(ConnectionRequest::for_integration(integration.id.as_str()))
            .await
            .unwrap();
    let query = UserAgent::new()
        .authorize(
            out.redirect_url.as_deref().unwrap(),
            "carol",
            Decision::Approve,
        )
        .await;
    s.server.fail_next_token_requests(500, 1, 0).await;
    let mut events = s.kh.events();
    let outcome = s.kh.handle_callback(&query).await.unwrap();
    assert_eq!(outcome.account.status, ConnectionStatus::Failed);
    assert!(outcome.account.status_reason.unwrap().contains("HTTP 500"));
    let told = drain(&mut events);
    assert_eq!(kinds(&told), [EventKind::Failed]);
    assert!(told[0].reason.as_deref().unwrap().contains("HTTP 500"));

    // At a refresh: the account stays ACTIVE; a token that has not expired is still
    // served; an expired one is a clear error; retries back off.
    let (id, outcome) = connect(&s, "kh-basic", Decision::Approve).await;
    assert!(outcome.succeeded());
    let token = access_token(&s.kh, &id).await;
    let mut events = s.kh.events();
    s.server.fail_next_token_requests(503, 2, 0).await;
    s.clock.advance(chrono::Duration::seconds(400)); // inside the 5-minute margin
    assert_eq!(
        access_token(&s.kh, &id).await,
        token,
        "a still-valid token is served when refresh fails"
    );
    assert_eq!(s.server.stats().await["token"]["failed"], 2);
    s.clock.advance(chrono::Duration::seconds(300)); // expired; the 1 s back-off is over
    let err = s.kh.credentials(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert_eq!(s.server.stats().await["token"]["failed"], 3);
    let err = s.kh.credentials(&id).await.unwrap_err();
    assert!(err.to_string().contains("next try after"), "{err}");
    assert_eq!(
        s.server.stats().await["token"]["failed"],
        3,
        "no request while backing off"
    );
    assert_eq!(
        s.kh.connected_accounts().get(&id).await.unwrap().status,
        ConnectionStatus::Active
    );
    // Each failed try was told, the account still ACTIVE.
    let told = drain(&mut events);
    assert!(!told.is_empty());
    assert!(told.iter().all(|e| e.kind == EventKind::RefreshFailed
        && e.status == ConnectionStatus::Active
        && e.reason.as_deref().unwrap().contains("HTTP 503")));
    s.clock.advance(chrono::Duration::seconds(10)); // the 2 s back-off is over
    let fresh = access_token(&s.kh, &id).await;
    assert_ne!(fresh, token);
    assert_eq!(s.server.userinfo(&fresh).await.0, 200);
}

#[tokio::test]
async fn a_token_endpoint_that_hangs_times_out() {
    let Some(s) = setup_with(|b| {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        b.register(keyhaven_oauth2::OAuth2::new(ProviderHttp::with_client(
            http,
        )))
    })
    .await
    else {
        return;
    };
    let (id, outcome) = connect(&s, "kh-basic", Decision::Approve).await;
    assert!(outcome.succeeded());
    s.server.fail_next_token_requests(500, 1, 3000).await;
    s.clock.advance(chrono::Duration::seconds(700));
    let err = s.kh.credentials(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(
        s.kh.connected_accounts().get(&id).await.unwrap().status,
        ConnectionStatus::Active
    );
}

#[tokio::test]
async fn a_refused_refresh_marks_the_account_expired() {
    let Some(s) = setup().await else { return };
    let (id, _) = connect(&s, "kh-basic", Decision::Approve).await;
    let creds = s.kh.credentials(&id).await.unwrap();
    // The user revokes the app's access at the provider.
    s.server
        .revoke(
            "kh-basic",
            OAuth2Tokens::new(&creds).refresh_token().unwrap(),
        )
        .await;
    s.clock.advance(chrono::Duration::seconds(700));
    let mut events = s.kh.events();
    let err = s.kh.credentials(&id).await.unwrap_err();
    assert!(
        err.to_string().contains("EXPIRED") && err.to_string().contains("invalid_grant"),
        "{err}"
    );
    let told = drain(&mut events);
    assert_eq!(kinds(&told), [EventKind::Expired]);
    assert_eq!(told[0].connected_account_id.as_str(), id);
    assert!(told[0].reason.as_deref().unwrap().contains("invalid_grant"));
    let account = s.kh.connected_accounts().get(&id).await.unwrap();
    assert_eq!(account.status, ConnectionStatus::Expired);
    assert!(account.status_reason.unwrap().contains("invalid_grant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_callers_share_one_refresh() {
    let Some(s) = setup().await else { return };
    let (id, _) = connect(&s, "kh-basic", Decision::Approve).await;
    let old = access_token(&s.kh, &id).await;
    s.clock.advance(chrono::Duration::seconds(700));
    let mut tasks = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let kh = s.kh.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move { access_token(&kh, &id).await }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap());
    }
    assert_eq!(tokens.len(), 1, "every caller got the same fresh token");
    assert!(!tokens.contains(&old));
    assert_eq!(
        s.server.token_requests("refresh_token").await,
        1,
        "exactly one token request, counted at the server"
    );
}

#[tokio::test]
async fn client_credentials_grant() {
    let Some(s) = setup().await else { return };
    let service = keyhaven::NewIntegration::new("oidc-test", "OAUTH2_CLIENT_CREDENTIALS")
        .config("client_id", "kh-service")
        .config("client_secret", "kh-service-secret")
        .config("token_url", format!("{}/token", s.server.issuer))
        .config(
            "revocation_url",
            format!("{}/token/revocation", s.server.issuer),
        )
        .scope("api");
    let integration = s.kh.integrations().create(service).await.unwrap();
    let out =
        s.kh.initiate_connection(ConnectionRequest::for_integration(integration.id.as_str()))
            .await
            .unwrap();
    assert_eq!(
        out.connection_status,
        ConnectionStatus::Active,
        "no user involved"
    );
    assert!(out.redirect_url.is_none());
    let id = out.connected_account_id.to_string();
    let first = access_token(&s.kh, &id).await;
    assert!(s.server.introspect("kh-service", &first).await);
    s.clock.advance(chrono::Duration::seconds(700));
    let second = access_token(&s.kh, &id).await;
    assert_ne!(first, second, "renewed by asking again");
    assert_eq!(s.server.token_requests("client_credentials").await, 2);

    // A wrong secret at initiate is the provider's refusal: a FAILED account with the
    // provider's words, never an ACTIVE one, and no secret in the reason.
    let bad = keyhaven::NewIntegration::new("oidc-test", "OAUTH2_CLIENT_CREDENTIALS")
        .name("bad secret")
        .config("client_id", "kh-service")
        .config("client_secret", "wrong-secret-value")
        .config("token_url", format!("{}/token", s.server.issuer));
    let bad = s.kh.integrations().create(bad).await.unwrap();
    let out =
        s.kh.initiate_connection(ConnectionRequest::for_integration(bad.id.as_str()))
            .await
            .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Failed);
    let account =
        s.kh.connected_accounts()
            .get(out.connected_account_id.as_str())
            .await
            .unwrap();
    let reason = account.status_reason.unwrap();
    assert!(reason.contains("invalid_client"), "{reason}");
    assert!(!reason.contains("wrong-secret-value"), "{reason}");
    assert!(
        s.kh.credentials(out.connected_account_id.as_str())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn integrations_with_incoherent_oauth_settings_are_refused() {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let base = || {
        keyhaven::NewIntegration::new("acme-oauth", "OAUTH2")
            .config("client_id", "cid")
            .config("authorize_url", "https://github.com/login/oauth/authorize")
            .config("token_url", "https://github.com/login/oauth/access_token")
    };
    let cases = [
        (
            base().config("token_auth_method", "client_secret_post"),
            "auth_config.client_secret",
        ),
        (base().config("pkce", false), "auth_config.pkce"),
        (
            base().config("authorize_params", serde_json::json!({"state": "x"})),
            "auth_config.authorize_params.state",
        ),
        (
            keyhaven::NewIntegration::new("acme-oauth", "OAUTH2")
                .config("client_id", "cid")
                .config("token_url", "https://x.example/t"),
            "auth_config.authorize_url",
        ),
    ];
    for (new, field) in cases {
        let err = kh.integrations().create(new).await.unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
    assert!(kh.integrations().list(None).await.unwrap().is_empty());
    // A public client with PKCE is fine; so is a confidential one without it.
    kh.integrations().create(base()).await.unwrap();
    kh.integrations()
        .create(base().config("client_secret", "s").config("pkce", false))
        .await
        .unwrap();
}
