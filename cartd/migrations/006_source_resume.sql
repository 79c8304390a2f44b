-- Where a live read that ran out of its cycle's budget goes on: the window it was reading
-- and the last record it read completely (README "Connecting stores"). NULL when the last
-- read finished; the cursor then says how far the store was read.
ALTER TABLE cartd.sources ADD COLUMN resume jsonb;
