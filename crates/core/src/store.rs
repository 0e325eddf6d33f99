//! The [`Store`] trait: where integrations and connected accounts are kept.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::event::AccountEvent;
use crate::ids::{AppSlug, ConnectedAccountId, EntityId, IntegrationId};
use chrono::{DateTime, Utc};

use crate::model::{
    AccountFilter, ConnectedAccount, CredentialsUpdate, Integration, Page, PendingState,
};
use crate::outbox::{Delivery, DeliveryFilter, DeliveryOutcome, WebhookTarget, no_event_log};
use crate::secret::Credentials;

/// Persistence for keyhaven. Implementations keep secrets (credentials,
/// integration secrets) encrypted at rest where they write to disk, and must
/// be safe to call from many tasks at once.
///
/// Every method either does all it says or nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new integration. A taken id is a [`StoreError::Conflict`].
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError>;

    /// The oldest integration with `candidate`'s app and auth scheme, or, when there is
    /// none, `candidate` itself after storing it. Atomic: two concurrent calls for the
    /// same app and scheme store one integration.
    async fn find_or_insert_integration(
        &self,
        candidate: &Integration,
    ) -> Result<Integration, StoreError>;

    /// One integration.
    async fn get_integration(&self, id: &IntegrationId) -> Result<Option<Integration>, StoreError>;

    /// The integrations, of one app or all, oldest first.
    async fn list_integrations(
        &self,
        app: Option<&AppSlug>,
    ) -> Result<Vec<Integration>, StoreError>;

    /// Replaces a stored integration (its id, app and creation time kept) with
    /// `integration`. `Ok(false)`: there was none with that id.
    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError>;

    /// Deletes an integration that no account uses. `Ok(false)`: there was none.
    /// One that accounts still use is a [`StoreError::Conflict`] and stays.
    async fn delete_integration(&self, id: &IntegrationId) -> Result<bool, StoreError>;

    /// Stores a new account with its credentials, if any, and appends `events` to the
    /// event log in the same transaction. Its integration must exist.
    async fn insert_account(
        &self,
        account: &ConnectedAccount,
        credentials: Option<&Credentials>,
        events: &[AccountEvent],
    ) -> Result<(), StoreError>;

    /// One account.
    async fn get_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<ConnectedAccount>, StoreError>;

    /// One account with its credentials, read together.
    async fn get_account_and_credentials(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<(ConnectedAccount, Option<Credentials>)>, StoreError>;

    /// Replaces an account if its stored `version` still equals `account.version`
    /// (else [`StoreError::Conflict`]; a missing one is [`StoreError::Missing`]), and
    /// appends `events` in the same transaction (only when the account was written).
    /// Returns the stored account, its version bumped.
    async fn update_account(
        &self,
        account: &ConnectedAccount,
        credentials: CredentialsUpdate<'_>,
        events: &[AccountEvent],
    ) -> Result<ConnectedAccount, StoreError>;

    /// Deletes an account and its credentials, and appends `events` in the same
    /// transaction when there was one to delete. `Ok(false)`: there was none.
    async fn delete_account(
        &self,
        id: &ConnectedAccountId,
        events: &[AccountEvent],
    ) -> Result<bool, StoreError>;

    /// Keeps a pending redirect state until its callback.
    async fn put_pending_state(&self, pending: &PendingState) -> Result<(), StoreError>;

    /// Reads a pending state without taking it (a hosted form shows its fields before
    /// the user submits them). Expired states are returned too; the caller checks
    /// `expires_at`.
    async fn get_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError>;

    /// Takes a pending state out of the store: atomic and single use, so of concurrent
    /// takes of one state exactly one gets it. Expired states are returned too (and
    /// removed); the caller checks `expires_at`.
    async fn take_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError>;

    /// Removes the pending states that expired before `now`; returns how many.
    async fn purge_expired_pending_states(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Takes the refresh lock of one account, waiting for it, across every process
    /// that shares this store. Whoever holds it re-reads the account before
    /// refreshing, so a refresh made by the previous holder is reused (unless the
    /// lock's [`AccountLock::version`] shows the account unchanged since the
    /// holder's last read).
    async fn lock_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Box<dyn AccountLock>, StoreError>;

    /// Asks to be told when another process or instance changes accounts, so that
    /// caches can drop what they hold: each added, changed or deleted account as
    /// [`StoreChange::Account`], naming the entities it belonged to when the store
    /// can (listings are kept by entity), else [`StoreChange::Everything`]. Stores
    /// that are never shared keep the default, which never calls.
    fn subscribe(&self, sink: ChangeSink) {
        let _ = sink;
    }

    /// Whether the store can serve now: reachable, and its schema migrated to what
    /// this build expects. Stores with nothing to check keep the default: ready.
    async fn check_ready(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Appends events that go with no account change (a refresh that failed for a
    /// while) to the event log. Stores shared by several instances tell them of
    /// every appended event (here and in the writes above), through
    /// [`Store::subscribe`]'s sink as [`StoreChange::Event`]. A store that keeps no
    /// event log keeps the default, which does nothing.
    async fn append_events(&self, events: &[AccountEvent]) -> Result<(), StoreError> {
        let _ = events;
        Ok(())
    }

    /// The events appended after the one with id `after` (`None`: from the oldest
    /// kept), oldest first, at most `limit`. `Ok(None)`: no event with that id is kept
    /// (it was purged, or never was).
    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<AccountEvent>>, StoreError> {
        let _ = (after, limit);
        Err(no_event_log())
    }

    /// Removes the events that happened before `before` and their finished
    /// deliveries; events with a delivery still pending stay. Returns how many
    /// events went.
    async fn purge_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let _ = before;
        Ok(0)
    }

    /// Makes the deliveries of the events appended since each target was first seen
    /// (one per event and target whose kinds it wants, exactly once however many
    /// instances call this), then claims at most `limit` pending deliveries of those
    /// targets that are due at `now` and that no one holds: each claimed is held for
    /// `lease` (another claim skips it meanwhile), its `attempts` counted up, and
    /// returned with its [`Delivery::claim`]. A target seen for the first time gets
    /// the events appended from then on. With `limit` 0, only makes the deliveries
    /// (and registers new targets): a server does so before it serves, so that no
    /// event of its first requests goes without its deliveries.
    async fn claim_deliveries(
        &self,
        targets: &[WebhookTarget],
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let _ = (targets, now, lease, limit);
        Err(no_event_log())
    }

    /// Records how a claimed delivery's try ended. `Ok(false)`: the claim is no longer
    /// held (its lease ran out and someone else claimed it), and nothing changed.
    async fn finish_delivery(
        &self,
        id: i64,
        claim: &str,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _ = (id, claim, outcome, now);
        Err(no_event_log())
    }

    /// Deliveries matching `filter`, the newest first.
    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let _ = filter;
        Err(no_event_log())
    }

    /// How many deliveries are in `state` (the backlog, for `Pending`).
    async fn count_deliveries(
        &self,
        state: crate::outbox::DeliveryState,
    ) -> Result<u64, StoreError> {
        let _ = state;
        Err(no_event_log())
    }

    /// Makes a delivery pending again, due at `now`, with its tries counted from zero
    /// (its claim, if any, dropped). `Ok(None)`: there is none with that id.
    async fn redeliver(&self, id: i64, now: DateTime<Utc>) -> Result<Option<Delivery>, StoreError> {
        let _ = (id, now);
        Err(no_event_log())
    }

    /// Accounts matching `filter`, ordered by id (which is creation order), one page.
    async fn list_accounts(
        &self,
        filter: &AccountFilter,
    ) -> Result<Page<ConnectedAccount>, StoreError>;

    /// How many accounts match `filter`, its cursor and limit aside.
    async fn count_accounts(&self, filter: &AccountFilter) -> Result<u64, StoreError>;

    /// Appends audit lines (each a JSON object written by the facade's audit log), kept
    /// by account and time, so that instances sharing the store share one audit trail.
    /// A store that keeps none refuses (the default).
    async fn append_audit(&self, lines: &[AuditLine]) -> Result<(), StoreError> {
        let _ = lines;
        Err(no_audit())
    }

    /// The audit lines of `account` at or after `since` and before `until`: the newest
    /// `limit` of them, oldest first.
    async fn audit_lines(
        &self,
        account: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let _ = (account, since, until, limit);
        Err(no_audit())
    }
}

/// One line of the audit trail, as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLine {
    /// When the use was.
    pub at: DateTime<Utc>,
    /// The account used (as given, when it was not found).
    pub account: String,
    /// The whole entry, a JSON object. Never a secret.
    pub line: String,
}

fn no_audit() -> StoreError {
    StoreError::Unavailable(
        "this store keeps no audit trail; record to an audit file instead".to_owned(),
    )
}

/// A held refresh lock (see [`Store::lock_account`]).
#[async_trait]
pub trait AccountLock: Send + Sync {
    /// Lets the next waiter in. Dropping the lock without calling this releases it too,
    /// perhaps later (when a lease runs out or a connection closes).
    async fn release(self: Box<Self>) -> Result<(), StoreError>;

    /// The account's `version` as stored once the lock was held, when the store
    /// read it then (after the lock was taken, so no refresh of another holder can
    /// have been written since without changing it); `None` when it did not, or the
    /// account is gone. A holder that read the account before locking and finds the
    /// same version here may skip its re-read: nothing changed in between. Stores
    /// that cannot read it along with the lock keep the default, `None`, and every
    /// holder re-reads.
    fn version(&self) -> Option<u64> {
        None
    }
}

/// A change made elsewhere, reported by [`Store::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// This account was added, changed or deleted.
    Account {
        /// The account.
        id: ConnectedAccountId,
        /// The entities it belonged to before and after (one when they are the
        /// same), when the store says; `None` when it does not, and then any
        /// listing may have changed.
        entities: Option<Vec<EntityId>>,
    },
    /// Changes may have been missed: forget everything cached.
    Everything,
    /// Another process or instance appended this event to the shared event log.
    Event(AccountEvent),
}

/// Where a store reports [`StoreChange`]s.
pub type ChangeSink = std::sync::Arc<dyn Fn(StoreChange) + Send + Sync>;

impl std::fmt::Debug for dyn AccountLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountLock")
    }
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn Store")
    }
}
