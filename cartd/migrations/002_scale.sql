-- Several instances on one database: which instance made a delivery's last attempt
-- (shown by `cartd ctl deliveries`), and the retention sweep's index.

ALTER TABLE cartd.deliveries ADD COLUMN attempted_by text;

-- Finished deliveries by when they finished: delivered_at, or for dead ones the time
-- their last attempt was due.
CREATE INDEX deliveries_finished ON cartd.deliveries (COALESCE(delivered_at, next_attempt_at))
    WHERE status <> 'pending';
