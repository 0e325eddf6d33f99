//! Service accounts: the JWT bearer grant (RFC 7523). keyhaven signs an assertion
//! with the stored private key and exchanges it at the token endpoint for an access
//! token, and does it again before that token expires.

use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keyhaven_core::{
    AccountContext, AuthScheme, Credentials, FieldKind, FieldSpec, InitiateContext, Initiated,
    Integration, OutgoingRequest, SchemeError, SchemeSpec, SecretFields, async_trait,
};
use serde_json::Value;
use url::Url;

use crate::http::{Picked, SchemeHttp, provider_message, send};

/// The grant type of RFC 7523, section 2.1.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What an assertion is made from.
struct Signer<'a> {
    issuer: &'a str,
    subject: Option<&'a str>,
    key_id: Option<&'a str>,
    private_key: &'a str,
    algorithm: Algorithm,
    token_url: &'a str,
    audience: &'a str,
    scope: Option<String>,
    scope_in_claim: bool,
    lifetime: i64,
}

fn encoding_key(pem: &str, algorithm: Algorithm, field: &str) -> Result<EncodingKey, SchemeError> {
    let key = match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    };
    key.map_err(|_| {
        SchemeError::invalid(
            field,
            match algorithm {
                Algorithm::ES256 => "is not a PEM EC P-256 private key (PKCS#8 or SEC1)",
                _ => "is not a PEM RSA private key (PKCS#8 or PKCS#1)",
            },
        )
    })
}

impl Signer<'_> {
    fn assertion(&self, now: DateTime<Utc>, field: &str) -> Result<String, SchemeError> {
        let key = encoding_key(self.private_key, self.algorithm, field)?;
        let mut header = Header::new(self.algorithm);
        header.kid = self.key_id.map(str::to_owned);
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now.timestamp(),
            "exp": (now + Duration::seconds(self.lifetime)).timestamp(),
            "jti": format!("{:032x}", u128::from_le_bytes(keyhaven_core::random_bytes().map_err(|e| SchemeError::Other(Box::new(e)))?)),
        });
        claims["sub"] = Value::from(self.subject.unwrap_or(self.issuer));
        if let (true, Some(scope)) = (self.scope_in_claim, &self.scope) {
            claims["scope"] = Value::from(scope.as_str());
        }
        jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|_| SchemeError::invalid(field, "cannot sign with this key"))
    }

    /// Signs an assertion and exchanges it.
    async fn exchange(
        &self,
        http: &Picked,
        now: DateTime<Utc>,
        field: &str,
    ) -> Result<(String, Option<i64>), SchemeError> {
        let assertion = self.assertion(now, field)?;
        let mut form = vec![
            ("grant_type", JWT_BEARER.to_owned()),
            ("assertion", assertion),
        ];
        if let (false, Some(scope)) = (self.scope_in_claim, &self.scope) {
            form.push(("scope", scope.clone()));
        }
        let url = Url::parse(self.token_url)
            .map_err(|_| SchemeError::invalid("token_url", "is not a URL"))?;
        let (status, body) = send(
            http.post(url)
                .header("accept", "application/json")
                .form(&form),
            "token endpoint",
        )
        .await?;
        if !(200..300).contains(&status) {
            return Err(SchemeError::Rejected {
                message: format!(
                    "the token endpoint refused the assertion (HTTP {status}): {}",
                    provider_message(&body)
                ),
            });
        }
        let answer: Value =
            serde_json::from_slice(&body).map_err(|_| SchemeError::Unavailable {
                message: "the token endpoint's answer is not JSON".into(),
            })?;
        let token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| SchemeError::Unavailable {
                message: "the token endpoint's answer has no access_token".into(),
            })?;
        let expires_in = answer.get("expires_in").and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        });
        Ok((token.to_owned(), expires_in))
    }
}

fn credentials(
    access_token: String,
    expires_in: Option<i64>,
    keep: SecretFields,
    now: DateTime<Utc>,
) -> Credentials {
    let mut fields = keep;
    fields.insert("access_token", access_token);
    Credentials::new(fields, expires_in.map(|s| now + Duration::seconds(s)))
}

fn bearer(cx: &AccountContext<'_>, request: &mut OutgoingRequest) -> Result<(), SchemeError> {
    let token = cx
        .credentials
        .get_str("access_token")
        .ok_or_else(|| SchemeError::Rejected {
            message: "the account has no access token; connect it again".into(),
        })?;
    request.set_secret_header("Authorization", &format!("Bearer {token}"))
}

fn algorithm(integration: &Integration) -> Algorithm {
    match integration.config_str("algorithm") {
        Some("ES256") => Algorithm::ES256,
        _ => Algorithm::RS256,
    }
}

fn lifetime(integration: &Integration) -> i64 {
    integration
        .config
        .get("assertion_lifetime")
        .and_then(Value::as_i64)
        .unwrap_or(3600)
        .clamp(60, 3600)
}

fn scope(integration: &Integration) -> Option<String> {
    (!integration.scopes.is_empty()).then(|| integration.scopes.join(" "))
}

/// `SERVICE_ACCOUNT`: the JWT bearer grant with a private key given per connection.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccount {
    http: SchemeHttp,
}

impl ServiceAccount {
    /// The scheme, calling token endpoints through `http`.
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http: SchemeHttp::given(http),
        }
    }

    fn signer<'a>(
        integration: &'a Integration,
        fields: &'a SecretFields,
        public: Option<&'a serde_json::Map<String, Value>>,
    ) -> Result<Signer<'a>, SchemeError> {
        let get = |k: &str| {
            fields
                .get_str(k)
                .or_else(|| public.and_then(|p| p.get(k)).and_then(Value::as_str))
        };
        let token_url = integration
            .config_str("token_url")
            .ok_or_else(|| SchemeError::invalid("auth_config.token_url", "is required"))?;
        Ok(Signer {
            issuer: get("issuer").ok_or_else(|| {
                SchemeError::invalid("connected_account_params.issuer", "is required")
            })?,
            subject: get("subject"),
            key_id: get("key_id"),
            private_key: fields.get_str("private_key").ok_or_else(|| {
                SchemeError::invalid("connected_account_params.private_key", "is required")
            })?,
            algorithm: algorithm(integration),
            token_url,
            audience: integration.config_str("audience").unwrap_or(token_url),
            scope: scope(integration),
            scope_in_claim: integration.config_str("scope_in") == Some("claim"),
            lifetime: lifetime(integration),
        })
    }
}

#[async_trait]
impl AuthScheme for ServiceAccount {
    fn name(&self) -> &str {
        "SERVICE_ACCOUNT"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("Service account (JWT bearer grant, RFC 7523)").with_params(vec![
                FieldSpec::required("issuer", "The assertion's iss: the service account's client id or email."),
                FieldSpec::required("private_key", "The service account's private key, PEM.").secret(),
                FieldSpec::optional("key_id", "The kid of the key, when the server wants it."),
                FieldSpec::optional("subject", "The assertion's sub (a user to act for); the issuer when absent."),
            ]).with_config(vec![
                FieldSpec::required("token_url", "The token endpoint.").kind(FieldKind::Url),
                FieldSpec::optional("audience", "The assertion's aud; the token URL when absent."),
                FieldSpec::optional("algorithm", "RS256 or ES256.")
                    .kind(FieldKind::OneOf(vec!["RS256".into(), "ES256".into()]))
                    .default_value("RS256"),
                FieldSpec::optional("assertion_lifetime", "Seconds an assertion is valid, 60 to 3600.")
                    .kind(FieldKind::Integer)
                    .default_value(3600),
                FieldSpec::optional("scope_in", "Send the integration's scopes as a form parameter or as the assertion's scope claim.")
                    .kind(FieldKind::OneOf(vec!["form".into(), "claim".into()]))
                    .default_value("form"),
            ])
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        let signer = Self::signer(cx.integration, &cx.params.secret, Some(&cx.params.public))?;
        // A malformed key is bad input, found before any request.
        encoding_key(
            signer.private_key,
            signer.algorithm,
            "connected_account_params.private_key",
        )?;
        let (token, expires_in) = signer
            .exchange(
                &self.http.pick(cx.http),
                cx.now,
                "connected_account_params.private_key",
            )
            .await?;
        let mut keep = cx.params.secret.clone();
        for (k, v) in &cx.params.public {
            keep.insert(k.clone(), v.clone());
        }
        Ok(Initiated::Active {
            credentials: credentials(token, expires_in, keep, cx.now),
        })
    }

    async fn refresh(&self, cx: AccountContext<'_>) -> Result<Option<Credentials>, SchemeError> {
        let mut keep = cx.credentials.expose().clone();
        keep.remove("access_token");
        let signer = Self::signer(cx.integration, &keep, None)?;
        let (token, expires_in) = signer
            .exchange(&self.http.pick(cx.http), cx.now, "private_key")
            .await?;
        Ok(Some(credentials(token, expires_in, keep.clone(), cx.now)))
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        bearer(cx, request)
    }
}

/// `GOOGLE_SERVICE_ACCOUNT`: a Google-style credentials JSON (`client_email`,
/// `private_key`, `token_uri`) as the one parameter; the integration's scopes go in
/// the assertion's scope claim, as Google wants.
#[derive(Debug, Clone, Default)]
pub struct GoogleServiceAccount {
    http: SchemeHttp,
}

impl GoogleServiceAccount {
    /// The scheme, calling token endpoints through `http`.
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http: SchemeHttp::given(http),
        }
    }
}

/// Google's token endpoint, which a key file's `token_uri` names.
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// The token endpoint of a Google service account integration: its `token_url`, or
/// Google's. The key file's `token_uri` must name it: the key file is pasted by an
/// end user, and its assertion (and every refresh) is sent there from keyhaven's
/// host, so a key file must not choose where (another host, an internal address).
fn google_token_url(integration: &Integration) -> &str {
    integration
        .config_str("token_url")
        .unwrap_or(GOOGLE_TOKEN_URL)
}

/// The fields of a credentials JSON that keyhaven needs, checked; its `token_uri`
/// must be `token_url`.
fn google_fields(json: &str, token_url: &str) -> Result<SecretFields, SchemeError> {
    const FIELD: &str = "connected_account_params.credentials_json";
    let parsed = SecretFields::from_json(json)
        .map_err(|_| SchemeError::invalid(FIELD, "is not a JSON object"))?;
    for key in ["client_email", "private_key", "token_uri"] {
        match parsed.get_str(key) {
            Some(v) if !v.trim().is_empty() => {}
            _ => {
                return Err(SchemeError::invalid(
                    FIELD,
                    format!("has no {key}; paste the whole key file Google gave you"),
                ));
            }
        }
    }
    if parsed
        .get_str("type")
        .is_some_and(|t| t != "service_account")
    {
        return Err(SchemeError::invalid(
            FIELD,
            "is not a service account key (its type is not service_account)",
        ));
    }
    let token_uri = parsed.get_str("token_uri").unwrap_or_default();
    if Url::parse(token_uri).ok() != Url::parse(token_url).ok() {
        return Err(SchemeError::invalid(
            FIELD,
            format!(
                "has a token_uri other than this integration's token endpoint ({token_url}); paste the key file Google gave you, or set the integration's token_url"
            ),
        ));
    }
    let mut out = SecretFields::new();
    for key in ["client_email", "private_key", "token_uri", "private_key_id"] {
        if let Some(v) = parsed.get_str(key) {
            out.insert(key, v);
        }
    }
    Ok(out)
}

impl GoogleServiceAccount {
    async fn fetch(
        &self,
        http: Option<&reqwest::Client>,
        integration: &Integration,
        fields: &SecretFields,
        subject: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(String, Option<i64>), SchemeError> {
        // The integration's endpoint, which the key file's token_uri was held to when
        // it was pasted (not the stored token_uri: what was stored before that check
        // is not trusted).
        let token_uri = google_token_url(integration);
        let signer = Signer {
            issuer: fields.get_str("client_email").unwrap_or_default(),
            subject,
            key_id: fields.get_str("private_key_id"),
            private_key: fields.get_str("private_key").unwrap_or_default(),
            algorithm: Algorithm::RS256,
            token_url: token_uri,
            audience: token_uri,
            scope: scope(integration),
            scope_in_claim: true,
            lifetime: 3600,
        };
        signer
            .exchange(
                &self.http.pick(http),
                now,
                "connected_account_params.credentials_json",
            )
            .await
    }
}

#[async_trait]
impl AuthScheme for GoogleServiceAccount {
    fn name(&self) -> &str {
        "GOOGLE_SERVICE_ACCOUNT"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("Google service account").with_params(vec![
            FieldSpec::required(
                "credentials_json",
                "The service account's key file, as JSON.",
            )
            .secret(),
            FieldSpec::optional("subject", "A user to act for (domain-wide delegation)."),
        ])
        .with_config(vec![
            FieldSpec::optional(
                "token_url",
                "The token endpoint (Google's, https://oauth2.googleapis.com/token, when absent); a key file's token_uri must name it.",
            )
            .kind(FieldKind::Url),
        ])
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        let json = cx
            .params
            .secret
            .get_str("credentials_json")
            .unwrap_or_default();
        let fields = google_fields(json, google_token_url(cx.integration))?;
        encoding_key(
            fields.get_str("private_key").unwrap_or_default(),
            Algorithm::RS256,
            "connected_account_params.credentials_json",
        )
        .map_err(|_| {
            SchemeError::invalid(
                "connected_account_params.credentials_json",
                "has a private_key that is not a PEM RSA private key",
            )
        })?;
        let subject = cx.params.get_str("subject");
        let (token, expires_in) = self
            .fetch(cx.http, cx.integration, &fields, subject, cx.now)
            .await?;
        let mut keep = fields.clone();
        if let Some(s) = subject {
            keep.insert("subject", s);
        }
        Ok(Initiated::Active {
            credentials: credentials(token, expires_in, keep, cx.now),
        })
    }

    async fn refresh(&self, cx: AccountContext<'_>) -> Result<Option<Credentials>, SchemeError> {
        let mut keep = cx.credentials.expose().clone();
        keep.remove("access_token");
        let (token, expires_in) = self
            .fetch(
                cx.http,
                cx.integration,
                &keep,
                keep.get_str("subject"),
                cx.now,
            )
            .await?;
        Ok(Some(credentials(token, expires_in, keep.clone(), cx.now)))
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        bearer(cx, request)
    }
}
