//! Fuzzing `ConnectionRequest`, the JSON body of an initiate call: any bytes, and
//! any JSON with its field names (both spellings) and wrong types, parse or fail
//! without a panic; a parse error never quotes a secret value; a parsed request's
//! `Debug` never shows its secrets; a valid request round-trips whichever spelling
//! of each field it uses. Cases: `PROPTEST_CASES` (default 500 per property).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven_core::ConnectionRequest;
use proptest::prelude::*;
use serde_json::{self, Map, Value, json};

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

/// Every name a field of the request answers to, and some it does not.
const KEYS: &[&str] = &[
    "integration_id",
    "integrationId",
    "app",
    "appName",
    "app_name",
    "entity_id",
    "entityId",
    "userUuid",
    "user_uuid",
    "labels",
    "redirect_url",
    "redirectUri",
    "redirect_uri",
    "redirectUrl",
    "connected_account_params",
    "data",
    "connectedAccountParams",
    "auth_scheme",
    "authScheme",
    "authMode",
    "auth_mode",
    "auth_config",
    "authConfig",
    "unknown",
    "",
];

/// The names of the secret fields.
const SECRET_FIELDS: &[&str] = &[
    "connected_account_params",
    "data",
    "connectedAccountParams",
    "auth_config",
    "authConfig",
];

/// A secret that must never show in an error or a `Debug`.
const SECRET: &str = "sk-fuzz-SECRET-7f3a";

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,30}".prop_map(Value::String),
    ]
}

/// Any JSON value, its object keys mostly the request's field names.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn no_secret_in(text: &str) {
    assert!(!text.contains(SECRET), "a secret shows: {text}");
}

/// A valid request, and the fields it should parse to.
#[derive(Debug, Clone)]
struct Valid {
    integration_id: Option<String>,
    app: Option<String>,
    entity_id: Option<String>,
    labels: Vec<String>,
    redirect_url: Option<String>,
    params: Map<String, Value>,
    scheme: Option<String>,
    config: Map<String, Value>,
}

fn valid() -> impl Strategy<Value = (Valid, Vec<usize>)> {
    let text = || proptest::option::of("\\PC{0,20}");
    let fields = || {
        prop::collection::btree_map("[a-z_]{1,10}", "\\PC{0,20}", 0..4).prop_map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect::<Map<_, _>>()
        })
    };
    (
        (
            text(),
            text(),
            text(),
            prop::collection::vec("\\PC{0,10}", 0..4),
        ),
        (text(), fields(), text(), fields()),
        prop::collection::vec(0usize..4, 8),
    )
        .prop_map(
            |(
                (integration_id, app, entity_id, labels),
                (redirect_url, params, scheme, config),
                spelling,
            )| {
                (
                    Valid {
                        integration_id,
                        app,
                        entity_id,
                        labels,
                        redirect_url,
                        params,
                        scheme,
                        config,
                    },
                    spelling,
                )
            },
        )
}

/// The request as JSON, each field under one of its names.
fn to_json(v: &Valid, spelling: &[usize]) -> Value {
    let names: [&[&str]; 8] = [
        &["integration_id", "integrationId"],
        &["app", "appName", "app_name"],
        &["entity_id", "entityId", "userUuid", "user_uuid"],
        &["labels"],
        &["redirect_url", "redirectUri", "redirect_uri", "redirectUrl"],
        &["connected_account_params", "data", "connectedAccountParams"],
        &["auth_scheme", "authScheme", "authMode", "auth_mode"],
        &["auth_config", "authConfig"],
    ];
    let values = [
        json!(v.integration_id),
        json!(v.app),
        json!(v.entity_id),
        json!(v.labels),
        json!(v.redirect_url),
        Value::Object(v.params.clone()),
        json!(v.scheme),
        Value::Object(v.config.clone()),
    ];
    let mut out = Map::new();
    for ((names, value), pick) in names.iter().zip(values).zip(spelling) {
        out.insert(names[pick % names.len()].to_owned(), value);
    }
    Value::Object(out)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = serde_json::from_slice::<ConnectionRequest>(&bytes);
    }

    /// Any JSON, with a secret somewhere in a secret field (`data`, `authConfig` and
    /// their other names): parsed or refused, the secret never shows.
    #[test]
    fn any_json(v in value(), secret_field in proptest::sample::select(SECRET_FIELDS), shape in 0usize..5) {
        let mut v = v;
        if let Value::Object(m) = &mut v {
            let secret = [
                json!({"api_key": SECRET}),
                json!(SECRET),
                json!([SECRET, 1]),
                json!({"nested": {"deeper": [SECRET]}}),
                json!({"n": 1, "s": SECRET}),
            ][shape]
                .clone();
            m.insert(secret_field.to_owned(), secret);
        }
        let text = v.to_string();
        match serde_json::from_str::<ConnectionRequest>(&text) {
            Ok(request) => no_secret_in(&format!("{request:?}")),
            Err(e) => no_secret_in(&e.to_string()),
        }
    }

    #[test]
    fn valid_requests_round_trip((v, spelling) in valid()) {
        let mut json = to_json(&v, &spelling);
        if let Value::Object(m) = &mut json {
            m.insert("data".into(), json!({"api_key": SECRET}));
            m.remove("connected_account_params");
            m.remove("connectedAccountParams");
        }
        let request: ConnectionRequest = serde_json::from_value(json.clone()).unwrap();
        prop_assert_eq!(&request.integration_id, &v.integration_id);
        prop_assert_eq!(&request.app, &v.app);
        prop_assert_eq!(&request.entity_id, &v.entity_id);
        prop_assert_eq!(&request.labels, &v.labels);
        prop_assert_eq!(&request.redirect_url, &v.redirect_url);
        prop_assert_eq!(&request.auth_scheme, &v.scheme);
        prop_assert_eq!(request.auth_config.expose(), &v.config);
        prop_assert_eq!(request.connected_account_params.get_str("api_key"), Some(SECRET));
        no_secret_in(&format!("{request:?}"));
        // The same through bytes.
        let again: ConnectionRequest = serde_json::from_slice(json.to_string().as_bytes()).unwrap();
        prop_assert_eq!(&again.app, &v.app);
    }

    /// A secret field of the wrong shape is refused without quoting it.
    #[test]
    fn wrong_shapes_of_secret_fields(pick in 0usize..4, secret_first in any::<bool>()) {
        let bad = [json!(SECRET), json!([SECRET]), json!(7), json!(true)][pick].clone();
        let name = if secret_first { "data" } else { "authConfig" };
        let text = json!({ name: bad }).to_string();
        match serde_json::from_str::<ConnectionRequest>(&text) {
            Ok(r) => no_secret_in(&format!("{r:?}")),
            Err(e) => no_secret_in(&e.to_string()),
        }
    }
}
