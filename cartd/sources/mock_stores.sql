-- When each mock store opened: mock state, kept in the mock room's own schema
-- `cartd_mock`, never in cartd's (README "The database").

-- name: create
-- The schema and its table, at the first mock poll. CREATE SCHEMA needs CREATE on the
-- database even when the schema exists: a schema `cartd_mock` made for the role serves
-- as well. Concurrent first polls wait for each other (the lock is the transaction's).
DO $$ BEGIN
    PERFORM pg_advisory_xact_lock(1836016491);  -- "mock"
    IF to_regnamespace('cartd_mock') IS NULL THEN CREATE SCHEMA cartd_mock; END IF;
    CREATE TABLE IF NOT EXISTS cartd_mock.stores (
        integration_id uuid PRIMARY KEY,
        opened_at      timestamptz NOT NULL
    );
END $$

-- name: opened
SELECT integration_id, opened_at FROM cartd_mock.stores
WHERE integration_id = ANY(:integration_ids)

-- name: open
-- Stores polled for the first time open at :opened_at; one that another instance opened
-- meanwhile keeps its time.
INSERT INTO cartd_mock.stores AS s (integration_id, opened_at)
SELECT DISTINCT id, :opened_at::timestamptz FROM unnest(:integration_ids::uuid[]) AS t(id)
ON CONFLICT (integration_id) DO UPDATE SET opened_at = s.opened_at
RETURNING integration_id, opened_at
