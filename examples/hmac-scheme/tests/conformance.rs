//! The third-party scheme passes the same conformance suite as keyhaven's own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven_core::testing::{Fixture, assert_conforms};
use keyhaven_example_hmac::HmacScheme;

#[tokio::test]
async fn hmac_conforms() {
    let fixture = Fixture::new()
        .param("key_id", "key-1")
        .param("secret", "hmac-conformance-SECRET-shared")
        .config("header_prefix", "x-acme-")
        .secret("hmac-conformance-SECRET-shared");
    assert_conforms(&HmacScheme, fixture).await;
}
