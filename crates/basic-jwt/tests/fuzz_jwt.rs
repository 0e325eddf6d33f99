//! Fuzzing JWT inspection and verification (`inspect`, `verify`), which read tokens
//! that login servers send: any text, and tokens built from any header and claims
//! (times at the edges of what a date can hold), are read or refused without a
//! panic, and a refusal never quotes the token; a token signed with the secret
//! verifies, and any change to it, another secret or another algorithm family is
//! refused. Cases: `PROPTEST_CASES` (default 500 per property).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyhaven_basic_jwt::{Verifier, inspect, verify};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(500);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Times as a JWT may carry them: ordinary ones, the edges of `i64` and of the
/// dates chrono can hold, fractions, and things that are not numbers.
fn time_value() -> impl Strategy<Value = Value> {
    let now = now().timestamp();
    prop_oneof![
        4 => (now - 100_000..now + 100_000).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => proptest::sample::select(vec![
            i64::MAX, i64::MIN, 0, -1,
            // The first and last seconds chrono can hold, and just past them.
            8_210_298_412_799, 8_210_298_412_800, -8_334_601_228_800, -8_334_601_228_801,
        ]).prop_map(Value::from),
        1 => proptest::sample::select(vec![json!(1e300), json!(-1e300), json!(9.3e18), json!("1700000000"), json!(null), json!([1]), json!({})]),
    ]
}

fn header_value() -> impl Strategy<Value = Value> {
    let alg = proptest::sample::select(vec![
        json!("HS256"),
        json!("HS512"),
        json!("RS256"),
        json!("ES256"),
        json!("EdDSA"),
        json!("none"),
        json!("NONE"),
        json!("nOnE"),
        json!(""),
        json!(7),
        json!(null),
    ]);
    (alg, proptest::option::of("\\PC{0,10}"), any::<bool>()).prop_map(|(alg, kid, typ)| {
        let mut h = serde_json::Map::new();
        h.insert("alg".into(), alg);
        if let Some(kid) = kid {
            h.insert("kid".into(), json!(kid));
        }
        if typ {
            h.insert("typ".into(), json!("JWT"));
        }
        Value::Object(h)
    })
}

fn claims_value() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(time_value()),
        proptest::option::of(time_value()),
        proptest::option::of(time_value()),
        proptest::option::of("\\PC{0,10}"),
        proptest::option::of(prop_oneof![json_str(), Just(json!(["a", "b"]))]),
    )
        .prop_map(|(exp, nbf, iat, iss, aud)| {
            let mut c = serde_json::Map::new();
            for (name, v) in [("exp", exp), ("nbf", nbf), ("iat", iat)] {
                if let Some(v) = v {
                    c.insert(name.into(), v);
                }
            }
            if let Some(iss) = iss {
                c.insert("iss".into(), json!(iss));
            }
            if let Some(aud) = aud {
                c.insert("aud".into(), aud);
            }
            Value::Object(c)
        })
}

fn json_str() -> impl Strategy<Value = Value> {
    "\\PC{0,10}".prop_map(Value::String)
}

/// Tokens: noise, three parts of noise, and structured tokens with any signature.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_\\-=.]{0,120}",
        (header_value(), claims_value(), "[A-Za-z0-9_\\-]{0,90}").prop_map(|(h, c, sig)| {
            format!(
                "{}.{}.{sig}",
                b64(h.to_string().as_bytes()),
                b64(c.to_string().as_bytes())
            )
        }),
        (
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(h, c)| format!("{}.{}.x", b64(&h), b64(&c))),
    ]
}

fn refusal_does_not_quote(message: &str, token: &str) {
    if token.len() > 12 {
        assert!(!message.contains(token), "the token is quoted: {message}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn inspect_reads_or_refuses_any_token(t in token()) {
        if let Err(e) = inspect(&t, now()) {
            refusal_does_not_quote(&e.to_string(), &t);
        }
    }

    #[test]
    fn verify_reads_or_refuses_any_token(t in token(), secret in prop::collection::vec(any::<u8>(), 1..40), iss in proptest::option::of("\\PC{0,8}")) {
        for verifier in [Verifier::Unverified, Verifier::Hmac(secret.clone())] {
            if let Err(e) = verify(&t, &verifier, iss.as_deref(), iss.as_deref()) {
                refusal_does_not_quote(&e.to_string(), &t);
            }
        }
    }

    #[test]
    fn signed_tokens_verify_and_changes_are_refused(
        secret in prop::collection::vec(any::<u8>(), 16..48),
        other in prop::collection::vec(any::<u8>(), 16..48),
        life in 60i64..100_000,
        sub in "\\PC{0,20}",
        alg in proptest::sample::select(vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
        flip in any::<prop::sample::Index>(),
    ) {
        let exp = now().timestamp() + life;
        let claims = json!({"exp": exp, "sub": sub, "iss": "issuer"});
        let t = jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(&secret)).unwrap();
        let (read, times) = inspect(&t, now()).unwrap();
        prop_assert_eq!(read.get("sub"), Some(&json!(sub)));
        prop_assert_eq!(times.expires_at.timestamp(), exp);
        prop_assert!(verify(&t, &Verifier::Hmac(secret.clone()), Some("issuer"), None).is_ok());
        prop_assert!(verify(&t, &Verifier::Hmac(secret.clone()), Some("other"), None).is_err());
        if other != secret {
            prop_assert!(verify(&t, &Verifier::Hmac(other), None, None).is_err());
        }
        // One character of the token changed: refused (or unreadable).
        let mut chars: Vec<char> = t.chars().collect();
        let i = flip.index(chars.len());
        if chars[i] != '.' {
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let changed: String = chars.into_iter().collect();
            if changed != t {
                prop_assert!(verify(&changed, &Verifier::Hmac(secret.clone()), None, None).is_err());
            }
        }
        // The same claims unsigned, or under a public-key algorithm name: refused.
        let parts: Vec<&str> = t.split('.').collect();
        for alg in ["none", "RS256", "ES256"] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
            let forged = format!("{header}.{}.{}", parts[1], parts[2]);
            prop_assert!(verify(&forged, &Verifier::Hmac(secret.clone()), None, None).is_err());
        }
    }
}

/// Found by the fuzzing above: an `exp` or `nbf` at the last (or first) second a
/// date can hold made `exp + leeway` (or `nbf - leeway`) overflow chrono's range,
/// a panic.
#[test]
fn times_at_the_edge_of_the_calendar_are_refused_not_a_panic() {
    for (name, secs) in [
        ("exp", 8_210_298_412_799i64),
        ("exp", 8_210_298_412_780),
        ("exp", -8_334_601_228_800),
        ("nbf", -8_334_601_228_800),
        ("nbf", -8_334_601_228_780),
        ("nbf", 8_210_298_412_799),
    ] {
        let mut claims = json!({"exp": now().timestamp() + 600});
        claims[name] = json!(secs);
        let t = format!(
            "{}.{}.sig",
            b64(br#"{"alg":"HS256"}"#),
            b64(claims.to_string().as_bytes())
        );
        let _ = inspect(&t, now());
    }
}
