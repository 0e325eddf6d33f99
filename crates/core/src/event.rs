//! Events: every change of a connected account's status, told to listeners in this
//! process, to other instances sharing the store, and to webhooks.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{AppSlug, ConnectedAccountId, EntityId, IntegrationId};
use crate::model::{ConnectedAccount, ConnectionStatus};

/// What happened to a connected account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// A connection was initiated: the account exists, in the status it started with.
    #[serde(rename = "connection.created")]
    Created,
    /// The account became `ACTIVE` (the user finished, or it was enabled again).
    #[serde(rename = "connection.active")]
    Active,
    /// The connection attempt failed: the account is `FAILED`.
    #[serde(rename = "connection.failed")]
    Failed,
    /// A refresh was refused: the account is `EXPIRED`, the user must connect again.
    #[serde(rename = "connection.expired")]
    Expired,
    /// A refresh failed for a while (the provider was down); the account stays `ACTIVE`.
    #[serde(rename = "connection.refresh_failed")]
    RefreshFailed,
    /// The app disabled the account: it is `INACTIVE`.
    #[serde(rename = "connection.inactive")]
    Inactive,
    /// The account was deleted.
    #[serde(rename = "connection.deleted")]
    Deleted,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [Self; 7] = [
        Self::Created,
        Self::Active,
        Self::Failed,
        Self::Expired,
        Self::RefreshFailed,
        Self::Inactive,
        Self::Deleted,
    ];

    /// The wire name, such as `connection.active`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "connection.created",
            Self::Active => "connection.active",
            Self::Failed => "connection.failed",
            Self::Expired => "connection.expired",
            Self::RefreshFailed => "connection.refresh_failed",
            Self::Inactive => "connection.inactive",
            Self::Deleted => "connection.deleted",
        }
    }

    /// The kind named `name` (`connection.active` or just `active`).
    pub fn parse(name: &str) -> Option<Self> {
        let short = name.strip_prefix("connection.").unwrap_or(name);
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().strip_prefix("connection.") == Some(short))
    }

    /// The event a move to `status` is, if any.
    pub fn for_status(status: ConnectionStatus) -> Option<Self> {
        match status {
            ConnectionStatus::Active => Some(Self::Active),
            ConnectionStatus::Failed => Some(Self::Failed),
            ConnectionStatus::Expired => Some(Self::Expired),
            ConnectionStatus::Inactive => Some(Self::Inactive),
            ConnectionStatus::Initiated => None,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event. Carries no secret: ids, the status and its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountEvent {
    /// Unique: `evt_` and 128 random bits in hex. Webhook receivers deduplicate by it.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The account.
    pub connected_account_id: ConnectedAccountId,
    /// Its entity.
    pub entity_id: EntityId,
    /// Its app.
    pub app_name: AppSlug,
    /// Its integration.
    pub integration_id: IntegrationId,
    /// The account's status after the event.
    pub status: ConnectionStatus,
    /// Why, when there is a reason (a provider's error ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The instance that made the change.
    pub origin: String,
}

impl AccountEvent {
    /// An event about `account` as it is now.
    ///
    /// # Errors
    /// The system's random source fails.
    pub fn new(
        kind: EventKind,
        account: &ConnectedAccount,
        reason: Option<String>,
        at: DateTime<Utc>,
        origin: &str,
    ) -> Result<Self, crate::Error> {
        Ok(Self {
            id: format!("evt_{}", crate::random_hex::<16>()?),
            kind,
            connected_account_id: account.id.clone(),
            entity_id: account.entity_id.clone(),
            app_name: account.app.clone(),
            integration_id: account.integration_id.clone(),
            status: account.status,
            reason: reason.or_else(|| account.status_reason.clone()),
            at,
            origin: origin.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            let short = k.as_str().trim_start_matches("connection.");
            assert_eq!(EventKind::parse(short), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().into())
            );
        }
        assert_eq!(EventKind::parse("connection.nope"), None);
    }
}
