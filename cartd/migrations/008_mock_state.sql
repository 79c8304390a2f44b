-- Mock state leaves cartd's schema: when a mock store opened is kept by the mock room in
-- its own schema, `cartd_mock` (created at the first mock poll). A mock store whose time
-- was kept here opens again at its next poll, 24 hours before it; its cursor, kept here,
-- still bounds what a poll returns.
ALTER TABLE cartd.sources DROP COLUMN mock_epoch;
