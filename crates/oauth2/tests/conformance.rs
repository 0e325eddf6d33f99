//! Both OAuth schemes pass the scheme conformance suite of keyhaven-core. Their token
//! endpoint is a closed port on 127.0.0.1, so refreshing (and the client credentials
//! grant) fails at once, without the error showing a secret; the account is used
//! with the fixture's credentials.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven_core::SecretFields;
use keyhaven_core::testing::{Fixture, assert_conforms};
use keyhaven_oauth2::{ClientCredentials, OAuth2, ProviderHttp};

const CLIENT_SECRET: &str = "cs-conformance-SECRET-1";
const ACCESS: &str = "at-conformance-SECRET-2";
const REFRESH: &str = "rt-conformance-SECRET-3";

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn credentials() -> SecretFields {
    let mut fields = SecretFields::new();
    fields.insert("access_token", ACCESS);
    fields.insert("refresh_token", REFRESH);
    fields.insert("token_type", "Bearer");
    fields
}

fn fixture() -> Fixture {
    Fixture::new()
        .config("client_id", "conformance-client")
        .config("client_secret", CLIENT_SECRET)
        .config(
            "token_url",
            format!("http://127.0.0.1:{}/token", closed_port()),
        )
        .credentials(credentials())
        .secret(CLIENT_SECRET)
        .secret(ACCESS)
        .secret(REFRESH)
}

#[tokio::test]
async fn authorization_code() {
    let fixture = fixture().config("authorize_url", "https://provider.example/authorize");
    assert_conforms(&OAuth2::new(ProviderHttp::new()), fixture).await;
}

#[tokio::test]
async fn client_credentials() {
    assert_conforms(&ClientCredentials::new(ProviderHttp::new()), fixture()).await;
}
