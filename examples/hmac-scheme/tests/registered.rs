//! The third-party scheme registered into the facade and used end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keyhaven::{ConnectionRequest, Keyhaven, MemoryStore, OutgoingRequest, http::Method, url::Url};
use keyhaven_example_hmac::{HmacScheme, VerifyError, verify};

const SECRET: &str = "0123456789abcdef-shared-secret";

#[tokio::test]
async fn signs_requests_that_the_service_accepts() {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .register(HmacScheme)
        .build()
        .unwrap();
    assert!(kh.schemes().names().any(|n| n == "HMAC_SHA256"));
    let out = kh
        .entity("alice")
        .unwrap()
        .initiate_connection(
            ConnectionRequest::for_app("acme-payments")
                .scheme("HMAC_SHA256")
                .config("base_url", "https://pay.example.com/v1")
                .param("key_id", "key-1")
                .param("secret", SECRET),
        )
        .await
        .unwrap();
    assert_eq!(out.connection_status, keyhaven::ConnectionStatus::Active);
    let account = kh
        .connected_accounts()
        .get(out.connected_account_id.as_str())
        .await
        .unwrap();
    assert_eq!(
        account.params.get("key_id").and_then(|v| v.as_str()),
        Some("key-1"),
        "non-secret param kept in the open"
    );
    assert!(
        !keyhaven::serde_json::to_string(&account)
            .unwrap()
            .contains(SECRET)
    );

    let mut req = OutgoingRequest::new(
        Method::POST,
        Url::parse("https://pay.example.com/v1/charges?currency=eur").unwrap(),
    );
    req.body = br#"{"amount":100}"#.to_vec();
    let signed = kh.authorize(account.id.as_str(), req).await.unwrap();
    assert!(!format!("{signed:?}").contains(SECRET));
    let now = keyhaven::chrono::Utc::now().timestamp();
    let pq = "/v1/charges?currency=eur";
    assert_eq!(
        verify(
            &Method::POST,
            pq,
            &signed.headers,
            &signed.body,
            SECRET.as_bytes(),
            now,
            300
        ),
        Ok(())
    );
    assert_eq!(
        verify(
            &Method::POST,
            pq,
            &signed.headers,
            br#"{"amount":999}"#,
            SECRET.as_bytes(),
            now,
            300
        ),
        Err(VerifyError::BadSignature),
        "a tampered body is refused"
    );
    assert_eq!(
        verify(
            &Method::GET,
            pq,
            &signed.headers,
            &signed.body,
            SECRET.as_bytes(),
            now,
            300
        ),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(
            &Method::POST,
            pq,
            &signed.headers,
            &signed.body,
            SECRET.as_bytes(),
            now + 3600,
            300
        ),
        Err(VerifyError::Stale)
    );
}

#[tokio::test]
async fn its_fields_are_checked_like_a_built_in_scheme() {
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .register(HmacScheme)
        .build()
        .unwrap();
    let err = kh
        .initiate_connection(
            ConnectionRequest::for_app("acme")
                .config("base_url", "https://api.acme.example")
                .scheme("HMAC_SHA256")
                .param("key_id", "k"),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("connected_account_params.secret"),
        "{err}"
    );
    let err = kh
        .initiate_connection(
            ConnectionRequest::for_app("acme")
                .config("base_url", "https://api.acme.example")
                .scheme("HMAC_SHA256")
                .param("key_id", "k")
                .param("secret", "short"),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("too short") && !err.to_string().contains("short\""),
        "{err}"
    );
    assert!(
        kh.integrations().list(None).await.unwrap().is_empty(),
        "nothing stored"
    );
}

/// The scheme takes part in the catalogue: a user's entry with an `[hmac]` table is
/// loaded (checked by the scheme's own spec), an initiate by app name makes the
/// integration from it, and the requests are signed with the entry's header prefix.
#[tokio::test]
async fn works_from_a_user_catalogue_entry() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("catalog");
    let kh = Keyhaven::builder()
        .store(MemoryStore::new())
        .register(HmacScheme)
        .catalog_dir(&dir)
        .build()
        .unwrap();
    let entry = kh.catalog().get("acme-payments").unwrap();
    assert_eq!(entry.schemes, ["HMAC_SHA256"]);
    // No scheme named: the entry's first, the third-party one.
    let out = kh
        .initiate_connection(
            ConnectionRequest::for_app("acme-payments")
                .param("key_id", "key-9")
                .param("secret", SECRET),
        )
        .await
        .unwrap();
    assert_eq!(out.connection_status, keyhaven::ConnectionStatus::Active);
    let account = kh
        .connected_accounts()
        .get(out.connected_account_id.as_str())
        .await
        .unwrap();
    assert_eq!(account.auth_scheme, "HMAC_SHA256");
    let integration = kh
        .integrations()
        .get(account.integration_id.as_str())
        .await
        .unwrap();
    assert_eq!(integration.config_str("header_prefix"), Some("x-acme-"));
    assert_eq!(
        integration.config_str("base_url"),
        Some("https://api.acme-payments.example/v1")
    );
    let req = OutgoingRequest::new(
        Method::GET,
        Url::parse("https://api.acme-payments.example/v1/balance").unwrap(),
    );
    let signed = kh.authorize(account.id.as_str(), req).await.unwrap();
    assert!(signed.headers.contains_key("x-acme-signature"));
    let now = keyhaven::chrono::Utc::now().timestamp();
    assert_eq!(
        keyhaven_example_hmac::verify_with_prefix(
            "x-acme-",
            &Method::GET,
            "/v1/balance",
            &signed.headers,
            &signed.body,
            SECRET.as_bytes(),
            now,
            300
        ),
        Ok(())
    );

    // An entry whose table the scheme's spec does not allow is refused with the field.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("acme-bad.toml"),
        std::fs::read_to_string(dir.join("acme-payments.toml"))
            .unwrap()
            .replace("acme-payments", "acme-bad")
            .replace("header_prefix", "header_prefx"),
    )
    .unwrap();
    let err = Keyhaven::builder()
        .store(MemoryStore::new())
        .register(HmacScheme)
        .catalog_dir(bad.path())
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("hmac.header_prefx is not a setting of HMAC_SHA256"),
        "{err}"
    );
}
