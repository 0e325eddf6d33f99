-- keyhaven schema 4 (PostgreSQL): the audit trail in the store, shared by every
-- instance (optional: the default audit log is a file per instance). One row per use
-- of a credential, the entry as JSON; read by account and time.
CREATE TABLE audit_log (
    seq        BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    line       TEXT NOT NULL
);
CREATE INDEX audit_log_account_at ON audit_log (account_id, at);
