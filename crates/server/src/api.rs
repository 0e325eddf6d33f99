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
    ConnectionStatus, EntityId, Error, Integration, IntegrationId, Label, NewIntegration,
};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::ApiError;

type Result<T> = std::result::Result<T, ApiError>;

/// Parses a JSON body with keyhaven's own error messages (never quoting secrets).
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T> {
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

fn list(query: &HashMap<String, String>, keys: &[&str]) -> Vec<String> {
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

/// An app as Composio's `AppModel` and keyhaven's catalogue describe it.
fn app_view(entry: &AppEntry) -> Value {
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
        "auth_schemes": entry.schemes.iter().map(|s| json!({"mode": s, "name": s})).collect::<Vec<_>>(),
        "schemes": entry.schemes,
        "apiBaseUrl": entry.api_base_url,
        "params": entry.params,
        "oauth2": entry.oauth2,
    })
}

/// `GET /api/v1/apps?query=`: the catalogue, searched.
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
            .map(|e| app_view(e))
            .collect();
    Json(json!({"items": items, "totalPages": 1}))
}

/// `GET /api/v1/apps/{slug}`.
pub(crate) async fn app(
    State(s): State<Arc<AppState>>,
    Path(slug): Path<String>,
) -> Result<Json<Value>> {
    s.kh.catalog()
        .get(&slug)
        .map(|e| Json(app_view(e)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("app {slug:?} is not in the catalogue; GET /api/v1/apps lists them"),
            )
        })
}

/// `GET /api/v1/client/auth/client_info`: what Composio's client calls to check its key.
pub(crate) async fn client_info() -> Json<Value> {
    Json(json!({"client": {"id": "keyhaven", "name": "keyhaven"}, "apiKey": {"name": "admin"}}))
}

fn integration_view(s: &AppState, i: &Integration) -> Value {
    let mut v = serde_json::to_value(i).unwrap_or_default();
    let fields = s
        .kh
        .schemes()
        .get(&i.auth_scheme)
        .map(|scheme| {
            scheme
                .spec()
                .params
                .iter()
                .map(|f| json!({"name": f.name, "displayName": f.name, "description": f.description, "required": f.required, "is_secret": f.secret, "type": "string"}))
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
pub(crate) async fn create_integration(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<Response> {
    let new: NewIntegration = body(&raw)?;
    let created = s.kh.integrations().create(new).await?;
    Ok((StatusCode::CREATED, Json(integration_view(&s, &created))).into_response())
}

/// `GET /api/v1/integrations?appName=`.
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
            .map(|i| integration_view(&s, i))
            .collect();
    Ok(Json(json!({"items": items, "totalPages": 1})))
}

/// `GET /api/v1/integrations/{id}`.
pub(crate) async fn integration(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(integration_view(
        &s,
        &s.kh.integrations().get(&id).await?,
    )))
}

/// `DELETE /api/v1/integrations/{id}`.
pub(crate) async fn delete_integration(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    s.kh.integrations().delete(&id).await?;
    Ok(Json(json!({"status": "success", "id": id})))
}

/// A connected account with Composio's field names added, and never a secret.
async fn account_view(
    s: &AppState,
    a: &ConnectedAccount,
    bases: &mut HashMap<IntegrationId, Option<String>>,
) -> Value {
    let base = match bases.get(&a.integration_id) {
        Some(b) => b.clone(),
        None => {
            let b =
                s.kh.integrations()
                    .get(a.integration_id.as_str())
                    .await
                    .ok()
                    .and_then(|i| {
                        i.config_str("base_url")
                            .map(|u| keyhaven::fill_template(u, &a.params))
                    });
            bases.insert(a.integration_id.clone(), b.clone());
            b
        }
    };
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
pub(crate) async fn initiate(State(s): State<Arc<AppState>>, raw: Bytes) -> Result<Json<Value>> {
    let request: ConnectionRequest = body(&raw)?;
    let out = s.kh.initiate_connection(request).await?;
    Ok(Json(serde_json::to_value(out).unwrap_or_default()))
}

/// `GET /api/v1/connectedAccounts`: filters `entityId`/`user_uuid`, `appNames`,
/// `integrationId`, `status`, `labels` (all must match), `cursor`, `limit`/`pageSize`.
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
        statuses: parse_all(list(&q, &["status", "statuses"]), |s| {
            s.parse::<ConnectionStatus>()
        })?,
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
        items.push(account_view(&s, a, &mut bases).await);
    }
    Ok(Json(
        json!({"items": items, "nextCursor": page.next_cursor, "totalPages": 1}),
    ))
}

/// `GET /api/v1/connectedAccounts/{id}`.
pub(crate) async fn account(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let a = s.kh.connected_accounts().get(&id).await?;
    Ok(Json(account_view(&s, &a, &mut HashMap::new()).await))
}

/// `DELETE /api/v1/connectedAccounts/{id}`.
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
    Ok(Json(account_view(&s, &a, &mut HashMap::new()).await))
}

/// `POST /api/v1/connectedAccounts/{id}/{action}`: `refresh`, `enable`, `disable`.
pub(crate) async fn account_action(
    State(s): State<Arc<AppState>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let accounts = s.kh.connected_accounts();
    let a = match action.as_str() {
        "refresh" => accounts.refresh(&id).await?,
        "enable" => accounts.enable(&id).await?,
        "disable" => accounts.disable(&id).await?,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no action {other:?} on connected accounts; use refresh, enable or disable"
                ),
            ));
        }
    };
    Ok(Json(account_view(&s, &a, &mut HashMap::new()).await))
}
