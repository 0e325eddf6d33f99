-- keyhaven schema 5 (SQLite): the event log and the webhook outbox. Each event is
-- written in the same transaction as the status change it tells of; other processes
-- on the same file read it from here (the feed), and webhook deliveries are made from
-- it. Events carry no secret.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    account_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at          INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX events_at ON events (at);
-- Per webhook: every event up to `seq` has had its delivery made (or was not wanted).
CREATE TABLE webhook_cursors (
    webhook TEXT PRIMARY KEY,
    seq     INTEGER NOT NULL
);
CREATE TABLE webhook_deliveries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook       TEXT NOT NULL,
    event_seq     INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL,
    claim         TEXT,
    claimed_until INTEGER NOT NULL DEFAULT 0,
    last_status   INTEGER,
    last_error    TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (event_seq, webhook)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
