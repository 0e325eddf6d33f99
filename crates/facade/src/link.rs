//! Connection links: a single-use, expiring link an app hands its end user (by mail,
//! in a chat), to keyhaven's own page where the user connects: on to the provider
//! for OAuth, or to the connect form for keys and logins; then on to the app's
//! redirect URL. The link is made at once, with its `INITIATED` account, so the app
//! can follow the account while the user takes their time.
//!
//! The link's token is kept like an OAuth state (hashed, encrypted, expiring with
//! the same lapse), with where it leads: opening the page does not use it up (mail
//! scanners and link previews fetch pages), following it does, once.

use chrono::{DateTime, Utc};
use keyhaven_core::{
    ConnectedAccount, ConnectedAccountId, ConnectionRequest, ConnectionStatus, Error, PendingState,
    SecretFields,
};
use serde_json::Value;

use crate::Keyhaven;
use crate::connect::new_state;

/// The key that marks a pending state as a connection link's.
const LINK_MARKER: &str = "keyhaven_connection_link";
/// The key of where the link leads (the provider's authorization URL carries the
/// OAuth state, so it is kept encrypted with the rest).
const TARGET: &str = "target";

/// Whether a pending state belongs to a connection link.
pub(crate) fn is_link_state(pending: &PendingState) -> bool {
    pending.data.expose().get(LINK_MARKER) == Some(&Value::Bool(true))
}

fn refused(reason: &str) -> Error {
    crate::callback::link_refused("link", reason)
}

/// A new connection link.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionLink {
    /// The `INITIATED` account the link completes (already `ACTIVE` when the
    /// request carried everything, such as an API key).
    pub connected_account_id: ConnectedAccountId,
    /// Its status now.
    pub connection_status: ConnectionStatus,
    /// The link's single-use token: the page is `<server>/link/<token>`. Secret
    /// until used: whoever holds it connects an account for the entity.
    pub token: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
}

/// What a link's page shows before the user goes on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LinkPage {
    /// The account the link completes.
    pub account: ConnectedAccount,
    /// The app's name for people (`GitHub`), from the catalogue when it is there.
    pub app_name: String,
    /// When the link stops working.
    pub expires_at: DateTime<Utc>,
    /// The origin the link leads on to (the provider's, or this server's for the
    /// connect form), for the page's Content-Security-Policy; never the whole URL,
    /// which carries the flow's state.
    pub target_origin: Option<String>,
}

impl Keyhaven {
    /// Makes a connection link: initiates the connection as
    /// [`initiate_connection`](Self::initiate_connection) does (so every check of
    /// the request applies, the redirect URL's included), and keeps where the user
    /// must go (the provider, or the connect form) behind a single-use token that
    /// lapses with the connection's state ([`KeyhavenBuilder::pending_ttl`](crate::KeyhavenBuilder::pending_ttl)).
    ///
    /// # Errors
    /// As [`initiate_connection`](Self::initiate_connection); nothing is stored then.
    /// A store failure while keeping the link leaves the initiated account, which
    /// lapses as any unfinished one.
    pub async fn create_link(&self, request: ConnectionRequest) -> Result<ConnectionLink, Error> {
        let out = self.initiate_connection(request).await?;
        let token = new_state()?;
        let expires_at = self.now() + self.inner.settings.pending_ttl;
        let mut data = SecretFields::new();
        data.insert(LINK_MARKER, true);
        if let Some(target) = &out.redirect_url {
            data.insert(TARGET, target.clone());
        }
        self.store()
            .put_pending_state(&PendingState::new(
                token.clone(),
                out.connected_account_id.clone(),
                data,
                expires_at,
            ))
            .await?;
        tracing::info!(account = %out.connected_account_id, "connection link made");
        Ok(ConnectionLink {
            connected_account_id: out.connected_account_id,
            connection_status: out.connection_status,
            token,
            expires_at,
        })
    }

    /// What a link's page shows. Reading it does not use the link up.
    ///
    /// # Errors
    /// An unknown, used or expired link, or an account no longer waiting for it.
    pub async fn link_page(&self, token: &str) -> Result<LinkPage, Error> {
        let (pending, account) = self.live_link_token(token, "link", is_link_state).await?;
        let app_name = self
            .catalog()
            .get(account.app.as_str())
            .map_or_else(|| account.app.to_string(), |e| e.name.clone());
        let target_origin = pending
            .data
            .expose()
            .get(TARGET)
            .and_then(Value::as_str)
            .and_then(|t| url::Url::parse(t).ok())
            .map(|u| u.origin().ascii_serialization());
        Ok(LinkPage {
            account,
            app_name,
            expires_at: pending.expires_at,
            target_origin,
        })
    }

    /// Uses a link up and answers where the user goes on to: the provider's
    /// authorization page or the connect form. Of two calls with one token, one
    /// gets the way on; the other is refused.
    ///
    /// # Errors
    /// An unknown, used or expired link, or an account no longer waiting for it.
    pub async fn follow_link(&self, token: &str) -> Result<url::Url, Error> {
        self.live_link_token(token, "link", is_link_state).await?;
        let pending = self
            .store()
            .take_pending_state(token)
            .await?
            .filter(is_link_state)
            .ok_or_else(|| refused("this link was used meanwhile"))?;
        let target = pending
            .data
            .expose()
            .get(TARGET)
            .and_then(Value::as_str)
            .ok_or_else(|| refused("this link leads nowhere: the connection needs no user"))?;
        url::Url::parse(target)
            .map_err(|_| Error::Internal("a connection link kept a URL that does not parse".into()))
    }
}
