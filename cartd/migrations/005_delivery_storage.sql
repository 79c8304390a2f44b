-- Claims and outcomes update every delivery twice. A row longer than about 2 kB (most
-- webhooks) now has its body compressed and moved out into TOAST, not just compressed
-- down to 2 kB in the row, so an update copies a small row, not the payload; and half of
-- each page stays free, so the claim (which changes no indexed column) is a HOT update
-- that touches no index. Both apply to rows written from now on.
ALTER TABLE cartd.deliveries SET (fillfactor = 50, toast_tuple_target = 128);
