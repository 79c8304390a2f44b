-- Instances that poll, for splitting the agents between them: each instance refreshes
-- its row at every claim and is counted while `live_until` has not passed.

CREATE TABLE cartd.instances (
    id         text PRIMARY KEY,
    live_until timestamptz NOT NULL
);
