//! Server-sent events: the events of one account, or of all, as they happen on any
//! instance sharing the store.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
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

/// One event as an SSE event, named by its type, its id the event's.
fn sse(e: &AccountEvent) -> Event {
    Event::default()
        .event(e.kind.as_str())
        .id(e.id.clone())
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// The most events replayed for a `Last-Event-ID`.
const REPLAY_MAX: usize = 10_000;

/// What a reconnecting listener missed: the kept events after `last` (its
/// `Last-Event-ID`), oldest first, at most [`REPLAY_MAX`], and when there were more,
/// the `lagged` event that says so. `Ok(None)`: `last` is no longer kept (or never
/// was): the listener must read the current state.
async fn missed(
    s: &AppState,
    last: &str,
    max: usize,
) -> Result<Option<(Vec<AccountEvent>, Option<Event>)>> {
    const PAGE: usize = 500;
    let mut out: Vec<AccountEvent> = Vec::new();
    let mut after = last.to_owned();
    loop {
        // One more than may be replayed, to know whether there are more.
        let want = PAGE
            .min(max.saturating_add(1).saturating_sub(out.len()))
            .max(1);
        match s.kh.events_after(Some(&after), want).await {
            Ok(page) => {
                let done = page.len() < want;
                if let Some(e) = page.last() {
                    after = e.id.clone();
                }
                out.extend(page);
                if out.len() > max {
                    // More were missed than are replayed at once: the listener is told
                    // where the replay stopped, to resume from there.
                    out.truncate(max);
                    let stopped = out.last().map_or(last, |e| e.id.as_str()).to_owned();
                    return Ok(Some((out, Some(cut(&stopped)))));
                }
                if done {
                    return Ok(Some((out, None)));
                }
            }
            Err(keyhaven::Error::NotFound { .. }) if out.is_empty() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The `Last-Event-ID` a reconnecting `EventSource` sends.
fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The events `filter` lets through, as SSE events: first those of `replay` (what
/// a reconnecting listener missed), then those heard live, less the ones already
/// replayed; a listener that fell behind is told how many it missed (`lagged`), and
/// `cut` follows a replay that was cut short. A one-account stream ends with its
/// deletion.
fn feed(
    receiver: Receiver<AccountEvent>,
    filter: Filter,
    replay: Vec<AccountEvent>,
    cut: Option<Event>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = std::result::Result<Event, Infallible>> {
    let filter = Arc::new(filter);
    let replay: Vec<AccountEvent> = replay.into_iter().filter(|e| filter.matches(e)).collect();
    let replayed: HashSet<String> = replay.iter().map(|e| e.id.clone()).collect();
    let ended = filter.account.is_some() && replay.iter().any(|e| e.kind == EventKind::Deleted);
    let first = stream::iter(
        replay
            .iter()
            .map(sse)
            .chain(cut)
            .map(Ok)
            .collect::<Vec<_>>(),
    );
    let live = stream::unfold((!ended).then_some((receiver, closing)), move |state| {
        let filter = filter.clone();
        let replayed = replayed.clone();
        async move {
            let (mut receiver, mut closing) = state?;
            loop {
                let next = tokio::select! {
                    next = receiver.recv() => next,
                    // The server is stopping: end the stream.
                    _ = closing.wait_for(|c| *c) => return None,
                };
                match next {
                    Ok(e) if filter.matches(&e) && !replayed.contains(&e.id) => {
                        let last = filter.account.is_some() && e.kind == EventKind::Deleted;
                        return Some((Ok(sse(&e)), (!last).then_some((receiver, closing))));
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
    });
    first.chain(live)
}

/// Where a listener starts.
enum Resume {
    /// It gave no `Last-Event-ID`.
    Fresh,
    /// The kept events after its `Last-Event-ID`, to send first, and the `lagged`
    /// event to send after them when they were cut.
    Missed(Vec<AccountEvent>, Option<Event>),
    /// Its `Last-Event-ID` is no longer kept: this `lagged` event, then the current
    /// state.
    Lost(Event),
}

/// Where the listener of `headers` starts (see [`Resume`]).
async fn resume(s: &AppState, headers: &HeaderMap) -> Result<Resume> {
    let Some(last) = last_event_id(headers) else {
        return Ok(Resume::Fresh);
    };
    Ok(match missed(s, &last, REPLAY_MAX).await? {
        Some((replay, cut)) => Resume::Missed(replay, cut),
        None => Resume::Lost(reset(&last)),
    })
}

/// The event after a replay cut at [`REPLAY_MAX`] events, the last of them `last`.
fn cut(last: &str) -> Event {
    lagged(
        last,
        &format!(
            "more than {REPLAY_MAX} events were missed and only those were replayed; reconnect with this lastEventId as Last-Event-ID for the next ones, or read the current state"
        ),
    )
}

/// The event a listener gets when its `Last-Event-ID` is no longer kept.
fn reset(last: &str) -> Event {
    lagged(
        last,
        "that event is no longer kept (older than the event retention); read the current state",
    )
}

/// A `lagged` event for a listener whose events after `last` are not all sent, and
/// why.
fn lagged(last: &str, reason: &str) -> Event {
    Event::default().event("lagged").data(
        serde_json::json!({
            "missed": null,
            "lastEventId": last,
            "reason": reason,
        })
        .to_string(),
    )
}

fn keep_alive() -> KeepAlive {
    KeepAlive::new().interval(Duration::from_secs(15))
}

/// `GET /api/v1/connectedAccounts/{id}/events`: first a `snapshot` event with the
/// account as it is, then every event of the account as it happens on any instance
/// (`connection.active`, `connection.failed`, ...); the stream ends after
/// `connection.deleted`. A listener that reconnects with `Last-Event-ID` gets the
/// account's events it missed instead of the snapshot (or, when that event is no
/// longer kept, a `lagged` event and the snapshot).
#[utoipa::path(get, path = "/api/v1/connectedAccounts/{id}/events", tag = "events",
    params(("id" = crate::views::shapes::AccountId, Path, description = "The connected account's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event heard: the events after it are replayed first")),
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
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    // Listen first, so that nothing happening while the snapshot or the missed
    // events are read is lost.
    let receiver = s.kh.events();
    let account = s.kh.connected_accounts().get(&id).await?;
    let (mut first, replay, cut, snapshot) = match resume(&s, &headers).await? {
        Resume::Fresh => (Vec::new(), Vec::new(), None, true),
        Resume::Missed(replay, cut) => (Vec::new(), replay, cut, false),
        Resume::Lost(lagged) => (vec![lagged], Vec::new(), None, true),
    };
    if snapshot {
        let view = account_view(&s.kh, &account).await;
        first.push(
            Event::default()
                .event("snapshot")
                .data(serde_json::to_string(&view).unwrap_or_default()),
        );
    }
    let filter = Filter {
        account: Some(account.id),
        ..Filter::default()
    };
    let events = stream::iter(first.into_iter().map(Ok)).chain(feed(
        receiver,
        filter,
        replay,
        cut,
        s.closing.subscribe(),
    ));
    Ok(Sse::new(events).keep_alive(keep_alive()))
}

/// `GET /api/v1/events`: every event, as it happens on any instance; filters
/// `entityId`, `appNames`, `types` (such as `connection.active,connection.failed`).
/// A listener that reconnects with `Last-Event-ID` gets the events it missed first
/// (or, when that event is no longer kept, a `lagged` event).
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(
        ("entityId" = Option<String>, Query, description = "Only these entities (comma-separated)"),
        ("appNames" = Option<String>, Query, description = "Only these apps (comma-separated)"),
        ("types" = Option<crate::views::shapes::EventTypeList>, Query, description = "Only these event types (comma-separated)"),
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event heard: the events after it are replayed first"),
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
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let receiver = s.kh.events();
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
    let (first, replay, cut) = match resume(&s, &headers).await? {
        Resume::Fresh => (Vec::new(), Vec::new(), None),
        Resume::Missed(replay, cut) => (Vec::new(), replay, cut),
        Resume::Lost(lagged) => (vec![Ok(lagged)], Vec::new(), None),
    };
    let events =
        stream::iter(first).chain(feed(receiver, filter, replay, cut, s.closing.subscribe()));
    Ok(Sse::new(events).keep_alive(keep_alive()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyhaven::{ConnectionRequest, Keyhaven, MemoryStore};

    #[tokio::test]
    async fn a_replay_cut_short_says_where_it_stopped() {
        let kh = Keyhaven::builder()
            .store(MemoryStore::new())
            .build()
            .expect("a keyhaven");
        for key in ["sk-1", "sk-2", "sk-3", "sk-4"] {
            kh.initiate_connection(
                ConnectionRequest::for_app("openai")
                    .scheme("API_KEY")
                    .param("api_key", key),
            )
            .await
            .expect("connected");
        }
        let s = AppState::new(kh, crate::AdminKey::from_plain("kh_events"));
        let all = s.kh.events_after(None, 100).await.expect("events kept");
        assert!(all.len() >= 4, "{}", all.len());
        let ids = |events: &[AccountEvent]| events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        let after_first = ids(&all[1..]);
        // All that was missed, when it fits (also exactly).
        for max in [all.len() - 1, all.len() + 5] {
            let (replay, cut) = missed(&s, &all[0].id, max)
                .await
                .expect("read")
                .expect("kept");
            assert_eq!(ids(&replay), after_first, "max {max}");
            assert!(cut.is_none(), "max {max}");
        }
        // More than fits: the first ones, then a `lagged` event naming the last.
        let (replay, cut) = missed(&s, &all[0].id, 2)
            .await
            .expect("read")
            .expect("kept");
        assert_eq!(ids(&replay), ids(&all[1..3]));
        let cut = format!("{:?}", cut.expect("told"));
        assert!(
            cut.contains("lagged") && cut.contains(all[2].id.as_str()),
            "{cut}"
        );
        // An unknown id: the listener must read the current state.
        assert!(missed(&s, "ev_unknown", 10).await.expect("read").is_none());
    }
}
