-- keyhaven schema 3 (PostgreSQL): an integration can be disabled (Composio's auth
-- config status): no new connection is made through it until it is enabled again.
ALTER TABLE integrations ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;
