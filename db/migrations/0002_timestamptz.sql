-- The plan's TIMESTAMP columns become TIMESTAMPTZ; existing values are read as UTC.
--
-- Safe on a live table: with the session time zone at UTC, PostgreSQL (12+)
-- changes timestamp to timestamptz without rewriting the table, so the ACCESS
-- EXCLUSIVE lock lasts only as long as the catalog update. lock_timeout makes
-- us give up, rather than queue every other session behind us, when a long
-- transaction holds the table. The runner resets these settings after the file.
SET lock_timeout = '5s';
SET statement_timeout = '60s';
SET TIME ZONE 'UTC';

-- changing-column-type warns of a rewrite, which UTC avoids (see above).
ALTER TABLE pipeline_executions
-- squawk-ignore changing-column-type
ALTER COLUMN start_time TYPE TIMESTAMPTZ,
-- squawk-ignore changing-column-type
ALTER COLUMN completion_time TYPE TIMESTAMPTZ;

ALTER TABLE stage_executions
-- squawk-ignore changing-column-type
ALTER COLUMN start_time TYPE TIMESTAMPTZ,
-- squawk-ignore changing-column-type
ALTER COLUMN completion_time TYPE TIMESTAMPTZ;

ALTER TABLE job_executions
-- squawk-ignore changing-column-type
ALTER COLUMN start_time TYPE TIMESTAMPTZ,
-- squawk-ignore changing-column-type
ALTER COLUMN completion_time TYPE TIMESTAMPTZ;
