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
    AccountFilter, ConnectedAccount, ConnectedAccountId, ConnectionStatus, EntityId, Error,
    Integration, IntegrationId, Keyhaven, Label,
};

use crate::AppState;
use crate::error::ApiError;
use crate::views::v1;

pub(crate) type Result<T> = std::result::Result<T, ApiError>;

/// Parses a JSON body with keyhaven's own error messages (never quoting secrets).
/// Every body of the API is a JSON object (an empty body is `{}`): an array is
/// refused, though serde would read one into a struct field by field.
pub(crate) fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    let text = if bytes.is_empty() {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("the body must be a JSON object ({...})"));
    }
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

pub(crate) fn parse_all<T>(
    values: Vec<String>,
    parse: impl Fn(&str) -> std::result::Result<T, Error>,
) -> Result<Vec<T>> {
    values
        .iter()
        .map(|v| parse(v).map_err(ApiError::from))
        .collect()
}

/// `GET /api/v1/apps?query=`: the catalogue, searched.
#[utoipa::path(get, path = "/api/v1/apps", tag = "apps",
    params(("query" = Option<String>, Query, description = "Words to search for in names, slugs and categories")),
    responses((status = 200, description = "`{items, totalPages}`: catalogue entries in Composio's AppModel shape", body = crate::views::v1::AppPage),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn apps(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<v1::AppPage> {
    let query = q
        .get("query")
        .or_else(|| q.get("q"))
        .map(String::as_str)
        .unwrap_or("");
    let items = s.kh.catalog().search(query);
    Json(v1::AppPage {
        items: items.into_iter().map(|e| v1::App::new(&s.kh, e)).collect(),
        total_pages: 1,
    })
}

/// `GET /api/v1/apps/{slug}`.
#[utoipa::path(get, path = "/api/v1/apps/{slug}", tag = "apps",
    params(("slug" = String, Path, description = "The app's slug, such as github; anything else is not in the catalogue (404)")),
    responses((status = 200, description = "The catalogue entry", body = crate::views::v1::App),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "Not in the catalogue", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn app(
    State(s): State<Arc<AppState>>,
    Path(slug): Path<String>,
) -> Result<Json<v1::App>> {
    s.kh.catalog()
        .get(&slug)
        .map(|e| Json(v1::App::new(&s.kh, e)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("app {slug:?} is not in the catalogue; GET /api/v1/apps lists them"),
            )
        })
}

/// `GET /api/v1/schemes`: the auth schemes this keyhaven has, with the fields a
/// connection gives (for apps outside the catalogue; an app's own are in its entry).
#[utoipa::path(get, path = "/api/v1/schemes", tag = "apps",
    responses((status = 200, description = "`{items}`: every registered scheme, by name", body = crate::views::v1::SchemePage),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn schemes(State(s): State<Arc<AppState>>) -> Json<v1::SchemePage> {
    let mut names: Vec<&str> = s.kh.schemes().names().collect();
    names.sort_unstable();
    Json(v1::SchemePage {
        items: names
            .into_iter()
            .filter_map(|n| v1::AuthScheme::new(&s.kh, n, None))
            .collect(),
    })
}

/// `GET /api/v1/client/auth/client_info`: what Composio's client calls to check its key.
#[utoipa::path(get, path = "/api/v1/client/auth/client_info", tag = "server",
    responses((status = 200, description = "The key is good", body = crate::views::v1::ClientInfo),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn client_info() -> Json<v1::ClientInfo> {
    Json(v1::ClientInfo {
        client: v1::ClientName {
            id: "keyhaven",
            name: "keyhaven",
        },
        api_key: v1::KeyName { name: "admin" },
    })
}

/// `POST /api/v1/integrations`.
#[utoipa::path(post, path = "/api/v1/integrations", tag = "integrations",
    request_body = crate::views::v1::NewIntegrationBody,
    responses((status = 200, description = "The integration, without its secrets", body = crate::views::v1::IntegrationView),
        (status = 400, description = "An invalid field, named", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn create_integration(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<Json<v1::IntegrationView>> {
    let new: v1::NewIntegrationBody = body(&raw)?;
    let created = s.kh.integrations().create(new.into()).await?;
    // 200, not 201: Composio's client accepts nothing else.
    Ok(Json(v1::IntegrationView::new(&s.kh, &created)))
}

/// `GET /api/v1/integrations?appName=`.
#[utoipa::path(get, path = "/api/v1/integrations", tag = "integrations",
    params(("appName" = Option<crate::views::shapes::AppSlugShape>, Query, description = "Only this app's")),
    responses((status = 200, description = "`{items, totalPages}`", body = crate::views::v1::IntegrationPage),
        (status = 400, description = "Not an app slug", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn integrations(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<v1::IntegrationPage>> {
    let app = q
        .get("appName")
        .or_else(|| q.get("app"))
        .map(String::as_str);
    let items = s.kh.integrations().list(app).await?;
    Ok(Json(v1::IntegrationPage {
        items: items
            .iter()
            .map(|i| v1::IntegrationView::new(&s.kh, i))
            .collect(),
        total_pages: 1,
    }))
}

/// `GET /api/v1/integrations/{id}`.
#[utoipa::path(get, path = "/api/v1/integrations/{id}", tag = "integrations",
    params(("id" = crate::views::shapes::IntegrationIdShape, Path, description = "int_...")),
    responses((status = 200, description = "The integration, without its secrets", body = crate::views::v1::IntegrationView),
        (status = 400, description = "Not an integration id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such integration", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn integration(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v1::IntegrationView>> {
    Ok(Json(v1::IntegrationView::new(
        &s.kh,
        &s.kh.integrations().get(&id).await?,
    )))
}

/// `DELETE /api/v1/integrations/{id}`.
#[utoipa::path(delete, path = "/api/v1/integrations/{id}", tag = "integrations",
    params(("id" = crate::views::shapes::IntegrationIdShape, Path, description = "int_...")),
    responses((status = 200, description = "Deleted", body = crate::views::v1::Deleted),
        (status = 400, description = "Not an integration id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such integration", body = crate::views::v1::ErrorBody),
        (status = 409, description = "It still has connected accounts", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn delete_integration(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v1::Deleted>> {
    s.kh.integrations().delete(&id).await?;
    Ok(Json(v1::Deleted::new(id)))
}

/// A view of each account made with its integration (`None` when it cannot be
/// read); each integration is read once. Every API version lists accounts this way.
pub(crate) async fn views_with_integrations<V>(
    kh: &Keyhaven,
    accounts: &[ConnectedAccount],
    view: impl Fn(&ConnectedAccount, Option<&Integration>) -> V,
) -> Vec<V> {
    let mut integrations: HashMap<&IntegrationId, Option<Integration>> = HashMap::new();
    let mut views = Vec::with_capacity(accounts.len());
    for a in accounts {
        if !integrations.contains_key(&a.integration_id) {
            let i = kh
                .integrations()
                .get_cached(a.integration_id.as_str())
                .await
                .ok();
            integrations.insert(&a.integration_id, i);
        }
        let integration = integrations.get(&a.integration_id).and_then(Option::as_ref);
        views.push(view(a, integration));
    }
    views
}

/// The v1 view of an account: with its API's base URL (its integration's, templates
/// filled with the account's parameters).
fn v1_view(a: &ConnectedAccount, integration: Option<&Integration>) -> v1::AccountView {
    v1::AccountView::new(a, integration.and_then(|i| crate::proxy::base_url_of(i, a)))
}

/// The v1 views of accounts.
pub(crate) async fn account_views(
    kh: &Keyhaven,
    accounts: &[ConnectedAccount],
) -> Vec<v1::AccountView> {
    views_with_integrations(kh, accounts, v1_view).await
}

/// The v1 view of one account.
pub(crate) async fn account_view(kh: &Keyhaven, a: &ConnectedAccount) -> v1::AccountView {
    let integration = kh
        .integrations()
        .get_cached(a.integration_id.as_str())
        .await
        .ok();
    v1_view(a, integration.as_ref())
}

/// `POST /api/v1/connectedAccounts`: initiate.
#[utoipa::path(post, path = "/api/v1/connectedAccounts", tag = "connectedAccounts",
    request_body = crate::views::v1::InitiateBody,
    responses((status = 200, description = "The new account's status and where to send the user", body = crate::views::v1::Initiated),
        (status = 400, description = "An invalid field, named; nothing was stored", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such integration, or an app that is neither in the catalogue nor has an integration, named without an auth_config to make one (the message names the closest catalogue apps)", body = crate::views::v1::ErrorBody),
        (status = 409, description = "The app's integration differs from the given auth_config", body = crate::views::v1::ErrorBody),
        (status = 503, description = "The provider could not be reached", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn initiate(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<Json<v1::Initiated>> {
    let request: v1::InitiateBody = body(&raw)?;
    let out = s.kh.initiate_connection(request.into()).await?;
    Ok(Json(out.into()))
}

/// `GET /api/v1/connectedAccounts`: filters `entityId`/`user_uuid`, `appNames`,
/// `integrationId`, `status`, `labels` (all must match, at most
/// [`keyhaven::LABELS_MAX_COUNT`]), `cursor`, `limit`/`pageSize` (0 or absent:
/// [`AccountFilter::DEFAULT_LIMIT`]; capped at [`AccountFilter::MAX_LIMIT`]).
#[utoipa::path(get, path = "/api/v1/connectedAccounts", tag = "connectedAccounts",
    params(
        ("entityId" = Option<crate::views::shapes::EntityIdList>, Query, description = "Only these entities, comma-separated (also `user_uuid`)"),
        ("appNames" = Option<crate::views::shapes::AppSlugList>, Query, description = "Only these apps, comma-separated"),
        ("integrationId" = Option<crate::views::shapes::IntegrationIdList>, Query, description = "Only these integrations, comma-separated"),
        ("status" = Option<crate::views::shapes::StatusList>, Query, description = "Only these statuses, comma-separated"),
        ("labels" = Option<crate::views::shapes::LabelList>, Query, description = "Only accounts with all these labels, comma-separated; at most 32 (as many as an account may carry)"),
        ("cursor" = Option<crate::views::shapes::Cursor>, Query, description = "The `nextCursor` of the previous page"),
        ("limit" = Option<crate::views::shapes::PageLimit>, Query, description = "Page size (also `pageSize`): 0 or absent gives 100 accounts, more than 1000 gives 1000; follow `nextCursor` for the rest"),
    ),
    responses((status = 200, description = "One page", body = crate::views::v1::AccountPage),
        (status = 400, description = "An invalid filter, named (more than 32 labels, for one)", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn accounts(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<v1::AccountPage>> {
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
        newest_first: false,
    };
    let page = s.kh.connected_accounts().list_cached(&filter).await?;
    Ok(Json(v1::AccountPage {
        items: account_views(&s.kh, &page.items).await,
        next_cursor: page.next_cursor.clone(),
        total_pages: 1,
    }))
}

/// `GET /api/v1/connectedAccounts/{id}`.
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}", tag = "connectedAccounts",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "The account, never a secret", body = crate::views::v1::AccountView),
        (status = 400, description = "Not an account id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn account(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v1::AccountView>> {
    let a = s.kh.connected_accounts().get_cached(&id).await?;
    Ok(Json(account_view(&s.kh, &a).await))
}

/// `DELETE /api/v1/connectedAccounts/{id}`.
#[utoipa::path(delete, path = "/api/v1/connectedAccounts/{id}", tag = "connectedAccounts",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "Deleted; its credentials are revoked at the provider in the background", body = crate::views::v1::Deleted),
        (status = 400, description = "Not an account id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn delete_account(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v1::Deleted>> {
    delete_account_of(&s, &id).await?;
    Ok(Json(v1::Deleted::new(id)))
}

/// Deletes an account and revokes its credentials at the provider: in the
/// background, or before answering (`ServerConfig::revoke_in_background`).
pub(crate) async fn delete_account_of(s: &AppState, id: &str) -> Result<()> {
    if s.config.revoke_in_background {
        s.kh.connected_accounts().delete(id).await?;
    } else {
        s.kh.connected_accounts().delete_and_revoke(id).await?;
    }
    Ok(())
}

/// `GET /api/v1/connectedAccounts/{id}/wait?timeout=SECONDS`: answers as soon as the
/// account leaves `INITIATED` (the user finished or failed), or with 504 after the
/// timeout (default 30 s, at most 120 s). What `wait_for_connection` uses.
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}/wait", tag = "connectedAccounts",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_..."),
        ("timeout" = Option<crate::views::shapes::WaitSeconds>, Query, description = "Seconds, default 30, at most 120 (more waits 120)")),
    responses((status = 200, description = "The account, once it left INITIATED", body = crate::views::v1::AccountView),
        (status = 400, description = "Not an account id, or not a number of seconds", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody),
        (status = 504, description = "Still INITIATED after the timeout", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn wait(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<v1::AccountView>> {
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
    Ok(Json(account_view(&s.kh, &a).await))
}

macro_rules! account_action {
    ($name:ident, $method:ident, $path:literal, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "connectedAccounts",
            params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
            responses((status = 200, description = "The account afterwards", body = crate::views::v1::AccountView),
                (status = 400, description = "Not an account id", body = crate::views::v1::ErrorBody),
                (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
                (status = 404, description = "No such account", body = crate::views::v1::ErrorBody),
                (status = 409, description = "Not possible in the account's status (the message says what to do)", body = crate::views::v1::ErrorBody),
                (status = 422, description = "The provider refused (refresh: the account is now EXPIRED)", body = crate::views::v1::ErrorBody),
                (status = 503, description = "The provider could not be reached (refresh: the account stays as it was)", body = crate::views::v1::ErrorBody)),
            security(("admin_key" = [])))]
        pub(crate) async fn $name(
            State(s): State<Arc<AppState>>,
            Path(id): Path<String>,
        ) -> Result<Json<v1::AccountView>> {
            let a = s.kh.connected_accounts().$method(&id).await?;
            Ok(Json(account_view(&s.kh, &a).await))
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
/// Which key a request gave, set by the key checks: `admin` or `credentials`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyUsed(pub(crate) &'static str);

/// Who calls, for the audit log: the key they gave, their address, their user agent.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) keyhaven::AuditCaller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(Self(caller_of(&parts.headers, &parts.extensions)))
    }
}

/// Who sent a request with these headers and extensions.
pub(crate) fn caller_of(
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
) -> keyhaven::AuditCaller {
    keyhaven::AuditCaller {
        key: extensions.get::<KeyUsed>().map(|k| k.0.to_owned()),
        remote: remote_address(extensions),
        user_agent: headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(200).collect()),
    }
}

pub(crate) fn remote_address(extensions: &axum::http::Extensions) -> Option<String> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.to_string())
}

/// `GET /api/v1/connectedAccounts/{id}/credentials`: the account's credentials,
/// fresh (refreshed first when they are about to expire). Needs the credentials key,
/// not the admin key; every read, granted or not, is audited.
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}/credentials", tag = "credentials",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "The credentials", body = crate::views::v1::CredentialsView<'_>),
        (status = 400, description = "Not an account id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong credentials key (`x-api-key`: KEYHAVEN_CREDENTIALS_KEY)", body = crate::views::v1::ErrorBody),
        (status = 403, description = "The admin key cannot read credentials", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody),
        (status = 409, description = "The account is not ACTIVE (the message says what to do)", body = crate::views::v1::ErrorBody),
        (status = 422, description = "A refresh was due and the provider refused it (the account is now EXPIRED)", body = crate::views::v1::ErrorBody),
        (status = 503, description = "A refresh was due and the provider could not be reached, or the read could not be written to the audit log (`audit_unavailable`: no credentials are given)", body = crate::views::v1::ErrorBody)),
    security(("credentials_key" = [])))]
pub(crate) async fn credentials(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    caller: Caller,
) -> Result<Response> {
    let (result, read) = match s.kh.credentials_and_account(&id).await {
        Ok((credentials, account)) => (Ok(credentials), account),
        Err(e) => (Err(e), None),
    };
    // Only its entity and app, for the audit line: they never change. A read that
    // missed the cache has the account already (read or written by this caller or
    // by the one it queued behind); a cache hit looks it up.
    let account = match read {
        Some(account) => Some(account),
        None => s.kh.connected_accounts().get_cached(&id).await.ok(),
    };
    let outcome = match &result {
        Ok(_) => "granted".to_owned(),
        Err(e) => e.kind().to_string(),
    };
    let mut entry = keyhaven::AuditEntry::new(
        keyhaven::chrono::Utc::now(),
        keyhaven::AuditAction::CredentialsRead,
        &id,
        outcome,
    )
    .by(caller.0);
    if let Some(account) = &account {
        entry = entry.of(account);
    }
    let recorded = s.kh.audit().record(&entry).await;
    let credentials = result?;
    // Fail closed: credentials whose read left no trace are not given out.
    if recorded.is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the credentials were not given: this read could not be written to the audit log (the server's log says why: a full disk, a closed file); retry once the operator has fixed it",
        ));
    }
    let mut response = Json(v1::CredentialsView {
        connected_account_id: &id,
        expires_at: credentials.expires_at(),
        credentials: credentials.expose().expose(),
    })
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// The `limit` query parameter of a listing whose pages hold 1 to `max` items;
/// `None` when absent.
pub(crate) fn bounded_limit(q: &HashMap<String, String>, max: usize) -> Result<Option<usize>> {
    q.get("limit")
        .map(|l| {
            l.parse::<usize>()
                .ok()
                .filter(|l| (1..=max).contains(l))
                .ok_or_else(|| {
                    ApiError::invalid(format!("invalid limit: give a number from 1 to {max}"))
                })
        })
        .transpose()
}

/// `GET /api/v1/connectedAccounts/{id}/audit`: every recorded use of the account's
/// credentials (reads, requests sent with them), oldest first, optionally between two
/// times; the newest `limit` (default and at most 10,000).
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}/audit", tag = "connectedAccounts",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_..."),
        ("since" = Option<String>, Query, format = DateTime, description = "Only uses at or after this time (RFC 3339)"),
        ("until" = Option<String>, Query, format = DateTime, description = "Only uses before this time (RFC 3339)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "At most this many, the newest (default 10,000)")),
    responses((status = 200, description = "The uses", body = crate::views::v1::AuditList),
        (status = 400, description = "Not an account id, a time that is not RFC 3339, a limit out of range", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 409, description = "The server keeps no audit file to read (it was given a pipe)", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn audit(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<v1::AuditList>> {
    keyhaven::ConnectedAccountId::parse(&id)?;
    let time = |name: &str| {
        q.get(name)
            .map(|t| {
                keyhaven::chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&keyhaven::chrono::Utc))
                    .map_err(|_| {
                        ApiError::invalid(format!(
                            "invalid {name}: give a time as RFC 3339, such as 2026-11-30T08:00:00Z"
                        ))
                    })
            })
            .transpose()
    };
    let limit = bounded_limit(&q, keyhaven::audit::AUDIT_QUERY_MAX)?;
    let query = keyhaven::AuditQuery {
        since: time("since")?,
        until: time("until")?,
        limit,
    };
    let items =
        s.kh.audit()
            .query(&id, &query)
            .await
            .map_err(keyhaven::Error::from)?;
    Ok(Json(v1::AuditList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}
