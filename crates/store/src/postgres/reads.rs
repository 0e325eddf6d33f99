//! Account reads with credentials, in groups: one statement for every read queued
//! meanwhile ([`super::groups`]).
//!
//! A refresh storm read each account twice (the cache miss, then again under the
//! refresh lock, now only when the lock shows it changed); 1,000 accounts at once
//! were 2,000 single-row statements on the lane's connections. A group reads up to [`GROUP_MAX`] ids in one statement
//! (`id = ANY($1)`). A read that finds nothing queued and a group permit free runs
//! at once in its caller, as the single-row statement it was (no task hop, so a
//! read alone costs what it did). Rows come back undecrypted: each caller decrypts
//! its own, in parallel. 1,000 cold reads at once: 35 -> 8 ms on this machine.

use std::collections::HashMap;
use std::sync::Arc;

use keyhaven_core::StoreError;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::copy_of;
use super::groups::{Groups, Member};
use super::lane::Lane;
use crate::rows::ACCOUNT_COLUMNS;

/// How many ids one statement reads at most.
const GROUP_MAX: usize = 256;
/// How many group statements run at once (of the lane's connections).
const GROUPS_AT_ONCE: usize = 4;

/// One read, waiting for its group.
struct Read {
    id: String,
    answer: oneshot::Sender<Result<Option<PgRow>, StoreError>>,
}

impl Member for Read {
    type Key = String;
    fn key(&self) -> String {
        self.id.clone()
    }
    fn gave_up(&self) -> bool {
        self.answer.is_closed()
    }
}

/// The queue of account reads of one store.
#[derive(Clone)]
pub(super) struct AccountReads {
    lane: Lane,
    /// The single-row statement, for a read alone.
    one: Arc<str>,
    groups: Groups<Read>,
}

impl AccountReads {
    pub(super) fn new(lane: Lane) -> Self {
        let sql: Arc<str> = format!(
            "SELECT {ACCOUNT_COLUMNS}, credentials, credentials_expires_at FROM connected_accounts WHERE id = ANY($1)"
        )
        .into();
        let one = format!(
            "SELECT {ACCOUNT_COLUMNS}, credentials, credentials_expires_at FROM connected_accounts WHERE id = $1"
        )
        .into();
        Self {
            lane: lane.clone(),
            one,
            groups: Groups::new(
                Arc::new(Semaphore::new(GROUPS_AT_ONCE)),
                GROUP_MAX,
                move |group, permit| read_group(lane.clone(), sql.clone(), group, permit),
            ),
        }
    }

    /// The row of account `id` (its columns, then `credentials` and
    /// `credentials_expires_at`), if there is one.
    pub(super) async fn read(&self, id: &str) -> Result<Option<PgRow>, StoreError> {
        if let Some(_alone) = self.groups.try_alone() {
            let sql = super::safe(&*self.one);
            return self
                .lane
                .run(async |c| sqlx::query(sql).bind(id).fetch_optional(c).await)
                .await;
        }
        let (answer, answered) = oneshot::channel();
        self.groups.push(Read {
            id: id.to_owned(),
            answer,
        });
        answered
            .await
            .map_err(|_| StoreError::Unavailable("the store is closing".into()))?
    }
}

async fn read_group(lane: Lane, sql: Arc<str>, group: Vec<Read>, _permit: OwnedSemaphorePermit) {
    let ids: Vec<&str> = group.iter().map(|r| r.id.as_str()).collect();
    let sql = super::safe(&*sql);
    let rows = lane
        .run(async |c| sqlx::query(sql).bind(&ids).fetch_all(c).await)
        .await;
    match rows {
        Ok(rows) => {
            let mut by_id: HashMap<String, PgRow> = HashMap::with_capacity(rows.len());
            for row in rows {
                match row.try_get::<String, _>(0) {
                    Ok(id) => {
                        by_id.insert(id, row);
                    }
                    Err(e) => {
                        let e = super::map_err(e);
                        for r in group {
                            let _ = r.answer.send(Err(copy_of(&e)));
                        }
                        return;
                    }
                }
            }
            for r in group {
                let row = by_id.remove(&r.id);
                let _ = r.answer.send(Ok(row));
            }
        }
        Err(e) => {
            for r in group {
                let _ = r.answer.send(Err(copy_of(&e)));
            }
        }
    }
}
