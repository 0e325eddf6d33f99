//! `HMAC_SHA256`: a request-signing auth scheme written outside keyhaven's own
//! crates, against `keyhaven-core` alone, to show the extension point.
//!
//! The account holds a key id and a shared secret. Each request gets three headers:
//! `x-key-id`, `x-timestamp` (Unix seconds) and `x-signature`, the hex HMAC-SHA256
//! under the secret of
//!
//! ```text
//! METHOD \n PATH?QUERY \n TIMESTAMP \n hex(SHA-256(body))
//! ```
//!
//! [`verify`] is what the receiving service runs; it compares in constant time.

use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use keyhaven_core::{
    AccountContext, AuthScheme, Credentials, FieldSpec, InitiateContext, Initiated,
    OutgoingRequest, SchemeError, SchemeSpec, SecretFields, async_trait, http::HeaderMap,
    http::Method,
};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The scheme. Register it with `Keyhaven::builder().register(HmacScheme)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HmacScheme;

/// The text that is signed.
fn string_to_sign(method: &Method, path_and_query: &str, timestamp: i64, body: &[u8]) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{body_hash}")
}

fn path_and_query(url: &keyhaven_core::url::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

#[async_trait]
impl AuthScheme for HmacScheme {
    fn name(&self) -> &str {
        "HMAC_SHA256"
    }

    fn spec(&self) -> &SchemeSpec {
        static SPEC: OnceLock<SchemeSpec> = OnceLock::new();
        SPEC.get_or_init(|| SchemeSpec {
            display_name: "HMAC-SHA256 request signing".into(),
            params: vec![
                FieldSpec::required("key_id", "The id of the signing key."),
                FieldSpec::required("secret", "The shared signing secret.").secret(),
            ],
            config: vec![],
            interactive: false,
        })
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        let key_id = cx.params.get_str("key_id");
        let secret = cx.params.secret.get_str("secret");
        let (Some(key_id), Some(secret)) = (key_id, secret) else {
            return Err(SchemeError::invalid(
                "connected_account_params",
                "key_id and secret are required",
            ));
        };
        if secret.len() < 16 {
            return Err(SchemeError::invalid(
                "connected_account_params.secret",
                "is too short: use at least 16 characters",
            ));
        }
        let mut fields = SecretFields::new();
        fields.insert("key_id", key_id);
        fields.insert("secret", secret);
        Ok(Initiated::Active {
            credentials: Credentials::without_expiry(fields),
        })
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        let missing = || SchemeError::Rejected {
            message: "the stored signing key is incomplete; connect again".into(),
        };
        let key_id = cx.credentials.get_str("key_id").ok_or_else(missing)?;
        let secret = cx.credentials.get_str("secret").ok_or_else(missing)?;
        let timestamp = cx.now.timestamp();
        let text = string_to_sign(
            &request.method,
            &path_and_query(&request.url),
            timestamp,
            &request.body,
        );
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
            .map_err(|e| SchemeError::Other(Box::new(e)))?;
        mac.update(text.as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        request.set_secret_header("x-key-id", key_id)?;
        request.set_secret_header("x-timestamp", &timestamp.to_string())?;
        request.set_secret_header("x-signature", &signature)?;
        Ok(())
    }
}

/// Why a signed request was refused by [`verify`].
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// A header is missing or malformed.
    Malformed(&'static str),
    /// The timestamp is further than the allowed skew from now.
    Stale,
    /// The signature does not match.
    BadSignature,
}

/// Checks a signed request as the receiving service would, in constant time.
pub fn verify(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now_unix: i64,
    max_skew_secs: i64,
) -> Result<(), VerifyError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::Malformed(name))
    };
    let timestamp: i64 = header("x-timestamp")?
        .parse()
        .map_err(|_| VerifyError::Malformed("x-timestamp"))?;
    if (now_unix - timestamp).abs() > max_skew_secs {
        return Err(VerifyError::Stale);
    }
    let signature =
        hex::decode(header("x-signature")?).map_err(|_| VerifyError::Malformed("x-signature"))?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| VerifyError::BadSignature)?;
    mac.update(string_to_sign(method, path_and_query, timestamp, body).as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| VerifyError::BadSignature)
}
