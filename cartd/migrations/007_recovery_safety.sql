-- Never remind a buyer, erasure and the health of each store (README "What the receiver
-- sees when a cart completes", "Personal data", "Health of each store").

-- withdrawn: every cart of the delivery left it before it was sent (the carts completed
-- or their customer was erased); it is never sent.
ALTER TABLE cartd.deliveries DROP CONSTRAINT deliveries_status_check,
    ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'dead', 'withdrawn'));
-- stale: the body is older than what cartd knows of its carts (one completed, or its
-- customer was erased); no attempt starts until it is rebuilt.
ALTER TABLE cartd.deliveries ADD COLUMN stale boolean NOT NULL DEFAULT false;
-- hold_for: a recovered delivery whose carts completed while their detected delivery was
-- in flight; it goes only once that one is delivered, and is withdrawn otherwise.
ALTER TABLE cartd.deliveries ADD COLUMN hold_for text;
CREATE INDEX deliveries_stale ON cartd.deliveries (id) WHERE stale;
CREATE INDEX deliveries_held ON cartd.deliveries (hold_for) WHERE hold_for IS NOT NULL;
-- A cart's deliveries are those of its integration written in the transaction that
-- recorded it: created_at = sent_carts.detected_at (detected) or recovered_at (recovered).
CREATE INDEX deliveries_integration_created ON cartd.deliveries (integration_id, created_at);

-- How a person's carts are found again without keeping who they are: keyed BLAKE2b
-- hashes of the lower-cased email and of the platform's customer id (README
-- "Personal data"). forgotten: the customer was erased. silenced: no event is sent for
-- the cart again (erased, or its detected delivery died and was purged).
ALTER TABLE cartd.sent_carts
    ADD COLUMN email_key bytea,
    ADD COLUMN customer_key bytea,
    ADD COLUMN forgotten boolean NOT NULL DEFAULT false,
    ADD COLUMN silenced boolean NOT NULL DEFAULT false;

-- The key of those hashes: 244 random bits, made once, shared by every instance.
CREATE TABLE cartd.subject_key (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    key bytea NOT NULL
);
INSERT INTO cartd.subject_key (key) VALUES
    (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- The health of each integration, written by the cycle's transactions with its cursor.
ALTER TABLE cartd.sources
    ADD COLUMN agent_id uuid,
    ADD COLUMN platform text,
    ADD COLUMN mode text,
    ADD COLUMN last_polled_at timestamptz,
    ADD COLUMN last_success_at timestamptz,
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN last_error text;
UPDATE cartd.sources SET last_polled_at = updated_at, last_success_at = updated_at;
