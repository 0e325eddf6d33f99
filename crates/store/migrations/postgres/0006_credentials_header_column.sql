-- keyhaven schema 6 (PostgreSQL): the header of each account's credentials (schema 2's
-- expression, rotate::postgres_header('credentials')) kept in a generated column and
-- indexed there, and room left in each page.
--
-- An index on an expression of `credentials` made every write of new credentials (a
-- refresh) a non-HOT update: PostgreSQL sees an indexed column change and adds an entry
-- to each of the table's six indexes. The generated column changes only when the key
-- does, so a refresh under the same key changes no indexed value and, with free room in
-- its page (fillfactor 85), is a HOT update: the row only. 20,000 such updates took
-- 630-740 ms before and 240-300 ms after (crates/store/benches/hot_updates.sql).
--
-- Adding a stored generated column rewrites the table (under an exclusive lock: one
-- million accounts take some seconds), with the new fillfactor.
ALTER TABLE connected_accounts
    SET (fillfactor = 85),
    ADD COLUMN credentials_header BYTEA GENERATED ALWAYS AS
        (CASE WHEN length(credentials) >= 4 THEN substr(credentials, 1, 4 + get_byte(credentials, 3)) END) STORED;
DROP INDEX accounts_credentials_key;
CREATE INDEX accounts_credentials_header ON connected_accounts (credentials_header);
