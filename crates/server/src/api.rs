//! The REST API under `/api/v1`, in the names of Composio's v1 connection API so
//! that its clients work against keyhaven (see docs/composio-compat.md).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyhaven::{
    AccountFilter, AppEntry, ConnectedAccount, ConnectedAccountId, ConnectionRequest,
    ConnectionStatus, EntityId, Error, Integration, IntegrationId, Keyhaven, Label, NewIntegration,
};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::ApiError;

pub(crate) type Result<T> = std::result::Result<T, ApiError>;

/// Parses a JSON body with keyhaven's own error messages (never quoting secrets).
pub(crate) fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    let text = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!(
                "the body is not the expected JSON ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })
}

pub(crate) fn list(query: &HashMap<String, String>, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .filter_map(|k| query.get(*k))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_all<T>(
    values: Vec<String>,
    parse: impl Fn(&str) -> std::result::Result<T, Error>,
) -> Result<Vec<T>> {
    values
        .iter()
        .map(|v| parse(v).map_err(ApiError::from))
        .collect()
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

/// An app's schemes as Composio's `AppAuthScheme`s: the fields a connection takes.
/// Schemes its client does not know are left out of this list (`schemes` has all).
fn auth_schemes(kh: &Keyhaven, entry: &AppEntry) -> Vec<Value> {
    entry
        .schemes
        .iter()
        .filter(|m| COMPOSIO_AUTH_MODES.contains(&m.as_str()))
        .map(|mode| {
            let mut fields: Vec<Value> = kh
                .schemes()
                .get(mode)
                .map(|scheme| scheme.spec().params.clone())
                .unwrap_or_default()
                .iter()
                .map(field_view)
                .collect();
            for p in &entry.params {
                fields.push(json!({
                    "name": p.name, "display_name": p.name, "description": p.description,
                    "type": "string", "required": true, "expected_from_customer": true,
                }));
            }
            let mut v = json!({"scheme_name": mode, "name": mode, "mode": mode, "auth_mode": mode, "fields": fields});
            if mode == "OAUTH2"
                && let (Some(o), Value::Object(m)) = (&entry.oauth2, &mut v)
            {
                m.insert("authorization_url".into(), json!(o.authorize_url));
                m.insert("token_url".into(), json!(o.token_url));
                m.insert("default_scopes".into(), json!(o.default_scopes));
            }
            v
        })
        .collect()
}

/// A scheme's field as Composio's `AuthSchemeField`.
fn field_view(f: &keyhaven::FieldSpec) -> Value {
    json!({
        "name": f.name,
        "display_name": f.name,
        "displayName": f.name,
        "description": f.description,
        "type": "string",
        "required": f.required,
        "is_secret": f.secret,
        "expected_from_customer": true,
        "default": f.default,
    })
}

/// An app as Composio's `AppModel` and keyhaven's catalogue describe it.
pub fn app_view(kh: &Keyhaven, entry: &AppEntry) -> Value {
    json!({
        "key": entry.slug,
        "appId": entry.slug,
        "slug": entry.slug,
        "name": entry.name,
        "description": format!("{} ({})", entry.name, entry.categories.join(", ")),
        "categories": entry.categories,
        "docs": entry.docs_url,
        "meta": {},
        "enabled": true,
        "no_auth": entry.schemes.iter().all(|s| s == "NO_AUTH"),
        "auth_schemes": auth_schemes(kh, entry),
        "preferredScheme": entry.preferred_scheme(|m| kh.schemes().get(m).is_ok()),
        "schemes": entry.schemes,
        "apiBaseUrl": entry.api_base_url,
        "params": entry.params,
        "oauth2": entry.oauth2,
    })
}

/// `GET /api/v1/apps?query=`: the catalogue, searched.
#[utoipa::path(get, path = "/api/v1/apps", tag = "apps",
    params(("query" = Option<String>, Query, description = "Words to search for in names, slugs and categories")),
    responses((status = 200, description = "`{items, totalPages}`: catalogue entries in Composio's AppModel shape", body = crate::openapi::AppPage),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn apps(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let query = q
        .get("query")
        .or_else(|| q.get("q"))
        .map(String::as_str)
        .unwrap_or("");
    let items: Vec<Value> =
        s.kh.catalog()
            .search(query)
            .into_iter()
            .map(|e| app_view(&s.kh, e))
            .collect();
    Json(json!({"items": items, "totalPages": 1}))
}

/// `GET /api/v1/apps/{slug}`.
#[utoipa::path(get, path = "/api/v1/apps/{slug}", tag = "apps",
    params(("slug" = String, Path, description = "The app's slug, such as github; anything else is not in the catalogue (404)")),
    responses((status = 200, description = "The catalogue entry", body = Object),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "Not in the catalogue", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn app(
    State(s): State<Arc<AppState>>,
    Path(slug): Path<String>,
) -> Result<Json<Value>> {
    s.kh.catalog()
        .get(&slug)
        .map(|e| Json(app_view(&s.kh, e)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("app {slug:?} is not in the catalogue; GET /api/v1/apps lists them"),
            )
        })
}

/// `GET /api/v1/client/auth/client_info`: what Composio's client calls to check its key.
#[utoipa::path(get, path = "/api/v1/client/auth/client_info", tag = "server",
    responses((status = 200, description = "The key is good", body = Object),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn client_info() -> Json<Value> {
    Json(json!({"client": {"id": "keyhaven", "name": "keyhaven"}, "apiKey": {"name": "admin"}}))
}

/// An integration with Composio's field names added, and never a secret.
pub fn integration_view(kh: &Keyhaven, i: &Integration) -> Value {
    let mut v = serde_json::to_value(i).unwrap_or_default();
    let fields = kh
        .schemes()
        .get(&i.auth_scheme)
        .map(|scheme| {
            scheme
                .spec()
                .params
                .iter()
                .map(field_view)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if let Value::Object(m) = &mut v {
        m.insert("appId".into(), json!(i.app));
        m.insert("appName".into(), json!(i.app));
        m.insert("enabled".into(), json!(true));
        m.insert("deleted".into(), json!(false));
        m.insert("expectedInputFields".into(), json!(fields));
        m.insert("secretFields".into(), json!(i.secret_field_names()));
    }
    v
}

/// `POST /api/v1/integrations`.
#[utoipa::path(post, path = "/api/v1/integrations", tag = "integrations",
    request_body = crate::openapi::IntegrationRequestBody,
    responses((status = 200, description = "The integration, without its secrets", body = crate::openapi::IntegrationBody),
        (status = 400, description = "An invalid field, named", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn create_integration(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<Response> {
    let new: NewIntegration = body(&raw)?;
    let created = s.kh.integrations().create(new).await?;
    // 200, not 201: Composio's client accepts nothing else.
    Ok(Json(integration_view(&s.kh, &created)).into_response())
}

/// `GET /api/v1/integrations?appName=`.
#[utoipa::path(get, path = "/api/v1/integrations", tag = "integrations",
    params(("appName" = Option<crate::openapi::AppSlugShape>, Query, description = "Only this app's")),
    responses((status = 200, description = "`{items, totalPages}`", body = crate::openapi::IntegrationPage),
        (status = 400, description = "Not an app slug", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn integrations(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let app = q
        .get("appName")
        .or_else(|| q.get("app"))
        .map(String::as_str);
    let items: Vec<Value> =
        s.kh.integrations()
            .list(app)
            .await?
            .iter()
            .map(|i| integration_view(&s.kh, i))
            .collect();
    Ok(Json(json!({"items": items, "totalPages": 1})))
}

/// `GET /api/v1/integrations/{id}`.
#[utoipa::path(get, path = "/api/v1/integrations/{id}", tag = "integrations",
    params(("id" = crate::openapi::IntegrationIdShape, Path, description = "int_...")),
    responses((status = 200, description = "The integration, without its secrets", body = crate::openapi::IntegrationBody),
        (status = 400, description = "Not an integration id", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such integration", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn integration(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(integration_view(
        &s.kh,
        &s.kh.integrations().get(&id).await?,
    )))
}

/// `DELETE /api/v1/integrations/{id}`.
#[utoipa::path(delete, path = "/api/v1/integrations/{id}", tag = "integrations",
    params(("id" = crate::openapi::IntegrationIdShape, Path, description = "int_...")),
    responses((status = 200, description = "Deleted", body = crate::openapi::DeletedBody),
        (status = 400, description = "Not an integration id", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such integration", body = crate::openapi::ErrorBody),
        (status = 409, description = "It still has connected accounts", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn delete_integration(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    s.kh.integrations().delete(&id).await?;
    Ok(Json(json!({"status": "success", "id": id})))
}

/// A connected account with Composio's field names added, and never a secret.
pub async fn account_view(
    kh: &Keyhaven,
    a: &ConnectedAccount,
    integrations: &mut HashMap<IntegrationId, Option<Integration>>,
) -> Value {
    if !integrations.contains_key(&a.integration_id) {
        let i = kh.integrations().get(a.integration_id.as_str()).await.ok();
        integrations.insert(a.integration_id.clone(), i);
    }
    // Per account: the base URL's templates are filled with the account's parameters.
    let base = integrations
        .get(&a.integration_id)
        .and_then(Option::as_ref)
        .and_then(|i| crate::proxy::base_url_of(i, a));
    let mut connection_params: Map<String, Value> = a.params.clone();
    if let Some(b) = base {
        connection_params.insert("base_url".into(), Value::String(b));
    }
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Value::Object(m) = &mut v {
        m.insert("appName".into(), json!(a.app));
        m.insert("appUniqueId".into(), json!(a.app));
        m.insert("clientUniqueUserId".into(), json!(a.entity_id));
        m.insert("connectionParams".into(), Value::Object(connection_params));
    }
    v
}

/// `POST /api/v1/connectedAccounts`: initiate.
#[utoipa::path(post, path = "/api/v1/connectedAccounts", tag = "connectedAccounts",
    request_body = crate::openapi::ConnectionRequestBody,
    responses((status = 200, description = "The new account's status and where to send the user", body = crate::openapi::ConnectionRequestOutputBody),
        (status = 400, description = "An invalid field, named; nothing was stored", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such integration", body = crate::openapi::ErrorBody),
        (status = 409, description = "The app's integration differs from the given auth_config", body = crate::openapi::ErrorBody),
        (status = 503, description = "The provider could not be reached", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn initiate(State(s): State<Arc<AppState>>, raw: Bytes) -> Result<Json<Value>> {
    let request: ConnectionRequest = body(&raw)?;
    let out = s.kh.initiate_connection(request).await?;
    Ok(Json(serde_json::to_value(out).unwrap_or_default()))
}

/// `GET /api/v1/connectedAccounts`: filters `entityId`/`user_uuid`, `appNames`,
/// `integrationId`, `status`, `labels` (all must match, at most
/// [`keyhaven::LABELS_MAX_COUNT`]), `cursor`, `limit`/`pageSize` (0 or absent:
/// [`AccountFilter::DEFAULT_LIMIT`]; capped at [`AccountFilter::MAX_LIMIT`]).
#[utoipa::path(get, path = "/api/v1/connectedAccounts", tag = "connectedAccounts",
    params(
        ("entityId" = Option<crate::openapi::EntityIdList>, Query, description = "Only these entities, comma-separated (also `user_uuid`)"),
        ("appNames" = Option<crate::openapi::AppSlugList>, Query, description = "Only these apps, comma-separated"),
        ("integrationId" = Option<crate::openapi::IntegrationIdList>, Query, description = "Only these integrations, comma-separated"),
        ("status" = Option<crate::openapi::StatusList>, Query, description = "Only these statuses, comma-separated"),
        ("labels" = Option<crate::openapi::LabelList>, Query, description = "Only accounts with all these labels, comma-separated; at most 32 (as many as an account may carry)"),
        ("cursor" = Option<crate::openapi::Cursor>, Query, description = "The `nextCursor` of the previous page"),
        ("limit" = Option<crate::openapi::PageLimit>, Query, description = "Page size (also `pageSize`): 0 or absent gives 100 accounts, more than 1000 gives 1000; follow `nextCursor` for the rest"),
    ),
    responses((status = 200, description = "One page", body = crate::openapi::AccountPage),
        (status = 400, description = "An invalid filter, named (more than 32 labels, for one)", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn accounts(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let limit = q
        .get("limit")
        .or_else(|| q.get("pageSize"))
        .map(|l| {
            l.parse::<usize>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "invalid limit: give a whole number",
                )
            })
        })
        .transpose()?
        .unwrap_or(0);
    let filter = AccountFilter {
        entity_ids: parse_all(list(&q, &["entityId", "entityIds", "user_uuid"]), |v| {
            EntityId::new(v)
        })?,
        apps: parse_all(list(&q, &["appNames", "appName", "app"]), |v| {
            keyhaven::AppSlug::new(v)
        })?,
        integration_ids: parse_all(
            list(&q, &["integrationId", "integrationIds"]),
            IntegrationId::parse,
        )?,
        statuses: {
            let mut statuses = parse_all(list(&q, &["status", "statuses"]), |s| {
                s.parse::<ConnectionStatus>()
            })?;
            // Composio's client asks for active accounts this way.
            if q.get("showActiveOnly").is_some_and(|v| v == "true") {
                statuses = vec![ConnectionStatus::Active];
            }
            statuses
        },
        labels: parse_all(list(&q, &["labels", "label"]), |v| Label::new(v))?,
        after: q
            .get("cursor")
            .filter(|c| !c.is_empty())
            .map(|c| ConnectedAccountId::parse(c))
            .transpose()?,
        limit,
    };
    let page = s.kh.connected_accounts().list(&filter).await?;
    let mut bases = HashMap::new();
    let mut items = Vec::with_capacity(page.items.len());
    for a in &page.items {
        items.push(account_view(&s.kh, a, &mut bases).await);
    }
    Ok(Json(
        json!({"items": items, "nextCursor": page.next_cursor, "totalPages": 1}),
    ))
}

/// `GET /api/v1/connectedAccounts/{id}`.
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}", tag = "connectedAccounts",
    params(("id" = crate::openapi::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "The account, never a secret", body = crate::openapi::ConnectedAccountBody),
        (status = 400, description = "Not an account id", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such account", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn account(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let a = s.kh.connected_accounts().get(&id).await?;
    Ok(Json(account_view(&s.kh, &a, &mut HashMap::new()).await))
}

/// `DELETE /api/v1/connectedAccounts/{id}`.
#[utoipa::path(delete, path = "/api/v1/connectedAccounts/{id}", tag = "connectedAccounts",
    params(("id" = crate::openapi::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "Deleted; its credentials are revoked at the provider in the background", body = crate::openapi::DeletedBody),
        (status = 400, description = "Not an account id", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such account", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn delete_account(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    s.kh.connected_accounts().delete(&id).await?;
    Ok(Json(json!({"status": "success", "id": id})))
}

/// `GET /api/v1/connectedAccounts/{id}/wait?timeout=SECONDS`: answers as soon as the
/// account leaves `INITIATED` (the user finished or failed), or with 504 after the
/// timeout (default 30 s, at most 120 s). What `wait_for_connection` uses.
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}/wait", tag = "connectedAccounts",
    params(("id" = crate::openapi::AccountId, Path, description = "ca_..."),
        ("timeout" = Option<crate::openapi::WaitSeconds>, Query, description = "Seconds, default 30, at most 120 (more waits 120)")),
    responses((status = 200, description = "The account, once it left INITIATED", body = crate::openapi::ConnectedAccountBody),
        (status = 400, description = "Not an account id, or not a number of seconds", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such account", body = crate::openapi::ErrorBody),
        (status = 504, description = "Still INITIATED after the timeout", body = crate::openapi::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn wait(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>> {
    let secs = match q.get("timeout") {
        Some(t) => t
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_input",
                    "invalid timeout: give seconds, such as 30",
                )
            })?,
        None => 30.0,
    };
    let timeout = std::time::Duration::from_secs_f64(secs.min(120.0));
    let a = s.kh.wait_for_connection(&id, timeout).await?;
    Ok(Json(account_view(&s.kh, &a, &mut HashMap::new()).await))
}

macro_rules! account_action {
    ($name:ident, $method:ident, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "connectedAccounts",
            params(("id" = crate::openapi::AccountId, Path, description = "ca_...")),
            responses((status = 200, description = "The account afterwards", body = crate::openapi::ConnectedAccountBody),
                (status = 400, description = "Not an account id", body = crate::openapi::ErrorBody),
                (status = 401, description = "No or a wrong admin key", body = crate::openapi::ErrorBody),
                (status = 404, description = "No such account", body = crate::openapi::ErrorBody),
                (status = 409, description = "Not possible in the account's status (the message says what to do)", body = crate::openapi::ErrorBody),
                (status = 422, description = "The provider refused (refresh: the account is now EXPIRED)", body = crate::openapi::ErrorBody),
                (status = 503, description = "The provider could not be reached (refresh: the account stays as it was)", body = crate::openapi::ErrorBody)),
            security(("admin_key" = [])))]
        pub(crate) async fn $name(
            State(s): State<Arc<AppState>>,
            Path(id): Path<String>,
        ) -> Result<Json<Value>> {
            let a = s.kh.connected_accounts().$method(&id).await?;
            Ok(Json(account_view(&s.kh, &a, &mut HashMap::new()).await))
        }
    };
}

account_action!(
    refresh,
    refresh,
    "/api/v1/connectedAccounts/{id}/refresh",
    "`POST /api/v1/connectedAccounts/{id}/refresh`: refreshes the credentials now."
);
account_action!(
    enable,
    enable,
    "/api/v1/connectedAccounts/{id}/enable",
    "`POST /api/v1/connectedAccounts/{id}/enable`: `INACTIVE` to `ACTIVE`."
);
account_action!(
    disable,
    disable,
    "/api/v1/connectedAccounts/{id}/disable",
    "`POST /api/v1/connectedAccounts/{id}/disable`: `INACTIVE` until enabled."
);

/// The caller's address, when the server was served with connection info
/// (`into_make_service_with_connect_info::<SocketAddr>()`, as [`crate::serve`] does);
/// `None` otherwise (a router called in-process).
pub(crate) fn remote_address(extensions: &axum::http::Extensions) -> Option<String> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.to_string())
}

/// `GET /api/v1/connectedAccounts/{id}/credentials`: the account's credentials,
/// fresh (refreshed first when they are about to expire). Needs the credentials key,
/// not the admin key; every read, granted or not, is audited.
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}/credentials", tag = "credentials",
    params(("id" = crate::openapi::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "The credentials", body = crate::openapi::CredentialsBody),
        (status = 400, description = "Not an account id", body = crate::openapi::ErrorBody),
        (status = 401, description = "No or a wrong credentials key (`x-api-key`: KEYHAVEN_CREDENTIALS_KEY)", body = crate::openapi::ErrorBody),
        (status = 403, description = "The admin key cannot read credentials", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such account", body = crate::openapi::ErrorBody),
        (status = 409, description = "The account is not ACTIVE (the message says what to do)", body = crate::openapi::ErrorBody),
        (status = 422, description = "A refresh was due and the provider refused it (the account is now EXPIRED)", body = crate::openapi::ErrorBody),
        (status = 503, description = "A refresh was due and the provider could not be reached, or the read could not be written to the audit log (`audit_unavailable`: no credentials are given)", body = crate::openapi::ErrorBody)),
    security(("credentials_key" = [])))]
pub(crate) async fn credentials(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
) -> Result<Response> {
    let result = s.kh.credentials(&id).await;
    let account = s.kh.connected_accounts().get(&id).await.ok();
    let remote = remote_address(&extensions);
    let recorded = s.audit.record(
        keyhaven::chrono::Utc::now(),
        crate::audit::AuditRecord {
            account: &id,
            entity: account.as_ref().map(|a| a.entity_id.as_str()),
            app: account.as_ref().map(|a| a.app.as_str()),
            outcome: &match &result {
                Ok(_) => "granted".to_owned(),
                Err(e) => e.kind().to_string(),
            },
            remote: remote.as_deref(),
            user_agent: headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        },
    );
    let credentials = result?;
    // Fail closed: credentials whose read left no trace are not given out.
    if recorded.is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the credentials were not given: this read could not be written to the audit log (the server's log says why: a full disk, a closed file); retry once the operator has fixed it",
        ));
    }
    let body = json!({
        "connectedAccountId": id,
        "expiresAt": credentials.expires_at(),
        "credentials": credentials.expose().expose(),
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}
