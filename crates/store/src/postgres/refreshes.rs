//! Refreshes' writes, in groups: one statement and one commit for every refresh
//! queued meanwhile ([`super::groups`]).
//!
//! A refresh's write ([`CredentialsUpdate::Refreshed`](keyhaven_core::CredentialsUpdate::Refreshed))
//! is the account as it was read, with new credentials, expiry and times: a
//! compare-and-set on its version. One at a time, each was a statement and a commit
//! waiting for its own disk flush, on one of the lane's connections; 1,000 at once
//! took about 220 ms on this 2-core machine, half of it waiting for flushes. In a
//! group, each row is written only if its version is still the one read and its
//! entity and labels are unchanged (their indexes and the labels table stay as they
//! are). A row the group did not write goes back to its caller, who writes it alone
//! with the single-row statement: that one says why it cannot (changed meanwhile,
//! gone) or writes what changed. The group's notices are sent after it commits
//! ([`super::notices`]).

use std::collections::HashSet;
use std::sync::Arc;

use keyhaven_core::StoreError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::copy_of;
use super::groups::{Groups, Member};
use super::lane::Lane;
use super::notices::Deferred;
use crate::rows::AccountRow;

/// How many refreshes one statement writes at most.
const GROUP_MAX: usize = 256;
/// How many group statements run at once (of the lane's connections).
const GROUPS_AT_ONCE: usize = 3;

/// The group statement: the rows whose version, entity and labels are still the
/// ones given, written whole; answers the ids it wrote.
///
/// The rows are locked first, in the order of their ids, and only then written:
/// groups run at once and an account can be in two of them (a second refresh's
/// write queued while the first one's group runs), and two statements that lock
/// the same rows in different orders deadlock (PostgreSQL then fails one of them
/// after `deadlock_timeout`). Locking in one order, every group waits for the
/// other at its first shared row and none holds a row the other has.
const WRITE: &str = "WITH u AS MATERIALIZED (SELECT u.* \
    FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
    $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[], $13::int8[], $14::int8[], \
    $15::int8[], $16::bytea[], $17::int8[]) \
    AS u(id, expected, entity_id, integration_id, app, auth_scheme, status, status_reason, labels, \
    params, redirect_url, expires_at, version, created_at, updated_at, credentials, credentials_expires_at) \
    JOIN connected_accounts AS l ON l.id = u.id ORDER BY l.id FOR UPDATE OF l) \
UPDATE connected_accounts AS c SET integration_id = u.integration_id, \
    app = u.app, auth_scheme = u.auth_scheme, status = u.status, status_reason = u.status_reason, \
    params = u.params, redirect_url = u.redirect_url, expires_at = u.expires_at, version = u.version, \
    created_at = u.created_at, updated_at = u.updated_at, credentials = u.credentials, \
    credentials_expires_at = u.credentials_expires_at \
FROM u \
WHERE c.id = u.id AND c.version = u.expected AND c.entity_id = u.entity_id AND c.labels = u.labels \
RETURNING c.id";

/// One refresh's write, waiting for its group.
pub(super) struct Write {
    pub(super) row: AccountRow,
    /// The version the stored row must still have.
    pub(super) expected: i64,
    pub(super) credentials: Vec<u8>,
    pub(super) credentials_expire_at: Option<i64>,
    answer: oneshot::Sender<Result<bool, StoreError>>,
}

impl Member for Write {
    type Key = String;
    fn key(&self) -> String {
        self.row.id.clone()
    }
    fn gave_up(&self) -> bool {
        self.answer.is_closed()
    }
}

/// The queue of refreshes' writes of one store.
#[derive(Clone)]
pub(super) struct RefreshWrites {
    groups: Groups<Write>,
}

impl RefreshWrites {
    pub(super) fn new(lane: Lane, notices: Arc<Deferred>) -> Self {
        Self {
            groups: Groups::new(
                Arc::new(Semaphore::new(GROUPS_AT_ONCE)),
                GROUP_MAX,
                move |group, permit| write_group(lane.clone(), notices.clone(), group, permit),
            ),
        }
    }

    /// Writes `row` with its credentials in the next group: `true` when written (its
    /// notice is queued), `false` when the caller must write it alone.
    pub(super) async fn write(
        &self,
        row: AccountRow,
        expected: i64,
        credentials: Vec<u8>,
        credentials_expire_at: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.groups.push(Write {
            row,
            expected,
            credentials,
            credentials_expire_at,
            answer,
        });
        answered
            .await
            .map_err(|_| StoreError::Unavailable("the store is closing".into()))?
    }
}

async fn write_group(
    lane: Lane,
    notices: Arc<Deferred>,
    group: Vec<Write>,
    _permit: OwnedSemaphorePermit,
) {
    fn column<T>(group: &[Write], f: impl Fn(&Write) -> T) -> Vec<T> {
        group.iter().map(f).collect()
    }
    let ids = column(&group, |w| w.row.id.clone());
    let statement = sqlx::query_scalar::<_, String>(WRITE)
        .bind(&ids)
        .bind(column(&group, |w| w.expected))
        .bind(column(&group, |w| w.row.entity_id.clone()))
        .bind(column(&group, |w| w.row.integration_id.clone()))
        .bind(column(&group, |w| w.row.app.clone()))
        .bind(column(&group, |w| w.row.auth_scheme.clone()))
        .bind(column(&group, |w| w.row.status.clone()))
        .bind(column(&group, |w| w.row.status_reason.clone()))
        .bind(column(&group, |w| w.row.labels.clone()))
        .bind(column(&group, |w| w.row.params.clone()))
        .bind(column(&group, |w| w.row.redirect_url.clone()))
        .bind(column(&group, |w| w.row.expires_at))
        .bind(column(&group, |w| w.row.version))
        .bind(column(&group, |w| w.row.created_at))
        .bind(column(&group, |w| w.row.updated_at))
        .bind(column(&group, |w| w.credentials.clone()))
        .bind(column(&group, |w| w.credentials_expire_at));
    // Should the group still be chosen as a deadlock's victim (against a statement
    // of another kind that locks accounts in another order), nothing of it was
    // written: its callers write alone, as they do for a row it left out.
    let written = lane.run(async |c| match statement.fetch_all(c).await {
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("40P01" | "40001")) =>
        {
            tracing::warn!(
                accounts = group.len(),
                "a group of refreshed writes lost a lock conflict; each is written alone"
            );
            Ok(Vec::new())
        }
        other => other,
    });
    match written.await {
        Ok(written) => {
            let written: HashSet<String> = written.into_iter().collect();
            for w in group {
                let done = written.contains(&w.row.id);
                if done {
                    notices.send(format!("{} {}", w.row.id, w.row.entity_id));
                }
                let _ = w.answer.send(Ok(done));
            }
        }
        Err(e) => {
            for w in group {
                let _ = w.answer.send(Err(copy_of(&e)));
            }
        }
    }
}

#[cfg(all(test, feature = "conformance"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, Instant};

    use keyhaven_core::{ConnectedAccount, CredentialsUpdate, Store};
    use sqlx::Connection;

    use super::*;
    use crate::conformance::{
        account, credentials, fresh_postgres_database, integration, unique_app,
    };
    use crate::rows::prepare_update;
    use crate::{KeyRing, MasterKey, PostgresStore};

    /// A fresh database's URL and store, with two accounts of one integration whose
    /// credentials are "old" and "new", highest id first, inserted in that order.
    async fn two_accounts() -> Option<(String, PostgresStore, [ConnectedAccount; 2])> {
        let url = fresh_postgres_database().await?;
        let store = PostgresStore::connect(&url, KeyRing::new(MasterKey::generate().unwrap(), []))
            .await
            .unwrap();
        let int = integration(&unique_app("group"), "OAUTH2");
        store.insert_integration(&int).await.unwrap();
        let mut two = [account(&int, "ann", &[]), account(&int, "bea", &[])];
        two.sort_by(|a, b| b.id.as_str().cmp(a.id.as_str()));
        for (acc, token) in two.iter().zip(["old", "new"]) {
            store
                .insert_account(acc, Some(&credentials(token)), &[])
                .await
                .unwrap();
        }
        Some((url, store, two))
    }

    /// A group given its rows against the order of their ids (and stored that way)
    /// still locks the lower id first: while it waits for the higher one, held by
    /// another transaction, the lower one is already its own. A group that locked
    /// in the order given (or stored) would hold nothing yet, and two such groups
    /// with the same rows in two orders deadlock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_locks_its_rows_in_the_order_of_their_ids() {
        let Some((url, store, two)) = two_accounts().await else {
            return;
        };
        let (high, low) = (&two[0], &two[1]);

        let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
        sqlx::query("SELECT 1 FROM connected_accounts WHERE id = $1 FOR UPDATE")
            .bind(high.id.as_str())
            .execute(&mut holder)
            .await
            .unwrap();

        let fresh = credentials("new");
        let mut answers = Vec::new();
        let mut group = Vec::new();
        for acc in [high, low] {
            let prepared =
                prepare_update(&store.key_ring(), acc, CredentialsUpdate::Refreshed(&fresh))
                    .unwrap();
            let Some((Some(blob), expiry)) = prepared.credentials else {
                panic!("a refresh writes credentials");
            };
            let (answer, answered) = oneshot::channel();
            answers.push(answered);
            group.push(Write {
                row: prepared.row,
                expected: prepared.expected,
                credentials: blob,
                credentials_expire_at: expiry,
                answer,
            });
        }
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let notices = Arc::new(Deferred::new(store.pool.clone()));
        let writing = tokio::spawn(write_group(store.lane.clone(), notices, group, permit));

        // Wait until the group waits for the row the holder has.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut holder)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the group never waited for the held row"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
        let taken = sqlx::query("SELECT 1 FROM connected_accounts WHERE id = $1 FOR UPDATE NOWAIT")
            .bind(low.id.as_str())
            .execute(&mut other)
            .await;
        match taken {
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {}
            other => panic!("the lower id should be the waiting group's: {other:?}"),
        }

        sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
        writing.await.unwrap();
        for answered in answers {
            assert!(answered.await.unwrap().unwrap(), "both written");
        }
        for acc in [high, low] {
            let (stored, creds) = store
                .get_account_and_credentials(&acc.id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored.version, acc.version + 1);
            assert_eq!(creds.unwrap().get_str("token"), Some("new"));
        }
    }

    /// New credentials under the same key change no indexed value (the key header is
    /// a generated column, migration 6): a refresh's write is a HOT update, the row
    /// alone, not an entry in each of the table's indexes. Moving the account to
    /// another entity (indexed) is not, which shows the counter counts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_credentials_under_the_same_key_are_a_hot_update() {
        let Some((url, _store, [one, other])) = two_accounts().await else {
            return;
        };
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        // The counter holds what this backend has not reported yet: a difference.
        let counter = "SELECT pg_stat_get_xact_tuples_hot_updated('connected_accounts'::regclass)";
        for (set, hot) in [
            (
                "credentials = (SELECT credentials FROM connected_accounts WHERE id = $2)",
                1,
            ),
            ("entity_id = 'moved'", 0),
        ] {
            sqlx::query("BEGIN").execute(&mut c).await.unwrap();
            let before: i64 = sqlx::query_scalar(counter).fetch_one(&mut c).await.unwrap();
            let sql = format!(
                "UPDATE connected_accounts SET {set}, version = version + 1 WHERE id = $1 AND $2 <> ''"
            );
            let n = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(one.id.as_str())
                .bind(other.id.as_str())
                .execute(&mut c)
                .await
                .unwrap()
                .rows_affected();
            assert_eq!(n, 1);
            let after: i64 = sqlx::query_scalar(counter).fetch_one(&mut c).await.unwrap();
            assert_eq!(after - before, hot, "SET {set}");
            sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
        }
    }
}
