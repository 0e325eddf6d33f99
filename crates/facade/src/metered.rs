//! Every store call timed: the store a [`Keyhaven`](crate::Keyhaven) is built with is
//! wrapped in [`Metered`], which records each call's duration in the histogram
//! `keyhaven_store_seconds{operation}` and each failure in
//! `keyhaven_store_errors_total{operation}` through the `metrics` facade. Without a
//! recorder installed (a library user who exports no metrics) each record is a
//! check of one atomic; the keyhaven server installs a Prometheus recorder.
//!
//! Every write through it also forgets what this process cached of what it wrote
//! (an account's credentials, its copy and request target; integrations), once the
//! write is done, whether or not it succeeded: so does every write of the facade,
//! and a library user's own writes through [`Keyhaven::store`](crate::Keyhaven::store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountEvent, AccountFilter, AccountLock, AppSlug, AuditLine, ChangeSink, ConnectedAccount,
    ConnectedAccountId, Credentials, CredentialsUpdate, Delivery, DeliveryFilter, DeliveryOutcome,
    DeliveryState, Integration, IntegrationId, Page, PendingState, Store, StoreError,
    WebhookTarget, async_trait,
};

/// Records a refresh the scheme made for an account of `app`: its outcome in
/// `keyhaven_refreshes_total{app, outcome}` (`ok`, `unchanged` when the scheme had
/// nothing to refresh, `refused` by the provider, `failed` to reach it) and, when it
/// called the provider, its time in `keyhaven_refresh_seconds{app}` and the call in
/// `keyhaven_provider_calls_total{app, call="refresh"}`.
pub(crate) fn refresh_done(
    app: &str,
    started: Instant,
    result: &Result<Option<Credentials>, keyhaven_core::SchemeError>,
) {
    let outcome = match result {
        Ok(Some(_)) => "ok",
        Ok(None) => "unchanged",
        Err(keyhaven_core::SchemeError::Rejected { .. }) => "refused",
        Err(_) => "failed",
    };
    let app = app.to_owned();
    metrics::counter!("keyhaven_refreshes_total", "app" => app.clone(), "outcome" => outcome)
        .increment(1);
    if outcome != "unchanged" {
        metrics::histogram!("keyhaven_refresh_seconds", "app" => app.clone())
            .record(started.elapsed().as_secs_f64());
        provider_call(&app, "refresh", outcome == "ok");
    }
}

/// Counts a call a scheme made to the provider for `app` (`refresh`, `complete`: the
/// token endpoint's refresh and code exchange for OAuth) in
/// `keyhaven_provider_calls_total{app, call, ok}`.
pub(crate) fn provider_call(app: &str, call: &'static str, ok: bool) {
    metrics::counter!(
        "keyhaven_provider_calls_total",
        "app" => app.to_owned(),
        "call" => call,
        "ok" => if ok { "true" } else { "false" }
    )
    .increment(1);
}

/// A store whose every call is timed, and whose writes forget what `cache` holds
/// of what they changed (see the module).
pub(crate) struct Metered {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cache: Arc<crate::cache::CredentialCache>,
}

/// Records one call of `operation` that took from `started` and ended in `result`.
fn record<T>(operation: &'static str, started: Instant, result: &Result<T, StoreError>) {
    metrics::histogram!("keyhaven_store_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    if result.is_err() {
        metrics::counter!("keyhaven_store_errors_total", "operation" => operation).increment(1);
    }
}

/// Times `call` as `operation`.
macro_rules! timed {
    ($operation:literal, $call:expr) => {{
        let started = Instant::now();
        let result = $call.await;
        record($operation, started, &result);
        result
    }};
}

#[async_trait]
impl Store for Metered {
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        timed!(
            "insert_integration",
            self.store.insert_integration(integration)
        )
    }

    async fn find_or_insert_integration(
        &self,
        candidate: &Integration,
    ) -> Result<Integration, StoreError> {
        timed!(
            "find_or_insert_integration",
            self.store.find_or_insert_integration(candidate)
        )
    }

    async fn get_integration(&self, id: &IntegrationId) -> Result<Option<Integration>, StoreError> {
        timed!("get_integration", self.store.get_integration(id))
    }

    async fn list_integrations(
        &self,
        app: Option<&AppSlug>,
    ) -> Result<Vec<Integration>, StoreError> {
        timed!("list_integrations", self.store.list_integrations(app))
    }

    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        let result = timed!(
            "update_integration",
            self.store.update_integration(integration)
        );
        self.cache.forget_integrations();
        result
    }

    async fn delete_integration(&self, id: &IntegrationId) -> Result<bool, StoreError> {
        let result = timed!("delete_integration", self.store.delete_integration(id));
        self.cache.forget_integrations();
        result
    }

    async fn insert_account(
        &self,
        account: &ConnectedAccount,
        credentials: Option<&Credentials>,
        events: &[AccountEvent],
    ) -> Result<(), StoreError> {
        let result = timed!(
            "insert_account",
            self.store.insert_account(account, credentials, events)
        );
        self.cache.forget_listings_of(&account.entity_id);
        result
    }

    async fn get_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<ConnectedAccount>, StoreError> {
        timed!("get_account", self.store.get_account(id))
    }

    async fn get_account_and_credentials(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<(ConnectedAccount, Option<Credentials>)>, StoreError> {
        timed!(
            "get_account_and_credentials",
            self.store.get_account_and_credentials(id)
        )
    }

    async fn update_account(
        &self,
        account: &ConnectedAccount,
        credentials: CredentialsUpdate<'_>,
        events: &[AccountEvent],
    ) -> Result<ConnectedAccount, StoreError> {
        let result = timed!(
            "update_account",
            self.store.update_account(account, credentials, events)
        );
        // Its entity before the change is not known here: the cache also drops the
        // listings it holds the account in.
        self.cache
            .forget(&account.id, Some(std::slice::from_ref(&account.entity_id)));
        result
    }

    async fn delete_account(
        &self,
        id: &ConnectedAccountId,
        events: &[AccountEvent],
    ) -> Result<bool, StoreError> {
        let result = timed!("delete_account", self.store.delete_account(id, events));
        // Its entity is not known here: every listing may have changed.
        self.cache.forget(id, None);
        result
    }

    async fn put_pending_state(&self, pending: &PendingState) -> Result<(), StoreError> {
        timed!("put_pending_state", self.store.put_pending_state(pending))
    }

    async fn get_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError> {
        timed!("get_pending_state", self.store.get_pending_state(state))
    }

    async fn take_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError> {
        timed!("take_pending_state", self.store.take_pending_state(state))
    }

    async fn purge_expired_pending_states(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        timed!(
            "purge_expired_pending_states",
            self.store.purge_expired_pending_states(now)
        )
    }

    async fn lock_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Box<dyn AccountLock>, StoreError> {
        timed!("lock_account", self.store.lock_account(id))
    }

    fn subscribe(&self, sink: ChangeSink) {
        self.store.subscribe(sink);
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        timed!("check_ready", self.store.check_ready())
    }

    async fn append_events(&self, events: &[AccountEvent]) -> Result<(), StoreError> {
        timed!("append_events", self.store.append_events(events))
    }

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<AccountEvent>>, StoreError> {
        timed!("events_after", self.store.events_after(after, limit))
    }

    async fn purge_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        timed!("purge_events", self.store.purge_events(before))
    }

    async fn claim_deliveries(
        &self,
        targets: &[WebhookTarget],
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        timed!(
            "claim_deliveries",
            self.store.claim_deliveries(targets, now, lease, limit)
        )
    }

    async fn finish_delivery(
        &self,
        id: i64,
        claim: &str,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        timed!(
            "finish_delivery",
            self.store.finish_delivery(id, claim, outcome, now)
        )
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        timed!("list_deliveries", self.store.list_deliveries(filter))
    }

    async fn count_deliveries(&self, state: DeliveryState) -> Result<u64, StoreError> {
        timed!("count_deliveries", self.store.count_deliveries(state))
    }

    async fn redeliver(&self, id: i64, now: DateTime<Utc>) -> Result<Option<Delivery>, StoreError> {
        timed!("redeliver", self.store.redeliver(id, now))
    }

    async fn list_accounts(
        &self,
        filter: &AccountFilter,
    ) -> Result<Page<ConnectedAccount>, StoreError> {
        timed!("list_accounts", self.store.list_accounts(filter))
    }

    async fn count_accounts(&self, filter: &AccountFilter) -> Result<u64, StoreError> {
        timed!("count_accounts", self.store.count_accounts(filter))
    }

    async fn append_audit(&self, lines: &[AuditLine]) -> Result<(), StoreError> {
        timed!("append_audit", self.store.append_audit(lines))
    }

    async fn audit_lines(
        &self,
        account: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        timed!(
            "audit_lines",
            self.store.audit_lines(account, since, until, limit)
        )
    }
}
