//! Events: every status change becomes an [`AccountEvent`], written to the store's
//! event log in the same transaction as the change, told to this process's
//! listeners once written, and to other processes and instances sharing the store
//! (PostgreSQL's LISTEN/NOTIFY, SQLite's log read by each process), whose listeners
//! hear it too.

use keyhaven_core::{AccountEvent, ConnectedAccount, EventKind};
use tokio::sync::broadcast;

use crate::Keyhaven;

/// How many events a slow listener may fall behind before it misses some (it is
/// then told how many it missed).
const BACKLOG: usize = 1024;

/// This process's listeners, and who this instance is.
#[derive(Clone)]
pub(crate) struct EventBus {
    sender: broadcast::Sender<AccountEvent>,
    instance: std::sync::Arc<str>,
}

impl EventBus {
    pub(crate) fn new() -> Self {
        let instance =
            keyhaven_core::random_hex::<8>().unwrap_or_else(|_| keyhaven_core::to_hex(&[0; 8]));
        Self {
            sender: broadcast::channel(BACKLOG).0,
            instance: format!("kh_{instance}").into(),
        }
    }

    /// An event another instance published; ours came back too and are told already.
    pub(crate) fn relay_foreign(&self, event: AccountEvent) {
        if *event.origin != *self.instance {
            // No listener is not an error.
            let _ = self.sender.send(event);
        }
    }
}

impl Keyhaven {
    /// Listens to events: every status change of every account, made by this instance
    /// or (with a shared PostgreSQL store) by any other. A listener that falls more than
    /// 1024 events behind gets `RecvError::Lagged` and goes on with the newest.
    pub fn events(&self) -> broadcast::Receiver<AccountEvent> {
        self.inner.events.sender.subscribe()
    }

    /// This instance's id, the `origin` of the events it makes.
    pub fn instance_id(&self) -> &str {
        &self.inner.events.instance
    }

    /// The event `kind` of `account` as it is about to be stored, to be written with
    /// it (see [`Keyhaven::announce`]).
    pub(crate) fn event(
        &self,
        kind: EventKind,
        account: &ConnectedAccount,
        reason: Option<String>,
    ) -> Result<AccountEvent, keyhaven_core::Error> {
        AccountEvent::new(kind, account, reason, self.now(), self.instance_id())
    }

    /// The events of a new account: `connection.created`, and the event of its
    /// status when it starts `ACTIVE` or `FAILED`.
    pub(crate) fn created_events(
        &self,
        account: &ConnectedAccount,
    ) -> Result<Vec<AccountEvent>, keyhaven_core::Error> {
        let mut events = vec![self.event(EventKind::Created, account, None)?];
        if let Some(kind) = EventKind::for_status(account.status) {
            events.push(self.event(kind, account, None)?);
        }
        Ok(events)
    }

    /// Tells this process's listeners of events the store has kept (other processes
    /// hear of them from the store).
    pub(crate) fn announce(&self, events: Vec<AccountEvent>) {
        for event in events {
            tracing::debug!(event = %event.kind, account = %event.connected_account_id, "event");
            // No listener is not an error.
            let _ = self.inner.events.sender.send(event);
        }
    }

    /// Keeps an event that goes with no write of the account (a refresh that failed
    /// for a while) in the store's event log, and tells the listeners.
    pub(crate) async fn emit(
        &self,
        kind: EventKind,
        account: &ConnectedAccount,
        reason: Option<String>,
    ) {
        let event = match self.event(kind, account, reason) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot make an event");
                return;
            }
        };
        if let Err(e) = self
            .store()
            .append_events(std::slice::from_ref(&event))
            .await
        {
            tracing::warn!(error = %e, event = %event.kind, "an event could not be kept in the event log; webhooks will not get it");
        }
        self.announce(vec![event]);
    }

    /// The events kept after the one with id `after` (`None`: from the oldest kept),
    /// oldest first, at most `limit`: what a listener that heard `after` last has
    /// missed. Events are kept for the configured retention
    /// ([`KeyhavenBuilder::event_retention`](crate::KeyhavenBuilder::event_retention)).
    ///
    /// # Errors
    /// `after` names no kept event ([`Error::NotFound`]: it is older than the
    /// retention, or unknown); the store keeps no event log, or cannot be read.
    pub async fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AccountEvent>, keyhaven_core::Error> {
        self.store()
            .events_after(after, limit)
            .await?
            .ok_or_else(|| keyhaven_core::Error::NotFound {
                kind: "event",
                id: after.unwrap_or_default().to_owned(),
                hint: "it is older than the event retention, or was never made; read the current state instead",
            })
    }
}
