//! Events: every status change becomes an [`AccountEvent`], told to this process's
//! listeners at once and to other instances sharing the store (PostgreSQL's
//! LISTEN/NOTIFY), whose listeners hear it too.

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

    /// Tells everyone that `account` (as stored now) went through `kind`.
    pub(crate) async fn emit(
        &self,
        kind: EventKind,
        account: &ConnectedAccount,
        reason: Option<String>,
    ) {
        let event = match AccountEvent::new(kind, account, reason, self.now(), self.instance_id()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot make an event");
                return;
            }
        };
        tracing::debug!(event = %event.kind, account = %event.connected_account_id, "event");
        let _ = self.inner.events.sender.send(event.clone());
        if let Err(e) = self.store().publish_event(&event).await {
            tracing::warn!(error = %e, event = %event.kind, "other instances could not be told of an event");
        }
    }
}
