//! The [`Store`] trait: where integrations and connected accounts are kept.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::event::AccountEvent;
use crate::ids::{AppSlug, ConnectedAccountId, IntegrationId};
use chrono::{DateTime, Utc};

use crate::model::{
    AccountFilter, ConnectedAccount, CredentialsUpdate, Integration, Page, PendingState,
};
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

    /// Stores a new account with its credentials, if any. Its integration must exist.
    async fn insert_account(
        &self,
        account: &ConnectedAccount,
        credentials: Option<&Credentials>,
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
    /// (else [`StoreError::Conflict`]; a missing one is [`StoreError::Missing`]).
    /// Returns the stored account, its version bumped.
    async fn update_account(
        &self,
        account: &ConnectedAccount,
        credentials: CredentialsUpdate<'_>,
    ) -> Result<ConnectedAccount, StoreError>;

    /// Deletes an account and its credentials. `Ok(false)`: there was none.
    async fn delete_account(&self, id: &ConnectedAccountId) -> Result<bool, StoreError>;

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
    /// refreshing, so a refresh made by the previous holder is reused.
    async fn lock_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Box<dyn AccountLock>, StoreError>;

    /// Asks to be told when another process or instance changes accounts, so that
    /// caches can drop what they hold. Stores that are never shared keep the default,
    /// which never calls.
    fn subscribe(&self, sink: ChangeSink) {
        let _ = sink;
    }

    /// Tells the other instances sharing this store of an event (a status change made
    /// here), through [`Store::subscribe`]'s sink as [`StoreChange::Event`]. Stores
    /// that are never shared keep the default, which does nothing: the instance that
    /// made the change tells its own listeners itself.
    async fn publish_event(&self, event: &AccountEvent) -> Result<(), StoreError> {
        let _ = event;
        Ok(())
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
}

/// A change made elsewhere, reported by [`Store::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChange {
    /// This account changed or was deleted.
    Account(ConnectedAccountId),
    /// Changes may have been missed: forget everything cached.
    Everything,
    /// Another instance published this event (see [`Store::publish_event`]).
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
