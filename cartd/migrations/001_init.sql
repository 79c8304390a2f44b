-- cartd's own state. The application tables (companies, company_agents,
-- agent_integrations) are read, never written.

CREATE TABLE cartd.agent_polls (
    agent_id      uuid PRIMARY KEY,
    next_poll_at  timestamptz NOT NULL DEFAULT '-infinity',
    claimed_at    timestamptz,
    claimed_by    text,
    lease_until   timestamptz
);
CREATE INDEX agent_polls_due ON cartd.agent_polls (next_poll_at);

CREATE TABLE cartd.sources (
    integration_id uuid PRIMARY KEY,
    cursor         timestamptz,
    mock_epoch     timestamptz,
    updated_at     timestamptz NOT NULL
);

-- Which carts were delivered: the dedupe memory, kept longer than the payloads.
CREATE TABLE cartd.sent_carts (
    integration_id uuid NOT NULL,
    cart_id        text NOT NULL,
    detected_at    timestamptz NOT NULL,
    recovered_at   timestamptz,
    PRIMARY KEY (integration_id, cart_id)
);
CREATE INDEX sent_carts_detected ON cartd.sent_carts (detected_at);

-- The outbox: one row per webhook; its id is the webhook-id.
CREATE TABLE cartd.deliveries (
    id              text PRIMARY KEY,
    type            text NOT NULL,
    agent_id        uuid NOT NULL,
    integration_id  uuid NOT NULL,
    platform        text NOT NULL,
    url             text,
    body            bytea NOT NULL,
    carts           integer NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    claimed_by      text,
    lease_until     timestamptz
);
CREATE INDEX deliveries_due ON cartd.deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_created ON cartd.deliveries (created_at DESC);
CREATE INDEX deliveries_status_created ON cartd.deliveries (status, created_at DESC);
