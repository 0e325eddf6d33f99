//! The v3.1 API's answers and requests, in the shapes of Composio's current SDKs
//! (`composio` on PyPI, `@composio/core` on npm): toolkits (the catalogue), auth
//! configs (integrations), connected accounts and connection links.
//!
//! What those SDKs need of an answer is written down in docs/composio-compat.md:
//! the TypeScript SDK checks answers and warns when an optional string is `null`
//! rather than absent, so optional fields here are skipped when empty; a connected
//! account's `state.val` follows the rules of its scheme there (an ACTIVE OAuth
//! account has an `access_token`: a mask, never the token). No answer carries a
//! secret: `state.val`, `data` and `params` hold the account's public parameters,
//! `credentials` an auth config's public settings.

use keyhaven::chrono::{DateTime, Utc};
use keyhaven::{
    AppEntry, ConnectedAccount, ConnectedAccountId, ConnectionStatus, FieldSpec, Integration,
    IntegrationId, Keyhaven, SecretFields,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[allow(unused_imports)] // named by the `value_type`s of the schemas
use super::shapes::{AccountId, AppSlugShape, EntityIdShape, IntegrationIdShape, LabelShape};

/// What stands in `state.val` for a secret a scheme's state must show (an OAuth
/// access token, a password): never the secret, nor a part of it.
pub(crate) const MASK: &str = "********";

/// The auth schemes Composio's v3 models name (`auth_config.auth_scheme`); a
/// scheme of keyhaven's outside them is left out of the fields that take only these.
const V3_SCHEMES: [&str; 14] = [
    "OAUTH2",
    "OAUTH1",
    "API_KEY",
    "BASIC",
    "BILLCOM_AUTH",
    "BEARER_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT",
    "NO_AUTH",
    "BASIC_WITH_JWT",
    "CALCOM_AUTH",
    "SERVICE_ACCOUNT",
    "SAML",
    "DCR_OAUTH",
    "S2S_OAUTH2",
];

/// `scheme` when Composio's v3 models know it.
fn v3_scheme(scheme: &str) -> Option<String> {
    V3_SCHEMES.contains(&scheme).then(|| scheme.to_owned())
}

/// A connected account's status in v3: keyhaven's five, and Composio's
/// `INITIALIZING` and `REVOKED`, which filters may name (keyhaven's accounts never
/// have them: an account is `INITIATED` from its first moment, and a deleted one is
/// gone).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
#[schema(as = V3Status)]
#[allow(dead_code)]
pub(crate) enum V3Status {
    Initializing,
    Initiated,
    Active,
    Failed,
    Expired,
    Inactive,
    Revoked,
}

// ---------------------------------------------------------------------------------
// Pages

/// One page of a v3 listing, one type per item type (each is a named schema).
macro_rules! page {
    ($name:ident, $schema:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Serialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        #[schema(as = $schema)]
        pub(crate) struct $name {
            /// The items.
            pub(crate) items: Vec<$item>,
            /// Pass as `cursor` for the next page; absent on the last one.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub(crate) next_cursor: Option<String>,
            /// The pages of this size the whole listing makes.
            pub(crate) total_pages: u64,
            /// Always 1: pages follow each other by cursor.
            pub(crate) current_page: u32,
            /// The items of the whole listing.
            pub(crate) total_items: u64,
        }

        impl $name {
            /// A page of `items`, followed by `next_cursor` if there is more; a
            /// listing whose total is not `items` says it with [`Self::of_total`].
            pub(crate) fn new(items: Vec<$item>, next_cursor: Option<String>) -> Self {
                Self {
                    total_pages: if next_cursor.is_some() { 2 } else { 1 },
                    current_page: 1,
                    total_items: u64::try_from(items.len()).unwrap_or(u64::MAX),
                    items,
                    next_cursor,
                }
            }

            /// The same page, of a listing of `total` items in pages of `size`.
            pub(crate) fn of_total(mut self, total: u64, size: usize) -> Self {
                let size = u64::try_from(size.max(1)).unwrap_or(u64::MAX);
                self.total_items = total;
                self.total_pages = total.div_ceil(size).max(1);
                self
            }
        }
    };
}

page!(
    ToolkitPage,
    V3ToolkitPage,
    Toolkit,
    "Toolkits: catalogue entries."
);
page!(
    AuthConfigPage,
    V3AuthConfigPage,
    AuthConfig,
    "Auth configs, newest first."
);
page!(
    AccountPage,
    V3AccountPage,
    Account,
    "Connected accounts, newest first unless asked otherwise."
);

/// What the calls that change something answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = V3Success)]
pub(crate) struct Success {
    /// Always true (a failure is an error).
    pub(crate) success: bool,
    /// What was done.
    pub(crate) message: String,
}

impl Success {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            success: true,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Toolkits

/// A category of a toolkit.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Category {
    /// Its slug (the list calls it `id`, the detail `slug`).
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// The same, in the detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    slug: Option<String>,
    /// Its name.
    name: String,
}

/// A category's slug: its words, lowercase, joined by `-`.
pub(crate) fn category_slug(name: &str) -> String {
    name.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// A toolkit's description.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolkitMeta {
    /// Its categories.
    categories: Vec<Category>,
    /// The name and categories, for a person.
    description: String,
    /// Always empty: the catalogue has no logos.
    logo: String,
    /// Always 0: keyhaven holds connections, not tools.
    tools_count: u32,
    /// Always 0.
    triggers_count: u32,
    /// The catalogue's version.
    version: &'static str,
    /// The API's authentication documentation.
    #[serde(skip_serializing_if = "Option::is_none")]
    app_url: Option<String>,
    /// Detail only: always empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    available_versions: Option<Vec<String>>,
}

impl ToolkitMeta {
    fn new(entry: &AppEntry, detail: bool) -> Self {
        Self {
            categories: entry
                .categories
                .iter()
                .map(|c| Category {
                    id: (!detail).then(|| category_slug(c)),
                    slug: detail.then(|| category_slug(c)),
                    name: c.clone(),
                })
                .collect(),
            description: format!("{} ({})", entry.name, entry.categories.join(", ")),
            logo: String::new(),
            tools_count: 0,
            triggers_count: 0,
            version: "keyhaven",
            app_url: (!entry.docs_url.is_empty()).then(|| entry.docs_url.clone()),
            available_versions: detail.then(Vec::new),
        }
    }
}

/// Composio's old ids of a toolkit.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub(crate) struct ToolkitDeprecated {
    /// The slug.
    toolkitId: String,
    /// Detail only: always empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    rawProxyInfoByAuthSchemes: Option<Vec<Value>>,
}

/// A catalogue entry as a toolkit, in the list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Toolkit {
    /// Its slug.
    #[schema(value_type = AppSlugShape)]
    slug: String,
    /// Its display name.
    name: String,
    /// Always `native`.
    r#type: &'static str,
    /// Always false.
    is_local_toolkit: bool,
    /// Its old ids.
    deprecated: ToolkitDeprecated,
    /// Its description.
    meta: ToolkitMeta,
    /// The schemes it supports that this keyhaven has.
    auth_schemes: Vec<String>,
    /// Always empty: keyhaven manages no OAuth apps.
    composio_managed_auth_schemes: Vec<String>,
    /// Whether it needs no credentials.
    no_auth: bool,
}

impl Toolkit {
    pub(crate) fn new(kh: &Keyhaven, entry: &AppEntry) -> Self {
        Self {
            slug: entry.slug.clone(),
            name: entry.name.clone(),
            r#type: "native",
            is_local_toolkit: false,
            deprecated: ToolkitDeprecated {
                toolkitId: entry.slug.clone(),
                rawProxyInfoByAuthSchemes: None,
            },
            meta: ToolkitMeta::new(entry, false),
            auth_schemes: registered_schemes(kh, entry),
            composio_managed_auth_schemes: Vec::new(),
            no_auth: entry.schemes.iter().all(|s| s == "NO_AUTH"),
        }
    }
}

fn registered_schemes(kh: &Keyhaven, entry: &AppEntry) -> Vec<String> {
    entry
        .schemes
        .iter()
        .filter(|s| kh.schemes().get(s).is_ok())
        .cloned()
        .collect()
}

/// A field an auth config or a connection gives.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
#[schema(as = V3Field)]
pub(crate) struct Field {
    /// Its name.
    name: String,
    /// The same.
    displayName: String,
    /// Always `string`.
    r#type: &'static str,
    /// What it is, for a person.
    description: String,
    /// Whether it must be given.
    required: bool,
    /// Whether it is kept secret.
    is_secret: bool,
    /// Always true.
    user_visible: bool,
    /// Its default, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    default: Option<String>,
}

impl Field {
    fn new(name: &str, description: &str, required: bool, secret: bool) -> Self {
        Self {
            name: name.to_owned(),
            displayName: name.to_owned(),
            r#type: "string",
            description: description.to_owned(),
            required,
            is_secret: secret,
            user_visible: true,
            default: None,
        }
    }

    fn of_spec(f: &FieldSpec, required: bool) -> Self {
        Self {
            default: f.default.as_ref().map(|d| match d {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            ..Self::new(&f.name, &f.description, required, f.secret)
        }
    }
}

/// Required and optional fields.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldGroup {
    /// Must be given.
    required: Vec<Field>,
    /// May be given.
    optional: Vec<Field>,
}

impl FieldGroup {
    fn push(&mut self, field: Field) {
        if field.required {
            self.required.push(field);
        } else {
            self.optional.push(field);
        }
    }
}

/// The fields of one scheme of a toolkit.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemeFields {
    /// What creating an auth config takes (`credentials`).
    auth_config_creation: FieldGroup,
    /// What initiating a connection takes (`state.val`).
    connected_account_initiation: FieldGroup,
}

/// Where proxied requests go.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyInfo {
    /// The API's base URL (perhaps with `{templates}` a connection's parameters fill).
    base_url: String,
}

/// One scheme of a toolkit, with its fields, from keyhaven's scheme specs.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthConfigDetail {
    /// The scheme: `OAUTH2`, `API_KEY` ...
    mode: String,
    /// The same, for a person.
    name: String,
    /// Always empty: the scopes are fields of the auth config.
    required_scopes: Vec<String>,
    /// The fields.
    fields: SchemeFields,
    /// Where proxied requests go, when the catalogue knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<ProxyInfo>,
}

impl AuthConfigDetail {
    fn new(kh: &Keyhaven, entry: &AppEntry, mode: &str) -> Option<Self> {
        let spec = kh.schemes().get(mode).ok()?.spec();
        let given = entry.auth_config(spec);
        let mut creation = FieldGroup::default();
        for f in &spec.config {
            // What the catalogue gives need not be given again; an OAuth client
            // (per deployment) must be, as keyhaven manages none.
            let known = given.expose().contains_key(&f.name) && !f.per_deployment;
            creation.push(Field::of_spec(f, f.required && !known));
        }
        let scopes = entry.scopes(spec);
        if !scopes.is_empty() && spec.config_field("scopes").is_none() {
            let mut field = Field::new(
                "scopes",
                "The scopes to ask for: a list, or one string separated by commas",
                false,
                false,
            );
            field.default = Some(scopes.join(","));
            creation.push(field);
        }
        let mut initiation = FieldGroup::default();
        for f in &spec.params {
            initiation.push(Field::of_spec(f, f.required));
        }
        for p in &entry.params {
            initiation.push(Field::new(&p.name, &p.description, true, false));
        }
        Some(Self {
            mode: mode.to_owned(),
            name: mode.to_owned(),
            required_scopes: Vec::new(),
            fields: SchemeFields {
                auth_config_creation: creation,
                connected_account_initiation: initiation,
            },
            proxy: (!entry.api_base_url.is_empty()).then(|| ProxyInfo {
                base_url: entry.api_base_url.clone(),
            }),
        })
    }
}

/// A catalogue entry as a toolkit, in detail.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolkitDetail {
    /// Its slug.
    #[schema(value_type = AppSlugShape)]
    slug: String,
    /// Its display name.
    name: String,
    /// Always `native`.
    r#type: &'static str,
    /// Always true.
    enabled: bool,
    /// Always false.
    is_local_toolkit: bool,
    /// Always empty: keyhaven manages no OAuth apps.
    composio_managed_auth: Vec<Value>,
    /// Always empty.
    composio_managed_auth_schemes: Vec<String>,
    /// Its old ids.
    deprecated: ToolkitDeprecated,
    /// Its description.
    meta: ToolkitMeta,
    /// Each scheme it supports that this keyhaven has, with its fields, the
    /// preferred one first.
    auth_config_details: Vec<AuthConfigDetail>,
    /// The API's base URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    base_url: Option<String>,
}

impl ToolkitDetail {
    pub(crate) fn new(kh: &Keyhaven, entry: &AppEntry) -> Self {
        Self {
            slug: entry.slug.clone(),
            name: entry.name.clone(),
            r#type: "native",
            enabled: true,
            is_local_toolkit: false,
            composio_managed_auth: Vec::new(),
            composio_managed_auth_schemes: Vec::new(),
            deprecated: ToolkitDeprecated {
                toolkitId: entry.slug.clone(),
                rawProxyInfoByAuthSchemes: Some(Vec::new()),
            },
            meta: ToolkitMeta::new(entry, true),
            auth_config_details: entry
                .schemes
                .iter()
                .filter_map(|mode| AuthConfigDetail::new(kh, entry, mode))
                .collect(),
            base_url: (!entry.api_base_url.is_empty()).then(|| entry.api_base_url.clone()),
        }
    }
}

/// A toolkit for an app outside the catalogue that has integrations (auth configs made
/// with their own settings): its schemes are theirs, its API the first base URL one
/// of them gives. Composio's TypeScript SDK reads the toolkit before it authorizes.
pub(crate) fn custom_entry(slug: &str, integrations: &[Integration]) -> AppEntry {
    let mut schemes: Vec<String> = Vec::new();
    for i in integrations {
        if !schemes.contains(&i.auth_scheme) {
            schemes.push(i.auth_scheme.clone());
        }
    }
    AppEntry {
        slug: slug.to_owned(),
        name: slug.to_owned(),
        categories: Vec::new(),
        docs_url: String::new(),
        schemes,
        api_base_url: integrations
            .iter()
            .find_map(|i| i.config_str("base_url"))
            .unwrap_or_default()
            .to_owned(),
        params: Vec::new(),
        request_headers: std::collections::BTreeMap::new(),
        settings: std::collections::BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------
// Auth configs

/// The toolkit an auth config or account is for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolkitRef {
    /// Its slug.
    #[schema(value_type = AppSlugShape)]
    slug: String,
    /// Auth configs only: always empty (the catalogue has no logos).
    #[serde(skip_serializing_if = "Option::is_none")]
    logo: Option<String>,
}

/// Which tools an auth config serves: keyhaven holds connections, not tools.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolAccess {
    /// Always empty.
    tools_available_for_execution: Vec<String>,
    /// Always empty.
    tools_for_connected_account_creation: Vec<String>,
}

/// An integration as an auth config. Never a secret: `credentials` holds the public
/// settings (a client id, scopes), not the secret ones.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthConfig {
    /// `int_...`
    #[schema(value_type = IntegrationIdShape)]
    id: IntegrationId,
    /// The same.
    #[schema(value_type = IntegrationIdShape)]
    uuid: IntegrationId,
    /// Its name.
    name: String,
    /// Its accounts.
    no_of_connections: u64,
    /// `ENABLED`, or `DISABLED` (no new connection through it).
    #[schema(pattern = "^(ENABLED|DISABLED)$")]
    status: &'static str,
    /// Always `custom`: the app gave its own settings.
    r#type: &'static str,
    /// Its toolkit.
    toolkit: ToolkitRef,
    /// Its scheme, when Composio's models know it.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_scheme: Option<String>,
    /// keyhaven's name of its scheme, whatever it is.
    keyhaven_auth_scheme: String,
    /// Always false.
    is_composio_managed: bool,
    /// Its public settings and scopes; the secret ones are never shown.
    credentials: Map<String, Value>,
    /// The names of its secret settings (their values are never shown).
    secret_fields: Vec<String>,
    /// Always empty.
    tool_access_config: ToolAccess,
    /// Always false.
    is_enabled_for_tool_router: bool,
    /// Always empty.
    restrict_to_following_tools: Vec<String>,
    /// Always empty.
    expected_input_fields: Vec<Value>,
    /// Always `keyhaven`.
    created_by: &'static str,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    /// Last changed.
    #[schema(value_type = String, format = DateTime)]
    last_updated_at: DateTime<Utc>,
}

impl AuthConfig {
    pub(crate) fn new(i: &Integration, connections: u64) -> Self {
        let mut credentials = i.config.clone();
        if !i.scopes.is_empty() {
            credentials.insert(
                "scopes".into(),
                Value::Array(i.scopes.iter().cloned().map(Value::String).collect()),
            );
        }
        Self {
            id: i.id.clone(),
            uuid: i.id.clone(),
            name: i.name.clone(),
            no_of_connections: connections,
            status: if i.disabled { "DISABLED" } else { "ENABLED" },
            r#type: "custom",
            toolkit: ToolkitRef {
                slug: i.app.to_string(),
                logo: Some(String::new()),
            },
            auth_scheme: v3_scheme(&i.auth_scheme),
            keyhaven_auth_scheme: i.auth_scheme.clone(),
            is_composio_managed: false,
            credentials,
            secret_fields: i.secret_field_names(),
            tool_access_config: ToolAccess::default(),
            is_enabled_for_tool_router: false,
            restrict_to_following_tools: Vec::new(),
            expected_input_fields: Vec::new(),
            created_by: "keyhaven",
            created_at: i.created_at,
            last_updated_at: i.updated_at,
        }
    }
}

/// The new auth config, as creating one answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthConfigCreated {
    /// Its toolkit.
    toolkit: ToolkitRef,
    /// The auth config.
    auth_config: CreatedAuthConfig,
}

/// The short form of a new auth config.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreatedAuthConfig {
    /// `int_...`
    #[schema(value_type = IntegrationIdShape)]
    id: IntegrationId,
    /// Its scheme.
    auth_scheme: String,
    /// Always false.
    is_composio_managed: bool,
    /// Always empty.
    restrict_to_following_tools: Vec<String>,
}

impl AuthConfigCreated {
    pub(crate) fn new(i: &Integration) -> Self {
        Self {
            toolkit: ToolkitRef {
                slug: i.app.to_string(),
                logo: None,
            },
            auth_config: CreatedAuthConfig {
                id: i.id.clone(),
                auth_scheme: i.auth_scheme.clone(),
                is_composio_managed: false,
                restrict_to_following_tools: Vec::new(),
            },
        }
    }
}

/// A toolkit named by slug.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ToolkitSlug {
    /// The toolkit (an app of the catalogue, or another for a custom auth config).
    #[schema(value_type = AppSlugShape)]
    pub(crate) slug: String,
}

/// `POST /auth_configs`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateAuthConfig {
    /// The toolkit.
    pub(crate) toolkit: ToolkitSlug,
    /// The auth config; `use_composio_managed_auth` when absent, which keyhaven
    /// refuses (it manages no OAuth apps).
    #[serde(default)]
    pub(crate) auth_config: Option<NewAuthConfig>,
}

/// How an auth config is made.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct NewAuthConfig {
    /// `use_custom_auth`: the settings are in `credentials`. `use_composio_managed_auth`
    /// is refused with 400: keyhaven has no managed apps.
    #[schema(pattern = "^(use_custom_auth|use_composio_managed_auth)$")]
    pub(crate) r#type: String,
    /// The scheme; the toolkit's preferred one when absent.
    #[serde(default, rename = "authScheme", alias = "auth_scheme")]
    #[schema(value_type = Option<super::shapes::AuthSchemeName>)]
    pub(crate) auth_scheme: Option<String>,
    /// A name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub(crate) name: Option<String>,
    /// The settings: `client_id`, `client_secret`, `scopes` (a list or a
    /// comma-separated string) for OAuth; what the scheme's auth config fields are
    /// otherwise (`GET /toolkits/{slug}` lists them).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub(crate) credentials: SecretFields,
}

/// `PATCH /auth_configs/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct UpdateAuthConfig {
    /// `custom` or `default`: the same to keyhaven; another value is refused.
    #[serde(default)]
    #[schema(pattern = "^(custom|default)$")]
    pub(crate) r#type: Option<String>,
    /// A new name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub(crate) name: Option<String>,
    /// Settings to change (the others stay), `scopes` among them; `null` or absent
    /// changes none.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) credentials: SecretFields,
    /// New scopes: a list, or one string separated by commas or spaces; `null` or
    /// absent keeps them.
    #[serde(default)]
    #[schema(value_type = Option<super::shapes::ScopesShape>, nullable = true)]
    pub(crate) scopes: Option<Value>,
}

// ---------------------------------------------------------------------------------
// Connected accounts

/// The auth config of an account.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountAuthConfig {
    /// `int_...`
    #[schema(value_type = IntegrationIdShape)]
    id: IntegrationId,
    /// Its scheme, when Composio's models know it.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_scheme: Option<String>,
    /// Always false.
    is_composio_managed: bool,
    /// Whether the auth config is disabled.
    is_disabled: bool,
}

/// An account's scheme and what it shows of its connection.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub(crate) struct AccountState {
    /// The scheme.
    authScheme: String,
    /// `status`, the public parameters, and a mask where the scheme's state must
    /// show a secret.
    val: Map<String, Value>,
}

/// Composio's older fields of an account.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountDeprecated {
    /// The account's labels.
    #[schema(value_type = Vec<LabelShape>)]
    labels: Vec<String>,
    /// The account's id.
    #[schema(value_type = AccountId)]
    uuid: ConnectedAccountId,
}

/// A connected account in v3. Never a secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = V3ConnectedAccount)]
pub(crate) struct Account {
    /// `ca_...`
    #[schema(value_type = AccountId)]
    id: ConnectedAccountId,
    /// Its entity (keyhaven's `entity_id`).
    #[schema(value_type = EntityIdShape)]
    user_id: String,
    /// Where it stands.
    #[schema(value_type = V3Status)]
    status: ConnectionStatus,
    /// Why, when there is a reason.
    status_reason: Option<String>,
    /// Whether it is disabled (`INACTIVE`).
    is_disabled: bool,
    /// Its toolkit.
    toolkit: ToolkitRef,
    /// Its auth config.
    auth_config: AccountAuthConfig,
    /// Its scheme and public state; absent where the scheme's state would need what
    /// keyhaven does not keep (the provider's page of an `INITIATED` OAuth account)
    /// or the scheme is not one of Composio's.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<AccountState>,
    /// The same as `state.val`, or the public parameters.
    data: Map<String, Value>,
    /// Its public connection parameters (a subdomain, a region ...).
    params: Map<String, Value>,
    /// Its labels and id, in Composio's older names.
    deprecated: AccountDeprecated,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    /// Last changed.
    #[schema(value_type = String, format = DateTime)]
    updated_at: DateTime<Utc>,
}

/// The public state of an account, by the rules Composio's TypeScript SDK holds
/// each scheme's state to; `None` where they cannot be met without a secret or
/// what keyhaven does not keep.
fn state_of(a: &ConnectedAccount) -> Option<AccountState> {
    let status = a.status;
    let mut val: Map<String, Value> = a
        .params
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), Value::String(s.to_owned()))))
        .collect();
    val.insert("status".into(), Value::String(status.as_str().to_owned()));
    let usable = matches!(
        status,
        ConnectionStatus::Active | ConnectionStatus::Inactive
    );
    let mask = |val: &mut Map<String, Value>, key: &str| {
        val.entry(key.to_owned())
            .or_insert_with(|| Value::String(MASK.to_owned()));
    };
    match a.auth_scheme.as_str() {
        "OAUTH2" if status == ConnectionStatus::Initiated => return None,
        "OAUTH2" if usable => mask(&mut val, "access_token"),
        "BEARER_TOKEN" if usable => mask(&mut val, "token"),
        "BASIC" | "BASIC_WITH_JWT" if status != ConnectionStatus::Initiated => {
            mask(&mut val, "username");
            val.insert("password".into(), Value::String(MASK.to_owned()));
        }
        "OAUTH2" | "API_KEY" | "NO_AUTH" | "BEARER_TOKEN" | "BASIC" | "BASIC_WITH_JWT" => {}
        _ => return None,
    }
    Some(AccountState {
        authScheme: a.auth_scheme.clone(),
        val,
    })
}

impl Account {
    /// The view of an account; `integration` is its auth config, when it was read.
    pub(crate) fn new(a: &ConnectedAccount, integration: Option<&Integration>) -> Self {
        let state = state_of(a);
        let data = state
            .as_ref()
            .map_or_else(|| a.params.clone(), |s| s.val.clone());
        Self {
            id: a.id.clone(),
            user_id: a.entity_id.to_string(),
            status: a.status,
            status_reason: a.status_reason.clone(),
            is_disabled: a.status == ConnectionStatus::Inactive,
            toolkit: ToolkitRef {
                slug: a.app.to_string(),
                logo: None,
            },
            auth_config: AccountAuthConfig {
                id: a.integration_id.clone(),
                auth_scheme: v3_scheme(&a.auth_scheme),
                is_composio_managed: false,
                is_disabled: integration.is_some_and(|i| i.disabled),
            },
            state,
            data,
            params: a.params.clone(),
            deprecated: AccountDeprecated {
                labels: a.labels.iter().map(ToString::to_string).collect(),
                uuid: a.id.clone(),
            },
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// An auth config named by id.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct AuthConfigRef {
    /// `int_...`
    #[schema(value_type = IntegrationIdShape)]
    pub(crate) id: String,
}

/// The state an initiate gives: the scheme, and the connection's fields in `val`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct InitialState {
    /// The scheme; must be the auth config's.
    #[serde(rename = "authScheme", alias = "auth_scheme")]
    #[schema(value_type = super::shapes::AuthSchemeName)]
    pub(crate) auth_scheme: String,
    /// The connection's fields (an API key, a subdomain ...); `status` in it is
    /// Composio's and ignored.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub(crate) val: SecretFields,
}

/// Whose connection, where the user lands, and its labels: what an initiate and a
/// link both say.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct ConnectionTarget {
    /// The entity; `default` when absent.
    #[serde(default, alias = "entity_id")]
    #[schema(value_type = Option<EntityIdShape>)]
    pub(crate) user_id: Option<String>,
    /// Where the user lands after connecting.
    #[serde(default)]
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]")]
    pub(crate) callback_url: Option<String>,
    /// Labels to find the account by, at most 32 (keyhaven's).
    #[serde(default)]
    #[schema(value_type = Vec<LabelShape>, max_items = 32)]
    pub(crate) labels: Vec<String>,
}

impl ConnectionTarget {
    /// The library's request through the auth config `id`, for this target.
    fn request(self, id: String) -> keyhaven::ConnectionRequest {
        let mut request = keyhaven::ConnectionRequest::for_integration(id);
        request.entity_id = self.user_id;
        request.redirect_url = self.callback_url;
        request.labels = self.labels;
        request
    }
}

/// The connection of an initiate.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct NewConnection {
    /// Whose, where the user lands, labels.
    #[serde(flatten)]
    pub(crate) target: ConnectionTarget,
    /// The scheme and the connection's fields.
    #[serde(default)]
    pub(crate) state: Option<InitialState>,
    /// The connection's fields, in Composio's older place (`state.val` wins).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) data: Option<SecretFields>,
}

/// `POST /connected_accounts`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateAccount {
    /// The auth config.
    pub(crate) auth_config: AuthConfigRef,
    /// The connection.
    #[serde(default)]
    pub(crate) connection: NewConnection,
}

impl CreateAccount {
    /// The library's request.
    pub(crate) fn into_request(self) -> keyhaven::ConnectionRequest {
        let c = self.connection;
        let (scheme, mut params) = match c.state {
            Some(s) => (Some(s.auth_scheme), s.val),
            None => (None, c.data.unwrap_or_default()),
        };
        // Composio's SDKs put their idea of the status among the fields.
        params.remove("status");
        let mut request = c.target.request(self.auth_config.id);
        request.auth_scheme = scheme.filter(|s| !s.is_empty());
        request.connected_account_params = params;
        request
    }
}

/// What an initiate shows of the new connection.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub(crate) struct ConnectionData {
    /// The scheme.
    authScheme: String,
    /// `status`, and `redirectUrl` when the user must act.
    val: ConnectionDataVal,
}

/// The status and where to send the user.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub(crate) struct ConnectionDataVal {
    /// `INITIATED`, `ACTIVE` or `FAILED`.
    #[schema(value_type = V3Status)]
    status: ConnectionStatus,
    /// Where to send the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    redirectUrl: Option<String>,
}

/// What an initiate answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
#[schema(as = V3Initiated)]
pub(crate) struct Initiated {
    /// The new account.
    #[schema(value_type = AccountId)]
    id: ConnectedAccountId,
    /// Its status.
    #[schema(value_type = V3Status)]
    status: ConnectionStatus,
    /// Where to send the user: the provider's page, or keyhaven's connect form.
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_url: Option<String>,
    /// The scheme, status and link, as the SDKs read them.
    connectionData: ConnectionData,
}

impl Initiated {
    pub(crate) fn new(out: keyhaven::ConnectionRequestOutput, scheme: &str) -> Self {
        Self {
            id: out.connected_account_id,
            status: out.connection_status,
            redirect_url: out.redirect_url.clone(),
            connectionData: ConnectionData {
                authScheme: scheme.to_owned(),
                val: ConnectionDataVal {
                    status: out.connection_status,
                    redirectUrl: out.redirect_url,
                },
            },
        }
    }
}

/// `POST /connected_accounts/link`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateLink {
    /// The auth config.
    #[schema(value_type = IntegrationIdShape)]
    pub(crate) auth_config_id: String,
    /// Whose, where the user lands, labels.
    #[serde(flatten)]
    pub(crate) target: ConnectionTarget,
}

impl CreateLink {
    /// The library's request.
    pub(crate) fn into_request(self) -> keyhaven::ConnectionRequest {
        self.target.request(self.auth_config_id)
    }
}

/// A new connection link.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Link {
    /// The `INITIATED` account the link completes.
    #[schema(value_type = AccountId)]
    pub(crate) connected_account_id: ConnectedAccountId,
    /// The link's single-use token.
    #[schema(value_type = super::shapes::Token)]
    pub(crate) link_token: String,
    /// The link: keyhaven's page for the user.
    pub(crate) redirect_url: String,
    /// When the link stops working.
    #[schema(value_type = String, format = DateTime)]
    pub(crate) expires_at: DateTime<Utc>,
}

/// `PATCH /connected_accounts/{id}/status`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct SetEnabled {
    /// `true`: `ACTIVE` again; `false`: `INACTIVE`.
    pub(crate) enabled: bool,
}

/// What a refresh answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Refreshed {
    /// The account.
    #[schema(value_type = AccountId)]
    pub(crate) id: ConnectedAccountId,
    /// Its status afterwards.
    #[schema(value_type = V3Status)]
    pub(crate) status: ConnectionStatus,
}

/// `POST /tools/execute/proxy`: a request to a connected account's API with its
/// credentials, in the shape of Composio's current SDKs (`tools.proxy`,
/// `tools.proxyExecute`).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ToolsProxy {
    /// A path under the account's API base URL, or a URL under it.
    #[schema(value_type = super::shapes::ProxyPath)]
    pub(crate) endpoint: String,
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD` (`GET` when absent).
    #[serde(default)]
    #[schema(value_type = Option<super::shapes::HttpMethod>)]
    pub(crate) method: Option<String>,
    /// The body: a JSON value is sent as JSON, a string as it is.
    #[serde(default)]
    pub(crate) body: Option<Value>,
    /// The account whose credentials are used.
    #[serde(default)]
    #[schema(value_type = Option<AccountId>)]
    pub(crate) connected_account_id: Option<String>,
    /// Headers and query parameters to add.
    #[serde(default)]
    pub(crate) parameters: Vec<crate::proxy::ComposioProxyParameter>,
}
