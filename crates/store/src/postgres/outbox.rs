//! The event log and the webhook outbox in PostgreSQL, shared by every instance.
//!
//! Events are appended in the writer's transaction, with a NOTIFY that reaches the
//! other instances when it commits. Sequence numbers become visible in their order:
//! a transaction takes [`EVENT_ORDER_LOCK`] before it appends, and holds it until it
//! has committed, so no event can take a number while an earlier number is still
//! uncommitted. A reader replaying events after one it saw (`Last-Event-ID`) would
//! otherwise miss an event numbered before it that committed after it was read.
//! (NOTIFY makes PostgreSQL serialise the commits of these transactions anyway, so
//! the lock costs them little.) A webhook's cursor still moves only past events
//! appended more than [`PG_SETTLE`] ago, for events appended by a keyhaven from
//! before the lock; the newer ones are looked at again on each pass (a unique key
//! makes each delivery once). Deliveries are claimed with `FOR UPDATE SKIP LOCKED`,
//! so two instances never claim the same one.

use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountEvent, Delivery, DeliveryFilter, DeliveryOutcome, StoreError, WebhookTarget,
};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::{EVENT_CHANNEL, PostgresStore, map_err, safe};
use crate::outbox::{
    DELIVERY_COLUMNS, DeliveryRow, EventRow, decode_event, deliveries_query, lease_end,
    outcome_columns, sql_limit, wanted,
};
use crate::rows::micros;

/// How long an event appended to PostgreSQL may stay invisible after its sequence
/// number was taken (its transaction not yet committed) and still get its
/// deliveries: a webhook's cursor moves only past events appended longer ago than
/// this, and the newer ones are looked at again on each pass (each delivery is made
/// once: a unique key). SQLite commits in sequence order and needs none.
const PG_SETTLE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The advisory lock (the two-key form, apart from the accounts' one-key locks)
/// that an appending transaction holds until it commits: it orders the events'
/// sequence numbers as their commits. "kh", 1.
const EVENT_ORDER_LOCK: (i32, i32) = (0x6b68, 1);

/// Appends events in `tx`, each told to the other instances when it commits. Call
/// it last before the commit: it holds every other appending transaction until then.
pub(super) async fn append(
    tx: &mut Transaction<'static, Postgres>,
    events: &[EventRow],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(EVENT_ORDER_LOCK.0)
        .bind(EVENT_ORDER_LOCK.1)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    let recorded = micros(Utc::now());
    for e in events {
        sqlx::query(
            "INSERT INTO events (id, account_id, kind, at, recorded_at, body) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&e.id)
        .bind(&e.account)
        .bind(e.kind)
        .bind(e.at)
        .bind(recorded)
        .bind(&e.body)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(EVENT_CHANNEL)
            .bind(&e.body)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

fn delivery_row(r: &PgRow) -> Result<DeliveryRow, StoreError> {
    let get = |e: sqlx::Error| map_err(e);
    Ok(DeliveryRow {
        id: r.try_get(0).map_err(get)?,
        webhook: r.try_get(1).map_err(get)?,
        body: r.try_get(2).map_err(get)?,
        state: r.try_get(3).map_err(get)?,
        attempts: i64::from(r.try_get::<i32, _>(4).map_err(get)?),
        next_at: r.try_get(5).map_err(get)?,
        last_status: r.try_get::<Option<i32>, _>(6).map_err(get)?.map(i64::from),
        last_error: r.try_get(7).map_err(get)?,
        created_at: r.try_get(8).map_err(get)?,
        updated_at: r.try_get(9).map_err(get)?,
        claim: r.try_get(10).map_err(get)?,
    })
}

fn decode_rows(rows: &[PgRow]) -> Result<Vec<Delivery>, StoreError> {
    rows.iter().map(|r| delivery_row(r)?.decode()).collect()
}

/// Makes the deliveries of `target` for the events after its cursor, and moves the
/// cursor past those that have settled.
async fn fan_out(
    tx: &mut Transaction<'static, Postgres>,
    target: &WebhookTarget,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // A new target starts at the newest event; two instances seeing it first at once
    // both try, one insert wins.
    sqlx::query(
        "INSERT INTO webhook_cursors (webhook, seq) SELECT $1, COALESCE(MAX(seq), 0) FROM events ON CONFLICT (webhook) DO NOTHING",
    )
    .bind(&target.key)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    let cursor: i64 =
        sqlx::query_scalar("SELECT seq FROM webhook_cursors WHERE webhook = $1 FOR UPDATE")
            .bind(&target.key)
            .fetch_one(&mut **tx)
            .await
            .map_err(map_err)?;
    let kinds: Vec<String> = wanted(target).into_iter().map(str::to_owned).collect();
    let micros_now = micros(now);
    sqlx::query(
        "INSERT INTO webhook_deliveries (webhook, event_seq, state, attempts, next_at, claimed_until, created_at, updated_at) \
         SELECT $1, seq, 'pending', 0, $3, 0, $3, $3 FROM events WHERE seq > $2 AND (cardinality($4::text[]) = 0 OR kind = ANY($4)) \
         ON CONFLICT (event_seq, webhook) DO NOTHING",
    )
    .bind(&target.key)
    .bind(cursor)
    .bind(micros_now)
    .bind(&kinds)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    let settled = micros(Utc::now() - PG_SETTLE);
    sqlx::query(
        "UPDATE webhook_cursors SET seq = GREATEST(seq, COALESCE((SELECT MAX(seq) FROM events WHERE seq > $2 AND recorded_at < $3), seq)) WHERE webhook = $1",
    )
    .bind(&target.key)
    .bind(cursor)
    .bind(settled)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

impl PostgresStore {
    pub(super) async fn claim(
        &self,
        targets: &[WebhookTarget],
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        // Fan-out first, in its own transaction: the cursor rows it locks are not
        // held while deliveries are claimed.
        let mut tx = super::begin(&self.pool).await.map_err(map_err)?;
        for t in targets {
            fan_out(&mut tx, t, now).await?;
        }
        tx.commit().await.map_err(map_err)?;
        let keys: Vec<String> = targets.iter().map(|t| t.key.clone()).collect();
        let token = crate::random_token()?;
        let rows = sqlx::query(safe(format!(
            "WITH due AS (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_at <= $3 AND claimed_until <= $3 \
             AND webhook = ANY($5) ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED), \
             claimed AS (UPDATE webhook_deliveries w SET claim = $1, claimed_until = $2, attempts = w.attempts + 1, updated_at = $3 \
             FROM due WHERE w.id = due.id RETURNING w.*) \
             SELECT {DELIVERY_COLUMNS} FROM claimed d JOIN events e ON e.seq = d.event_seq ORDER BY d.id"
        )))
        .bind(&token)
        .bind(lease_end(now, lease))
        .bind(micros(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(&keys)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        decode_rows(&rows)
    }

    pub(super) async fn finish(
        &self,
        id: i64,
        claim: &str,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (state, next_at, status, error) = outcome_columns(outcome);
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET state = $3, next_at = COALESCE($4, next_at), last_status = $5, last_error = $6, \
             claim = NULL, claimed_until = 0, updated_at = $7 WHERE id = $1 AND claim = $2",
        )
        .bind(id)
        .bind(claim)
        .bind(state)
        .bind(next_at)
        .bind(status.and_then(|s| i32::try_from(s).ok()))
        .bind(error)
        .bind(micros(now))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(n.rows_affected() == 1)
    }

    pub(super) async fn redeliver_now(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<Delivery>, StoreError> {
        let rows = sqlx::query(safe(format!(
            "WITH changed AS (UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = $2, claim = NULL, claimed_until = 0, updated_at = $2 \
             WHERE id = $1 RETURNING *) SELECT {DELIVERY_COLUMNS} FROM changed d JOIN events e ON e.seq = d.event_seq"
        )))
        .bind(id)
        .bind(micros(now))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(decode_rows(&rows)?.into_iter().next())
    }

    pub(super) async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<Delivery>, StoreError> {
        let (sql, args) = deliveries_query(filter, &|n| format!("${n}"));
        decode_rows(&self.rows(sql, args).await?)
    }

    pub(super) async fn events_after_id(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<AccountEvent>>, StoreError> {
        let from: i64 = match after {
            None => 0,
            Some(id) => match sqlx::query_scalar("SELECT seq FROM events WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?
            {
                Some(seq) => seq,
                None => return Ok(None),
            },
        };
        let bodies: Vec<String> =
            sqlx::query_scalar("SELECT body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(from)
                .bind(sql_limit(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        bodies
            .iter()
            .map(|b| decode_event(b))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub(super) async fn purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "DELETE FROM events WHERE at < $1 AND NOT EXISTS \
             (SELECT 1 FROM webhook_deliveries d WHERE d.event_seq = events.seq AND d.state = 'pending')",
        )
        .bind(micros(before))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(n.rows_affected())
    }
}
