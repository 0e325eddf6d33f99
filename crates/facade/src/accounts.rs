//! Connected accounts: read, list, delete, enable, disable; their credentials, and
//! requests authorized with them.

use keyhaven_core::{
    AccountContext, AccountFilter, ConnectedAccount, ConnectedAccountId, ConnectionStatus,
    Credentials, CredentialsUpdate, Error, Integration, OutgoingRequest, Page, StoreError,
};

use crate::Keyhaven;

fn not_found(id: &str) -> Error {
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

    /// One page of the accounts matching `filter` (entities, apps, integrations,
    /// statuses: any of; labels: all of), oldest first.
    ///
    /// # Errors
    /// A store failure.
    pub async fn list(&self, filter: &AccountFilter) -> Result<Page<ConnectedAccount>, Error> {
        Ok(self.kh.store().list_accounts(filter).await?)
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
        let parsed = ConnectedAccountId::parse(id)?;
        let (account, credentials) = self
            .kh
            .store()
            .get_account_and_credentials(&parsed)
            .await?
            .ok_or_else(|| not_found(id))?;
        if !self.kh.store().delete_account(&parsed).await? {
            return Err(not_found(id));
        }
        tracing::info!(account = %account.id, "connected account deleted");
        if let Some(credentials) = credentials {
            let revoke = async {
                let integration = self.integration_of(&account).await?;
                let scheme = self.kh.schemes().get(&integration.auth_scheme)?;
                let cx = AccountContext::new(&integration, &account, &credentials, self.kh.now());
                scheme.revoke(cx).await.map_err(Error::from)
            };
            if let Err(e) = revoke.await {
                tracing::warn!(account = %account.id, error = %e, "revocation at the provider failed; the account is deleted anyway");
            }
        }
        Ok(())
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
    async fn change(
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
            match self
                .kh
                .store()
                .update_account(&next, CredentialsUpdate::Keep)
                .await
            {
                Ok(stored) => {
                    tracing::info!(account = %stored.id, from = %account.status, to = %stored.status, "status changed");
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

    async fn integration_of(&self, account: &ConnectedAccount) -> Result<Integration, Error> {
        self.kh
            .store()
            .get_integration(&account.integration_id)
            .await?
            .ok_or_else(|| {
                Error::Internal(format!(
                    "integration {} of connected account {} is missing",
                    account.integration_id, account.id
                ))
            })
    }
}

impl Keyhaven {
    /// The account and its credentials, when it is `ACTIVE`.
    async fn active(&self, id: &str) -> Result<(ConnectedAccount, Credentials), Error> {
        let parsed = ConnectedAccountId::parse(id)?;
        let (account, credentials) = self
            .store()
            .get_account_and_credentials(&parsed)
            .await?
            .ok_or_else(|| not_found(id))?;
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

    /// The credentials of an `ACTIVE` account, to use directly.
    ///
    /// # Errors
    /// A malformed id, none with that id, or an account that is not `ACTIVE`
    /// (the error says its status and what to do).
    pub async fn credentials(&self, id: &str) -> Result<Credentials, Error> {
        Ok(self.active(id).await?.1)
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
        let (account, credentials) = self.active(id).await?;
        let integration = self.connected_accounts().integration_of(&account).await?;
        let scheme = self.schemes().get(&integration.auth_scheme)?;
        let cx = AccountContext::new(&integration, &account, &credentials, self.now());
        scheme.authorize(&cx, &mut request)?;
        Ok(request)
    }
}
