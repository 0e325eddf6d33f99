//! The event log and the webhook outbox, as a store keeps them.
//!
//! Every event is written in the same transaction as the status change it tells
//! of (see [`Store::insert_account`](crate::Store::insert_account) and its
//! siblings), so a change committed is an event kept, whatever happens to the
//! process next. Webhook deliveries are rows made from those events for each
//! webhook, claimed by one instance at a time, retried with back-off, and kept
//! with their outcome.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::{AccountEvent, EventKind};

/// A webhook as the outbox knows it: a stable key and the kinds it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// Names the webhook across restarts and instances (the server derives it from
    /// the URL). Deliveries are made and claimed per key.
    pub key: String,
    /// The kinds it receives; empty: all.
    pub kinds: Vec<EventKind>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet: due at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver refused it (a 4xx other than 408 and 429), or every try failed.
    Failed,
}

impl DeliveryState {
    /// The name stored and shown: `pending`, `delivered`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }
}

/// One event for one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Its number in the store.
    pub id: i64,
    /// The webhook's key ([`WebhookTarget::key`]).
    pub webhook: String,
    /// The event posted.
    pub event: AccountEvent,
    /// Where it stands.
    pub state: DeliveryState,
    /// Tries made (a claim counts as a try).
    pub attempts: u32,
    /// When a pending delivery is due.
    pub next_attempt_at: DateTime<Utc>,
    /// The receiver's last HTTP status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last try failed (never a URL's query or a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The claim a delivery worker holds on it (given back with the outcome).
    #[serde(skip)]
    pub claim: Option<String>,
}

/// How a try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered {
        /// Its status.
        status: u16,
    },
    /// Try again at `at`.
    Retry {
        /// When.
        at: DateTime<Utc>,
        /// The receiver's status, if it answered.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
    /// Not tried again.
    Failed {
        /// The receiver's status, if it answered.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

impl DeliveryOutcome {
    /// The longest error kept of a try.
    pub const MAX_ERROR_CHARS: usize = 500;

    /// Where the delivery stands after this try.
    pub fn state(&self) -> DeliveryState {
        match self {
            Self::Delivered { .. } => DeliveryState::Delivered,
            Self::Retry { .. } => DeliveryState::Pending,
            Self::Failed { .. } => DeliveryState::Failed,
        }
    }

    /// When to try again; `None`: the time stays as it was.
    pub fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Retry { at, .. } => Some(*at),
            Self::Delivered { .. } | Self::Failed { .. } => None,
        }
    }

    /// The receiver's status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Delivered { status } => Some(*status),
            Self::Retry { status, .. } | Self::Failed { status, .. } => *status,
        }
    }

    /// What went wrong, cut to [`DeliveryOutcome::MAX_ERROR_CHARS`]; `None` when
    /// delivered.
    pub fn error(&self) -> Option<String> {
        match self {
            Self::Delivered { .. } => None,
            Self::Retry { error, .. } | Self::Failed { error, .. } => {
                Some(error.chars().take(Self::MAX_ERROR_CHARS).collect())
            }
        }
    }
}

/// Which deliveries a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// One webhook's.
    pub webhook: Option<String>,
    /// In one state.
    pub state: Option<DeliveryState>,
    /// Of one event.
    pub event_id: Option<String>,
    /// Of one account's events.
    pub account_id: Option<String>,
    /// With an id below this (the newest first, paging backwards).
    pub before: Option<i64>,
    /// At most this many (at least 1).
    pub limit: usize,
}

/// The error of a store that keeps no event log.
pub(crate) fn no_event_log() -> crate::StoreError {
    crate::StoreError::Unavailable(
        "this store keeps no event log: events are not replayed and webhooks are not durable"
            .to_owned(),
    )
}
