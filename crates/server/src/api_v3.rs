//! The v3.1 API of Composio's current SDKs, at `/api/v3.1` and `/api/v3`: toolkits
//! (the catalogue), auth configs (integrations), connected accounts and connection
//! links. The same library calls as v1, with the shapes of `views::v3`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use keyhaven::{
    AccountFilter, AppSlug, ConnectedAccount, ConnectedAccountId, ConnectionStatus, EntityId,
    Error, Integration, IntegrationId, IntegrationUpdate, Keyhaven, Label, NewIntegration,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{Result, body, list, parse_all};
use crate::error::ApiError;
use crate::views::v3;

/// The v3.1 routes, relative to their prefix (`/api/v3.1`, and `/api/v3` as an alias).
pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(toolkits))
        .routes(routes!(toolkit))
        .routes(routes!(create_auth_config, auth_configs))
        .routes(routes!(auth_config, update_auth_config, delete_auth_config))
        .routes(routes!(set_auth_config_status))
        .routes(routes!(create_account, accounts))
        .routes(routes!(account, delete_account))
        .routes(routes!(set_account_status))
        .routes(routes!(refresh_account))
        .routes(routes!(create_link))
        .routes(routes!(proxy))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

/// A page size: a whole number (Composio's Python SDK may send `20.0`); absent: `None`.
fn limit_of(q: &HashMap<String, String>) -> Result<Option<usize>> {
    let Some(raw) = q.get("limit").filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let whole = raw.strip_suffix(".0").unwrap_or(raw);
    whole
        .parse::<usize>()
        .map(Some)
        .map_err(|_| invalid("invalid limit: give a whole number"))
}

/// An offset cursor (the listings of toolkits and auth configs are small and kept
/// in memory): empty or absent is 0.
fn offset_of(q: &HashMap<String, String>) -> Result<usize> {
    match q.get("cursor").filter(|c| !c.is_empty()) {
        Some(c) => c
            .parse()
            .map_err(|_| invalid("invalid cursor: give the next_cursor of the previous page")),
        None => Ok(0),
    }
}

/// One page of a listing kept in memory: its items from `offset`, the cursor of the
/// next, the listing's size and the page size.
struct Window<T> {
    page: Vec<T>,
    next: Option<String>,
    total: u64,
    size: usize,
}

fn window<T>(items: Vec<T>, offset: usize, limit: Option<usize>) -> Window<T> {
    let size = limit.filter(|l| *l > 0).unwrap_or(AccountFilter::MAX_LIMIT);
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(offset).take(size).collect();
    let end = offset.saturating_add(page.len());
    Window {
        next: (end < total).then(|| end.to_string()),
        page,
        total: u64::try_from(total).unwrap_or(u64::MAX),
        size,
    }
}

/// A boolean query parameter: `true` or `false`; absent is false.
fn flag(q: &HashMap<String, String>, key: &str) -> Result<bool> {
    match q.get(key).map(String::as_str) {
        None => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(invalid(format!("{key} {other:?}: give true or false"))),
    }
}

// ---------------------------------------------------------------------------------
// Toolkits

/// `GET /toolkits`: the catalogue.
#[utoipa::path(get, path = "/toolkits", tag = "v3.1",
    params(
        ("search" = Option<String>, Query, description = "Words to search for in names, slugs and categories"),
        ("category" = Option<String>, Query, description = "Only this category (its slug or name)"),
        ("limit" = Option<crate::views::shapes::PageLimit>, Query, description = "Page size: absent or 0 gives up to 1000"),
        ("cursor" = Option<crate::views::shapes::OffsetCursor>, Query, description = "The `next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "Toolkits: the catalogue's apps", body = crate::views::v3::ToolkitPage),
        (status = 400, description = "An invalid limit or cursor", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn toolkits(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<v3::ToolkitPage>> {
    let catalog = s.kh.catalog();
    let mut entries: Vec<_> = match q.get("search").filter(|v| !v.trim().is_empty()) {
        Some(words) => catalog.search(words),
        None => catalog.iter().collect(),
    };
    if let Some(category) = q.get("category").filter(|c| !c.is_empty()) {
        let wanted = category.to_ascii_lowercase();
        entries.retain(|e| {
            e.categories
                .iter()
                .any(|c| c.to_ascii_lowercase() == wanted || v3::category_slug(c) == wanted)
        });
    }
    let w = window(entries, offset_of(&q)?, limit_of(&q)?);
    Ok(Json(
        v3::ToolkitPage::new(
            w.page.iter().map(|e| v3::Toolkit::new(&s.kh, e)).collect(),
            w.next,
        )
        .of_total(w.total, w.size),
    ))
}

/// `GET /toolkits/{slug}`: one catalogue app, with each scheme's fields; an app outside
/// the catalogue that has auth configs is a toolkit of its schemes.
#[utoipa::path(get, path = "/toolkits/{slug}", tag = "v3.1",
    params(("slug" = String, Path, description = "The app's slug, such as github")),
    responses((status = 200, description = "The toolkit, with `auth_config_details`: each scheme keyhaven has for it, and the fields an auth config and a connection give", body = crate::views::v3::ToolkitDetail),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "Neither in the catalogue nor an app with auth configs (the message names the closest catalogue apps)", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn toolkit(
    State(s): State<Arc<AppState>>,
    Path(slug): Path<String>,
) -> Result<Json<v3::ToolkitDetail>> {
    let catalog = s.kh.catalog();
    if let Some(entry) = catalog.get(&slug) {
        return Ok(Json(v3::ToolkitDetail::new(&s.kh, entry)));
    }
    // An app of its own: a toolkit when it has auth configs.
    let integrations = match AppSlug::new(slug.clone()) {
        Ok(app) => s.kh.integrations().list(Some(app.as_str())).await?,
        Err(_) => Vec::new(),
    };
    if integrations.is_empty() {
        return Err(Error::UnknownApp {
            app: slug.clone(),
            closest: catalog.closest(&slug, 3),
        }
        .into());
    }
    let entry = v3::custom_entry(&slug, &integrations);
    Ok(Json(v3::ToolkitDetail::new(&s.kh, &entry)))
}

// ---------------------------------------------------------------------------------
// Auth configs

/// The 400 for a Composio-managed auth config, which keyhaven cannot make.
fn managed_refused(app: &str) -> ApiError {
    invalid(format!(
        "keyhaven has no Composio-managed apps, so use_composio_managed_auth cannot be served: create the auth config with {{\"type\":\"use_custom_auth\",\"authScheme\":\"OAUTH2\",\"credentials\":{{\"client_id\":...,\"client_secret\":...}}}} from your own OAuth app at the provider, or set {} and {} on the server and leave credentials empty",
        keyhaven::app_setting_var(app, "client_id"),
        keyhaven::app_setting_var(app, "client_secret"),
    ))
}

/// `POST /auth_configs`: an integration, from the catalogue's settings for the
/// toolkit and the given `credentials`.
#[utoipa::path(post, path = "/auth_configs", tag = "v3.1",
    request_body = crate::views::v3::CreateAuthConfig,
    responses((status = 201, description = "The new auth config", body = crate::views::v3::AuthConfigCreated),
        (status = 400, description = "An invalid field, named; a Composio-managed auth config (keyhaven has none: the message says how to give your own OAuth client); nothing was stored", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn create_auth_config(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<(StatusCode, Json<v3::AuthConfigCreated>)> {
    let request: v3::CreateAuthConfig = body(&raw)?;
    let app = request.toolkit.slug;
    let Some(config) = request.auth_config else {
        return Err(managed_refused(&app));
    };
    match config.r#type.as_str() {
        "use_custom_auth" => {}
        "use_composio_managed_auth" => return Err(managed_refused(&app)),
        other => {
            return Err(invalid(format!(
                "auth_config.type {other:?} is not known: give use_custom_auth"
            )));
        }
    }
    let scheme = match config.auth_scheme.filter(|s| !s.is_empty()) {
        Some(scheme) => scheme,
        None => s
            .kh
            .catalog()
            .get(&app)
            .and_then(|e| e.preferred_scheme(|m| s.kh.schemes().get(m).is_ok()))
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid(format!(
                    "auth_config.authScheme is required: {app:?} is not in the catalogue, so keyhaven cannot choose its scheme"
                ))
            })?,
    };
    let mut new = NewIntegration::new(app, scheme);
    new.name = config.name;
    new.auth_config = config.credentials;
    let created = s.kh.integrations().create(new).await?;
    Ok((
        StatusCode::CREATED,
        Json(v3::AuthConfigCreated::new(&created)),
    ))
}

/// The number of accounts of an integration.
async fn connections(kh: &Keyhaven, id: &IntegrationId) -> Result<u64> {
    let filter = AccountFilter {
        integration_ids: vec![id.clone()],
        ..Default::default()
    };
    Ok(kh.connected_accounts().count(&filter).await?)
}

async fn auth_config_view(kh: &Keyhaven, i: &Integration) -> Result<v3::AuthConfig> {
    Ok(v3::AuthConfig::new(i, connections(kh, &i.id).await?))
}

/// `GET /auth_configs`: newest first (the TypeScript SDK's `toolkits.authorize`
/// takes the first).
#[utoipa::path(get, path = "/auth_configs", tag = "v3.1",
    params(
        ("toolkit_slug" = Option<crate::views::shapes::AppSlugShape>, Query, description = "Only this toolkit's"),
        ("show_disabled" = Option<bool>, Query, description = "Also the disabled ones"),
        ("search" = Option<String>, Query, description = "Only those whose name or toolkit contains this"),
        ("is_composio_managed" = Option<bool>, Query, description = "`true`: none (keyhaven manages none)"),
        ("limit" = Option<crate::views::shapes::PageLimit>, Query, description = "Page size: absent or 0 gives up to 1000"),
        ("cursor" = Option<crate::views::shapes::OffsetCursor>, Query, description = "The `next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "Auth configs, newest first", body = crate::views::v3::AuthConfigPage),
        (status = 400, description = "An invalid filter, limit or cursor", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn auth_configs(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<v3::AuthConfigPage>> {
    let app = q.get("toolkit_slug").map(String::as_str);
    let mut items = s.kh.integrations().list(app).await?;
    items.reverse();
    if !flag(&q, "show_disabled")? {
        items.retain(|i| !i.disabled);
    }
    if flag(&q, "is_composio_managed")? {
        items.clear();
    }
    if let Some(words) = q.get("search").filter(|w| !w.is_empty()) {
        let words = words.to_lowercase();
        items.retain(|i| i.name.to_lowercase().contains(&words) || i.app.as_str().contains(&words));
    }
    let w = window(items, offset_of(&q)?, limit_of(&q)?);
    let mut views = Vec::with_capacity(w.page.len());
    for i in &w.page {
        views.push(auth_config_view(&s.kh, i).await?);
    }
    Ok(Json(
        v3::AuthConfigPage::new(views, w.next).of_total(w.total, w.size),
    ))
}

/// `GET /auth_configs/{id}`.
#[utoipa::path(get, path = "/auth_configs/{id}", tag = "v3.1",
    params(("id" = crate::views::shapes::IntegrationIdShape, Path, description = "int_...")),
    responses((status = 200, description = "The auth config, without its secrets", body = crate::views::v3::AuthConfig),
        (status = 400, description = "Not an auth config id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such auth config", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn auth_config(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v3::AuthConfig>> {
    let i = s.kh.integrations().get(&id).await?;
    Ok(Json(auth_config_view(&s.kh, &i).await?))
}

/// `PATCH /auth_configs/{id}`: a new name, settings or scopes; the settings not
/// given stay.
#[utoipa::path(patch, path = "/auth_configs/{id}", tag = "v3.1",
    params(("id" = crate::views::shapes::IntegrationIdShape, Path, description = "int_...")),
    request_body = crate::views::v3::UpdateAuthConfig,
    responses((status = 200, description = "Changed", body = crate::views::v3::Success),
        (status = 400, description = "An invalid field, named; nothing changed", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such auth config", body = crate::views::v1::ErrorBody),
        (status = 409, description = "A URL field (base_url, token_url ...) moved to another host while connected accounts use the auth config: their credentials would go there; nothing changed", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn update_auth_config(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<v3::Success>> {
    if raw.is_empty() {
        return Err(invalid(
            "give the change as a JSON body, such as {\"type\":\"custom\",\"credentials\":{...}}",
        ));
    }
    let request: v3::UpdateAuthConfig = body(&raw)?;
    if let Some(kind) = request
        .r#type
        .as_deref()
        .filter(|t| !matches!(*t, "custom" | "default"))
    {
        return Err(invalid(format!(
            "type {kind:?} is not known: give custom (or default, the same to keyhaven)"
        )));
    }
    let mut change = IntegrationUpdate::new();
    change.name = request.name;
    change.auth_config = request.credentials;
    if let Some(scopes) = request.scopes {
        // Read as the credentials' `scopes` are: a list, or one string.
        change.auth_config.insert("scopes", scopes);
    }
    s.kh.integrations().update(&id, change).await?;
    Ok(Json(v3::Success::new(format!("auth config {id} updated"))))
}

/// `DELETE /auth_configs/{id}`.
#[utoipa::path(delete, path = "/auth_configs/{id}", tag = "v3.1",
    params(("id" = crate::views::shapes::IntegrationIdShape, Path, description = "int_...")),
    responses((status = 200, description = "Deleted", body = crate::views::v3::Success),
        (status = 400, description = "Not an auth config id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such auth config", body = crate::views::v1::ErrorBody),
        (status = 409, description = "It still has connected accounts: delete them first", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn delete_auth_config(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v3::Success>> {
    s.kh.integrations().delete(&id).await?;
    Ok(Json(v3::Success::new(format!("auth config {id} deleted"))))
}

/// `PATCH /auth_configs/{id}/{status}`: `ENABLED` or `DISABLED`.
#[utoipa::path(patch, path = "/auth_configs/{id}/{status}", tag = "v3.1",
    params(("id" = crate::views::shapes::IntegrationIdShape, Path, description = "int_..."),
        ("status" = String, Path, pattern = "^(ENABLED|DISABLED)$", description = "`ENABLED`, or `DISABLED`: no new connection through it until enabled; its accounts keep working")),
    responses((status = 200, description = "Done", body = crate::views::v3::Success),
        (status = 400, description = "Not an auth config id, or neither ENABLED nor DISABLED", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such auth config", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn set_auth_config_status(
    State(s): State<Arc<AppState>>,
    Path((id, status)): Path<(String, String)>,
) -> Result<Json<v3::Success>> {
    let integrations = s.kh.integrations();
    match status.as_str() {
        "ENABLED" => integrations.enable(&id).await?,
        "DISABLED" => integrations.disable(&id).await?,
        _ => {
            return Err(invalid(format!(
                "{status:?} is not a status of an auth config: give ENABLED or DISABLED"
            )));
        }
    };
    Ok(Json(v3::Success::new(format!("auth config {id} {status}"))))
}

// ---------------------------------------------------------------------------------
// Connected accounts

/// The v3 views of accounts.
async fn account_views(kh: &Keyhaven, accounts: &[ConnectedAccount]) -> Vec<v3::Account> {
    crate::api::views_with_integrations(kh, accounts, v3::Account::new).await
}

/// `POST /connected_accounts`: initiate, through an auth config.
#[utoipa::path(post, path = "/connected_accounts", tag = "v3.1",
    request_body = crate::views::v3::CreateAccount,
    responses((status = 201, description = "The new account: `connectionData.val` has its status and, when the user must act, `redirectUrl`", body = crate::views::v3::Initiated),
        (status = 400, description = "An invalid field, named; nothing was stored", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such auth config", body = crate::views::v1::ErrorBody),
        (status = 409, description = "The auth config is disabled", body = crate::views::v1::ErrorBody),
        (status = 503, description = "The provider could not be reached", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn create_account(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<(StatusCode, Json<v3::Initiated>)> {
    let request: v3::CreateAccount = body(&raw)?;
    let out = s.kh.initiate_connection(request.into_request()).await?;
    let account =
        s.kh.connected_accounts()
            .get(out.connected_account_id.as_str())
            .await?;
    Ok((
        StatusCode::CREATED,
        Json(v3::Initiated::new(out, &account.auth_scheme)),
    ))
}

/// Statuses as v3 names them: Composio's `INITIALIZING` and `REVOKED` are valid and
/// match no account of keyhaven's. `None`: a filter that matches nothing.
fn statuses(values: Vec<String>) -> Result<Option<Vec<ConnectionStatus>>> {
    let given = !values.is_empty();
    let mut out = Vec::new();
    for v in values {
        if v.eq_ignore_ascii_case("INITIALIZING") || v.eq_ignore_ascii_case("REVOKED") {
            continue;
        }
        out.push(v.parse::<ConnectionStatus>().map_err(ApiError::from)?);
    }
    Ok(if given && out.is_empty() {
        None
    } else {
        Some(out)
    })
}

/// `GET /connected_accounts`: filters comma-separated, all of them together.
#[utoipa::path(get, path = "/connected_accounts", tag = "v3.1",
    params(
        ("user_ids" = Option<crate::views::shapes::EntityIdList>, Query, description = "Only these users (entities)"),
        ("toolkit_slugs" = Option<crate::views::shapes::AppSlugList>, Query, description = "Only these toolkits (apps)"),
        ("auth_config_ids" = Option<crate::views::shapes::IntegrationIdList>, Query, description = "Only these auth configs (integrations)"),
        ("statuses" = Option<crate::views::shapes::V3StatusList>, Query, description = "Only these statuses; INITIALIZING and REVOKED match none of keyhaven's accounts"),
        ("connected_account_ids" = Option<crate::views::shapes::AccountIdList>, Query, description = "Only these accounts (at most 1000; no further pages)"),
        ("labels" = Option<crate::views::shapes::LabelList>, Query, description = "Only accounts with all these labels (keyhaven's)"),
        ("order_by" = Option<String>, Query, pattern = "^(created_at)?$", description = "`created_at` (the only order keyhaven keeps)"),
        ("order_direction" = Option<String>, Query, pattern = "^(asc|desc)?$", description = "`desc` (newest first, the default) or `asc`"),
        ("cursor" = Option<crate::views::shapes::Cursor>, Query, description = "The `next_cursor` of the previous page"),
        ("limit" = Option<crate::views::shapes::PageLimit>, Query, description = "Page size: 0 or absent gives 100, more than 1000 gives 1000"),
    ),
    responses((status = 200, description = "One page", body = crate::views::v3::AccountPage),
        (status = 400, description = "An invalid filter, named", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn accounts(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<v3::AccountPage>> {
    match q.get("order_by").map(String::as_str) {
        None | Some("" | "created_at") => {}
        Some(other) => {
            return Err(invalid(format!(
                "order_by {other:?}: keyhaven orders accounts by created_at only"
            )));
        }
    }
    let newest_first = match q.get("order_direction").map(String::as_str) {
        None | Some("" | "desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(invalid(format!(
                "order_direction {other:?}: give asc or desc"
            )));
        }
    };
    let Some(statuses) = statuses(list(&q, &["statuses"]))? else {
        return Ok(Json(v3::AccountPage::new(Vec::new(), None)));
    };
    let filter = AccountFilter {
        entity_ids: parse_all(list(&q, &["user_ids"]), |v| EntityId::new(v))?,
        apps: parse_all(list(&q, &["toolkit_slugs"]), |v| AppSlug::new(v))?,
        integration_ids: parse_all(list(&q, &["auth_config_ids"]), IntegrationId::parse)?,
        statuses,
        labels: parse_all(list(&q, &["labels"]), |v| Label::new(v))?,
        after: q
            .get("cursor")
            .filter(|c| !c.is_empty())
            .map(|c| ConnectedAccountId::parse(c))
            .transpose()?,
        limit: limit_of(&q)?.unwrap_or(0),
        newest_first,
    };
    let ids = parse_all(
        list(&q, &["connected_account_ids"]),
        ConnectedAccountId::parse,
    )?;
    if ids.is_empty() {
        let accounts = s.kh.connected_accounts();
        let page = accounts.list_cached(&filter).await?;
        let total = accounts.count_cached(&filter).await?;
        return Ok(Json(
            v3::AccountPage::new(
                account_views(&s.kh, &page.items).await,
                page.next_cursor.clone(),
            )
            .of_total(total, filter.effective_limit()),
        ));
    }
    if ids.len() > AccountFilter::MAX_LIMIT {
        return Err(invalid(format!(
            "connected_account_ids: at most {} ids",
            AccountFilter::MAX_LIMIT
        )));
    }
    filter.check()?;
    let mut found = Vec::new();
    for id in &ids {
        match s.kh.connected_accounts().get_cached(id.as_str()).await {
            Ok(a)
                if filter.matches(&a) && !found.iter().any(|f: &ConnectedAccount| f.id == a.id) =>
            {
                found.push(a);
            }
            Ok(_) => {}
            Err(e) if e.kind() == keyhaven::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    if newest_first {
        found.reverse();
    }
    Ok(Json(v3::AccountPage::new(
        account_views(&s.kh, &found).await,
        None,
    )))
}

/// `GET /connected_accounts/{id}`.
#[utoipa::path(get, path = "/connected_accounts/{id}", tag = "v3.1",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "The account, never a secret", body = crate::views::v3::Account),
        (status = 400, description = "Not an account id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn account(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v3::Account>> {
    let a = s.kh.connected_accounts().get_cached(&id).await?;
    let integration =
        s.kh.integrations()
            .get_cached(a.integration_id.as_str())
            .await
            .ok();
    Ok(Json(v3::Account::new(&a, integration.as_ref())))
}

/// `DELETE /connected_accounts/{id}`: answers JSON, as the SDKs need.
#[utoipa::path(delete, path = "/connected_accounts/{id}", tag = "v3.1",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "Deleted; its credentials are revoked at the provider", body = crate::views::v3::Success),
        (status = 400, description = "Not an account id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn delete_account(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v3::Success>> {
    crate::api::delete_account_of(&s, &id).await?;
    Ok(Json(v3::Success::new(format!(
        "connected account {id} deleted"
    ))))
}

/// `PATCH /connected_accounts/{id}/status`: `{"enabled": false}` disables,
/// `{"enabled": true}` enables.
#[utoipa::path(patch, path = "/connected_accounts/{id}/status", tag = "v3.1",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
    request_body = crate::views::v3::SetEnabled,
    responses((status = 200, description = "Done", body = crate::views::v3::Success),
        (status = 400, description = "Not an account id, or no `enabled`", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody),
        (status = 409, description = "Not possible in the account's status (the message says what to do)", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn set_account_status(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<v3::Success>> {
    let request: v3::SetEnabled = body(&raw)?;
    let accounts = s.kh.connected_accounts();
    let a = if request.enabled {
        accounts.enable(&id).await?
    } else {
        accounts.disable(&id).await?
    };
    Ok(Json(v3::Success::new(format!(
        "connected account {id} is {}",
        a.status
    ))))
}

/// `POST /connected_accounts/{id}/refresh`: refreshes the credentials now.
#[utoipa::path(post, path = "/connected_accounts/{id}/refresh", tag = "v3.1",
    params(("id" = crate::views::shapes::AccountId, Path, description = "ca_...")),
    responses((status = 200, description = "Refreshed: the account's status afterwards", body = crate::views::v3::Refreshed),
        (status = 400, description = "Not an account id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody),
        (status = 409, description = "Not possible in the account's status, or its scheme has nothing to refresh", body = crate::views::v1::ErrorBody),
        (status = 422, description = "The provider refused: the account is now EXPIRED", body = crate::views::v1::ErrorBody),
        (status = 503, description = "The provider could not be reached: the account stays as it was", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn refresh_account(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v3::Refreshed>> {
    let a = s.kh.connected_accounts().refresh(&id).await?;
    Ok(Json(v3::Refreshed {
        id: a.id,
        status: a.status,
    }))
}

/// `POST /connected_accounts/link`: a single-use, expiring link to keyhaven's page,
/// where the user connects (at the provider, or in the connect form) and then lands
/// on `callback_url`.
#[utoipa::path(post, path = "/connected_accounts/link", tag = "v3.1",
    request_body = crate::views::v3::CreateLink,
    responses((status = 201, description = "The link, and the INITIATED account it completes", body = crate::views::v3::Link),
        (status = 400, description = "An invalid field, named; nothing was stored", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such auth config", body = crate::views::v1::ErrorBody),
        (status = 409, description = "The auth config is disabled", body = crate::views::v1::ErrorBody),
        (status = 503, description = "The provider could not be reached", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn create_link(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<(StatusCode, Json<v3::Link>)> {
    let request: v3::CreateLink = body(&raw)?;
    let link = s.kh.create_link(request.into_request()).await?;
    let url = format!(
        "{}/link/{}",
        s.config.public_url.as_str().trim_end_matches('/'),
        link.token
    );
    Ok((
        StatusCode::CREATED,
        Json(v3::Link {
            connected_account_id: link.connected_account_id,
            link_token: link.token,
            redirect_url: url,
            expires_at: link.expires_at,
        }),
    ))
}

/// `POST /tools/execute/proxy`: a request to the account's API with its
/// credentials, as Composio's current SDKs send it (`tools.proxy`,
/// `tools.proxyExecute`); the same proxy as `POST
/// /api/v1/connectedAccounts/{id}/proxy`.
#[utoipa::path(post, path = "/tools/execute/proxy", tag = "v3.1",
    request_body = crate::views::v3::ToolsProxy,
    responses((status = 200, description = "The API's answer, whatever its status: `{data, status, headers}`", body = crate::proxy::ComposioProxyAnswer),
        (status = 400, description = "No connected_account_id, an endpoint outside the account's API, a refused method, header or parameter type, a private host from the account's parameters", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody),
        (status = 409, description = "The account is not ACTIVE, its integration has no base_url, or it lacks a parameter of it", body = crate::views::v1::ErrorBody),
        (status = 422, description = "A refresh was due and the provider refused it", body = crate::views::v1::ErrorBody),
        (status = 502, description = "The API's answer is over the size limit", body = crate::views::v1::ErrorBody),
        (status = 503, description = "The API could not be reached", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn proxy(
    State(s): State<Arc<AppState>>,
    caller: crate::api::Caller,
    raw: Bytes,
) -> Result<Json<crate::proxy::ComposioProxyAnswer>> {
    let r: v3::ToolsProxy = body(&raw)?;
    let id = r.connected_account_id.filter(|id| !id.is_empty()).ok_or_else(|| {
        invalid("connected_account_id is required: keyhaven sends requests with a connected account's credentials (custom_connection_data is not taken)")
    })?;
    crate::proxy::composio(&s, caller, &id, r.endpoint, r.method, r.body, r.parameters).await
}
