//! The event log and the webhook outbox in SQLite. One writer at a time (SQLite's
//! lock, across processes) makes every step here atomic; events get their sequence
//! numbers in commit order, so a webhook's cursor can move right up to the newest.

use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountEvent, Delivery, DeliveryFilter, DeliveryOutcome, StoreError, WebhookTarget,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, map_err, sql_value};
use crate::outbox::{
    DELIVERY_COLUMNS, DeliveryRow, EventRow, decode_event, deliveries_query, lease_end,
    outcome_columns, sql_limit, wanted,
};
use crate::rows::micros;

/// Appends events in the writer's transaction.
pub(super) fn append(conn: &Connection, events: &[EventRow]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut st = conn
        .prepare_cached(
            "INSERT INTO events (id, account_id, kind, at, recorded_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(map_err)?;
    let recorded = micros(Utc::now());
    for e in events {
        st.execute(params![e.id, e.account, e.kind, e.at, recorded, e.body])
            .map_err(map_err)?;
    }
    Ok(())
}

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        webhook: r.get(1)?,
        body: r.get(2)?,
        state: r.get(3)?,
        attempts: r.get(4)?,
        next_at: r.get(5)?,
        last_status: r.get(6)?,
        last_error: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        claim: r.get(10)?,
    })
}

fn one_delivery(conn: &Connection, id: i64) -> Result<Option<Delivery>, StoreError> {
    conn.query_row(
        &format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.id = ?1"
        ),
        [id],
        delivery_row,
    )
    .optional()
    .map_err(map_err)?
    .map(DeliveryRow::decode)
    .transpose()
}

/// The newest sequence number, 0 when there is none.
fn newest(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(map_err)
}

/// Makes the deliveries of `target` for the events after its cursor.
fn fan_out(conn: &Connection, target: &WebhookTarget, now: i64) -> Result<(), StoreError> {
    let cursor: Option<i64> = conn
        .query_row(
            "SELECT seq FROM webhook_cursors WHERE webhook = ?1",
            [&target.key],
            |r| r.get(0),
        )
        .optional()
        .map_err(map_err)?;
    let newest = newest(conn)?;
    let Some(cursor) = cursor else {
        conn.execute(
            "INSERT INTO webhook_cursors (webhook, seq) VALUES (?1, ?2)",
            params![target.key, newest],
        )
        .map_err(map_err)?;
        return Ok(());
    };
    if newest <= cursor {
        return Ok(());
    }
    let kinds = wanted(target);
    let filter = if kinds.is_empty() {
        String::new()
    } else {
        // Kind names are constants of `EventKind`, never input.
        let list: Vec<String> = kinds.iter().map(|k| format!("'{k}'")).collect();
        format!(" AND kind IN ({})", list.join(", "))
    };
    conn.execute(
        &format!(
            "INSERT INTO webhook_deliveries (webhook, event_seq, state, attempts, next_at, claimed_until, created_at, updated_at) \
             SELECT ?1, seq, 'pending', 0, ?4, 0, ?4, ?4 FROM events WHERE seq > ?2 AND seq <= ?3{filter} \
             ON CONFLICT (event_seq, webhook) DO NOTHING"
        ),
        params![target.key, cursor, newest, now],
    )
    .map_err(map_err)?;
    conn.execute(
        "UPDATE webhook_cursors SET seq = ?2 WHERE webhook = ?1",
        params![target.key, newest],
    )
    .map_err(map_err)?;
    Ok(())
}

impl SqliteStore {
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
        let targets = targets.to_vec();
        let token = crate::random_token()?;
        let until = lease_end(now, lease);
        let now = micros(now);
        let rows = self
            .write(move |conn, _| {
                for t in &targets {
                    fan_out(conn, t, now)?;
                }
                let keys: Vec<rusqlite::types::Value> = targets
                    .iter()
                    .map(|t| rusqlite::types::Value::Text(t.key.clone()))
                    .collect();
                let marks: Vec<String> = (0..keys.len()).map(|i| format!("?{}", i + 5)).collect();
                let mut args: Vec<rusqlite::types::Value> = vec![
                    token.clone().into(),
                    until.into(),
                    now.into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ];
                args.extend(keys);
                conn.execute(
                    &format!(
                        "UPDATE webhook_deliveries SET claim = ?1, claimed_until = ?2, attempts = attempts + 1, updated_at = ?3 \
                         WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_at <= ?3 AND claimed_until <= ?3 \
                         AND webhook IN ({}) ORDER BY id LIMIT ?4)",
                        marks.join(", ")
                    ),
                    rusqlite::params_from_iter(args),
                )
                .map_err(map_err)?;
                // The token is this call's own: what it names is what was claimed.
                let out = {
                    let mut st = conn
                        .prepare(&format!(
                            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.seq = d.event_seq WHERE d.claim = ?1 ORDER BY d.id"
                        ))
                        .map_err(map_err)?;
                    st.query_map([&token], delivery_row)
                        .map_err(map_err)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(map_err)?
                };
                Ok(out)
            })
            .await?;
        rows.into_iter().map(DeliveryRow::decode).collect()
    }

    pub(super) async fn finish(
        &self,
        id: i64,
        claim: &str,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (state, next_at, status, error) = outcome_columns(outcome);
        let claim = claim.to_owned();
        let now = micros(now);
        self.write(move |conn, _| {
            let n = conn
                .execute(
                    "UPDATE webhook_deliveries SET state = ?3, next_at = COALESCE(?4, next_at), last_status = ?5, last_error = ?6, \
                     claim = NULL, claimed_until = 0, updated_at = ?7 WHERE id = ?1 AND claim = ?2",
                    params![id, claim, state, next_at, status, error, now],
                )
                .map_err(map_err)?;
            Ok(n == 1)
        })
        .await
    }

    pub(super) async fn redeliver_now(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<Delivery>, StoreError> {
        let now = micros(now);
        let changed = self
            .write(move |conn, _| {
                conn.execute(
                    "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = ?2, claim = NULL, claimed_until = 0, updated_at = ?2 WHERE id = ?1",
                    params![id, now],
                )
                .map_err(map_err)
            })
            .await?;
        if changed == 0 {
            return Ok(None);
        }
        self.read(|c| one_delivery(c, id))
    }

    pub(super) fn deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let (sql, args) = deliveries_query(filter, &|n| format!("?{n}"));
        let rows = self.read(|c| {
            let mut st = c.prepare_cached(&sql).map_err(map_err)?;
            st.query_map(
                rusqlite::params_from_iter(args.iter().map(sql_value)),
                delivery_row,
            )
            .map_err(map_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(map_err)
        })?;
        rows.into_iter().map(DeliveryRow::decode).collect()
    }

    pub(super) fn events_after_id(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<Vec<AccountEvent>>, StoreError> {
        self.read(|c| {
            let from = match after {
                None => 0,
                Some(id) => match c
                    .query_row("SELECT seq FROM events WHERE id = ?1", [id], |r| r.get(0))
                    .optional()
                    .map_err(map_err)?
                {
                    Some(seq) => seq,
                    None => return Ok(None),
                },
            };
            events_from(c, from, limit).map(|v| Some(v.into_iter().map(|(_, e)| e).collect()))
        })
    }

    pub(super) async fn purge(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let before = micros(before);
        self.write(move |conn, _| {
            let n = conn
                .execute(
                    "DELETE FROM events WHERE at < ?1 AND NOT EXISTS \
                     (SELECT 1 FROM webhook_deliveries d WHERE d.event_seq = events.seq AND d.state = 'pending')",
                    [before],
                )
                .map_err(map_err)?;
            Ok(n as u64)
        })
        .await
    }
}

/// The events after sequence number `from`, oldest first, with their numbers.
pub(super) fn events_from(
    c: &Connection,
    from: i64,
    limit: usize,
) -> Result<Vec<(i64, AccountEvent)>, StoreError> {
    let mut st = c
        .prepare_cached("SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .map_err(map_err)?;
    let rows = st
        .query_map(params![from, sql_limit(limit)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(map_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_err)?;
    rows.into_iter()
        .map(|(seq, body)| Ok((seq, decode_event(&body)?)))
        .collect()
}

/// The newest sequence number, read outside a transaction.
pub(super) fn newest_seq(c: &Connection) -> Result<i64, StoreError> {
    c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(map_err)
}
