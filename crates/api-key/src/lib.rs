//! The static-credential auth schemes of keyhaven: `API_KEY`, `BEARER_TOKEN`,
//! `BASIC` (RFC 7617) and `NO_AUTH`.
//!
//! Each connects at once (the account is `ACTIVE` as soon as it is created)
//! and never needs a refresh. They depend on `keyhaven-core` alone.

use std::sync::Arc;

use base64::Engine as _;
use keyhaven_core::{
    AccountContext, AuthScheme, Credentials, FieldSpec, InitiateContext, Initiated, Integration,
    OutgoingRequest, SchemeError, SchemeSpec, SecretFields, async_trait,
};

/// Every scheme of this crate, ready to register.
pub fn all() -> Vec<Arc<dyn AuthScheme>> {
    vec![
        Arc::new(ApiKey),
        Arc::new(BearerToken),
        Arc::new(Basic),
        Arc::new(NoAuth),
    ]
}

/// Copies the named secret fields into credentials, refusing values that
/// could not be sent in an HTTP header.
fn credentials_from(
    cx: &InitiateContext<'_>,
    fields: &[&str],
    required: &[&str],
) -> Result<Credentials, SchemeError> {
    let mut out = SecretFields::new();
    for &name in fields {
        match cx.params.secret.get_str(name) {
            Some(value) => {
                if value.chars().any(char::is_control) {
                    return Err(SchemeError::invalid(
                        format!("connected_account_params.{name}"),
                        "contains a control character such as a line break; paste the value again without it",
                    ));
                }
                out.insert(name, value);
            }
            None if required.contains(&name) => {
                return Err(SchemeError::invalid(
                    format!("connected_account_params.{name}"),
                    "is required",
                ));
            }
            None => {}
        }
    }
    Ok(Credentials::without_expiry(out))
}

fn secret<'a>(cx: &'a AccountContext<'_>, name: &str) -> Result<&'a str, SchemeError> {
    cx.credentials
        .get_str(name)
        .ok_or_else(|| SchemeError::Rejected {
            message: format!(
                "the stored credentials of account {} have no {name}; connect the account again",
                cx.account.id
            ),
        })
}

/// `API_KEY`: a key sent in a header with a format (`Authorization: Bearer {api_key}`,
/// `x-api-key: {api_key}`) or as a query parameter, as the integration configures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiKey;

impl ApiKey {
    /// The placeholder a header format must contain.
    pub const PLACEHOLDER: &'static str = "{api_key}";
}

#[async_trait]
impl AuthScheme for ApiKey {
    fn name(&self) -> &str {
        "API_KEY"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("API key")
            .with_params(vec![
                FieldSpec::required("api_key", "The API key issued by the service.").secret(),
            ])
            .with_config(vec![
                FieldSpec::optional("header_name", "The header that carries the key.")
                    .default_value("Authorization"),
                FieldSpec::optional(
                    "header_format",
                    "The header's value, with {api_key} where the key goes.",
                )
                .default_value("Bearer {api_key}"),
                FieldSpec::optional(
                    "query_param",
                    "Send the key as this query parameter instead of a header.",
                ),
            ])
            .with_catalog_table("api_key")
    }

    fn check_integration(&self, integration: &Integration) -> Result<(), SchemeError> {
        let format = integration
            .config_str("header_format")
            .unwrap_or("Bearer {api_key}");
        if integration.config_str("query_param").is_none() && !format.contains(Self::PLACEHOLDER) {
            return Err(SchemeError::invalid(
                "auth_config.header_format",
                format!("must contain {} where the key goes", Self::PLACEHOLDER),
            ));
        }
        Ok(())
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        self.check_integration(cx.integration)?;
        Ok(Initiated::Active {
            credentials: credentials_from(&cx, &["api_key"], &["api_key"])?,
        })
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        let key = secret(cx, "api_key")?;
        if let Some(param) = cx.integration.config_str("query_param") {
            request.url.query_pairs_mut().append_pair(param, key);
            return Ok(());
        }
        let name = cx
            .integration
            .config_str("header_name")
            .unwrap_or("Authorization");
        let format = cx
            .integration
            .config_str("header_format")
            .unwrap_or("Bearer {api_key}");
        request.set_secret_header(name, &fill_format(format, key))
    }
}

/// `format` with every `{api_key}` replaced by `key`. The usual formats
/// (`{api_key}`, `Bearer {api_key}`: the placeholder once, at the end) are filled
/// without a substring search, which cost about as much as the rest of `authorize`
/// (callgrind, BENCHMARKS.md).
fn fill_format(format: &str, key: &str) -> String {
    match format.strip_suffix(ApiKey::PLACEHOLDER) {
        Some(prefix) if !prefix.contains('{') => {
            let mut value = String::with_capacity(prefix.len() + key.len());
            value.push_str(prefix);
            value.push_str(key);
            value
        }
        _ => format.replace(ApiKey::PLACEHOLDER, key),
    }
}

/// `BEARER_TOKEN`: a token sent as `Authorization: Bearer <token>` (RFC 6750).
#[derive(Debug, Clone, Copy, Default)]
pub struct BearerToken;

#[async_trait]
impl AuthScheme for BearerToken {
    fn name(&self) -> &str {
        "BEARER_TOKEN"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("Bearer token").with_params(vec![
            FieldSpec::required("token", "The access token issued by the service.").secret(),
        ])
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        Ok(Initiated::Active {
            credentials: credentials_from(&cx, &["token"], &["token"])?,
        })
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        let token = secret(cx, "token")?;
        request.set_secret_header("Authorization", &format!("Bearer {token}"))
    }
}

/// `BASIC`: a username and password sent as an RFC 7617 `Authorization: Basic` header.
/// The password may be left out (services that take a key as the username).
#[derive(Debug, Clone, Copy, Default)]
pub struct Basic;

#[async_trait]
impl AuthScheme for Basic {
    fn name(&self) -> &str {
        "BASIC"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("Username and password").with_params(vec![
            FieldSpec::required("username", "The username (no ':' allowed, RFC 7617).").secret(),
            FieldSpec::optional(
                "password",
                "The password; leave out when the service takes none.",
            )
            .secret(),
        ])
    }

    async fn initiate(&self, cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        if cx
            .params
            .secret
            .get_str("username")
            .is_some_and(|u| u.contains(':'))
        {
            return Err(SchemeError::invalid(
                "connected_account_params.username",
                "contains ':', which HTTP Basic authentication cannot carry in a username (RFC 7617)",
            ));
        }
        let credentials = credentials_from(&cx, &["username", "password"], &["username"])?;
        Ok(Initiated::Active { credentials })
    }

    fn authorize(
        &self,
        cx: &AccountContext<'_>,
        request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        let user = secret(cx, "username")?;
        let password = cx.credentials.get_str("password").unwrap_or("");
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        request.set_secret_header("Authorization", &format!("Basic {encoded}"))
    }
}

/// `NO_AUTH`: the service needs no credentials; requests go out as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

#[async_trait]
impl AuthScheme for NoAuth {
    fn name(&self) -> &str {
        "NO_AUTH"
    }

    fn spec(&self) -> SchemeSpec {
        SchemeSpec::new("No authentication")
    }

    async fn initiate(&self, _cx: InitiateContext<'_>) -> Result<Initiated, SchemeError> {
        Ok(Initiated::Active {
            credentials: Credentials::without_expiry(SecretFields::new()),
        })
    }

    fn authorize(
        &self,
        _cx: &AccountContext<'_>,
        _request: &mut OutgoingRequest,
    ) -> Result<(), SchemeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_filled_as_a_replace_of_every_placeholder_would() {
        for format in [
            "{api_key}",
            "Bearer {api_key}",
            "Token token={api_key}",
            "{api_key}:{api_key}",
            "x{api_key}y",
            "{other}{api_key}",
            "{api_key",
            "",
        ] {
            assert_eq!(
                fill_format(format, "sk-1"),
                format.replace(ApiKey::PLACEHOLDER, "sk-1"),
                "{format:?}"
            );
        }
    }
}
