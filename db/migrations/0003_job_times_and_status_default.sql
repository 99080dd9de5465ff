-- job_executions: TIMESTAMPTZ times, status DEFAULT 'PENDING', and a completion that
-- never precedes its start (NOT VALID: new rows only, until it is validated).
--
-- Live: one table per transaction, changes to the catalog only. With the
-- session in UTC, PostgreSQL (12+) changes TIMESTAMP to TIMESTAMPTZ without
-- rewriting the table (the tests check the file node is unchanged); the
-- default and a NOT VALID check need no scan. So the ACCESS EXCLUSIVE lock
-- lasts milliseconds; lock_timeout keeps the wait for it short too, since every
-- writer of the table queues behind a waiting ALTER (the runner retries).
--
-- The zone the stored values are read in comes from the guard of 0002: UTC, or
-- the operator's cicd_db.legacy_time_zone. A zone other than UTC makes the type
-- change rewrite the table under the same lock, for as long as that takes, hence
-- no statement_timeout here (db/README.md, "Old times in another zone").
SET lock_timeout = '250ms';
SET statement_timeout = '0';

SELECT set_config('TimeZone', cicd_db_legacy_time_zone(), TRUE);

-- changing-column-type warns of a rewrite, which UTC avoids (see above).
ALTER TABLE job_executions
-- squawk-ignore changing-column-type
ALTER COLUMN start_time TYPE TIMESTAMPTZ,
-- squawk-ignore changing-column-type
ALTER COLUMN completion_time TYPE TIMESTAMPTZ,
ALTER COLUMN status SET DEFAULT 'PENDING',
ADD CONSTRAINT job_executions_completion_after_start
CHECK (completion_time >= start_time) NOT VALID;
