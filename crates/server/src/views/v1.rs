//! The v1 API's answers and requests, in the names of Composio's v1 connection API.
//!
//! Each type here is both what the server writes (or reads) and, through
//! `ToSchema`, its only description in the OpenAPI document: a field added to an
//! answer is a field of its schema. Answers never carry a secret: they are built from
//! the domain types' public parts, field by field.

use std::collections::BTreeMap;

use keyhaven::chrono::{DateTime, Utc};
use keyhaven::{
    AppEntry, AppSlug, ConnectedAccount, ConnectedAccountId, ConnectionRequestOutput,
    ConnectionStatus, EntityId, FieldSpec, Integration, IntegrationId, Keyhaven, Label,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[allow(unused_imports)] // named by the `value_type`s of the schemas
use super::shapes::{
    AccountId, AppSlugShape, AuthSchemeName, EntityIdShape, IntegrationIdShape, LabelShape, Scope,
    Status,
};

/// An error, in one shape for every API version: `{"error": {"code", "message",
/// "status"}, "message"}`. Composio's Python clients read the nested message, its
/// TypeScript SDK only the top-level one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorBody {
    /// The error itself.
    pub(crate) error: ErrorDetail,
    /// The same as `error.message`.
    pub(crate) message: String,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorDetail {
    /// A machine-readable code: `invalid_input`, `not_found`, `unauthorized`,
    /// `forbidden`, `conflict`, `rejected`, `unavailable`, `timed_out`, `internal`,
    /// `audit_unavailable`, `response_too_large`, `rate_limited`, `request_timeout`.
    pub(crate) code: String,
    /// What went wrong and what to do, for a person.
    pub(crate) message: String,
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    pub(crate) status: u16,
}

/// The auth modes Composio's client knows (`AppAuthScheme.auth_mode`).
const COMPOSIO_AUTH_MODES: [&str; 6] = [
    "OAUTH2",
    "OAUTH1",
    "API_KEY",
    "BASIC",
    "BEARER_TOKEN",
    "BASIC_WITH_JWT",
];

/// A field a scheme or an integration reads, in Composio's `AuthSchemeField` shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub(crate) struct Field {
    /// Its name.
    pub(crate) name: String,
    /// The same.
    display_name: String,
    /// The same, in camelCase.
    displayName: String,
    /// What it is, for a person.
    pub(crate) description: String,
    /// Always `string`.
    r#type: &'static str,
    /// Whether it must be given (and has no default).
    pub(crate) required: bool,
    /// Whether it is kept secret.
    pub(crate) is_secret: bool,
    /// Always true.
    expected_from_customer: bool,
    /// Its default, if it has one.
    default: Option<Value>,
}

impl Field {
    fn new(name: &str, description: &str, required: bool, secret: bool) -> Self {
        Self {
            name: name.to_owned(),
            display_name: name.to_owned(),
            displayName: name.to_owned(),
            description: description.to_owned(),
            r#type: "string",
            required,
            is_secret: secret,
            expected_from_customer: true,
            default: None,
        }
    }

    fn of_spec(f: &FieldSpec) -> Self {
        Self {
            default: f.default.clone(),
            ..Self::new(&f.name, &f.description, f.required, f.secret)
        }
    }

    /// A connection parameter of an app or integration (a subdomain, a region ...).
    fn param(name: &str, description: &str) -> Self {
        Self::new(name, description, true, false)
    }
}

/// One way to connect to an app, in Composio's `AppAuthScheme` shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthScheme {
    /// The scheme: `OAUTH2`, `API_KEY` ...
    scheme_name: String,
    /// The same.
    name: String,
    /// The same.
    mode: String,
    /// The same.
    pub(crate) auth_mode: String,
    /// Whether the user connects at the provider (a redirect), rather than by typing
    /// the fields in.
    pub(crate) interactive: bool,
    /// The fields a connection gives: the scheme's, then the app's parameters.
    pub(crate) fields: Vec<Field>,
    /// OAuth: the authorization endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization_url: Option<String>,
    /// OAuth: the token endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_url: Option<String>,
    /// OAuth: the scopes asked for by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    default_scopes: Option<Vec<String>>,
}

impl AuthScheme {
    /// The scheme `mode` of this keyhaven, with the parameters and OAuth details of
    /// an app's catalogue `entry` when given; `None` when no such scheme is
    /// registered.
    pub(crate) fn new(kh: &Keyhaven, mode: &str, entry: Option<&AppEntry>) -> Option<Self> {
        let spec = kh.schemes().get(mode).ok()?.spec();
        let mut fields: Vec<Field> = spec.params.iter().map(Field::of_spec).collect();
        if let Some(entry) = entry {
            fields.extend(
                entry
                    .params
                    .iter()
                    .map(|p| Field::param(&p.name, &p.description)),
            );
        }
        // The endpoints and scopes of the scheme's catalogue table, where it has them
        // (Composio's `AppAuthScheme` lists them for OAuth).
        let table = entry.and_then(|e| e.table(spec));
        let text = |key: &str| {
            table
                .and_then(|t| t.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Some(Self {
            scheme_name: mode.to_owned(),
            name: mode.to_owned(),
            mode: mode.to_owned(),
            auth_mode: mode.to_owned(),
            interactive: spec.interactive,
            fields,
            authorization_url: text("authorize_url"),
            token_url: text("token_url"),
            default_scopes: entry
                .filter(|e| e.table(spec).is_some())
                .map(|e| e.scopes(spec)),
        })
    }
}

/// The auth schemes this keyhaven has.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SchemePage {
    /// Each scheme with the fields a connection gives, by name.
    pub(crate) items: Vec<AuthScheme>,
}

/// A connection parameter of a catalogue entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppParam {
    /// Its name, as the `{templates}` of the app's URLs use it.
    name: String,
    /// What to type, for a person.
    description: String,
    /// An example value.
    example: Option<String>,
}

/// A catalogue entry, in Composio's `AppModel` shape with keyhaven's catalogue
/// fields.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub(crate) struct App {
    /// Its slug.
    #[schema(value_type = AppSlugShape)]
    key: String,
    /// The same, in Composio's name.
    #[schema(value_type = AppSlugShape)]
    appId: String,
    /// The same.
    #[schema(value_type = AppSlugShape)]
    slug: String,
    /// Its display name.
    name: String,
    /// The name and categories, for a person.
    description: String,
    /// Its categories.
    categories: Vec<String>,
    /// The API's auth documentation.
    docs: String,
    /// Always empty.
    meta: Map<String, Value>,
    /// Always true.
    enabled: bool,
    /// Whether it needs no credentials.
    no_auth: bool,
    /// The schemes Composio's clients know, each with the fields a connection gives.
    auth_schemes: Vec<AuthScheme>,
    /// Every scheme of the app that this keyhaven has, Composio's or not, with
    /// the fields a connection gives.
    schemeDetails: Vec<AuthScheme>,
    /// The scheme used when a connection names none.
    preferredScheme: Option<String>,
    /// Every scheme the app supports, most preferred first.
    schemes: Vec<String>,
    /// The API's base URL, perhaps with `{templates}` filled from a connection's
    /// parameters.
    apiBaseUrl: String,
    /// The parameters a connection gives.
    params: Vec<AppParam>,
    /// The schemes' per-app settings, one table each (`oauth2`: endpoints and
    /// scopes; `api_key`: how the key is sent), as the catalogue entry gives them.
    settings: BTreeMap<String, Map<String, Value>>,
}

impl App {
    /// The view of a catalogue entry.
    pub(crate) fn new(kh: &Keyhaven, entry: &AppEntry) -> Self {
        let details: Vec<AuthScheme> = entry
            .schemes
            .iter()
            .filter_map(|mode| AuthScheme::new(kh, mode, Some(entry)))
            .collect();
        Self {
            key: entry.slug.clone(),
            appId: entry.slug.clone(),
            slug: entry.slug.clone(),
            name: entry.name.clone(),
            description: format!("{} ({})", entry.name, entry.categories.join(", ")),
            categories: entry.categories.clone(),
            docs: entry.docs_url.clone(),
            meta: Map::new(),
            enabled: true,
            no_auth: entry.schemes.iter().all(|s| s == "NO_AUTH"),
            auth_schemes: details
                .iter()
                .filter(|s| COMPOSIO_AUTH_MODES.contains(&s.auth_mode.as_str()))
                .cloned()
                .collect(),
            schemeDetails: details,
            preferredScheme: entry
                .preferred_scheme(|m| kh.schemes().get(m).is_ok())
                .map(str::to_owned),
            schemes: entry.schemes.clone(),
            apiBaseUrl: entry.api_base_url.clone(),
            params: entry
                .params
                .iter()
                .map(|p| AppParam {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    example: p.example.clone(),
                })
                .collect(),
            settings: entry.settings.clone(),
        }
    }
}

/// Catalogue entries.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AppPage {
    /// The entries, best match first.
    pub(crate) items: Vec<App>,
    /// Always 1.
    pub(crate) total_pages: u32,
}

/// An integration, with Composio's names added. Never a secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Integration)]
pub(crate) struct IntegrationView {
    /// `int_...`
    #[schema(value_type = IntegrationIdShape)]
    id: IntegrationId,
    /// Its app.
    #[schema(value_type = AppSlugShape)]
    app: AppSlug,
    /// The same, in Composio's name.
    #[schema(value_type = AppSlugShape)]
    app_id: AppSlug,
    /// The same, in Composio's other name.
    #[schema(value_type = AppSlugShape)]
    app_name: AppSlug,
    /// Its name.
    name: String,
    /// Its auth scheme.
    auth_scheme: String,
    /// Whether a connection sends the user to the provider (a redirect), rather than
    /// taking the fields typed in.
    interactive: bool,
    /// Its OAuth scopes.
    scopes: Vec<String>,
    /// Its settings that are not secret.
    config: Map<String, Value>,
    /// The names of its secret settings (never their values).
    secret_fields: Vec<String>,
    /// The fields a connection gives: the scheme's, then the integration's
    /// connection parameters.
    expected_input_fields: Vec<Field>,
    /// Always true.
    enabled: bool,
    /// Always false.
    deleted: bool,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    /// Last changed.
    #[schema(value_type = String, format = DateTime)]
    updated_at: DateTime<Utc>,
}

impl IntegrationView {
    /// The view of an integration.
    pub(crate) fn new(kh: &Keyhaven, i: &Integration) -> Self {
        let spec = kh.schemes().get(&i.auth_scheme).ok().map(|s| s.spec());
        let mut fields: Vec<Field> = spec
            .map(|s| s.params.iter().map(Field::of_spec).collect())
            .unwrap_or_default();
        if let Some(template) = i
            .config
            .get(keyhaven::CONNECTION_PARAMS)
            .and_then(Value::as_object)
        {
            fields.extend(
                template
                    .iter()
                    .filter(|(name, _)| !fields.iter().any(|f| &f.name == *name))
                    .map(|(name, d)| Field::param(name, d.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>(),
            );
        }
        Self {
            id: i.id.clone(),
            app: i.app.clone(),
            app_id: i.app.clone(),
            app_name: i.app.clone(),
            name: i.name.clone(),
            auth_scheme: i.auth_scheme.clone(),
            interactive: spec.is_some_and(|s| s.interactive),
            scopes: i.scopes.clone(),
            config: i.config.clone(),
            secret_fields: i.secret_field_names(),
            expected_input_fields: fields,
            enabled: !i.disabled,
            deleted: false,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

/// The integrations.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct IntegrationPage {
    /// Oldest first.
    pub(crate) items: Vec<IntegrationView>,
    /// Always 1.
    pub(crate) total_pages: u32,
}

/// A connected account, with Composio's names added. Never a secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ConnectedAccount)]
pub(crate) struct AccountView {
    /// `ca_...`
    #[schema(value_type = AccountId)]
    id: ConnectedAccountId,
    /// Where it stands.
    #[schema(value_type = Status)]
    status: ConnectionStatus,
    /// Why it has that status, when there is a reason.
    status_reason: Option<String>,
    /// Its entity.
    #[schema(value_type = EntityIdShape)]
    entity_id: EntityId,
    /// The same, in Composio's name.
    #[schema(value_type = EntityIdShape)]
    client_unique_user_id: EntityId,
    /// Its integration.
    #[schema(value_type = IntegrationIdShape)]
    integration_id: IntegrationId,
    /// Its app.
    #[schema(value_type = AppSlugShape)]
    app: AppSlug,
    /// The same, in Composio's name.
    #[schema(value_type = AppSlugShape)]
    app_name: AppSlug,
    /// The same, in Composio's other name.
    #[schema(value_type = AppSlugShape)]
    app_unique_id: AppSlug,
    /// Its auth scheme.
    auth_scheme: String,
    /// Its labels.
    #[schema(value_type = Vec<LabelShape>)]
    labels: Vec<Label>,
    /// Its connection parameters that are not secret (a subdomain, a region ...).
    params: Map<String, Value>,
    /// The same plus the API's `base_url`, when the integration has one.
    connection_params: Map<String, Value>,
    /// Where the user is sent once connected, if the app gave a URL.
    redirect_url: Option<String>,
    /// When its credentials expire, if they do.
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<DateTime<Utc>>,
    /// Bumped on every change.
    version: u64,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    /// Last changed.
    #[schema(value_type = String, format = DateTime)]
    updated_at: DateTime<Utc>,
}

impl AccountView {
    /// The view of an account; `base_url` is its API's, templates filled.
    pub(crate) fn new(a: &ConnectedAccount, base_url: Option<String>) -> Self {
        let mut connection_params = a.params.clone();
        if let Some(b) = base_url {
            connection_params.insert("base_url".into(), Value::String(b));
        }
        Self {
            id: a.id.clone(),
            status: a.status,
            status_reason: a.status_reason.clone(),
            entity_id: a.entity_id.clone(),
            client_unique_user_id: a.entity_id.clone(),
            integration_id: a.integration_id.clone(),
            app: a.app.clone(),
            app_name: a.app.clone(),
            app_unique_id: a.app.clone(),
            auth_scheme: a.auth_scheme.clone(),
            labels: a.labels.clone(),
            params: a.params.clone(),
            connection_params,
            redirect_url: a.redirect_url.clone(),
            expires_at: a.expires_at,
            version: a.version,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A page of connected accounts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AccountPage {
    /// The accounts, oldest first.
    pub(crate) items: Vec<AccountView>,
    /// Give it as `cursor` for the next page; null on the last.
    #[schema(value_type = Option<AccountId>)]
    pub(crate) next_cursor: Option<String>,
    /// Always 1: pages are cursor-based.
    pub(crate) total_pages: u32,
}

/// What initiating a connection answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ConnectionRequestOutput)]
pub(crate) struct Initiated {
    /// `INITIATED` (the user must finish at `redirectUrl`), `ACTIVE` or `FAILED`.
    #[schema(value_type = Status)]
    connection_status: ConnectionStatus,
    /// The new account's id.
    #[schema(value_type = AccountId)]
    connected_account_id: ConnectedAccountId,
    /// Where to send the user: the provider's consent page or the connect form.
    redirect_url: Option<String>,
}

impl From<ConnectionRequestOutput> for Initiated {
    fn from(r: ConnectionRequestOutput) -> Self {
        Self {
            connection_status: r.connection_status,
            connected_account_id: r.connected_account_id,
            redirect_url: r.redirect_url,
        }
    }
}

/// What a deletion answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Deleted {
    /// `success`.
    pub(crate) status: &'static str,
    /// The id, as given.
    pub(crate) id: String,
}

impl Deleted {
    pub(crate) fn new(id: String) -> Self {
        Self {
            status: "success",
            id,
        }
    }
}

/// An account's credentials.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Credentials)]
pub(crate) struct CredentialsView<'a> {
    /// The account.
    #[schema(value_type = AccountId)]
    pub(crate) connected_account_id: &'a str,
    /// When they expire, if they do.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// The fields: `access_token`, `api_key` ... as the scheme keeps them.
    #[schema(value_type = Object)]
    pub(crate) credentials: &'a Map<String, Value>,
}

/// What `GET /api/v1/client/auth/client_info` answers: the key is good.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ClientInfo {
    /// Who the client is.
    pub(crate) client: ClientName,
    /// Which key it used.
    pub(crate) api_key: KeyName,
}

/// A client.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientName {
    /// `keyhaven`.
    pub(crate) id: &'static str,
    /// `keyhaven`.
    pub(crate) name: &'static str,
}

/// A key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyName {
    /// `admin`.
    pub(crate) name: &'static str,
}

/// What `GET /healthz` answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Health {
    /// `ok`.
    pub(crate) status: &'static str,
}

/// Whether the server can serve.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Readiness)]
pub(crate) struct Readiness {
    /// `ready` or `unavailable`.
    #[schema(pattern = "^(ready|unavailable)$")]
    pub(crate) status: &'static str,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

/// `POST /api/v1/integrations`: a new integration. Each field also has Composio's
/// spelling (`appId`/`appName`, `authScheme`, `authConfig`); give one spelling of each.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = NewIntegration)]
pub(crate) struct NewIntegrationBody {
    /// The app (also `appId`, `appName`): a catalogue slug or one of your own.
    #[serde(alias = "appName", alias = "app_name", alias = "appId")]
    #[schema(value_type = AppSlugShape)]
    pub(crate) app: String,
    /// A name; the app and scheme when absent. 1 to 200 characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// `OAUTH2` when absent (also `authScheme`).
    #[serde(default, alias = "authScheme")]
    #[schema(value_type = Option<AuthSchemeName>)]
    pub(crate) auth_scheme: Option<String>,
    /// OAuth scopes, each without spaces.
    #[serde(default)]
    #[schema(value_type = Vec<Scope>)]
    pub(crate) scopes: Vec<String>,
    /// The scheme's settings (client id and secret, URLs ...) and the common ones
    /// (`base_url`, `redirect_allowlist`, `request_headers`, `connection_params`).
    /// Which fields a scheme needs depends on the scheme and the app's catalogue
    /// entry: an incomplete or incoherent set is refused with 400, naming the field.
    #[serde(default, alias = "authConfig")]
    #[schema(value_type = Option<Object>)]
    pub(crate) auth_config: keyhaven::SecretFields,
}

impl From<NewIntegrationBody> for keyhaven::NewIntegration {
    fn from(b: NewIntegrationBody) -> Self {
        Self {
            app: b.app,
            name: b.name,
            auth_scheme: b.auth_scheme,
            scopes: b.scopes,
            auth_config: b.auth_config,
        }
    }
}

/// `POST /api/v1/connectedAccounts`: initiate a connection. Give `integrationId`, or
/// `appName` (its integration is used, or created from the catalogue). Each field also
/// has its other spellings (`integration_id`, `app`, `entity_id`, `userUuid`,
/// `redirectUri`, `data` ...); give one spelling of each.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
#[schema(as = ConnectionRequest)]
pub(crate) struct InitiateBody {
    /// The integration to connect with.
    #[serde(alias = "integration_id")]
    #[schema(value_type = Option<IntegrationIdShape>)]
    pub(crate) integration_id: Option<String>,
    /// Or the app (also `app`).
    #[serde(alias = "app", alias = "app_name")]
    #[schema(value_type = Option<AppSlugShape>)]
    pub(crate) app_name: Option<String>,
    /// The entity (also `userUuid`, `entity_id`); `default` when absent.
    #[serde(alias = "entity_id", alias = "userUuid", alias = "user_uuid")]
    #[schema(value_type = Option<EntityIdShape>)]
    pub(crate) entity_id: Option<String>,
    /// Labels to find the account by later, at most 32.
    #[schema(value_type = Vec<LabelShape>, max_items = 32)]
    pub(crate) labels: Vec<String>,
    /// Where the user lands after connecting (also `redirectUri`, `redirect_url`); an
    /// http(s) URL under the redirect allowlist (the server's or the integration's).
    #[serde(alias = "redirect_url", alias = "redirectUri", alias = "redirect_uri")]
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]")]
    pub(crate) redirect_url: Option<String>,
    /// The connection's fields: an API key, a subdomain ... (also `data`). Leave the
    /// secret ones out to let the user type them in the hosted connect form.
    #[serde(alias = "connected_account_params", alias = "data")]
    #[schema(value_type = Option<Object>)]
    pub(crate) connected_account_params: keyhaven::SecretFields,
    /// `OAUTH2` by default (also `authMode`).
    #[serde(alias = "auth_scheme", alias = "authMode", alias = "auth_mode")]
    #[schema(value_type = Option<AuthSchemeName>)]
    pub(crate) auth_scheme: Option<String>,
    /// Client id and secret ... when the app's integration is created now.
    #[serde(alias = "auth_config")]
    #[schema(value_type = Option<Object>)]
    pub(crate) auth_config: keyhaven::SecretFields,
}

impl From<InitiateBody> for keyhaven::ConnectionRequest {
    fn from(b: InitiateBody) -> Self {
        Self {
            integration_id: b.integration_id,
            app: b.app_name,
            entity_id: b.entity_id,
            labels: b.labels,
            redirect_url: b.redirect_url,
            connected_account_params: b.connected_account_params,
            auth_scheme: b.auth_scheme,
            auth_config: b.auth_config,
        }
    }
}

/// One use of an account's credentials, as the audit log keeps it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = AuditEntry)]
pub(crate) struct AuditEntryView {
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub(crate) at: DateTime<Utc>,
    /// `credentials.read`, `token.printed` or `request`.
    #[schema(pattern = "^(credentials\\.read|token\\.printed|request)$")]
    pub(crate) action: String,
    /// The account.
    pub(crate) connected_account_id: String,
    /// Its entity, when it was found.
    pub(crate) entity_id: Option<String>,
    /// Its app, when it was found.
    pub(crate) app_name: Option<String>,
    /// `granted`, `sent`, `refused` (a 401 answered by a refresh and a retry),
    /// `unreachable`, or why a read was refused (`not_found`, `unauthorized` ...).
    pub(crate) outcome: String,
    /// Which key the caller gave: `admin`, `credentials`, `library`, `cli`.
    pub(crate) key: Option<String>,
    /// The caller's address.
    pub(crate) remote: Option<String>,
    /// The caller's user agent.
    pub(crate) user_agent: Option<String>,
    /// A request's method.
    pub(crate) method: Option<String>,
    /// A request's host.
    pub(crate) host: Option<String>,
    /// A request's path, without its query.
    pub(crate) path: Option<String>,
    /// What the API answered a request with.
    pub(crate) status: Option<u16>,
}

impl From<keyhaven::AuditEntry> for AuditEntryView {
    fn from(e: keyhaven::AuditEntry) -> Self {
        let action = serde_json::to_value(e.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Self {
            at: e.at,
            action,
            connected_account_id: e.connected_account_id,
            entity_id: e.entity_id,
            app_name: e.app_name,
            outcome: e.outcome,
            key: e.caller.key,
            remote: e.caller.remote,
            user_agent: e.caller.user_agent,
            method: e.method,
            host: e.host,
            path: e.path,
            status: e.status,
        }
    }
}

/// What `GET /api/v1/connectedAccounts/{id}/audit` answers: the uses, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AuditList)]
pub(crate) struct AuditList {
    /// The uses selected, oldest first (the newest `limit` of them).
    pub(crate) items: Vec<AuditEntryView>,
}

/// A webhook this server posts events to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Webhook)]
pub(crate) struct WebhookView {
    /// Its key in the outbox (`wh_` and 16 hex digits of its URL's hash).
    pub(crate) key: String,
    /// Its URL, without query or user name.
    pub(crate) url: String,
    /// The event types it gets; empty: all.
    pub(crate) events: Vec<String>,
}

/// The configured webhooks.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookList)]
pub(crate) struct WebhookList {
    /// Every one.
    pub(crate) items: Vec<WebhookView>,
}

/// One event for one webhook, with its tries and outcome.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = WebhookDelivery)]
pub(crate) struct DeliveryView {
    /// The delivery's id (for redelivery).
    pub(crate) id: i64,
    /// The webhook's key.
    pub(crate) webhook: String,
    /// The webhook's URL without query, when this server has that webhook configured.
    pub(crate) url: Option<String>,
    /// The event's id, as the `keyhaven-event-id` header sends it.
    pub(crate) event_id: String,
    /// The event posted: {id, type, connectedAccountId, entityId, appName, integrationId, status, reason, at, origin}.
    #[schema(value_type = Object)]
    pub(crate) event: keyhaven::AccountEvent,
    /// `pending`, `delivered` or `failed`.
    #[schema(pattern = "^(pending|delivered|failed)$")]
    pub(crate) state: String,
    /// Tries made.
    pub(crate) attempts: u32,
    /// When a pending delivery is tried next.
    #[schema(value_type = String, format = DateTime)]
    pub(crate) next_attempt_at: DateTime<Utc>,
    /// The receiver's last HTTP status, when it answered.
    pub(crate) last_status: Option<u16>,
    /// Why the last try failed.
    pub(crate) last_error: Option<String>,
    /// When it was made.
    #[schema(value_type = String, format = DateTime)]
    pub(crate) created_at: DateTime<Utc>,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub(crate) updated_at: DateTime<Utc>,
}

/// One page of deliveries, the newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = WebhookDeliveryList)]
pub(crate) struct DeliveryList {
    /// The deliveries.
    pub(crate) items: Vec<DeliveryView>,
    /// Give it as `cursor` for the next page; absent on the last.
    pub(crate) next_cursor: Option<String>,
}

/// A delivery's state, as the deliveries listing filters by it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = DeliveryState)]
#[expect(
    dead_code,
    reason = "describes the query parameter; `DeliveryState::parse` reads it"
)]
pub(crate) enum DeliveryStateName {
    /// Not delivered yet.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Refused, or given up.
    Failed,
}
