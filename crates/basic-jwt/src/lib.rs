//! The JWT auth schemes of keyhaven, on `jsonwebtoken` and reqwest:
//!
//! - `BASIC_WITH_JWT`: the user gives a username and password once; keyhaven logs in
//!   at the integration's login endpoint (HTTP Basic, form or JSON), keeps the JWT it
//!   answers (checking its signature when the integration gives an HMAC secret, a PEM
//!   public key or a JWKS), and logs in again before `exp`.
//! - `SERVICE_ACCOUNT`: the JWT bearer grant (RFC 7523) with an RS256 or ES256 key.
//! - `GOOGLE_SERVICE_ACCOUNT`: the same from a Google credentials JSON.
//!
//! Depends on `keyhaven-core` alone among keyhaven's crates.

mod http;
mod jwt;
mod login;
mod service;

use std::sync::Arc;

use keyhaven_core::AuthScheme;

pub use crate::http::default_client;
pub use crate::jwt::{JwtTimes, Verifier, inspect, verify};
pub use crate::login::BasicWithJwt;
pub use crate::service::{GoogleServiceAccount, JWT_BEARER, ServiceAccount};

/// Every scheme of this crate, calling providers with the keyhaven's shared HTTP
/// client (given in their contexts; [`default_client`] when called without one).
pub fn all() -> Vec<Arc<dyn AuthScheme>> {
    vec![
        Arc::new(BasicWithJwt::default()),
        Arc::new(ServiceAccount::default()),
        Arc::new(GoogleServiceAccount::default()),
    ]
}

/// Every scheme of this crate, calling providers with `http` (turn its redirects
/// off) rather than the keyhaven's shared client.
pub fn all_with(http: reqwest::Client) -> Vec<Arc<dyn AuthScheme>> {
    vec![
        Arc::new(BasicWithJwt::new(http.clone())),
        Arc::new(ServiceAccount::new(http.clone())),
        Arc::new(GoogleServiceAccount::new(http)),
    ]
}
