-- When a delivery was last replayed by hand (README "Delivery guarantees"): a replayed
-- detected delivery has `webhook.max_delivery_age` from then, not from when it was
-- recorded (`created_at` stays: a cart's deliveries are found by it).
ALTER TABLE cartd.deliveries ADD COLUMN replayed_at timestamptz;
