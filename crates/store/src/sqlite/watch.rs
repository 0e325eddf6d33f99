//! Commits made by other connections (other processes, this store's writer), fed to
//! the caches as [`StoreChange::Everything`], and the events they appended, fed as
//! [`StoreChange::Event`] (listeners drop the ones their own process made).

use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use keyhaven_core::{ChangeSink, StoreChange};
use rusqlite::Connection;

use super::outbox::{events_from, newest_seq};
use super::{Inner, SqliteStore, open_connection};

impl SqliteStore {
    /// Watches for commits by other connections (other processes, this store's
    /// writer) and reports [`StoreChange::Everything`] (SQLite has no finer feed of
    /// changes), then each event appended since the last look, in order.
    pub(super) fn watch(weak: Weak<Inner>, path: PathBuf, sink: ChangeSink) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: caches will not see changes made by other processes");
            return;
        };
        handle.spawn(async move {
            let Ok(conn) = open_connection(&path) else {
                return;
            };
            let version = |c: &Connection| {
                c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                    .ok()
            };
            let mut last = version(&conn);
            let mut seen = match newest_seq(&conn) {
                Ok(seq) => seq,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the event log: events of other processes will not be heard");
                    i64::MAX
                }
            };
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if weak.upgrade().is_none() {
                    return;
                }
                let now = version(&conn);
                if now != last {
                    last = now;
                    sink(StoreChange::Everything);
                    loop {
                        match events_from(&conn, seen, 500) {
                            Ok(events) => {
                                let more = events.len() == 500;
                                for (seq, event) in events {
                                    seen = seq;
                                    sink(StoreChange::Event(event));
                                }
                                if !more {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read new events of other processes");
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
}
