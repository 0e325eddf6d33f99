//! Fuzzing the hosted connect form's submission (`Keyhaven::submit_connect_form`,
//! which the server feeds with what a browser posts): any token, and any fields with
//! any values for an `API_KEY`, `BASIC` or templated (`{subdomain}`) integration,
//! end in an `ACTIVE` or `FAILED` account or an error of a known kind, never a panic
//! or an internal error; invalid input leaves the link usable; what the user typed
//! as a secret never shows in an error. Cases: `PROPTEST_CASES` (default 300).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven::serde_json::{Map, Value, json};
use keyhaven::{
    ConnectionRequest, ConnectionStatus, ErrorKind, Keyhaven, MemoryStore, NewIntegration,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

/// What the user types as a secret: never to be shown back.
const TYPED_SECRET: &str = "typed-SECRET-8d1e";

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300);
    ProptestConfig {
        cases,
        // Run with a `TestRunner`, which has no source file to keep failures beside:
        // a failure found is added to the tests by hand.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

async fn keyhaven() -> (Keyhaven, Vec<String>) {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .connect_form_url("http://127.0.0.1:9/connect")
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for (scheme, config) in [
        ("API_KEY", json!({})),
        ("BASIC", json!({})),
        (
            "BEARER_TOKEN",
            json!({"base_url": "https://{subdomain}.example.com/api"}),
        ),
    ] {
        let mut new = NewIntegration::new("formfuzz", scheme);
        if let Value::Object(m) = config {
            for (k, v) in m {
                new = new.config(k, v);
            }
        }
        ids.push(kh.integrations().create(new).await.unwrap().id.to_string());
    }
    (kh, ids)
}

/// The token of a new form for `integration`.
async fn form_token(kh: &Keyhaven, integration: &str) -> String {
    let out = kh
        .initiate_connection(ConnectionRequest::for_integration(integration))
        .await
        .unwrap();
    let url = keyhaven::url::Url::parse(out.redirect_url.as_deref().unwrap()).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "token")
        .unwrap()
        .1
        .into_owned()
}

/// Fields as a form posts them: the schemes' own names and others, any text.
fn values() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![
        4 => proptest::sample::select(vec![
            "api_key", "token", "username", "password", "subdomain", "header_name",
            "query_param", "format", "csrf",
        ]).prop_map(str::to_owned),
        1 => "\\PC{0,10}",
    ];
    let value = prop_oneof![
        Just(Value::String(TYPED_SECRET.to_owned())),
        "\\PC{0,40}".prop_map(Value::String),
        "[a-z0-9.\\-_]{0,12}".prop_map(Value::String),
        Just(Value::String("evil.com/x?".to_owned())),
        Just(Value::String("a:b".to_owned())),
        Just(Value::String(String::new())),
        Just(Value::String("x".repeat(5000))),
    ];
    prop::collection::btree_map(key, value, 0..6).prop_map(|m| m.into_iter().collect())
}

#[test]
fn any_submission_ends_in_a_status_or_a_known_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (kh, integrations) = rt.block_on(keyhaven());
    let strategy = (values(), 0usize..3, 0u8..4, "\\PC{0,20}");
    TestRunner::new(config())
        .run(&strategy, |(values, which, token_kind, noise)| {
            rt.block_on(async {
                let token = match token_kind {
                    0 => noise,
                    _ => form_token(&kh, &integrations[which]).await,
                };
                match kh.submit_connect_form(&token, &values).await {
                    Ok(outcome) => {
                        let status = outcome.account.status;
                        assert!(
                            matches!(status, ConnectionStatus::Active | ConnectionStatus::Failed),
                            "{status}"
                        );
                        if let Some(reason) = &outcome.account.status_reason {
                            assert!(!reason.contains(TYPED_SECRET), "{reason}");
                        }
                        // Used up.
                        assert!(kh.connect_form(&token).await.is_err());
                    }
                    Err(e) => {
                        assert_ne!(e.kind(), ErrorKind::Internal, "{e}");
                        let text = e.to_string();
                        assert!(!text.contains(TYPED_SECRET), "{text}");
                        if e.kind() == ErrorKind::InvalidInput && token_kind != 0 {
                            assert!(
                                kh.connect_form(&token).await.is_ok(),
                                "invalid input leaves the link usable: {e}"
                            );
                        }
                    }
                }
            });
            Ok(())
        })
        .unwrap();
}
