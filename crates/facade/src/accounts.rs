//! Connected accounts: read, list, delete, enable, disable; their credentials, and
//! requests authorized with them.

use std::sync::Arc;

use keyhaven_core::{
    AccountContext, AccountFilter, ConnectedAccount, ConnectedAccountId, ConnectionStatus,
    Credentials, CredentialsUpdate, Error, EventKind, Integration, OutgoingRequest, Page,
    SchemeError, StoreError,
};

use crate::Keyhaven;
use crate::cache::Cached;
use crate::integrations::effective_integration;
use crate::refresh::{FlightState, Got};

/// Resolves at the next event of `id` (or when events were missed).
async fn event_of(
    events: &mut tokio::sync::broadcast::Receiver<keyhaven_core::AccountEvent>,
    id: &ConnectedAccountId,
) {
    loop {
        match events.recv().await {
            Ok(e) if e.connected_account_id == *id => return,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await;
            }
        }
    }
}

pub(crate) fn not_found(id: &str) -> Error {
    Error::NotFound {
        kind: "connected account",
        id: id.to_owned(),
        hint: "list the connected accounts to find the right id",
    }
}

/// The connected accounts of a [`Keyhaven`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectedAccounts<'a> {
    kh: &'a Keyhaven,
}

impl<'a> ConnectedAccounts<'a> {
    pub(crate) fn new(kh: &'a Keyhaven) -> Self {
        Self { kh }
    }

    /// One account (never its credentials).
    ///
    /// # Errors
    /// A malformed id, or none with that id.
    pub async fn get(&self, id: &str) -> Result<ConnectedAccount, Error> {
        let parsed = ConnectedAccountId::parse(id)?;
        self.kh
            .store()
            .get_account(&parsed)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// One account, from this process's copy when it has one (the server's
    /// reads: an SDK polling an account's status reads it many times a second).
    /// The copy is forgotten when this process changes the account, when the store
    /// reports that another process or instance did (SQLite: within 0.2 s;
    /// PostgreSQL: at its notification), and is kept at most
    /// [`ConnectedAccounts::CACHED_FOR`] in any case, for stores that report no
    /// changes. Read with [`ConnectedAccounts::get`] where the stored value must be
    /// read now.
    ///
    /// # Errors
    /// A malformed id, or none with that id.
    pub async fn get_cached(&self, id: &str) -> Result<ConnectedAccount, Error> {
        let cache = &self.kh.inner.cache;
        cache
            .account_or_read(id, Self::CACHED_FOR, self.get(id))
            .await
    }

    /// How long [`ConnectedAccounts::get_cached`] keeps an account at most, and
    /// [`ConnectedAccounts::list_cached`] a listing.
    pub const CACHED_FOR: std::time::Duration = std::time::Duration::from_secs(2);

    /// One page of the accounts matching `filter` (entities, apps, integrations,
    /// statuses: any of; labels: all of), oldest first (or newest, as `filter` says):
    /// `filter.limit` accounts, 100
    /// when it is 0, at most 1,000 (follow `next_cursor` for more).
    ///
    /// # Errors
    /// More labels than an account may carry ([`AccountFilter::check`]); a store failure.
    pub async fn list(&self, filter: &AccountFilter) -> Result<Page<ConnectedAccount>, Error> {
        filter.check()?;
        Ok(self.kh.store().list_accounts(filter).await?)
    }

    /// The same page as [`ConnectedAccounts::list`], from this process's copy when
    /// `filter` names exactly one entity and the copy was read less than
    /// [`ConnectedAccounts::CACHED_FOR`] ago (the server's listings: an SDK lists an
    /// entity's connections many times for each change). Copies are kept by entity:
    /// adding, changing or deleting an account through this keyhaven drops its
    /// entity's copies at once; another instance's changes drop them when the store
    /// reports them (PostgreSQL: at its notification, only the entity's; SQLite:
    /// within 0.2 s, every copy). An account moved to another entity by a write
    /// made straight to the store may show in its former entity's counts until its
    /// copies age. Listings of several entities, or of none, are read each time.
    ///
    /// # Errors
    /// As [`ConnectedAccounts::list`].
    pub async fn list_cached(
        &self,
        filter: &AccountFilter,
    ) -> Result<std::sync::Arc<Page<ConnectedAccount>>, Error> {
        filter.check()?;
        let cache = &self.kh.inner.cache;
        if let Some(page) = cache.listed_page(filter, Self::CACHED_FOR) {
            return Ok(page);
        }
        let generation = cache.generation();
        let page = std::sync::Arc::new(self.kh.store().list_accounts(filter).await?);
        cache.put_page(filter, page.clone(), generation);
        Ok(page)
    }

    /// [`ConnectedAccounts::count`], kept as [`ConnectedAccounts::list_cached`]
    /// keeps pages.
    ///
    /// # Errors
    /// As [`ConnectedAccounts::count`].
    pub async fn count_cached(&self, filter: &AccountFilter) -> Result<u64, Error> {
        filter.check()?;
        let cache = &self.kh.inner.cache;
        if let Some(count) = cache.listed_count(filter, Self::CACHED_FOR) {
            return Ok(count);
        }
        let generation = cache.generation();
        let count = self.kh.store().count_accounts(filter).await?;
        cache.put_count(filter, count, generation);
        Ok(count)
    }

    /// How many accounts match `filter`, its cursor and limit aside (one query, not a
    /// listing).
    ///
    /// # Errors
    /// More labels than an account may carry ([`AccountFilter::check`]); a store failure.
    pub async fn count(&self, filter: &AccountFilter) -> Result<u64, Error> {
        filter.check()?;
        Ok(self.kh.store().count_accounts(filter).await?)
    }

    /// Every account matching `filter`, all pages.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list_all(
        &self,
        mut filter: AccountFilter,
    ) -> Result<Vec<ConnectedAccount>, Error> {
        let mut out = Vec::new();
        filter.limit = AccountFilter::MAX_LIMIT;
        loop {
            let page = self.list(&filter).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(cursor) => filter.after = Some(ConnectedAccountId::parse(&cursor)?),
                None => return Ok(out),
            }
        }
    }

    /// Deletes an account and its credentials, then asks the provider to revoke them
    /// (best effort: a failed revocation is logged, the account is gone either way).
    ///
    /// # Errors
    /// A malformed id, or none with that id.
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        self.delete_then_revoke(id, true).await
    }

    /// As [`ConnectedAccounts::delete`], but waits for the provider's revocation
    /// instead of leaving it to the background: for short-lived processes (a command
    /// line) that would end before it ran.
    ///
    /// # Errors
    /// A malformed id, or none with that id.
    pub async fn delete_and_revoke(&self, id: &str) -> Result<(), Error> {
        self.delete_then_revoke(id, false).await
    }

    async fn delete_then_revoke(&self, id: &str, background: bool) -> Result<(), Error> {
        let parsed = ConnectedAccountId::parse(id)?;
        let (account, credentials) = self
            .kh
            .store()
            .get_account_and_credentials(&parsed)
            .await?
            .ok_or_else(|| not_found(id))?;
        let events = vec![
            self.kh
                .event(EventKind::Deleted, &account, Some("deleted".into()))?,
        ];
        if !self.kh.store().delete_account(&parsed, &events).await? {
            return Err(not_found(id));
        }
        tracing::info!(account = %account.id, "connected account deleted");
        self.kh.announce(events);
        if let Some(credentials) = credentials {
            // Best effort: in the background when asked and there is a runtime to
            // run it on, so that it never holds up the delete.
            let kh = self.kh.clone();
            let revoke = async move {
                let result = async {
                    let integration = kh.integration_of(&account).await?;
                    let scheme = kh.schemes().get(&integration.auth_scheme)?;
                    let effective = effective_integration(&integration, &account.params);
                    let http = kh.provider_client(&integration, &account.params)?;
                    let cx = AccountContext::new(&effective, &account, &credentials, kh.now())
                        .with_http(&http);
                    scheme.revoke(cx).await.map_err(Error::from)
                };
                match result.await {
                    Ok(()) => {
                        tracing::debug!(account = %account.id, "credentials revoked at the provider")
                    }
                    Err(e) => {
                        tracing::warn!(account = %account.id, error = %e, "revocation at the provider failed; the account is deleted anyway")
                    }
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) if background => {
                    handle.spawn(revoke);
                }
                _ => revoke.await,
            }
        }
        Ok(())
    }

    /// Refreshes an account's credentials now, whether or not they are due, and
    /// returns the account as stored afterwards.
    ///
    /// # Errors
    /// Those of [`Keyhaven::credentials`]; a refusal by the provider marks the
    /// account `EXPIRED` and is returned as [`Error::NotActive`].
    pub async fn refresh(&self, id: &str) -> Result<ConnectedAccount, Error> {
        let parsed = ConnectedAccountId::parse(id)?;
        self.kh.refresh_credentials(&parsed, Due::Now).await?;
        self.get(id).await
    }

    /// Disables an account: `INACTIVE` until enabled. Disabling an inactive account does nothing.
    ///
    /// # Errors
    /// A malformed id, or none with that id.
    pub async fn disable(&self, id: &str) -> Result<ConnectedAccount, Error> {
        self.change(id, |account, _| {
            if account.status == ConnectionStatus::Inactive {
                return Ok(None);
            }
            Ok(Some((
                ConnectionStatus::Inactive,
                Some("disabled by the app".to_owned()),
            )))
        })
        .await
    }

    /// Enables a disabled account: `ACTIVE` again. Enabling an active account does nothing.
    ///
    /// # Errors
    /// A malformed id, none with that id, or an account that is neither
    /// `INACTIVE` nor `ACTIVE`, or has no credentials (it must be connected again).
    pub async fn enable(&self, id: &str) -> Result<ConnectedAccount, Error> {
        self.change(id, |account, has_credentials| match account.status {
            ConnectionStatus::Active => Ok(None),
            ConnectionStatus::Inactive if has_credentials => {
                Ok(Some((ConnectionStatus::Active, None)))
            }
            ConnectionStatus::Inactive => Err(Error::Conflict(format!(
                "connected account {} has no credentials to enable; initiate a new connection",
                account.id
            ))),
            status => Err(Error::Conflict(format!(
                "connected account {} is {status}, and only an INACTIVE account can be enabled; {}",
                account.id,
                status.hint()
            ))),
        })
        .await
    }

    /// Reads the account, decides the new status, writes it with compare-and-set,
    /// and tries again when another writer got there first.
    pub(crate) async fn change(
        &self,
        id: &str,
        decide: impl Fn(
            &ConnectedAccount,
            bool,
        ) -> Result<Option<(ConnectionStatus, Option<String>)>, Error>,
    ) -> Result<ConnectedAccount, Error> {
        let parsed = ConnectedAccountId::parse(id)?;
        for _ in 0..8 {
            let (account, credentials) = self
                .kh
                .store()
                .get_account_and_credentials(&parsed)
                .await?
                .ok_or_else(|| not_found(id))?;
            let Some((status, reason)) = decide(&account, credentials.is_some())? else {
                return Ok(account);
            };
            let mut next = account.clone();
            next.status = status;
            next.status_reason = reason;
            next.updated_at = self.kh.now();
            let events = match EventKind::for_status(next.status) {
                Some(kind) => vec![self.kh.event(kind, &next, None)?],
                None => Vec::new(),
            };
            match self
                .kh
                .store()
                .update_account(&next, CredentialsUpdate::Keep, &events)
                .await
            {
                Ok(stored) => {
                    tracing::info!(account = %stored.id, from = %account.status, to = %stored.status, "status changed");
                    self.kh.announce(events);
                    return Ok(stored);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(StoreError::Missing { .. }) => return Err(not_found(id)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!(
            "connected account {id} kept changing while being updated; try again"
        )))
    }
}

/// When a refresh is due.
#[derive(Debug)]
pub(crate) enum Due {
    /// When the credentials expire within the refresh margin.
    IfExpiring,
    /// Now, whatever their expiry.
    Now,
    /// Now, unless the stored credentials are no longer these (an API refused these:
    /// whoever refreshes first does it for all who saw them refused).
    IfStill(Credentials),
}

impl Keyhaven {
    pub(crate) async fn integration_of(
        &self,
        account: &ConnectedAccount,
    ) -> Result<Arc<Integration>, Error> {
        // Concurrent refreshes of accounts of one integration (a storm) read it once.
        let read = || self.stored_integration(account);
        let id = &account.integration_id;
        self.inner.cache.integration_read(id, read).await
    }

    /// The account's integration as stored now.
    async fn stored_integration(
        &self,
        account: &ConnectedAccount,
    ) -> Result<Arc<Integration>, Error> {
        let id = &account.integration_id;
        let integration = self.store().get_integration(id).await?.ok_or_else(|| {
            Error::Internal(format!(
                "integration {id} of connected account {} is missing",
                account.id
            ))
        })?;
        Ok(Arc::new(integration))
    }

    /// The account's integration for a refresh: the copy this process read less
    /// than `ttl` ago (and `true`), else read as [`Keyhaven::integration_of`] reads
    /// it (shared with the reads in flight) and kept as the copy (and `false`). A
    /// refresh that fails with a copy is tried again with the integration as
    /// stored, when it changed since the copy (see `refresh_locked`): a copy
    /// another process made stale (a new client secret, token URL) never marks an
    /// account `EXPIRED` or backs its refreshes off.
    async fn integration_for_refresh(
        &self,
        account: &ConnectedAccount,
        ttl: std::time::Duration,
    ) -> Result<(Arc<Integration>, bool), Error> {
        let read = || self.stored_integration(account);
        self.inner
            .cache
            .integration_or_read_shared(&account.integration_id, ttl, read)
            .await
    }

    /// The account and its credentials, when it is `ACTIVE`.
    async fn active(
        &self,
        id: &ConnectedAccountId,
    ) -> Result<(ConnectedAccount, Credentials), Error> {
        let (account, credentials) = self
            .store()
            .get_account_and_credentials(id)
            .await?
            .ok_or_else(|| not_found(id.as_str()))?;
        if account.status != ConnectionStatus::Active {
            return Err(Error::NotActive {
                id: account.id.to_string(),
                status: account.status,
                reason: account.status_reason,
            });
        }
        let credentials = credentials.ok_or_else(|| {
            Error::Internal(format!(
                "ACTIVE connected account {} has no credentials",
                account.id
            ))
        })?;
        Ok((account, credentials))
    }

    /// The credentials of an `ACTIVE` account, fresh: when they expire within the
    /// refresh margin they are refreshed first. Concurrent callers for one account
    /// share one refresh. When the provider fails (5xx, timeout) the account stays
    /// `ACTIVE`, further tries back off, and credentials that have not expired yet
    /// are still returned.
    ///
    /// # Errors
    /// A malformed id, none with that id, an account that is not `ACTIVE` (the error
    /// says its status and what to do), a refresh refused by the provider (the
    /// account is then `EXPIRED`), or expired credentials that cannot be refreshed now.
    pub async fn credentials(&self, id: &str) -> Result<Credentials, Error> {
        if let Some(hit) = self.cached_credentials(id) {
            return Ok(hit);
        }
        // Boxed, so that the future of a cached read stays small (it is moved on
        // every call) while the slow path keeps its large state machine on the heap.
        Box::pin(self.credentials_uncached(id))
            .await
            .map(|(credentials, _)| credentials)
    }

    /// [`Keyhaven::credentials`], with the account as stored when the credentials
    /// were read or written (a cache miss reads it, a refresh writes it, by this
    /// caller or by the one it queued behind); `None` when the credentials came from
    /// the cache. For callers that need the account too, such as the server's audit
    /// line (its entity and app), so that a miss does not read it twice.
    ///
    /// # Errors
    /// As [`Keyhaven::credentials`].
    pub async fn credentials_and_account(
        &self,
        id: &str,
    ) -> Result<(Credentials, Option<ConnectedAccount>), Error> {
        if let Some(hit) = self.cached_credentials(id) {
            return Ok((hit, None));
        }
        Box::pin(self.credentials_uncached(id)).await
    }

    /// The cached credentials of `id` that are not due, counted as a hit or a miss.
    #[inline]
    fn cached_credentials(&self, id: &str) -> Option<Credentials> {
        let hit = match &self.inner.fast_clock {
            Some(clock) => self.inner.cache.fresh_fast(id, clock.now()),
            None => self.inner.cache.fresh(id, self.now()),
        };
        if hit.is_some() {
            self.inner.cache.reads.hit();
        } else {
            self.inner.cache.reads.miss();
        }
        hit
    }

    /// A cache miss. Concurrent misses of one account share one read (and the
    /// refresh it may lead to): the first caller reads under the account's flight
    /// lock, and those that queued behind it take what it got. When it got nothing
    /// (an error, or it was cancelled before it ended) each of them reads on its own.
    /// With the account when this caller read or wrote it.
    async fn credentials_uncached(
        &self,
        id: &str,
    ) -> Result<(Credentials, Option<ConnectedAccount>), Error> {
        let parsed = ConnectedAccountId::parse(id)?;
        let refresher = &self.inner.refresher;
        let flight = refresher.lock_for(&parsed);
        let shared = async {
            let (mut last, ended) = flight.wait().await;
            if !ended {
                return Some(self.read_in_flight(&parsed, &flight, &mut last).await);
            }
            // Another caller read or refreshed while this one waited.
            last.as_ref()
                .filter(|(fresh, _)| !self.due(fresh, self.now()))
                .map(|(fresh, account)| Ok((fresh.clone(), Some(account.clone()))))
        }
        .await;
        refresher.release(&parsed, flight);
        match shared {
            Some(result) => result,
            None => {
                let (now, generation) = (self.now(), self.inner.cache.generation());
                let (account, credentials) = self.active(&parsed).await?;
                if self.due(&credentials, now) {
                    let fresh = self.refresh_credentials(&parsed, Due::IfExpiring).await?;
                    return Ok((fresh, None));
                }
                self.keep(&parsed, &credentials, now, generation);
                Ok((credentials, Some(account)))
            }
        }
    }

    /// Reads the account's credentials and caches them, or refreshes them when they
    /// are due, holding its flight lock (`last`), where what it got is left for the
    /// callers queued behind. With the account as read or written.
    async fn read_in_flight(
        &self,
        id: &ConnectedAccountId,
        flight: &FlightState,
        last: &mut Option<Got>,
    ) -> Result<(Credentials, Option<ConnectedAccount>), Error> {
        let (now, generation) = (self.now(), self.inner.cache.generation());
        let (account, credentials) = match self.active(id).await {
            Ok(read) => read,
            Err(e) => {
                flight.end(last, None);
                return Err(e);
            }
        };
        if self.due(&credentials, now) {
            let read = Some((account, credentials));
            return self
                .refresh_held(id, Due::IfExpiring, read, flight, last)
                .await
                .map(|(credentials, account)| (credentials, Some(account)));
        }
        self.keep(id, &credentials, now, generation);
        flight.end(last, Some((credentials.clone(), account.clone())));
        Ok((credentials, Some(account)))
    }

    /// Whether `credentials` expire within the refresh margin of `now`.
    fn due(&self, credentials: &Credentials, now: chrono::DateTime<chrono::Utc>) -> bool {
        credentials.expires_within(now, self.inner.settings.refresh_margin)
    }

    /// Caches credentials read at `now` by a read that began at `generation`, with
    /// the time they become due for a refresh.
    fn keep(
        &self,
        id: &ConnectedAccountId,
        credentials: &Credentials,
        now: chrono::DateTime<chrono::Utc>,
        generation: u64,
    ) {
        let refresh_at = credentials
            .expires_at()
            .map(|at| at - self.inner.settings.refresh_margin);
        let refresh_deadline = match (&self.inner.fast_clock, refresh_at) {
            (Some(clock), Some(at)) => Some(clock.deadline(at, now)),
            _ => None,
        };
        let cached = Cached {
            credentials: credentials.clone(),
            refresh_at,
            refresh_deadline,
        };
        self.inner.cache.put(id, cached, generation);
    }

    /// Refreshes under the account's lock: callers in this process queue on it and
    /// reuse what the refresh they waited for gave; the first takes the store's lock
    /// (other processes queue there) and re-reads after taking it, so a refresh
    /// another process just made is reused, not repeated.
    pub(crate) async fn refresh_credentials(
        &self,
        id: &ConnectedAccountId,
        due: Due,
    ) -> Result<Credentials, Error> {
        let refresher = &self.inner.refresher;
        let flight = refresher.lock_for(id);
        let result = async {
            let (mut last, ended) = flight.wait().await;
            // A read or refresh that ended while this caller waited: its credentials
            // serve it too, without the store's lock (1,000 callers on one token: one
            // refresh, not one store lock each). Only such a one: older results may
            // have been replaced in the store since.
            if ended && let Some((fresh, _)) = last.as_ref() {
                let reuse = match &due {
                    Due::IfExpiring => !self.due(fresh, self.now()),
                    Due::IfStill(used) => used != fresh,
                    Due::Now => false,
                };
                if reuse {
                    return Ok(fresh.clone());
                }
            }
            self.refresh_held(id, due, None, &flight, &mut last)
                .await
                .map(|(credentials, _)| credentials)
        }
        .await;
        refresher.release(id, flight);
        result
    }

    /// Refreshes with the account's flight lock held (`last`): takes the store's
    /// lock (other processes queue there), refreshes, and leaves what it got in
    /// `last`. `read` is the account as this caller read it just before, if it did.
    /// With the account as read under the locks, or as written by the refresh.
    async fn refresh_held(
        &self,
        id: &ConnectedAccountId,
        due: Due,
        read: Option<(ConnectedAccount, Credentials)>,
        flight: &FlightState,
        last: &mut Option<Got>,
    ) -> Result<(Credentials, ConnectedAccount), Error> {
        // The store's lock, the refresh and its write run on a task of their own, to
        // the end: a caller that gives up (a request timed out, a client gone) does
        // not cut a refresh short between the provider's answer and the write of what
        // it gave (a rotated refresh token is spent once the provider has answered),
        // nor leave a lock half taken. Those queued behind this caller then wait at
        // the store's lock until the write, and reuse what it wrote.
        let kh = self.clone();
        let owned = id.clone();
        let task =
            tokio::spawn(async move { kh.refresh_under_store_lock(&owned, due, read).await });
        let result = task.await.unwrap_or_else(|e| {
            let how = if e.is_panic() { "panicked" } else { "was cancelled" };
            Err(Error::Internal(format!(
                "the refresh of {id} {how}; the account is unchanged unless the provider answered, try again"
            )))
        });
        flight.end(last, result.as_ref().ok().cloned());
        result
    }

    /// Takes the store's lock of `id` (other processes queue there), refreshes, and
    /// releases the lock once what the refresh gave is written.
    async fn refresh_under_store_lock(
        &self,
        id: &ConnectedAccountId,
        due: Due,
        read: Option<(ConnectedAccount, Credentials)>,
    ) -> Result<(Credentials, ConnectedAccount), Error> {
        let store_lock = self.store().lock_account(id).await?;
        // The store read the account's version once the lock was held: when it is
        // still the one read before, nobody (in any process) changed the account in
        // between, and that read stands. Otherwise it is read again, so that a
        // refresh another process just made is reused, not repeated.
        let read = read.filter(|(account, _)| store_lock.version() == Some(account.version));
        let result = self.refresh_locked(id, due, read).await;
        if let Err(e) = store_lock.release().await {
            tracing::warn!(account = %id, error = %e, "could not release the refresh lock; it is released when it lapses");
        }
        result
    }

    /// The refresh itself, under both locks, of the account as `read` under them
    /// (read now when `None`). With the account as read, or as the refresh wrote it.
    async fn refresh_locked(
        &self,
        id: &ConnectedAccountId,
        due: Due,
        read: Option<(ConnectedAccount, Credentials)>,
    ) -> Result<(Credentials, ConnectedAccount), Error> {
        let refresher = &self.inner.refresher;
        {
            let (account, credentials) = match read {
                Some(read) => read,
                None => self.active(id).await?,
            };
            let now = self.now();
            let force = match &due {
                Due::IfExpiring => false,
                Due::Now => true,
                // Someone else refreshed them meanwhile: theirs are the fresh ones.
                Due::IfStill(used) if *used != credentials => {
                    return Ok((credentials, account));
                }
                Due::IfStill(_) => true,
            };
            if !force && !self.due(&credentials, now) {
                return Ok((credentials, account));
            }
            let expired = credentials.expires_within(now, chrono::Duration::zero());
            if let Some(backoff) = refresher.backoff(id, now) {
                if !expired && !force {
                    return Ok((credentials, account));
                }
                return Err(Error::Scheme(SchemeError::Unavailable {
                    message: format!(
                        "the last refresh of {id} failed ({}); next try after {}",
                        backoff.last_error,
                        backoff.until.to_rfc3339()
                    ),
                }));
            }
            let (mut integration, mut copy) = self
                .integration_for_refresh(&account, crate::Integrations::CACHED_FOR)
                .await?;
            let refreshed = loop {
                let scheme = self.schemes().get(&integration.auth_scheme)?;
                let effective = effective_integration(&integration, &account.params);
                let started = std::time::Instant::now();
                let refreshed = match self.provider_client(&integration, &account.params) {
                    Ok(http) => {
                        let cx = AccountContext::new(&effective, &account, &credentials, now)
                            .with_http(&http);
                        scheme.refresh(cx).await
                    }
                    // A host typed by the user that is now a private one, as written:
                    // a failure like the provider's being down (backed off, ACTIVE
                    // kept). (One that resolves inward fails the call, the same way.)
                    Err(e) => Err(SchemeError::Unavailable {
                        message: e.to_string(),
                    }),
                };
                crate::metered::refresh_done(account.app.as_str(), started, &refreshed);
                if refreshed.is_ok() || !copy {
                    break refreshed;
                }
                // Refused or failed with this process's copy of the integration: tried
                // again when the store holds a newer one (another process changed it).
                copy = false;
                let (stored, _) = self
                    .integration_for_refresh(&account, std::time::Duration::ZERO)
                    .await?;
                if stored.updated_at == integration.updated_at {
                    break refreshed;
                }
                tracing::info!(account = %id, integration = %stored.id, "the integration changed since this process read it; refreshing again with it");
                integration = stored;
            };
            match refreshed {
                Ok(None) => Ok((credentials, account)),
                Ok(Some(fresh)) => {
                    let (kept, stored) = self.store_refreshed(account, &credentials, fresh).await?;
                    refresher.succeeded(id);
                    tracing::info!(account = %id, expires_at = ?kept.expires_at(), "credentials refreshed");
                    Ok((kept, stored))
                }
                Err(SchemeError::Rejected { message }) => {
                    let reason = format!("refresh refused: {message}");
                    let reason_for_store = reason.clone();
                    let stored = self
                        .connected_accounts()
                        .change(id.as_str(), move |acc, _| {
                            Ok((acc.status == ConnectionStatus::Active).then(|| {
                                (ConnectionStatus::Expired, Some(reason_for_store.clone()))
                            }))
                        })
                        .await?;
                    tracing::warn!(account = %id, %reason, "refresh refused; the account is EXPIRED");
                    Err(Error::NotActive {
                        id: id.to_string(),
                        status: stored.status,
                        reason: stored.status_reason.or(Some(reason)),
                    })
                }
                Err(e) => {
                    let backoff = refresher.failed(id, now, e.to_string());
                    tracing::warn!(account = %id, error = %e, retry_after = %backoff.until, "refresh failed; the account stays ACTIVE");
                    self.emit(
                        EventKind::RefreshFailed,
                        &account,
                        Some(format!(
                            "refresh failed ({e}); next try after {}",
                            backoff.until.to_rfc3339()
                        )),
                    )
                    .await;
                    if !expired && !force {
                        Ok((credentials, account))
                    } else {
                        Err(e.into())
                    }
                }
            }
        }
    }

    /// Stores `fresh`, refreshed from `used`, keeping whatever else changed
    /// meanwhile: the credentials kept and the account as stored. When the stored
    /// credentials are no longer `used` (written by someone else meanwhile, which the
    /// locks should have prevented: a lease that lapsed under a refresh slower than
    /// it), those stay and `fresh` is not written over them.
    async fn store_refreshed(
        &self,
        mut account: ConnectedAccount,
        used: &Credentials,
        fresh: Credentials,
    ) -> Result<(Credentials, ConnectedAccount), Error> {
        for _ in 0..8 {
            account.expires_at = fresh.expires_at();
            account.updated_at = self.now();
            match self
                .store()
                .update_account(&account, CredentialsUpdate::Refreshed(&fresh), &[])
                .await
            {
                Ok(stored) => return Ok((fresh, stored)),
                Err(StoreError::Conflict(_)) => {
                    let (current, stored) = self
                        .store()
                        .get_account_and_credentials(&account.id)
                        .await?
                        .ok_or_else(|| not_found(account.id.as_str()))?;
                    if let Some(stored) = stored.filter(|stored| stored != used) {
                        tracing::warn!(account = %account.id, "the account's credentials were written by another refresh during this one; those are kept");
                        return Ok((stored, current));
                    }
                    account = current;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!(
            "connected account {} kept changing during a refresh",
            account.id
        )))
    }

    /// Waits until the account leaves `INITIATED` (the user finished or failed), and
    /// returns it. Polls the store, so it sees callbacks handled by other processes.
    ///
    /// # Errors
    /// A malformed id, none with that id, or [`Error::TimedOut`].
    pub async fn wait_for_connection(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<ConnectedAccount, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = std::time::Duration::from_millis(50);
        // Woken at once by an event of the account (from this instance or, on a shared
        // store, another); the store is polled too, for processes that publish none.
        let mut events = self.events();
        loop {
            let account = self.connected_accounts().get(id).await?;
            if account.status != ConnectionStatus::Initiated {
                return Ok(account);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::TimedOut(format!(
                    "connected account {id} is still INITIATED after {timeout:?}: the user has not finished connecting"
                )));
            }
            tokio::select! {
                () = tokio::time::sleep(pause.min(deadline - now)) => {}
                () = event_of(&mut events, &account.id) => {}
            }
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// Puts an `ACTIVE` account's credentials on `request`, as its scheme and integration say.
    ///
    /// # Errors
    /// Those of [`Keyhaven::credentials`], and a scheme that cannot authorize the request.
    pub async fn authorize(
        &self,
        id: &str,
        mut request: OutgoingRequest,
    ) -> Result<OutgoingRequest, Error> {
        let credentials = self.credentials(id).await?;
        // credentials() checked that the account is ACTIVE; only its metadata is needed
        // now, without reading and decrypting the credentials a second time.
        let parsed = ConnectedAccountId::parse(id)?;
        let account = self
            .store()
            .get_account(&parsed)
            .await?
            .ok_or_else(|| not_found(id))?;
        let integration = self.integration_of(&account).await?;
        let scheme = self.schemes().get(&integration.auth_scheme)?;
        let effective = effective_integration(&integration, &account.params);
        // The integration's fixed headers (an API version ...), unless the caller set them.
        for (name, value) in &fixed_headers(&effective) {
            request.headers.entry(name).or_insert_with(|| value.clone());
        }
        let cx = AccountContext::new(&effective, &account, &credentials, self.now())
            .with_http(self.http_client());
        scheme.authorize(&cx, &mut request)?;
        Ok(request)
    }
}

/// An integration's fixed request headers (`request_headers` of its config: an API
/// version ...), those that are valid HTTP.
pub(crate) fn fixed_headers(integration: &Integration) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    if let Some(serde_json::Value::Object(headers)) = integration.config.get("request_headers") {
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                value.as_str().map(http::HeaderValue::from_str),
            ) {
                out.insert(name, value);
            }
        }
    }
    out
}
