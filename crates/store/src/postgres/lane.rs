//! The request lane: the connections the hot statements run on (an account or an
//! integration read, a listing, a count, an account update without events, which is
//! what a refresh writes).
//!
//! sqlx's pool pings every connection that comes back to it, one more round trip
//! for every statement, and that cannot be turned off in sqlx 0.9: measured, it cost
//! the server's listing on PostgreSQL about a quarter of its throughput. The lane
//! is a pool of plain sqlx connections ([`deadpool`]) that pings a connection only
//! when that can tell something:
//! - when it has not been handed out for more than [`PING_IF_IDLE_FOR`]: it may have
//!   been closed meanwhile (a restart, a failover, an idle timeout on the way);
//! - when its last statement did not run to its end: it failed, or its caller gave
//!   up half-way (a dropped future). The connection may then be broken or still
//!   carry the end of an answer. sqlx reads up to the end of any answer left over
//!   before its next statement, and the ping does that at once, or shows the
//!   connection is broken, and it is replaced.
//!
//! A statement runs through [`Lane::run`], which marks its connection unfinished
//! until the statement has returned, so no statement can forget the mark.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult};
use keyhaven_core::StoreError;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::{PING_IF_IDLE_FOR, map_err};

/// A connection of the lane, and whether its last statement ran to its end.
pub(super) struct LaneConnection {
    raw: PgConnection,
    finished: bool,
}

/// Opens the lane's connections and checks them when they are handed out again.
pub(super) struct Connector {
    options: PgConnectOptions,
    /// A connection idle for longer than this is pinged when handed out.
    ping_if_idle_for: Duration,
    /// How many pings it sent.
    pings: AtomicU64,
}

impl managed::Manager for Connector {
    type Type = LaneConnection;
    type Error = sqlx::Error;

    /// Boxed: opening a connection (TCP, TLS, authentication) is a future of about
    /// 10 KiB, and inline it made every statement's future as large (the pool's
    /// `get` holds it), allocated and copied per statement although a connection is
    /// opened rarely.
    async fn create(&self) -> Result<LaneConnection, sqlx::Error> {
        Ok(LaneConnection {
            raw: Box::pin(PgConnection::connect_with(&self.options)).await?,
            finished: true,
        })
    }

    async fn recycle(
        &self,
        conn: &mut LaneConnection,
        metrics: &Metrics,
    ) -> RecycleResult<sqlx::Error> {
        if !conn.finished || metrics.last_used() > self.ping_if_idle_for {
            self.pings.fetch_add(1, Ordering::Relaxed);
            Box::pin(conn.raw.ping()).await?;
            conn.finished = true;
        }
        Ok(())
    }
}

/// The pool of the lane.
#[derive(Clone)]
pub(super) struct Lane {
    pool: managed::Pool<Connector>,
}

impl Lane {
    /// A lane of at most `max` connections, opened when first needed; a statement
    /// waits at most `wait` for one.
    pub(super) fn new(
        options: PgConnectOptions,
        max: usize,
        wait: Duration,
    ) -> Result<Self, StoreError> {
        Self::pinging_after(options, max, wait, PING_IF_IDLE_FOR)
    }

    /// [`Lane::new`], pinging connections idle for longer than `idle`.
    fn pinging_after(
        options: PgConnectOptions,
        max: usize,
        wait: Duration,
        idle: Duration,
    ) -> Result<Self, StoreError> {
        let pool = managed::Pool::builder(Connector {
            options,
            ping_if_idle_for: idle,
            pings: AtomicU64::new(0),
        })
        .max_size(max)
        .wait_timeout(Some(wait))
        // Opening a connection (TCP, TLS, authentication) or a ping that takes
        // this long is a server that is not answering: fail with `Unavailable`.
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot make the connection pool: {e}")))?;
        Ok(Self { pool })
    }

    /// Runs one statement on a connection of the lane: `statement` gets the
    /// connection and answers what sqlx answered.
    pub(super) async fn run<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        let mut conn = self.get().await.map_err(map_err)?;
        conn.finished = false;
        let answer = statement(&mut conn.raw).await.map_err(map_err)?;
        conn.finished = true;
        Ok(answer)
    }

    /// Opens a connection now (or checks an idle one) and leaves it in the lane.
    pub(super) async fn open_one(&self) -> Result<(), sqlx::Error> {
        self.get().await.map(drop)
    }

    /// Fills the lane: asks for as many connections as it may hold, all at once, and
    /// keeps each until all are had (else the first, already open, would be handed
    /// out again and again), so those not open yet are opened side by side.
    /// Statements wait meanwhile, as they would for a connection being opened. How
    /// many are open after.
    pub(super) async fn open_all(&self) -> Result<usize, sqlx::Error> {
        let max = self.pool.status().max_size;
        let had = futures::future::join_all((0..max).map(|_| self.get())).await;
        let had = had.into_iter().collect::<Result<Vec<_>, _>>()?;
        drop(had);
        Ok(self.size())
    }

    /// A connection of the lane, or why there is none, as sqlx's own pool says it: the
    /// server's error as it is, a wait that ran out (for a free connection, to open
    /// one, to ping one) as `PoolTimedOut`, a closed lane as `PoolClosed`.
    async fn get(&self) -> Result<managed::Object<Connector>, sqlx::Error> {
        self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => e,
            managed::PoolError::Closed => sqlx::Error::PoolClosed,
            // The rest are timeouts: the lane has a runtime and no hooks.
            _ => sqlx::Error::PoolTimedOut,
        })
    }

    /// How many connections the lane holds.
    pub(super) fn size(&self) -> usize {
        self.pool.status().size
    }

    /// How many pings the lane sent.
    #[cfg(test)]
    fn pings(&self) -> u64 {
        self.pool.manager().pings.load(Ordering::Relaxed)
    }

    /// Closes the lane: its idle connections are dropped, statements waiting fail.
    pub(super) fn close(&self) {
        self.pool.close();
    }
}

/// How long opening a connection, or a ping, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A lane of one connection to `KEYHAVEN_TEST_DATABASE_URL` that pings idle
    /// connections after `idle`, and that URL; `None` (after saying why) when it is
    /// unset, unless `KEYHAVEN_REQUIRE_SERVICES=1`.
    fn lane_pinging_after(idle: Duration) -> Option<(Lane, String)> {
        let Ok(url) = std::env::var("KEYHAVEN_TEST_DATABASE_URL") else {
            let why = "KEYHAVEN_TEST_DATABASE_URL is not set: PostgreSQL tests are skipped (cargo xtask test sets it)";
            assert!(
                std::env::var("KEYHAVEN_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{why}"
            );
            #[allow(clippy::print_stderr)]
            {
                eprintln!("SKIPPED: {why}");
            }
            return None;
        };
        let lane =
            Lane::pinging_after(url.parse().unwrap(), 1, Duration::from_secs(10), idle).unwrap();
        Some((lane, url))
    }

    /// A lane whose connections are never idle long enough to be pinged for it: a
    /// stall of the machine between two statements cannot add a ping.
    fn lane() -> Option<(Lane, String)> {
        lane_pinging_after(Duration::from_secs(3600))
    }

    async fn number(lane: &Lane, n: i32) -> Result<i32, StoreError> {
        lane.run(async |c| {
            sqlx::query_scalar::<_, i32>("SELECT $1::int4")
                .bind(n)
                .fetch_one(c)
                .await
        })
        .await
    }

    async fn backend(lane: &Lane) -> i32 {
        lane.run(async |c| {
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(c)
                .await
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn finished_statements_reuse_their_connection_without_a_ping() {
        let Some((lane, _)) = lane() else { return };
        let first = backend(&lane).await;
        for n in 0..50 {
            assert_eq!(number(&lane, n).await.unwrap(), n);
        }
        assert_eq!(backend(&lane).await, first, "one connection, reused");
        assert_eq!(lane.pings(), 0, "no statement was followed by a ping");
    }

    #[tokio::test]
    async fn an_idle_connection_is_pinged_before_it_is_handed_out() {
        let Some((lane, _)) = lane_pinging_after(Duration::from_millis(50)) else {
            return;
        };
        assert_eq!(number(&lane, 1).await.unwrap(), 1);
        assert_eq!(lane.pings(), 0, "a new connection is not pinged");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(number(&lane, 2).await.unwrap(), 2);
        assert_eq!(lane.pings(), 1, "idle for longer than 50 ms: one ping");
    }

    #[tokio::test]
    async fn an_abandoned_statement_leaves_nothing_for_the_next() {
        let Some((lane, _)) = lane() else { return };
        let first = backend(&lane).await;
        // The caller gives up while the server is still answering.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            lane.run(async |c| {
                sqlx::query_scalar::<_, i32>("SELECT 7 FROM pg_sleep(2)")
                    .fetch_one(c)
                    .await
            }),
        )
        .await;
        assert!(abandoned.is_err(), "the statement was abandoned");
        // The next statement gets its own answer, on the same connection, after
        // one ping that read to the end of the abandoned one's.
        assert_eq!(number(&lane, 8).await.unwrap(), 8);
        assert_eq!(lane.pings(), 1);
        assert_eq!(backend(&lane).await, first);
    }

    #[tokio::test]
    async fn a_cut_connection_fails_one_statement_and_is_replaced() {
        let Some((lane, url)) = lane() else { return };
        let first = backend(&lane).await;
        let mut admin = PgConnection::connect(&url).await.unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(first)
            .execute(&mut admin)
            .await
            .unwrap();
        // Used just now, so handed out without a ping: the statement fails, clearly.
        let cut = number(&lane, 1).await.unwrap_err();
        assert!(
            matches!(cut, StoreError::Unavailable(_)),
            "a cut connection is Unavailable: {cut}"
        );
        // Its failure marks it: pinged, found broken, replaced by a new connection.
        assert_eq!(number(&lane, 2).await.unwrap(), 2);
        assert_ne!(backend(&lane).await, first, "a new connection");
    }
}
