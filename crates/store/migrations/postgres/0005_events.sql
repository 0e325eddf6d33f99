-- keyhaven schema 5 (PostgreSQL): the event log and the webhook outbox. Each event is
-- written in the same transaction as the status change it tells of (with a NOTIFY
-- that tells the other instances), and webhook deliveries are made from it, claimed
-- with FOR UPDATE SKIP LOCKED so that each is posted by one instance. Events carry no
-- secret.
CREATE TABLE events (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    account_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at          BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX events_at ON events (at);
-- Per webhook: every event up to `seq` has had its delivery made (or was not wanted).
CREATE TABLE webhook_cursors (
    webhook TEXT PRIMARY KEY,
    seq     BIGINT NOT NULL
);
CREATE TABLE webhook_deliveries (
    id            BIGSERIAL PRIMARY KEY,
    webhook       TEXT NOT NULL,
    event_seq     BIGINT NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       BIGINT NOT NULL,
    claim         TEXT,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    last_status   INTEGER,
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (event_seq, webhook)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
