//! Each scheme of this crate passes the scheme conformance suite of keyhaven-core.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven_api_key::{ApiKey, Basic, BearerToken, NoAuth};
use keyhaven_core::testing::{Fixture, assert_conforms};

#[tokio::test]
async fn api_key_in_a_header() {
    let fixture = Fixture::new()
        .param("api_key", "sk-conformance-SECRET-1")
        .secret("sk-conformance-SECRET-1");
    assert_conforms(&ApiKey, fixture).await;
}

#[tokio::test]
async fn api_key_in_the_query() {
    let fixture = Fixture::new()
        .param("api_key", "sk-conformance-SECRET-2")
        .config("query_param", "key")
        .secret("sk-conformance-SECRET-2");
    assert_conforms(&ApiKey, fixture).await;
}

#[tokio::test]
async fn bearer_token() {
    let fixture = Fixture::new()
        .param("token", "tok-conformance-SECRET-3")
        .secret("tok-conformance-SECRET-3");
    assert_conforms(&BearerToken, fixture).await;
}

#[tokio::test]
async fn basic() {
    let fixture = Fixture::new()
        .param("username", "conformance-user-SECRET")
        .param("password", "pw-conformance-SECRET-4")
        .secret("conformance-user-SECRET")
        .secret("pw-conformance-SECRET-4");
    assert_conforms(&Basic, fixture).await;
}

#[tokio::test]
async fn no_auth() {
    assert_conforms(&NoAuth, Fixture::new()).await;
}
