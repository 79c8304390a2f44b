-- Deliveries: claiming due ones for an attempt, writing what the attempts did, and what
-- an operator lists and replays.
--
-- A claim takes due deliveries with a lease until :lease_until. Not claimed: stale rows
-- (being rebuilt), recovered ones waiting for their detected delivery, detected ones
-- recorded (or last replayed) before :fresh_after (expired: README "Delivery
-- guarantees"), and those whose destination is in :exclude (no free slot, or an open
-- breaker).

-- name: claim_any
-- A delivery without a URL of its own goes to :default_url.
WITH due AS (
    SELECT id FROM cartd.deliveries
    WHERE status = 'pending' AND next_attempt_at <= :now
      AND (lease_until IS NULL OR lease_until < :now)
      AND NOT stale AND hold_for IS NULL
      AND (type <> 'abandoned_cart.detected'
           OR COALESCE(replayed_at, created_at) >= :fresh_after)
      AND COALESCE(url, :default_url) <> ALL(:exclude)
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE cartd.deliveries d SET claimed_by = :instance, lease_until = :lease_until
FROM due WHERE d.id = due.id
RETURNING d.id, d.url, d.body, d.attempts, d.platform

-- name: claim_overrides
-- As claim_any, when the default URL is excluded: only rows with a URL of their own can
-- qualify, and their partial index answers without reading past the default
-- destination's backlog (a query of its own, so that the planner knows it may use it).
WITH due AS (
    SELECT id FROM cartd.deliveries
    WHERE status = 'pending' AND next_attempt_at <= :now
      AND (lease_until IS NULL OR lease_until < :now)
      AND NOT stale AND hold_for IS NULL
      AND (type <> 'abandoned_cart.detected'
           OR COALESCE(replayed_at, created_at) >= :fresh_after)
      AND url IS NOT NULL AND url <> ALL(:exclude)
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE cartd.deliveries d SET claimed_by = :instance, lease_until = :lease_until
FROM due WHERE d.id = due.id
RETURNING d.id, d.url, d.body, d.attempts, d.platform

-- name: unclaim
-- Give back claimed deliveries untouched (not attempted, not counted).
UPDATE cartd.deliveries SET claimed_by = NULL, lease_until = NULL
WHERE id = ANY(:ids) AND claimed_by = :instance

-- name: record_outcomes
-- A batch of attempt outcomes; only rows :instance still holds change.
UPDATE cartd.deliveries d SET
    status = o.status,
    attempts = d.attempts + 1,
    last_status = o.http_status,
    last_error = o.error,
    next_attempt_at = COALESCE(o.next_at, d.next_attempt_at),
    delivered_at = CASE WHEN o.status = 'delivered' THEN o.at END,
    attempted_by = :instance,
    claimed_by = NULL, lease_until = NULL
FROM unnest(:ids::text[], :statuses::text[], :http_statuses::int[], :errors::text[],
            :next_attempts::timestamptz[], :ats::timestamptz[])
     AS o(id, status, http_status, error, next_at, at)
WHERE d.id = o.id AND d.status = 'pending' AND d.claimed_by = :instance
RETURNING d.id

-- name: release
-- Give back the pending deliveries :instance holds.
UPDATE cartd.deliveries SET claimed_by = NULL, lease_until = NULL
WHERE claimed_by = :instance AND status = 'pending'

-- name: attempt_states
SELECT count(*) FILTER (WHERE status = 'pending' AND attempts = 0
                        AND hold_for IS NULL) AS unattempted,
       count(*) FILTER (WHERE status = 'delivered') AS delivered,
       count(*) FILTER (WHERE status = 'dead' OR (status = 'pending' AND attempts > 0))
           AS failed
FROM cartd.deliveries WHERE id = ANY(:ids)

-- name: counts
SELECT status, count(*) AS n FROM cartd.deliveries GROUP BY status

-- name: recent
-- Newest first, of one :status or (null) all.
SELECT id, status, agent_id, integration_id, type, carts, attempts, last_status,
       last_error, next_attempt_at, created_at, delivered_at, attempted_by
FROM cartd.deliveries
WHERE (:status::text IS NULL OR status = :status)
ORDER BY created_at DESC, id
LIMIT :limit

-- name: replay
-- Back to pending, due at :now, attempts counted afresh (and the last attempt's status
-- and error with them); the id (webhook-id) is kept. Replayed at :now: a detected
-- delivery has `webhook.max_delivery_age` from now before it expires again. Stale, so
-- that it is rebuilt from what cartd knows of its carts now before it goes (a cart that
-- completed or was erased since leaves it). A withdrawn delivery stays as it is. Returns
-- the status before.
UPDATE cartd.deliveries d SET
    status = 'pending', next_attempt_at = :now, attempts = 0, delivered_at = NULL,
    last_status = NULL, last_error = NULL, replayed_at = :now,
    attempted_by = NULL, claimed_by = NULL, lease_until = NULL, stale = true
FROM (SELECT id, status FROM cartd.deliveries WHERE id = :id FOR UPDATE) old
WHERE d.id = old.id AND old.status <> 'withdrawn'
RETURNING old.status

-- name: status
SELECT status FROM cartd.deliveries WHERE id = :id

-- name: replay_dead
-- Every dead delivery created at or after :since (null: all), as `replay` does.
UPDATE cartd.deliveries SET
    status = 'pending', next_attempt_at = :now, attempts = 0, delivered_at = NULL,
    last_status = NULL, last_error = NULL, replayed_at = :now,
    attempted_by = NULL, claimed_by = NULL, lease_until = NULL, stale = true
WHERE status = 'dead' AND (:since::timestamptz IS NULL OR created_at >= :since)
