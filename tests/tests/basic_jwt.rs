//! BASIC_WITH_JWT, SERVICE_ACCOUNT and GOOGLE_SERVICE_ACCOUNT against a login server
//! and a token endpoint on 127.0.0.1 that issue and check real signed JWTs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keyhaven::chrono::{Duration, Utc};
use keyhaven::http::Method;
use keyhaven::url::Url;
use keyhaven::{
    ConnectionRequest, ConnectionStatus, ErrorKind, Keyhaven, ManualClock, MemoryStore,
    NewIntegration, OutgoingRequest,
};
use parking_lot_free::Mutex;
use serde_json::{Value, json};

mod parking_lot_free {
    //! A std mutex that shrugs off poisoning, for the test server's state.
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(std::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

const HMAC_SECRET: &str = "login-server-hmac-secret-0123456789";

/// What the login server does wrong, for the bad-token cases.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Quirk {
    None,
    Malformed,
    NoExp,
    Expired,
    WrongSignature,
    AlgNone,
    Rs256,
}

struct Keys {
    rsa_private: String,
    rsa_public: String,
    ec_private: String,
    ec_public: String,
    rsa_modulus_b64: String,
}

struct ServerState {
    quirk: Mutex<Quirk>,
    password: Mutex<String>,
    token_ttl: i64,
    logins: AtomicUsize,
    grants: AtomicUsize,
    keys: Arc<Keys>,
    base: Mutex<String>,
}

fn openssl(args: &[&str], input: Option<&str>) -> Option<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    if let Some(i) = input {
        child.stdin.take()?.write_all(i.as_bytes()).ok()?;
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fresh keys for this run (nothing secret is committed), made with openssl.
fn keys() -> Option<Keys> {
    let rsa_private = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        None,
    )?;
    let rsa_public = openssl(&["pkey", "-pubout"], Some(&rsa_private))?;
    let ec_private = openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
        None,
    )?;
    let ec_public = openssl(&["pkey", "-pubout"], Some(&ec_private))?;
    let modulus = openssl(&["rsa", "-pubin", "-noout", "-modulus"], Some(&rsa_public))?;
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let rsa_modulus_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Some(Keys {
        rsa_private,
        rsa_public,
        ec_private,
        ec_public,
        rsa_modulus_b64,
    })
}

fn login_token(state: &ServerState, user: &str) -> String {
    let now = Utc::now().timestamp();
    let claims =
        json!({"sub": user, "iat": now, "exp": now + state.token_ttl, "iss": "login-server"});
    let hs = |claims: &Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    match *state.quirk.lock() {
        Quirk::None => hs(&claims),
        Quirk::Malformed => "not-a-jwt".into(),
        Quirk::NoExp => hs(&json!({"sub": user, "iat": now})),
        Quirk::Expired => hs(&json!({"sub": user, "iat": now - 7200, "exp": now - 3600})),
        Quirk::WrongSignature => jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"some-other-secret-entirely"),
        )
        .unwrap(),
        Quirk::AlgNone => format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        ),
        Quirk::Rs256 => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("rsa-1".into());
            jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_rsa_pem(state.keys.rsa_private.as_bytes()).unwrap(),
            )
            .unwrap()
        }
    }
}

fn check_login(state: &ServerState, user: &str, password: &str) -> Response {
    state.logins.fetch_add(1, Ordering::SeqCst);
    if user == "alice" && password == *state.password.lock() {
        Json(json!({"data": {"token": login_token(state, user)}})).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Invalid username or password"})),
        )
            .into_response()
    }
}

async fn login_json(State(s): State<Arc<ServerState>>, Json(body): Json<Value>) -> Response {
    check_login(
        &s,
        body["user"].as_str().unwrap_or(""),
        body["pass"].as_str().unwrap_or(""),
    )
}

async fn login_form(
    State(s): State<Arc<ServerState>>,
    Form(body): Form<HashMap<String, String>>,
) -> Response {
    check_login(
        &s,
        body.get("username").map_or("", String::as_str),
        body.get("password").map_or("", String::as_str),
    )
}

async fn login_basic(State(s): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    let decoded = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let (user, pass) = decoded.split_once(':').unwrap_or(("", ""));
    check_login(&s, user, pass)
}

/// A resource that accepts only the login server's own JWTs.
async fn me(headers: HeaderMap) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&["login-server"]);
    match jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(HMAC_SECRET.as_bytes()),
        &validation,
    ) {
        Ok(data) => Json(json!({"sub": data.claims["sub"]})).into_response(),
        Err(_) => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn jwks(State(s): State<Arc<ServerState>>) -> Json<Value> {
    Json(
        json!({"keys": [{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": s.keys.rsa_modulus_b64, "e": "AQAB"}]}),
    )
}

/// The RFC 7523 token endpoint: checks the assertion's signature (RS256 or ES256
/// with the public keys it knows), audience, issuer and times.
async fn token(
    State(s): State<Arc<ServerState>>,
    Form(body): Form<HashMap<String, String>>,
) -> Response {
    let refuse = |why: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    if body.get("grant_type").map(String::as_str) != Some(keyhaven_basic_jwt::JWT_BEARER) {
        return refuse("unsupported grant");
    }
    let assertion = body.get("assertion").cloned().unwrap_or_default();
    let Ok(header) = jsonwebtoken::decode_header(&assertion) else {
        return refuse("bad assertion");
    };
    let key = match header.alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(s.keys.rsa_public.as_bytes()).unwrap(),
        Algorithm::ES256 => DecodingKey::from_ec_pem(s.keys.ec_public.as_bytes()).unwrap(),
        _ => return refuse("algorithm"),
    };
    let mut validation = Validation::new(header.alg);
    let aud = format!("{}/token", s.base.lock());
    validation.set_audience(&[aud.as_str()]);
    validation.set_issuer(&[
        "svc@example.iam",
        "svc-google@project.iam.gserviceaccount.com",
    ]);
    match jsonwebtoken::decode::<Value>(&assertion, &key, &validation) {
        Ok(data) => {
            let n = s.grants.fetch_add(1, Ordering::SeqCst);
            Json(json!({
                "access_token": format!("svc-token-{n}"),
                "expires_in": 3600,
                "token_type": "Bearer",
                "scope_seen": data.claims.get("scope").cloned().unwrap_or(body.get("scope").map(|s| Value::from(s.as_str())).unwrap_or(Value::Null)),
            }))
            .into_response()
        }
        Err(e) => refuse(&format!("{e:?}")),
    }
}

async fn start(token_ttl: i64) -> Option<(String, Arc<ServerState>)> {
    let Some(keys) = keys() else {
        keyhaven_tests::skip_or_fail(
            "openssl is needed to make the test keys (apt-get install openssl)",
        );
        return None;
    };
    let state = Arc::new(ServerState {
        quirk: Mutex::new(Quirk::None),
        password: Mutex::new("correct horse".into()),
        token_ttl,
        logins: AtomicUsize::new(0),
        grants: AtomicUsize::new(0),
        keys: Arc::new(keys),
        base: Mutex::new(String::new()),
    });
    let app = axum::Router::new()
        .route("/login/json", post(login_json))
        .route("/login/form", post(login_form))
        .route("/login/basic", post(login_basic))
        .route("/me", get(me))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *state.base.lock() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Some((base, state))
}

fn kh(clock: Arc<ManualClock>) -> Keyhaven {
    Keyhaven::builder()
        .store(MemoryStore::new())
        .clock(clock)
        .build()
        .unwrap()
}

fn jwt_integration(base: &str, style: &str) -> NewIntegration {
    let path = match style {
        "json" => "/login/json",
        "form" => "/login/form",
        _ => "/login/basic",
    };
    let mut new = NewIntegration::new("acme-api", "BASIC_WITH_JWT")
        .name(style)
        .config("login_url", format!("{base}{path}"))
        .config("login_style", style)
        .config("hmac_secret", HMAC_SECRET)
        .config("issuer", "login-server");
    if style == "json" {
        new = new
            .config("username_field", "user")
            .config("password_field", "pass")
            .config("token_field", "data.token");
    }
    new
}

async fn get_me(kh: &Keyhaven, id: &str, base: &str) -> u16 {
    let req = OutgoingRequest::new(Method::GET, Url::parse(&format!("{base}/me")).unwrap());
    let req = kh.authorize(id, req).await.unwrap();
    reqwest::Client::new()
        .get(req.url.as_str())
        .headers(req.headers)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn three_login_styles_give_working_jwts() {
    let Some((base, server)) = start(600).await else {
        return;
    };
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let kh = kh(clock.clone());
    for style in ["json", "form", "basic"] {
        let int = kh
            .integrations()
            .create(jwt_integration(&base, style))
            .await
            .unwrap();
        let out = kh
            .initiate_connection(
                ConnectionRequest::for_integration(int.id.as_str())
                    .param("username", "alice")
                    .param("password", "correct horse"),
            )
            .await
            .unwrap();
        assert_eq!(out.connection_status, ConnectionStatus::Active, "{style}");
        let id = out.connected_account_id.to_string();
        let account = kh.connected_accounts().get(&id).await.unwrap();
        let exp = account.expires_at.expect("exp is read from the JWT");
        assert!(
            (exp - (Utc::now() + Duration::seconds(600)))
                .num_seconds()
                .abs()
                < 5,
            "{style}: {exp}"
        );
        assert_eq!(
            get_me(&kh, &id, &base).await,
            200,
            "{style}: the JWT works at the server"
        );
        assert!(
            !serde_json::to_string(&account)
                .unwrap()
                .contains("correct horse")
        );
    }
    assert_eq!(server.logins.load(Ordering::SeqCst), 3);

    assert_eq!(
        kh.connected_accounts()
            .list_all(Default::default())
            .await
            .unwrap()
            .len(),
        3
    );
}

/// Real time, short-lived JWTs (8 s) and a 5 s margin: keyhaven logs in again
/// before exp, once for 100 concurrent callers, and an account whose login is
/// later refused becomes EXPIRED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relogin_before_exp_once_and_expired_when_refused() {
    let Some((base, server)) = start(8).await else {
        return;
    };
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .refresh_margin(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let int = kh
        .integrations()
        .create(jwt_integration(&base, "json"))
        .await
        .unwrap();
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_integration(int.id.as_str())
                .param("username", "alice")
                .param("password", "correct horse"),
        )
        .await
        .unwrap();
    let id = out.connected_account_id.to_string();
    let first = kh
        .credentials(&id)
        .await
        .unwrap()
        .get_str("jwt")
        .unwrap()
        .to_owned();
    assert_eq!(
        kh.credentials(&id).await.unwrap().get_str("jwt"),
        Some(first.as_str()),
        "not due yet"
    );
    assert_eq!(server.logins.load(Ordering::SeqCst), 1);
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await; // within 5 s of exp
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (kh, id) = (kh.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            kh.credentials(&id)
                .await
                .unwrap()
                .get_str("jwt")
                .unwrap()
                .to_owned()
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        seen.insert(t.await.unwrap());
    }
    assert_eq!(seen.len(), 1, "every caller got the same JWT");
    assert!(!seen.contains(&first), "logged in again before exp");
    assert_eq!(
        server.logins.load(Ordering::SeqCst),
        2,
        "one login for 100 callers"
    );
    assert_eq!(get_me(&kh, &id, &base).await, 200);

    // The password changes at the server: the next login is refused, the account EXPIRED.
    *server.password.lock() = "changed".into();
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let err = kh.credentials(&id).await.unwrap_err();
    assert!(
        err.to_string().contains("Invalid username or password"),
        "{err}"
    );
    let account = kh.connected_accounts().get(&id).await.unwrap();
    assert_eq!(account.status, ConnectionStatus::Expired);
}

#[tokio::test]
async fn wrong_credentials_give_a_failed_account_with_the_servers_message() {
    let Some((base, _server)) = start(600).await else {
        return;
    };
    let kh = kh(Arc::new(ManualClock::new(Utc::now())));
    let int = kh
        .integrations()
        .create(jwt_integration(&base, "json"))
        .await
        .unwrap();
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_integration(int.id.as_str())
                .param("username", "alice")
                .param("password", "wrong-pw-123"),
        )
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Failed);
    let account = kh
        .connected_accounts()
        .get(out.connected_account_id.as_str())
        .await
        .unwrap();
    let reason = account.status_reason.unwrap();
    assert!(
        reason.contains("Invalid username or password") && !reason.contains("wrong-pw-123"),
        "{reason}"
    );
    assert!(
        kh.credentials(out.connected_account_id.as_str())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_and_nothing_active_is_stored() {
    let Some((base, server)) = start(600).await else {
        return;
    };
    let kh = kh(Arc::new(ManualClock::new(Utc::now())));
    let int = kh
        .integrations()
        .create(jwt_integration(&base, "json"))
        .await
        .unwrap();
    let cases = [
        (Quirk::Malformed, "not a valid JWT"),
        (Quirk::NoExp, "no exp"),
        (Quirk::Expired, "expired"),
        (Quirk::WrongSignature, "signature does not verify"),
        (Quirk::AlgNone, "alg none"),
        // An RS256 token offered to an integration that verifies with an HMAC secret:
        // algorithm confusion.
        (Quirk::Rs256, "algorithm confusion"),
    ];
    for (quirk, words) in cases {
        *server.quirk.lock() = quirk;
        let out = kh
            .initiate_connection(
                ConnectionRequest::for_integration(int.id.as_str())
                    .param("username", "alice")
                    .param("password", "correct horse"),
            )
            .await
            .unwrap();
        assert_eq!(out.connection_status, ConnectionStatus::Failed, "{quirk:?}");
        let reason = kh
            .connected_accounts()
            .get(out.connected_account_id.as_str())
            .await
            .unwrap()
            .status_reason
            .unwrap();
        assert!(reason.contains(words), "{quirk:?}: {reason}");
    }
    let active = kh
        .connected_accounts()
        .list_all(keyhaven::AccountFilter {
            statuses: vec![ConnectionStatus::Active],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        active.is_empty(),
        "no bad token ever made an ACTIVE account"
    );
}

#[tokio::test]
async fn tokens_verified_with_a_pem_key_or_a_jwks() {
    let Some((base, server)) = start(600).await else {
        return;
    };
    *server.quirk.lock() = Quirk::Rs256;
    let kh = kh(Arc::new(ManualClock::new(Utc::now())));
    let pem = kh
        .integrations()
        .create(
            NewIntegration::new("acme-api", "BASIC_WITH_JWT")
                .name("pem")
                .config("login_url", format!("{base}/login/form"))
                .config("login_style", "form")
                .config("public_key_pem", server.keys.rsa_public.clone()),
        )
        .await
        .unwrap();
    let jwks = kh
        .integrations()
        .create(
            NewIntegration::new("acme-api", "BASIC_WITH_JWT")
                .name("jwks")
                .config("login_url", format!("{base}/login/form"))
                .config("login_style", "form")
                .config("jwks_url", format!("{base}/jwks")),
        )
        .await
        .unwrap();
    for int in [&pem, &jwks] {
        let out = kh
            .initiate_connection(
                ConnectionRequest::for_integration(int.id.as_str())
                    .param("username", "alice")
                    .param("password", "correct horse"),
            )
            .await
            .unwrap();
        assert_eq!(
            out.connection_status,
            ConnectionStatus::Active,
            "{}",
            int.name
        );
    }
    // The same integrations refuse an HS256 token (an attacker signing with the public key as a secret).
    *server.quirk.lock() = Quirk::None;
    for int in [&pem, &jwks] {
        let out = kh
            .initiate_connection(
                ConnectionRequest::for_integration(int.id.as_str())
                    .param("username", "alice")
                    .param("password", "correct horse"),
            )
            .await
            .unwrap();
        assert_eq!(
            out.connection_status,
            ConnectionStatus::Failed,
            "{}",
            int.name
        );
    }
    // Incoherent settings are refused when the integration is created.
    let err = kh
        .integrations()
        .create(
            NewIntegration::new("acme-api", "BASIC_WITH_JWT")
                .config("login_url", format!("{base}/login/form"))
                .config("hmac_secret", "s")
                .config("jwks_url", format!("{base}/jwks")),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most one"), "{err}");
    let err = kh
        .integrations()
        .create(
            NewIntegration::new("acme-api", "BASIC_WITH_JWT")
                .config("login_url", format!("{base}/x"))
                .config("public_key_pem", "not a key"),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("public_key_pem"), "{err}");
}

#[tokio::test]
async fn service_accounts_sign_assertions_and_renew() {
    let Some((base, server)) = start(600).await else {
        return;
    };
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let kh = kh(clock.clone());
    for (alg, key) in [
        ("RS256", server.keys.rsa_private.clone()),
        ("ES256", server.keys.ec_private.clone()),
    ] {
        let int = kh
            .integrations()
            .create(
                NewIntegration::new("acme-svc", "SERVICE_ACCOUNT")
                    .name(alg)
                    .config("token_url", format!("{base}/token"))
                    .config("algorithm", alg)
                    .scope("read"),
            )
            .await
            .unwrap();
        let out = kh
            .initiate_connection(
                ConnectionRequest::for_integration(int.id.as_str())
                    .param("issuer", "svc@example.iam")
                    .param("private_key", key.clone()),
            )
            .await
            .unwrap();
        assert_eq!(out.connection_status, ConnectionStatus::Active, "{alg}");
        let id = out.connected_account_id.to_string();
        let first = kh
            .credentials(&id)
            .await
            .unwrap()
            .get_str("access_token")
            .unwrap()
            .to_owned();
        let account = kh.connected_accounts().get(&id).await.unwrap();
        assert!(
            !serde_json::to_string(&account)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        clock.advance(Duration::seconds(3400));
        let second = kh
            .credentials(&id)
            .await
            .unwrap()
            .get_str("access_token")
            .unwrap()
            .to_owned();
        assert_ne!(first, second, "{alg}: renewed before expiry");
        clock.advance(Duration::seconds(-3400));
    }
    assert_eq!(server.grants.load(Ordering::SeqCst), 4);

    // Google-style credentials JSON.
    let google = kh
        .integrations()
        .create(
            NewIntegration::new("google-cloud", "GOOGLE_SERVICE_ACCOUNT")
                .config("token_url", format!("{base}/token"))
                .scope("https://www.googleapis.com/auth/cloud-platform"),
        )
        .await
        .unwrap();
    let creds = json!({
        "type": "service_account",
        "client_email": "svc-google@project.iam.gserviceaccount.com",
        "private_key": server.keys.rsa_private,
        "private_key_id": "abc123",
        "token_uri": format!("{base}/token"),
    });
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_integration(google.id.as_str())
                .param("credentials_json", creds.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Active);
    assert_eq!(server.grants.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn bad_service_account_input_is_refused_and_changes_nothing() {
    let Some((base, server)) = start(600).await else {
        return;
    };
    let kh = kh(Arc::new(ManualClock::new(Utc::now())));
    let svc = kh
        .integrations()
        .create(
            NewIntegration::new("acme-svc", "SERVICE_ACCOUNT")
                .config("token_url", format!("{base}/token")),
        )
        .await
        .unwrap();
    let google = kh
        .integrations()
        .create(
            NewIntegration::new("google-cloud", "GOOGLE_SERVICE_ACCOUNT")
                .config("token_url", format!("{base}/token")),
        )
        .await
        .unwrap();
    let before = kh
        .connected_accounts()
        .list_all(Default::default())
        .await
        .unwrap()
        .len();
    let err = kh
        .initiate_connection(
            ConnectionRequest::for_integration(svc.id.as_str())
                .param("issuer", "svc@example.iam")
                .param(
                    "private_key",
                    "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----",
                ),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .contains("connected_account_params.private_key")
            && err.to_string().contains("PEM"),
        "{err}"
    );
    // A credentials JSON the Google integration refuses: the error.
    let refused = async |json: String| {
        kh.initiate_connection(
            ConnectionRequest::for_integration(google.id.as_str()).param("credentials_json", json),
        )
        .await
        .unwrap_err()
    };
    let mut full = json!({
        "type": "service_account",
        "client_email": "svc-google@project.iam.gserviceaccount.com",
        "private_key": server.keys.rsa_private,
        "token_uri": format!("{base}/token"),
    });
    for missing in ["client_email", "private_key", "token_uri"] {
        let mut c = full.clone();
        c.as_object_mut().unwrap().remove(missing);
        let err = refused(c.to_string()).await;
        assert!(
            err.to_string().contains("credentials_json") && err.to_string().contains(missing),
            "{missing}: {err}"
        );
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
    }
    // The key file is pasted by the user: it does not choose where keyhaven posts
    // (another host, an internal address).
    for elsewhere in [
        "http://127.0.0.1:9/token".to_owned(),
        "https://oauth2.googleapis.com/token".to_owned(),
        format!("{base}/other"),
    ] {
        let mut c = full.clone();
        c["token_uri"] = Value::from(elsewhere.clone());
        let err = refused(c.to_string()).await;
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{elsewhere}: {err}");
        assert!(err.to_string().contains("token_uri other than"), "{err}");
    }
    full["private_key"] = Value::from("garbage");
    let err = refused(full.to_string()).await;
    assert!(err.to_string().contains("private_key"), "{err}");
    let err = refused("{not json".to_owned()).await;
    assert!(err.to_string().contains("JSON"), "{err}");
    assert_eq!(
        kh.connected_accounts()
            .list_all(Default::default())
            .await
            .unwrap()
            .len(),
        before,
        "nothing stored"
    );
    assert_eq!(
        server.grants.load(Ordering::SeqCst),
        0,
        "no request was made for bad input"
    );
    // A key the token endpoint does not know: the provider's refusal, a FAILED account.
    let other_key = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        None,
    )
    .unwrap();
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_integration(svc.id.as_str())
                .param("issuer", "svc@example.iam")
                .param("private_key", other_key),
        )
        .await
        .unwrap();
    assert_eq!(out.connection_status, ConnectionStatus::Failed);
}
