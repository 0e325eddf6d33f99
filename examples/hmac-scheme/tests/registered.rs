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
