//! Fuzzing the validated names and ids (`EntityId`, `AppSlug`, `Label`,
//! `IntegrationId`, `ConnectedAccountId`): any string is accepted or refused
//! without a panic; what is accepted round-trips through `Display`, `FromStr` and
//! JSON; what is refused names its field and never echoes more than a short
//! preview of the input. Cases: `PROPTEST_CASES` (default 1,000 per property).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;

use keyhaven_core::{AppSlug, ConnectedAccountId, EntityId, Error, IntegrationId, Label};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1_000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Strings users send: any Unicode, near-misses of valid values, and long ones.
fn input() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,200}",
        "[a-zA-Z0-9._@:+,\\- ]{0,140}",
        "(ca_|int_|ca-|CA_)?[0-9a-f_\\-./]{0,70}",
        "[a-z0-9][a-z0-9_\\-]{0,70}[a-z0-9_\\-]?",
        Just(String::new()),
        Just("\u{0}".repeat(3)),
        Just("a".repeat(10_000)),
        Just("é".repeat(65)),
    ]
}

/// The input of an error message is shown as a preview: at most 40 characters.
fn check_refusal(e: &Error, field: &str, input: &str) {
    let Error::InvalidInput {
        field: named,
        reason,
    } = e
    else {
        panic!("not an InvalidInput error: {e:?}");
    };
    assert_eq!(named, field);
    if input.chars().count() > 60 {
        assert!(
            !reason.contains(input),
            "the whole input is echoed: {reason}"
        );
    }
    assert!(reason.len() < 400 + 40 * 10, "{reason}");
}

fn round_trip<T>(value: &T, input: &str)
where
    T: std::fmt::Display + FromStr + serde::Serialize + serde::de::DeserializeOwned + PartialEq,
    T::Err: std::fmt::Debug,
{
    assert_eq!(value.to_string(), input);
    assert!(T::from_str(input).unwrap() == *value);
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert!(back == *value);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn entity_ids(s in input()) {
        match EntityId::new(s.clone()) {
            Ok(id) => {
                prop_assert!(!s.is_empty() && s.len() <= 128);
                round_trip(&id, &s);
            }
            Err(e) => check_refusal(&e, "entity_id", &s),
        }
        // JSON from a client: a refusal is a serde error, never a panic.
        let _ = serde_json::from_value::<EntityId>(serde_json::Value::String(s));
    }

    #[test]
    fn app_slugs(s in input()) {
        match AppSlug::new(s.clone()) {
            Ok(slug) => {
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'));
                round_trip(&slug, &s);
            }
            Err(e) => check_refusal(&e, "app", &s),
        }
    }

    #[test]
    fn labels(s in input()) {
        match Label::new(s.clone()) {
            Ok(label) => {
                prop_assert!(!s.contains(',') && !s.chars().any(char::is_control));
                round_trip(&label, &s);
            }
            Err(e) => check_refusal(&e, "labels", &s),
        }
    }

    #[test]
    fn prefixed_ids(s in input()) {
        match ConnectedAccountId::parse(&s) {
            Ok(id) => {
                prop_assert!(s.starts_with("ca_"));
                round_trip(&id, &s);
            }
            Err(e) => check_refusal(&e, "ConnectedAccountId", &s),
        }
        match IntegrationId::parse(&s) {
            Ok(id) => {
                prop_assert!(s.starts_with("int_"));
                round_trip(&id, &s);
            }
            Err(e) => check_refusal(&e, "IntegrationId", &s),
        }
    }

    /// Valid values are always accepted.
    #[test]
    fn valid_values_are_accepted(
        entity in "[A-Za-z0-9._@:+\\-]{1,128}",
        slug in "[a-z0-9]([a-z0-9_\\-]{0,62}[a-z0-9])?",
        label in "[^,\\p{Cc}]{1,16}",
        body in "[A-Za-z0-9_\\-]{8,64}",
    ) {
        round_trip(&EntityId::new(entity.clone()).unwrap(), &entity);
        round_trip(&AppSlug::new(slug.clone()).unwrap(), &slug);
        round_trip(&Label::new(label.clone()).unwrap(), &label);
        let ca = format!("ca_{body}");
        round_trip(&ConnectedAccountId::parse(&ca).unwrap(), &ca);
        let int = format!("int_{body}");
        round_trip(&IntegrationId::parse(&int).unwrap(), &int);
    }
}

#[test]
fn generated_ids_parse() {
    for _ in 0..100 {
        let id = ConnectedAccountId::generate().unwrap();
        round_trip(&id, id.as_str());
        let id = IntegrationId::generate().unwrap();
        round_trip(&id, id.as_str());
    }
}
