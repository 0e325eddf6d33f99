//! The scheme conformance suite finds what it is for: a scheme that shows a secret in
//! its errors, does not apply its credentials, and has a malformed spec fails it,
//! with each problem named.

#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven_core::testing::{Fixture, check};
use keyhaven_core::{
    AccountContext, AuthScheme, Credentials, FieldSpec, InitiateContext, Initiated,
    OutgoingRequest, SchemeError, SchemeSpec, async_trait,
};

const SECRET: &str = "sk-suite-SECRET-0";

/// Everything wrong a scheme can do, at once.
struct Careless;

#[async_trait]
impl AuthScheme for Careless {
    fn name(&self) -> &str {
        "careless"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("Careless")
            .with_params(vec![
                FieldSpec::required("api_key", "A key.").secret(),
                FieldSpec::optional("Region", ""),
            ])
            .with_catalog_table("Bad Table")
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        let key = cx.params.get_str("api_key").unwrap_or_default();
        Err(SchemeError::invalid(
            "connected_account_params.api_key",
            format!("{key} was refused"),
        ))
    }

    fn authorize(
        &self,
        _cx: &AccountContext<'_>,
        _request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_careless_scheme_fails_with_each_problem_named() {
    let mut fields = keyhaven_core::SecretFields::new();
    fields.insert("api_key", SECRET);
    let fixture = Fixture::new()
        .param("api_key", SECRET)
        .credentials(fields)
        .secret(SECRET);
    let problems = check(&Careless, &fixture).await;
    let all = problems.join("\n");
    for expected in [
        "is not SCREAMING_SNAKE_CASE",
        "catalog_table \"Bad Table\"",
        "\"Region\" is not a snake_case name",
        "spec().params.Region has no description",
        "initiate's error shows a secret",
        "authorize left the request as it was",
    ] {
        assert!(all.contains(expected), "{expected:?} not in:\n{all}");
    }
}

/// A spec that changes from one call to the next.
struct Unstable(std::sync::atomic::AtomicU32);

#[async_trait]
impl AuthScheme for Unstable {
    fn name(&self) -> &str {
        "UNSTABLE"
    }

    fn spec(&self) -> SchemeSpec {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SchemeSpec::new(format!("Unstable {n}"))
    }

    async fn initiate(&self, _cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        Ok(Initiated::Active {
            credentials: Credentials::without_expiry(keyhaven_core::SecretFields::new()),
        })
    }

    fn authorize(
        &self,
        _cx: &AccountContext<'_>,
        _request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_changing_spec_is_named() {
    let problems = check(&Unstable(0.into()), &Fixture::new()).await;
    assert!(
        problems.iter().any(|p| p.contains("answers differently")),
        "{problems:?}"
    );
}
