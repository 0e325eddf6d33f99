//! The shapes of ids, names and query values that many routes share: patterns that
//! say exactly what the server accepts (the rules live in keyhaven-core's `ids.rs`,
//! `ConnectionStatus` and `EventKind`; the query lists in `api::list`), so that
//! schema-driven clients and tests (tests/schemathesis) generate what is valid.

use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

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
    /// Statuses as v3 names them, comma-separated, in any case.
    V3StatusList,
    "V3StatusList",
    text(
        list_of(&format!(
            "(?:{})",
            ["INITIALIZING", "INITIATED", "ACTIVE", "FAILED", "EXPIRED", "INACTIVE", "REVOKED"]
                .map(any_case)
                .join("|")
        )),
        "Statuses (INITIALIZING, INITIATED, ACTIVE, FAILED, EXPIRED, INACTIVE, REVOKED, in any case), comma-separated; white space around an item and empty items are ignored"
    )
);
shape!(
    /// Account ids, comma-separated.
    AccountIdList,
    "ConnectedAccountIdList",
    text(
        list_of(&id("ca_")),
        "Connected account ids, comma-separated; white space around an item and empty items are ignored"
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
    /// A cursor into a listing kept in memory: the position of the next item.
    OffsetCursor,
    "OffsetCursor",
    text(
        "^[0-9]*$".to_owned(),
        "The `next_cursor` of the previous page (a position); empty for the first page"
    )
);
shape!(
    /// Scopes: a list, or one string separated by commas or spaces.
    ScopesShape,
    "Scopes",
    Schema::OneOf(
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(text(
                format!("^[, ]*(?:[^{CONTROL}{SPACES},]+[, ]*)*$"),
                "Scopes in one string, separated by commas or spaces"
            ))
            .item(
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(RefOr::T(text(
                        format!("^[^{CONTROL}{SPACES}]+$"),
                        "One scope: no white space or control characters"
                    )))
                    .build()
            )
            .build()
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

shape!(
    /// An auth scheme's name: a built-in one or one the server registered.
    AuthSchemeName,
    "AuthSchemeName",
    text(
        "^[A-Za-z][A-Za-z0-9_]{0,63}$".to_owned(),
        "A registered auth scheme, in any case: OAUTH2, OAUTH2_CLIENT_CREDENTIALS, API_KEY, BEARER_TOKEN, BASIC, BASIC_WITH_JWT, SERVICE_ACCOUNT, GOOGLE_SERVICE_ACCOUNT, NO_AUTH, or one registered by the server (GET /api/v1/schemes lists them); another name is refused with 400"
    )
);

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

shape!(
    /// One OAuth scope.
    Scope,
    "Scope",
    text(
        format!("^[^{CONTROL}{SPACES}]+$"),
        "One scope: no white space or control characters"
    )
);

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

pub(crate) fn header_map() -> Object {
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
