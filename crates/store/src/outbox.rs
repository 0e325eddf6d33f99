//! What the SQL stores share for the event log and the webhook outbox: rows as
//! plain values and the outcome of a try as columns.

use chrono::{DateTime, Utc};
use keyhaven_core::{
    AccountEvent, Delivery, DeliveryOutcome, DeliveryState, StoreError, WebhookTarget,
};

use crate::rows::{from_micros, micros};

/// An event as the `events` table keeps it.
pub(crate) struct EventRow {
    pub(crate) id: String,
    pub(crate) account: String,
    pub(crate) kind: &'static str,
    pub(crate) at: i64,
    pub(crate) body: String,
}

impl EventRow {
    pub(crate) fn encode(event: &AccountEvent) -> Result<Self, StoreError> {
        Ok(Self {
            id: event.id.clone(),
            account: event.connected_account_id.to_string(),
            kind: event.kind.as_str(),
            at: micros(event.at),
            body: serde_json::to_string(event).map_err(|e| StoreError::Backend(Box::new(e)))?,
        })
    }

    pub(crate) fn encode_all(events: &[AccountEvent]) -> Result<Vec<Self>, StoreError> {
        events.iter().map(Self::encode).collect()
    }
}

/// An event read back from its JSON.
pub(crate) fn decode_event(body: &str) -> Result<AccountEvent, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("a stored event: {e}")))
}

/// The columns of a delivery joined with its event (`d`, `e`), in the order
/// [`DeliveryRow`] reads them.
pub(crate) const DELIVERY_COLUMNS: &str = "d.id, d.webhook, e.body, d.state, d.attempts, d.next_at, d.last_status, d.last_error, d.created_at, d.updated_at, d.claim";

/// A delivery as stored.
pub(crate) struct DeliveryRow {
    pub(crate) id: i64,
    pub(crate) webhook: String,
    pub(crate) body: String,
    pub(crate) state: String,
    pub(crate) attempts: i64,
    pub(crate) next_at: i64,
    pub(crate) last_status: Option<i64>,
    pub(crate) last_error: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) claim: Option<String>,
}

impl DeliveryRow {
    pub(crate) fn decode(self) -> Result<Delivery, StoreError> {
        Ok(Delivery {
            id: self.id,
            webhook: self.webhook,
            event: decode_event(&self.body)?,
            state: DeliveryState::parse(&self.state).ok_or_else(|| {
                StoreError::Corrupt(format!("delivery state {:?} is unknown", self.state))
            })?,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            next_attempt_at: from_micros(self.next_at)?,
            last_status: self.last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: self.last_error,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
            claim: self.claim,
        })
    }
}

/// A try's outcome as the columns it sets: state, next attempt time (kept when
/// `None`), last status and last error.
pub(crate) fn outcome_columns(
    outcome: &DeliveryOutcome,
) -> (&'static str, Option<i64>, Option<i64>, Option<String>) {
    (
        outcome.state().as_str(),
        outcome.next_attempt_at().map(micros),
        outcome.status().map(i64::from),
        outcome.error(),
    )
}

/// The kinds a target wants, as stored names; empty: all.
pub(crate) fn wanted(target: &WebhookTarget) -> Vec<&'static str> {
    target.kinds.iter().map(|k| k.as_str()).collect()
}

/// A lease's end, in microseconds.
pub(crate) fn lease_end(now: DateTime<Utc>, lease: std::time::Duration) -> i64 {
    micros(now).saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX))
}

/// A limit as SQL takes it: at least 1.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit.max(1)).unwrap_or(i64::MAX)
}

/// The listing query of deliveries for `filter`, the newest first, with
/// placeholders written by `ph(n)` (1-based).
pub(crate) fn deliveries_query(
    filter: &keyhaven_core::DeliveryFilter,
    ph: &dyn Fn(usize) -> String,
) -> (String, Vec<crate::rows::Arg>) {
    use crate::rows::Arg;
    let mut args: Vec<Arg> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let mut push = |column: &str, a: Arg, op: &str| {
        args.push(a);
        conds.push(format!("{column} {op} {}", ph(args.len())));
    };
    if let Some(w) = &filter.webhook {
        push("d.webhook", Arg::Text(w.clone()), "=");
    }
    if let Some(s) = filter.state {
        push("d.state", Arg::Text(s.as_str().to_owned()), "=");
    }
    if let Some(e) = &filter.event_id {
        push("e.id", Arg::Text(e.clone()), "=");
    }
    if let Some(a) = &filter.account_id {
        push("e.account_id", Arg::Text(a.clone()), "=");
    }
    if let Some(b) = filter.before {
        push("d.id", Arg::Int(b), "<");
    }
    args.push(Arg::Int(sql_limit(filter.limit)));
    let limit = ph(args.len());
    (
        format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.seq = d.event_seq{} ORDER BY d.id DESC LIMIT {limit}",
            crate::rows::where_clause(&conds)
        ),
        args,
    )
}
