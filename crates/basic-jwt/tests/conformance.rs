//! Each scheme of this crate passes the scheme conformance suite of keyhaven-core.
//! Their endpoints are a closed port on 127.0.0.1 (and the keys are not valid), so
//! connecting fails at once without the error showing a secret; the account is used
//! with the fixture's credentials.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven_basic_jwt::{BasicWithJwt, GoogleServiceAccount, ServiceAccount, default_client};
use keyhaven_core::SecretFields;
use keyhaven_core::testing::{Fixture, assert_conforms};

/// A URL on a port nothing listens on.
fn closed(path: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!(
        "http://127.0.0.1:{}{path}",
        listener.local_addr().unwrap().port()
    )
}

fn credentials(field: &str, value: &str) -> SecretFields {
    let mut fields = SecretFields::new();
    fields.insert(field, value);
    fields
}

#[tokio::test]
async fn basic_with_jwt() {
    let fixture = Fixture::new()
        .param("username", "user-conformance-SECRET-1")
        .param("password", "pw-conformance-SECRET-2")
        .config("login_url", closed("/login"))
        .credentials(credentials("jwt", "jwt-conformance-SECRET-3"))
        .secret("user-conformance-SECRET-1")
        .secret("pw-conformance-SECRET-2")
        .secret("jwt-conformance-SECRET-3");
    assert_conforms(&BasicWithJwt::new(default_client()), fixture).await;
}

#[tokio::test]
async fn service_account() {
    let fixture = Fixture::new()
        .param("issuer", "robot@conformance.example")
        .param(
            "private_key",
            "-----BEGIN PRIVATE KEY-----\nkey-conformance-SECRET-4\n-----END PRIVATE KEY-----",
        )
        .config("token_url", closed("/token"))
        .credentials(credentials("access_token", "at-conformance-SECRET-5"))
        .secret("key-conformance-SECRET-4")
        .secret("at-conformance-SECRET-5");
    assert_conforms(&ServiceAccount::new(default_client()), fixture).await;
}

#[tokio::test]
async fn google_service_account() {
    // Not a usable key file: refused before any request is made.
    let fixture = Fixture::new()
        .param(
            "credentials_json",
            r#"{"private_key": "key-conformance-SECRET-6"}"#,
        )
        .credentials(credentials("access_token", "at-conformance-SECRET-7"))
        .secret("key-conformance-SECRET-6")
        .secret("at-conformance-SECRET-7");
    assert_conforms(&GoogleServiceAccount::new(default_client()), fixture).await;
}
