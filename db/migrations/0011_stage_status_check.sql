-- stage_executions: CHECK (status IS NOT NULL), NOT VALID: new rows and updates are
-- checked from now on; 0013 to 0015 validate the rows already there, and
-- 0022 to 0024 turn it into NOT NULL. After the backfill, since a row still
-- without a status would fail any update that does not set one.
--
-- Live: catalog only, one table, a brief ACCESS EXCLUSIVE lock; a short
-- lock_timeout bounds how long writers queue behind it (the runner retries).
SET lock_timeout = '250ms';
SET statement_timeout = '10s';

ALTER TABLE stage_executions
ADD CONSTRAINT stage_executions_status_not_null
CHECK (status IS NOT NULL) NOT VALID;
