//! The OAuth 2.0 auth schemes of keyhaven, on the `oauth2` crate and reqwest:
//!
//! - `OAUTH2`: the authorization code grant (RFC 6749 4.1) with PKCE S256
//!   (RFC 7636, on by default), a single-use state, RFC 9207 issuer checks,
//!   refresh (rotated refresh tokens replace old ones) and RFC 7009 revocation.
//! - `OAUTH2_CLIENT_CREDENTIALS`: the client credentials grant (RFC 6749 4.4),
//!   no user involved; renewed by asking again.
//!
//! Provider quirks are set per integration (`scope_separator`, `token_params`,
//! `default_expires_in`, `token_auth_method`) or absorbed by the lenient token
//! answer parser (`expires_in` as a string, `token_type` in any case, scopes
//! separated by commas, answers sent as forms). Depends on `keyhaven-core` alone
//! among keyhaven's crates.

mod config;
mod http;
mod token;

use std::borrow::Cow;
use std::sync::Arc;

use keyhaven_core::{
    AccountContext, AuthScheme, CompleteContext, Credentials, InitiateContext, Initiated,
    Integration, OutgoingRequest, SchemeError, SchemeSpec, SecretFields, async_trait,
};
use oauth2::basic::BasicErrorResponseType;
use oauth2::{
    AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, Scope, StandardErrorResponse,
};

pub use crate::http::{HttpError, ProviderHttp};
pub use crate::token::{OAuth2Tokens, ProviderTokenResponse, fields};

use crate::config::{ProviderConfig, code_fields, token_fields};

/// The catalogue table that holds both OAuth schemes' per-app settings (`[oauth2]`:
/// endpoints, scopes, token request details).
pub const CATALOG_TABLE: &str = "oauth2";
use crate::token::credentials_from;

/// Both schemes, sharing one default HTTP client.
pub fn all() -> Vec<Arc<dyn AuthScheme>> {
    all_with(ProviderHttp::new())
}

/// Both schemes, sharing `http`.
pub fn all_with(http: ProviderHttp) -> Vec<Arc<dyn AuthScheme>> {
    vec![
        Arc::new(OAuth2::new(http.clone())),
        Arc::new(ClientCredentials::new(http)),
    ]
}

/// Turns a failed token request into a scheme error: refusals by the provider
/// (`invalid_grant`, ...) are [`SchemeError::Rejected`], outages are
/// [`SchemeError::Unavailable`]. Never quotes the answer's body, which may hold tokens.
fn token_error(
    what: &str,
    e: RequestTokenError<HttpError, StandardErrorResponse<BasicErrorResponseType>>,
) -> SchemeError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let code = r.error().as_ref().to_owned();
            let message = match r.error_description() {
                Some(d) => format!("{code}: {d}"),
                None => code.clone(),
            };
            match code.as_str() {
                "temporarily_unavailable" | "server_error" | "slow_down" => {
                    SchemeError::Unavailable {
                        message: format!("{what}: {message}"),
                    }
                }
                _ => SchemeError::Rejected { message },
            }
        }
        RequestTokenError::Request(e) => SchemeError::Unavailable {
            message: format!("{what}: {e}"),
        },
        RequestTokenError::Parse(e, _body) => SchemeError::Unavailable {
            message: format!("{what}: the answer could not be read (at {})", e.path()),
        },
        RequestTokenError::Other(s) => SchemeError::Unavailable {
            message: format!("{what}: {s}"),
        },
    }
}

fn bearer(cx: &AccountContext<'_>, request: &mut OutgoingRequest) -> Result<(), SchemeError> {
    let token = OAuth2Tokens::new(cx.credentials)
        .access_token()
        .ok_or_else(|| SchemeError::Rejected {
            message: format!(
                "account {} has no access token; connect it again",
                cx.account.id
            ),
        })?;
    request.set_secret_header("Authorization", &format!("Bearer {token}"))
}

/// Revokes the refresh token, then the access token, at the RFC 7009 endpoint, if the
/// integration has one. Done here rather than through the `oauth2` crate, which
/// refuses plain-HTTP endpoints outright: keyhaven allows them on loopback only.
async fn revoke_tokens(http: &ProviderHttp, cx: AccountContext<'_>) -> Result<(), SchemeError> {
    let cfg = ProviderConfig::read(cx.integration)?;
    let Some(url) = cfg.revocation_url.clone() else {
        return Ok(());
    };
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    if url.scheme() != "https" && !loopback {
        return Err(SchemeError::invalid(
            "auth_config.revocation_url",
            "must use https (plain http is allowed on loopback only)",
        ));
    }
    let view = OAuth2Tokens::new(cx.credentials);
    let tokens = [
        ("refresh_token", view.refresh_token()),
        ("access_token", view.access_token()),
    ];
    for (hint, token) in tokens {
        let Some(token) = token else { continue };
        let mut form = vec![("token", token), ("token_type_hint", hint)];
        let mut request = http.timed(http.client().post(url.clone()));
        match (cfg.auth, cfg.client_secret) {
            (config::TokenAuth::Basic, Some(secret)) => {
                // RFC 6749 2.3.1: both are form-encoded before Basic encoding.
                let enc = |v: &str| {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                };
                request = request.basic_auth(enc(cfg.client_id), Some(enc(secret)));
            }
            (config::TokenAuth::Post, Some(secret)) => {
                form.push(("client_id", cfg.client_id));
                form.push(("client_secret", secret));
            }
            _ => form.push(("client_id", cfg.client_id)),
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| SchemeError::Unavailable {
                message: format!("revocation: {}", e.without_url()),
            })?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(SchemeError::Unavailable {
                message: format!("revocation: HTTP {status}"),
            });
        }
        if !status.is_success() {
            let body: serde_json::Value = http::read_capped(response)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let code = body["error"].as_str().unwrap_or("unknown error");
            // A provider that cannot revoke this kind of token: nothing more to do for it.
            if code != "unsupported_token_type" {
                return Err(SchemeError::Rejected {
                    message: format!("revocation refused: HTTP {status}, {code}"),
                });
            }
        }
    }
    Ok(())
}

/// `OAUTH2`: the authorization code grant with PKCE.
#[derive(Debug, Clone, Default)]
pub struct OAuth2 {
    http: ProviderHttp,
}

impl OAuth2 {
    /// The scheme, calling providers through `http`.
    pub fn new(http: ProviderHttp) -> Self {
        Self { http }
    }
}

#[async_trait]
impl AuthScheme for OAuth2 {
    fn name(&self) -> &str {
        "OAUTH2"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("OAuth 2.0")
            .with_config(code_fields())
            .with_user_in_browser()
            .with_catalog_table(CATALOG_TABLE)
    }

    fn check_integration(&self, integration: &Integration) -> Result<(), SchemeError> {
        let cfg = ProviderConfig::read(integration)?;
        if cfg.authorize_url.is_none() {
            return Err(SchemeError::invalid(
                "auth_config.authorize_url",
                "is required: the provider's authorization endpoint",
            ));
        }
        if cfg.auth == config::TokenAuth::None && !cfg.pkce {
            return Err(SchemeError::invalid(
                "auth_config.pkce",
                "cannot be off for a public client (no client secret): PKCE is what protects its codes",
            ));
        }
        Ok(())
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        self.check_integration(cx.integration)?;
        let cfg = ProviderConfig::read(cx.integration)?;
        let (Some(state), Some(callback)) = (cx.state, cx.callback_url) else {
            return Err(SchemeError::Unsupported {
                scheme: "OAUTH2".into(),
                operation: "initiate without a callback",
            });
        };
        let authorize_url = cfg
            .authorize_url
            .clone()
            .ok_or_else(|| SchemeError::invalid("auth_config.authorize_url", "is required"))?;
        let client =
            oauth2::basic::BasicClient::new(oauth2::ClientId::new(cfg.client_id.to_owned()))
                .set_auth_uri(AuthUrl::from_url(authorize_url))
                .set_redirect_uri(RedirectUrl::from_url(callback.clone()));
        let mut request = client.authorize_url(|| CsrfToken::new(state.to_owned()));
        if let Some(scopes) = cfg.joined_scopes(cx.integration) {
            request = request.add_scope(Scope::new(scopes));
        }
        let mut pending = SecretFields::new();
        if cfg.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            pending.insert("code_verifier", verifier.secret().as_str());
        }
        for (k, v) in &cfg.authorize_params {
            request = request.add_extra_param(k.as_str(), v.as_str());
        }
        let (url, _) = request.url();
        Ok(Initiated::Redirect { url, pending })
    }

    async fn complete(&self, cx: CompleteContext<'_>) -> Result<Credentials, SchemeError> {
        let cfg = ProviderConfig::read(cx.integration)?;
        match (cx.query.get("iss"), cfg.issuer) {
            (Some(iss), Some(expected)) if iss != expected => {
                return Err(SchemeError::Rejected {
                    message: format!(
                        "the callback came from issuer {iss:?}, not the configured {expected:?} (RFC 9207); the code was not used"
                    ),
                });
            }
            (None, Some(_)) if cfg.require_iss => {
                return Err(SchemeError::Rejected {
                    message: "the callback has no iss parameter, which this integration requires (RFC 9207)".into(),
                });
            }
            _ => {}
        }
        let code = cx
            .query
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or_else(|| SchemeError::Rejected {
                message: "the callback has no code".into(),
            })?;
        let client = cfg.token_client();
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.clone()))
            .set_redirect_uri(Cow::Owned(RedirectUrl::from_url(cx.callback_url.clone())));
        if let Some(verifier) = cx.pending.get_str("code_verifier") {
            request = request.set_pkce_verifier(PkceCodeVerifier::new(verifier.to_owned()));
        }
        for (k, v) in cfg.token_params() {
            request = request.add_extra_param(k, v);
        }
        let answer = request
            .request_async(&self.http.or_shared(cx.http))
            .await
            .map_err(|e| token_error("code exchange", e))?;
        Ok(credentials_from(
            &answer,
            None,
            cfg.default_expires_in,
            cx.now,
        ))
    }

    async fn refresh(&self, cx: AccountContext<'_>) -> Result<Option<Credentials>, SchemeError> {
        let view = OAuth2Tokens::new(cx.credentials);
        let Some(refresh_token) = view.refresh_token() else {
            return if cx.credentials.expires_at().is_some_and(|at| at <= cx.now) {
                Err(SchemeError::Rejected {
                    message: "the access token expired and the provider gave no refresh token"
                        .into(),
                })
            } else {
                Ok(None)
            };
        };
        let cfg = ProviderConfig::read(cx.integration)?;
        let client = cfg.token_client();
        let refresh_token = RefreshToken::new(refresh_token.to_owned());
        let mut request = client.exchange_refresh_token(&refresh_token);
        for (k, v) in cfg.token_params() {
            request = request.add_extra_param(k, v);
        }
        let answer = request
            .request_async(&self.http.or_shared(cx.http))
            .await
            .map_err(|e| token_error("refresh", e))?;
        Ok(Some(credentials_from(
            &answer,
            Some(cx.credentials),
            cfg.default_expires_in,
            cx.now,
        )))
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        bearer(cx, request)
    }

    async fn revoke(&self, cx: AccountContext<'_>) -> Result<(), SchemeError> {
        revoke_tokens(&self.http.or_shared(cx.http), cx).await
    }
}

/// `OAUTH2_CLIENT_CREDENTIALS`: the client credentials grant; the app acts as itself.
#[derive(Debug, Clone, Default)]
pub struct ClientCredentials {
    http: ProviderHttp,
}

impl ClientCredentials {
    /// The scheme, calling providers through `http`.
    pub fn new(http: ProviderHttp) -> Self {
        Self { http }
    }

    async fn fetch(
        &self,
        integration: &Integration,
        now: chrono::DateTime<chrono::Utc>,
        shared: Option<&reqwest::Client>,
    ) -> Result<Credentials, SchemeError> {
        let cfg = ProviderConfig::read(integration)?;
        let client = cfg.token_client();
        let mut request = client.exchange_client_credentials();
        if let Some(scopes) = cfg.joined_scopes(integration) {
            request = request.add_scope(Scope::new(scopes));
        }
        for (k, v) in cfg.token_params() {
            request = request.add_extra_param(k, v);
        }
        let answer = request
            .request_async(&self.http.or_shared(shared))
            .await
            .map_err(|e| token_error("client credentials grant", e))?;
        Ok(credentials_from(&answer, None, cfg.default_expires_in, now))
    }
}

#[async_trait]
impl AuthScheme for ClientCredentials {
    fn name(&self) -> &str {
        "OAUTH2_CLIENT_CREDENTIALS"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("OAuth 2.0 client credentials")
            .with_config(token_fields())
            .with_catalog_table(CATALOG_TABLE)
    }

    fn check_integration(&self, integration: &Integration) -> Result<(), SchemeError> {
        let cfg = ProviderConfig::read(integration)?;
        if cfg.client_secret.is_none() {
            return Err(SchemeError::invalid(
                "auth_config.client_secret",
                "is required: the client credentials grant authenticates the client",
            ));
        }
        Ok(())
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        self.check_integration(cx.integration)?;
        Ok(Initiated::Active {
            credentials: self.fetch(cx.integration, cx.now, cx.http).await?,
        })
    }

    async fn refresh(&self, cx: AccountContext<'_>) -> Result<Option<Credentials>, SchemeError> {
        Ok(Some(self.fetch(cx.integration, cx.now, cx.http).await?))
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        bearer(cx, request)
    }

    async fn revoke(&self, cx: AccountContext<'_>) -> Result<(), SchemeError> {
        revoke_tokens(&self.http.or_shared(cx.http), cx).await
    }
}
