//! An in-memory store: everything in one lock-protected map, gone when dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountEvent, AccountFilter, AccountLock, AppSlug, ConnectedAccount, ConnectedAccountId,
    Credentials, CredentialsUpdate, Delivery, DeliveryFilter, DeliveryOutcome, DeliveryState,
    Integration, IntegrationId, Page, PendingState, Store, StoreError, WebhookTarget,
};
use parking_lot::RwLock;

#[derive(Default)]
struct State {
    integrations: BTreeMap<IntegrationId, Integration>,
    accounts: BTreeMap<ConnectedAccountId, (ConnectedAccount, Option<Credentials>)>,
    pending: HashMap<String, PendingState>,
    audit: Vec<keyhaven_core::AuditLine>,
    /// The event log, by sequence number.
    events: BTreeMap<i64, AccountEvent>,
    next_seq: i64,
    /// Per webhook: the newest event whose delivery was made.
    cursors: HashMap<String, i64>,
    /// Deliveries by id, with the sequence number of their event and their lease's end.
    deliveries: BTreeMap<i64, (Delivery, i64, Option<DateTime<Utc>>)>,
}

impl State {
    fn append(&mut self, events: &[AccountEvent]) {
        for e in events {
            self.next_seq += 1;
            self.events.insert(self.next_seq, e.clone());
        }
    }
}

/// A [`Store`] in memory, safe under concurrent use. Keeps nothing once dropped.
///
/// Every operation takes one lock for its whole duration and never awaits while
/// holding it, so each is atomic.
#[derive(Default)]
pub struct MemoryStore {
    state: RwLock<State>,
    locks: parking_lot::Mutex<HashMap<ConnectedAccountId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A refresh lock of the memory store: an owned async mutex guard.
struct MemoryLock {
    _held: tokio::sync::OwnedMutexGuard<()>,
    /// The account's version once the lock was held.
    version: Option<u64>,
}

#[async_trait]
impl AccountLock for MemoryLock {
    async fn release(self: Box<Self>) -> Result<(), StoreError> {
        Ok(())
    }

    fn version(&self) -> Option<u64> {
        self.version
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.read();
        f.debug_struct("MemoryStore")
            .field("integrations", &state.integrations.len())
            .field("accounts", &state.accounts.len())
            .finish()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_integration(&self, integration: &Integration) -> Result<(), StoreError> {
        let mut state = self.state.write();
        if state.integrations.contains_key(&integration.id) {
            return Err(StoreError::Conflict(format!(
                "integration {} exists",
                integration.id
            )));
        }
        state
            .integrations
            .insert(integration.id.clone(), integration.clone());
        Ok(())
    }

    async fn find_or_insert_integration(
        &self,
        candidate: &Integration,
    ) -> Result<Integration, StoreError> {
        let mut state = self.state.write();
        let existing = state
            .integrations
            .values()
            .filter(|i| i.app == candidate.app && i.auth_scheme == candidate.auth_scheme)
            .min_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
            .cloned();
        if let Some(found) = existing {
            return Ok(found);
        }
        if state.integrations.contains_key(&candidate.id) {
            return Err(StoreError::Conflict(format!(
                "integration {} exists",
                candidate.id
            )));
        }
        state
            .integrations
            .insert(candidate.id.clone(), candidate.clone());
        Ok(candidate.clone())
    }

    async fn get_integration(&self, id: &IntegrationId) -> Result<Option<Integration>, StoreError> {
        Ok(self.state.read().integrations.get(id).cloned())
    }

    async fn list_integrations(
        &self,
        app: Option<&AppSlug>,
    ) -> Result<Vec<Integration>, StoreError> {
        let state = self.state.read();
        let mut out: Vec<Integration> = state
            .integrations
            .values()
            .filter(|i| app.is_none_or(|a| &i.app == a))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn update_integration(&self, integration: &Integration) -> Result<bool, StoreError> {
        let mut state = self.state.write();
        let Some(stored) = state.integrations.get_mut(&integration.id) else {
            return Ok(false);
        };
        let (app, scheme, created_at) = (
            stored.app.clone(),
            stored.auth_scheme.clone(),
            stored.created_at,
        );
        *stored = integration.clone();
        stored.app = app;
        stored.auth_scheme = scheme;
        stored.created_at = created_at;
        Ok(true)
    }

    async fn append_audit(&self, lines: &[keyhaven_core::AuditLine]) -> Result<(), StoreError> {
        self.state.write().audit.extend_from_slice(lines);
        Ok(())
    }

    async fn audit_lines(
        &self,
        account: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let state = self.state.read();
        let found: Vec<&keyhaven_core::AuditLine> = state
            .audit
            .iter()
            .filter(|l| {
                l.account == account
                    && since.is_none_or(|t| l.at >= t)
                    && until.is_none_or(|t| l.at < t)
            })
            .collect();
        let skip = found.len().saturating_sub(limit);
        Ok(found[skip..].iter().map(|l| l.line.clone()).collect())
    }

    async fn delete_integration(&self, id: &IntegrationId) -> Result<bool, StoreError> {
        let mut state = self.state.write();
        let used = state
            .accounts
            .values()
            .filter(|(a, _)| &a.integration_id == id)
            .count();
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "integration {id} is used by {used} connected account(s); delete them first"
            )));
        }
        Ok(state.integrations.remove(id).is_some())
    }

    async fn insert_account(
        &self,
        account: &ConnectedAccount,
        credentials: Option<&Credentials>,
        events: &[AccountEvent],
    ) -> Result<(), StoreError> {
        let mut state = self.state.write();
        if !state.integrations.contains_key(&account.integration_id) {
            return Err(StoreError::Missing {
                kind: "integration",
                id: account.integration_id.to_string(),
            });
        }
        if state.accounts.contains_key(&account.id) {
            return Err(StoreError::Conflict(format!(
                "connected account {} exists",
                account.id
            )));
        }
        state
            .accounts
            .insert(account.id.clone(), (account.clone(), credentials.cloned()));
        state.append(events);
        Ok(())
    }

    async fn get_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<ConnectedAccount>, StoreError> {
        Ok(self.state.read().accounts.get(id).map(|(a, _)| a.clone()))
    }

    async fn get_account_and_credentials(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Option<(ConnectedAccount, Option<Credentials>)>, StoreError> {
        Ok(self.state.read().accounts.get(id).cloned())
    }

    async fn update_account(
        &self,
        account: &ConnectedAccount,
        credentials: CredentialsUpdate<'_>,
        events: &[AccountEvent],
    ) -> Result<ConnectedAccount, StoreError> {
        let mut state = self.state.write();
        let Some((stored, creds)) = state.accounts.get_mut(&account.id) else {
            return Err(StoreError::Missing {
                kind: "connected account",
                id: account.id.to_string(),
            });
        };
        if stored.version != account.version {
            return Err(StoreError::Conflict(format!(
                "connected account {} changed since it was read (version {} now, {} given)",
                account.id, stored.version, account.version
            )));
        }
        let mut next = account.clone();
        next.version = stored.version + 1;
        match credentials {
            CredentialsUpdate::Keep => {}
            CredentialsUpdate::Set(c) | CredentialsUpdate::Refreshed(c) => {
                *creds = Some(c.clone());
            }
            CredentialsUpdate::Clear => *creds = None,
        }
        *stored = next.clone();
        state.append(events);
        Ok(next)
    }

    async fn delete_account(
        &self,
        id: &ConnectedAccountId,
        events: &[AccountEvent],
    ) -> Result<bool, StoreError> {
        let mut state = self.state.write();
        let deleted = state.accounts.remove(id).is_some();
        if deleted {
            state.append(events);
        }
        Ok(deleted)
    }

    async fn append_events(&self, events: &[AccountEvent]) -> Result<(), StoreError> {
        self.state.write().append(events);
        Ok(())
    }

    async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<AccountEvent>>, StoreError> {
        let state = self.state.read();
        let from = match after {
            None => 0,
            Some(id) => match state.events.iter().find(|(_, e)| e.id == id) {
                Some((seq, _)) => *seq,
                None => return Ok(None),
            },
        };
        Ok(Some(
            state
                .events
                .range(from + 1..)
                .take(limit.max(1))
                .map(|(_, e)| e.clone())
                .collect(),
        ))
    }

    async fn purge_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut state = self.state.write();
        let pending: std::collections::HashSet<i64> = state
            .deliveries
            .values()
            .filter(|(d, _, _)| d.state == DeliveryState::Pending)
            .map(|(_, seq, _)| *seq)
            .collect();
        let gone: Vec<i64> = state
            .events
            .iter()
            .filter(|(seq, e)| e.at < before && !pending.contains(seq))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &gone {
            state.events.remove(seq);
        }
        state
            .deliveries
            .retain(|_, (_, seq, _)| !gone.contains(seq));
        Ok(gone.len() as u64)
    }

    async fn claim_deliveries(
        &self,
        targets: &[WebhookTarget],
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut state = self.state.write();
        let state = &mut *state;
        let newest = state.events.keys().next_back().copied().unwrap_or(0);
        for t in targets {
            let Some(cursor) = state.cursors.get(&t.key).copied() else {
                state.cursors.insert(t.key.clone(), newest);
                continue;
            };
            for (seq, event) in state.events.range(cursor + 1..) {
                if !t.kinds.is_empty() && !t.kinds.contains(&event.kind) {
                    continue;
                }
                let id = state.deliveries.keys().next_back().copied().unwrap_or(0) + 1;
                let delivery = Delivery {
                    id,
                    webhook: t.key.clone(),
                    event: event.clone(),
                    state: DeliveryState::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    last_status: None,
                    last_error: None,
                    created_at: now,
                    updated_at: now,
                    claim: None,
                };
                state.deliveries.insert(id, (delivery, *seq, None));
            }
            state.cursors.insert(t.key.clone(), newest);
        }
        let token =
            keyhaven_core::random_hex::<16>().map_err(|e| StoreError::Backend(Box::new(e)))?;
        let until = now + chrono::TimeDelta::from_std(lease).unwrap_or(chrono::TimeDelta::MAX);
        let mut out = Vec::new();
        for (d, _, held) in state.deliveries.values_mut() {
            if out.len() >= limit {
                break;
            }
            if d.state == DeliveryState::Pending
                && d.next_attempt_at <= now
                && held.is_none_or(|h| h <= now)
                && targets.iter().any(|t| t.key == d.webhook)
            {
                d.attempts += 1;
                d.updated_at = now;
                d.claim = Some(token.clone());
                *held = Some(until);
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    async fn finish_delivery(
        &self,
        id: i64,
        claim: &str,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut state = self.state.write();
        let Some((d, _, held)) = state.deliveries.get_mut(&id) else {
            return Ok(false);
        };
        if d.claim.as_deref() != Some(claim) {
            return Ok(false);
        }
        d.state = outcome.state();
        if let Some(at) = outcome.next_attempt_at() {
            d.next_attempt_at = at;
        }
        d.last_status = outcome.status();
        d.last_error = outcome.error();
        d.claim = None;
        d.updated_at = now;
        *held = None;
        Ok(true)
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let state = self.state.read();
        Ok(state
            .deliveries
            .values()
            .rev()
            .map(|(d, _, _)| d)
            .filter(|d| {
                filter.webhook.as_ref().is_none_or(|w| *w == d.webhook)
                    && filter.state.is_none_or(|s| s == d.state)
                    && filter.event_id.as_ref().is_none_or(|e| *e == d.event.id)
                    && filter
                        .account_id
                        .as_ref()
                        .is_none_or(|a| a == d.event.connected_account_id.as_str())
                    && filter.before.is_none_or(|b| d.id < b)
            })
            .take(filter.limit.max(1))
            .cloned()
            .collect())
    }

    async fn count_deliveries(&self, state: DeliveryState) -> Result<u64, StoreError> {
        let n = self
            .state
            .read()
            .deliveries
            .values()
            .filter(|(d, _, _)| d.state == state)
            .count();
        Ok(n as u64)
    }

    async fn redeliver(&self, id: i64, now: DateTime<Utc>) -> Result<Option<Delivery>, StoreError> {
        let mut state = self.state.write();
        let Some((d, _, held)) = state.deliveries.get_mut(&id) else {
            return Ok(None);
        };
        d.state = DeliveryState::Pending;
        d.attempts = 0;
        d.next_attempt_at = now;
        d.claim = None;
        d.updated_at = now;
        *held = None;
        Ok(Some(d.clone()))
    }

    async fn put_pending_state(&self, pending: &PendingState) -> Result<(), StoreError> {
        let mut state = self.state.write();
        if state.pending.contains_key(&pending.state) {
            return Err(StoreError::Conflict(
                "that pending state exists already".into(),
            ));
        }
        state.pending.insert(pending.state.clone(), pending.clone());
        Ok(())
    }

    async fn get_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError> {
        Ok(self.state.read().pending.get(state).cloned())
    }

    async fn take_pending_state(&self, state: &str) -> Result<Option<PendingState>, StoreError> {
        Ok(self.state.write().pending.remove(state))
    }

    async fn purge_expired_pending_states(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut state = self.state.write();
        let before = state.pending.len();
        state.pending.retain(|_, p| p.expires_at >= now);
        Ok((before - state.pending.len()) as u64)
    }

    async fn lock_account(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<Box<dyn AccountLock>, StoreError> {
        let lock = self.locks.lock().entry(id.clone()).or_default().clone();
        let held = lock.lock_owned().await;
        let version = self.state.read().accounts.get(id).map(|(a, _)| a.version);
        Ok(Box::new(MemoryLock {
            _held: held,
            version,
        }))
    }

    async fn count_accounts(&self, filter: &AccountFilter) -> Result<u64, StoreError> {
        let state = self.state.read();
        let n = state
            .accounts
            .values()
            .filter(|(a, _)| filter.matches(a))
            .count();
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    async fn list_accounts(
        &self,
        filter: &AccountFilter,
    ) -> Result<Page<ConnectedAccount>, StoreError> {
        let limit = filter.effective_limit();
        let state = self.state.read();
        use std::ops::Bound::{Excluded, Unbounded};
        let after = filter.after.clone().map_or(Unbounded, Excluded);
        let range = if filter.newest_first {
            state.accounts.range((Unbounded, after))
        } else {
            state.accounts.range((after, Unbounded))
        };
        let matching = range.map(|(_, (a, _))| a).filter(|a| filter.matches(a));
        let mut items: Vec<ConnectedAccount> = if filter.newest_first {
            matching.rev().take(limit + 1).cloned().collect()
        } else {
            matching.take(limit + 1).cloned().collect()
        };
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|a| a.id.to_string())
        } else {
            None
        };
        Ok(Page::new(items, next_cursor))
    }
}
