-- The pool's own query.

-- name: ping
SELECT 1
