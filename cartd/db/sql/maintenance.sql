-- Migrations and retention (README "The database").

-- name: migration_lock
-- Serialises concurrent `cartd migrate` runs (until the transaction ends).
SELECT pg_advisory_xact_lock(:key)

-- name: migrations_table
-- CREATE SCHEMA needs CREATE on the database even when the schema exists: a schema
-- `cartd` made for a role without it serves as well.
DO $$ BEGIN IF to_regnamespace('cartd') IS NULL THEN CREATE SCHEMA cartd; END IF; END $$;
CREATE TABLE IF NOT EXISTS cartd.schema_migrations (
    name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())

-- name: applied
SELECT name FROM cartd.schema_migrations

-- name: mark_applied
INSERT INTO cartd.schema_migrations (name) VALUES (:name)

-- name: purge_dead_detected
-- Retention, as the two queries after it: deletes up to :batch rows finished (or
-- detected) before :before and returns how many.
-- A dead detected delivery never reached the receiver: its carts get no `recovered`
-- event once it is gone either.
WITH gone AS (
    DELETE FROM cartd.deliveries WHERE id IN (
        SELECT id FROM cartd.deliveries
        WHERE status = 'dead' AND COALESCE(delivered_at, next_attempt_at) < :before
          AND type = 'abandoned_cart.detected'
        LIMIT :batch)
    RETURNING integration_id, body
), quiet AS (
    UPDATE cartd.sent_carts s SET silenced = true
    FROM gone, jsonb_array_elements(convert_from(gone.body, 'UTF8')::jsonb -> 'abandoned_carts') e
    WHERE s.integration_id = gone.integration_id AND s.cart_id = e ->> 'cart_id'
)
SELECT count(*) FROM gone

-- name: purge_finished
WITH gone AS (
    DELETE FROM cartd.deliveries WHERE id IN (
        SELECT id FROM cartd.deliveries
        WHERE status <> 'pending' AND COALESCE(delivered_at, next_attempt_at) < :before
        LIMIT :batch)
    RETURNING 1
)
SELECT count(*) FROM gone

-- name: purge_carts
-- A cart's memory outlives the deliveries that hold it, so that erasing its customer
-- (which finds the deliveries through it) reaches every stored payload.
WITH held AS (
    SELECT integration_id, created_at FROM cartd.deliveries WHERE created_at < :before
), gone AS (
    DELETE FROM cartd.sent_carts WHERE (integration_id, cart_id) IN (
        SELECT s.integration_id, s.cart_id FROM cartd.sent_carts s
        WHERE s.detected_at < :before
          AND (s.recovered_at IS NULL OR s.recovered_at < :before)
          AND (s.integration_id, s.detected_at) NOT IN (SELECT * FROM held)
          AND (s.recovered_at IS NULL
               OR (s.integration_id, s.recovered_at) NOT IN (SELECT * FROM held))
        LIMIT :batch)
    RETURNING 1
)
SELECT count(*) FROM gone
