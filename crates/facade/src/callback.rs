//! The end of a redirect flow: the provider sends the user back with a code (or an
//! error) and the state; the account becomes `ACTIVE` or `FAILED`.

use std::collections::BTreeMap;

use keyhaven_core::{
    CompleteContext, ConnectedAccount, ConnectionStatus, CredentialsUpdate, Error, PendingState,
    StoreError,
};
use url::Url;

use crate::Keyhaven;
use crate::accounts::not_found;
use crate::integrations::effective_integration;

/// The most of a provider's error text kept as a status reason.
const MAX_REASON: usize = 500;

/// What came of a callback.
#[derive(Debug, Clone)]
pub struct CallbackOutcome {
    /// The account, now `ACTIVE` or `FAILED`.
    pub account: ConnectedAccount,
    /// Where to send the user: the account's `redirect_url` with `status`
    /// (`success` or `failed`) and `connectedAccountId` added. `None` when the
    /// account has no redirect URL: show keyhaven's own success or failure page.
    pub redirect_to: Option<Url>,
}

impl CallbackOutcome {
    /// Whether the connection succeeded.
    pub fn succeeded(&self) -> bool {
        self.account.status == ConnectionStatus::Active
    }
}

fn clip(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON)
        .collect();
    if text.chars().count() > MAX_REASON {
        out.push('…');
    }
    out
}

fn refused(reason: &str) -> Error {
    Error::invalid("state", format!("{reason}; start the connection again"))
}

/// The account a pending state completes, if it still may.
pub(crate) enum Waiting {
    /// `INITIATED`, and the state is live.
    Ready(ConnectedAccount),
    /// The state expired.
    Expired,
    /// The account is no longer `INITIATED`.
    Done(ConnectedAccount),
}

/// A link refused (a connect form's, field `token`, or a connection link's, field
/// `link`): the reason and what to do.
pub(crate) fn link_refused(field: &'static str, reason: &str) -> Error {
    Error::invalid(
        field,
        format!("{reason}; ask the app for a new connection link"),
    )
}

impl Keyhaven {
    /// The pending state behind a link's `token` (one that `is_kind` accepts) and the
    /// `INITIATED` account it completes, without using the token up; refused, naming
    /// `field`, when it is unknown, used, expired or its account has moved on.
    pub(crate) async fn live_link_token(
        &self,
        token: &str,
        field: &'static str,
        is_kind: fn(&PendingState) -> bool,
    ) -> Result<(PendingState, ConnectedAccount), Error> {
        if token.is_empty() {
            return Err(link_refused(field, "the link has no token"));
        }
        let pending = self
            .store()
            .get_pending_state(token)
            .await?
            .filter(is_kind)
            .ok_or_else(|| link_refused(field, "this link is unknown or was already used"))?;
        match self.waiting_account(&pending).await? {
            Waiting::Ready(account) => Ok((pending, account)),
            Waiting::Expired => Err(link_refused(field, "this link expired")),
            Waiting::Done(account) => Err(link_refused(
                field,
                &format!("this connection is {} already", account.status),
            )),
        }
    }

    /// Whether `pending` may still complete its account.
    pub(crate) async fn waiting_account(&self, pending: &PendingState) -> Result<Waiting, Error> {
        if pending.expires_at < self.now() {
            return Ok(Waiting::Expired);
        }
        let account = self
            .store()
            .get_account(&pending.account_id)
            .await?
            .ok_or_else(|| not_found(pending.account_id.as_str()))?;
        Ok(if account.status == ConnectionStatus::Initiated {
            Waiting::Ready(account)
        } else {
            Waiting::Done(account)
        })
    }

    /// Handles the provider's callback, given its query parameters.
    ///
    /// The state must be one keyhaven issued, unused and unexpired: it is taken
    /// atomically, so a replay is refused. An `error` parameter (the user denied...)
    /// marks the account `FAILED` with the provider's error and description;
    /// otherwise the scheme exchanges the code and the account becomes `ACTIVE`,
    /// or `FAILED` with the reason when the exchange fails.
    ///
    /// # Errors
    /// A missing, unknown, reused or expired state, or an account that is no longer
    /// `INITIATED`: nothing is changed then.
    pub async fn handle_callback(
        &self,
        query: &BTreeMap<String, String>,
    ) -> Result<CallbackOutcome, Error> {
        let state = query
            .get("state")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| refused("the callback has no state"))?;
        let pending = self
            .store()
            .take_pending_state(state)
            .await?
            .ok_or_else(|| refused("the state is unknown or was already used"))?;
        if crate::form::is_form_state(&pending) || crate::link::is_link_state(&pending) {
            // A connect form's or a connection link's token is not a provider's
            // state: put it back untouched.
            self.store().put_pending_state(&pending).await?;
            return Err(refused(
                "this is a connection link's token, not an OAuth state",
            ));
        }
        let now = self.now();
        let account = match self.waiting_account(&pending).await? {
            Waiting::Ready(account) => account,
            Waiting::Expired => {
                return Err(refused("the state expired: the user took too long"));
            }
            Waiting::Done(account) => {
                return Err(Error::Conflict(format!(
                    "connected account {} is {}, not INITIATED: its callback was handled already",
                    account.id, account.status
                )));
            }
        };
        let integration = self.integration_of(&account).await?;
        let scheme = self.schemes().get(&integration.auth_scheme)?;

        let result = match query.get("error") {
            Some(error) => Err(clip(&match query.get("error_description") {
                Some(d) => format!("{error}: {d}"),
                None => error.clone(),
            })),
            None => {
                let callback_url = self.callback_url().clone();
                let effective = effective_integration(&integration, &account.params);
                match self.provider_client(&integration, &account.params) {
                    // A host typed by the user that is a private one, as written:
                    // FAILED. (One that resolves inward fails the call, the same way.)
                    Err(e) => Err(clip(&e.to_string())),
                    Ok(http) => {
                        let cx = CompleteContext::new(
                            &effective,
                            &account,
                            query,
                            &pending.data,
                            &callback_url,
                            now,
                        )
                        .with_http(&http);
                        let completed = scheme.complete(cx).await;
                        crate::metered::provider_call(
                            account.app.as_str(),
                            "complete",
                            completed.is_ok(),
                        );
                        completed.map_err(|e| clip(&e.to_string()))
                    }
                }
            }
        };
        self.finish_connection(account, result, None).await
    }

    /// Ends the `INITIATED` account's connection with the user's outcome: `ACTIVE`
    /// with `credentials` (and `params`, when the user gave them), or `FAILED` with
    /// the reason. Tells the listeners, and says where to send the user.
    pub(crate) async fn finish_connection(
        &self,
        account: ConnectedAccount,
        result: Result<keyhaven_core::Credentials, String>,
        params: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<CallbackOutcome, Error> {
        let mut next = account;
        next.updated_at = self.now();
        let stored = match &result {
            Ok(credentials) => {
                next.status = ConnectionStatus::Active;
                next.status_reason = None;
                next.expires_at = credentials.expires_at();
                if let Some(params) = params {
                    next.params = params;
                }
                self.write_callback(next, CredentialsUpdate::Set(credentials))
                    .await?
            }
            Err(reason) => {
                next.status = ConnectionStatus::Failed;
                next.status_reason = Some(clip(reason));
                self.write_callback(next, CredentialsUpdate::Keep).await?
            }
        };
        tracing::info!(account = %stored.id, status = %stored.status, reason = ?stored.status_reason, "connection finished");
        let redirect_to = stored
            .redirect_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok())
            .map(|mut u| {
                u.query_pairs_mut()
                    .append_pair("status", if result.is_ok() { "success" } else { "failed" })
                    .append_pair("connectedAccountId", stored.id.as_str());
                u
            });
        Ok(CallbackOutcome {
            account: stored,
            redirect_to,
        })
    }

    async fn write_callback(
        &self,
        mut next: ConnectedAccount,
        credentials: CredentialsUpdate<'_>,
    ) -> Result<ConnectedAccount, Error> {
        let events = match keyhaven_core::EventKind::for_status(next.status) {
            Some(kind) => vec![self.event(kind, &next, None)?],
            None => Vec::new(),
        };
        for _ in 0..8 {
            match self
                .store()
                .update_account(&next, credentials, &events)
                .await
            {
                Ok(stored) => {
                    self.announce(events);
                    return Ok(stored);
                }
                Err(StoreError::Conflict(_)) => {
                    let current = self
                        .store()
                        .get_account(&next.id)
                        .await?
                        .ok_or_else(|| not_found(next.id.as_str()))?;
                    if current.status != ConnectionStatus::Initiated {
                        return Err(Error::Conflict(format!(
                            "connected account {} became {} while its callback was handled",
                            current.id, current.status
                        )));
                    }
                    next.version = current.version;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!(
            "connected account {} kept changing during its callback",
            next.id
        )))
    }
}
