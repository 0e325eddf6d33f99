//! Server-sent events: the events of one account, or of all, as they happen on any
//! instance sharing the store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use keyhaven::{AccountEvent, ConnectedAccountId, EventKind};
use tokio::sync::broadcast::{Receiver, error::RecvError};

use crate::AppState;
use crate::api::{Result, account_view, list};
use crate::error::ApiError;

/// Which events a stream carries.
#[derive(Debug, Default)]
struct Filter {
    account: Option<ConnectedAccountId>,
    entities: Vec<String>,
    apps: Vec<String>,
    kinds: Vec<EventKind>,
}

impl Filter {
    fn matches(&self, e: &AccountEvent) -> bool {
        self.account
            .as_ref()
            .is_none_or(|a| *a == e.connected_account_id)
            && (self.entities.is_empty() || self.entities.iter().any(|x| x == e.entity_id.as_str()))
            && (self.apps.is_empty() || self.apps.iter().any(|x| x == e.app_name.as_str()))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
    }
}

/// The events `filter` lets through, as SSE events; a listener that fell behind is
/// told how many it missed (`lagged`). A one-account stream ends with its deletion.
fn feed(
    receiver: Receiver<AccountEvent>,
    filter: Filter,
    closing: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    let filter = Arc::new(filter);
    stream::unfold(Some((receiver, closing)), move |state| {
        let filter = filter.clone();
        async move {
            let (mut receiver, mut closing) = state?;
            loop {
                let next = tokio::select! {
                    next = receiver.recv() => next,
                    // The server is stopping: end the stream.
                    _ = closing.wait_for(|c| *c) => return None,
                };
                match next {
                    Ok(e) if filter.matches(&e) => {
                        let last = filter.account.is_some() && e.kind == EventKind::Deleted;
                        let event = Event::default()
                            .event(e.kind.as_str())
                            .id(e.id.clone())
                            .data(serde_json::to_string(&e).unwrap_or_default());
                        return Some((Ok(event), (!last).then_some((receiver, closing))));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        let event = Event::default()
                            .event("lagged")
                            .data(serde_json::json!({"missed": n}).to_string());
                        return Some((Ok(event), Some((receiver, closing))));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}

fn keep_alive() -> KeepAlive {
    KeepAlive::new().interval(Duration::from_secs(15))
}

/// `GET /api/v1/connectedAccounts/{id}/events`: first a `snapshot` event with the
/// account as it is, then every event of the account as it happens on any instance
/// (`connection.active`, `connection.failed`, ...); the stream ends after
/// `connection.deleted`.
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}/events", tag = "events",
    params(("id" = crate::views::shapes::AccountId, Path, description = "The connected account's id")),
    responses(
        (status = 200, description = "An event stream: `snapshot` (the account), then its events, each an AccountEvent", content_type = "text/event-stream", body = crate::views::shapes::AccountStreamEvent),
        (status = 400, description = "Not an account id", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
        (status = 404, description = "No such account", body = crate::views::v1::ErrorBody),
    ),
    security(("admin_key" = [])))]
pub(crate) async fn account_events(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    // Listen first, so that nothing happening while the snapshot is read is missed.
    let receiver = s.kh.events();
    let account = s.kh.connected_accounts().get(&id).await?;
    let view = account_view(&s.kh, &account).await;
    let snapshot = Event::default()
        .event("snapshot")
        .data(serde_json::to_string(&view).unwrap_or_default());
    let filter = Filter {
        account: Some(account.id),
        ..Filter::default()
    };
    let events = stream::once(async move { Ok(snapshot) }).chain(feed(
        receiver,
        filter,
        s.closing.subscribe(),
    ));
    Ok(Sse::new(events).keep_alive(keep_alive()))
}

/// `GET /api/v1/events`: every event, as it happens on any instance; filters
/// `entityId`, `appNames`, `types` (such as `connection.active,connection.failed`).
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(
        ("entityId" = Option<String>, Query, description = "Only these entities (comma-separated)"),
        ("appNames" = Option<String>, Query, description = "Only these apps (comma-separated)"),
        ("types" = Option<crate::views::shapes::EventTypeList>, Query, description = "Only these event types (comma-separated)"),
    ),
    responses(
        (status = 200, description = "An event stream of AccountEvents", content_type = "text/event-stream", body = crate::views::shapes::StreamEvent),
        (status = 400, description = "An unknown event type", body = crate::views::v1::ErrorBody),
        (status = 401, description = "No or a wrong admin key", body = crate::views::v1::ErrorBody),
    ),
    security(("admin_key" = [])))]
pub(crate) async fn all_events(
    State(s): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let kinds = list(&q, &["types", "type"])
        .into_iter()
        .map(|k| {
            EventKind::parse(&k).ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown event type {k:?}; the types are {}",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let filter = Filter {
        account: None,
        entities: list(&q, &["entityId", "entityIds", "user_uuid"]),
        apps: list(&q, &["appNames", "appName"]),
        kinds,
    };
    Ok(Sse::new(feed(s.kh.events(), filter, s.closing.subscribe())).keep_alive(keep_alive()))
}
