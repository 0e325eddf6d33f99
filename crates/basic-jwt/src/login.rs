//! `BASIC_WITH_JWT`: a username and password exchanged at the integration's login
//! endpoint for a JWT, which is renewed by logging in again before it expires.

use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountContext, AuthScheme, Credentials, FieldKind, FieldSpec, InitiateContext, Initiated,
    Integration, OutgoingRequest, SchemeError, SchemeSpec, SecretFields, async_trait,
};
use serde_json::Value;
use url::Url;

use crate::http::{SchemeHttp, provider_message, send};
use crate::jwt::{Verifier, inspect, pem_key, verify};

/// Where the token is looked for in the login answer when `token_field` is not set.
const TOKEN_FIELDS: [&str; 8] = [
    "token",
    "access_token",
    "jwt",
    "id_token",
    "accessToken",
    "data.token",
    "data.access_token",
    "data.jwt",
];

/// `BASIC_WITH_JWT`: log in with a username and password, use the JWT the server answers.
#[derive(Debug, Clone, Default)]
pub struct BasicWithJwt {
    http: SchemeHttp,
}

impl BasicWithJwt {
    /// The scheme, calling login endpoints through `http` (turn its redirects off).
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http: SchemeHttp::given(http),
        }
    }

    fn verifier(&self, integration: &Integration) -> Result<VerifierSource, SchemeError> {
        let hmac = integration.secrets.get_str("hmac_secret");
        let pem = integration.config_str("public_key_pem");
        let jwks = integration.config_str("jwks_url");
        match (hmac, pem, jwks) {
            (None, None, None) => Ok(VerifierSource::Ready(Verifier::Unverified)),
            (Some(s), None, None) => {
                Ok(VerifierSource::Ready(Verifier::Hmac(s.as_bytes().to_vec())))
            }
            (None, Some(p), None) => {
                pem_key(p)?;
                Ok(VerifierSource::Ready(Verifier::Pem(p.to_owned())))
            }
            (None, None, Some(u)) => Url::parse(u)
                .map(VerifierSource::Jwks)
                .map_err(|_| SchemeError::invalid("auth_config.jwks_url", "is not a URL")),
            _ => Err(SchemeError::invalid(
                "auth_config",
                "give at most one of hmac_secret, public_key_pem and jwks_url",
            )),
        }
    }

    /// Logs in and returns the credentials: the JWT, and the username and password
    /// for the next login.
    async fn login(
        &self,
        http: Option<&reqwest::Client>,
        integration: &Integration,
        username: &str,
        password: &str,
        now: DateTime<Utc>,
    ) -> Result<Credentials, SchemeError> {
        let url = integration
            .config_str("login_url")
            .and_then(|u| Url::parse(u).ok())
            .ok_or_else(|| {
                SchemeError::invalid("auth_config.login_url", "is required: the login endpoint")
            })?;
        let user_field = integration
            .config_str("username_field")
            .unwrap_or("username");
        let pass_field = integration
            .config_str("password_field")
            .unwrap_or("password");
        let http = self.http.pick(http);
        let request = http.post(url).header("accept", "application/json");
        let request = match integration.config_str("login_style").unwrap_or("json") {
            "basic" => request.basic_auth(username, Some(password)),
            "form" => request.form(&[(user_field, username), (pass_field, password)]),
            _ => request.json(&serde_json::json!({ user_field: username, pass_field: password })),
        };
        let (status, body) = send(request, "login").await?;
        if matches!(status, 400 | 401 | 403 | 404 | 422) {
            return Err(SchemeError::Rejected {
                message: format!("login refused (HTTP {status}): {}", provider_message(&body)),
            });
        }
        if !(200..300).contains(&status) {
            return Err(SchemeError::Unavailable {
                message: format!("login answered HTTP {status}"),
            });
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|_| SchemeError::Rejected {
            message: "the login answer is not JSON".into(),
        })?;
        let token = find_token(&answer, integration.config_str("token_field")).ok_or_else(
            || SchemeError::Rejected {
                message: match integration.config_str("token_field") {
                    Some(f) => format!("the login answer has no token at {f:?}"),
                    None => format!(
                        "the login answer has no token (looked at {}); set auth_config.token_field",
                        TOKEN_FIELDS.join(", ")
                    ),
                },
            },
        )?;
        let (_, times) = inspect(token, now)?;
        let verifier = match self.verifier(integration)? {
            VerifierSource::Ready(v) => v,
            VerifierSource::Jwks(url) => {
                let (status, body) = send(http.get(url), "JWKS").await?;
                if !(200..300).contains(&status) {
                    return Err(SchemeError::Unavailable {
                        message: format!("the JWKS answered HTTP {status}"),
                    });
                }
                Verifier::Jwks(serde_json::from_slice(&body).map_err(|_| {
                    SchemeError::Unavailable {
                        message: "the JWKS is not a JSON Web Key Set".into(),
                    }
                })?)
            }
        };
        verify(
            token,
            &verifier,
            integration.config_str("issuer"),
            integration.config_str("audience"),
        )?;
        let mut fields = SecretFields::new();
        fields.insert("jwt", token);
        fields.insert("username", username);
        fields.insert("password", password);
        if let Some(iat) = times.issued_at {
            fields.insert("issued_at", iat.timestamp());
        }
        Ok(Credentials::new(fields, Some(times.expires_at)))
    }
}

enum VerifierSource {
    Ready(Verifier),
    Jwks(Url),
}

/// The token in a login answer: at `path` (dots between object keys), or at the usual places.
fn find_token<'a>(answer: &'a Value, path: Option<&str>) -> Option<&'a str> {
    let at = |p: &str| {
        p.split('.')
            .try_fold(answer, |v, key| v.get(key))
            .and_then(Value::as_str)
    };
    match path {
        Some(p) => at(p),
        None => TOKEN_FIELDS.iter().find_map(|p| at(p)),
    }
}

#[async_trait]
impl AuthScheme for BasicWithJwt {
    fn name(&self) -> &str {
        "BASIC_WITH_JWT"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("Username and password, exchanged for a JWT").with_params(vec![
                FieldSpec::required("username", "The username to log in with.").secret(),
                FieldSpec::required("password", "The password to log in with.").secret(),
            ]).with_config(vec![
                FieldSpec::required("login_url", "The login endpoint that answers a JWT.").kind(FieldKind::Url),
                FieldSpec::optional("login_style", "How the credentials are sent: json (a JSON body), form, or basic (HTTP Basic).")
                    .kind(FieldKind::OneOf(vec!["json".into(), "form".into(), "basic".into()]))
                    .default_value("json"),
                FieldSpec::optional("username_field", "The body field of the username.").default_value("username"),
                FieldSpec::optional("password_field", "The body field of the password.").default_value("password"),
                FieldSpec::optional("token_field", "Where the JWT is in the answer, such as data.token; by default token, access_token, jwt, id_token ..."),
                FieldSpec::optional("header_name", "The header that carries the JWT on requests.").default_value("Authorization"),
                FieldSpec::optional("header_format", "The header's value, with {jwt} where the token goes.").default_value("Bearer {jwt}"),
                FieldSpec::optional("hmac_secret", "Verify the JWT with this HMAC secret (HS256/384/512).").secret(),
                FieldSpec::optional("public_key_pem", "Verify the JWT with this PEM public key (RSA, EC or Ed25519)."),
                FieldSpec::optional("jwks_url", "Verify the JWT with the keys of this JWKS.").kind(FieldKind::Url),
                FieldSpec::optional("issuer", "The JWT's iss must equal this."),
                FieldSpec::optional("audience", "The JWT's aud must contain this."),
            ])
    }

    fn check_integration(&self, integration: &Integration) -> Result<(), SchemeError> {
        self.verifier(integration)?;
        let format = integration
            .config_str("header_format")
            .unwrap_or("Bearer {jwt}");
        if !format.contains("{jwt}") {
            return Err(SchemeError::invalid(
                "auth_config.header_format",
                "must contain {jwt} where the token goes",
            ));
        }
        Ok(())
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        self.check_integration(cx.integration)?;
        let username = cx.params.secret.get_str("username").unwrap_or_default();
        let password = cx.params.secret.get_str("password").unwrap_or_default();
        let credentials = self
            .login(cx.http, cx.integration, username, password, cx.now)
            .await?;
        Ok(Initiated::Active { credentials })
    }

    async fn refresh(&self, cx: AccountContext<'_>) -> Result<Option<Credentials>, SchemeError> {
        let (Some(username), Some(password)) = (
            cx.credentials.get_str("username"),
            cx.credentials.get_str("password"),
        ) else {
            return Err(SchemeError::Rejected {
                message: "the stored login is incomplete; connect again".into(),
            });
        };
        self.login(cx.http, cx.integration, username, password, cx.now)
            .await
            .map(Some)
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        let jwt = cx
            .credentials
            .get_str("jwt")
            .ok_or_else(|| SchemeError::Rejected {
                message: "the account has no JWT; connect it again".into(),
            })?;
        let name = cx
            .integration
            .config_str("header_name")
            .unwrap_or("Authorization");
        let format = cx
            .integration
            .config_str("header_format")
            .unwrap_or("Bearer {jwt}");
        request.set_secret_header(name, &format.replace("{jwt}", jwt))
    }
}

#[cfg(test)]
mod tests {
    use super::find_token;

    #[test]
    fn tokens_are_found_at_the_usual_places() {
        let v = serde_json::json!({"data": {"token": "a.b.c"}, "other": 1});
        assert_eq!(find_token(&v, None), Some("a.b.c"));
        assert_eq!(find_token(&v, Some("data.token")), Some("a.b.c"));
        assert_eq!(find_token(&v, Some("nope")), None);
        assert_eq!(
            find_token(&serde_json::json!({"jwt": "x.y.z"}), None),
            Some("x.y.z")
        );
    }
}
