-- keyhaven schema 2 (SQLite): the header of each account's credentials (the magic, the
-- key id's length and the key id) indexed, so that opening the store finds the key ids
-- in use with one index seek each instead of reading every row. The expression is
-- rotate::sqlite_header("credentials"): the queries must use it verbatim.
CREATE INDEX accounts_credentials_key ON connected_accounts (substr(credentials, 1, 4 + unicode(CAST(substr(credentials, 4, 1) AS TEXT))));
