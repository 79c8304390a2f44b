-- Agents and the shares of the instances that poll them, and what each integration's
-- last poll left: its cursor, where a stopped read goes on, its health.
--
-- An agent with its company and active integrations is read as the cycle works on it.
-- Views over an existing schema serve as the application tables (README "The
-- database"): they have no keys, so the agent's columns are grouped by themselves
-- (`GROUP BY 1, ..., 9`), not by a.id (which PostgreSQL accepts only for a primary
-- key). The casts keep types asyncpg would have to look up (varchar, citext, enums;
-- json, which cannot be grouped) out of the result.

-- name: register
-- Give every matching agent a poll row (once per cycle, before claiming).
INSERT INTO cartd.agent_polls (agent_id)
SELECT id FROM company_agents WHERE is_active AND template_slug = :slug
ON CONFLICT DO NOTHING

-- name: claim
-- Claim up to :limit due agents (every matching one with :force) with a lease until
-- :lease_until; they are due again at :next_poll_at.
WITH due AS (
    SELECT p.agent_id
    FROM cartd.agent_polls p
    JOIN company_agents a ON a.id = p.agent_id
    WHERE a.is_active AND a.template_slug = :slug
      AND (p.next_poll_at <= :now OR :force)
      AND (p.lease_until IS NULL OR p.lease_until < :now)
      AND (p.claimed_at IS NULL OR p.claimed_at < :now)
    ORDER BY p.next_poll_at
    LIMIT :limit
    FOR UPDATE OF p SKIP LOCKED
), claimed AS (
    UPDATE cartd.agent_polls p
    SET claimed_by = :instance, claimed_at = :now, lease_until = :lease_until,
        next_poll_at = :next_poll_at
    FROM due WHERE p.agent_id = due.agent_id
    RETURNING p.agent_id
)
SELECT a.id, a.name::text AS name, a.template_slug::text AS template_slug,
       a.settings::jsonb AS settings,
       c.id AS company_id, c.name::text AS company_name, c.website::text AS website,
       c.email::text AS email, c.phone::text AS phone,
       COALESCE(
         jsonb_agg(jsonb_build_object('id', i.id, 'platform', i.platform, 'config', i.config)
                   ORDER BY i.id) FILTER (WHERE i.id IS NOT NULL),
         '[]'::jsonb) AS integrations
FROM claimed
JOIN company_agents a ON a.id = claimed.agent_id
JOIN companies c ON c.id = a.company_id
LEFT JOIN agent_integrations i ON i.agent_id = a.id AND i.is_active
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9

-- name: preview
-- The agents a preview polls, with the columns of `claim` (the same select list: a claim
-- reads them in the statement that claims): every matching one, or the one given, or the
-- one of the integration given (with only that integration). Nothing is claimed.
SELECT a.id, a.name::text AS name, a.template_slug::text AS template_slug,
       a.settings::jsonb AS settings,
       c.id AS company_id, c.name::text AS company_name, c.website::text AS website,
       c.email::text AS email, c.phone::text AS phone,
       COALESCE(
         jsonb_agg(jsonb_build_object('id', i.id, 'platform', i.platform, 'config', i.config)
                   ORDER BY i.id) FILTER (WHERE i.id IS NOT NULL),
         '[]'::jsonb) AS integrations
FROM company_agents a
JOIN companies c ON c.id = a.company_id
LEFT JOIN agent_integrations i ON i.agent_id = a.id AND i.is_active
     AND (:integration_id::uuid IS NULL OR i.id = :integration_id)
WHERE a.is_active AND a.template_slug = :slug AND (:agent_id::uuid IS NULL OR a.id = :agent_id)
  AND (:integration_id::uuid IS NULL
       OR a.id = (SELECT agent_id FROM agent_integrations WHERE id = :integration_id))
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
ORDER BY 1

-- name: renew
-- Extend the lease of the agents :instance holds (claimed, not yet released).
UPDATE cartd.agent_polls SET lease_until = :lease_until
WHERE claimed_by = :instance AND lease_until IS NOT NULL

-- name: release
-- Give back every agent :instance holds.
UPDATE cartd.agent_polls SET claimed_by = NULL, lease_until = NULL
WHERE claimed_by = :instance

-- name: poll_share
-- Mark :instance as polling until :live_until; its fair share of the matching agents
-- for one interval: all of them over the instances polling at :now.
WITH beat AS (
    INSERT INTO cartd.instances (id, live_until) VALUES (:instance, :live_until)
    ON CONFLICT (id) DO UPDATE SET live_until = EXCLUDED.live_until
), gone AS (
    -- rows another instance is deleting are skipped: no waiting, no deadlock
    DELETE FROM cartd.instances WHERE id IN (
        SELECT id FROM cartd.instances WHERE live_until < :now AND id <> :instance
        FOR UPDATE SKIP LOCKED)
)
SELECT ceil((SELECT count(*) FROM company_agents
             WHERE is_active AND template_slug = :slug)::numeric
            / (1 + (SELECT count(*) FROM cartd.instances
                    WHERE live_until >= :now AND id <> :instance)))::int

-- name: leave
-- Stop counting :instance in the poll shares.
DELETE FROM cartd.instances WHERE id = :instance

-- name: source_states
SELECT integration_id, cursor, resume FROM cartd.sources
WHERE integration_id = ANY(:integration_ids)

-- name: integrations
-- Active integrations of matching agents (only failing ones with :failing), failing ones
-- first, with their health.
SELECT i.id, i.agent_id, i.platform::text AS platform,
       COALESCE(s.mode, CASE WHEN jsonb_typeof(i.config::jsonb) = 'object'
                             THEN i.config::jsonb ->> 'mode' END) AS mode,
       s.last_polled_at, s.last_success_at,
       COALESCE(s.consecutive_failures, 0) AS consecutive_failures, s.last_error
FROM agent_integrations i
JOIN company_agents a ON a.id = i.agent_id AND a.is_active AND a.template_slug = :slug
LEFT JOIN cartd.sources s ON s.integration_id = i.id
WHERE i.is_active AND (NOT :failing OR s.consecutive_failures > 0)
ORDER BY COALESCE(s.consecutive_failures, 0) DESC, s.last_polled_at DESC NULLS LAST, i.id
LIMIT :limit

-- name: health
-- Per platform of :platforms: the active integrations of matching agents whose last poll
-- failed, and the longest time in seconds at :now since one was polled successfully.
SELECT i.platform::text AS platform,
       count(*) FILTER (WHERE s.consecutive_failures > 0) AS failing,
       max(extract(epoch FROM :now - COALESCE(s.last_success_at, s.failing_since))) AS age
FROM agent_integrations i
JOIN company_agents a ON a.id = i.agent_id AND a.is_active AND a.template_slug = :slug
LEFT JOIN cartd.sources s ON s.integration_id = i.id
WHERE i.is_active AND i.platform::text = ANY(:platforms)
GROUP BY 1
