//! The v2 routes of Composio's JS SDK 0.5: the same library calls as v1, with the
//! nested request shapes and answers of `views::v2`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;

use crate::AppState;
use crate::api::{Result, body};
use crate::error::ApiError;
use crate::views::v2;

/// `POST /api/v2/connectedAccounts/initiateConnection`: initiate, as the JS SDK 0.5's
/// `connectedAccounts.initiate` and `entity.initiateConnection` call it.
#[utoipa::path(post, path = "/api/v2/connectedAccounts/initiateConnection", tag = "connectedAccounts",
    request_body = crate::views::v2::InitiateConnection,
    responses((status = 200, description = "`connectionResponse`: the new account's status and where to send the user", body = crate::views::v2::Initiated),
        (status = 400, description = "An invalid field, named; nothing was stored", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such integration, or an app that is neither in the catalogue nor has an integration, named without integrationSecrets to make one (the message names the closest catalogue apps)", body = crate::views::v1::ErrorBody),
        (status = 503, description = "The provider could not be reached", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn initiate(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<Json<v2::Initiated>> {
    let request: v2::InitiateConnection = body(&raw)?;
    let out = s.kh.initiate_connection(request.into()).await?;
    Ok(Json(v2::Initiated {
        connection_response: out.into(),
    }))
}

/// `POST /api/v2/integrations/create`: an integration, as the JS SDK 0.5's
/// `integrations.create` makes one (it reads it back with v1).
#[utoipa::path(post, path = "/api/v2/integrations/create", tag = "integrations",
    request_body = crate::views::v2::CreateIntegration,
    responses((status = 200, description = "The new integration's id", body = crate::views::v2::IntegrationCreated),
        (status = 400, description = "An invalid field, named", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn create_integration(
    State(s): State<Arc<AppState>>,
    raw: Bytes,
) -> Result<Json<v2::IntegrationCreated>> {
    let request: v2::CreateIntegration = body(&raw)?;
    let new = request.into_new().ok_or_else(|| {
        ApiError::invalid("app.uniqueKey is required: the app's slug, such as github")
    })?;
    let created = s.kh.integrations().create(new).await?;
    Ok(Json(v2::IntegrationCreated {
        integration_id: created.id.to_string(),
    }))
}

/// `POST /api/v2/actions/proxy`: a request to the account's API with its
/// credentials, as Composio's JS SDK 0.5 (`executeRequest`) and Python client 0.6
/// send it; the same proxy as `POST /api/v1/connectedAccounts/{id}/proxy`.
#[utoipa::path(post, path = "/api/v2/actions/proxy", tag = "connectedAccounts",
    request_body = crate::views::v2::ActionsProxy,
    responses((status = 200, description = "The API's answer, whatever its status: `{data, status, headers}`", body = crate::proxy::ComposioProxyAnswer),
        (status = 400, description = "An endpoint outside the account's API, a refused method, header or parameter type, a private host from the account's parameters", body = crate::views::v1::ErrorBody),
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
    let r: v2::ActionsProxy = body(&raw)?;
    crate::proxy::composio(
        &s,
        caller,
        &r.connected_account_id,
        r.endpoint,
        r.method,
        r.body,
        r.parameters,
    )
    .await
}
