//! The parts of the OpenAPI document that no route gives: its title, the API key
//! security schemes, and the shapes shared by many routes — among them the shapes of
//! ids, slugs, lists and bounds, written as patterns that say exactly what the server
//! accepts (tests/schemathesis checks both ways: valid values are accepted, others
//! refused).

use serde::Serialize;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};

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
    // The shapes of parameters are named here: utoipa collects those of bodies and
    // answers by itself, not those of parameters.
    components(schemas(
        ErrorBody,
        AccountId,
        IntegrationIdShape,
        AppSlugShape,
        EntityIdShape,
        LabelShape,
        EntityIdList,
        AppSlugList,
        IntegrationIdList,
        StatusList,
        LabelList,
        EventTypeList,
        Cursor,
        PageLimit,
        WaitSeconds,
        Token,
    )),
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
    rate_limited(&mut doc);
    doc
}

/// Every route may answer 429: the open routes and requests with a missing or wrong
/// key are rate-limited per client address (`--rate-limit`).
fn rate_limited(doc: &mut OpenApi) {
    use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
    let response = ResponseBuilder::new()
        .description("Too many requests from this address on an open route or with a missing or wrong key; wait for the seconds in `Retry-After`")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            operation
                .responses
                .responses
                .entry("429".to_owned())
                .or_insert_with(|| RefOr::T(response.clone()));
        }
    }
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

// ---------------------------------------------------------------------------------
// Shapes of ids, names and query values: patterns that match exactly what the server
// takes (the rules live in keyhaven-core's `ids.rs`, `ConnectionStatus` and
// `EventKind`; the query lists in `api::list`).
// ---------------------------------------------------------------------------------

/// What `str::trim` removes (Unicode White_Space), around the items of a query list.
const TRIMMED: &str =
    r"[\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
/// Control characters (Unicode Cc), refused in labels and scopes.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";
/// White space that is not a control character.
const SPACES: &str = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// An entity id: 1 to 128 of `[A-Za-z0-9._@:+-]`.
const ENTITY: &str = "[A-Za-z0-9._@:+-]{1,128}";
/// An app slug: 1 to 64 lowercase letters, digits, `-`, `_`, starting and ending with
/// a letter or digit.
const SLUG: &str = "[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?";

/// A prefixed id (`ca_`, `int_`): the prefix and 8 to 64 of `[A-Za-z0-9_-]`.
fn id(prefix: &str) -> String {
    format!("{prefix}[A-Za-z0-9_-]{{8,64}}")
}

/// A label as it stands in a list after trimming: 1 to 64 characters, no comma or
/// control character, no white space at either end.
fn trimmed_label() -> String {
    let end = format!("[^,{CONTROL}{SPACES}]");
    format!("{end}(?:[^,{CONTROL}]{{0,62}}{end})?")
}

/// `word` in any case, as `FromStr for ConnectionStatus` reads it.
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A comma-separated query list of `item`s: each item may have white space around
/// it, and empty items are skipped (`api::list`).
fn list_of(item: &str) -> String {
    format!("^{TRIMMED}*(?:{item})?{TRIMMED}*(?:,{TRIMMED}*(?:{item})?{TRIMMED}*)*$")
}

/// [`list_of`] with at most `max` items.
fn list_of_at_most(item: &str, max: usize) -> String {
    let more = max.saturating_sub(1);
    format!("^{TRIMMED}*(?:{item})?{TRIMMED}*(?:,{TRIMMED}*(?:{item})?{TRIMMED}*){{0,{more}}}$")
}

fn text(pattern: String, description: &str) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .description(Some(description))
            .build(),
    )
}

/// A schema with a name of its own in `components.schemas`.
macro_rules! shape {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $schema:expr) => {
        $(#[$doc])*
        #[derive(Debug, Serialize)]
        #[allow(dead_code)]
        pub(crate) struct $ty;
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                RefOr::T($schema)
            }
        }
        impl ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}

shape!(
    /// A connected account's id.
    AccountId,
    "ConnectedAccountId",
    text(
        format!("^{}$", id("ca_")),
        "A connected account's id: `ca_` and 8 to 64 letters, digits, `-` or `_`"
    )
);
shape!(
    /// An integration's id.
    IntegrationIdShape,
    "IntegrationId",
    text(
        format!("^{}$", id("int_")),
        "An integration's id: `int_` and 8 to 64 letters, digits, `-` or `_`"
    )
);
shape!(
    /// An app's slug.
    AppSlugShape,
    "AppSlug",
    text(
        format!("^{SLUG}$"),
        "An app's slug: 1 to 64 lowercase letters, digits, `-` or `_`, starting and ending with a letter or digit"
    )
);
shape!(
    /// An entity's id.
    EntityIdShape,
    "EntityId",
    text(
        format!("^{ENTITY}$"),
        "An end user: 1 to 128 letters, digits, `.`, `_`, `@`, `:`, `+` or `-`"
    )
);
shape!(
    /// A label.
    LabelShape,
    "Label",
    text(
        format!("^[^,{CONTROL}]{{1,64}}$"),
        "A label: 1 to 64 characters, no comma or control character"
    )
);
shape!(
    /// Entity ids, comma-separated.
    EntityIdList,
    "EntityIdList",
    text(
        list_of(ENTITY),
        "Entity ids, comma-separated; white space around an item and empty items are ignored"
    )
);
shape!(
    /// App slugs, comma-separated.
    AppSlugList,
    "AppSlugList",
    text(
        list_of(SLUG),
        "App slugs, comma-separated; white space around an item and empty items are ignored"
    )
);
shape!(
    /// Integration ids, comma-separated.
    IntegrationIdList,
    "IntegrationIdList",
    text(
        list_of(&id("int_")),
        "Integration ids, comma-separated; white space around an item and empty items are ignored"
    )
);
shape!(
    /// Statuses, comma-separated, in any case.
    StatusList,
    "StatusList",
    text(
        list_of(&format!(
            "(?:{})",
            keyhaven::ConnectionStatus::ALL
                .map(|s| any_case(s.as_str()))
                .join("|")
        )),
        "Statuses (INITIATED, ACTIVE, FAILED, EXPIRED, INACTIVE, in any case), comma-separated; white space around an item and empty items are ignored"
    )
);
shape!(
    /// Labels, comma-separated.
    LabelList,
    "LabelList",
    text(
        list_of_at_most(&trimmed_label(), keyhaven::LABELS_MAX_COUNT),
        "Labels, comma-separated, at most 32, each 1 to 64 characters without control characters; white space around an item and empty items are ignored"
    )
);
shape!(
    /// Event types, comma-separated.
    EventTypeList,
    "EventTypeList",
    text(
        list_of(&format!(
            r"(?:connection\.)?(?:{})",
            keyhaven::EventKind::ALL
                .map(|k| k.as_str().trim_start_matches("connection.").replace('.', r"\."))
                .join("|")
        )),
        "Event types (`connection.active` or `active` ...), comma-separated; white space around an item and empty items are ignored"
    )
);
shape!(
    /// A page cursor: empty, or an account id.
    Cursor,
    "Cursor",
    text(
        format!("^(?:{})?$", id("ca_")),
        "The `nextCursor` of the previous page (an account id); empty for the first page"
    )
);
shape!(
    /// A page size.
    PageLimit,
    "PageLimit",
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0_usize))
            .maximum(Some(usize::MAX))
            .description(Some("Accounts per page: 0 or absent gives 100, more than 1000 gives 1000"))
            .build()
    )
);
shape!(
    /// How long a long poll waits.
    WaitSeconds,
    "WaitSeconds",
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(0_usize))
            .description(Some("Seconds to wait, 30 when absent; more than 120 waits 120"))
            .build()
    )
);
shape!(
    /// A single-use token keyhaven made (an OAuth state, a connect form's token).
    Token,
    "Token",
    text(
        "^[0-9a-f]{64}$".to_owned(),
        "A single-use token keyhaven made: 64 lowercase hexadecimal digits"
    )
);

/// The auth schemes `keyhaven serve` registers.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code, clippy::upper_case_acronyms, non_camel_case_types)]
pub(crate) enum AuthSchemeName {
    OAUTH2,
    OAUTH2_CLIENT_CREDENTIALS,
    API_KEY,
    BEARER_TOKEN,
    BASIC,
    BASIC_WITH_JWT,
    SERVICE_ACCOUNT,
    GOOGLE_SERVICE_ACCOUNT,
    NO_AUTH,
}

/// A connected account's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(dead_code)]
pub(crate) enum Status {
    Initiated,
    Active,
    Failed,
    Expired,
    Inactive,
}

/// `POST /api/v1/integrations`: a new integration. Each field also has Composio's
/// spelling (`appId`/`appName`, `authScheme`, `authConfig`); give one spelling of each.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) struct IntegrationRequestBody {
    /// The app (also `appId`, `appName`): a catalogue slug or one of your own.
    app: AppSlugShape,
    /// A name; the app and scheme when absent. 1 to 200 characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    name: Option<String>,
    /// `OAUTH2` when absent (also `authScheme`).
    auth_scheme: Option<AuthSchemeName>,
    /// OAuth scopes, each without spaces.
    #[serde(default)]
    scopes: Vec<Scope>,
    /// The scheme's settings (client id and secret, URLs ...) and the common ones
    /// (`base_url`, `redirect_allowlist`, `request_headers`, `connection_params`).
    /// Which fields a scheme needs depends on the scheme and the app's catalogue
    /// entry: an incomplete or incoherent set is refused with 400, naming the field.
    auth_config: Option<serde_json::Map<String, serde_json::Value>>,
}

shape!(
    /// One OAuth scope.
    Scope,
    "Scope",
    text(
        format!("^[^{CONTROL}{SPACES}]+$"),
        "One scope: no white space or control characters"
    )
);

/// `POST /api/v1/connectedAccounts`: initiate a connection. Give `integrationId`, or
/// `appName` (its integration is used, or created from the catalogue). Each field also
/// has its other spellings (`integration_id`, `app`, `entity_id`, `userUuid`,
/// `redirectUri`, `data` ...); give one spelling of each.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ConnectionRequestBody {
    /// The integration to connect with.
    integration_id: Option<IntegrationIdShape>,
    /// Or the app (also `app`).
    app_name: Option<AppSlugShape>,
    /// The entity (also `userUuid`, `entity_id`); `default` when absent.
    entity_id: Option<EntityIdShape>,
    /// Labels to find the account by later, at most 32.
    #[serde(default)]
    #[schema(max_items = 32)]
    labels: Vec<LabelShape>,
    /// Where the user lands after connecting (also `redirectUri`, `redirect_url`); an
    /// http(s) URL under the redirect allowlist (the server's or the integration's).
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]")]
    redirect_url: Option<String>,
    /// The connection's fields: an API key, a subdomain ... (also `data`). Leave the
    /// secret ones out to let the user type them in the hosted connect form.
    connected_account_params: Option<serde_json::Map<String, serde_json::Value>>,
    /// `OAUTH2` by default.
    auth_scheme: Option<AuthSchemeName>,
    /// Client id and secret ... when the app's integration is created now.
    auth_config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What initiating a connection answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ConnectionRequestOutputBody {
    /// `INITIATED` (the user must finish at `redirectUrl`), `ACTIVE` or `FAILED`.
    connection_status: Status,
    /// The new account's id.
    connected_account_id: AccountId,
    /// Where to send the user: the provider's consent page or the connect form.
    redirect_url: Option<String>,
}

/// A connected account. Never a secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ConnectedAccountBody {
    /// `ca_...`
    id: AccountId,
    /// Where it stands.
    status: Status,
    /// Why it has that status, when there is a reason.
    status_reason: Option<String>,
    /// Its entity.
    entity_id: EntityIdShape,
    /// The same, in Composio's name.
    client_unique_user_id: EntityIdShape,
    /// Its integration.
    integration_id: IntegrationIdShape,
    /// Its app.
    app: AppSlugShape,
    /// The same, in Composio's name.
    app_name: AppSlugShape,
    /// The same, in Composio's other name.
    app_unique_id: AppSlugShape,
    /// Its auth scheme.
    auth_scheme: String,
    /// Its labels.
    labels: Vec<LabelShape>,
    /// Its non-secret connection parameters (a subdomain, a region ...).
    params: serde_json::Map<String, serde_json::Value>,
    /// The same plus the API's `base_url`, when the integration has one.
    connection_params: serde_json::Map<String, serde_json::Value>,
    /// Where the user is sent once connected, if the app gave a URL.
    redirect_url: Option<String>,
    /// When its credentials expire, if they do (RFC 3339).
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Bumped on every change.
    version: u64,
    /// Created, RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// Last changed, RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
}

/// A page of connected accounts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct AccountPage {
    /// The accounts, oldest first.
    items: Vec<ConnectedAccountBody>,
    /// Give it as `cursor` for the next page; null on the last.
    next_cursor: Option<AccountId>,
    /// Always 1: pages are cursor-based.
    total_pages: u32,
}

/// A field a scheme reads, in Composio's `AuthSchemeField` shape.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, non_snake_case)]
pub(crate) struct FieldBody {
    /// Its name.
    name: String,
    /// The same.
    display_name: String,
    /// The same, in camelCase.
    displayName: String,
    /// What it is.
    description: String,
    /// Always `string`.
    r#type: String,
    /// Whether it must be given.
    required: bool,
    /// Whether it is kept secret.
    is_secret: bool,
    /// Always true.
    expected_from_customer: bool,
    /// Its default, if it has one.
    default: Option<String>,
}

/// An integration, with Composio's names added. Never a secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct IntegrationBody {
    /// `int_...`
    id: IntegrationIdShape,
    /// Its app.
    app: AppSlugShape,
    /// The same, in Composio's name.
    app_id: AppSlugShape,
    /// The same, in Composio's other name.
    app_name: AppSlugShape,
    /// Its name.
    name: String,
    /// Its auth scheme.
    auth_scheme: String,
    /// Its OAuth scopes.
    scopes: Vec<String>,
    /// Its settings that are not secret.
    config: serde_json::Map<String, serde_json::Value>,
    /// The names of its secret settings (never their values).
    secret_fields: Vec<String>,
    /// The fields a connection gives.
    expected_input_fields: Vec<FieldBody>,
    /// Always true.
    enabled: bool,
    /// Always false.
    deleted: bool,
    /// Created, RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// Last changed, RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
}

/// The integrations.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct IntegrationPage {
    /// Oldest first.
    items: Vec<IntegrationBody>,
    /// Always 1.
    total_pages: u32,
}

/// Catalogue entries.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct AppPage {
    /// Entries in Composio's `AppModel` shape with keyhaven's catalogue fields.
    items: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Always 1.
    total_pages: u32,
}

/// What a deletion answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct DeletedBody {
    /// `success`.
    status: String,
    /// The id, as given.
    id: String,
}

/// An account's credentials.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct CredentialsBody {
    /// The account.
    connected_account_id: AccountId,
    /// When they expire, if they do (RFC 3339).
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// The fields: `access_token`, `api_key` ... as the scheme keeps them.
    credentials: serde_json::Map<String, serde_json::Value>,
}

/// `POST /api/v1/connectedAccounts/{id}/proxy`: a request to send with the account's
/// credentials.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct ProxyRequestBody {
    /// `GET` when absent; GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS, in any
    /// case (others, such as TRACE, are refused with 400).
    method: Option<HttpMethod>,
    /// A path under the account's API base URL (`/user/repos?per_page=5`), or a full
    /// URL under it (also `endpoint`). Anything outside the base URL is refused (400).
    path: ProxyPath,
    /// Extra headers. The credentials' own headers cannot be replaced.
    #[schema(schema_with = header_map)]
    headers: Option<std::collections::BTreeMap<String, String>>,
    /// The body: a JSON value is sent as JSON, a string as it is.
    body: Option<serde_json::Value>,
}

/// The characters of an HTTP token (RFC 9110), which method and header names are.
const TOKEN: &str = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+";

shape!(
    /// An HTTP method.
    HttpMethod,
    "HttpMethod",
    text(
        r"^\s*(?i:GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)\s*$".to_owned(),
        "GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS, in any case"
    )
);
shape!(
    /// A path under the account's API.
    ProxyPath,
    "ProxyPath",
    text(
        // One `/` (or `\`, the same to URL parsers) first, no control character,
        // no backslash before the query, and no `.` or `..` segment (also
        // percent-encoded) that would climb out of the base URL.
        r"^/(?![/\\])(?![\s\S]*[\u0000-\u001f\u007f-\u009f])(?![^?#]*\\)(?![\s\S]*[/\\](?:\.|%2[eE]){1,2}(?:[/\\?#;]|$))".to_owned(),
        "A path starting with a single `/`, under the account's API base URL: no control characters, no backslash before the query, no `.` or `..` segments, no encoded slashes or escapes encoded twice (refused with 400)"
    )
);

fn header_map() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(text(
            format!(
                "^(?!(?i:host|connection|keep-alive|te|trailer|transfer-encoding|upgrade|x-api-key|content-length)$)(?!(?i:proxy-)){TOKEN}$"
            ),
            "A header name; not Host, a hop-by-hop or proxy-* header, x-api-key or content-length (refused with 400)",
        )))
        .additional_properties(Some(text(
            r"^[^\u0000-\u0008\u000a-\u001f\u007f]*$".to_owned(),
            "A header value: no control character but tab",
        )))
        .build()
}

/// One server-sent event: its `event` name and its `data`, a JSON document.
fn stream_event(names: &[&str], description: &str) -> Schema {
    let data = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .description(Some(description))
        .build();
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(names.iter().copied())),
            )
            .required("event")
            .property("data", data)
            .required("data")
            .property("id", ObjectBuilder::new().schema_type(Type::String))
            .property("retry", ObjectBuilder::new().schema_type(Type::Integer))
            .additional_properties(Some(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
            ))
            .build(),
    )
}

/// The event names of the account events.
const EVENT_NAMES: [&str; 7] = [
    "connection.created",
    "connection.active",
    "connection.failed",
    "connection.expired",
    "connection.refresh_failed",
    "connection.inactive",
    "connection.deleted",
];

shape!(
    /// An event of `GET /api/v1/events`.
    StreamEvent,
    "StreamEvent",
    stream_event(
        &[EVENT_NAMES.as_slice(), &["lagged"]].concat(),
        "An AccountEvent as JSON ({id, type, connectedAccountId, entityId, appName, integrationId, status, reason, at, origin}); for `lagged`, {missed}: how many events this listener missed"
    )
);
shape!(
    /// An event of `GET /api/v1/connectedAccounts/{id}/events`.
    AccountStreamEvent,
    "AccountStreamEvent",
    stream_event(
        &[EVENT_NAMES.as_slice(), &["snapshot", "lagged"]].concat(),
        "`snapshot`: the account as GET /api/v1/connectedAccounts/{id} answers it; then each AccountEvent as JSON; for `lagged`, {missed}"
    )
);

/// `POST /connect`: the connect form's fields.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct ConnectFormBody {
    /// The link's token.
    token: Token,
    /// The CSRF token of the page (it must match the page's cookie).
    csrf: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the document names a schema it has.
    #[test]
    fn every_reference_resolves() {
        let doc = serde_json::to_value(crate::openapi()).unwrap_or_default();
        let schemas = doc["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let text = doc.to_string();
        let mut missing: Vec<&str> = text
            .split("\"#/components/schemas/")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|name| !schemas.contains_key(*name))
            .collect();
        missing.dedup();
        assert!(missing.is_empty(), "unresolved: {missing:?}");
    }

    /// The patterns say what the parsers take.
    #[test]
    fn list_patterns_read_like_the_server() {
        let statuses = list_of(&format!(
            "(?:{})",
            keyhaven::ConnectionStatus::ALL
                .map(|s| any_case(s.as_str()))
                .join("|")
        ));
        assert!(statuses.contains("[Aa][Cc][Tt][Ii][Vv][Ee]"), "{statuses}");
        assert!(id("ca_").starts_with("ca_"));
        assert_eq!(any_case("a_b"), "[Aa]_[Bb]");
    }
}
