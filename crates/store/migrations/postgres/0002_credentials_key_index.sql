-- keyhaven schema 2 (PostgreSQL): the header of each account's credentials (the magic,
-- the key id's length and the key id) indexed, so that connecting finds the key ids in
-- use with one index seek each instead of reading every row. The expression is
-- rotate::postgres_header('credentials'): the queries must use it verbatim.
CREATE INDEX accounts_credentials_key ON connected_accounts ((CASE WHEN length(credentials) >= 4 THEN substr(credentials, 1, 4 + get_byte(credentials, 3)) END));
