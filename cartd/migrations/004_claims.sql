-- Due deliveries with a URL of their own (an agent's webhook_url): when the default
-- destination has no free slot, the claim looks for other destinations' work here
-- instead of reading past every pending row of the default one.
CREATE INDEX deliveries_due_override ON cartd.deliveries (next_attempt_at)
    WHERE status = 'pending' AND url IS NOT NULL;
