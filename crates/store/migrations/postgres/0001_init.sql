-- keyhaven schema 1 (PostgreSQL). Times are microseconds since the Unix epoch.
CREATE TABLE integrations (
    id          TEXT PRIMARY KEY,
    app         TEXT NOT NULL,
    name        TEXT NOT NULL,
    auth_scheme TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    config      TEXT NOT NULL,
    secrets     BYTEA,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX integrations_app ON integrations (app, auth_scheme, created_at);

CREATE TABLE connected_accounts (
    id                     TEXT PRIMARY KEY,
    entity_id              TEXT NOT NULL,
    integration_id         TEXT NOT NULL REFERENCES integrations (id),
    app                    TEXT NOT NULL,
    auth_scheme            TEXT NOT NULL,
    status                 TEXT NOT NULL,
    status_reason          TEXT,
    labels                 TEXT NOT NULL,
    params                 TEXT NOT NULL,
    redirect_url           TEXT,
    expires_at             BIGINT,
    version                BIGINT NOT NULL,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    credentials            BYTEA,
    credentials_expires_at BIGINT
);
CREATE INDEX accounts_entity_app ON connected_accounts (entity_id, app, id);
CREATE INDEX accounts_app ON connected_accounts (app, id);
CREATE INDEX accounts_status ON connected_accounts (status, id);
CREATE INDEX accounts_integration ON connected_accounts (integration_id, id);

CREATE TABLE account_labels (
    label      TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES connected_accounts (id) ON DELETE CASCADE,
    PRIMARY KEY (label, account_id)
);
CREATE INDEX account_labels_account ON account_labels (account_id);

CREATE TABLE pending_states (
    state_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    data       BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX pending_states_expiry ON pending_states (expires_at);
