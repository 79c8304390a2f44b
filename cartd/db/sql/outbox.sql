-- The outbox: what one group of a cycle records in one transaction (the carts seen,
-- their deliveries, the integrations' cursors and health, the agents given back), and
-- keeping stored deliveries true to what cartd knows of their carts (README "What the
-- receiver sees when a cart completes", "Personal data").

-- name: remember_carts
-- Carts kept by the filters, into the dedupe memory; returns those that are new.
INSERT INTO cartd.sent_carts (integration_id, cart_id, email_key, customer_key, detected_at)
SELECT i, c, e, u, :now
FROM unnest(:integration_ids::uuid[], :cart_ids::text[], :email_keys::bytea[],
            :customer_keys::bytea[]) AS t(i, c, e, u)
ON CONFLICT DO NOTHING RETURNING integration_id, cart_id

-- name: completed
-- Carts seen completed for the first time, with the detected deliveries that may hold
-- them: those of their integration written when they were recorded.
WITH done AS (
    UPDATE cartd.sent_carts s SET recovered_at = :now
    FROM unnest(:integration_ids::uuid[], :cart_ids::text[]) AS t(i, c)
    WHERE s.integration_id = t.i AND s.cart_id = t.c AND s.recovered_at IS NULL
      AND NOT s.silenced
    RETURNING s.integration_id, s.cart_id, s.detected_at
)
SELECT done.integration_id, done.cart_id, d.id, d.status
FROM done LEFT JOIN cartd.deliveries d
  ON d.integration_id = done.integration_id AND d.created_at = done.detected_at
 AND d.type = 'abandoned_cart.detected'

-- name: holding
-- Of (integration, cart, delivery) candidates, those where the delivery's body holds
-- the cart.
SELECT t.i, t.c, t.d
FROM unnest(:integration_ids::uuid[], :cart_ids::text[], :delivery_ids::text[]) AS t(i, c, d)
JOIN cartd.deliveries d ON d.id = t.d
WHERE convert_from(d.body, 'UTF8')::jsonb -> 'abandoned_carts'
      @> jsonb_build_array(jsonb_build_object('cart_id', t.c))

-- name: mark_stale
-- Pending deliveries that hold a cart that completed: stale, so that claims skip them
-- until they are rebuilt. The row lock orders this against a claim: either the claim
-- came first (the attempt is in flight at :now), or it skips the row.
UPDATE cartd.deliveries SET stale = true WHERE id = ANY(:delivery_ids) AND status = 'pending'
RETURNING id, claimed_by IS NOT NULL AND lease_until >= :now AS in_flight

-- name: statuses
SELECT id, status FROM cartd.deliveries WHERE id = ANY(:delivery_ids)

-- name: sources_polled
-- The health of each integration with its cursor; a failed poll (:errors not null)
-- keeps the cursor.
INSERT INTO cartd.sources AS s (integration_id, agent_id, platform, mode, cursor, resume,
    updated_at, last_polled_at, last_success_at, consecutive_failures, failing_since,
    last_error)
SELECT i, a, p, m, c, r, :now::timestamptz, :now, CASE WHEN err IS NULL THEN :now END,
       (err IS NOT NULL)::int, CASE WHEN err IS NOT NULL THEN :now END, err
FROM unnest(:integration_ids::uuid[], :agent_ids::uuid[], :platforms::text[], :modes::text[],
            :cursors::timestamptz[], :resumes::jsonb[], :errors::text[])
     AS t(i, a, p, m, c, r, err)
ON CONFLICT (integration_id) DO UPDATE SET
    agent_id = EXCLUDED.agent_id, platform = EXCLUDED.platform,
    mode = COALESCE(EXCLUDED.mode, s.mode),
    cursor = CASE WHEN EXCLUDED.last_error IS NULL THEN EXCLUDED.cursor ELSE s.cursor END,
    resume = CASE WHEN EXCLUDED.last_error IS NULL THEN EXCLUDED.resume ELSE s.resume END,
    updated_at = EXCLUDED.updated_at,
    last_polled_at = EXCLUDED.last_polled_at,
    last_success_at = COALESCE(EXCLUDED.last_success_at, s.last_success_at),
    consecutive_failures = CASE WHEN EXCLUDED.last_error IS NULL THEN 0
                                ELSE s.consecutive_failures + 1 END,
    failing_since = CASE WHEN EXCLUDED.last_error IS NULL THEN NULL
                         ELSE COALESCE(s.failing_since, EXCLUDED.failing_since) END,
    last_error = EXCLUDED.last_error

-- name: release_agents
-- The agents of a batch, polled: their claims end.
UPDATE cartd.agent_polls SET lease_until = NULL, claimed_by = NULL
WHERE agent_id = ANY(:agent_ids) AND claimed_by = :instance

-- name: known_carts
-- Which of these (integration id, cart id) are in the dedupe memory.
SELECT s.integration_id, s.cart_id
FROM unnest(:integration_ids::uuid[], :cart_ids::text[]) AS t(i, c)
JOIN cartd.sent_carts s ON s.integration_id = t.i AND s.cart_id = t.c

-- name: stale
-- Up to :limit stale deliveries no attempt holds at :now (of :only, when not null), with
-- those of their carts that completed and those whose customer was erased.
SELECT d.id, d.type, d.status, d.body, d.carts,
       ARRAY(SELECT s.cart_id FROM jsonb_array_elements(
                 convert_from(d.body, 'UTF8')::jsonb -> 'abandoned_carts') e
             JOIN cartd.sent_carts s
               ON s.integration_id = d.integration_id AND s.cart_id = e ->> 'cart_id'
             WHERE s.recovered_at IS NOT NULL) AS completed,
       ARRAY(SELECT s.cart_id FROM jsonb_array_elements(
                 convert_from(d.body, 'UTF8')::jsonb -> 'abandoned_carts') e
             JOIN cartd.sent_carts s
               ON s.integration_id = d.integration_id AND s.cart_id = e ->> 'cart_id'
             WHERE s.forgotten) AS forgotten
FROM cartd.deliveries d
WHERE d.stale AND (d.claimed_by IS NULL OR d.lease_until < :now)
  AND (:only::text[] IS NULL OR d.id = ANY(:only))
ORDER BY d.id
LIMIT :limit
FOR UPDATE OF d SKIP LOCKED

-- name: refreshed
-- Stale deliveries rebuilt: a null body keeps the stored one; one withdrawn now is
-- finished at :now.
UPDATE cartd.deliveries d SET
    body = COALESCE(u.body, d.body), carts = u.carts, status = u.status, stale = false,
    next_attempt_at = CASE WHEN u.status = 'withdrawn' AND d.status <> 'withdrawn' THEN :now
                           ELSE d.next_attempt_at END,
    last_error = COALESCE(u.error, d.last_error),
    claimed_by = NULL, lease_until = NULL
FROM unnest(:ids::text[], :bodies::bytea[], :carts::int[], :statuses::text[],
            :errors::text[]) AS u(id, body, carts, status, error)
WHERE d.id = u.id

-- name: released
-- Recovered deliveries waiting for these detected ones: they go, or are withdrawn with
-- :reason.
UPDATE cartd.deliveries r SET hold_for = NULL, next_attempt_at = :now,
    status = CASE WHEN h.delivered THEN 'pending' ELSE 'withdrawn' END,
    last_error = CASE WHEN h.delivered THEN r.last_error ELSE :reason END
FROM unnest(:ids::text[], :delivered::bool[]) AS h(id, delivered)
WHERE r.hold_for = h.id AND r.status = 'pending'
RETURNING r.id, r.status

-- name: count_stale
SELECT count(*) FROM cartd.deliveries WHERE id = ANY(:ids) AND stale

-- name: expire
-- Dead-letter the detected deliveries recorded (or last replayed) before
-- :recorded_before that are still pending and not in flight at :now; their error is
-- :reason and the last attempt's.
UPDATE cartd.deliveries SET status = 'dead', next_attempt_at = :now,
    claimed_by = NULL, lease_until = NULL,
    last_error = :reason || COALESCE(' (last attempt: ' || last_error || ')', '')
WHERE status = 'pending' AND type = 'abandoned_cart.detected'
  AND COALESCE(replayed_at, created_at) < :recorded_before
  AND (claimed_by IS NULL OR lease_until < :now)
RETURNING id
