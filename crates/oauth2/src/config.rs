//! The integration's OAuth settings: the fields each scheme declares and their typed form.

use std::borrow::Cow;

use keyhaven_core::{FieldKind, FieldSpec, Integration, SchemeError};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    StandardRevocableToken, TokenUrl,
};
use serde_json::Value;
use url::Url;

use crate::token::ProviderTokenResponse;

/// An `oauth2` client with a token endpoint and maybe a revocation endpoint.
pub(crate) type TokenClient = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointSet,
>;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenAuth {
    /// HTTP Basic with the client id and secret (RFC 6749 2.3.1).
    Basic,
    /// The client id and secret in the form body.
    Post,
    /// A public client: the client id in the body, no secret (PKCE protects the code).
    None,
}

/// The fields shared by both OAuth schemes.
pub(crate) fn token_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("client_id", "The OAuth client id issued by the provider.").per_deployment(),
        FieldSpec::optional("client_secret", "The OAuth client secret; leave out for a public client.")
            .secret()
            .per_deployment(),
        FieldSpec::required("token_url", "The token endpoint.").kind(FieldKind::Url),
        FieldSpec::optional("revocation_url", "The RFC 7009 revocation endpoint, if the provider has one.")
            .kind(FieldKind::Url),
        FieldSpec::optional(
            "token_auth_method",
            "client_secret_basic, client_secret_post or none; client_secret_basic when a secret is given, else none.",
        )
        .kind(FieldKind::OneOf(vec![
            "client_secret_basic".into(),
            "client_secret_post".into(),
            "none".into(),
        ])),
        FieldSpec::optional("scope_separator", "What joins scopes in requests: a space (the standard), or a comma or + where the provider documents one.")
            .kind(FieldKind::OneOf(vec![" ".into(), ",".into(), "+".into()]))
            .default_value(" "),
        FieldSpec::optional("token_params", "Extra form parameters for every token request (a JSON object of strings).")
            .kind(FieldKind::Object),
        FieldSpec::optional(
            "default_expires_in",
            "Seconds an access token lives when the provider's answer omits expires_in.",
        )
        .kind(FieldKind::Integer),
    ]
}

/// The extra fields of the authorization-code scheme.
pub(crate) fn code_fields() -> Vec<FieldSpec> {
    let mut fields = token_fields();
    fields.extend([
        FieldSpec::required("authorize_url", "The authorization endpoint the user is sent to.")
            .kind(FieldKind::Url),
        FieldSpec::optional("pkce", "Send a PKCE S256 challenge; turn off only for providers that reject it.")
            .kind(FieldKind::Bool)
            .default_value(true),
        FieldSpec::optional(
            "authorize_params",
            "Extra authorization parameters, such as {\"access_type\": \"offline\", \"prompt\": \"consent\"}.",
        )
        .kind(FieldKind::Object),
        FieldSpec::optional("issuer", "The authorization server's issuer; the callback's iss must equal it (RFC 9207)."),
        FieldSpec::optional("require_iss", "Refuse callbacks without iss (set when the provider always sends it).")
            .kind(FieldKind::Bool)
            .default_value(false),
    ]);
    fields
}

/// The integration's settings, typed.
#[derive(Debug)]
pub(crate) struct ProviderConfig<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) client_secret: Option<&'a str>,
    pub(crate) token_url: Url,
    pub(crate) revocation_url: Option<Url>,
    pub(crate) authorize_url: Option<Url>,
    pub(crate) auth: TokenAuth,
    pub(crate) scope_separator: &'a str,
    pub(crate) token_params: Vec<(String, String)>,
    pub(crate) authorize_params: Vec<(String, String)>,
    pub(crate) default_expires_in: Option<u64>,
    pub(crate) pkce: bool,
    pub(crate) issuer: Option<&'a str>,
    pub(crate) require_iss: bool,
}

fn url(integration: &Integration, key: &str) -> Result<Option<Url>, SchemeError> {
    integration
        .config_str(key)
        .map(|raw| {
            Url::parse(raw).map_err(|_| {
                SchemeError::invalid(
                    format!("auth_config.{key}"),
                    "is not a valid URL; fix the integration",
                )
            })
        })
        .transpose()
}

/// Parameters the `oauth2` crate sets itself, which extra parameters may not repeat.
const RESERVED: [&str; 11] = [
    "response_type",
    "client_id",
    "client_secret",
    "state",
    "redirect_uri",
    "scope",
    "code_challenge",
    "code_challenge_method",
    "grant_type",
    "code",
    "code_verifier",
];

fn string_pairs(
    integration: &Integration,
    key: &str,
) -> Result<Vec<(String, String)>, SchemeError> {
    let Some(value) = integration.config.get(key) else {
        return Ok(vec![]);
    };
    let Value::Object(map) = value else {
        return Err(SchemeError::invalid(
            format!("auth_config.{key}"),
            "must be a JSON object",
        ));
    };
    if let Some(k) = map
        .keys()
        .find(|k| RESERVED.contains(&k.as_str()) || k.as_str() == "refresh_token")
    {
        return Err(SchemeError::invalid(
            format!("auth_config.{key}.{k}"),
            "is set by keyhaven itself and cannot be overridden",
        ));
    }
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
            _ => Err(SchemeError::invalid(
                format!("auth_config.{key}.{k}"),
                "must be a string, number or boolean",
            )),
        })
        .collect()
}

impl<'a> ProviderConfig<'a> {
    /// Reads the settings of `integration`.
    pub(crate) fn read(integration: &'a Integration) -> Result<Self, SchemeError> {
        let client_id = integration.config_str("client_id").ok_or_else(|| {
            SchemeError::invalid(
                "auth_config.client_id",
                "is required: the OAuth client id issued by the provider",
            )
        })?;
        let token_url = url(integration, "token_url")?.ok_or_else(|| {
            SchemeError::invalid(
                "auth_config.token_url",
                "is required: the provider's token endpoint",
            )
        })?;
        let client_secret = integration.secrets.get_str("client_secret");
        let auth = match integration.config_str("token_auth_method") {
            Some("client_secret_basic") => TokenAuth::Basic,
            Some("client_secret_post") => TokenAuth::Post,
            Some("none") => TokenAuth::None,
            Some(other) => {
                return Err(SchemeError::invalid(
                    "auth_config.token_auth_method",
                    format!("{other:?} is not client_secret_basic, client_secret_post or none"),
                ));
            }
            None if client_secret.is_some() => TokenAuth::Basic,
            None => TokenAuth::None,
        };
        if auth != TokenAuth::None && client_secret.is_none() {
            return Err(SchemeError::invalid(
                "auth_config.client_secret",
                "is required with token_auth_method client_secret_basic or client_secret_post",
            ));
        }
        let flag = |key: &str, default: bool| {
            integration
                .config
                .get(key)
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        Ok(Self {
            client_id,
            client_secret,
            token_url,
            revocation_url: url(integration, "revocation_url")?,
            authorize_url: url(integration, "authorize_url")?,
            auth,
            scope_separator: integration.config_str("scope_separator").unwrap_or(" "),
            token_params: string_pairs(integration, "token_params")?,
            authorize_params: string_pairs(integration, "authorize_params")?,
            default_expires_in: integration
                .config
                .get("default_expires_in")
                .and_then(Value::as_u64),
            pkce: flag("pkce", true),
            issuer: integration.config_str("issuer"),
            require_iss: flag("require_iss", false),
        })
    }

    /// The scopes of the integration joined as the provider wants them, if any.
    pub(crate) fn joined_scopes(&self, integration: &Integration) -> Option<String> {
        (!integration.scopes.is_empty()).then(|| integration.scopes.join(self.scope_separator))
    }

    /// An `oauth2` client for the token (and revocation) endpoints.
    pub(crate) fn token_client(&self) -> TokenClient {
        let client = oauth2::Client::new(ClientId::new(self.client_id.to_owned()))
            .set_token_uri(TokenUrl::from_url(self.token_url.clone()))
            .set_revocation_url_option(
                self.revocation_url
                    .clone()
                    .map(oauth2::RevocationUrl::from_url),
            )
            .set_auth_type(match self.auth {
                TokenAuth::Basic => AuthType::BasicAuth,
                TokenAuth::Post | TokenAuth::None => AuthType::RequestBody,
            });
        match (self.auth, self.client_secret) {
            (TokenAuth::Basic | TokenAuth::Post, Some(secret)) => {
                client.set_client_secret(ClientSecret::new(secret.to_owned()))
            }
            _ => client,
        }
    }

    /// The extra token parameters, as `oauth2` takes them.
    pub(crate) fn token_params(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        self.token_params
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
    }
}
