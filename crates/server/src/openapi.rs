//! The parts of the OpenAPI document that no route gives: its title, the API key
//! security schemes, and the shapes shared by many routes.

use serde::Serialize;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{OpenApi as _, ToSchema};

/// An error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorDetail {
    /// A machine-readable code: `invalid_input`, `not_found`, `unauthorized`,
    /// `forbidden`, `conflict`, `rejected`, `unavailable`, `timed_out`, `internal`.
    code: String,
    /// What went wrong and what to do, for a person.
    message: String,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "keyhaven",
        description = "A connection broker: connect your users' accounts on other services and keep their credentials fresh. The connection routes speak Composio's v1 API.",
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "apps", description = "The app catalogue"),
        (name = "integrations", description = "An app's configuration for one service"),
        (name = "connectedAccounts", description = "One entity linked to one integration"),
        (name = "credentials", description = "Reading credentials: the credentials key only, every read audited"),
        (name = "events", description = "Status changes as server-sent events"),
        (name = "pages", description = "What end users see: the OAuth callback and the connect form"),
        (name = "server", description = "The server itself"),
    )
)]
struct Base;

/// The whole document: the frame, the routes' parts, the two API keys as security
/// schemes.
pub(crate) fn document(parts: impl IntoIterator<Item = OpenApi>) -> OpenApi {
    let mut doc = Base::openapi();
    for part in parts {
        doc.merge(part);
    }
    secure(&mut doc);
    doc
}

/// Adds the two API keys as security schemes.
fn secure(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "The admin key, shown once when the server first started",
        ))),
    );
    components.add_security_scheme(
        "credentials_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "The credentials key: reads credentials, nothing else",
        ))),
    );
}

/// `POST /api/v1/connectedAccounts`: initiate a connection. Give `integrationId`, or
/// `appName` (its integration is used, or created from the catalogue).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ConnectionRequestBody {
    /// The integration to connect with.
    integration_id: Option<String>,
    /// Or the app (also `app`).
    app_name: Option<String>,
    /// The entity (also `userUuid`, `entity_id`); `default` when absent.
    entity_id: Option<String>,
    /// Labels to find the account by later.
    labels: Option<Vec<String>>,
    /// Where the user lands after connecting (also `redirectUri`, `redirect_url`);
    /// must be on the redirect allowlist.
    redirect_url: Option<String>,
    /// The connection's fields: an API key, a subdomain ... (also `data`). Leave the
    /// secret ones out to let the user type them in the hosted connect form.
    connected_account_params: Option<serde_json::Map<String, serde_json::Value>>,
    /// `OAUTH2` by default; `API_KEY`, `BEARER_TOKEN`, `BASIC`, `BASIC_WITH_JWT` ...
    auth_scheme: Option<String>,
    /// Client id and secret ... when the app's integration is created now.
    auth_config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What initiating a connection answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ConnectionRequestOutputBody {
    /// `INITIATED` (the user must finish at `redirectUrl`), `ACTIVE` or `FAILED`.
    connection_status: String,
    /// The new account's id.
    connected_account_id: String,
    /// Where to send the user: the provider's consent page or the connect form.
    redirect_url: Option<String>,
}

/// A connected account. Never a secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ConnectedAccountBody {
    /// `ca_...`
    id: String,
    /// `INITIATED`, `ACTIVE`, `FAILED`, `EXPIRED` or `INACTIVE`.
    status: String,
    /// Why it has that status, when there is a reason.
    status_reason: Option<String>,
    /// Its entity.
    entity_id: String,
    /// The same, in Composio's name.
    client_unique_user_id: String,
    /// Its integration.
    integration_id: String,
    /// Its app.
    app_name: String,
    /// The same, in Composio's name.
    app_unique_id: String,
    /// Its auth scheme.
    auth_scheme: String,
    /// Its labels.
    labels: Vec<String>,
    /// Its non-secret fields and the API's `base_url`.
    connection_params: serde_json::Map<String, serde_json::Value>,
    /// When its credentials expire, if they do.
    expires_at: Option<String>,
    /// Created, RFC 3339.
    created_at: String,
    /// Last changed, RFC 3339.
    updated_at: String,
}

/// A page of connected accounts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct AccountPage {
    /// The accounts, oldest first.
    items: Vec<ConnectedAccountBody>,
    /// Give it as `cursor` for the next page; absent on the last.
    next_cursor: Option<String>,
    /// Always 1: pages are cursor-based.
    total_pages: u32,
}

/// An account's credentials.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct CredentialsBody {
    /// The account.
    connected_account_id: String,
    /// When they expire, if they do.
    expires_at: Option<String>,
    /// The fields: `access_token`, `api_key` ... as the scheme keeps them.
    credentials: serde_json::Map<String, serde_json::Value>,
}
