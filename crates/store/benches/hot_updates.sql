-- What a refresh's write costs PostgreSQL with the credentials' key header indexed as
-- an expression of `credentials` (schema 2: every new blob is a non-HOT update, an
-- entry in each index) and as a generated column (schema 6: the header does not
-- change, so the update is HOT when the page has room). 100,000 rows shaped like
-- connected_accounts, five indexes each; 20,000 of them get new credentials under the
-- same key. Run against a scratch database:
--
--   psql -h 127.0.0.1 -U postgres -f crates/store/benches/hot_updates.sql
--
-- BENCHMARKS.md (refresh storms) has the figures.
\set QUIET on
DROP TABLE IF EXISTS kh_hot_expression, kh_hot_column;
CREATE TABLE kh_hot_expression (id text PRIMARY KEY, entity_id text, app text, status text,
    integration_id text, version int8, credentials bytea);
CREATE INDEX ON kh_hot_expression (entity_id, app, id);
CREATE INDEX ON kh_hot_expression (app, id);
CREATE INDEX ON kh_hot_expression (status, id);
CREATE INDEX ON kh_hot_expression (integration_id, id);
CREATE INDEX ON kh_hot_expression ((CASE WHEN length(credentials) >= 4
    THEN substr(credentials, 1, 4 + get_byte(credentials, 3)) END));
CREATE TABLE kh_hot_column (id text PRIMARY KEY, entity_id text, app text, status text,
    integration_id text, version int8, credentials bytea,
    credentials_header bytea GENERATED ALWAYS AS (CASE WHEN length(credentials) >= 4
        THEN substr(credentials, 1, 4 + get_byte(credentials, 3)) END) STORED)
    WITH (fillfactor = 85);
CREATE INDEX ON kh_hot_column (entity_id, app, id);
CREATE INDEX ON kh_hot_column (app, id);
CREATE INDEX ON kh_hot_column (status, id);
CREATE INDEX ON kh_hot_column (integration_id, id);
CREATE INDEX ON kh_hot_column (credentials_header);
-- A header (magic, key id length 3, key id "abc") and 192 bytes of "ciphertext".
INSERT INTO kh_hot_expression SELECT 'ca_' || md5(i::text), 'entity-' || i, 'gmail', 'ACTIVE',
    'int_1', 1, '\x4b480003616263'::bytea || decode(repeat(md5(i::text), 12), 'hex')
    FROM generate_series(1, 100000) AS i;
INSERT INTO kh_hot_column (id, entity_id, app, status, integration_id, version, credentials)
    SELECT id, entity_id, app, status, integration_id, version, credentials FROM kh_hot_expression;
VACUUM ANALYZE kh_hot_expression;
VACUUM ANALYZE kh_hot_column;
\timing on
\echo 20,000 new credentials, the header indexed as an expression:
UPDATE kh_hot_expression SET version = version + 1,
    credentials = '\x4b480003616263'::bytea || decode(repeat(md5(id || 'x'), 12), 'hex')
    WHERE id IN (SELECT id FROM kh_hot_expression ORDER BY id LIMIT 20000);
\echo 20,000 new credentials, the header in a generated column:
UPDATE kh_hot_column SET version = version + 1,
    credentials = '\x4b480003616263'::bytea || decode(repeat(md5(id || 'x'), 12), 'hex')
    WHERE id IN (SELECT id FROM kh_hot_column ORDER BY id LIMIT 20000);
\timing off
SELECT pg_stat_force_next_flush();
SELECT relname, n_tup_upd AS updated, n_tup_hot_upd AS hot FROM pg_stat_user_tables
    WHERE relname LIKE 'kh_hot_%' ORDER BY relname;
DROP TABLE kh_hot_expression, kh_hot_column;
