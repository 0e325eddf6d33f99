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
//! The header names start with the integration's `header_prefix` (`x-` by default).
//! An app's catalogue entry may set it in an `[hmac]` table, the scheme's
//! [`SchemeSpec::catalog_table`]: `examples/hmac-scheme/catalog/acme-payments.toml`
//! is such an entry, loaded from a user's catalogue directory.
//!
//! [`verify`] is what the receiving service runs; it compares in constant time.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use http::Method;
use keyhaven_core::{
    AccountContext, AuthScheme, Credentials, FieldSpec, InitiateContext, Initiated,
    OutgoingRequest, SchemeError, SchemeSpec, SecretFields, async_trait,
};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The header prefix when the integration sets none.
pub const DEFAULT_PREFIX: &str = "x-";

/// The scheme. Register it with `Keyhaven::builder().register(HmacScheme)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HmacScheme;

/// The text that is signed.
fn string_to_sign(method: &Method, path_and_query: &str, timestamp: i64, body: &[u8]) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{body_hash}")
}

fn path_and_query(url: &url::Url) -> String {
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

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("HMAC-SHA256 request signing").with_params(vec![
                FieldSpec::required("key_id", "The id of the signing key."),
                FieldSpec::required("secret", "The shared signing secret.").secret(),
            ])
            .with_config(vec![
                FieldSpec::optional(
                    "header_prefix",
                    "What the names of the signature headers start with (key-id, timestamp, signature).",
                )
                .default_value(DEFAULT_PREFIX),
            ])
            .with_catalog_table("hmac")
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
        let prefix = cx
            .integration
            .config_str("header_prefix")
            .unwrap_or(DEFAULT_PREFIX);
        request.set_secret_header(&format!("{prefix}key-id"), key_id)?;
        request.set_secret_header(&format!("{prefix}timestamp"), &timestamp.to_string())?;
        request.set_secret_header(&format!("{prefix}signature"), &signature)?;
        Ok(())
    }
}

/// Why a signed request was refused by [`verify`].
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// A header is missing or malformed (named without its prefix).
    Malformed(&'static str),
    /// The timestamp is further than the allowed skew from now.
    Stale,
    /// The signature does not match.
    BadSignature,
}

/// Checks a signed request as the receiving service would, in constant time, with
/// the default header prefix.
pub fn verify(
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now_unix: i64,
    max_skew_secs: i64,
) -> Result<(), VerifyError> {
    verify_with_prefix(
        DEFAULT_PREFIX,
        method,
        path_and_query,
        headers,
        body,
        secret,
        now_unix,
        max_skew_secs,
    )
}

/// [`verify`] for headers named with `prefix`.
#[allow(clippy::too_many_arguments)]
pub fn verify_with_prefix(
    prefix: &str,
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
            .get(format!("{prefix}{name}"))
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::Malformed(name))
    };
    let timestamp: i64 = header("timestamp")?
        .parse()
        .map_err(|_| VerifyError::Malformed("timestamp"))?;
    if (now_unix - timestamp).abs() > max_skew_secs {
        return Err(VerifyError::Stale);
    }
    let signature =
        hex::decode(header("signature")?).map_err(|_| VerifyError::Malformed("signature"))?;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| VerifyError::BadSignature)?;
    mac.update(string_to_sign(method, path_and_query, timestamp, body).as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| VerifyError::BadSignature)
}
