-- keyhaven schema 4 (SQLite): the audit trail in the store, for instances that share
-- it (optional: the default audit log is a file). One row per use of a credential,
-- the entry as JSON; read by account and time.
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    line       TEXT NOT NULL
);
CREATE INDEX audit_log_account_at ON audit_log (account_id, at);
