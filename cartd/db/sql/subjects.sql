-- Erasure (README "Personal data"): the key of the hashes that find a person's carts,
-- and forgetting one person.

-- name: key
SELECT key FROM cartd.subject_key

-- name: forget
-- The carts of one person lose their keys and get no event again: by email (:key is the
-- email's hash, :integration_id null) or by customer (:key is the customer id's hash
-- within :integration_id). Every delivery that may hold them is marked stale. Returns
-- both.
WITH gone AS (
    UPDATE cartd.sent_carts SET email_key = NULL, customer_key = NULL,
        forgotten = true, silenced = true
    WHERE (:integration_id::uuid IS NULL AND email_key = :key)
       OR (integration_id = :integration_id AND customer_key = :key)
    RETURNING integration_id, detected_at, recovered_at
), marked AS (
    UPDATE cartd.deliveries d SET stale = true
    FROM gone
    WHERE d.integration_id = gone.integration_id
      AND d.created_at IN (gone.detected_at, gone.recovered_at)
    RETURNING d.id
)
SELECT (SELECT count(*) FROM gone) AS carts, ARRAY(SELECT id FROM marked) AS deliveries
