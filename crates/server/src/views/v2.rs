//! The v2 calls of Composio's JS SDK 0.5 (`composio-core` on npm): initiating a
//! connection and creating an integration, in its nested shapes. They map onto the
//! same library calls as v1; the integration they create is then read through v1
//! (`GET /api/v1/integrations/{id}`), as that SDK does.

use keyhaven::{ConnectionRequest, NewIntegration, SecretFields};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[allow(unused_imports)] // named by the `value_type`s of the schemas
use super::shapes::{AppSlugShape, AuthSchemeName, EntityIdShape, IntegrationIdShape, LabelShape};
use super::v1;

/// Which app or integration a v2 call is about.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AppRef {
    /// The app's slug (Composio's `uniqueKey`).
    #[serde(default)]
    #[schema(value_type = Option<AppSlugShape>)]
    pub(crate) unique_key: Option<String>,
    /// An existing integration (`int_...`), which wins over the app.
    #[serde(default)]
    #[schema(value_type = Option<IntegrationIdShape>)]
    pub(crate) integration_id: Option<String>,
}

/// How the integration is made, when the call makes one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IntegrationConfig {
    /// A name for the integration.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub(crate) name: Option<String>,
    /// Composio-managed credentials. keyhaven has no managed apps: the client comes
    /// from `integrationSecrets`, or from `KEYHAVEN_<APP>_CLIENT_ID` and
    /// `_CLIENT_SECRET`; this flag changes nothing.
    #[serde(default)]
    #[allow(dead_code)] // taken and documented, as the SDK sends it; it changes nothing
    pub(crate) use_composio_auth: Option<bool>,
    /// The scheme (`OAUTH2` when absent).
    #[serde(default)]
    #[schema(value_type = Option<AuthSchemeName>)]
    pub(crate) auth_scheme: Option<String>,
    /// The integration's settings: client id and secret, scopes, URLs ...
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) integration_secrets: Option<SecretFields>,
}

/// `POST /api/v2/connectedAccounts/initiateConnection`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InitiateConnection {
    /// The app or integration.
    pub(crate) app: AppRef,
    /// The integration to make when the app has none.
    #[serde(default)]
    pub(crate) config: IntegrationConfig,
    /// The connection.
    #[serde(default)]
    pub(crate) connection: Connection,
}

/// The connection of an initiate call.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Connection {
    /// The entity; `default` when absent.
    #[serde(default)]
    #[schema(value_type = Option<EntityIdShape>)]
    pub(crate) entity_id: Option<String>,
    /// The connection's fields: an API key, a subdomain ...
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) initiate_data: SecretFields,
    /// Where the user lands, and labels.
    #[serde(default)]
    pub(crate) extra: Extra,
}

/// The extras of a connection.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct Extra {
    /// Where the user lands after connecting.
    #[serde(default)]
    #[serde(rename = "redirectURL", alias = "redirectUrl")]
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]")]
    pub(crate) redirect_url: Option<String>,
    /// Labels to find the account by, at most 32.
    #[serde(default)]
    #[schema(value_type = Vec<LabelShape>, max_items = 32)]
    pub(crate) labels: Vec<String>,
}

impl From<InitiateConnection> for ConnectionRequest {
    fn from(b: InitiateConnection) -> Self {
        Self {
            integration_id: b.app.integration_id,
            app: b.app.unique_key,
            entity_id: b.connection.entity_id,
            labels: b.connection.extra.labels,
            redirect_url: b.connection.extra.redirect_url,
            connected_account_params: b.connection.initiate_data,
            auth_scheme: b.config.auth_scheme,
            auth_config: b.config.integration_secrets.unwrap_or_default(),
        }
    }
}

/// What initiating answers in v2.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Initiated {
    /// The new account's status, id and where to send the user.
    pub(crate) connection_response: v1::Initiated,
}

/// `POST /api/v2/integrations/create`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateIntegration {
    /// The app (`uniqueKey`).
    pub(crate) app: AppRef,
    /// The integration.
    #[serde(default)]
    pub(crate) config: IntegrationConfig,
}

impl CreateIntegration {
    /// The library's request; `None` when the body names no app.
    pub(crate) fn into_new(self) -> Option<NewIntegration> {
        Some(NewIntegration {
            app: self.app.unique_key?,
            name: self.config.name,
            // An empty scheme is no scheme: OAUTH2, as when absent.
            auth_scheme: self.config.auth_scheme.filter(|s| !s.is_empty()),
            scopes: Vec::new(),
            auth_config: self.config.integration_secrets.unwrap_or_default(),
        })
    }
}

/// What creating an integration answers in v2.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct IntegrationCreated {
    /// The new integration (read it with `GET /api/v1/integrations/{id}`).
    #[schema(value_type = IntegrationIdShape)]
    pub(crate) integration_id: String,
}

/// `POST /api/v2/actions/proxy`: a request to a connected account's API with its
/// credentials, in the shape of Composio's JS SDK 0.5 (`executeRequest`) and Python
/// client 0.6.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActionsProxy {
    /// The account whose credentials are used.
    #[schema(value_type = super::shapes::AccountId)]
    pub(crate) connected_account_id: String,
    /// A path under the account's API base URL, or a URL under it.
    #[schema(value_type = super::shapes::ProxyPath)]
    pub(crate) endpoint: String,
    /// `GET` when absent.
    #[serde(default)]
    #[schema(value_type = Option<super::shapes::HttpMethod>)]
    pub(crate) method: Option<String>,
    /// Headers and query parameters to add (`in`: `header` or `query`).
    #[serde(default)]
    pub(crate) parameters: Vec<crate::proxy::ComposioProxyParameter>,
    /// The body: a JSON value is sent as JSON, a string as it is.
    #[serde(default)]
    pub(crate) body: Option<serde_json::Value>,
}
