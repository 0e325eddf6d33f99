//! The webhook outbox over HTTP: the configured webhooks, their deliveries with
//! their tries and outcomes, and a call to deliver one again.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use keyhaven::{DeliveryFilter, DeliveryState};

use crate::AppState;
use crate::api::{Result, bounded_limit};
use crate::error::ApiError;
use crate::views::v1;

/// The most deliveries one listing answers.
const LIST_MAX: usize = 1000;

/// `GET /api/v1/webhooks`: the webhooks this server posts events to.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "The configured webhooks", body = v1::WebhookList),
        (status = 401, description = "No or a wrong admin key", body = v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn webhooks(State(s): State<Arc<AppState>>) -> Json<v1::WebhookList> {
    Json(v1::WebhookList {
        items: s
            .config
            .webhooks
            .iter()
            .map(|h| v1::WebhookView {
                key: h.key(),
                url: keyhaven::request::rules::shown(&h.url),
                events: h.events.iter().map(|k| k.as_str().to_owned()).collect(),
            })
            .collect(),
    })
}

/// `GET /api/v1/webhooks/deliveries`: deliveries, the newest first, with their
/// tries, last status and error; filters `webhook` (a key), `state`
/// (`pending`, `delivered`, `failed`), `eventId`, `connectedAccountId`; pages with
/// `cursor` (the `nextCursor` of the page before) and `limit` (default 100, at
/// most 1,000).
#[utoipa::path(get, path = "/api/v1/webhooks/deliveries", tag = "webhooks",
    params(
        ("webhook" = Option<String>, Query, description = "One webhook's (its key, `wh_...`, see GET /api/v1/webhooks)"),
        ("state" = Option<v1::DeliveryStateName>, Query, description = "`pending`, `delivered` or `failed`"),
        ("eventId" = Option<String>, Query, description = "One event's (`evt_...`)"),
        ("connectedAccountId" = Option<String>, Query, description = "One account's events'"),
        ("cursor" = Option<i64>, Query, description = "The nextCursor of the page before"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
    ),
    responses((status = 200, description = "The deliveries, newest first", body = v1::DeliveryList),
        (status = 400, description = "An unknown state, a bad cursor or limit", body = v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = v1::ErrorBody),
        (status = 503, description = "The store cannot be read", body = v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn deliveries(
    State(s): State<Arc<AppState>>,
    Query(mut q): Query<HashMap<String, String>>,
) -> Result<Json<v1::DeliveryList>> {
    // An empty filter is no filter.
    q.retain(|_, v| !v.is_empty());
    let state = q
        .get("state")
        .map(|v| {
            DeliveryState::parse(v).ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown delivery state {v:?}; the states are pending, delivered, failed"
                ))
            })
        })
        .transpose()?;
    let before = q
        .get("cursor")
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                ApiError::invalid("invalid cursor: give the nextCursor of the page before")
            })
        })
        .transpose()?;
    let limit = bounded_limit(&q, LIST_MAX)?.unwrap_or(100);
    let filter = DeliveryFilter {
        webhook: q.get("webhook").cloned(),
        state,
        event_id: q.get("eventId").cloned(),
        account_id: q.get("connectedAccountId").cloned(),
        before,
        limit: limit + 1,
    };
    let mut found =
        s.kh.store()
            .list_deliveries(&filter)
            .await
            .map_err(keyhaven::Error::from)?;
    let next_cursor = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|d| d.id.to_string())
    } else {
        None
    };
    let urls = shown_urls(&s);
    Ok(Json(v1::DeliveryList {
        items: found.into_iter().map(|d| view(&urls, d)).collect(),
        next_cursor,
    }))
}

/// `POST /api/v1/webhooks/deliveries/{id}/redeliver`: makes a delivery pending
/// again, due now, with its tries counted from zero (the same event, the same event
/// id: receivers that deduplicate ignore it when they have it).
#[utoipa::path(post, path = "/api/v1/webhooks/deliveries/{id}/redeliver", tag = "webhooks",
    params(("id" = i64, Path, description = "The delivery's id")),
    responses((status = 200, description = "The delivery, pending again", body = v1::DeliveryView),
        (status = 400, description = "Not a delivery id", body = v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = v1::ErrorBody),
        (status = 404, description = "No such delivery (or its event was purged)", body = v1::ErrorBody)),
    security(("admin_key" = [])))]
pub(crate) async fn redeliver(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<v1::DeliveryView>> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::invalid("invalid delivery id: give the id of a delivery"))?;
    let delivery = s
        .kh
        .store()
        .redeliver(id, s.kh.now())
        .await
        .map_err(keyhaven::Error::from)?
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                format!("no webhook delivery {id}; list them with GET /api/v1/webhooks/deliveries"),
            )
        })?;
    tracing::info!(delivery = id, event = %delivery.event.id, "webhook delivery queued again");
    Ok(Json(view(&shown_urls(&s), delivery)))
}

/// The configured webhooks' URLs as shown (no query, no user name), by key.
fn shown_urls(s: &AppState) -> HashMap<String, String> {
    s.config
        .webhooks
        .iter()
        .map(|h| (h.key(), keyhaven::request::rules::shown(&h.url)))
        .collect()
}

fn view(urls: &HashMap<String, String>, d: keyhaven::Delivery) -> v1::DeliveryView {
    v1::DeliveryView {
        id: d.id,
        url: urls.get(&d.webhook).cloned(),
        webhook: d.webhook,
        event_id: d.event.id.clone(),
        event: d.event,
        state: d.state.as_str().to_owned(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_status: d.last_status,
        last_error: d.last_error,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}
